"""Bosch BME280 / BMP280: register map, pure compensation math, and a thin forced-mode driver.

Section and table numbers refer to the BME280 datasheet BST-BME280-DS002 unless
marked otherwise. The BMP280 (BST-BMP280-DS001) is the same chip without the
humidity part: same registers, same temperature and pressure math, other chip id.
Everything above ``class BME280`` is pure, so the math is tested without a bus.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, ClassVar, Literal, NamedTuple

from pydantic import Field

from drivers.base import Driver, DriverContext, DriverOptions, SMBusLike
from gateway.errors import SensorError
from gateway.readings import Measurement

if TYPE_CHECKING:
    from drivers.sim.bme280 import SimBME280

# --- register map (5.3 memory map, Table 18; 5.4 register descriptions) ------------------

REG_CALIB_TP = 0x88  # calib00..calib25: dig_T1..dig_P9, 0xA0 unused, dig_H1 at 0xA1 (Table 16)
CALIB_TP_LENGTH = 26  # 0x88..0xA1 inclusive
REG_CHIP_ID = 0xD0  # 5.4.1
REG_RESET = 0xE0  # 5.4.2: writing RESET_COMMAND resets the chip, other values are ignored
REG_CALIB_H = 0xE1  # calib26..calib32: dig_H2..dig_H6 (Table 16); absent on the BMP280
CALIB_H_LENGTH = 7  # 0xE1..0xE7 inclusive
REG_CTRL_HUM = 0xF2  # 5.4.3: osrs_h in bits 2:0, takes effect at the next ctrl_meas write
REG_STATUS = 0xF3  # 5.4.4
REG_CTRL_MEAS = 0xF4  # 5.4.5: osrs_t 7:5, osrs_p 4:2, mode 1:0
REG_CONFIG = 0xF5  # 5.4.6: t_sb 7:5, filter 4:2, spi3w_en 0
REG_DATA = 0xF7  # press_msb, press_lsb, press_xlsb, temp_*, hum_msb, hum_lsb (5.4.7-5.4.9)
DATA_LENGTH_BME280 = 8  # 0xF7..0xFE: one burst read keeps the three values consistent (4.1)
DATA_LENGTH_BMP280 = 6  # 0xF7..0xFC: the BMP280 has no humidity registers (DS001 4.2)

CHIP_ID_BME280 = 0x60  # 5.4.1
# BMP280 samples read 0x56 or 0x57, mass production 0x58 (DS001 4.3.1; Bosch BMP280_driver).
CHIP_IDS_BMP280 = (0x56, 0x57, 0x58)
RESET_COMMAND = 0xB6  # 5.4.2

STATUS_MEASURING = 0x08  # status bit 3: a conversion is running (5.4.4)
STATUS_IM_UPDATE = 0x01  # status bit 0: NVM is being copied to the image registers (5.4.4)

OSRS_MASK = 0b111  # every osrs_* field is 3 bits (5.4.3, 5.4.5)
OSRS_T_SHIFT = 5  # ctrl_meas bits 7:5 (5.4.5)
OSRS_P_SHIFT = 2  # ctrl_meas bits 4:2 (5.4.5)
FILTER_SHIFT = 2  # config bits 4:2 (5.4.6)
MODE_MASK = 0b11  # ctrl_meas bits 1:0 (5.4.5)
MODE_SLEEP = 0b00  # 3.3.1
MODE_FORCED = 0b01  # 3.3.2; 0b10 selects forced mode too (5.4.5)
MODE_NORMAL = 0b11  # 3.3.3

# Oversampling factor -> osrs_* code (Tables 20, 23, 24); 0 skips the measurement.
OVERSAMPLING_CODES: dict[int, int] = {0: 0b000, 1: 0b001, 2: 0b010, 4: 0b011, 8: 0b100, 16: 0b101}
# IIR filter coefficient -> filter code (5.4.6); 0 is "filter off".
FILTER_CODES: dict[int, int] = {0: 0b000, 2: 0b001, 4: 0b010, 8: 0b011, 16: 0b100}

SKIPPED_20BIT = 0x80000  # temperature/pressure output when skipped (Tables 23, 24)
SKIPPED_16BIT = 0x8000  # humidity output when skipped (Table 20)

# --- pure functions ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Calibration:
    """The chip's factory trimming parameters (4.2.2, Table 16); dig_H* are 0 on a BMP280."""

    dig_t1: int  # unsigned short
    dig_t2: int  # signed short
    dig_t3: int  # signed short
    dig_p1: int  # unsigned short
    dig_p2: int  # signed short, like dig_p3..dig_p9
    dig_p3: int
    dig_p4: int
    dig_p5: int
    dig_p6: int
    dig_p7: int
    dig_p8: int
    dig_p9: int
    dig_h1: int = 0  # unsigned char
    dig_h2: int = 0  # signed short
    dig_h3: int = 0  # unsigned char
    dig_h4: int = 0  # signed 12 bits: 0xE4 is bits 11:4, 0xE5 bits 3:0 are bits 3:0
    dig_h5: int = 0  # signed 12 bits: 0xE5 bits 7:4 are bits 3:0, 0xE6 is bits 11:4
    dig_h6: int = 0  # signed char


def _s8(byte: int) -> int:
    """Two's-complement value of one register byte."""
    return byte - 0x100 if byte & 0x80 else byte


def parse_calibration(tp_block: Sequence[int], h_block: Sequence[int] | None = None) -> Calibration:
    """Trimming parameters from the 26 bytes at 0x88 and (BME280 only) the 7 bytes at 0xE1.

    All 16-bit words are little-endian (Table 16). dig_H4 and dig_H5 share 0xE5,
    one nibble each, and are sign-extended from their byte at 0xE4/0xE6 as
    Bosch's reference driver does.
    """
    if len(tp_block) != CALIB_TP_LENGTH:
        raise ValueError(
            f"calibration block 0x88 needs {CALIB_TP_LENGTH} bytes, got {len(tp_block)}"
        )
    t1, t2, t3, p1, p2, p3, p4, p5, p6, p7, p8, p9 = struct.unpack_from(
        "<HhhHhhhhhhhh", bytes(tp_block)
    )
    tp_only = Calibration(
        dig_t1=t1, dig_t2=t2, dig_t3=t3,
        dig_p1=p1, dig_p2=p2, dig_p3=p3, dig_p4=p4, dig_p5=p5,
        dig_p6=p6, dig_p7=p7, dig_p8=p8, dig_p9=p9,
    )  # fmt: skip
    if h_block is None:
        return tp_only
    if len(h_block) != CALIB_H_LENGTH:
        raise ValueError(f"calibration block 0xE1 needs {CALIB_H_LENGTH} bytes, got {len(h_block)}")
    e1, e2, e3, e4, e5, e6, e7 = h_block
    return replace(
        tp_only,
        dig_h1=tp_block[CALIB_TP_LENGTH - 1],  # 0xA1
        dig_h2=_s8(e2) << 8 | e1,
        dig_h3=e3,
        dig_h4=_s8(e4) << 4 | (e5 & 0x0F),
        dig_h5=_s8(e6) << 4 | (e5 >> 4),
        dig_h6=_s8(e7),
    )


class RawSample(NamedTuple):
    """The uncompensated ADC words of one measurement; adc_h is None on a BMP280."""

    adc_t: int
    adc_p: int
    adc_h: int | None


def parse_data(data: Sequence[int]) -> RawSample:
    """Split the burst read of 0xF7.. (8 bytes, or 6 from a BMP280) into ADC words.

    Pressure and temperature are 20 bits: msb, lsb, then xlsb bits 7:4 (5.4.7,
    5.4.8); humidity is 16 bits big-endian (5.4.9).
    """
    if len(data) not in (DATA_LENGTH_BME280, DATA_LENGTH_BMP280):
        raise ValueError(f"data block needs 8 or 6 bytes, got {len(data)}")
    adc_p = data[0] << 12 | data[1] << 4 | data[2] >> 4
    adc_t = data[3] << 12 | data[4] << 4 | data[5] >> 4
    adc_h = data[6] << 8 | data[7] if len(data) == DATA_LENGTH_BME280 else None
    return RawSample(adc_t, adc_p, adc_h)


def compensate_temperature(cal: Calibration, adc_t: int) -> tuple[float, int]:
    """°C and t_fine from a raw temperature (8.1, double precision).

    t_fine is truncated to an integer as the datasheet does (``(BME280_S32_t)``),
    because the pressure and humidity formulas are specified on that integer.
    """
    var1 = (adc_t / 16384.0 - cal.dig_t1 / 1024.0) * cal.dig_t2
    var2 = (adc_t / 131072.0 - cal.dig_t1 / 8192.0) ** 2 * cal.dig_t3
    return (var1 + var2) / 5120.0, int(var1 + var2)


def compensate_pressure(cal: Calibration, adc_p: int, t_fine: int) -> float:
    """Pa from a raw pressure and the t_fine of the same measurement (8.1, double precision).

    Returns 0.0 where the datasheet does (dig_P1 of 0, a blank calibration), a
    value the driver's range check rejects.
    """
    var1 = t_fine / 2.0 - 64000.0
    var2 = var1 * var1 * cal.dig_p6 / 32768.0
    var2 = var2 + var1 * cal.dig_p5 * 2.0
    var2 = var2 / 4.0 + cal.dig_p4 * 65536.0
    var1 = (cal.dig_p3 * var1 * var1 / 524288.0 + cal.dig_p2 * var1) / 524288.0
    var1 = (1.0 + var1 / 32768.0) * cal.dig_p1
    if var1 == 0.0:
        return 0.0  # the datasheet's guard against division by zero
    p = 1048576.0 - adc_p
    p = (p - var2 / 4096.0) * 6250.0 / var1
    var1 = cal.dig_p9 * p * p / 2147483648.0
    var2 = p * cal.dig_p8 / 32768.0
    return p + (var1 + var2 + cal.dig_p7) / 16.0


def compensate_humidity(cal: Calibration, adc_h: int, t_fine: int) -> float:
    """%RH from a raw humidity and the t_fine of the same measurement (8.1, double precision).

    Clamped to 0..100 as the datasheet does. This is the datasheet's formula; the
    double version in Bosch's BME280_driver multiplies by the dig_H3 term twice,
    which only matters for chips with dig_H3 != 0.
    """
    var_h = t_fine - 76800.0
    var_h = (adc_h - (cal.dig_h4 * 64.0 + cal.dig_h5 / 16384.0 * var_h)) * (
        cal.dig_h2
        / 65536.0
        * (1.0 + cal.dig_h6 / 67108864.0 * var_h * (1.0 + cal.dig_h3 / 67108864.0 * var_h))
    )
    var_h = var_h * (1.0 - cal.dig_h1 * var_h / 524288.0)
    return min(max(var_h, 0.0), 100.0)


def max_measurement_time(osrs_t: int, osrs_p: int, osrs_h: int) -> float:
    """Seconds one forced measurement can take: t_measure,max of 9.1.

    Arguments are oversampling factors (0 = skipped). Pass osrs_h=0 for a BMP280:
    the same formula then gives the BMP280's own figures (5.5 ms typical at x1/x1).
    """
    ms = 1.25
    if osrs_t:
        ms += 2.3 * osrs_t
    if osrs_p:
        ms += 2.3 * osrs_p + 0.575
    if osrs_h:
        ms += 2.3 * osrs_h + 0.575
    return ms / 1000.0


def typical_measurement_time(osrs_t: int, osrs_p: int, osrs_h: int) -> float:
    """Seconds one forced measurement typically takes: t_measure,typ of 9.1."""
    ms = 1.0
    if osrs_t:
        ms += 2.0 * osrs_t
    if osrs_p:
        ms += 2.0 * osrs_p + 0.5
    if osrs_h:
        ms += 2.0 * osrs_h + 0.5
    return ms / 1000.0


# --- the driver --------------------------------------------------------------------------

Oversampling = Literal[0, 1, 2, 4, 8, 16]


class BME280Options(DriverOptions):
    """Options of a BME280/BMP280; the defaults are the weather-monitoring mode (3.5.1)."""

    # Temperature cannot be skipped: pressure and humidity compensation need its t_fine (4.2.3).
    oversampling_temperature: Literal[1, 2, 4, 8, 16] = Field(
        default=1, description="temperature oversampling; pressure and humidity need temperature"
    )
    oversampling_pressure: Oversampling = Field(
        default=1, description="pressure oversampling, 0 skips pressure"
    )
    oversampling_humidity: Oversampling = Field(
        default=1, description="humidity oversampling, 0 skips humidity (ignored on a BMP280)"
    )
    iir_filter: Literal[0, 2, 4, 8, 16] = Field(
        default=0, description="IIR filter coefficient, 0 is off (3.4.4)"
    )


class BME280(Driver):
    """A BME280 or BMP280 on I2C, read in forced mode: one conversion per ``read``, asleep between.

    Forced mode suits polling every few seconds or slower (3.5.1): the chip draws
    almost nothing between reads, and every value is fresh when it is read.
    """

    options_model: ClassVar[type[DriverOptions]] = BME280Options
    bus_kind: ClassVar[str] = "i2c"
    addresses: ClassVar[tuple[int, ...]] = (0x76, 0x77)  # SDO to GND / to VDDIO (6.2)
    # Operating range (section 1, Table 1); readings outside it are not physical.
    ranges: ClassVar[dict[str, tuple[float, float]]] = {
        "temperature": (-40.0, 85.0),
        "pressure": (30000.0, 110000.0),
        "humidity": (0.0, 100.0),
    }

    #: How often to look at the status bit once t_measure,max has passed, and how far apart.
    status_polls: ClassVar[int] = 10
    status_poll_interval: ClassVar[float] = 0.001
    #: NVM copy after power-on takes t_startup, 2 ms (Table 1); wait at most this many ms.
    nvm_polls: ClassVar[int] = 10

    def __init__(
        self,
        context: DriverContext,
        options: DriverOptions,
        *,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        super().__init__(context, options)
        if not isinstance(options, BME280Options):
            raise TypeError(f"BME280 needs BME280Options, got {type(options).__name__}")
        self._opts = options
        self._sleep = sleep
        self._calibration: Calibration | None = None
        self._has_humidity = False
        self._chip_id: int | None = None

    @property
    def chip_id(self) -> int | None:
        """The id read by ``setup``: 0x60 for a BME280, 0x56..0x58 for a BMP280."""
        return self._chip_id

    @property
    def calibration(self) -> Calibration | None:
        """The trimming parameters read by ``setup``."""
        return self._calibration

    @property
    def has_humidity(self) -> bool:
        """True for a BME280, False for a BMP280 (known after ``setup``)."""
        return self._has_humidity

    def _bus(self) -> tuple[SMBusLike, int]:
        bus = self.context.bus
        if bus is None:
            raise SensorError(f"sensor {self.context.sensor!r}: the BME280 driver needs an I2C bus")
        address = self.context.address if self.context.address is not None else self.addresses[0]
        return bus, address

    def _ctrl_hum(self) -> int:
        return OVERSAMPLING_CODES[self._opts.oversampling_humidity]

    def _ctrl_meas(self, mode: int) -> int:
        return (
            OVERSAMPLING_CODES[self._opts.oversampling_temperature] << OSRS_T_SHIFT
            | OVERSAMPLING_CODES[self._opts.oversampling_pressure] << OSRS_P_SHIFT
            | mode
        )

    def setup(self) -> None:
        """Check the chip id, read the calibration and write the measurement settings.

        Leaves the chip in sleep mode; safe to call again at any time.
        """
        self._calibration = None
        bus, address = self._bus()
        chip_id = bus.read_byte_data(address, REG_CHIP_ID)
        if chip_id == CHIP_ID_BME280:
            has_humidity = True
        elif chip_id in CHIP_IDS_BMP280:
            has_humidity = False
        else:
            raise SensorError(
                f"no BME280/BMP280 at 0x{address:02x} on this bus: chip id 0x{chip_id:02x}"
                f" (expected 0x60 or 0x58) — check the address"
            )
        self._wait_for_nvm(bus, address)
        tp_block = bus.read_i2c_block_data(address, REG_CALIB_TP, CALIB_TP_LENGTH)
        h_block = (
            bus.read_i2c_block_data(address, REG_CALIB_H, CALIB_H_LENGTH) if has_humidity else None
        )
        calibration = parse_calibration(tp_block, h_block)
        if calibration.dig_t1 == 0 or calibration.dig_p1 == 0:
            # dig_P1 divides in 8.1; a zero there means the NVM read came back blank.
            raise SensorError(
                f"BME280/BMP280 at 0x{address:02x}: calibration reads as blank — check the wiring"
            )
        # One byte per write: the chip's I2C writes are address/data pairs, not
        # auto-incrementing (6.2.1). ctrl_hum goes first because it only takes
        # effect with the next ctrl_meas write (5.4.3); ctrl_meas in sleep mode
        # goes before config, which may be ignored outside sleep mode (5.4.6).
        if has_humidity:
            bus.write_byte_data(address, REG_CTRL_HUM, self._ctrl_hum())
        bus.write_byte_data(address, REG_CTRL_MEAS, self._ctrl_meas(MODE_SLEEP))
        bus.write_byte_data(
            address, REG_CONFIG, FILTER_CODES[self._opts.iir_filter] << FILTER_SHIFT
        )
        self._chip_id = chip_id
        self._has_humidity = has_humidity
        self._calibration = calibration

    def _wait_for_nvm(self, bus: SMBusLike, address: int) -> None:
        """Calibration read during the NVM copy after power-on would be garbage (5.4.4)."""
        for _ in range(self.nvm_polls):
            if not bus.read_byte_data(address, REG_STATUS) & STATUS_IM_UPDATE:
                return
            self._sleep(0.001)
        raise SensorError(
            f"BME280/BMP280 at 0x{address:02x}: still copying its calibration after"
            f" {self.nvm_polls} ms — check the supply voltage"
        )

    def read(self) -> list[Measurement]:
        """One forced-mode measurement: start it, wait t_measure,max, check status, burst-read."""
        if self._calibration is None:
            self.setup()
        calibration = self._calibration
        assert calibration is not None  # setup either set it or raised
        bus, address = self._bus()
        opts = self._opts
        osrs_h = opts.oversampling_humidity if self._has_humidity else 0
        if self._has_humidity:
            # Re-asserted on every read: a chip that browned out since setup has
            # ctrl_hum back at 0 (humidity skipped), while the ctrl_meas write
            # below restores everything else.
            bus.write_byte_data(address, REG_CTRL_HUM, self._ctrl_hum())
        bus.write_byte_data(address, REG_CTRL_MEAS, self._ctrl_meas(MODE_FORCED))
        self._sleep(
            max_measurement_time(opts.oversampling_temperature, opts.oversampling_pressure, osrs_h)
        )
        for _ in range(self.status_polls):
            if not bus.read_byte_data(address, REG_STATUS) & STATUS_MEASURING:
                break
            self._sleep(self.status_poll_interval)
        else:
            raise SensorError(
                f"BME280/BMP280 at 0x{address:02x}: still measuring after t_measure,max"
                f" and {self.status_polls} status polls — the chip may be hung; power-cycle it"
            )
        length = DATA_LENGTH_BME280 if self._has_humidity else DATA_LENGTH_BMP280
        raw = parse_data(bus.read_i2c_block_data(address, REG_DATA, length))
        temperature, t_fine = compensate_temperature(calibration, raw.adc_t)
        measurements = [Measurement("temperature", "Cel", temperature)]
        if opts.oversampling_pressure:
            pressure = compensate_pressure(calibration, raw.adc_p, t_fine)
            measurements.append(Measurement("pressure", "Pa", pressure))
        if osrs_h and raw.adc_h is not None:
            humidity = compensate_humidity(calibration, raw.adc_h, t_fine)
            measurements.append(Measurement("humidity", "%RH", humidity))
        return measurements

    def close(self) -> None:
        """Forget the setup, so that a reused instance checks the chip again."""
        self._calibration = None

    @classmethod
    def identify(cls, bus: SMBusLike, address: int) -> str | None:
        """The chip by its id register (5.4.1; DS001 4.3.1): "BME280", "BMP280" or None."""
        chip_id = bus.read_byte_data(address, REG_CHIP_ID)
        if chip_id == CHIP_ID_BME280:
            return "BME280"
        if chip_id in CHIP_IDS_BMP280:
            return "BMP280"
        return None

    @classmethod
    def simulator(cls, address: int, seed: int) -> SimBME280:
        """A simulated BME280 whose environment drifts from ``seed``; any address works."""
        from drivers.sim.bme280 import SimBME280  # noqa: PLC0415 - the sim imports this module

        return SimBME280(seed=seed)
