"""BME280/BMP280: compensation against published numbers, calibration parsing, and the
driver against the simulator and against a minimal hand-written bus."""

from __future__ import annotations

import errno
import os

import pytest
import smbus2
from hypothesis import given, settings
from hypothesis import strategies as st
from i2c_checks import FakeTime
from pydantic import ValidationError

from drivers.base import DriverContext, DriverOptions, load_driver, out_of_range
from drivers.bme280 import (
    BME280,
    CHIP_ID_BME280,
    REG_CONFIG,
    REG_CTRL_HUM,
    REG_CTRL_MEAS,
    REG_DATA,
    REG_RESET,
    REG_STATUS,
    SKIPPED_16BIT,
    SKIPPED_20BIT,
    BME280Options,
    Calibration,
    compensate_humidity,
    compensate_pressure,
    compensate_temperature,
    max_measurement_time,
    parse_calibration,
    parse_data,
    typical_measurement_time,
)
from drivers.sim.bme280 import (
    CALIBRATION_H,
    CALIBRATION_TP,
    SimBME280,
    encode_data,
    raw_humidity,
    raw_pressure,
    raw_temperature,
)
from drivers.sim.bus import SimBus
from gateway.errors import SensorError
from gateway.readings import Measurement

ADDRESS = 0x76

# Pimoroni bme280-python, tests/calibration.py: the calibration of a real chip.
PIMORONI_CAL = Calibration(
    dig_t1=28009, dig_t2=25654, dig_t3=50,
    dig_p1=39145, dig_p2=-10750, dig_p3=3024, dig_p4=5667, dig_p5=-120,
    dig_p6=-7, dig_p7=15500, dig_p8=-14600, dig_p9=6000,
    dig_h1=75, dig_h2=376, dig_h3=0, dig_h4=286, dig_h5=50, dig_h6=30,
)  # fmt: skip
# Pimoroni bme280-python, tests/test_compensation.py: raw inputs and expected outputs.
PIMORONI_ADC_T, PIMORONI_T = 529191, 24.7894877676  # °C
PIMORONI_ADC_P, PIMORONI_P = 326816, 1006.61517564 * 100  # they report hPa
PIMORONI_ADC_H, PIMORONI_H = 30281, 68.66996648709039  # %RH

# BMP280 datasheet BST-BMP280-DS001, 3.12 "Calculating pressure and temperature": the
# worked example (the BME280 uses the same temperature and pressure math).
DATASHEET_CAL = Calibration(
    dig_t1=27504, dig_t2=26435, dig_t3=-1000,
    dig_p1=36477, dig_p2=-10685, dig_p3=3024, dig_p4=2855, dig_p5=140,
    dig_p6=-7, dig_p7=15500, dig_p8=-14600, dig_p9=6000,
)  # fmt: skip
DATASHEET_ADC_T, DATASHEET_T, DATASHEET_T_FINE = 519888, 25.08, 128422
DATASHEET_ADC_P, DATASHEET_P = 415148, 100653.27  # Pa


class Memory:
    """A plain register file with no chip behaviour: what a static capture looks like."""

    def __init__(self) -> None:
        self.regs = bytearray(256)

    def read_registers(self, register: int, length: int) -> list[int]:
        return list(self.regs[register : register + length])

    def write_registers(self, register: int, data: list[int]) -> None:
        self.regs[register : register + len(data)] = bytes(data)


class MinimalBus:
    """Exactly the ``smbus2.SMBus`` methods of ``SMBusLike`` and nothing else; logs each call."""

    __slots__ = ("address", "calls", "chip")

    def __init__(self, address: int, chip: Memory | SimBME280) -> None:
        self.address = address
        self.chip = chip
        self.calls: list[tuple[str, int, object]] = []

    def _check(self, i2c_addr: int) -> None:
        if i2c_addr != self.address:
            raise OSError(errno.EREMOTEIO, os.strerror(errno.EREMOTEIO))

    def read_byte_data(self, i2c_addr: int, register: int, force: bool | None = None) -> int:
        self._check(i2c_addr)
        self.calls.append(("read_byte_data", register, None))
        return self.chip.read_registers(register, 1)[0]

    def write_byte_data(
        self, i2c_addr: int, register: int, value: int, force: bool | None = None
    ) -> None:
        self._check(i2c_addr)
        self.calls.append(("write_byte_data", register, value))
        self.chip.write_registers(register, [value])

    def read_i2c_block_data(
        self, i2c_addr: int, register: int, length: int, force: bool | None = None
    ) -> list[int]:
        self._check(i2c_addr)
        self.calls.append(("read_i2c_block_data", register, length))
        return self.chip.read_registers(register, length)

    def write_i2c_block_data(
        self, i2c_addr: int, register: int, data: list[int], force: bool | None = None
    ) -> None:
        self._check(i2c_addr)
        self.calls.append(("write_i2c_block_data", register, list(data)))
        self.chip.write_registers(register, list(data))

    def close(self) -> None:
        self.calls.append(("close", 0, None))

    def writes(self) -> list[tuple[int, object]]:
        return [(reg, value) for name, reg, value in self.calls if name.startswith("write")]


def make_driver(
    bus: object, time: FakeTime | None = None, address: int = ADDRESS, /, **options: object
) -> BME280:
    context = DriverContext(sensor="env", bus=bus, address=address)  # type: ignore[arg-type]
    sleep = time.sleep if time is not None else FakeTime().sleep
    return BME280(context, BME280Options.model_validate(options), sleep=sleep)


def sim_setup(
    variant: str = "bme280", **options: object
) -> tuple[SimBus, SimBME280, BME280, FakeTime]:
    time = FakeTime()
    chip = SimBME280(seed=7, variant=variant, drift=False, clock=time.clock)  # type: ignore[arg-type]
    bus = SimBus()
    bus.attach(ADDRESS, chip)
    return bus, chip, make_driver(bus, time, **options), time


def values(measurements: list[Measurement]) -> dict[str, float]:
    out: dict[str, float] = {}
    for m in measurements:
        assert isinstance(m.value, float)
        out[m.quantity] = m.value
    return out


# --- compensation against published numbers ------------------------------------------


def test_temperature_matches_pimoroni_reference() -> None:
    celsius, t_fine = compensate_temperature(PIMORONI_CAL, PIMORONI_ADC_T)
    assert celsius == pytest.approx(PIMORONI_T, abs=1e-9)
    assert t_fine == 126922  # (var1 + var2) truncated, as the datasheet's (BME280_S32_t) cast


def test_pressure_matches_pimoroni_reference() -> None:
    # Pimoroni keeps t_fine fractional; the datasheet (8.1) truncates it to an
    # integer, which moves this pressure by 0.006 Pa (the ADC step is ~0.16 Pa).
    _, t_fine = compensate_temperature(PIMORONI_CAL, PIMORONI_ADC_T)
    pascal = compensate_pressure(PIMORONI_CAL, PIMORONI_ADC_P, t_fine)
    assert pascal == pytest.approx(PIMORONI_P, abs=0.01)


def test_humidity_matches_pimoroni_reference() -> None:
    # Same t_fine remark as for pressure: the difference is 2e-6 %RH.
    _, t_fine = compensate_temperature(PIMORONI_CAL, PIMORONI_ADC_T)
    percent = compensate_humidity(PIMORONI_CAL, PIMORONI_ADC_H, t_fine)
    assert percent == pytest.approx(PIMORONI_H, abs=1e-5)


def test_matches_bmp280_datasheet_worked_example() -> None:
    celsius, t_fine = compensate_temperature(DATASHEET_CAL, DATASHEET_ADC_T)
    assert t_fine == DATASHEET_T_FINE
    assert celsius == pytest.approx(DATASHEET_T, abs=0.005)
    # The datasheet prints 100653.27 Pa; with its own integer t_fine the double
    # formula gives 100653.258 (the integer version gives 25767236/256 = 100653.266).
    pascal = compensate_pressure(DATASHEET_CAL, DATASHEET_ADC_P, t_fine)
    assert pascal == pytest.approx(DATASHEET_P, abs=0.02)


def test_humidity_is_clamped_like_the_datasheet() -> None:
    _, t_fine = compensate_temperature(PIMORONI_CAL, PIMORONI_ADC_T)
    assert compensate_humidity(PIMORONI_CAL, 0, t_fine) == 0.0
    assert compensate_humidity(PIMORONI_CAL, 0xFFFF, t_fine) == 100.0


def test_pressure_with_blank_calibration_is_zero_not_a_crash() -> None:
    blank = Calibration(0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)
    assert compensate_pressure(blank, 400000, 0) == 0.0  # 8.1: "avoid exception ..."


# --- byte parsing ----------------------------------------------------------------------


def test_calibration_bytes_of_the_simulated_chip_parse_to_pimoroni_values() -> None:
    assert parse_calibration(CALIBRATION_TP, CALIBRATION_H) == PIMORONI_CAL


def test_calibration_h4_h5_share_a_nibble_each_and_are_signed() -> None:
    # Table 16: dig_H4 = 0xE4 (bits 11:4) and 0xE5 bits 3:0; dig_H5 = 0xE5 bits 7:4 and
    # 0xE6 (bits 11:4). Worked by hand: 0xF0 is -16, so H4 = -16*16 + 0xA = -246, and
    # 0x81 is -127, so H5 = -127*16 + 0x5 = -2027.
    h_block = [0x00, 0x80, 0xFF, 0xF0, 0x5A, 0x81, 0xFF]
    cal = parse_calibration(CALIBRATION_TP, h_block)
    assert cal.dig_h2 == -32768  # signed short 0x8000
    assert cal.dig_h3 == 255  # unsigned char
    assert cal.dig_h4 == -246
    assert cal.dig_h5 == -2027
    assert cal.dig_h6 == -1  # signed char
    # And the positive packing of the real chip: 0x11,0x2E,0x03 -> H4 0x11E, H5 0x032.
    real = parse_calibration(CALIBRATION_TP, CALIBRATION_H)
    assert (real.dig_h4, real.dig_h5) == (0x11E, 0x032)


def test_calibration_signed_and_unsigned_words() -> None:
    tp_block = bytearray(CALIBRATION_TP)
    tp_block[0:2] = b"\xff\xff"  # dig_T1 is unsigned
    tp_block[2:4] = b"\xff\xff"  # dig_T2 is signed
    tp_block[6:8] = b"\x00\x80"  # dig_P1 is unsigned
    tp_block[25] = 0xFF  # dig_H1 is an unsigned char
    cal = parse_calibration(tp_block, CALIBRATION_H)
    assert (cal.dig_t1, cal.dig_t2, cal.dig_p1, cal.dig_h1) == (65535, -1, 32768, 255)


def test_calibration_without_humidity_block_is_a_bmp280() -> None:
    cal = parse_calibration(CALIBRATION_TP)
    assert cal.dig_t1 == PIMORONI_CAL.dig_t1
    assert (cal.dig_h1, cal.dig_h2, cal.dig_h4, cal.dig_h5) == (0, 0, 0, 0)


@pytest.mark.parametrize(("tp_len", "h_len"), [(24, 7), (26, 6)])
def test_calibration_wrong_lengths_are_refused(tp_len: int, h_len: int) -> None:
    with pytest.raises(ValueError, match="needs"):
        parse_calibration(bytes(tp_len), bytes(h_len))


def test_parse_data_splits_20_and_16_bit_words() -> None:
    # Same packing as Pimoroni's tests: msb = v >> 12, lsb = v >> 4, xlsb = (v & 0xF) << 4.
    data = [0x4F, 0xCA, 0x00, 0x81, 0x32, 0x70, 0x76, 0x49]
    assert parse_data(data) == (0x81327, 0x4FCA0, 0x7649)
    assert parse_data(data[:6]).adc_h is None
    with pytest.raises(ValueError, match="8 or 6"):
        parse_data(data[:7])


def test_power_on_data_reads_as_the_skipped_pattern() -> None:
    # Table 18: press/temp msb reset to 0x80, hum_msb to 0x80, the rest to 0x00.
    raw = parse_data([0x80, 0, 0, 0x80, 0, 0, 0x80, 0])
    assert raw == (SKIPPED_20BIT, SKIPPED_20BIT, SKIPPED_16BIT)


# --- measurement time (9.1) --------------------------------------------------------------


def test_measurement_time_formula() -> None:
    # t_measure,max = 1.25 + 2.3*T + (2.3*P + 0.575) + (2.3*H + 0.575) ms, by hand:
    assert max_measurement_time(1, 1, 1) == pytest.approx(9.3e-3)
    assert max_measurement_time(16, 16, 16) == pytest.approx(112.8e-3)
    assert max_measurement_time(2, 16, 1) == pytest.approx(46.1e-3)
    assert max_measurement_time(1, 0, 0) == pytest.approx(3.55e-3)  # skipped terms vanish
    # Without humidity: the BMP280 at x1/x1, whose "ultra-low power" preset Bosch's
    # BMP280_driver README quotes at 5.5 ms average measurement time.
    assert typical_measurement_time(1, 1, 0) == pytest.approx(5.5e-3)
    assert max_measurement_time(1, 1, 0) == pytest.approx(6.425e-3)


def test_driver_waits_t_measure_max_before_reading() -> None:
    _, _, driver, time = sim_setup(oversampling_pressure=16, oversampling_humidity=2)
    driver.setup()
    time.sleeps.clear()
    driver.read()
    assert time.sleeps == [pytest.approx(max_measurement_time(1, 16, 2))]


# --- the driver against the simulator ----------------------------------------------------


@pytest.mark.parametrize(
    ("celsius", "pascal", "percent"),
    [(21.0, 101325.0, 45.0), (-40.0, 30000.0, 0.0), (85.0, 110000.0, 100.0), (0.0, 87000.0, 3.5)],
)
def test_round_trip_through_the_simulator(celsius: float, pascal: float, percent: float) -> None:
    _, chip, driver, _ = sim_setup()
    chip.temperature, chip.pressure, chip.humidity = celsius, pascal, percent
    got = values(driver.read())
    assert list(got) == ["temperature", "pressure", "humidity"]
    assert got["temperature"] == pytest.approx(celsius, abs=0.01)
    assert got["pressure"] == pytest.approx(pascal, abs=1.0)
    assert got["humidity"] == pytest.approx(percent, abs=0.05)


@settings(max_examples=60, deadline=None)
@given(
    celsius=st.floats(-40.0, 85.0),
    pascal=st.floats(30000.0, 110000.0),
    percent=st.floats(0.0, 100.0),
)
def test_round_trip_property(celsius: float, pascal: float, percent: float) -> None:
    _, chip, driver, _ = sim_setup()
    chip.temperature, chip.pressure, chip.humidity = celsius, pascal, percent
    got = values(driver.read())
    assert got["temperature"] == pytest.approx(celsius, abs=0.01)
    assert got["pressure"] == pytest.approx(pascal, abs=1.0)
    assert got["humidity"] == pytest.approx(percent, abs=0.05)


def test_units_are_senml() -> None:
    _, _, driver, _ = sim_setup()
    assert [(m.quantity, m.unit) for m in driver.read()] == [
        ("temperature", "Cel"),
        ("pressure", "Pa"),
        ("humidity", "%RH"),
    ]


def test_setup_is_lazy_and_idempotent() -> None:
    _, _, driver, _ = sim_setup()
    before = driver.calibration
    assert before is None
    driver.read()
    assert driver.chip_id == CHIP_ID_BME280
    assert driver.calibration == PIMORONI_CAL
    driver.setup()
    driver.setup()
    assert len(driver.read()) == 3


def test_real_clock_default_sleep() -> None:
    """No fake time at all: the driver's real sleep outlasts the simulated conversion."""
    chip = SimBME280(seed=1)
    bus = SimBus()
    bus.attach(0x77, chip)
    driver = BME280(DriverContext("env", bus, 0x77), BME280Options())
    chip.temperature = 19.5
    assert values(driver.read())["temperature"] == pytest.approx(19.5, abs=0.01)


def test_wrong_chip_id_names_the_address() -> None:
    memory = Memory()
    memory.regs[0xD0] = 0x12
    driver = make_driver(MinimalBus(ADDRESS, memory))
    with pytest.raises(SensorError, match="check the address") as caught:
        driver.read()
    assert "0x76" in str(caught.value)
    assert "chip id 0x12" in str(caught.value)
    assert isinstance(caught.value, OSError)  # the polling layer treats it as a failed read


def test_empty_address_raises_the_bus_error() -> None:
    bus, _, _, _ = sim_setup()
    driver = make_driver(bus, None, 0x77)  # nothing attached there
    with pytest.raises(OSError) as caught:
        driver.read()
    assert caught.value.errno == errno.EREMOTEIO


def test_bus_error_propagates_from_read_and_the_next_read_recovers() -> None:
    bus, chip, driver, _ = sim_setup()
    driver.read()
    bus.inject_faults(errno.EREMOTEIO)
    with pytest.raises(OSError) as caught:
        driver.read()
    assert caught.value.errno == errno.EREMOTEIO  # 121
    assert not isinstance(caught.value, SensorError)
    chip.temperature = 23.0
    assert values(driver.read())["temperature"] == pytest.approx(23.0, abs=0.01)


def test_blank_calibration_is_a_sensor_error() -> None:
    memory = Memory()
    memory.regs[0xD0] = CHIP_ID_BME280  # answers with the right id, but NVM reads as zeros
    with pytest.raises(SensorError, match="calibration reads as blank"):
        make_driver(MinimalBus(ADDRESS, memory)).setup()


def test_nvm_copy_that_never_ends_is_a_sensor_error() -> None:
    memory = Memory()
    memory.regs[0xD0] = CHIP_ID_BME280
    memory.regs[REG_STATUS] = 0x01  # im_update stuck
    with pytest.raises(SensorError, match="still copying"):
        make_driver(MinimalBus(ADDRESS, memory)).setup()


def test_bmp280_variant_has_no_humidity() -> None:
    time = FakeTime()
    chip = SimBME280(variant="bmp280", drift=False, clock=time.clock)
    bus = MinimalBus(ADDRESS, chip)
    driver = make_driver(bus, time)
    chip.temperature, chip.pressure = 30.0, 95000.0
    got = values(driver.read())
    assert driver.chip_id == 0x58
    assert not driver.has_humidity
    assert list(got) == ["temperature", "pressure"]
    assert got["temperature"] == pytest.approx(30.0, abs=0.01)
    assert got["pressure"] == pytest.approx(95000.0, abs=1.0)
    assert ("read_i2c_block_data", REG_DATA, 6) in bus.calls  # 0xF7..0xFC only
    assert ("read_i2c_block_data", 0xE1, 7) not in bus.calls  # no humidity calibration
    assert all(reg != REG_CTRL_HUM for reg, _ in bus.writes())  # no ctrl_hum on a BMP280
    assert time.sleeps[-1] == pytest.approx(max_measurement_time(1, 1, 0))


def test_oversampling_zero_skips_pressure() -> None:
    _, chip, driver, _ = sim_setup(oversampling_pressure=0)
    got = values(driver.read())
    assert list(got) == ["temperature", "humidity"]
    assert parse_data(chip.read_registers(REG_DATA, 8)).adc_p == SKIPPED_20BIT


def test_oversampling_zero_skips_humidity() -> None:
    _, chip, driver, _ = sim_setup(oversampling_humidity=0)
    got = values(driver.read())
    assert list(got) == ["temperature", "pressure"]
    assert parse_data(chip.read_registers(REG_DATA, 8)).adc_h == SKIPPED_16BIT


def test_setup_writes_ctrl_hum_before_ctrl_meas_then_config() -> None:
    time = FakeTime()
    bus = MinimalBus(ADDRESS, SimBME280(drift=False, clock=time.clock))
    driver = make_driver(
        bus, time, oversampling_humidity=4, oversampling_pressure=16, iir_filter=16
    )
    driver.setup()
    # ctrl_hum osrs_h x4 = 0b011 (5.4.3); ctrl_meas osrs_t x1 (001), osrs_p x16 (101),
    # sleep (00) = 0b001_101_00; config filter 16 = 0b100 in bits 4:2 (5.4.6).
    assert bus.writes() == [(REG_CTRL_HUM, 0b011), (REG_CTRL_MEAS, 0b00110100), (REG_CONFIG, 0x10)]
    bus.calls.clear()
    driver.read()
    # Each read re-asserts ctrl_hum, then starts forced mode (mode bits 01).
    assert bus.writes() == [(REG_CTRL_HUM, 0b011), (REG_CTRL_MEAS, 0b00110101)]


def test_default_forced_start_is_0x25() -> None:
    time = FakeTime()
    bus = MinimalBus(ADDRESS, SimBME280(drift=False, clock=time.clock))
    make_driver(bus, time).read()
    assert (REG_CTRL_MEAS, 0x25) in bus.writes()  # osrs_t x1, osrs_p x1, forced


def test_driver_works_against_a_minimal_hand_written_bus() -> None:
    """A static register capture behind only the SMBusLike methods: no simulator involved."""
    memory = Memory()
    memory.regs[0xD0] = CHIP_ID_BME280
    memory.regs[0x88 : 0x88 + 26] = CALIBRATION_TP
    memory.regs[0xE1 : 0xE1 + 7] = CALIBRATION_H
    # Pimoroni's raw test values, packed the way their test packs them.
    p, t, h = PIMORONI_ADC_P, PIMORONI_ADC_T, PIMORONI_ADC_H
    memory.regs[0xF7:0xFF] = bytes([
        p >> 12, (p >> 4) & 0xFF, (p & 0xF) << 4,
        t >> 12, (t >> 4) & 0xFF, (t & 0xF) << 4,
        h >> 8, h & 0xFF,
    ])  # fmt: skip
    bus = MinimalBus(ADDRESS, memory)
    got = values(make_driver(bus).read())
    assert got["temperature"] == pytest.approx(PIMORONI_T, abs=1e-9)
    assert got["pressure"] == pytest.approx(PIMORONI_P, abs=0.01)
    assert got["humidity"] == pytest.approx(PIMORONI_H, abs=1e-5)
    used = {name for name, _, _ in bus.calls}
    assert used <= {"read_byte_data", "write_byte_data", "read_i2c_block_data"}
    assert all(hasattr(smbus2.SMBus, name) for name in used)


def test_status_is_polled_until_the_conversion_ends() -> None:
    time = FakeTime()
    # The chip's clock runs at 0.8 x the driver's: after t_measure,max (9.3 ms) it has
    # run 7.44 ms of its typical 8 ms conversion, so the driver has to poll again.
    chip = SimBME280(drift=False, clock=lambda: time.now * 0.8)
    bus = MinimalBus(ADDRESS, chip)
    driver = make_driver(bus, time)
    chip.temperature = 10.0
    got = values(driver.read())
    assert got["temperature"] == pytest.approx(10.0, abs=0.01)
    status_reads = [reg for name, reg, _ in bus.calls if name == "read_byte_data"]
    assert status_reads.count(REG_STATUS) == 3  # NVM check in setup, then busy, then done
    assert time.sleeps[-1] == BME280.status_poll_interval


def test_a_chip_that_never_finishes_is_a_sensor_error() -> None:
    time = FakeTime()
    chip = SimBME280(drift=False, clock=lambda: 0.0)  # its conversion never ends
    bus = SimBus()
    bus.attach(ADDRESS, chip)
    with pytest.raises(SensorError, match="still measuring"):
        make_driver(bus, time).read()
    assert len(time.sleeps) == 1 + BME280.status_polls  # t_measure,max, then one per poll


def test_humidity_survives_a_chip_reset_between_reads() -> None:
    bus, chip, driver, _ = sim_setup()
    driver.read()
    bus.write_byte_data(ADDRESS, REG_RESET, 0xB6)  # e.g. a brown-out: ctrl_hum back to 0
    chip.humidity = 80.0
    assert values(driver.read())["humidity"] == pytest.approx(80.0, abs=0.05)


def test_close_makes_the_next_read_set_up_again() -> None:
    time = FakeTime()
    bus = MinimalBus(ADDRESS, SimBME280(drift=False, clock=time.clock))
    driver = make_driver(bus, time)
    driver.read()
    driver.close()
    bus.calls.clear()
    driver.read()
    assert bus.calls[0] == ("read_byte_data", 0xD0, None)


def test_missing_bus_is_a_clear_error() -> None:
    driver = BME280(DriverContext(sensor="env"), BME280Options())
    with pytest.raises(SensorError, match="needs an I2C bus"):
        driver.read()


def test_wrong_options_type_is_refused() -> None:
    with pytest.raises(TypeError, match="BME280Options"):
        BME280(DriverContext(sensor="env"), DriverOptions())


# --- options, registry, ranges ---------------------------------------------------------


def test_options_defaults() -> None:
    opts = BME280Options()
    assert (opts.oversampling_temperature, opts.oversampling_pressure) == (1, 1)
    assert (opts.oversampling_humidity, opts.iir_filter) == (1, 0)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("oversampling_temperature", 0),  # pressure and humidity need temperature
        ("oversampling_pressure", 3),
        ("oversampling_humidity", 32),
        ("iir_filter", 1),
        ("mode", "normal"),  # unknown option
    ],
)
def test_options_refuse_what_the_chip_cannot_do(field: str, value: object) -> None:
    with pytest.raises(ValidationError):
        BME280Options.model_validate({field: value})


def test_options_error_lists_accepted_values() -> None:
    with pytest.raises(ValidationError) as caught:
        BME280Options.model_validate({"oversampling_pressure": 3})
    assert "0, 1, 2, 4, 8 or 16" in str(caught.value)


def test_registry_and_class_attributes() -> None:
    assert load_driver("bme280") is BME280
    assert BME280.bus_kind == "i2c"
    assert BME280.addresses == (0x76, 0x77)
    assert BME280.options_model is BME280Options
    assert isinstance(BME280.simulator(0x76, seed=3), SimBME280)


def test_datasheet_ranges_reject_impossible_values() -> None:
    assert out_of_range(BME280, Measurement("temperature", "Cel", 85.5))
    assert out_of_range(BME280, Measurement("pressure", "Pa", 0.0))
    assert not out_of_range(BME280, Measurement("humidity", "%RH", 100.0))


# --- the simulator on its own ------------------------------------------------------------


def test_sim_forced_mode_measures_then_returns_to_sleep() -> None:
    time = FakeTime()
    chip = SimBME280(drift=False, clock=time.clock)
    chip.write_registers(REG_CTRL_MEAS, [0x25])
    assert chip.read_registers(REG_STATUS, 1) == [0x08]  # measuring
    assert chip.read_registers(REG_DATA, 3) == [0x80, 0x00, 0x00]  # not published yet
    time.now += typical_measurement_time(1, 1, 0)  # ctrl_hum is 0: humidity skipped
    assert chip.read_registers(REG_STATUS, 1) == [0x00]
    assert chip.read_registers(REG_CTRL_MEAS, 1) == [0x24]  # mode bits back to sleep
    raw = parse_data(chip.read_registers(REG_DATA, 8))
    assert raw.adc_h == SKIPPED_16BIT
    assert compensate_temperature(PIMORONI_CAL, raw.adc_t)[0] == pytest.approx(
        chip.temperature, abs=0.001
    )


def test_sim_reset_restores_power_on_state() -> None:
    time = FakeTime()
    chip = SimBME280(drift=False, clock=time.clock)
    chip.write_registers(REG_CTRL_HUM, [0x01])
    chip.write_registers(REG_RESET, [0x42])  # not the reset word: ignored (5.4.2)
    assert chip.read_registers(REG_CTRL_HUM, 1) == [0x01]
    chip.write_registers(REG_RESET, [0xB6])
    assert chip.read_registers(REG_CTRL_HUM, 4) == [0, 0, 0, 0]
    assert chip.read_registers(REG_RESET, 1) == [0]  # reads as 0x00
    assert chip.read_registers(0xD0, 1) == [0x60]
    assert bytes(chip.read_registers(0x88, 26)) == CALIBRATION_TP  # NVM survives


def test_sim_block_write_is_address_data_pairs() -> None:
    chip = SimBME280()
    chip.write_registers(REG_CTRL_HUM, [0x03, REG_CONFIG, 0x10])  # 6.2.1
    assert chip.read_registers(REG_CTRL_HUM, 1) == [0x03]
    assert chip.read_registers(REG_CONFIG, 1) == [0x10]
    chip.write_registers(0xD0, [0x99])  # chip id is read-only
    assert chip.read_registers(0xD0, 1) == [0x60]


def test_sim_bmp280_has_no_humidity_registers() -> None:
    chip = SimBME280(variant="bmp280")
    assert chip.read_registers(0xD0, 1) == [0x58]
    chip.write_registers(REG_CTRL_HUM, [0x01])
    assert chip.read_registers(REG_CTRL_HUM, 1) == [0x00]
    assert chip.read_registers(0xE1, 7) == [0] * 7


def test_sim_drift_is_seeded_plausible_and_bounded() -> None:
    def run(seed: int) -> list[tuple[float, float, float]]:
        time = FakeTime()
        chip = SimBME280(seed=seed, clock=time.clock)
        trail = []
        for _ in range(2000):
            chip.write_registers(REG_CTRL_MEAS, [0x25])
            time.now += 0.1
            trail.append((chip.temperature, chip.pressure, chip.humidity))
        return trail

    first = run(5)
    assert first == run(5)
    assert first != run(6)
    assert all(16.0 <= t <= 26.0 for t, _, _ in first)
    assert all(99825.0 <= p <= 102825.0 for _, p, _ in first)
    assert all(30.0 <= h <= 60.0 for _, _, h in first)
    assert len({round(t, 3) for t, _, _ in first}) > 100  # it moves


def test_sim_inversion_is_exact_on_adc_words() -> None:
    cal = PIMORONI_CAL
    for adc_t in (300000, PIMORONI_ADC_T, 700000):
        celsius, t_fine = compensate_temperature(cal, adc_t)
        assert raw_temperature(cal, celsius) == adc_t
        assert raw_pressure(cal, compensate_pressure(cal, PIMORONI_ADC_P, t_fine), t_fine) == (
            PIMORONI_ADC_P
        )
        assert raw_humidity(cal, compensate_humidity(cal, PIMORONI_ADC_H, t_fine), t_fine) == (
            PIMORONI_ADC_H
        )


def test_sim_encode_data_is_parse_data_inverted() -> None:
    assert parse_data(encode_data(0x81327, 0x4FCA0, 0x7649)) == (0x81327, 0x4FCA0, 0x7649)
