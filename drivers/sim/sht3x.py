"""A simulated SHT3x: a command-driven chip that measures a drifting room in single-shot mode.

It speaks the chip's I2C protocol through ``write_raw``/``read_raw`` (see
``drivers.sim.bus``), with real CRCs from ``drivers.sensirion``, so the real
driver code runs against it. Section numbers refer to the SHT3x-DIS datasheet
(version 5, May 2018).

Simulated: single-shot measurements with and without clock stretching and their
typical duration, a NACK for a read header before the data is ready or when no
data is waiting (4.3), the status register with its power-up value and the
heater/reset/command-failed bits (4.11), soft reset, heater on/off, clear status.
Not simulated: periodic mode, ART, alert limits and the ALERT pin, the heater's
effect on temperature, noise, and the 1 ms gap between commands.
"""

from __future__ import annotations

import errno
import os
import random
import time
from collections.abc import Callable

from drivers.sensirion import FRAME_BYTES, pack_words
from drivers.sht3x import (
    CMD_CLEAR_STATUS,
    CMD_HEATER_DISABLE,
    CMD_HEATER_ENABLE,
    CMD_MEASURE,
    CMD_MEASURE_STRETCH,
    CMD_READ_STATUS,
    CMD_SOFT_RESET,
    MEASUREMENT_TIME_TYPICAL,
    RAW_FULL_SCALE,
    STATUS_AFTER_RESET,
    STATUS_ALERT_PENDING,
    STATUS_COMMAND_FAILED,
    STATUS_HEATER_ON,
    STATUS_RESET_DETECTED,
    STATUS_RH_TRACKING_ALERT,
    STATUS_T_TRACKING_ALERT,
)

# Where the simulated room sits, and how far its random walk may stray.
TEMPERATURE_CENTRE, TEMPERATURE_SPAN = 21.0, 5.0  # °C
HUMIDITY_CENTRE, HUMIDITY_SPAN = 45.0, 15.0  # %RH

_MEASURE_DURATION = {
    **{cmd: MEASUREMENT_TIME_TYPICAL[rep] for rep, cmd in CMD_MEASURE.items()},
    # With clock stretching the chip holds SCL until it is done, so to the master
    # the data is there at the read header: no wait to simulate.
    **dict.fromkeys(CMD_MEASURE_STRETCH.values(), 0.0),
}


def nack() -> OSError:
    """What the Linux i2c-dev driver raises when the chip does not acknowledge."""
    return OSError(errno.EREMOTEIO, os.strerror(errno.EREMOTEIO))


def raw_temperature(celsius: float) -> int:
    """The S_T word for a temperature: the inverse of 4.13, rounded and clipped to 16 bits."""
    return min(max(round((celsius + 45.0) * RAW_FULL_SCALE / 175.0), 0), RAW_FULL_SCALE)


def raw_humidity(percent: float) -> int:
    """The S_RH word for a humidity: the inverse of 4.13, rounded and clipped to 16 bits."""
    return min(max(round(percent * RAW_FULL_SCALE / 100.0), 0), RAW_FULL_SCALE)


class SimSHT3x:
    """An SHT3x behind ``drivers.sim.bus.SimBus``.

    Set ``temperature`` (°C) and ``humidity`` (%RH) to make the next measurement
    report them; each measurement then moves them one step of a seeded random
    walk (turn off with ``drift=False``). ``clock`` decides when a conversion
    finishes, so tests can pass a fake one.
    """

    def __init__(
        self,
        *,
        seed: int = 0,
        drift: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.drift = drift
        self._clock = clock
        self._rng = random.Random(seed)
        self.temperature = TEMPERATURE_CENTRE + self._rng.uniform(-1.0, 1.0)
        self.humidity = HUMIDITY_CENTRE + self._rng.uniform(-5.0, 5.0)
        #: Number of measurements started so far.
        self.measurements = 0
        #: Every command received, in order (for tests that check what the driver sent).
        self.commands: list[int] = []
        self.status = STATUS_AFTER_RESET
        self._output: bytes | None = None  # what the next read header gets
        self._ready_at = 0.0  # ... and from when
        self._corrupt: tuple[int, int | None] | None = None

    @property
    def heater(self) -> bool:
        """True while the heater is on (status bit 13)."""
        return bool(self.status & STATUS_HEATER_ON)

    def corrupt_next_crc(self, word: int = 0, *, command: int | None = None) -> None:
        """Make the next answer (or the next answer to ``command``) carry a wrong CRC on
        word ``word`` (0 is the first; past the last word means the last)."""
        self._corrupt = (word, command)

    def reset(self) -> None:
        """Soft reset (4.9): status back to its power-up value, measurement discarded."""
        self.status = STATUS_AFTER_RESET
        self._output = None

    # --- the command-chip protocol of SimBus ---------------------------------------------
    def write_raw(self, data: bytes) -> None:
        """A write transfer: a 16-bit command. The chip NACKs while it is measuring."""
        now = self._clock()
        if self._output is not None and now < self._ready_at:
            raise nack()  # busy converting: it does not acknowledge its address
        if len(data) != 2:
            # Commands with argument words (alert limits) are not simulated; a single
            # byte is no command at all. Either way the command is not processed.
            self.status |= STATUS_COMMAND_FAILED
            return
        command = data[0] << 8 | data[1]
        self.commands.append(command)
        if command != CMD_READ_STATUS:  # the status read reports on the command before it
            self.status &= ~STATUS_COMMAND_FAILED & 0xFFFF
        if command in _MEASURE_DURATION:
            self._start_measurement(command, now, _MEASURE_DURATION[command])
        elif command == CMD_READ_STATUS:
            self._answer(command, self.status, ready_at=now)
        elif command == CMD_CLEAR_STATUS:
            self.status &= ~(
                STATUS_ALERT_PENDING
                | STATUS_RH_TRACKING_ALERT
                | STATUS_T_TRACKING_ALERT
                | STATUS_RESET_DETECTED
            )
        elif command == CMD_HEATER_ENABLE:
            self.status |= STATUS_HEATER_ON
        elif command == CMD_HEATER_DISABLE:
            self.status &= ~STATUS_HEATER_ON & 0xFFFF
        elif command == CMD_SOFT_RESET:
            self.reset()
        else:
            self.status |= STATUS_COMMAND_FAILED  # "invalid" (Table 18, bit 1)

    def read_raw(self, length: int) -> bytes:
        """A read transfer: the waiting answer, once; NACK when none is ready (4.3)."""
        if self._output is None or self._clock() < self._ready_at:
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
    def _answer(self, command: int, *words: int, ready_at: float) -> None:
        data = bytearray(pack_words(words))
        if self._corrupt is not None and self._corrupt[1] in (None, command):
            index = min(self._corrupt[0], len(words) - 1)
            data[FRAME_BYTES * index + 2] ^= 0xFF  # flip that word's CRC byte
            self._corrupt = None
        self._output = bytes(data)
        self._ready_at = ready_at

    def _start_measurement(self, command: int, now: float, duration: float) -> None:
        # Temperature first, then humidity (4.4).
        self._answer(
            command,
            raw_temperature(self.temperature),
            raw_humidity(self.humidity),
            ready_at=now + duration,
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

        self.temperature = walk(self.temperature, TEMPERATURE_CENTRE, TEMPERATURE_SPAN, 0.05)
        self.humidity = walk(self.humidity, HUMIDITY_CENTRE, HUMIDITY_SPAN, 0.2)
