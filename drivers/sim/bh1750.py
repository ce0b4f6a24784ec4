"""A simulated BH1750: an opcode interpreter with a data register, under a compressed day.

It answers opcodes as the chip does (power states, one-time and continuous modes,
MTreg, reset) and turns a "true" illuminance into the count a chip at these
settings reports, so the driver's real math runs against it. Page numbers refer
to the ROHM "BH1750FVI Technical Note" (2009.04, Rev.B).

Not simulated: the coarser 4 lx steps of L-resolution mode, noise, and the
measurement-accuracy spread (every simulated chip has the typical 1.2, p.2).
"""

from __future__ import annotations

import errno
import math
import os
import random
import time
from collections.abc import Callable

from drivers.bh1750 import (
    CONTINUOUS_H,
    CONTINUOUS_H2,
    CONTINUOUS_L,
    COUNTS_PER_LUX,
    MTREG_DEFAULT,
    MTREG_HIGH,
    MTREG_HIGH_SHIFT,
    MTREG_LOW,
    MTREG_LOW_MASK,
    ONE_TIME_H,
    ONE_TIME_H2,
    ONE_TIME_L,
    POWER_DOWN,
    POWER_ON,
    RAW_MAX,
    RESET,
    Resolution,
    typical_measurement_time,
)

# Opcode -> (resolution, one-time?) for the six measurement commands (p.5).
_MEASUREMENTS: dict[int, tuple[Resolution, bool]] = {
    CONTINUOUS_H: ("high", False),
    CONTINUOUS_H2: ("high2", False),
    CONTINUOUS_L: ("low", False),
    ONE_TIME_H: ("high", True),
    ONE_TIME_H2: ("high2", True),
    ONE_TIME_L: ("low", True),
}
# MTreg opcodes carry data in their low bits: 01000_MT[7:5] and 011_MT[4:0] (p.5).
_HIGH_OPCODE_MASK, _HIGH_DATA_MASK = 0xF8, 0x07
_LOW_OPCODE_MASK = 0xE0

#: A simulated day lasts this many seconds, so that a demo shows dawn, noon and dusk.
DAY_SECONDS = 600.0
#: Clear-sky light at noon, lx: a bright greenhouse, under the 54612 lx a default chip reads.
NOON_LUX = 30000.0
#: Light at night, lx: a lamp in the next room.
NIGHT_LUX = 0.5


def raw_count(lux: float, resolution: Resolution, mtreg: int) -> int:
    """The count a chip at these settings reports for ``lux``: the inverse of
    ``drivers.bh1750.raw_to_lux``, truncated like an ADC and saturating at 0xFFFF."""
    divisor = 2 if resolution == "high2" else 1
    counts = lux * COUNTS_PER_LUX * (mtreg / MTREG_DEFAULT) * divisor
    # The nudge keeps binary rounding (13106.999999) from costing a whole count.
    return min(max(math.floor(counts + 1e-6), 0), RAW_MAX)


class SimBH1750:
    """A BH1750 behind ``drivers.sim.bus.SimBus`` (plain transfers: ``write_raw``/``read_raw``).

    Set ``illuminance`` (lx) to make the next measurement report it; with ``drift``
    on, each measurement then moves it to the light of the simulated day (a sine
    from dawn to dusk, compressed into ``day_seconds``, under seeded drifting
    clouds). ``clock`` decides when a measurement finishes, so tests can pass a
    fake one.
    """

    def __init__(
        self,
        *,
        seed: int = 0,
        drift: bool = True,
        clock: Callable[[], float] = time.monotonic,
        day_seconds: float = DAY_SECONDS,
    ) -> None:
        self.drift = drift
        self.day_seconds = day_seconds
        self._clock = clock
        self._rng = random.Random(seed)
        self._day_offset = self._rng.uniform(0.0, day_seconds)  # sensors see different hours
        self._cloud = self._rng.uniform(0.6, 1.0)  # fraction of clear-sky light let through
        #: Number of measurements finished so far.
        self.measurements = 0
        self.powered = False
        self.mtreg = MTREG_DEFAULT
        self.data = 0
        self._mode: tuple[Resolution, bool] | None = None
        self._done_at = 0.0
        self.illuminance = self.daylight()

    def daylight(self) -> float:
        """The light of the simulated day at the current clock, lx."""
        phase = ((self._clock() + self._day_offset) % self.day_seconds) / self.day_seconds
        sun = math.sin(2.0 * math.pi * phase)  # above 0 from dawn (phase 0) to dusk (0.5)
        return NIGHT_LUX + max(sun, 0.0) * NOON_LUX * self._cloud

    def power_cycle(self) -> None:
        """Supply off and on (a brown-out): power-down state, MTreg 69, data 0."""
        self.powered = False
        self.mtreg = MTREG_DEFAULT
        self.data = 0
        self._mode = None

    # --- plain transfers (SimBus routes i2c_rdwr, write_byte and read_byte here) ----------
    def write_raw(self, data: bytes) -> None:
        """One write transaction. The chip takes one opcode per STOP (p.10): a second byte
        is not acknowledged."""
        if not data:
            return
        self._opcode(data[0])
        if len(data) > 1:
            raise OSError(errno.EREMOTEIO, os.strerror(errno.EREMOTEIO))

    def read_raw(self, length: int) -> bytes:
        """One read transaction: the data register, high byte first (p.10), then 0xFF."""
        self._settle()
        data = bytes([self.data >> 8, self.data & 0xFF])
        return (data + b"\xff" * max(length - 2, 0))[:length]

    # --- SMBus register transfers: the register byte is an opcode to this chip -----------
    def read_registers(self, register: int, length: int) -> list[int]:
        """An SMBus read sends ``register`` as a write first: the chip executes it as an opcode."""
        self._opcode(register)
        return list(self.read_raw(length))

    def write_registers(self, register: int, data: list[int]) -> None:
        """An SMBus write sends ``register`` then ``data`` in one transaction."""
        self.write_raw(bytes([register, *data]))

    # --- chip behaviour ---------------------------------------------------------------------
    def _opcode(self, opcode: int) -> None:
        self._settle()
        if opcode == POWER_DOWN:
            self.powered = False
            self._mode = None
        elif opcode == POWER_ON:
            self.powered = True
        elif opcode == RESET:
            if self.powered:  # "not acceptable in power down mode" (p.5)
                self.data = 0
        elif opcode & _HIGH_OPCODE_MASK == MTREG_HIGH:
            high = (opcode & _HIGH_DATA_MASK) << MTREG_HIGH_SHIFT
            self.mtreg = high | self.mtreg & MTREG_LOW_MASK
        elif opcode & _LOW_OPCODE_MASK == MTREG_LOW:
            self.mtreg = self.mtreg & ~MTREG_LOW_MASK | opcode & MTREG_LOW_MASK
        elif opcode in _MEASUREMENTS and self.powered:  # they start from power-on (p.5)
            self._start(_MEASUREMENTS[opcode])
        # other opcodes are not defined ("do not input other opcodes"): ignored

    def _start(self, mode: tuple[Resolution, bool]) -> None:
        self._mode = mode
        self._done_at = self._clock() + typical_measurement_time(mode[0], self.mtreg)

    def _settle(self) -> None:
        """Finish a measurement whose time has come; a one-time one then powers down (p.5).

        In continuous mode the register holds the latest finished measurement; the
        ones in between, which nobody read, are skipped rather than computed.
        """
        now = self._clock()
        if self._mode is None or now < self._done_at:
            return
        resolution, one_time = self._mode
        self.data = raw_count(self.illuminance, resolution, self.mtreg)
        self.measurements += 1
        if self.drift:
            self.illuminance = self._step()
        if one_time:
            self.powered = False
            self._mode = None
        else:  # continuous: measurements follow each other without a gap
            period = typical_measurement_time(resolution, self.mtreg)
            self._done_at += period * (math.floor((now - self._done_at) / period) + 1)

    def _step(self) -> float:
        """Clouds drift in a mean-reverting random walk between overcast and clear."""
        self._cloud += self._rng.gauss(0.0, 0.03) + 0.05 * (0.8 - self._cloud)
        self._cloud = min(max(self._cloud, 0.2), 1.0)
        return self.daylight()
