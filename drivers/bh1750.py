"""ROHM BH1750FVI ambient light sensor: opcodes, pure lux math, and a thin one-time-mode driver.

Page numbers refer to the ROHM "BH1750FVI Technical Note" (2009.04, Rev.B, 17 pages).
The chip has no registers: every write is one opcode, every read returns the 16-bit
measurement (p.10). Everything above ``class BH1750`` is pure, so the math is tested
without a bus.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, ClassVar, Literal, cast

from pydantic import Field
from smbus2 import i2c_msg

from drivers.base import Driver, DriverContext, DriverOptions, SMBusLike
from gateway.errors import SensorError, SensorRangeError
from gateway.readings import Measurement

if TYPE_CHECKING:
    from drivers.sim.bh1750 import SimBH1750

# --- opcodes ("Instruction Set Architecture", p.5) ----------------------------------------

POWER_DOWN = 0x00  # 0000_0000: no active state
POWER_ON = 0x01  # 0000_0001: waiting for a measurement command
RESET = 0x07  # 0000_0111: clears the data register; ignored in power-down (p.5)
CONTINUOUS_H = 0x10  # 0001_0000: continuously H-resolution mode
CONTINUOUS_H2 = 0x11  # 0001_0001: continuously H-resolution mode2
CONTINUOUS_L = 0x13  # 0001_0011: continuously L-resolution mode
ONE_TIME_H = 0x20  # 0010_0000: one measurement, then power-down by itself
ONE_TIME_H2 = 0x21  # 0010_0001
ONE_TIME_L = 0x23  # 0010_0011
MTREG_HIGH = 0x40  # 01000_MT[7,6,5]: the top 3 bits of MTreg
MTREG_LOW = 0x60  # 011_MT[4,3,2,1,0]: the low 5 bits of MTreg
MTREG_HIGH_SHIFT = 5
MTREG_LOW_MASK = 0x1F

# Slave address by the ADDR pin: 'L' -> 0100011, 'H' -> 1011100 (p.10).
ADDRESS_LOW = 0x23
ADDRESS_HIGH = 0x5C

# Measurement time register (p.11, "Adjust measurement result for influence of optical
# window"): 0001_1111 (31) to 1111_1110 (254), default 0100_0101 (69).
MTREG_MIN = 31
MTREG_DEFAULT = 69
MTREG_MAX = 254

# "Measurement Accuracy": sensor out / actual lx is 1.2 typical (0.96..1.44), p.2.
COUNTS_PER_LUX = 1.2
RAW_MAX = 0xFFFF  # the data register is 16 bits (p.10): this count means saturated

# Measurement time at the default MTreg, max (typ), p.2 "Electrical Characteristics":
# H-resolution 180 (120) ms, L-resolution 24 (16) ms. H-resolution mode2 takes the
# H-resolution time ("Measurement mode explanation", p.5). Both scale with MTreg (p.11).
H_TIME_MAX = 0.180
H_TIME_TYP = 0.120
L_TIME_MAX = 0.024
L_TIME_TYP = 0.016

Resolution = Literal["high", "high2", "low"]

#: Opcode of the one-time measurement for each resolution (p.5).
ONE_TIME_OPCODES: dict[str, int] = {"high": ONE_TIME_H, "high2": ONE_TIME_H2, "low": ONE_TIME_L}
#: Lux per count is halved in H-resolution mode2 (p.11: "/ 2").
MODE2_DIVISOR: dict[str, int] = {"high": 1, "high2": 2, "low": 1}

# --- pure functions ------------------------------------------------------------------------


def mtreg_opcodes(mtreg: int) -> tuple[int, int]:
    """The two opcodes that set MTreg: high bits first, then low bits (p.5, p.11)."""
    if not MTREG_MIN <= mtreg <= MTREG_MAX:
        raise ValueError(f"MTreg must be {MTREG_MIN}..{MTREG_MAX}, got {mtreg}")
    return MTREG_HIGH | mtreg >> MTREG_HIGH_SHIFT, MTREG_LOW | mtreg & MTREG_LOW_MASK


def parse_raw(data: Sequence[int]) -> int:
    """The count from the two bytes of a read: high byte first (p.10)."""
    if len(data) != 2:
        raise ValueError(f"a BH1750 read is 2 bytes, got {len(data)}")
    return data[0] << 8 | data[1]


def lux_per_count(resolution: Resolution, mtreg: int = MTREG_DEFAULT) -> float:
    """lx per count: 1 / 1.2 * (69 / MTreg), and / 2 in H-resolution mode2 (p.11).

    The datasheet gives the MTreg formula for the two H modes; the L mode counts in
    the same units (4 lx steps, p.2) and integrates over the same scaled time.
    """
    return 1.0 / COUNTS_PER_LUX * (MTREG_DEFAULT / mtreg) / MODE2_DIVISOR[resolution]


def raw_to_lux(raw: int, resolution: Resolution, mtreg: int = MTREG_DEFAULT) -> float:
    """Illuminance in lx from a count (p.10 example: 0x8390 -> 28067 lx)."""
    return raw * lux_per_count(resolution, mtreg)


def max_illuminance(resolution: Resolution, mtreg: int = MTREG_DEFAULT) -> float:
    """The brightest light these settings measure: the count saturates at 0xFFFF."""
    return raw_to_lux(RAW_MAX, resolution, mtreg)


def max_measurement_time(resolution: Resolution, mtreg: int = MTREG_DEFAULT) -> float:
    """Seconds one measurement can take: the p.2 maximum scaled by MTreg / 69 (p.11)."""
    base = L_TIME_MAX if resolution == "low" else H_TIME_MAX
    return base * mtreg / MTREG_DEFAULT


def typical_measurement_time(resolution: Resolution, mtreg: int = MTREG_DEFAULT) -> float:
    """Seconds one measurement typically takes (p.2 typical, scaled by MTreg / 69)."""
    base = L_TIME_TYP if resolution == "low" else H_TIME_TYP
    return base * mtreg / MTREG_DEFAULT


# --- the driver ----------------------------------------------------------------------------


class BH1750Options(DriverOptions):
    """Options of a BH1750; the defaults are the chip's own (H-resolution, MTreg 69)."""

    resolution: Resolution = Field(
        default="high",
        description="high: 1 lx steps; high2: 0.5 lx, half the range; low: 4 lx, 7.5x faster",
    )
    mtreg: int = Field(
        default=MTREG_DEFAULT,
        ge=MTREG_MIN,
        le=MTREG_MAX,
        description="measurement time register: higher is more sensitive, slower, less range",
    )


class BH1750(Driver):
    """A BH1750 on I2C, read in one-time mode: one measurement per ``read``, powered down between.

    One-time mode suits polling (p.5): the chip powers itself down after each
    measurement, and each value is fresh when it is read.
    """

    options_model: ClassVar[type[DriverOptions]] = BH1750Options
    bus_kind: ClassVar[str] = "i2c"
    addresses: ClassVar[tuple[int, ...]] = (ADDRESS_LOW, ADDRESS_HIGH)
    # The widest range any setting reaches: H-resolution at MTreg 31 saturates at
    # 65535 / 1.2 * 69 / 31 = 121557 lx (p.11; the front page rounds it to "max. 100000 lx").
    ranges: ClassVar[dict[str, tuple[float, float]]] = {
        "illuminance": (0.0, RAW_MAX / COUNTS_PER_LUX * MTREG_DEFAULT / MTREG_MIN),
    }

    def __init__(
        self,
        context: DriverContext,
        options: DriverOptions,
        *,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        super().__init__(context, options)
        if not isinstance(options, BH1750Options):
            raise TypeError(f"BH1750 needs BH1750Options, got {type(options).__name__}")
        self._opts = options
        self._sleep = sleep

    def _bus(self) -> tuple[SMBusLike, int]:
        bus = self.context.bus
        if bus is None:
            raise SensorError(f"sensor {self.context.sensor!r}: the BH1750 driver needs an I2C bus")
        address = self.context.address if self.context.address is not None else self.addresses[0]
        return bus, address

    def setup(self) -> None:
        """Send Power Down: proves something acknowledges at the address, and leaves the chip
        in its lowest-power state (p.5). Nothing else to check: the chip has no id."""
        bus, address = self._bus()
        bus.write_byte(address, POWER_DOWN)

    def read(self) -> list[Measurement]:
        """Power on, set MTreg, start a one-time measurement, wait its maximum time, read.

        One opcode per write, each ended by a STOP (p.10). MTreg is sent on every
        read: a chip that browned out since the last one is back at 69, and one that
        another program left at another value would otherwise scale wrongly.
        """
        opts = self._opts
        bus, address = self._bus()
        bus.write_byte(address, POWER_ON)
        for opcode in mtreg_opcodes(opts.mtreg):
            bus.write_byte(address, opcode)
        bus.write_byte(address, ONE_TIME_OPCODES[opts.resolution])
        self._sleep(max_measurement_time(opts.resolution, opts.mtreg))
        message = i2c_msg.read(address, 2)
        bus.i2c_rdwr(message)
        raw = parse_raw(list(cast(Iterable[int], message)))  # smbus2's stub mistypes __iter__
        if raw == RAW_MAX:
            limit = max_illuminance(opts.resolution, opts.mtreg)
            widest = max_illuminance("high", MTREG_MIN)
            advice = (
                f"lower mtreg (resolution high with mtreg 31 reaches {widest:.0f} lx)"
                if limit < widest
                else "that is the most the chip measures: shade it, and scale the readings"
            )
            raise SensorRangeError(
                f"BH1750 at 0x{address:02x}: saturated — brighter than the {limit:.0f} lx that"
                f" resolution {opts.resolution} with mtreg {opts.mtreg} can measure; {advice}"
            )
        return [Measurement("illuminance", "lx", raw_to_lux(raw, opts.resolution, opts.mtreg))]

    @classmethod
    def identify(cls, bus: SMBusLike, address: int) -> str | None:
        """A probable BH1750 when a device at one of its two addresses answers a 2-byte read.

        The chip has no id register, and every opcode changes its state (power,
        mode, MTreg or data, p.5), so the only safe probe is a plain read: it
        cannot tell a BH1750 from another chip at the same address, and says so.
        """
        if address not in cls.addresses:
            return None
        try:
            bus.i2c_rdwr(i2c_msg.read(address, 2))
        except OSError:
            return None
        return "BH1750 (probable: answers at its address; the chip has no id register)"

    @classmethod
    def simulator(cls, address: int, seed: int) -> SimBH1750:
        """A simulated BH1750 under a seeded, time-compressed day; any address works."""
        from drivers.sim.bh1750 import SimBH1750  # noqa: PLC0415 - the sim imports this module

        return SimBH1750(seed=seed)
