"""SHT3x: conversions against the datasheet formulas, the command map and timing, the
driver against the simulator (CRC failures, bus faults, NACKs), the poller, identify,
the CLI with the example configuration, and the simulator on its own."""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import smbus2
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
from drivers.sensirion import pack_word, pack_words, unpack_words
from drivers.sht3x import (
    CMD_CLEAR_STATUS,
    CMD_HEATER_DISABLE,
    CMD_HEATER_ENABLE,
    CMD_MEASURE,
    CMD_MEASURE_STRETCH,
    CMD_READ_STATUS,
    CMD_SOFT_RESET,
    MEASUREMENT_TIME_MAX,
    MEASUREMENT_TIME_TYPICAL,
    Repeatability,
    SHT3x,
    SHT3xOptions,
    humidity_percent,
    temperature_celsius,
)
from drivers.sim.bus import SimBus
from drivers.sim.sht3x import SimSHT3x, raw_humidity, raw_temperature
from gateway.config import load_settings
from gateway.errors import ConfigError, SensorError
from gateway.readings import Measurement
from gateway.workers import Worker

ADDRESS = 0x44
ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "config" / "examples" / "sht3x.yaml"
LSB_CELSIUS = 175.0 / 65535  # one step of the temperature word
LSB_PERCENT = 100.0 / 65535  # one step of the humidity word


def make(address: int = ADDRESS, /, **options: object) -> tuple[SimBus, SimSHT3x, SHT3x, FakeTime]:
    time = FakeTime()
    chip = SimSHT3x(seed=3, drift=False, clock=time.clock)
    bus = sim_bus(address, chip)
    driver = SHT3x(
        DriverContext("office", bus, address),
        SHT3xOptions.model_validate(options),
        sleep=time.sleep,
    )
    return bus, chip, driver, time


# --- conversions (4.13) -------------------------------------------------------------------


def test_conversion_end_points() -> None:
    # T = -45 + 175 · S / (2^16 - 1), RH = 100 · S / (2^16 - 1): the words' full range.
    assert temperature_celsius(0) == -45.0
    assert temperature_celsius(0xFFFF) == 130.0
    assert humidity_percent(0) == 0.0
    assert humidity_percent(0xFFFF) == 100.0


@pytest.mark.parametrize(
    ("raw", "celsius", "percent"),
    [
        # 65535 · 0.4 = 26214 exactly: T = -45 + 175 · 0.4 = 25 °C, RH = 40 %.
        (26214, 25.0, 40.0),
        # 65535 · 0.2 = 13107: T = -45 + 35 = -10 °C, RH = 20 %.
        (13107, -10.0, 20.0),
        # 0x6666 = 26214 written as the hex a logic analyser shows.
        (0x6666, 25.0, 40.0),
        # 65535 · 0.6 = 39321: T = -45 + 105 = 60 °C, RH = 60 %.
        (39321, 60.0, 60.0),
    ],
)
def test_worked_values(raw: int, celsius: float, percent: float) -> None:
    assert temperature_celsius(raw) == pytest.approx(celsius, abs=1e-12)
    assert humidity_percent(raw) == pytest.approx(percent, abs=1e-12)


def test_divisor_is_two_to_the_16_minus_1() -> None:
    # With 2^16 the top word would give 129.997 °C; the datasheet's 2^16 - 1 gives 130.
    assert temperature_celsius(0xFFFF) - (-45.0 + 175.0 * 0xFFFF / 65536) == pytest.approx(
        175.0 / 65536, rel=1e-3
    )


def test_sim_encoding_inverts_the_conversions_to_half_a_step() -> None:
    for celsius in (-40.0, -10.0, 0.0, 21.37, 85.0, 125.0):
        assert abs(temperature_celsius(raw_temperature(celsius)) - celsius) <= LSB_CELSIUS / 2
    for percent in (0.0, 0.5, 45.55, 99.99, 100.0):
        assert abs(humidity_percent(raw_humidity(percent)) - percent) <= LSB_PERCENT / 2
    assert raw_temperature(-100.0) == 0 and raw_temperature(500.0) == 0xFFFF  # clipped


# --- the command map and timing (Table 9, Table 4, Tables 16-19) ---------------------------


def test_commands_are_the_datasheet_codes() -> None:
    assert CMD_MEASURE == {"high": 0x2400, "medium": 0x240B, "low": 0x2416}
    assert CMD_MEASURE_STRETCH == {"high": 0x2C06, "medium": 0x2C0D, "low": 0x2C10}
    assert (CMD_READ_STATUS, CMD_CLEAR_STATUS, CMD_SOFT_RESET) == (0xF32D, 0x3041, 0x30A2)
    assert (CMD_HEATER_ENABLE, CMD_HEATER_DISABLE) == (0x306D, 0x3066)


@pytest.mark.parametrize(
    ("repeatability", "seconds"), [("high", 0.015), ("medium", 0.006), ("low", 0.004)]
)
def test_driver_sends_the_no_stretch_command_and_waits_the_maximum_time(
    repeatability: Repeatability, seconds: float
) -> None:
    _, chip, driver, time = make(repeatability=repeatability)
    driver.setup()
    chip.commands.clear()
    time.sleeps.clear()
    driver.read()
    assert chip.commands == [CMD_MEASURE[repeatability]]
    assert time.sleeps == [seconds]
    assert MEASUREMENT_TIME_MAX[repeatability] == seconds
    assert MEASUREMENT_TIME_TYPICAL[repeatability] < seconds


# --- the driver against the simulator -----------------------------------------------------


@pytest.mark.parametrize(
    ("celsius", "percent"),
    [(21.3, 45.0), (-40.0, 0.0), (125.0, 100.0), (0.0, 3.5), (-10.0, 99.9)],
)
def test_round_trip_through_the_simulator(celsius: float, percent: float) -> None:
    _, chip, driver, _ = make()
    chip.temperature, chip.humidity = celsius, percent
    got = values(driver.read())
    assert list(got) == ["temperature", "humidity"]
    assert got["temperature"] == pytest.approx(celsius, abs=LSB_CELSIUS)
    assert got["humidity"] == pytest.approx(percent, abs=LSB_PERCENT)


@settings(max_examples=80, deadline=None)
@given(celsius=st.floats(-40.0, 125.0), percent=st.floats(0.0, 100.0))
def test_round_trip_property(celsius: float, percent: float) -> None:
    _, chip, driver, _ = make()
    chip.temperature, chip.humidity = celsius, percent
    got = values(driver.read())
    assert got["temperature"] == pytest.approx(celsius, abs=LSB_CELSIUS)
    assert got["humidity"] == pytest.approx(percent, abs=LSB_PERCENT)


def test_units_are_senml() -> None:
    _, _, driver, _ = make()
    assert [(m.quantity, m.unit) for m in driver.read()] == [
        ("temperature", "Cel"),
        ("humidity", "%RH"),
    ]


@pytest.mark.parametrize("word", [0, 1])
def test_a_corrupted_crc_fails_the_read_and_returns_nothing(word: int) -> None:
    _, chip, driver, _ = make()
    driver.setup()
    chip.corrupt_next_crc(word)
    with pytest.raises(SensorError) as caught:
        driver.read()
    assert "'office'" in str(caught.value)
    assert f"word {word}" in str(caught.value)
    assert len(driver.read()) == 2  # only that one answer was bad


def test_a_corrupted_status_crc_fails_setup() -> None:
    _, chip, driver, _ = make()
    chip.corrupt_next_crc(command=CMD_READ_STATUS)
    with pytest.raises(SensorError, match="0xF32D"):
        driver.setup()
    driver.setup()
    assert driver.status == 0x8010


@pytest.mark.parametrize("code", BUS_ERRORS)
def test_bus_errors_propagate_from_read(code: int) -> None:
    bus, _, driver, _ = make()
    check_bus_error_propagates(bus, driver, code)
    assert len(driver.read()) == 2


def test_a_chip_still_measuring_nacks_the_read() -> None:
    time = FakeTime()
    # The chip's clock runs at half the driver's: after the 15 ms wait it has measured
    # for 7.5 ms of its 12.5 ms, so it NACKs the read header (4.3) — a bus error.
    chip = SimSHT3x(drift=False, clock=lambda: time.now * 0.5)
    bus = sim_bus(ADDRESS, chip)
    driver = SHT3x(DriverContext("office", bus, ADDRESS), SHT3xOptions(), sleep=time.sleep)
    with pytest.raises(OSError) as caught:
        driver.read()
    assert caught.value.errno == errno.EREMOTEIO


def test_setup_is_lazy_idempotent_and_checks_the_status_register() -> None:
    _, chip, driver, _ = make()
    assert driver.status is None
    driver.read()
    assert driver.status == 0x8010  # alert pending and reset detected after power-up
    assert chip.commands[0] == CMD_READ_STATUS
    driver.setup()
    driver.setup()
    assert len(driver.read()) == 2


def test_setup_turns_a_heater_left_on_off() -> None:
    _, chip, driver, _ = make()
    chip.write_raw(CMD_HEATER_ENABLE.to_bytes(2, "big"))
    assert chip.heater
    driver.setup()
    assert not chip.heater
    assert chip.commands[-2:] == [CMD_READ_STATUS, CMD_HEATER_DISABLE]
    chip.commands.clear()
    driver.setup()
    assert chip.commands == [CMD_READ_STATUS]  # heater already off: nothing sent


def test_close_makes_the_next_read_set_up_again() -> None:
    _, chip, driver, _ = make()
    driver.read()
    driver.close()
    chip.commands.clear()
    driver.read()
    assert chip.commands[0] == CMD_READ_STATUS


def test_second_address() -> None:
    _, _, driver, _ = make(0x45)
    assert len(driver.read()) == 2


def test_real_clock_default_sleep() -> None:
    """No fake time: the driver's real 15 ms wait outlasts the simulated 12.5 ms."""
    chip = SimSHT3x(seed=1, drift=False)
    bus = sim_bus(0x45, chip)
    driver = SHT3x(DriverContext("office", bus, 0x45), SHT3xOptions())
    chip.temperature = 19.5
    assert values(driver.read())["temperature"] == pytest.approx(19.5, abs=LSB_CELSIUS)


def test_the_driver_uses_only_i2c_rdwr() -> None:
    calls: list[str] = []

    class Spy(SimBus):
        def __getattribute__(self, name: str) -> object:
            if name in {"read_byte_data", "write_byte_data", "read_i2c_block_data"} | {
                "write_i2c_block_data",
                "read_byte",
                "write_byte",
                "i2c_rdwr",
            }:
                calls.append(name)
            return super().__getattribute__(name)

    time = FakeTime()
    bus = Spy()
    bus.attach(ADDRESS, SimSHT3x(clock=time.clock))
    SHT3x(DriverContext("o", bus, ADDRESS), SHT3xOptions(), sleep=time.sleep).read()
    assert set(calls) == {"i2c_rdwr"}
    assert hasattr(smbus2.SMBus, "i2c_rdwr")


def test_missing_bus_is_a_clear_error() -> None:
    check_missing_bus_is_a_clear_error(SHT3x, SHT3xOptions(), "office")


def test_wrong_options_type_is_refused() -> None:
    check_wrong_options_type_is_refused(SHT3x, "SHT3xOptions", "office")


# --- the poller --------------------------------------------------------------------------


@pytest.fixture
def worker() -> Iterator[Worker]:
    yield from worker_named("test-sht3x")


async def test_poller_counts_a_bad_crc_and_publishes_nothing(worker: Worker) -> None:
    _, chip, driver, _ = make()
    poller, sink = poller_for("office", driver, worker, retries=0)
    assert len(await poller.poll_once()) == 2
    published = len(sink.readings)
    chip.corrupt_next_crc(1, command=CMD_MEASURE["high"])

    assert await poller.poll_once() == []
    assert poller.status.errors == 1
    assert len(sink.readings) == published
    assert "bad CRC" in (poller.status.last_error or "")


async def test_poller_retries_after_a_bad_crc(worker: Worker) -> None:
    _, chip, driver, _ = make()
    poller, sink = poller_for("office", driver, worker, retries=1)
    chip.corrupt_next_crc(0, command=CMD_MEASURE["high"])
    readings = await poller.poll_once()
    assert [r.quantity for r in readings] == ["temperature", "humidity"]
    assert poller.status.errors == 1
    assert sink.readings == readings


@pytest.mark.parametrize("code", BUS_ERRORS)
async def test_poller_retries_bus_errors(code: int, worker: Worker) -> None:
    bus, _, driver, _ = make()
    poller, sink = poller_for("office", driver, worker, retries=2)
    bus.inject_faults(code)
    readings = await poller.poll_once()
    assert len(readings) == 2
    assert sink.readings == readings
    assert poller.status.errors == 1
    assert poller.status.last_error == f"{os.strerror(code)} (errno {code})"


# --- identify ------------------------------------------------------------------------------


@pytest.mark.parametrize("address", [0x44, 0x45])
def test_identify_the_simulator(address: int) -> None:
    bus = SimBus()
    chip = SimSHT3x()
    bus.attach(address, chip)
    assert SHT3x.identify(bus, address) == "SHT3x"
    assert chip.commands == [CMD_READ_STATUS]  # only read: the chip is as it was


def test_identify_is_none_for_a_bme280_at_the_same_address() -> None:
    check_identify_none_for_a_bme280(SHT3x, ADDRESS)


def test_identify_is_none_for_an_empty_address_or_a_bad_crc() -> None:
    bus = SimBus()
    assert SHT3x.identify(bus, ADDRESS) is None
    chip = SimSHT3x()
    bus.attach(ADDRESS, chip)
    chip.corrupt_next_crc()
    assert SHT3x.identify(bus, ADDRESS) is None


# --- options, registry, ranges, configuration ---------------------------------------------


def test_options_default_to_high_repeatability() -> None:
    assert SHT3xOptions().repeatability == "high"


@pytest.mark.parametrize("options", [{"repeatability": "ultra"}, {"heater": True}])
def test_options_refuse_what_the_driver_does_not_do(options: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        SHT3xOptions.model_validate(options)


def test_registry_and_class_attributes() -> None:
    check_registered("sht3x", SHT3x, (0x44, 0x45), SHT3xOptions)
    assert isinstance(SHT3x.simulator(0x44, seed=3), SimSHT3x)


def test_datasheet_ranges() -> None:
    assert out_of_range(SHT3x, Measurement("temperature", "Cel", 125.5))
    assert out_of_range(SHT3x, Measurement("temperature", "Cel", -40.5))
    assert out_of_range(SHT3x, Measurement("temperature", "Cel", temperature_celsius(0)))
    assert not out_of_range(SHT3x, Measurement("humidity", "%RH", 100.0))


def test_config_refuses_an_address_the_chip_cannot_have(tmp_path: Path) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text(
        EXAMPLE.read_text().replace("bus: sim\n    address: 0x45", "bus: 1\n    address: 0x46")
    )
    with pytest.raises(ConfigError, match="answers only on 0x44 or 0x45"):
        load_settings(path)


def test_example_config_is_valid_and_documents_every_option() -> None:
    check_example_documents_every_option(EXAMPLE, ["sht3x", "sht3x"], SHT3xOptions)


def test_cli_read_prints_the_readings_of_the_example(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "sht3x.yaml"
    path.write_text(EXAMPLE.read_text().replace("./sht3x-state", str(tmp_path / "state")))
    lines = read_example(path, capsys)
    assert sensor_quantity_units(lines) == [
        ("office", "temperature", "Cel"),
        ("office", "humidity", "%RH"),
        ("lab", "temperature", "Cel"),
        ("lab", "humidity", "%RH"),
    ]
    assert all(15.0 <= r["value"] <= 27.0 for r in lines if r["quantity"] == "temperature")
    assert all(29.0 <= r["value"] <= 61.0 for r in lines if r["quantity"] == "humidity")


# --- the simulator on its own ------------------------------------------------------------


def command(chip: SimSHT3x, code: int) -> None:
    chip.write_raw(code.to_bytes(2, "big"))


def read(chip: SimSHT3x, words: int) -> tuple[int, ...]:
    return unpack_words(chip.read_raw(3 * words), sensor="sim")


def test_sim_single_shot_nacks_until_done_then_answers_once() -> None:
    time = FakeTime()
    chip = SimSHT3x(drift=False, clock=time.clock)
    chip.temperature, chip.humidity = 25.0, 40.0
    command(chip, CMD_MEASURE["medium"])
    assert nacks(lambda: chip.read_raw(6))  # still converting (4.3)
    assert nacks(lambda: command(chip, CMD_READ_STATUS))  # busy: no ACK to a write either
    time.now += MEASUREMENT_TIME_TYPICAL["medium"]
    assert read(chip, 2) == (26214, 26214)  # T then RH (4.4): 25 °C and 40 %RH
    assert nacks(lambda: chip.read_raw(6))  # read once; nothing waits any more


def test_sim_clock_stretching_commands_answer_at_once() -> None:
    time = FakeTime()
    chip = SimSHT3x(drift=False, clock=time.clock)
    command(chip, CMD_MEASURE_STRETCH["high"])
    assert len(read(chip, 2)) == 2


def test_sim_status_register_bits() -> None:
    chip = SimSHT3x()
    command(chip, CMD_READ_STATUS)
    assert read(chip, 1) == (0x8010,)
    command(chip, CMD_CLEAR_STATUS)
    command(chip, CMD_HEATER_ENABLE)
    command(chip, CMD_READ_STATUS)
    assert read(chip, 1) == (0x2000,)
    command(chip, 0x1234)  # no such command: "last command not processed" (Table 18 bit 1)
    command(chip, CMD_READ_STATUS)
    assert read(chip, 1) == (0x2002,)
    command(chip, CMD_SOFT_RESET)
    command(chip, CMD_READ_STATUS)
    assert read(chip, 1) == (0x8010,)
    chip.write_raw(b"\x30")  # a byte is no command
    assert chip.status & 0x0002


def test_sim_status_frame_carries_a_real_crc() -> None:
    chip = SimSHT3x()
    command(chip, CMD_READ_STATUS)
    assert chip.read_raw(3) == pack_word(0x8010)


def test_sim_bytes_past_the_answer_read_as_an_idle_bus() -> None:
    bus = SimBus()
    bus.attach(ADDRESS, SimSHT3x())
    bus.i2c_rdwr(smbus2.i2c_msg.write(ADDRESS, [0xF3, 0x2D]))
    answer = smbus2.i2c_msg.read(ADDRESS, 6)
    bus.i2c_rdwr(answer)
    assert bytes(answer) == pack_word(0x8010) + b"\xff\xff\xff"


def test_sim_corrupts_exactly_one_answer() -> None:
    time = FakeTime()
    chip = SimSHT3x(drift=False, clock=time.clock)
    chip.temperature, chip.humidity = 25.0, 40.0
    chip.corrupt_next_crc(1)
    command(chip, CMD_MEASURE_STRETCH["low"])
    bad = chip.read_raw(6)
    assert bad[:5] == pack_words([26214, 26214])[:5]
    assert bad[5] != pack_words([26214, 26214])[5]
    command(chip, CMD_MEASURE_STRETCH["low"])
    assert chip.read_raw(6) == pack_words([26214, 26214])


def test_sim_refuses_register_access() -> None:
    bus = SimBus()
    bus.attach(ADDRESS, SimSHT3x())
    assert nacks(lambda: bus.read_byte_data(ADDRESS, 0xF3))
    assert nacks(lambda: bus.write_i2c_block_data(ADDRESS, 0x24, [0x00]))


def test_sim_drift_is_seeded_plausible_and_bounded() -> None:
    def run(seed: int) -> list[tuple[float, float]]:
        chip = SimSHT3x(seed=seed)
        trail = []
        for _ in range(2000):
            command(chip, CMD_MEASURE_STRETCH["high"])
            chip.read_raw(6)
            trail.append((chip.temperature, chip.humidity))
        return trail

    first = run(5)
    assert first == run(5)
    assert first != run(6)
    assert all(16.0 <= t <= 26.0 for t, _ in first)
    assert all(30.0 <= h <= 60.0 for _, h in first)
    assert len({round(t, 3) for t, _ in first}) > 100  # it moves
