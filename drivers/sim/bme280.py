"""A simulated BME280/BMP280: a register file that measures a drifting room in forced mode.

The chip holds a real chip's calibration and turns "true" values into the raw
ADC words a real chip would report, by inverting the driver's own compensation
functions numerically, so the real parsing and math run against it. Section
numbers refer to the BME280 datasheet BST-BME280-DS002.

Not simulated: normal mode (its data registers keep their last values), the
IIR filter, noise, and the lower resolution of low oversampling (3.4): every
word carries a full 20 bits so that round trips are exact to within one LSB.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import Literal

from drivers.bme280 import (
    CHIP_ID_BME280,
    MODE_MASK,
    MODE_NORMAL,
    MODE_SLEEP,
    OSRS_MASK,
    OSRS_P_SHIFT,
    OSRS_T_SHIFT,
    REG_CALIB_H,
    REG_CALIB_TP,
    REG_CHIP_ID,
    REG_CONFIG,
    REG_CTRL_HUM,
    REG_CTRL_MEAS,
    REG_DATA,
    REG_RESET,
    REG_STATUS,
    RESET_COMMAND,
    SKIPPED_16BIT,
    SKIPPED_20BIT,
    STATUS_MEASURING,
    Calibration,
    compensate_humidity,
    compensate_pressure,
    compensate_temperature,
    parse_calibration,
    typical_measurement_time,
)

Variant = Literal["bme280", "bmp280"]

CHIP_ID_BMP280 = 0x58  # mass-production BMP280 (BST-BMP280-DS001 4.3.1)

# NVM of a real BME280: the values Pimoroni's bme280-python tests use
# (tests/calibration.py), packed as Table 16 lays them out.
# 0x88..0xA1: dig_T1=28009 dig_T2=25654 dig_T3=50 dig_P1=39145 dig_P2=-10750
# dig_P3=3024 dig_P4=5667 dig_P5=-120 dig_P6=-7 dig_P7=15500 dig_P8=-14600
# dig_P9=6000, 0xA0 unused, dig_H1=75.
CALIBRATION_TP = bytes([
    0x69, 0x6D, 0x36, 0x64, 0x32, 0x00, 0xE9, 0x98, 0x02, 0xD6, 0xD0, 0x0B, 0x23,
    0x16, 0x88, 0xFF, 0xF9, 0xFF, 0x8C, 0x3C, 0xF8, 0xC6, 0x70, 0x17, 0x00, 0x4B,
])  # fmt: skip
# 0xE1..0xE7: dig_H2=376 dig_H3=0 dig_H4=286 (0x11, 0xE) dig_H5=50 (0x2, 0x03) dig_H6=30.
CALIBRATION_H = bytes([0x78, 0x01, 0x00, 0x11, 0x2E, 0x03, 0x1E])

# osrs_* code -> oversampling factor (Tables 20, 23, 24: codes above 0b101 also mean x16).
_FACTORS = (0, 1, 2, 4, 8, 16, 16, 16)

ADC20_MAX = 0xFFFFF  # temperature and pressure are 20-bit words (5.4.7, 5.4.8)
ADC16_MAX = 0xFFFF  # humidity is a 16-bit word (5.4.9)

# Where the simulated room sits, and how far its random walk may stray.
TEMPERATURE_CENTRE, TEMPERATURE_SPAN = 21.0, 5.0  # °C
PRESSURE_CENTRE, PRESSURE_SPAN = 101325.0, 1500.0  # Pa, one standard atmosphere ± weather
HUMIDITY_CENTRE, HUMIDITY_SPAN = 45.0, 15.0  # %RH


def _nearest(f: Callable[[int], float], target: float, high: int) -> int:
    """The integer in 0..high whose f is nearest target, for monotonic f (either direction)."""
    sign = 1.0 if f(high) >= f(0) else -1.0
    goal = sign * target
    low, top = 0, high
    while low < top:  # first x with sign * f(x) >= goal
        mid = (low + top) // 2
        if sign * f(mid) >= goal:
            top = mid
        else:
            low = mid + 1
    if low > 0 and abs(f(low - 1) - target) <= abs(f(low) - target):
        return low - 1
    return low


def raw_temperature(cal: Calibration, celsius: float) -> int:
    """The adc_T a chip with this calibration reports at this temperature."""
    return _nearest(lambda adc: compensate_temperature(cal, adc)[0], celsius, ADC20_MAX)


def raw_pressure(cal: Calibration, pascal: float, t_fine: int) -> int:
    """The adc_P a chip with this calibration reports at this pressure and t_fine."""
    return _nearest(lambda adc: compensate_pressure(cal, adc, t_fine), pascal, ADC20_MAX)


def raw_humidity(cal: Calibration, percent: float, t_fine: int) -> int:
    """The adc_H a chip with this calibration reports at this humidity and t_fine."""
    return _nearest(lambda adc: compensate_humidity(cal, adc, t_fine), percent, ADC16_MAX)


def encode_data(adc_t: int, adc_p: int, adc_h: int) -> list[int]:
    """The 8 bytes of 0xF7..0xFE for these words: the inverse of ``drivers.bme280.parse_data``."""
    return [
        adc_p >> 12 & 0xFF, adc_p >> 4 & 0xFF, (adc_p & 0x0F) << 4,
        adc_t >> 12 & 0xFF, adc_t >> 4 & 0xFF, (adc_t & 0x0F) << 4,
        adc_h >> 8 & 0xFF, adc_h & 0xFF,
    ]  # fmt: skip


class SimBME280:
    """A BME280 (or, with variant="bmp280", a BMP280) behind ``drivers.sim.bus.SimBus``.

    Set ``temperature`` (°C), ``pressure`` (Pa) and ``humidity`` (%RH) to make
    the next measurement report them; each measurement then moves them one step
    of a seeded random walk (turn off with ``drift=False``). ``clock`` decides
    when a conversion finishes, so tests can pass a fake one.
    """

    def __init__(
        self,
        *,
        seed: int = 0,
        variant: Variant = "bme280",
        drift: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.variant: Variant = variant
        self.drift = drift
        self._clock = clock
        self._rng = random.Random(seed)
        self._calibration = parse_calibration(
            CALIBRATION_TP, CALIBRATION_H if variant == "bme280" else None
        )
        self.temperature = TEMPERATURE_CENTRE + self._rng.uniform(-1.0, 1.0)
        self.pressure = PRESSURE_CENTRE + self._rng.uniform(-200.0, 200.0)
        self.humidity = HUMIDITY_CENTRE + self._rng.uniform(-5.0, 5.0)
        #: Number of forced measurements taken so far.
        self.measurements = 0
        self._regs = bytearray(256)
        self._osrs_h_latched = 0
        self._pending: list[int] | None = None
        self._done_at = 0.0
        self.reset()

    @property
    def has_humidity(self) -> bool:
        """False for the BMP280 variant, which has no humidity sensor."""
        return self.variant == "bme280"

    @property
    def calibration(self) -> Calibration:
        """The trimming parameters this chip's NVM holds."""
        return self._calibration

    @property
    def measuring(self) -> bool:
        """True while a forced conversion runs (status bit 3)."""
        self._settle()
        return self._pending is not None

    def reset(self) -> None:
        """Power-on state (5.3, Table 18): control registers 0, data 0x80000/0x8000, sleep mode."""
        regs = self._regs
        regs[:] = bytes(256)
        regs[REG_CALIB_TP : REG_CALIB_TP + len(CALIBRATION_TP)] = CALIBRATION_TP
        if self.has_humidity:
            regs[REG_CHIP_ID] = CHIP_ID_BME280
            regs[REG_CALIB_H : REG_CALIB_H + len(CALIBRATION_H)] = CALIBRATION_H
            regs[REG_DATA : REG_DATA + 8] = bytes(
                encode_data(SKIPPED_20BIT, SKIPPED_20BIT, SKIPPED_16BIT)
            )
        else:
            regs[REG_CHIP_ID] = CHIP_ID_BMP280
            regs[0xA1] = 0  # no dig_H1 on a BMP280: reserved (DS001 4.2)
            regs[REG_DATA : REG_DATA + 6] = bytes(encode_data(SKIPPED_20BIT, SKIPPED_20BIT, 0)[:6])
        self._osrs_h_latched = 0
        self._pending = None

    # --- the SimChip protocol ------------------------------------------------------------
    def read_registers(self, register: int, length: int) -> list[int]:
        """Burst read with auto-increment (6.2.2); status is computed at the time of the read."""
        self._settle()
        self._regs[REG_STATUS] = STATUS_MEASURING if self._pending is not None else 0
        return [self._regs[(register + i) & 0xFF] for i in range(length)]

    def write_registers(self, register: int, data: list[int]) -> None:
        """An I2C write: the first byte goes to ``register``, then address/data pairs (6.2.1).

        The chip does not auto-increment on writes, so a block write of
        [a, r, b] writes a to ``register`` and b to r; a trailing address alone is dropped.
        """
        if not data:
            return
        self._write(register, data[0])
        for i in range(1, len(data) - 1, 2):
            self._write(data[i], data[i + 1])

    # --- chip behaviour ------------------------------------------------------------------
    def _write(self, register: int, value: int) -> None:
        self._settle()
        value &= 0xFF
        if register == REG_RESET:
            if value == RESET_COMMAND:  # other values are ignored (5.4.2)
                self.reset()
        elif register == REG_CTRL_HUM:
            if self.has_humidity:  # a BMP280 has no ctrl_hum (DS001 4.2)
                self._regs[REG_CTRL_HUM] = value & OSRS_MASK
        elif register == REG_CONFIG:
            self._regs[REG_CONFIG] = value & 0xFD  # bit 1 is reserved (5.4.6)
        elif register == REG_CTRL_MEAS:
            if self._pending is not None:
                return  # busy: the simulation lets the running conversion finish
            self._regs[REG_CTRL_MEAS] = value
            if self.has_humidity:  # ctrl_hum takes effect with this write (5.4.3)
                self._osrs_h_latched = _FACTORS[self._regs[REG_CTRL_HUM] & OSRS_MASK]
            if (value & MODE_MASK) not in (MODE_SLEEP, MODE_NORMAL):  # 0b01 and 0b10: forced
                self._start_forced(value)
        # chip id, calibration, status and data are read-only: writes are ignored

    def _start_forced(self, ctrl_meas: int) -> None:
        osrs_t = _FACTORS[ctrl_meas >> OSRS_T_SHIFT & OSRS_MASK]
        osrs_p = _FACTORS[ctrl_meas >> OSRS_P_SHIFT & OSRS_MASK]
        osrs_h = self._osrs_h_latched
        cal = self._calibration
        adc_t = raw_temperature(cal, self.temperature)
        t_fine = compensate_temperature(cal, adc_t)[1]
        adc_p = raw_pressure(cal, self.pressure, t_fine)
        adc_h = raw_humidity(cal, self.humidity, t_fine) if self.has_humidity else 0
        # Skipped measurements read as 0x80000 / 0x8000 (Tables 20, 23, 24). A skipped
        # temperature leaves the others uncompensable on a real chip too.
        data = encode_data(
            adc_t if osrs_t else SKIPPED_20BIT,
            adc_p if osrs_p else SKIPPED_20BIT,
            adc_h if osrs_h else SKIPPED_16BIT,
        )
        self._pending = data if self.has_humidity else data[:6]
        self._done_at = self._clock() + typical_measurement_time(osrs_t, osrs_p, osrs_h)
        self.measurements += 1
        if self.drift:
            self._step()

    def _settle(self) -> None:
        """Finish a conversion whose time has come: publish the data, go back to sleep (3.3.2)."""
        if self._pending is None or self._clock() < self._done_at:
            return
        self._regs[REG_DATA : REG_DATA + len(self._pending)] = bytes(self._pending)
        self._regs[REG_CTRL_MEAS] = self._regs[REG_CTRL_MEAS] & (0xFF ^ MODE_MASK) | MODE_SLEEP
        self._pending = None

    def _step(self) -> None:
        """One step of a mean-reverting random walk, kept within each quantity's span."""
        rng = self._rng

        def walk(value: float, centre: float, span: float, sigma: float) -> float:
            value += rng.gauss(0.0, sigma) + 0.02 * (centre - value)
            return min(max(value, centre - span), centre + span)

        self.temperature = walk(self.temperature, TEMPERATURE_CENTRE, TEMPERATURE_SPAN, 0.05)
        self.pressure = walk(self.pressure, PRESSURE_CENTRE, PRESSURE_SPAN, 3.0)
        self.humidity = walk(self.humidity, HUMIDITY_CENTRE, HUMIDITY_SPAN, 0.2)
