"""SCD4x: conversions against the datasheet's worked examples, the setup sequence and its
waits, data-ready handling, the driver against the simulator (CRC failures, bus faults,
NACKs), the poller, identify, the CLI with the example configuration, and the simulator."""

from __future__ import annotations

import errno
import functools
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from i2c_checks import (
    BUS_ERRORS,
    FakeTime,
    check_bus_error_propagates,
    check_example_documents_every_option,
    check_identify_none_for_a_bme280,
    check_missing_bus_is_a_clear_error,
    check_registered,
    check_wrong_options_type_is_refused,
    nacks,
    poller_for,
    sensor_quantity_units,
    sim_bus,
    values,
    worker_named,
)
from pydantic import ValidationError
from sim_tree_checks import read_example

from drivers.base import DriverContext, out_of_range
from drivers.scd4x import (
    ADDRESS,
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
    SCD4x,
    SCD4xOptions,
    co2_ppm,
    humidity_percent,
    is_data_ready,
    serial_number,
    temperature_celsius,
    temperature_offset_celsius,
    temperature_offset_word,
)
from drivers.sensirion import command_frame, pack_word, unpack_words
from drivers.sim.bus import SimBus
from drivers.sim.scd4x import SELF_HEATING, SimSCD4x, raw_humidity, raw_temperature
from gateway.errors import SensorError
from gateway.readings import Measurement
from gateway.workers import Worker

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "config" / "examples" / "scd4x.yaml"
LSB_CELSIUS = 175.0 / 65535
LSB_PERCENT = 100.0 / 65535
# A little more than a signal update interval, so float sums never land just short of it.
AFTER_ONE_PERIOD = 5.01
AFTER_ONE_LOW_POWER_PERIOD = 30.01


def make(
    period: float = 5.0, low_power_period: float = 30.0, /, **options: object
) -> tuple[SimBus, SimSCD4x, SCD4x, FakeTime]:
    time = FakeTime()
    chip = SimSCD4x(
        seed=4, period=period, low_power_period=low_power_period, drift=False, clock=time.clock
    )
    bus = sim_bus(ADDRESS, chip)
    driver = SCD4x(
        DriverContext("meeting-room", bus, ADDRESS),
        SCD4xOptions.model_validate(options),
        sleep=time.sleep,
        clock=time.clock,
    )
    return bus, chip, driver, time


# --- conversions (3.5.2, 3.6.1, 3.8.2, 3.9.2) ---------------------------------------------


def test_conversion_end_points() -> None:
    assert temperature_celsius(0) == -45.0
    assert temperature_celsius(0xFFFF) == 130.0
    assert humidity_percent(0) == 0.0
    assert humidity_percent(0xFFFF) == 100.0
    assert co2_ppm(0) == 0.0
    assert co2_ppm(0xFFFF) == 65535.0


def test_the_datasheet_read_measurement_example() -> None:
    # 3.5.2 example: read 0x01f4 0x33 0x6667 0xa2 0x5eb9 0x3c: 500 ppm, 25 °C, 37 %RH.
    raw_co2, raw_t, raw_rh = unpack_words(bytes.fromhex("01f433 6667a2 5eb93c"), sensor="x")
    assert co2_ppm(raw_co2) == 500.0
    assert temperature_celsius(raw_t) == pytest.approx(25.0, abs=0.01)
    assert humidity_percent(raw_rh) == pytest.approx(37.0, abs=0.01)
    # By hand with 2^16 - 1: -45 + 175·26215/65535 = 25.0026..., 100·24249/65535 = 37.0016...
    assert temperature_celsius(raw_t) == pytest.approx(25.00267, abs=1e-5)
    assert humidity_percent(raw_rh) == pytest.approx(37.00160, abs=1e-5)


@pytest.mark.parametrize(
    ("raw", "celsius", "percent"),
    [(26214, 25.0, 40.0), (13107, -10.0, 20.0), (39321, 60.0, 60.0)],  # 65535·0.4, ·0.2, ·0.6
)
def test_worked_values(raw: int, celsius: float, percent: float) -> None:
    assert temperature_celsius(raw) == pytest.approx(celsius, abs=1e-12)
    assert humidity_percent(raw) == pytest.approx(percent, abs=1e-12)


def test_the_datasheet_temperature_offset_example() -> None:
    # 3.6.1 example: "set temperature offset to 5.4 °C": write 0x241d 0x07e6 0x48.
    assert temperature_offset_word(5.4) == 0x07E6
    assert command_frame(CMD_SET_TEMPERATURE_OFFSET, [0x07E6]) == bytes.fromhex("241d07e648")
    assert temperature_offset_celsius(0x07E6) == pytest.approx(5.4, abs=175 / 65535)
    assert temperature_offset_word(4.0) == 1498  # the factory 4 °C, as Sensirion's driver writes


def test_the_datasheet_altitude_example() -> None:
    # 3.6.3 example: "set sensor altitude to 1950 m": write 0x2427 0x079e 0x09.
    assert command_frame(CMD_SET_SENSOR_ALTITUDE, [1950]) == bytes.fromhex("2427079e09")


def test_the_datasheet_serial_number_example() -> None:
    # 3.9.2 example: read 0xf896 0x31 0x9f07 0xc2 0x3bbe 0x89: serial 273'325'796'834'238.
    words = unpack_words(bytes.fromhex("f89631 9f07c2 3bbe89"), sensor="x")
    assert serial_number(words) == 273_325_796_834_238


@pytest.mark.parametrize(
    ("status", "ready"),
    [
        (0x8000, False),  # what a real chip answers with nothing new
        (0x8006, True),  # ... and with a measurement waiting
        (0x0000, False),
        (0x0001, True),
        (0x07FF, True),
        (0x0400, True),  # bit 10 is the highest of the 11
        (0xF800, False),  # only the upper 5 bits set: not ready (3.8.2)
    ],
)
def test_data_ready_is_the_low_11_bits(status: int, ready: bool) -> None:
    assert is_data_ready(status) is ready


def test_commands_are_the_datasheet_codes() -> None:
    assert (
        CMD_START_PERIODIC_MEASUREMENT,
        CMD_READ_MEASUREMENT,
        CMD_STOP_PERIODIC_MEASUREMENT,
        CMD_SET_TEMPERATURE_OFFSET,
        CMD_GET_TEMPERATURE_OFFSET,
        CMD_SET_SENSOR_ALTITUDE,
        CMD_GET_SENSOR_ALTITUDE,
        CMD_SET_AMBIENT_PRESSURE,
        CMD_START_LOW_POWER_PERIODIC_MEASUREMENT,
        CMD_GET_DATA_READY_STATUS,
        CMD_GET_SERIAL_NUMBER,
    ) == (
        0x21B1, 0xEC05, 0x3F86, 0x241D, 0x2318, 0x2427, 0x2322, 0xE000, 0x21AC, 0xE4B8, 0x3682,
    )  # fmt: skip


# --- setup --------------------------------------------------------------------------------


def test_setup_stops_waits_checks_the_serial_and_starts() -> None:
    _, chip, driver, time = make()
    driver.setup()
    assert chip.commands == [
        CMD_STOP_PERIODIC_MEASUREMENT,
        CMD_GET_SERIAL_NUMBER,
        CMD_START_PERIODIC_MEASUREMENT,
    ]
    assert time.sleeps == [0.5, 0.001]  # 500 ms after stop (3.5.3), 1 ms before the answer
    assert chip.mode == "periodic"
    assert driver.serial_number == chip.serial_number


def test_setup_writes_the_configured_compensation() -> None:
    _, chip, driver, time = make(5.0, 30.0, temperature_offset=2.5, altitude=420, mode="low_power")
    driver.setup()
    assert chip.commands == [
        CMD_STOP_PERIODIC_MEASUREMENT,
        CMD_GET_SERIAL_NUMBER,
        CMD_SET_TEMPERATURE_OFFSET,
        CMD_SET_SENSOR_ALTITUDE,
        CMD_START_LOW_POWER_PERIODIC_MEASUREMENT,
    ]
    assert time.sleeps == [0.5, 0.001, 0.001, 0.001]
    assert chip.temperature_offset == pytest.approx(2.5, abs=LSB_CELSIUS)
    assert chip.altitude == 420
    assert chip.mode == "low_power"


def test_setup_leaves_the_chips_own_settings_alone_by_default() -> None:
    _, chip, driver, _ = make()
    chip.temperature_offset_word = 999
    chip.altitude = 1200
    driver.setup()
    assert (chip.temperature_offset_word, chip.altitude) == (999, 1200)


def test_setup_restarts_a_chip_that_is_already_measuring() -> None:
    _, chip, driver, time = make()
    driver.setup()
    time.now += AFTER_ONE_PERIOD
    driver.setup()  # e.g. after a failed read: idempotent
    assert chip.mode == "periodic"
    assert driver.read() == []  # the restarted chip has no measurement yet


def test_a_bad_serial_number_crc_fails_setup() -> None:
    _, chip, driver, _ = make()
    chip.corrupt_next_crc(2, command=CMD_GET_SERIAL_NUMBER)
    with pytest.raises(SensorError, match=r"'meeting-room'.*word 2 .*0x3682"):
        driver.setup()
    driver.setup()


# --- reading ------------------------------------------------------------------------------


def test_no_data_yet_is_an_empty_read_not_an_error() -> None:
    _, chip, driver, time = make()
    assert driver.read() == []  # just started: the first measurement comes after 5 s
    assert chip.commands[-1] == CMD_GET_DATA_READY_STATUS  # read_measurement never sent
    time.now += 4.9
    assert driver.read() == []
    time.now += 0.2
    assert len(driver.read()) == 3
    assert driver.read() == []  # read out: the next one is 5 s later (3.5.2)
    time.now += AFTER_ONE_PERIOD
    assert len(driver.read()) == 3


def test_a_chip_that_stopped_measuring_is_reported_then_restarted() -> None:
    _, chip, driver, time = make()
    driver.setup()
    time.now += AFTER_ONE_PERIOD
    assert len(driver.read()) == 3
    chip.power_cycle()  # a brown-out: the chip is idle and never has data ready again
    time.now += 14.9
    assert driver.read() == []  # within three intervals: no data yet is normal
    time.now += 0.2
    with pytest.raises(SensorError, match=r"no new measurement for 15 s .* every 5 s"):
        driver.read()
    assert driver.read() == []  # set up and started again ...
    time.now += AFTER_ONE_PERIOD
    assert len(driver.read()) == 3  # ... and measuring
    assert chip.mode == "periodic"


def test_low_power_mode_allows_three_30_s_intervals_before_calling_it_a_stall() -> None:
    _, chip, driver, time = make(5.0, 30.0, mode="low_power")
    driver.setup()
    chip.power_cycle()
    time.now += 89.0
    assert driver.read() == []
    time.now += 1.1
    with pytest.raises(SensorError, match="every 30 s"):
        driver.read()

    _, _, driver, time = make(5.0, 30.0, mode="low_power")
    driver.setup()
    time.now += AFTER_ONE_PERIOD
    assert driver.read() == []
    time.now += AFTER_ONE_LOW_POWER_PERIOD - AFTER_ONE_PERIOD
    assert [m.quantity for m in driver.read()] == ["co2", "temperature", "humidity"]


@pytest.mark.parametrize(
    ("ppm", "celsius", "percent"),
    [(400.0, 21.3, 45.0), (0.0, -10.0, 0.0), (40000.0, 60.0, 100.0), (1234.0, 0.0, 3.5)],
)
def test_round_trip_through_the_simulator(ppm: float, celsius: float, percent: float) -> None:
    _, chip, driver, time = make()
    chip.co2, chip.temperature, chip.humidity = ppm, celsius, percent
    driver.setup()
    time.now += AFTER_ONE_PERIOD
    got = values(driver.read())
    assert list(got) == ["co2", "temperature", "humidity"]
    assert got["co2"] == ppm
    assert got["temperature"] == pytest.approx(celsius, abs=LSB_CELSIUS)
    assert got["humidity"] == pytest.approx(percent, abs=LSB_PERCENT)


@settings(max_examples=60, deadline=None)
@given(
    ppm=st.integers(0, 40000),
    celsius=st.floats(-10.0, 60.0),
    percent=st.floats(0.0, 100.0),
)
def test_round_trip_property(ppm: int, celsius: float, percent: float) -> None:
    _, chip, driver, _ = make(0.0, 0.0)
    chip.co2, chip.temperature, chip.humidity = float(ppm), celsius, percent
    got = values(driver.read())
    assert got["co2"] == ppm
    assert got["temperature"] == pytest.approx(celsius, abs=LSB_CELSIUS)
    assert got["humidity"] == pytest.approx(percent, abs=LSB_PERCENT)


def test_the_temperature_offset_reaches_the_readings() -> None:
    # The simulated chip self-heats by the factory offset: with offset 0 it reports warm.
    _, chip, driver, _ = make(0.0, 0.0, temperature_offset=0.0)
    chip.temperature = 20.0
    got = values(driver.read())
    assert got["temperature"] == pytest.approx(20.0 + SELF_HEATING, abs=LSB_CELSIUS)


def test_units_are_senml() -> None:
    _, _, driver, _ = make(0.0, 0.0)
    assert [(m.quantity, m.unit) for m in driver.read()] == [
        ("co2", "ppm"),
        ("temperature", "Cel"),
        ("humidity", "%RH"),
    ]


@pytest.mark.parametrize("word", [0, 1, 2])
def test_a_corrupted_measurement_crc_fails_the_read_and_returns_nothing(word: int) -> None:
    _, chip, driver, time = make()
    driver.setup()
    time.now += AFTER_ONE_PERIOD
    chip.corrupt_next_crc(word, command=CMD_READ_MEASUREMENT)
    with pytest.raises(SensorError) as caught:
        driver.read()
    assert "'meeting-room'" in str(caught.value)
    assert f"word {word} of the answer to command 0xEC05" in str(caught.value)


def test_a_corrupted_data_ready_crc_fails_the_read() -> None:
    _, chip, driver, _ = make(0.0, 0.0)
    driver.setup()
    chip.corrupt_next_crc(command=CMD_GET_DATA_READY_STATUS)
    with pytest.raises(SensorError, match="0xE4B8"):
        driver.read()
    assert len(driver.read()) == 3


@pytest.mark.parametrize("code", BUS_ERRORS)
def test_bus_errors_propagate_from_read(code: int) -> None:
    bus, _, driver, _ = make(0.0, 0.0)
    check_bus_error_propagates(bus, driver, code)
    assert len(driver.read()) == 3


def test_reading_without_waiting_the_execution_time_is_a_nack() -> None:
    # A driver that did not wait 1 ms before the read header would get a NACK (3.3).
    bus, chip, _, _ = make(0.0, 0.0)
    chip.write_raw(CMD_GET_SERIAL_NUMBER.to_bytes(2, "big"))
    with pytest.raises(OSError) as caught:
        bus.read_byte(ADDRESS)
    assert caught.value.errno == errno.EREMOTEIO


def test_close_makes_the_next_read_set_up_again() -> None:
    _, chip, driver, _ = make(0.0, 0.0)
    driver.read()
    driver.close()
    chip.commands.clear()
    driver.read()
    assert chip.commands[0] == CMD_STOP_PERIODIC_MEASUREMENT


def test_real_clock_default_sleep() -> None:
    """No fake time: the driver's real waits satisfy the simulator's execution times."""
    chip = SimSCD4x(seed=1, period=0.0, drift=False)
    bus = sim_bus(ADDRESS, chip)
    driver = SCD4x(DriverContext("co2", bus, ADDRESS), SCD4xOptions(altitude=100))
    chip.co2 = 812.0
    assert values(driver.read())["co2"] == 812.0


def test_missing_bus_is_a_clear_error() -> None:
    check_missing_bus_is_a_clear_error(SCD4x, SCD4xOptions(), "co2")


def test_wrong_options_type_is_refused() -> None:
    check_wrong_options_type_is_refused(SCD4x, "SCD4xOptions", "co2")


# --- the poller --------------------------------------------------------------------------


@pytest.fixture
def worker() -> Iterator[Worker]:
    yield from worker_named("test-scd4x")


async def test_poller_counts_a_bad_crc_and_publishes_nothing(worker: Worker) -> None:
    _, chip, driver, _ = make(0.0, 0.0)
    poller, sink = poller_for("meeting-room", driver, worker, retries=0)
    assert len(await poller.poll_once()) == 3
    published = len(sink.readings)
    chip.corrupt_next_crc(1, command=CMD_READ_MEASUREMENT)

    assert await poller.poll_once() == []
    assert poller.status.errors == 1
    assert len(sink.readings) == published
    assert "bad CRC" in (poller.status.last_error or "")


async def test_poller_treats_no_data_as_a_healthy_empty_cycle(worker: Worker) -> None:
    _, _, driver, _ = make()  # 5 s period, fake time standing still: never ready
    poller, sink = poller_for("meeting-room", driver, worker, retries=0)
    assert await poller.poll_once() == []
    assert await poller.poll_once() == []
    assert poller.status.errors == 0
    assert poller.status.health.value == "ok"
    assert sink.readings == []


@pytest.mark.parametrize("code", BUS_ERRORS)
async def test_poller_retries_bus_errors_and_sets_the_chip_up_again(
    code: int, worker: Worker
) -> None:
    bus, chip, driver, _ = make(0.0, 0.0)
    poller, sink = poller_for("meeting-room", driver, worker, retries=2)
    assert len(await poller.poll_once()) == 3
    chip.commands.clear()
    bus.inject_faults(code)
    readings = await poller.poll_once()
    assert len(readings) == 3
    assert sink.readings[-3:] == readings
    assert poller.status.errors == 1
    assert poller.status.last_error == f"{os.strerror(code)} (errno {code})"
    assert CMD_STOP_PERIODIC_MEASUREMENT in chip.commands  # setup ran again


# --- identify ------------------------------------------------------------------------------


def test_identify_an_idle_chip_by_its_serial_number() -> None:
    bus = SimBus()
    chip = SimSCD4x()
    bus.attach(ADDRESS, chip)
    assert SCD4x.identify(bus, ADDRESS) == "SCD4x"
    assert chip.commands == [CMD_GET_SERIAL_NUMBER]
    assert chip.mode == "idle"


def test_identify_a_measuring_chip_without_stopping_it() -> None:
    chip = SimSCD4x()  # real clock: identify waits the real 1 ms execution time
    send(chip, CMD_START_PERIODIC_MEASUREMENT)
    chip.commands.clear()
    bus = SimBus()
    bus.attach(ADDRESS, chip)
    # get_serial_number is idle-only: NACKed; get_data_ready_status answers (3.8.2).
    assert SCD4x.identify(bus, ADDRESS) == "SCD4x"
    assert chip.commands == [CMD_GET_DATA_READY_STATUS]
    assert chip.mode == "periodic"


def test_identify_is_none_for_a_bme280_at_the_same_address() -> None:
    check_identify_none_for_a_bme280(SCD4x, ADDRESS)


def test_identify_is_none_for_an_empty_address() -> None:
    assert SCD4x.identify(SimBus(), ADDRESS) is None


# --- options, registry, ranges, configuration ---------------------------------------------


def test_options_defaults() -> None:
    opts = SCD4xOptions()
    assert (opts.mode, opts.temperature_offset, opts.altitude) == ("periodic", None, None)


@pytest.mark.parametrize(
    "options",
    [
        {"mode": "single_shot"},
        {"temperature_offset": -1.0},
        {"temperature_offset": 20.5},
        {"altitude": -1},
        {"altitude": 3001},
        {"pressure": 1013},
    ],
)
def test_options_refuse_what_the_chip_cannot_take(options: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        SCD4xOptions.model_validate(options)


def test_registry_and_class_attributes() -> None:
    check_registered("scd4x", SCD4x, (0x62,), SCD4xOptions)
    sim = SCD4x.simulator(0x62, seed=3)
    assert isinstance(sim, SimSCD4x)
    assert sim.period == 0.0  # sped up for bus: sim


def test_datasheet_ranges() -> None:
    assert out_of_range(SCD4x, Measurement("co2", "ppm", 40001.0))
    assert not out_of_range(SCD4x, Measurement("co2", "ppm", 40000.0))
    assert out_of_range(SCD4x, Measurement("temperature", "Cel", 60.5))
    assert out_of_range(SCD4x, Measurement("temperature", "Cel", -10.5))
    assert not out_of_range(SCD4x, Measurement("humidity", "%RH", 0.0))


def test_example_config_is_valid_and_documents_every_option() -> None:
    settings = check_example_documents_every_option(EXAMPLE, ["scd4x"], SCD4xOptions)
    assert settings.sensors[0].address == 0x62


def test_cli_read_prints_the_readings_of_the_example(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "scd4x.yaml"
    path.write_text(EXAMPLE.read_text().replace("./scd4x-state", str(tmp_path / "state")))
    lines = read_example(path, capsys)
    assert sensor_quantity_units(lines) == [
        ("meeting-room", "co2", "ppm"),
        ("meeting-room", "temperature", "Cel"),
        ("meeting-room", "humidity", "%RH"),
    ]
    co2, temperature, humidity = (r["value"] for r in lines)
    assert 300 <= co2 <= 1000
    assert 15.0 <= temperature <= 27.0
    assert 29.0 <= humidity <= 61.0


# --- the simulator on its own ------------------------------------------------------------


def send(chip: SimSCD4x, code: int, *args: int) -> None:
    chip.write_raw(command_frame(code, args))


def test_sim_nacks_everything_for_500_ms_after_stop() -> None:
    time = FakeTime()
    chip = SimSCD4x(clock=time.clock)
    send(chip, CMD_STOP_PERIODIC_MEASUREMENT)  # accepted when idle, too
    time.now += 0.499
    assert nacks(lambda: send(chip, CMD_GET_SERIAL_NUMBER))
    time.now += 0.001
    send(chip, CMD_GET_SERIAL_NUMBER)


def test_sim_refuses_idle_only_commands_while_measuring() -> None:
    time = FakeTime()
    chip = SimSCD4x(clock=time.clock)
    send(chip, CMD_START_PERIODIC_MEASUREMENT)
    for code in (CMD_GET_SERIAL_NUMBER, CMD_GET_TEMPERATURE_OFFSET, CMD_START_PERIODIC_MEASUREMENT):
        assert nacks(functools.partial(send, chip, code))
    assert nacks(lambda: send(chip, CMD_SET_SENSOR_ALTITUDE, 100))
    send(chip, CMD_SET_AMBIENT_PRESSURE, 987)  # allowed while measuring (3.6.5)
    assert chip.ambient_pressure == 987


def test_sim_read_measurement_without_data_nacks_the_read_header() -> None:
    time = FakeTime()
    chip = SimSCD4x(clock=time.clock)
    send(chip, CMD_START_PERIODIC_MEASUREMENT)
    send(chip, CMD_READ_MEASUREMENT)  # the command is acknowledged ...
    time.now += 0.001
    assert nacks(lambda: chip.read_raw(9))  # ... the read header is not (3.5.2)


def test_sim_data_ready_words() -> None:
    time = FakeTime()
    chip = SimSCD4x(clock=time.clock)
    send(chip, CMD_START_PERIODIC_MEASUREMENT)
    send(chip, CMD_GET_DATA_READY_STATUS)
    time.now += 0.001
    assert chip.read_raw(3) == pack_word(0x8000)
    time.now += AFTER_ONE_PERIOD
    send(chip, CMD_GET_DATA_READY_STATUS)
    time.now += 0.001
    assert chip.read_raw(3) == pack_word(0x8006)
    assert chip.data_ready


def test_sim_getters_and_setters_with_their_crc() -> None:
    time = FakeTime()
    chip = SimSCD4x(clock=time.clock)
    send(chip, CMD_SET_TEMPERATURE_OFFSET, 0x07E6)
    time.now += 0.001
    send(chip, CMD_GET_TEMPERATURE_OFFSET)
    time.now += 0.001
    assert unpack_words(chip.read_raw(3), sensor="sim") == (0x07E6,)
    send(chip, CMD_SET_SENSOR_ALTITUDE, 1950)
    time.now += 0.001
    send(chip, CMD_GET_SENSOR_ALTITUDE)
    time.now += 0.001
    assert unpack_words(chip.read_raw(3), sensor="sim") == (1950,)


def test_sim_refuses_an_argument_with_a_bad_crc() -> None:
    chip = SimSCD4x(clock=FakeTime().clock)
    frame = bytearray(command_frame(CMD_SET_SENSOR_ALTITUDE, [1950]))
    frame[-1] ^= 0xFF
    assert nacks(lambda: chip.write_raw(bytes(frame)))
    assert nacks(lambda: chip.write_raw(bytes(frame[:3])))  # argument cut short
    assert chip.altitude == 0


def test_sim_refuses_unknown_commands_and_register_access() -> None:
    chip = SimSCD4x()
    assert nacks(lambda: send(chip, 0x1234))
    assert nacks(lambda: chip.write_raw(b"\x36"))
    bus = SimBus()
    bus.attach(ADDRESS, chip)
    assert nacks(lambda: bus.read_byte_data(ADDRESS, 0x36))
    assert nacks(lambda: bus.write_byte_data(ADDRESS, 0x36, 0x82))
    assert chip.commands == []


def test_sim_periods_are_constructor_parameters() -> None:
    time = FakeTime()
    chip = SimSCD4x(period=1.0, clock=time.clock)
    send(chip, CMD_START_PERIODIC_MEASUREMENT)
    time.now += 1.01
    assert chip.data_ready
    with pytest.raises(ValueError, match="negative"):
        SimSCD4x(period=-1.0)


def test_sim_encoding_inverts_the_conversions_to_half_a_step() -> None:
    for celsius in (-10.0, 0.0, 21.37, 60.0):
        assert abs(temperature_celsius(raw_temperature(celsius)) - celsius) <= LSB_CELSIUS / 2
    for percent in (0.0, 45.55, 100.0):
        assert abs(humidity_percent(raw_humidity(percent)) - percent) <= LSB_PERCENT / 2


def test_sim_drift_is_seeded_plausible_and_bounded() -> None:
    def run(seed: int) -> list[tuple[float, float, float]]:
        time = FakeTime()
        chip = SimSCD4x(seed=seed, period=0.0, clock=time.clock)
        send(chip, CMD_START_PERIODIC_MEASUREMENT)
        trail = []
        for _ in range(2000):
            send(chip, CMD_READ_MEASUREMENT)
            time.now += 0.001
            chip.read_raw(9)
            trail.append((chip.co2, chip.temperature, chip.humidity))
        return trail

    first = run(5)
    assert first == run(5)
    assert first != run(6)
    assert all(300.0 <= c <= 1000.0 for c, _, _ in first)
    assert all(16.0 <= t <= 26.0 for _, t, _ in first)
    assert all(30.0 <= h <= 60.0 for _, _, h in first)
    assert len({round(c) for c, _, _ in first}) > 50  # it moves
