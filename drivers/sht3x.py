"""Sensirion SHT30/SHT31/SHT35: command map, pure conversions, and a thin single-shot driver.

Section and table numbers refer to the Sensirion "Datasheet SHT3x-DIS", version 5
(May 2018). The three chips differ only in accuracy; commands, timing and
formulas are the same. Everything above ``class SHT3x`` is pure, so the
conversions are tested without a bus; the framing and CRC live in
``drivers.sensirion``, shared with the other Sensirion chips.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, ClassVar, Literal

from pydantic import Field

from drivers.base import Driver, DriverContext, DriverOptions, SMBusLike
from drivers.sensirion import read_words, write_command
from gateway.errors import SensorError
from gateway.readings import Measurement

if TYPE_CHECKING:
    from drivers.sim.sht3x import SimSHT3x

# --- addresses and commands ------------------------------------------------------------------

ADDRESS_ADDR_LOW = 0x44  # ADDR pin to VSS, the default (3.3, I2C device addresses)
ADDRESS_ADDR_HIGH = 0x45  # ADDR pin to VDD

Repeatability = Literal["high", "medium", "low"]

# Single shot, clock stretching disabled (4.3, Table 9): the chip NACKs the read
# header until the conversion is done, so a slow conversion is a bus error the
# poller retries, never a bus held low by the chip.
CMD_MEASURE: dict[Repeatability, int] = {"high": 0x2400, "medium": 0x240B, "low": 0x2416}
# The same with clock stretching enabled (Table 9); not used by the driver, but a
# real chip understands them, so the simulator does too.
CMD_MEASURE_STRETCH: dict[Repeatability, int] = {"high": 0x2C06, "medium": 0x2C0D, "low": 0x2C10}
CMD_SOFT_RESET = 0x30A2  # 4.9
CMD_HEATER_ENABLE = 0x306D  # 4.10, Table 16
CMD_HEATER_DISABLE = 0x3066  # 4.10, Table 16
CMD_READ_STATUS = 0xF32D  # 4.11, Table 17: one word + CRC
CMD_CLEAR_STATUS = 0x3041  # 4.11, Table 19: clears bits 15, 11, 10 and 4

# Status register bits (4.11, Table 18).
STATUS_ALERT_PENDING = 1 << 15  # '1' after reset
STATUS_HEATER_ON = 1 << 13
STATUS_RH_TRACKING_ALERT = 1 << 11
STATUS_T_TRACKING_ALERT = 1 << 10
STATUS_RESET_DETECTED = 1 << 4  # '1' after reset
STATUS_COMMAND_FAILED = 1 << 1  # last command invalid or failed its checksum
STATUS_WRITE_CRC_FAILED = 1 << 0  # checksum of the last write transfer failed
STATUS_AFTER_RESET = STATUS_ALERT_PENDING | STATUS_RESET_DETECTED  # Table 18 defaults: 0x8010

# Measurement duration, maximum and typical, per repeatability (2.2, Table 4:
# t_MEAS,h / t_MEAS,m / t_MEAS,l). The driver waits the maximum.
MEASUREMENT_TIME_MAX: dict[Repeatability, float] = {"high": 0.015, "medium": 0.006, "low": 0.004}
MEASUREMENT_TIME_TYPICAL: dict[Repeatability, float] = {
    "high": 0.0125,
    "medium": 0.0045,
    "low": 0.0025,
}
# "a minimal waiting time of 1 ms" between a command and the next access (4.3, Table 9
# note); Sensirion's embedded-sht driver waits the same before reading the status.
COMMAND_TIME = 0.001

RAW_FULL_SCALE = 0xFFFF  # 2^16 - 1, the divisor of both conversion formulas (4.13)


# --- pure functions ------------------------------------------------------------------------


def temperature_celsius(raw: int) -> float:
    """°C from the raw temperature word: T = -45 + 175 · S_T / (2^16 - 1) (4.13)."""
    return -45.0 + 175.0 * raw / RAW_FULL_SCALE


def humidity_percent(raw: int) -> float:
    """%RH from the raw humidity word: RH = 100 · S_RH / (2^16 - 1) (4.13)."""
    return 100.0 * raw / RAW_FULL_SCALE


# --- the driver ----------------------------------------------------------------------------


class SHT3xOptions(DriverOptions):
    """Options of an SHT30/31/35."""

    repeatability: Repeatability = Field(
        default="high",
        description=(
            "measurement repeatability: high (15 ms), medium (6 ms) or low (4 ms); lower "
            "is faster and noisier (1.1 and 1.2 list the repeatability of each setting)"
        ),
    )


class SHT3x(Driver):
    """An SHT30, SHT31 or SHT35 on I2C, read in single-shot mode without clock stretching.

    Single shot suits polling: the chip sleeps between reads and every value is
    fresh. Clock stretching stays off because the Raspberry Pi's I2C controller
    handles stretched clocks badly; instead the driver waits the datasheet's
    maximum conversion time, and a chip that is not done answers with a NACK,
    which the poller retries like any bus error.
    """

    options_model: ClassVar[type[DriverOptions]] = SHT3xOptions
    bus_kind: ClassVar[str] = "i2c"
    addresses: ClassVar[tuple[int, ...]] = (ADDRESS_ADDR_LOW, ADDRESS_ADDR_HIGH)
    # Specified ranges: humidity 0..100 %RH (1.1, Table 1), temperature -40..125 °C
    # (1.2, Table 2). The formulas can yield -45..130 °C; beyond the range is not physical.
    ranges: ClassVar[dict[str, tuple[float, float]]] = {
        "temperature": (-40.0, 125.0),
        "humidity": (0.0, 100.0),
    }

    def __init__(
        self,
        context: DriverContext,
        options: DriverOptions,
        *,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        super().__init__(context, options)
        if not isinstance(options, SHT3xOptions):
            raise TypeError(f"SHT3x needs SHT3xOptions, got {type(options).__name__}")
        self._opts = options
        self._sleep = sleep
        self._ready = False
        self._status: int | None = None

    @property
    def status(self) -> int | None:
        """The status register as ``setup`` read it (Table 18), or None before."""
        return self._status

    def _bus(self) -> tuple[SMBusLike, int]:
        bus = self.context.bus
        if bus is None:
            raise SensorError(f"sensor {self.context.sensor!r}: the SHT3x driver needs an I2C bus")
        address = self.context.address if self.context.address is not None else self.addresses[0]
        return bus, address

    def setup(self) -> None:
        """Check that an SHT3x answers (status register with a valid CRC) and that its
        heater is off; safe to call again at any time.

        The heater is off after power-up (Table 18), but another program may have
        left it on, and it would then add several °C to every reading (4.10).
        """
        self._ready = False
        bus, address = self._bus()
        (status,) = read_words(
            bus,
            address,
            CMD_READ_STATUS,
            1,
            sensor=self.context.sensor,
            delay=COMMAND_TIME,
            sleep=self._sleep,
        )
        if status & STATUS_HEATER_ON:
            write_command(bus, address, CMD_HEATER_DISABLE, delay=COMMAND_TIME, sleep=self._sleep)
        self._status = status
        self._ready = True

    def read(self) -> list[Measurement]:
        """One single-shot measurement: command, wait t_MEAS max, read T and RH with CRCs.

        A bad CRC on either word raises ``SensorError``: no reading is made of data
        that failed its check.
        """
        if not self._ready:
            self.setup()
        bus, address = self._bus()
        repeatability = self._opts.repeatability
        raw_t, raw_rh = read_words(
            bus,
            address,
            CMD_MEASURE[repeatability],
            2,  # temperature first, then humidity (4.4)
            sensor=self.context.sensor,
            delay=MEASUREMENT_TIME_MAX[repeatability],
            sleep=self._sleep,
        )
        return [
            Measurement("temperature", "Cel", temperature_celsius(raw_t)),
            Measurement("humidity", "%RH", humidity_percent(raw_rh)),
        ]

    def close(self) -> None:
        """Forget the setup, so that a reused instance checks the chip again."""
        self._ready = False

    @classmethod
    def identify(cls, bus: SMBusLike, address: int) -> str | None:
        """The name "SHT3x" when the device answers the status-register command with a
        CRC-valid word. Reading the status register changes nothing on the chip."""
        try:
            read_words(
                bus,
                address,
                CMD_READ_STATUS,
                1,
                sensor=f"SHT3x at 0x{address:02x}",
                delay=COMMAND_TIME,
            )
        except OSError:  # NACK, bus error, or a CRC that does not match: not an SHT3x
            return None
        return "SHT3x"

    @classmethod
    def simulator(cls, address: int, seed: int) -> SimSHT3x:
        """A simulated SHT3x whose room drifts from ``seed``; any address works."""
        from drivers.sim.sht3x import SimSHT3x  # noqa: PLC0415 - the sim imports this module

        return SimSHT3x(seed=seed)
