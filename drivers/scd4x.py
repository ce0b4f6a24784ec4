"""Sensirion SCD40/SCD41 CO2 sensors: command map, pure conversions, and a thin periodic driver.

Section and table numbers refer to the Sensirion "Datasheet SCD4x", version 1.3
(September 2022). The SCD40 and SCD41 share every command used here (the SCD41
adds single-shot modes, which this driver does not use). Everything above
``class SCD4x`` is pure; framing and CRC live in ``drivers.sensirion``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, ClassVar, Literal

from pydantic import Field

from drivers.base import Driver, DriverContext, DriverOptions, SMBusLike
from drivers.sensirion import read_words, write_command
from gateway.errors import SensorError
from gateway.readings import Measurement

if TYPE_CHECKING:
    from drivers.sim.scd4x import SimSCD4x

# --- address and commands (3.4, Table 9: the command list with execution times) ------------

ADDRESS = 0x62  # fixed (3, Table 8)

CMD_START_PERIODIC_MEASUREMENT = 0x21B1  # 3.5.1; no execution time
CMD_READ_MEASUREMENT = 0xEC05  # 3.5.2; 1 ms; three words: CO2, T, RH
CMD_STOP_PERIODIC_MEASUREMENT = 0x3F86  # 3.5.3, Table 12; 500 ms
CMD_SET_TEMPERATURE_OFFSET = 0x241D  # 3.6.1; 1 ms; idle only
CMD_GET_TEMPERATURE_OFFSET = 0x2318  # 3.6.2; 1 ms; idle only
CMD_SET_SENSOR_ALTITUDE = 0x2427  # 3.6.3; 1 ms; idle only
CMD_GET_SENSOR_ALTITUDE = 0x2322  # 3.6.4; 1 ms; idle only
CMD_SET_AMBIENT_PRESSURE = 0xE000  # 3.6.5; 1 ms; allowed while measuring
CMD_START_LOW_POWER_PERIODIC_MEASUREMENT = 0x21AC  # 3.8.1; no execution time
CMD_GET_DATA_READY_STATUS = 0xE4B8  # 3.8.2; 1 ms; allowed while measuring
CMD_GET_SERIAL_NUMBER = 0x3682  # 3.9.2; 1 ms; idle only; three words

STOP_TIME = 0.5  # "the sensor will only respond to other commands after waiting 500 ms" (3.5.3)
COMMAND_TIME = 0.001  # execution time of every other command used here (Table 9)

DATA_READY_MASK = 0x07FF  # "least significant 11 bits" of the status word (3.8.2)

SIGNAL_UPDATE_INTERVAL = 5.0  # s, periodic measurement (3.5.1)
SIGNAL_UPDATE_INTERVAL_LOW_POWER = 30.0  # s, low power periodic measurement (3.8.1)
# A chip that reset (brown-out) comes back idle and then never has data ready; after
# this many signal update intervals without a measurement the driver calls it a failure,
# so that the poller sets it up (and starts it) again. Ours, not the datasheet's.
STALL_INTERVALS = 3

TEMPERATURE_OFFSET_DEFAULT = 4.0  # °C, the chip's factory setting (3.6.1)
# Recommended offsets are 0..20 °C (3.6.1 in later datasheet versions; Sensirion's
# embedded-i2c-scd4x says the same); the word could encode up to 175 °C.
TEMPERATURE_OFFSET_MAX = 20.0
ALTITUDE_MAX = 3000  # m, "valid input values are between 0 - 3000 m" (3.6.3)

RAW_FULL_SCALE = 0xFFFF  # 2^16 - 1, the divisor of the conversion formulas (3.5.2)
SERIAL_WORD_BITS = 16

Mode = Literal["periodic", "low_power"]
START_COMMAND: dict[Mode, int] = {
    "periodic": CMD_START_PERIODIC_MEASUREMENT,
    "low_power": CMD_START_LOW_POWER_PERIODIC_MEASUREMENT,
}
INTERVAL: dict[Mode, float] = {
    "periodic": SIGNAL_UPDATE_INTERVAL,
    "low_power": SIGNAL_UPDATE_INTERVAL_LOW_POWER,
}


# --- pure functions ------------------------------------------------------------------------


def co2_ppm(raw: int) -> float:
    """ppm from the CO2 word: the word is the concentration itself (3.5.2)."""
    return float(raw)


def temperature_celsius(raw: int) -> float:
    """°C from the temperature word: T = -45 + 175 · word / (2^16 - 1) (3.5.2).

    Datasheet version 1.1 (2021) printed 2^16 as the divisor; the later versions
    and Sensirion's current drivers use 2^16 - 1. The two differ by < 0.003 °C.
    """
    return -45.0 + 175.0 * raw / RAW_FULL_SCALE


def humidity_percent(raw: int) -> float:
    """%RH from the humidity word: RH = 100 · word / (2^16 - 1) (3.5.2)."""
    return 100.0 * raw / RAW_FULL_SCALE


def temperature_offset_word(celsius: float) -> int:
    """The argument word of set_temperature_offset: Toffset · (2^16 - 1) / 175 (3.6.1)."""
    return round(celsius * RAW_FULL_SCALE / 175.0)


def temperature_offset_celsius(word: int) -> float:
    """°C from the word of get_temperature_offset: word · 175 / (2^16 - 1) (3.6.2)."""
    return word * 175.0 / RAW_FULL_SCALE


def is_data_ready(status: int) -> bool:
    """get_data_ready_status: ready unless the least significant 11 bits are 0 (3.8.2)."""
    return status & DATA_READY_MASK != 0


def serial_number(words: Sequence[int]) -> int:
    """The 48-bit serial number from the three words of get_serial_number, first word
    most significant (3.9.2)."""
    value = 0
    for word in words:
        value = value << SERIAL_WORD_BITS | word
    return value


# --- the driver ----------------------------------------------------------------------------


class SCD4xOptions(DriverOptions):
    """Options of an SCD40/SCD41; left out, a setting keeps what the chip holds."""

    mode: Mode = Field(
        default="periodic",
        description="periodic: a new measurement every 5 s; low_power: every 30 s (3.5.1, 3.8.1)",
    )
    temperature_offset: float | None = Field(
        default=None,
        ge=0.0,
        le=TEMPERATURE_OFFSET_MAX,
        description=(
            "°C subtracted for the self-heating of the device around the sensor (3.6.1); "
            "left out, the chip keeps its own setting (4 °C from the factory)"
        ),
    )
    altitude: int | None = Field(
        default=None,
        ge=0,
        le=ALTITUDE_MAX,
        description=(
            "metres above sea level, for the pressure compensation of CO2 (3.6.3); "
            "left out, the chip keeps its own setting (0 m from the factory)"
        ),
    )


class SCD4x(Driver):
    """An SCD40 or SCD41 on I2C, in periodic (or low power periodic) measurement mode.

    The chip measures on its own schedule; each ``read`` asks whether a new
    measurement is waiting and returns [] when not (no data this cycle is not an
    error). Poll at about the signal update interval (5 s, or 30 s in low power
    mode); polling faster only adds empty cycles.
    """

    options_model: ClassVar[type[DriverOptions]] = SCD4xOptions
    bus_kind: ClassVar[str] = "i2c"
    addresses: ClassVar[tuple[int, ...]] = (ADDRESS,)
    # Measurement ranges: CO2 0..40000 ppm (1.1, Table 1), humidity 0..100 %RH
    # (1.2, Table 2), temperature -10..60 °C (1.3, Table 3).
    ranges: ClassVar[dict[str, tuple[float, float]]] = {
        "co2": (0.0, 40000.0),
        "temperature": (-10.0, 60.0),
        "humidity": (0.0, 100.0),
    }

    def __init__(
        self,
        context: DriverContext,
        options: DriverOptions,
        *,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(context, options)
        if not isinstance(options, SCD4xOptions):
            raise TypeError(f"SCD4x needs SCD4xOptions, got {type(options).__name__}")
        self._opts = options
        self._sleep = sleep
        self._clock = clock
        self._measuring = False
        self._serial: int | None = None
        self._last_data = 0.0  # when measuring started or the last measurement was read

    @property
    def serial_number(self) -> int | None:
        """The chip's 48-bit serial number, read by ``setup``."""
        return self._serial

    def _bus(self) -> tuple[SMBusLike, int]:
        bus = self.context.bus
        if bus is None:
            raise SensorError(f"sensor {self.context.sensor!r}: the SCD4x driver needs an I2C bus")
        address = self.context.address if self.context.address is not None else ADDRESS
        return bus, address

    def setup(self) -> None:
        """Stop any running measurement, check the serial number's CRCs, write the
        configured compensation, and start measuring; safe to call again at any time.

        The chip takes settings only when idle (3.6), and only answers
        get_serial_number when idle, hence the stop first. The settings are not
        persisted (no persist_settings): the EEPROM allows about 2000 writes (3.9.1),
        and setup runs again after every failure.
        """
        self._measuring = False
        bus, address = self._bus()
        write_command(
            bus, address, CMD_STOP_PERIODIC_MEASUREMENT, delay=STOP_TIME, sleep=self._sleep
        )
        words = read_words(
            bus,
            address,
            CMD_GET_SERIAL_NUMBER,
            3,
            sensor=self.context.sensor,
            delay=COMMAND_TIME,
            sleep=self._sleep,
        )
        opts = self._opts
        if opts.temperature_offset is not None:
            word = temperature_offset_word(opts.temperature_offset)
            write_command(
                bus,
                address,
                CMD_SET_TEMPERATURE_OFFSET,
                [word],
                delay=COMMAND_TIME,
                sleep=self._sleep,
            )
        if opts.altitude is not None:
            write_command(
                bus,
                address,
                CMD_SET_SENSOR_ALTITUDE,
                [opts.altitude],
                delay=COMMAND_TIME,
                sleep=self._sleep,
            )
        write_command(bus, address, START_COMMAND[opts.mode])
        self._serial = serial_number(words)
        self._last_data = self._clock()
        self._measuring = True

    def read(self) -> list[Measurement]:
        """Ask get_data_ready_status; if a measurement waits, read it with its CRCs.

        Returns [] when no new measurement is ready. A bad CRC on any word raises
        ``SensorError`` and discards all three values, and so does a chip that has
        had nothing ready for ``STALL_INTERVALS`` signal update intervals.
        """
        if not self._measuring:
            self.setup()
        bus, address = self._bus()
        (status,) = read_words(
            bus,
            address,
            CMD_GET_DATA_READY_STATUS,
            1,
            sensor=self.context.sensor,
            delay=COMMAND_TIME,
            sleep=self._sleep,
        )
        if not is_data_ready(status):
            self._check_stall()
            return []
        raw_co2, raw_t, raw_rh = read_words(
            bus,
            address,
            CMD_READ_MEASUREMENT,
            3,
            sensor=self.context.sensor,
            delay=COMMAND_TIME,
            sleep=self._sleep,
        )
        self._last_data = self._clock()
        return [
            Measurement("co2", "ppm", co2_ppm(raw_co2)),
            Measurement("temperature", "Cel", temperature_celsius(raw_t)),
            Measurement("humidity", "%RH", humidity_percent(raw_rh)),
        ]

    def _check_stall(self) -> None:
        interval = INTERVAL[self._opts.mode]
        waited = self._clock() - self._last_data
        if waited > STALL_INTERVALS * interval:
            self._measuring = False
            raise SensorError(
                f"sensor {self.context.sensor!r}: no new measurement for {waited:.0f} s although"
                f" the SCD4x makes one every {interval:g} s — it may have reset (power dip);"
                " it will be started again"
            )

    def close(self) -> None:
        """Forget the setup, so that a reused instance stops and restarts the chip.

        The chip is left measuring: stopping it costs 500 ms of silence on the bus,
        and the next ``setup`` stops it anyway.
        """
        self._measuring = False

    @classmethod
    def identify(cls, bus: SMBusLike, address: int) -> str | None:
        """The name "SCD4x" when the device answers get_serial_number with CRC-valid words.

        A chip in periodic measurement does not answer that command (idle only,
        3.9.2), so get_data_ready_status, which is allowed while measuring (3.8.2),
        is tried next. Both only read; neither changes the chip's mode.
        """
        for command, count in ((CMD_GET_SERIAL_NUMBER, 3), (CMD_GET_DATA_READY_STATUS, 1)):
            try:
                read_words(
                    bus,
                    address,
                    command,
                    count,
                    sensor=f"SCD4x at 0x{address:02x}",
                    delay=COMMAND_TIME,
                )
            except OSError:  # NACK, bus error or bad CRC: try the next, then give up
                continue
            return "SCD4x"
        return None

    @classmethod
    def simulator(cls, address: int, seed: int) -> SimSCD4x:
        """A simulated SCD4x for ``bus: sim``, sped up so that a fresh measurement is
        ready at every read (a real chip has one every 5 s): ``wsn-gateway read`` and
        the demo show values at once. Tests build ``SimSCD4x`` with real periods."""
        from drivers.sim.scd4x import SimSCD4x  # noqa: PLC0415 - the sim imports this module

        return SimSCD4x(seed=seed, period=0.0, low_power_period=0.0)
