"""TI INA219 current and power monitor: register map, calibration and conversion math, a thin
triggered-mode driver.

Section, equation and table numbers refer to the datasheet SBOS448G (August 2008,
revised December 2015); its worked example (a 10 A load on a 2 mΩ shunt) is the
"Configure/Measure/Calculate Example", Table 3 of revision F. Registers are 16 bits,
most significant byte first (8.5.6). Everything above ``class INA219`` is pure, so
the math is tested without a bus.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from fractions import Fraction
from typing import TYPE_CHECKING, ClassVar, Literal, NamedTuple

from pydantic import Field, ValidationInfo, field_validator

from drivers.base import Driver, DriverContext, DriverOptions, SMBusLike
from gateway.errors import SensorError, SensorRangeError
from gateway.readings import Measurement

if TYPE_CHECKING:
    from drivers.sim.ina219 import SimINA219

log = logging.getLogger(__name__)

# --- register map (8.6.1, Table 2 "Summary of Register Set") --------------------------------

REG_CONFIG = 0x00  # 8.6.2.1, reset 399Fh
REG_SHUNT_VOLTAGE = 0x01  # 8.6.3.1: signed, LSB 10 µV at every PGA setting
REG_BUS_VOLTAGE = 0x02  # 8.6.3.2: bits 15:3 the voltage (LSB 4 mV), CNVR bit 1, OVF bit 0
REG_POWER = 0x03  # 8.6.3.3: unsigned, LSB = Power_LSB; reading it clears CNVR
REG_CURRENT = 0x04  # 8.6.3.4: signed, LSB = Current_LSB
REG_CALIBRATION = 0x05  # 8.6.4.1: reset 0, which leaves current and power at 0
LAST_REGISTER = REG_CALIBRATION

CONFIG_RESET = 0x399F  # 8.6.2.1: 32 V, ±320 mV, 12-bit bus and shunt, continuous

# Configuration register fields (8.6.2.1).
RST = 0x8000  # bit 15: power-on reset; self-clearing, so it reads 0
CONFIG_UNUSED = 0x4000  # bit 14: not used
BRNG_SHIFT = 13  # bit 13: bus voltage range, 0 = 16 V, 1 = 32 V
PG_SHIFT = 11  # bits 12:11: shunt PGA
BADC_SHIFT = 7  # bits 10:7: bus ADC resolution/averaging
SADC_SHIFT = 3  # bits 6:3: shunt ADC resolution/averaging
MODE_MASK = 0b111  # bits 2:0
ADC_12BIT = 0b0011  # ADC settings table: 12-bit, one sample, 532 µs (the reset value)
MODE_POWER_DOWN = 0b000  # mode settings table
MODE_TRIGGERED = 0b011  # shunt and bus, triggered
MODE_CONTINUOUS = 0b111  # shunt and bus, continuous (the reset value)

BUS_RANGE_CODES: dict[int, int] = {16: 0, 32: 1}  # BRNG, volts
PGA_CODES: dict[int, int] = {40: 0b00, 80: 0b01, 160: 0b10, 320: 0b11}  # PG bit settings, mV

# Bus voltage register (8.6.3.2).
BUS_SHIFT = 3  # the voltage is not right-aligned: bits 15:3
CNVR = 0x0002  # conversion ready: set once conversions, averaging and multiplications finish
OVF = 0x0001  # math overflow: current or power out of range, "may be meaningless"
BUS_LSB = 0.004  # V
SHUNT_LSB = 10e-6  # V (8.6.3.1)

# Calibration (8.5.1).
CAL_SCALE = Fraction("0.04096")  # Equation 1: Cal = trunc(0.04096 / (Current_LSB * R_SHUNT))
CURRENT_LSB_STEPS = 2**15  # Equation 2: Current_LSB = Maximum Expected Current / 2^15
POWER_LSB_FACTOR = 20  # Equation 3: Power_LSB = 20 * Current_LSB
CURRENT_DIVISOR = 4096  # Equation 4: Current = Shunt Voltage * Calibration / 4096
POWER_DIVISOR = 5000  # Equation 5: Power = Current * Bus Voltage / 5000
CAL_VOID_BIT = 0x0001  # 8.6.4.1: FS0 is void and always reads 0
CAL_MAX = 0xFFFE  # the largest value the register holds

# 7.5 Electrical Characteristics: a 12-bit conversion takes 532 µs typical, 586 µs max;
# triggered shunt-and-bus mode runs one of each.
CONVERSION_TIME_MAX = 586e-6
TRIGGERED_TIME_MAX = 2 * CONVERSION_TIME_MAX

# The shunt voltage register counts 10 µV at every PGA setting: the ±40 mV range is ±4000
# counts, and each PG step doubles it (8.6.3.1). Readings at or past it may be clipped.
SHUNT_COUNTS_PER_MV = 100

BusRange = Literal[16, 32]
Pga = Literal[40, 80, 160, 320]

# --- pure functions ----------------------------------------------------------------------------


def config_word(bus_range: int, pga: int, mode: int = MODE_TRIGGERED) -> int:
    """The configuration register: bus range (V), PGA range (mV), 12-bit ADCs, and ``mode``."""
    return (
        BUS_RANGE_CODES[bus_range] << BRNG_SHIFT
        | PGA_CODES[pga] << PG_SHIFT
        | ADC_12BIT << BADC_SHIFT
        | ADC_12BIT << SADC_SHIFT
        | mode
    )


class Calibration(NamedTuple):
    """What the calibration register holds and the LSBs it gives the current and power registers."""

    register: int
    current_lsb: float  # A per count of the current register
    power_lsb: float  # W per count of the power register


def _exact(value: float) -> Fraction:
    """The decimal a float was written as (0.1, not 0.1000000000000000055): trunc in
    Equation 1 must not drop a whole step to binary rounding (20480 -> 20479)."""
    return Fraction(repr(value))


def calibrate(shunt_ohms: float, max_current: float) -> Calibration:
    """The calibration of 8.5.1: Current_LSB = max_current / 2^15 (Equation 2), Cal =
    trunc(0.04096 / (Current_LSB * R)) (Equation 1), Power_LSB = 20 * Current_LSB (Equation 3).

    The register drops bit 0 (8.6.4.1), and the chip's own arithmetic (Equation 4)
    makes one count of the current register worth 0.04096 / (Cal * R) amperes: the
    LSBs returned are those of the value actually programmed. They equal the
    datasheet's Current_LSB when its division is exact, as in its worked example.
    Raises ValueError when the register cannot hold the result.
    """
    if shunt_ohms <= 0 or max_current <= 0:
        raise ValueError("shunt_ohms and max_current must be greater than 0")
    resistance = _exact(shunt_ohms)
    current_lsb = _exact(max_current) / CURRENT_LSB_STEPS
    cal = math.trunc(CAL_SCALE / (current_lsb * resistance))
    register = cal & ~CAL_VOID_BIT
    if register > CAL_MAX:
        lowest = float(CAL_SCALE * CURRENT_LSB_STEPS / (CAL_MAX * resistance))
        raise ValueError(
            f"max_current {max_current:g} A is too small for a {shunt_ohms:g} Ω shunt: the"
            f" calibration would be {cal}, more than the register holds; use at least"
            f" {math.ceil(lowest * 1000) / 1000:g} A"
        )
    if register == 0:
        raise ValueError(
            f"max_current {max_current:g} A is too large for a {shunt_ohms:g} Ω shunt:"
            " the calibration would be 0"
        )
    effective = CAL_SCALE / (register * resistance)
    return Calibration(register, float(effective), float(effective * POWER_LSB_FACTOR))


def to_signed(word: int) -> int:
    """The two's-complement value of a 16-bit register word (8.6.3.1, 8.6.3.4)."""
    return word - 0x10000 if word & 0x8000 else word


def parse_word(data: Sequence[int]) -> int:
    """The 16-bit word of a two-byte register read, most significant byte first (8.5.6)."""
    if len(data) != 2:
        raise ValueError(f"an INA219 register is 2 bytes, got {len(data)}")
    return data[0] << 8 | data[1]


def word_bytes(word: int) -> list[int]:
    """A 16-bit register word as the two bytes written, most significant first (8.5.6)."""
    return [word >> 8 & 0xFF, word & 0xFF]


def bus_volts(bus_word: int) -> float:
    """Volts at IN- from the bus voltage register: bits 15:3 times 4 mV (8.6.3.2)."""
    return (bus_word >> BUS_SHIFT) * BUS_LSB


def shunt_volts(shunt_word: int) -> float:
    """Volts across the shunt from the shunt voltage register: signed, 10 µV (8.6.3.1)."""
    return to_signed(shunt_word) * SHUNT_LSB


def amperes(current_word: int, calibration: Calibration) -> float:
    """Amperes from the current register: signed, times Current_LSB (8.6.3.4)."""
    return to_signed(current_word) * calibration.current_lsb


def watts(power_word: int, calibration: Calibration) -> float:
    """Watts from the power register: unsigned, times Power_LSB (8.6.3.3)."""
    return power_word * calibration.power_lsb


# --- the driver --------------------------------------------------------------------------------


class INA219Options(DriverOptions):
    """Options of an INA219; the defaults suit the common breakout (0.1 Ω, ±3.2 A, 0-26 V)."""

    shunt_ohms: float = Field(default=0.1, gt=0, allow_inf_nan=False, description="shunt resistor")
    max_current: float = Field(
        default=3.2,
        gt=0,
        allow_inf_nan=False,
        description="largest expected current, A: sets Current_LSB = max_current / 32768",
    )
    bus_range: BusRange = Field(default=32, description="bus voltage full scale, V")
    pga: Pga = Field(default=320, description="shunt voltage full scale, ± mV")

    @field_validator("max_current")
    @classmethod
    def _fits_the_register(cls, value: float, info: ValidationInfo) -> float:
        shunt_ohms = info.data.get("shunt_ohms")
        if isinstance(shunt_ohms, float):
            calibrate(shunt_ohms, value)  # its ValueError names the smallest usable value
        return value

    @property
    def calibration(self) -> Calibration:
        """The calibration these options program."""
        return calibrate(self.shunt_ohms, self.max_current)


class INA219(Driver):
    """An INA219 on I2C, read in triggered mode: one shunt and one bus conversion per ``read``.

    Triggered mode gives current, bus voltage and power from the same conversion,
    and the chip idles between reads. Each read checks the calibration register:
    a chip that browned out has lost it (it resets to 0, 8.6.4.1), so the driver
    programs it again, counts that in ``recalibrations`` and converts once more.
    """

    options_model: ClassVar[type[DriverOptions]] = INA219Options
    bus_kind: ClassVar[str] = "i2c"
    # A0 and A1 each to GND, VS+, SDA or SCL: 1000000 to 1001111 (8.5.5.1, Table 1).
    addresses: ClassVar[tuple[int, ...]] = tuple(range(0x40, 0x50))
    # Bus voltage: "senses bus voltages from 0 to 26 V" (section 1, Features); shunt
    # voltage: the widest PGA range, ±320 mV (8.6.2.1, PG bit settings). Current and
    # power limits depend on the shunt and calibration, so they have no fixed range.
    ranges: ClassVar[dict[str, tuple[float, float]]] = {
        "bus_voltage": (0.0, 26.0),
        "shunt_voltage": (-0.32, 0.32),
    }

    #: Looks at the CNVR bit after the maximum conversion time, this many times, spread
    #: over about two more conversions.
    status_polls: ClassVar[int] = 10
    status_poll_interval: ClassVar[float] = TRIGGERED_TIME_MAX / 5

    def __init__(
        self,
        context: DriverContext,
        options: DriverOptions,
        *,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        super().__init__(context, options)
        if not isinstance(options, INA219Options):
            raise TypeError(f"INA219 needs INA219Options, got {type(options).__name__}")
        self._opts = options
        self._sleep = sleep
        self._calibration = options.calibration
        self._programmed = False
        #: Times the calibration was found lost and programmed again since this driver was made.
        self.recalibrations = 0

    @property
    def calibration(self) -> Calibration:
        """The calibration this driver programs."""
        return self._calibration

    def _bus(self) -> tuple[SMBusLike, int]:
        bus = self.context.bus
        if bus is None:
            raise SensorError(f"sensor {self.context.sensor!r}: the INA219 driver needs an I2C bus")
        address = self.context.address if self.context.address is not None else self.addresses[0]
        return bus, address

    def _read_word(self, bus: SMBusLike, address: int, register: int) -> int:
        return parse_word(bus.read_i2c_block_data(address, register, 2))

    def _write_word(self, bus: SMBusLike, address: int, register: int, word: int) -> None:
        bus.write_i2c_block_data(address, register, word_bytes(word))

    def setup(self) -> None:
        """Program the configuration (powered down until a read) and the calibration, then
        read both back: a device that does not keep them is not an INA219."""
        self._programmed = False
        bus, address = self._bus()
        self._program(bus, address)
        config = self._read_word(bus, address, REG_CONFIG)
        calibration = self._read_word(bus, address, REG_CALIBRATION)
        expected = (self._idle_config(), self._calibration.register)
        if (config, calibration) != expected:
            raise SensorError(
                f"no INA219 at 0x{address:02x} on this bus: configuration and calibration read"
                f" 0x{config:04x} and 0x{calibration:04x} after 0x{expected[0]:04x} and"
                f" 0x{expected[1]:04x} were written — check the address"
            )
        self._programmed = True

    def _idle_config(self) -> int:
        return config_word(self._opts.bus_range, self._opts.pga, MODE_POWER_DOWN)

    def _program(self, bus: SMBusLike, address: int) -> None:
        self._write_word(bus, address, REG_CONFIG, self._idle_config())
        self._write_word(bus, address, REG_CALIBRATION, self._calibration.register)

    def read(self) -> list[Measurement]:
        """Trigger a conversion, wait for CNVR, read the four results, check the calibration."""
        if not self._programmed:
            self.setup()
        bus, address = self._bus()
        trigger = config_word(self._opts.bus_range, self._opts.pga, MODE_TRIGGERED)
        for _ in range(2):
            self._write_word(bus, address, REG_CONFIG, trigger)  # clears CNVR (8.6.3.2)
            self._sleep(TRIGGERED_TIME_MAX)
            bus_word = self._wait_ready(bus, address)
            shunt_word = self._read_word(bus, address, REG_SHUNT_VOLTAGE)
            current_word = self._read_word(bus, address, REG_CURRENT)
            power_word = self._read_word(bus, address, REG_POWER)
            # Read after the results: a calibration lost at any time before them shows here.
            if self._read_word(bus, address, REG_CALIBRATION) == self._calibration.register:
                break
            self.recalibrations += 1
            log.warning(
                f"INA219 at 0x{address:02x} lost its calibration (a brown-out?); programmed again",
                extra={"sensor": self.context.sensor, "recalibrations": self.recalibrations},
            )
            self._program(bus, address)
        else:
            raise SensorError(
                f"INA219 at 0x{address:02x}: the calibration register does not keep its value"
                " — check the supply and the wiring"
            )
        if abs(to_signed(shunt_word)) >= self._opts.pga * SHUNT_COUNTS_PER_MV:
            raise SensorRangeError(
                f"INA219 at 0x{address:02x}: the shunt voltage is at the ±{self._opts.pga} mV"
                " limit of the pga, so current and power are unknown — choose a larger pga"
            )
        if bus_word & OVF:
            raise SensorRangeError(
                f"INA219 at 0x{address:02x}: current or power out of range (math overflow flag,"
                f" 8.6.3.2) — raise max_current (now {self._opts.max_current:g} A) or the pga"
            )
        return [
            Measurement("bus_voltage", "V", bus_volts(bus_word)),
            Measurement("shunt_voltage", "V", shunt_volts(shunt_word)),
            Measurement("current", "A", amperes(current_word, self._calibration)),
            Measurement("power", "W", watts(power_word, self._calibration)),
        ]

    def _wait_ready(self, bus: SMBusLike, address: int) -> int:
        """The bus voltage register once CNVR is set."""
        for attempt in range(self.status_polls + 1):
            word = self._read_word(bus, address, REG_BUS_VOLTAGE)
            if word & CNVR:
                return word
            if attempt < self.status_polls:
                self._sleep(self.status_poll_interval)
        raise SensorError(
            f"INA219 at 0x{address:02x}: no conversion ready after {self.status_polls} polls"
            " — the chip may be hung; power-cycle it"
        )

    def close(self) -> None:
        """Forget the setup, so that a reused instance checks the chip again."""
        self._programmed = False

    @classmethod
    def identify(cls, bus: SMBusLike, address: int) -> str | None:
        """The name "INA219" when configuration and calibration read like one (8.6.2.1, 8.6.4.1).

        Reads only those two registers (reading the power register would clear
        CNVR). The configuration's bits 15 (self-clearing reset) and 14 (unused) read
        0 and the calibration's bit 0 is void; then either the power-on pair
        (399Fh, 0) or a programmed calibration. A chip configured by another
        program that never calibrated it is not recognised. The INA226 at the same
        addresses fails the bit 14 test (its reset value is 4127h).
        """
        if address not in cls.addresses:
            return None
        try:
            calibration = parse_word(bus.read_i2c_block_data(address, REG_CALIBRATION, 2))
            config = parse_word(bus.read_i2c_block_data(address, REG_CONFIG, 2))
        except OSError:
            return None
        if config & (RST | CONFIG_UNUSED) or calibration & CAL_VOID_BIT:
            return None
        return "INA219" if config == CONFIG_RESET or calibration else None

    @classmethod
    def simulator(cls, address: int, seed: int) -> SimINA219:
        """A simulated INA219 on a 0.1 Ω shunt, its load drifting from ``seed``; any address."""
        from drivers.sim.ina219 import SimINA219  # noqa: PLC0415 - the sim imports this module

        return SimINA219(seed=seed)
