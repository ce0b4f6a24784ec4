"""TI ADS1115 16-bit ADC: register map, pure conversion math, and a thin single-shot driver.

Section and table numbers refer to the datasheet SBAS444E (ADS1113/ADS1114/ADS1115,
May 2009, revised December 2024). Registers are 16 bits, most significant byte
first (7.5.3). Everything above ``class ADS1115`` is pure, so the math is tested
without a bus.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, ClassVar, Literal, NamedTuple

from pydantic import BaseModel, ConfigDict, Field, field_validator

from drivers.base import Driver, DriverContext, DriverOptions, SMBusLike
from gateway.errors import SensorError, SensorRangeError
from gateway.readings import Measurement

if TYPE_CHECKING:
    from drivers.sim.ads1115 import SimADS1115

log = logging.getLogger(__name__)

# --- register map (8.1, Register Map) --------------------------------------------------------

REG_CONVERSION = 0x00  # 8.1.2: result of the last conversion, two's complement; reset 0000h
REG_CONFIG = 0x01  # 8.1.3: reset 8583h
REG_LO_THRESH = 0x02  # 8.1.4: reset 8000h
REG_HI_THRESH = 0x03  # 8.1.4: reset 7FFFh
POINTER_MASK = 0x03  # 8.1.1: only P[1:0] select a register; P[7:2] are always written 0

CONFIG_RESET = 0x8583  # 8.1.3: single-shot, AIN0-AIN1, ±2.048 V, 128 SPS, comparator off
LO_THRESH_RESET = 0x8000  # 8.1.4
HI_THRESH_RESET = 0x7FFF  # 8.1.4

# Config register fields (8.1.3, Config Register Field Descriptions).
OS = 0x8000  # bit 15: write 1 starts a single conversion; reads 0 while converting
MUX_SHIFT = 12  # bits 14:12
PGA_SHIFT = 9  # bits 11:9
MODE_SINGLE_SHOT = 0x0100  # bit 8: 1 = single-shot or power-down, 0 = continuous
DR_SHIFT = 5  # bits 7:5
COMP_QUE_MASK = 0x0003  # bits 1:0
COMP_QUE_DISABLE = 0x0003  # 11b: comparator off, ALERT/RDY high-impedance (the reset value)
FIELD_MASK = 0b111  # MUX, PGA and DR are 3 bits each

# MUX[2:0] (8.1.3): the input pair each code measures, AINP - AINN.
MUX_CODES: dict[str, int] = {
    "AIN0-AIN1": 0b000,
    "AIN0-AIN3": 0b001,
    "AIN1-AIN3": 0b010,
    "AIN2-AIN3": 0b011,
    "AIN0": 0b100,  # AINN = GND for the four single-ended inputs
    "AIN1": 0b101,
    "AIN2": 0b110,
    "AIN3": 0b111,
}
# PGA[2:0] (8.1.3) by full-scale range in volts; codes 110b and 111b are ±0.256 V too.
PGA_CODES: dict[float, int] = {
    6.144: 0b000,
    4.096: 0b001,
    2.048: 0b010,
    1.024: 0b011,
    0.512: 0b100,
    0.256: 0b101,
}
PGA_FSR: dict[int, float] = {code: fsr for fsr, code in PGA_CODES.items()} | {
    0b110: 0.256,
    0b111: 0.256,
}
# DR[2:0] (8.1.3) by samples per second.
DATA_RATE_CODES: dict[int, int] = {8: 0, 16: 1, 32: 2, 64: 3, 128: 4, 250: 5, 475: 6, 860: 7}
DATA_RATES: dict[int, int] = {code: rate for rate, code in DATA_RATE_CODES.items()}

# Output codes (7.5.4, Table 7-3): two's complement, clipped at 7FFFh and 8000h.
FULL_SCALE_CODES = 2**15  # LSB = FSR / 2^15 (7.3.3, Table 7-1: ±2.048 V -> 62.5 µV)
CODE_MAX = 0x7FFF  # any input >= +FS (2^15 - 1) / 2^15
CODE_MIN = -0x8000  # any input <= -FS

# The ADS1015 (SBAS473) has the same registers with a 12-bit result, left-justified in
# the conversion register: its bits 3:0 always read 0.
ADS1015_UNUSED_BITS = 0x000F

DATA_RATE_TOLERANCE = 0.10  # 5.5: data rate variation ±10% over all data rates
POWER_UP_TIME = 25e-6  # 7.4.2.1: the device powers up in about 25 µs before converting

InputName = Literal[
    "AIN0", "AIN1", "AIN2", "AIN3", "AIN0-AIN1", "AIN0-AIN3", "AIN1-AIN3", "AIN2-AIN3"
]
DataRate = Literal[8, 16, 32, 64, 128, 250, 475, 860]

# --- pure functions ----------------------------------------------------------------------------


class ConfigFields(NamedTuple):
    """The fields of a config register word (8.1.3)."""

    idle: bool  # OS as read: True when no conversion runs
    input: str
    fsr: float
    single_shot: bool
    data_rate: int
    comparator_off: bool


def config_word(pair: str, fsr: float, data_rate: int, *, start: bool = True) -> int:
    """The config register word for one single-shot conversion of ``pair`` (an input
    name such as "AIN0" or "AIN0-AIN1"), or with start=False for power-down with
    those settings; the comparator is off as after reset."""
    return (
        (OS if start else 0)
        | MUX_CODES[pair] << MUX_SHIFT
        | PGA_CODES[fsr] << PGA_SHIFT
        | MODE_SINGLE_SHOT
        | DATA_RATE_CODES[data_rate] << DR_SHIFT
        | COMP_QUE_DISABLE
    )


def decode_config(word: int) -> ConfigFields:
    """The fields of a config register word, as read back."""
    mux = word >> MUX_SHIFT & FIELD_MASK
    return ConfigFields(
        idle=bool(word & OS),
        input=next(name for name, code in MUX_CODES.items() if code == mux),
        fsr=PGA_FSR[word >> PGA_SHIFT & FIELD_MASK],
        single_shot=bool(word & MODE_SINGLE_SHOT),
        data_rate=DATA_RATES[word >> DR_SHIFT & FIELD_MASK],
        comparator_off=word & COMP_QUE_MASK == COMP_QUE_DISABLE,
    )


def word_bytes(word: int) -> list[int]:
    """A 16-bit register word as the two bytes written, most significant first (7.5.3)."""
    return [word >> 8 & 0xFF, word & 0xFF]


def parse_word(data: Sequence[int]) -> int:
    """The unsigned 16-bit word of a two-byte register read, most significant byte first."""
    if len(data) != 2:
        raise ValueError(f"an ADS1115 register is 2 bytes, got {len(data)}")
    return data[0] << 8 | data[1]


def to_signed(word: int) -> int:
    """The two's-complement value of a conversion register word (7.5.4)."""
    return word - 0x10000 if word & 0x8000 else word


def lsb_size(fsr: float) -> float:
    """Volts per code: FSR / 2^15 (7.3.3, Table 7-1)."""
    return fsr / FULL_SCALE_CODES


def raw_to_volts(raw: int, fsr: float) -> float:
    """Volts at AINP - AINN for a signed conversion result (7.5.4, Table 7-3)."""
    return raw * lsb_size(fsr)


def at_rail(raw: int) -> bool:
    """True for the clipped codes 7FFFh and 8000h: the input is at or beyond the FSR (7.5.4)."""
    return raw in (CODE_MAX, CODE_MIN)


def max_conversion_time(data_rate: int) -> float:
    """Seconds a single-shot conversion can take: power-up, then 1/DR at a clock 10% slow.

    Conversions settle in one cycle of 1/DR (7.3.6); the data rate varies by ±10%
    (5.5); the device first powers up for about 25 µs (7.4.2.1).
    """
    return POWER_UP_TIME + 1.0 / (data_rate * (1.0 - DATA_RATE_TOLERANCE))


# --- the driver --------------------------------------------------------------------------------

_NAME_PATTERN = r"^[A-Za-z0-9_.:-]{1,64}$"  # SenML name characters, without the "/" of sensor/
_UNIT_PATTERN = r"^[A-Za-z0-9%/._-]{1,16}$"  # SenML units: V, A, %RH, m/s, ug/m3, ...


class ADS1115Channel(BaseModel):
    """One conversion per read: which inputs, at which full-scale range, and how to scale it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=_NAME_PATTERN, description="the quantity: <sensor>/<name>")
    input: InputName = Field(description="AIN0..AIN3 against GND, or a differential pair")
    gain: float = Field(default=2.048, description="full-scale range in volts (8.1.3 PGA)")
    scale: float = Field(default=1.0, allow_inf_nan=False, description="value = volts*scale+offset")
    offset: float = Field(default=0.0, allow_inf_nan=False)
    unit: str | None = Field(
        default="V", pattern=_UNIT_PATTERN, description="SenML unit of the value; null for none"
    )

    @field_validator("gain")
    @classmethod
    def _one_of_the_pga_ranges(cls, value: float) -> float:
        if value not in PGA_CODES:
            accepted = ", ".join(f"{fsr:g}" for fsr in PGA_CODES)
            raise ValueError(f"must be one of {accepted} (the PGA full-scale ranges, volts)")
        return value


class ADS1115Options(DriverOptions):
    """Options of an ADS1115: the channels to convert on each read, and the data rate."""

    channels: list[ADS1115Channel] = Field(min_length=1)
    data_rate: DataRate = Field(
        default=128, description="samples per second: lower is less noisy, higher is quicker"
    )

    @field_validator("channels")
    @classmethod
    def _unique_names(cls, channels: list[ADS1115Channel]) -> list[ADS1115Channel]:
        seen: set[str] = set()
        for channel in channels:
            if channel.name in seen:
                raise ValueError(f"two channels are named {channel.name!r}; names must be unique")
            seen.add(channel.name)
        return channels


class ADS1115(Driver):
    """An ADS1115 on I2C: one single-shot conversion per channel per ``read``.

    A conversion whose result sits on a rail (7FFFh or 8000h) measured an input
    at or beyond the channel's full-scale range, so its value is unknown: that
    channel is left out of the read, counted in ``rail_counts`` and logged, and
    the other channels are still reported. Only when every channel railed does
    the read fail, with ``SensorRangeError``.
    """

    options_model: ClassVar[type[DriverOptions]] = ADS1115Options
    bus_kind: ClassVar[str] = "i2c"
    # ADDR to GND, VDD, SDA, SCL (7.5.1.1).
    addresses: ClassVar[tuple[int, ...]] = (0x48, 0x49, 0x4A, 0x4B)
    # No ranges: each channel's quantity and limits are the user's (name, gain, scale).
    ranges: ClassVar[dict[str, tuple[float, float]]] = {}

    #: Looks at the OS bit this many times, spread over one more conversion time.
    status_polls: ClassVar[int] = 10

    def __init__(
        self,
        context: DriverContext,
        options: DriverOptions,
        *,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        super().__init__(context, options)
        if not isinstance(options, ADS1115Options):
            raise TypeError(f"ADS1115 needs ADS1115Options, got {type(options).__name__}")
        self._opts = options
        self._sleep = sleep
        #: Conversions dropped at a rail, per channel name, since this driver was made.
        self.rail_counts: Counter[str] = Counter()

    def _bus(self) -> tuple[SMBusLike, int]:
        bus = self.context.bus
        if bus is None:
            raise SensorError(
                f"sensor {self.context.sensor!r}: the ADS1115 driver needs an I2C bus"
            )
        address = self.context.address if self.context.address is not None else self.addresses[0]
        return bus, address

    def _read_word(self, bus: SMBusLike, address: int, register: int) -> int:
        return parse_word(bus.read_i2c_block_data(address, register, 2))

    def setup(self) -> None:
        """Write a power-down config (single-shot mode, comparator off) and read it back.

        A chip left in continuous mode stops after its current conversion; a
        device that does not keep the word is not an ADS1115.
        """
        bus, address = self._bus()
        first = self._opts.channels[0]
        word = config_word(first.input, first.gain, self._opts.data_rate, start=False)
        bus.write_i2c_block_data(address, REG_CONFIG, word_bytes(word))
        back = self._read_word(bus, address, REG_CONFIG)
        if back & ~OS != word:
            raise SensorError(
                f"no ADS1115 at 0x{address:02x} on this bus: its config register reads"
                f" 0x{back:04x} after 0x{word:04x} was written — check the address"
            )

    def read(self) -> list[Measurement]:
        """Convert each channel in turn; skip (and count) the ones at a rail."""
        bus, address = self._bus()
        rate = self._opts.data_rate
        # A conversion left running by an interrupted read would ignore the next start (8.1.3).
        self._wait_idle(bus, address)
        measurements: list[Measurement] = []
        railed: list[str] = []
        for channel in self._opts.channels:
            word = config_word(channel.input, channel.gain, rate)
            bus.write_i2c_block_data(address, REG_CONFIG, word_bytes(word))
            self._sleep(max_conversion_time(rate))
            self._wait_idle(bus, address)
            raw = to_signed(self._read_word(bus, address, REG_CONVERSION))
            if at_rail(raw):
                self._count_rail(channel, raw)
                railed.append(channel.name)
                continue
            value = raw_to_volts(raw, channel.gain) * channel.scale + channel.offset
            measurements.append(Measurement(channel.name, channel.unit, value))
        if not measurements:
            raise SensorRangeError(
                f"ADS1115 at 0x{address:02x}: every channel ({', '.join(railed)}) read at the"
                " limit of its gain — inputs beyond the range, or unconnected: choose a larger gain"
            )
        return measurements

    def _wait_idle(self, bus: SMBusLike, address: int) -> None:
        """Poll the OS bit until no conversion runs; the polls span one whole conversion."""
        interval = max_conversion_time(self._opts.data_rate) / self.status_polls
        for attempt in range(self.status_polls + 1):
            if self._read_word(bus, address, REG_CONFIG) & OS:
                return
            if attempt < self.status_polls:
                self._sleep(interval)
        raise SensorError(
            f"ADS1115 at 0x{address:02x}: still converting after {self.status_polls} polls"
            " — the chip may be in continuous mode or hung; power-cycle it"
        )

    def _count_rail(self, channel: ADS1115Channel, raw: int) -> None:
        self.rail_counts[channel.name] += 1
        side = "+" if raw > 0 else "-"
        log.warning(
            f"ADS1115 channel {channel.name} dropped: {channel.input} is at or beyond"
            f" {side}{channel.gain} V, the limit of its gain; choose a larger gain",
            extra={
                "sensor": self.context.sensor,
                "quantity": channel.name,
                "raw": raw,
                "dropped": self.rail_counts[channel.name],
            },
        )

    @classmethod
    def identify(cls, bus: SMBusLike, address: int) -> str | None:
        """The name "ADS1115" when the registers read like one not using its comparator.

        Reads only: config with the comparator off (its reset state, 8.1.3) and
        both thresholds at their reset values (8.1.4) — a TMP102 or LM75 at the
        same addresses fails that. The ADS1015 shares the register map; only a
        conversion result with any of its low four bits set (the ADS1015's are
        always 0) settles it. Leaves the pointer on the conversion register, as
        after power-up. A chip whose comparator is in use is not recognised.
        """
        if address not in cls.addresses:
            return None
        try:
            config = parse_word(bus.read_i2c_block_data(address, REG_CONFIG, 2))
            low = parse_word(bus.read_i2c_block_data(address, REG_LO_THRESH, 2))
            high = parse_word(bus.read_i2c_block_data(address, REG_HI_THRESH, 2))
            conversion = parse_word(bus.read_i2c_block_data(address, REG_CONVERSION, 2))
        except OSError:
            return None
        if not (
            decode_config(config).comparator_off
            and (low, high) == (LO_THRESH_RESET, HI_THRESH_RESET)
        ):
            return None
        return "ADS1115" if conversion & ADS1015_UNUSED_BITS else "ADS1115 or ADS1015"

    @classmethod
    def simulator(cls, address: int, seed: int) -> SimADS1115:
        """A simulated ADS1115 whose four inputs drift from ``seed``; any address works."""
        from drivers.sim.ads1115 import SimADS1115  # noqa: PLC0415 - the sim imports this module

        return SimADS1115(seed=seed)
