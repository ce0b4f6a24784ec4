"""A simulated ADS1115: the four registers, single-shot conversions that take their time,
and four drifting input voltages turned into the codes a real chip reports.

Section numbers refer to the datasheet SBAS444E. The driver's real register
handling and math run against it.

Not simulated: the comparator and the ALERT/RDY pin (the threshold registers only
store what is written), noise, offset and gain error. Continuous mode is kept
simple: the chip reads busy until single-shot mode is written again, and each
read of the conversion register returns the input at that moment.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable

from drivers.ads1115 import (
    CODE_MAX,
    CODE_MIN,
    CONFIG_RESET,
    HI_THRESH_RESET,
    LO_THRESH_RESET,
    MODE_SINGLE_SHOT,
    OS,
    POINTER_MASK,
    POWER_UP_TIME,
    REG_CONFIG,
    REG_CONVERSION,
    REG_HI_THRESH,
    REG_LO_THRESH,
    decode_config,
    lsb_size,
    word_bytes,
)

#: Supply voltage of the simulated board; inputs are clamped to GND - 0.3 V .. VDD + 0.3 V,
#: the analog input limits of 5.1 Absolute Maximum Ratings.
VDD = 3.3
INPUT_MARGIN = 0.3

# Where each input sits and how far its random walk may stray, volts: a 3.3 V rail through a
# 1:2 divider, a 12.5 V battery through 1:10, and a 4-20 mA loop across 100 Ω (AIN2-AIN3).
INPUT_CENTRES = (1.65, 1.25, 1.10, 0.02)
INPUT_SPANS = (0.05, 0.10, 0.60, 0.005)


def raw_code(volts: float, fsr: float) -> int:
    """The conversion result for a differential input: the ideal code of 7.5.4, Table 7-3,
    clipped at 7FFFh and 8000h."""
    return min(max(round(volts / lsb_size(fsr)), CODE_MIN), CODE_MAX)


class SimADS1115:
    """An ADS1115 behind ``drivers.sim.bus.SimBus``.

    Set ``inputs`` (volts at AIN0..AIN3 against GND) to make the next conversion
    see them; each conversion then moves them one step of a seeded random walk
    (turn off with ``drift=False``). ``clock`` decides when a conversion finishes
    and ``oscillator`` stretches it (1.1 is a clock 10% slow, the datasheet's
    limit), so tests can drive the OS bit.
    """

    def __init__(
        self,
        *,
        seed: int = 0,
        drift: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.drift = drift
        self.oscillator = 1.0
        self._clock = clock
        self._rng = random.Random(seed)
        self.inputs = [
            c + self._rng.uniform(-s, s) / 4
            for c, s in zip(INPUT_CENTRES, INPUT_SPANS, strict=True)
        ]
        #: Number of conversions finished so far.
        self.conversions = 0
        self._regs: dict[int, int] = {}
        self._pending: int | None = None
        self._done_at = 0.0
        self.reset()

    def reset(self) -> None:
        """Power-on state (7.4.1): register reset values of 8.1, powered down."""
        self._regs = {
            REG_CONVERSION: 0x0000,
            REG_CONFIG: CONFIG_RESET & ~OS,
            REG_LO_THRESH: LO_THRESH_RESET,
            REG_HI_THRESH: HI_THRESH_RESET,
        }
        self._pending = None

    @property
    def converting(self) -> bool:
        """True while a conversion runs (the OS bit reads 0)."""
        self._settle()
        return self._pending is not None or not self._regs[REG_CONFIG] & MODE_SINGLE_SHOT

    def differential(self, pair: str) -> float:
        """AINP - AINN for an input name of the driver ("AIN2", "AIN0-AIN3", ...)."""
        positive, _, negative = pair.partition("-")

        def pin(name: str) -> float:
            volts = self.inputs[int(name[-1])]
            return min(max(volts, -INPUT_MARGIN), VDD + INPUT_MARGIN)

        return pin(positive) - (pin(negative) if negative else 0.0)

    # --- the SimChip protocol ------------------------------------------------------------
    def read_registers(self, register: int, length: int) -> list[int]:
        """A register read: two bytes, most significant first (7.5.3); then 0xFF."""
        self._settle()
        register &= POINTER_MASK
        word = self._regs[register]
        if register == REG_CONFIG:
            word = word | OS if not self.converting else word & ~OS
        elif register == REG_CONVERSION and not self._regs[REG_CONFIG] & MODE_SINGLE_SHOT:
            word = self._convert(self._regs[REG_CONFIG]) & 0xFFFF  # continuous mode
        return (word_bytes(word) + [0xFF] * length)[:length]

    def write_registers(self, register: int, data: list[int]) -> None:
        """A register write: two bytes, most significant first; a shorter write changes nothing."""
        self._settle()
        register &= POINTER_MASK
        if len(data) < 2 or register == REG_CONVERSION:  # the conversion register is read-only
            return
        word = data[0] << 8 | data[1]
        if register != REG_CONFIG:
            self._regs[register] = word
            return
        was_converting = self.converting
        self._regs[REG_CONFIG] = word & ~OS
        # OS starts a conversion only from power-down; during one it has no effect (8.1.3).
        if word & OS and word & MODE_SINGLE_SHOT and not was_converting:
            self._pending = self._convert(word)
            rate = decode_config(word).data_rate
            self._done_at = self._clock() + POWER_UP_TIME + self.oscillator / rate

    # --- chip behaviour --------------------------------------------------------------------
    def _convert(self, config: int) -> int:
        fields = decode_config(config)
        return raw_code(self.differential(fields.input), fields.fsr)

    def _settle(self) -> None:
        """Publish a finished conversion and power down (7.4.2.1)."""
        if self._pending is None or self._clock() < self._done_at:
            return
        self._regs[REG_CONVERSION] = self._pending & 0xFFFF
        self._pending = None
        self.conversions += 1
        if self.drift:
            self._step()

    def _step(self) -> None:
        """One step of a mean-reverting random walk per input, kept within its span."""
        for i, (centre, span) in enumerate(zip(INPUT_CENTRES, INPUT_SPANS, strict=True)):
            value = (
                self.inputs[i] + self._rng.gauss(0.0, span / 50) + 0.02 * (centre - self.inputs[i])
            )
            self.inputs[i] = min(max(value, centre - span), centre + span)
