"""A simulated INA219: the six registers, conversions that take their time, and the chip's
own integer arithmetic for current and power, over a drifting load.

Section and equation numbers refer to the datasheet SBOS448G. The true bus voltage
and current become register words exactly as 8.5.1 describes (shunt and bus
counts, then Equations 4 and 5 with truncation), so the driver's real math runs
against it and the datasheet's worked example can be replayed through it.

Not simulated: noise, offset and gain error, and the coarser steps of the shunt
ADC at the larger PGA ranges (every setting reports the full 10 µV resolution).
"""

from __future__ import annotations

import errno
import math
import os
import random
import time
from collections.abc import Callable

from drivers.ina219 import (
    BADC_SHIFT,
    BRNG_SHIFT,
    BUS_LSB,
    BUS_SHIFT,
    CAL_VOID_BIT,
    CNVR,
    CONFIG_RESET,
    CURRENT_DIVISOR,
    LAST_REGISTER,
    MODE_MASK,
    OVF,
    PG_SHIFT,
    POWER_DIVISOR,
    REG_BUS_VOLTAGE,
    REG_CALIBRATION,
    REG_CONFIG,
    REG_CURRENT,
    REG_POWER,
    REG_SHUNT_VOLTAGE,
    RST,
    SADC_SHIFT,
    SHUNT_LSB,
    word_bytes,
)

# ADC settings table (8.6.2.1): conversion time in seconds by the 4-bit BADC/SADC code;
# codes 0X00..0X11 are 9..12 bits (bit 2 is "don't care"), 1000..1111 average 1..128 samples.
ADC_TIMES = {
    0b0000: 84e-6, 0b0001: 148e-6, 0b0010: 276e-6, 0b0011: 532e-6,
    0b0100: 84e-6, 0b0101: 148e-6, 0b0110: 276e-6, 0b0111: 532e-6,
    0b1000: 532e-6, 0b1001: 1.06e-3, 0b1010: 2.13e-3, 0b1011: 4.26e-3,
    0b1100: 8.51e-3, 0b1101: 17.02e-3, 0b1110: 34.05e-3, 0b1111: 68.10e-3,
}  # fmt: skip
ADC_FIELD = 0b1111

# Mode settings table (8.6.2.1): which conversions each mode runs, and whether it repeats.
_MODES: dict[int, tuple[bool, bool, bool]] = {  # shunt, bus, continuous
    0b001: (True, False, False),
    0b010: (False, True, False),
    0b011: (True, True, False),
    0b101: (True, False, True),
    0b110: (False, True, True),
    0b111: (True, True, True),
}  # 000 power-down and 100 ADC off convert nothing

SHUNT_COUNTS_40MV = 4000  # ±40 mV at PGA /1 is ±4000 counts of 10 µV; each PG step doubles it
BUS_COUNTS_MAX = {0: 0x0FFF, 1: 0x1FFF}  # 16 V range: BD12 reads 0; 32 V range: 13 bits

#: The load the simulated board powers: a 12 V supply and its current, with room to drift.
BUS_CENTRE, BUS_SPAN = 12.0, 0.5  # V
CURRENT_CENTRE, CURRENT_SPAN = 0.8, 0.6  # A


def _clamp(value: int, low: int, high: int) -> int:
    return min(max(value, low), high)


def _trunc_div(numerator: int, denominator: int) -> int:
    """Integer division that truncates toward zero, as the chip's does."""
    quotient = abs(numerator) // denominator
    return quotient if numerator >= 0 else -quotient


class SimINA219:
    """An INA219 behind ``drivers.sim.bus.SimBus``, with ``shunt_ohms`` fitted on its board.

    Set ``bus_voltage`` (V at IN-) and ``current`` (A through the shunt) to make the
    next conversion see them; each conversion then moves them one step of a seeded
    random walk (turn off with ``drift=False``). ``clock`` decides when a conversion
    finishes. ``power_cycle()`` is a brown-out: every register back to its reset value.
    """

    def __init__(
        self,
        *,
        seed: int = 0,
        drift: bool = True,
        clock: Callable[[], float] = time.monotonic,
        shunt_ohms: float = 0.1,
    ) -> None:
        self.drift = drift
        self.shunt_ohms = shunt_ohms
        self._clock = clock
        self._rng = random.Random(seed)
        self.bus_voltage = BUS_CENTRE + self._rng.uniform(-0.1, 0.1)
        self.current = CURRENT_CENTRE + self._rng.uniform(-0.2, 0.2)
        #: Number of conversions finished so far.
        self.conversions = 0
        self._regs: dict[int, int] = {}
        self._done_at: float | None = None
        self.power_cycle()

    @property
    def registers(self) -> dict[int, int]:
        """The six registers now, by pointer (for tests; reading them this way clears nothing)."""
        self._settle()
        return dict(self._regs)

    def power_cycle(self) -> None:
        """Power-on reset (8.6.2.1 RST, Table 2): configuration 399Fh, everything else 0."""
        self._regs = dict.fromkeys(range(LAST_REGISTER + 1), 0)
        self._regs[REG_CONFIG] = CONFIG_RESET
        self._start()  # the reset mode is continuous

    # --- the SimChip protocol ------------------------------------------------------------
    def read_registers(self, register: int, length: int) -> list[int]:
        """A register read, most significant byte first (8.5.6); reading power clears CNVR."""
        self._settle()
        if register > LAST_REGISTER:
            raise OSError(errno.EREMOTEIO, os.strerror(errno.EREMOTEIO))  # no such pointer
        word = self._regs[register]
        if register == REG_POWER:
            self._regs[REG_BUS_VOLTAGE] &= ~CNVR
        return (word_bytes(word) + [0xFF] * length)[:length]

    def write_registers(self, register: int, data: list[int]) -> None:
        """A register write of two bytes; the result registers are read-only."""
        self._settle()
        if register > LAST_REGISTER:
            raise OSError(errno.EREMOTEIO, os.strerror(errno.EREMOTEIO))
        if len(data) < 2:
            return
        word = data[0] << 8 | data[1]
        if register == REG_CALIBRATION:
            self._regs[REG_CALIBRATION] = word & ~CAL_VOID_BIT
        elif register == REG_CONFIG:
            if word & RST:  # a reset that is the same as power-on reset; RST self-clears
                self.power_cycle()
                return
            self._regs[REG_CONFIG] = word
            if word & MODE_MASK in _MODES:  # power-down and ADC off leave CNVR alone
                self._regs[REG_BUS_VOLTAGE] &= ~CNVR
            self._start()

    # --- chip behaviour --------------------------------------------------------------------
    def _conversion_time(self) -> float:
        config = self._regs[REG_CONFIG]
        shunt, bus, _ = _MODES[config & MODE_MASK]
        return (ADC_TIMES[config >> SADC_SHIFT & ADC_FIELD] if shunt else 0.0) + (
            ADC_TIMES[config >> BADC_SHIFT & ADC_FIELD] if bus else 0.0
        )

    def _start(self) -> None:
        mode = self._regs[REG_CONFIG] & MODE_MASK
        self._done_at = self._clock() + self._conversion_time() if mode in _MODES else None

    def _settle(self) -> None:
        """Publish a conversion whose time has come; continuous modes start the next one.

        Continuous conversions nobody read in between are skipped, not computed.
        """
        now = self._clock()
        if self._done_at is None or now < self._done_at:
            return
        shunt, bus, continuous = _MODES[self._regs[REG_CONFIG] & MODE_MASK]
        self._convert(shunt=shunt, bus=bus)
        if continuous:
            period = self._conversion_time()
            self._done_at += period * (math.floor((now - self._done_at) / period) + 1)
        else:
            self._done_at = None

    def _convert(self, *, shunt: bool, bus: bool) -> None:
        """One conversion and the arithmetic after it (8.5.1, Equations 4 and 5)."""
        regs = self._regs
        config = regs[REG_CONFIG]
        if shunt:
            limit = SHUNT_COUNTS_40MV << (config >> PG_SHIFT & 0b11)
            counts = round(self.current * self.shunt_ohms / SHUNT_LSB)
            regs[REG_SHUNT_VOLTAGE] = _clamp(counts, -limit, limit) & 0xFFFF
        bus_counts = regs[REG_BUS_VOLTAGE] >> BUS_SHIFT
        if bus:
            bus_max = BUS_COUNTS_MAX[config >> BRNG_SHIFT & 1]
            bus_counts = _clamp(round(self.bus_voltage / BUS_LSB), 0, bus_max)
        shunt_counts = regs[REG_SHUNT_VOLTAGE]
        shunt_counts -= 0x10000 if shunt_counts & 0x8000 else 0
        current = _trunc_div(shunt_counts * regs[REG_CALIBRATION], CURRENT_DIVISOR)
        power = _trunc_div(abs(current) * bus_counts, POWER_DIVISOR)
        overflow = not -0x8000 <= current <= 0x7FFF or power > 0xFFFF
        regs[REG_CURRENT] = _clamp(current, -0x8000, 0x7FFF) & 0xFFFF
        regs[REG_POWER] = min(power, 0xFFFF)
        regs[REG_BUS_VOLTAGE] = bus_counts << BUS_SHIFT | CNVR | (OVF if overflow else 0)
        self.conversions += 1
        if self.drift:
            self._step()

    def _step(self) -> None:
        """One step of a mean-reverting random walk for the supply and for the load."""
        rng = self._rng

        def walk(value: float, centre: float, span: float, sigma: float) -> float:
            value += rng.gauss(0.0, sigma) + 0.02 * (centre - value)
            return min(max(value, centre - span), centre + span)

        self.bus_voltage = walk(self.bus_voltage, BUS_CENTRE, BUS_SPAN, 0.01)
        self.current = walk(self.current, CURRENT_CENTRE, CURRENT_SPAN, 0.02)
