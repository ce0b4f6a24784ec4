"""A simulated SCD4x: a command-driven CO2 sensor that measures a drifting room on its own clock.

It speaks the chip's I2C protocol through ``write_raw``/``read_raw`` (see
``drivers.sim.bus``), with real CRCs from ``drivers.sensirion``, so the real
driver code runs against it. Section numbers refer to the SCD4x datasheet
(version 1.3, September 2022).

Simulated: idle and (low power) periodic modes; a new measurement every
``period`` (5 s) or ``low_power_period`` (30 s) after the start, readable once
(3.5.2); get_data_ready_status; commands that are idle-only refused (NACK) while
measuring (3.6); the execution time of each command, during which the chip NACKs
(3.3), 500 ms after a stop included; argument words whose CRC is wrong refused
(3.2); the temperature offset as a real chip applies it, against a self-heating
equal to the factory offset, so the default settings report the room.
Not simulated: power-up time, single-shot modes, calibration, persistence,
the effect of altitude or pressure on CO2, noise.
"""

from __future__ import annotations

import errno
import math
import os
import random
import time
from collections.abc import Callable
from typing import Literal

from drivers.scd4x import (
    CMD_GET_DATA_READY_STATUS,
    CMD_GET_SENSOR_ALTITUDE,
    CMD_GET_SERIAL_NUMBER,
    CMD_GET_TEMPERATURE_OFFSET,
    CMD_READ_MEASUREMENT,
    CMD_SET_AMBIENT_PRESSURE,
    CMD_SET_SENSOR_ALTITUDE,
    CMD_SET_TEMPERATURE_OFFSET,
    CMD_START_LOW_POWER_PERIODIC_MEASUREMENT,
    CMD_START_PERIODIC_MEASUREMENT,
    CMD_STOP_PERIODIC_MEASUREMENT,
    COMMAND_TIME,
    RAW_FULL_SCALE,
    SIGNAL_UPDATE_INTERVAL,
    SIGNAL_UPDATE_INTERVAL_LOW_POWER,
    STOP_TIME,
    TEMPERATURE_OFFSET_DEFAULT,
    temperature_offset_celsius,
    temperature_offset_word,
)
from drivers.sensirion import FRAME_BYTES, crc8, pack_words

# Where the simulated room sits, and how far its random walk may stray.
CO2_CENTRE, CO2_SPAN = 650.0, 350.0  # ppm: an occupied room, 300..1000
TEMPERATURE_CENTRE, TEMPERATURE_SPAN = 21.0, 5.0  # °C
HUMIDITY_CENTRE, HUMIDITY_SPAN = 45.0, 15.0  # %RH

# The chip reads warmer than the room by the heat of its own device; the factory
# offset (3.6.1) is meant for such a device, so the sim's self-heating equals it.
SELF_HEATING = TEMPERATURE_OFFSET_DEFAULT
# get_data_ready_status words: only the low 11 bits are specified (3.8.2); the
# upper bits are what real chips answer.
STATUS_NOT_READY = 0x8000
STATUS_READY = 0x8006

Mode = Literal["idle", "periodic", "low_power"]

# Commands a measuring chip still accepts (3.5.2, 3.5.3, 3.6.5, 3.8.2); all others are idle-only.
_WHILE_MEASURING = {
    CMD_READ_MEASUREMENT,
    CMD_STOP_PERIODIC_MEASUREMENT,
    CMD_GET_DATA_READY_STATUS,
    CMD_SET_AMBIENT_PRESSURE,
}
# Every command this simulation knows; others are NACKed.
_KNOWN = _WHILE_MEASURING | {
    CMD_START_PERIODIC_MEASUREMENT,
    CMD_START_LOW_POWER_PERIODIC_MEASUREMENT,
    CMD_GET_SERIAL_NUMBER,
    CMD_SET_TEMPERATURE_OFFSET,
    CMD_GET_TEMPERATURE_OFFSET,
    CMD_SET_SENSOR_ALTITUDE,
    CMD_GET_SENSOR_ALTITUDE,
}
# Commands followed by one argument word with its CRC (3.6.1, 3.6.3, 3.6.5).
_WITH_ARGUMENT = {CMD_SET_TEMPERATURE_OFFSET, CMD_SET_SENSOR_ALTITUDE, CMD_SET_AMBIENT_PRESSURE}


def nack() -> OSError:
    """What the Linux i2c-dev driver raises when the chip does not acknowledge."""
    return OSError(errno.EREMOTEIO, os.strerror(errno.EREMOTEIO))


def raw_temperature(celsius: float) -> int:
    """The temperature word for °C: the inverse of 3.5.2, rounded and clipped to 16 bits."""
    return min(max(round((celsius + 45.0) * RAW_FULL_SCALE / 175.0), 0), RAW_FULL_SCALE)


def raw_humidity(percent: float) -> int:
    """The humidity word for %RH: the inverse of 3.5.2, rounded and clipped to 16 bits."""
    return min(max(round(percent * RAW_FULL_SCALE / 100.0), 0), RAW_FULL_SCALE)


def raw_co2(ppm: float) -> int:
    """The CO2 word for a concentration: ppm as an integer (3.5.2)."""
    return min(max(round(ppm), 0), RAW_FULL_SCALE)


class SimSCD4x:
    """An SCD40/SCD41 behind ``drivers.sim.bus.SimBus``.

    Set ``co2`` (ppm), ``temperature`` (°C, the room's) and ``humidity`` (%RH)
    to make the next measurement report them; each measurement read then moves
    them one step of a seeded random walk (turn off with ``drift=False``).
    ``period`` and ``low_power_period`` are the signal update intervals (the
    datasheet's 5 s and 30 s by default); 0 makes a fresh measurement ready at
    every read, for demos. ``clock`` is the chip's time, so tests can pass a fake one.
    """

    def __init__(
        self,
        *,
        seed: int = 0,
        period: float = SIGNAL_UPDATE_INTERVAL,
        low_power_period: float = SIGNAL_UPDATE_INTERVAL_LOW_POWER,
        drift: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if period < 0 or low_power_period < 0:
            raise ValueError("signal update intervals cannot be negative")
        self.period = period
        self.low_power_period = low_power_period
        self.drift = drift
        self._clock = clock
        self._rng = random.Random(seed)
        self.co2 = CO2_CENTRE + self._rng.uniform(-100.0, 100.0)
        self.temperature = TEMPERATURE_CENTRE + self._rng.uniform(-1.0, 1.0)
        self.humidity = HUMIDITY_CENTRE + self._rng.uniform(-5.0, 5.0)
        #: The 48-bit serial number get_serial_number reports (3.9.2).
        self.serial_number = self._rng.getrandbits(48)
        #: Settings as the chip holds them: offset and altitude words (3.6.1, 3.6.3)
        #: and ambient pressure in hPa (3.6.5).
        self.temperature_offset_word = temperature_offset_word(TEMPERATURE_OFFSET_DEFAULT)
        self.altitude = 0
        self.ambient_pressure: int | None = None
        #: "idle", "periodic" or "low_power".
        self.mode: Mode = "idle"
        #: Measurements read out so far.
        self.measurements = 0
        #: Every command received, in order (for tests that check what the driver sent).
        self.commands: list[int] = []
        self._started_at = 0.0
        self._consumed = 0  # index of the last measurement read out (1 = the first)
        self._busy_until = -math.inf  # executing a command until then: NACK everything
        self._output: bytes | None = None
        self._corrupt: tuple[int, int | None] | None = None

    @property
    def temperature_offset(self) -> float:
        """The temperature offset the chip applies, °C (3.6.2)."""
        return temperature_offset_celsius(self.temperature_offset_word)

    @property
    def data_ready(self) -> bool:
        """True when a measurement is waiting to be read (what get_data_ready_status says)."""
        return self._completed(self._clock()) > self._consumed

    def power_cycle(self) -> None:
        """Lose power and come back (a brown-out): idle, settings back to the factory's
        (nothing is persisted in the simulation), nothing to read."""
        self.mode = "idle"
        self.temperature_offset_word = temperature_offset_word(TEMPERATURE_OFFSET_DEFAULT)
        self.altitude = 0
        self.ambient_pressure = None
        self._output = None
        self._busy_until = -math.inf

    def corrupt_next_crc(self, word: int = 0, *, command: int | None = None) -> None:
        """Make the next answer (or the next answer to ``command``) carry a wrong CRC on
        word ``word`` (0 is the first; past the last word means the last)."""
        self._corrupt = (word, command)

    # --- the command-chip protocol of SimBus ---------------------------------------------
    def write_raw(self, data: bytes) -> None:
        """A write transfer: a command, with its argument word for the setters."""
        now = self._clock()
        if now < self._busy_until or len(data) < 2:
            raise nack()
        command = data[0] << 8 | data[1]
        if command not in _KNOWN:
            raise nack()
        if self.mode != "idle" and command not in _WHILE_MEASURING:
            raise nack()  # idle-only command while measuring (3.6)
        argument = None
        if command in _WITH_ARGUMENT:
            if len(data) != 2 + FRAME_BYTES or crc8(data[2:4]) != data[4]:
                raise nack()  # "In write direction it is mandatory to transmit the checksum"
            argument = data[2] << 8 | data[3]
        elif len(data) != 2:
            raise nack()
        self.commands.append(command)
        self._output = None
        self._execute(command, argument, now)

    def read_raw(self, length: int) -> bytes:
        """A read transfer: the answer of the last command, once; NACK while the command
        executes or when there is nothing to read (3.3, 3.5.2)."""
        if self._clock() < self._busy_until or self._output is None:
            raise nack()
        data, self._output = self._output, None
        # Past the answer nobody drives SDA: the master reads the pull-ups, 0xFF.
        return data[:length].ljust(length, b"\xff")

    # Register access makes no sense to a command chip: it does not acknowledge it.
    def read_registers(self, register: int, length: int) -> list[int]:
        """Not a register chip: NACK."""
        raise nack()

    def write_registers(self, register: int, data: list[int]) -> None:
        """Not a register chip: NACK."""
        raise nack()

    # --- chip behaviour ------------------------------------------------------------------
    def _execute(self, command: int, argument: int | None, now: float) -> None:
        busy = COMMAND_TIME
        if command == CMD_STOP_PERIODIC_MEASUREMENT:
            self.mode = "idle"
            busy = STOP_TIME
        elif command in (CMD_START_PERIODIC_MEASUREMENT, CMD_START_LOW_POWER_PERIODIC_MEASUREMENT):
            self.mode = "periodic" if command == CMD_START_PERIODIC_MEASUREMENT else "low_power"
            self._started_at = now
            self._consumed = 0
            busy = 0.0
        elif command == CMD_GET_DATA_READY_STATUS:
            ready = self._completed(now) > self._consumed
            self._answer(command, STATUS_READY if ready else STATUS_NOT_READY)
        elif command == CMD_READ_MEASUREMENT:
            completed = self._completed(now)
            if completed > self._consumed:  # else nothing to read: the read header gets a NACK
                self._consumed = completed
                self._measure(command)
        elif command == CMD_GET_SERIAL_NUMBER:
            self._answer(
                command,
                self.serial_number >> 32 & 0xFFFF,
                self.serial_number >> 16 & 0xFFFF,
                self.serial_number & 0xFFFF,
            )
        elif command == CMD_SET_TEMPERATURE_OFFSET and argument is not None:
            self.temperature_offset_word = argument
        elif command == CMD_GET_TEMPERATURE_OFFSET:
            self._answer(command, self.temperature_offset_word)
        elif command == CMD_SET_SENSOR_ALTITUDE and argument is not None:
            self.altitude = argument
        elif command == CMD_GET_SENSOR_ALTITUDE:
            self._answer(command, self.altitude)
        elif command == CMD_SET_AMBIENT_PRESSURE:
            self.ambient_pressure = argument
        self._busy_until = now + busy

    def _completed(self, now: float) -> int:
        """How many measurements have completed since the start (the first after one period)."""
        if self.mode == "idle":
            return self._consumed
        period = self.period if self.mode == "periodic" else self.low_power_period
        if period == 0:
            return self._consumed + 1  # sped up: always a fresh one
        return math.floor((now - self._started_at) / period)

    def _answer(self, command: int, *words: int) -> None:
        data = bytearray(pack_words(words))
        if self._corrupt is not None and self._corrupt[1] in (None, command):
            index = min(self._corrupt[0], len(words) - 1)
            data[FRAME_BYTES * index + 2] ^= 0xFF  # flip that word's CRC byte
            self._corrupt = None
        self._output = bytes(data)

    def _measure(self, command: int) -> None:
        reported = self.temperature + SELF_HEATING - self.temperature_offset
        self._answer(
            command, raw_co2(self.co2), raw_temperature(reported), raw_humidity(self.humidity)
        )
        self.measurements += 1
        if self.drift:
            self._step()

    def _step(self) -> None:
        """One step of a mean-reverting random walk, kept within each quantity's span."""
        rng = self._rng

        def walk(value: float, centre: float, span: float, sigma: float) -> float:
            value += rng.gauss(0.0, sigma) + 0.02 * (centre - value)
            return min(max(value, centre - span), centre + span)

        self.co2 = walk(self.co2, CO2_CENTRE, CO2_SPAN, 8.0)
        self.temperature = walk(self.temperature, TEMPERATURE_CENTRE, TEMPERATURE_SPAN, 0.05)
        self.humidity = walk(self.humidity, HUMIDITY_CENTRE, HUMIDITY_SPAN, 0.2)
