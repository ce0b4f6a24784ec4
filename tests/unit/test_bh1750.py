"""BH1750: lux math against the ROHM Technical Note, the opcode sequence, and the driver
against the simulator. Page numbers refer to "BH1750FVI Technical Note" (2009.04 Rev.B)."""

from __future__ import annotations

import errno
from collections.abc import Iterable
from pathlib import Path
from typing import Any, cast

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from i2c_checks import (
    FakeTime,
    check_bus_error_propagates,
    check_registered,
    sensor_quantity_units,
    sim_bus,
)
from pydantic import ValidationError
from sim_tree_checks import read_example
from smbus2 import i2c_msg

from drivers.base import DriverContext, out_of_range
from drivers.bh1750 import (
    BH1750,
    MTREG_DEFAULT,
    ONE_TIME_H,
    ONE_TIME_H2,
    ONE_TIME_L,
    POWER_DOWN,
    POWER_ON,
    RESET,
    BH1750Options,
    Resolution,
    lux_per_count,
    max_illuminance,
    max_measurement_time,
    mtreg_opcodes,
    parse_raw,
    raw_to_lux,
    typical_measurement_time,
)
from drivers.sim.bh1750 import DAY_SECONDS, NIGHT_LUX, NOON_LUX, SimBH1750, raw_count
from drivers.sim.bme280 import SimBME280
from drivers.sim.bus import SimBus
from gateway.errors import SensorError, SensorRangeError
from gateway.readings import Measurement

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "config" / "examples" / "bh1750.yaml"
ADDRESS = 0x23
RESOLUTIONS: tuple[Resolution, ...] = ("high", "high2", "low")


class Recorder:
    """A SimBus in front of which every call is logged: ("write", opcode) or ("read", n)."""

    def __init__(self, bus: SimBus) -> None:
        self.bus = bus
        self.calls: list[tuple[str, int]] = []

    def write_byte(self, i2c_addr: int, value: int, force: bool | None = None) -> None:
        self.calls.append(("write", value))
        self.bus.write_byte(i2c_addr, value)

    def i2c_rdwr(self, *msgs: Any) -> None:
        self.calls.extend(("read", msg.len) for msg in msgs)
        self.bus.i2c_rdwr(*msgs)

    def __getattr__(self, name: str) -> Any:  # any other SMBus method goes straight through
        return getattr(self.bus, name)


def sim_setup(**options: object) -> tuple[SimBus, SimBH1750, BH1750, FakeTime]:
    time = FakeTime()
    chip = SimBH1750(seed=7, drift=False, clock=time.clock)
    bus = sim_bus(ADDRESS, chip)
    return bus, chip, make_driver(bus, time, **options), time


def make_driver(
    bus: object, time: FakeTime, address: int = ADDRESS, /, **options: object
) -> BH1750:
    context = DriverContext(sensor="light", bus=bus, address=address)  # type: ignore[arg-type]
    return BH1750(context, BH1750Options.model_validate(options), sleep=time.sleep)


def lux(measurements: list[Measurement]) -> float:
    assert [(m.quantity, m.unit) for m in measurements] == [("illuminance", "lx")]
    value = measurements[0].value
    assert isinstance(value, float)
    return value


# --- lux math against the Technical Note ---------------------------------------------------


def test_read_format_worked_example() -> None:
    # p.10 "Read Format": High Byte 1000_0011, Low Byte 1001_0000
    # -> (2^15 + 2^9 + 2^8 + 2^7 + 2^4) / 1.2 ≈ 28067 lx (H-resolution mode, MTreg 69).
    raw = parse_raw([0b1000_0011, 0b1001_0000])
    assert raw == 2**15 + 2**9 + 2**8 + 2**7 + 2**4
    assert round(raw_to_lux(raw, "high")) == 28067


def test_lux_per_count_formula() -> None:
    # p.11: lx per count = 1 / 1.2 * (69 / X) in H-resolution mode, and / 2 in mode2.
    assert lux_per_count("high") == pytest.approx(1 / 1.2)
    assert lux_per_count("high2") == pytest.approx(1 / 1.2 / 2)
    assert lux_per_count("high", 138) == pytest.approx(1 / 1.2 * 69 / 138)
    # p.1 Features: "possible to detect min. 0.11 lx, max. 100000 lx" with MTreg:
    # mode2 at MTreg 254 resolves 1/1.2 * 69/254 / 2 = 0.113 lx ...
    assert lux_per_count("high2", 254) == pytest.approx(0.1132, abs=1e-4)
    # ... and H-resolution at MTreg 31 saturates at 65535 / 1.2 * 69/31 = 121557 lx.
    assert max_illuminance("high", 31) == pytest.approx(121556.85, abs=0.01)
    # At the defaults the count saturates at 65535 / 1.2 = 54612.5 lx (half in mode2).
    assert max_illuminance("high") == pytest.approx(54612.5)
    assert max_illuminance("high2") == pytest.approx(27306.25)


def test_mtreg_opcodes_split_high_and_low_bits() -> None:
    # p.5: "Change Measurement time (High bit)" 01000_MT[7,6,5], "(Low bit)" 011_MT[4..0].
    # Default 69 = 0100_0101: high bits 010, low bits 00101.
    assert mtreg_opcodes(69) == (0b01000_010, 0b011_00101)
    assert mtreg_opcodes(31) == (0b01000_000, 0b011_11111)  # p.11 minimum 0001_1111
    assert mtreg_opcodes(254) == (0b01000_111, 0b011_11110)  # p.11 maximum 1111_1110
    for bad in (30, 255):
        with pytest.raises(ValueError, match=r"31\.\.254"):
            mtreg_opcodes(bad)


def test_measurement_times_scale_with_mtreg() -> None:
    # p.2 Electrical Characteristics: H-resolution 120 ms typ / 180 ms max, L-resolution
    # 16 / 24 ms; mode2 takes the H-resolution time (p.5); all scale by MTreg / 69 (p.11).
    assert max_measurement_time("high") == pytest.approx(0.180)
    assert max_measurement_time("high2") == pytest.approx(0.180)
    assert max_measurement_time("low") == pytest.approx(0.024)
    assert typical_measurement_time("high") == pytest.approx(0.120)
    assert typical_measurement_time("low") == pytest.approx(0.016)
    assert max_measurement_time("high", 138) == pytest.approx(0.360)
    assert max_measurement_time("high", 254) == pytest.approx(0.180 * 254 / 69)


def test_parse_raw_needs_two_bytes() -> None:
    with pytest.raises(ValueError, match="2 bytes"):
        parse_raw([0x12])


@settings(max_examples=200)
@given(
    a=st.integers(0, 0xFFFF),
    b=st.integers(0, 0xFFFF),
    resolution=st.sampled_from(RESOLUTIONS),
    mtreg=st.integers(31, 254),
)
def test_lux_is_monotonic_and_within_the_class_range(
    a: int, b: int, resolution: Resolution, mtreg: int
) -> None:
    low, high = sorted((a, b))
    assert raw_to_lux(low, resolution, mtreg) <= raw_to_lux(high, resolution, mtreg)
    value = raw_to_lux(high, resolution, mtreg)
    assert not out_of_range(BH1750, Measurement("illuminance", "lx", value))


def test_class_range_is_the_widest_setting() -> None:
    top = BH1750.ranges["illuminance"][1]
    assert top == pytest.approx(max_illuminance("high", 31))
    assert out_of_range(BH1750, Measurement("illuminance", "lx", top + 1.0))
    assert out_of_range(BH1750, Measurement("illuminance", "lx", -1.0))


# --- the driver's bus traffic ----------------------------------------------------------------


def test_setup_and_read_send_one_opcode_per_transaction() -> None:
    time = FakeTime()
    sim = SimBus()
    sim.attach(ADDRESS, SimBH1750(drift=False, clock=time.clock))
    bus = Recorder(sim)
    driver = make_driver(bus, time, mtreg=138, resolution="high2")
    driver.setup()
    assert bus.calls == [("write", POWER_DOWN)]
    bus.calls.clear()
    driver.read()
    # Power on, MTreg 138 = 100_01010 -> 01000_100 and 011_01010, one-time mode2, then a
    # 2-byte read (p.5, p.10); each write its own transaction with a STOP.
    assert bus.calls == [
        ("write", POWER_ON),
        ("write", 0b01000_100),
        ("write", 0b011_01010),
        ("write", ONE_TIME_H2),
        ("read", 2),
    ]
    assert time.sleeps == [pytest.approx(max_measurement_time("high2", 138))]


@pytest.mark.parametrize(("resolution", "opcode"), [("high", ONE_TIME_H), ("low", ONE_TIME_L)])
def test_one_time_opcode_per_resolution(resolution: str, opcode: int) -> None:
    time = FakeTime()
    sim = SimBus()
    sim.attach(ADDRESS, SimBH1750(drift=False, clock=time.clock))
    bus = Recorder(sim)
    make_driver(bus, time, resolution=resolution).read()
    assert ("write", opcode) in bus.calls
    # MTreg is sent even at its default: a chip left at another value by an earlier
    # configuration keeps it until it is powered off.
    assert ("write", 0b01000_010) in bus.calls and ("write", 0b011_00101) in bus.calls


# --- the driver against the simulator --------------------------------------------------------


ROUND_TRIPS = [
    (resolution, mtreg, true_lux)
    for resolution in RESOLUTIONS
    for mtreg in (31, 69, 138, 254)
    for true_lux in (0.0, 0.5, 12.3, 850.0, 20000.0)
    if true_lux < max_illuminance(resolution, mtreg)  # saturation is tested separately
]


@pytest.mark.parametrize(("resolution", "mtreg", "true_lux"), ROUND_TRIPS)
def test_round_trip_through_the_simulator(
    resolution: Resolution, mtreg: int, true_lux: float
) -> None:
    _, chip, driver, _ = sim_setup(resolution=resolution, mtreg=mtreg)
    chip.illuminance = true_lux
    step = lux_per_count(resolution, mtreg)
    got = lux(driver.read())
    assert true_lux - step <= got <= true_lux  # the chip's count truncates: one step at most


@settings(max_examples=80, deadline=None)
@given(
    fraction=st.floats(0.0, 0.999),
    resolution=st.sampled_from(RESOLUTIONS),
    mtreg=st.integers(31, 254),
)
def test_round_trip_property(fraction: float, resolution: Resolution, mtreg: int) -> None:
    _, chip, driver, _ = sim_setup(resolution=resolution, mtreg=mtreg)
    true_lux = fraction * max_illuminance(resolution, mtreg)
    chip.illuminance = true_lux
    got = lux(driver.read())
    assert got == pytest.approx(true_lux, abs=lux_per_count(resolution, mtreg))


def test_saturation_is_a_range_error_that_says_what_to_change() -> None:
    _, chip, driver, _ = sim_setup()
    chip.illuminance = 80000.0  # full sun, beyond the 54612 lx of the defaults
    with pytest.raises(SensorRangeError, match="saturated") as caught:
        driver.read()
    assert "54612 lx" in str(caught.value) and "mtreg 31" in str(caught.value)
    assert isinstance(caught.value, OSError)  # the poller counts it as a failed read
    # The setting the message suggests does measure it ...
    _, chip, driver, _ = sim_setup(mtreg=31)
    chip.illuminance = 80000.0
    assert lux(driver.read()) == pytest.approx(80000.0, abs=lux_per_count("high", 31))
    # ... up to the chip's own limit, beyond which no setting helps.
    chip.illuminance = 130000.0
    with pytest.raises(SensorRangeError, match="the most the chip measures"):
        driver.read()


def test_mtreg_survives_a_power_cycle_between_reads() -> None:
    _, chip, driver, _ = sim_setup(mtreg=200)
    chip.illuminance = 400.0
    assert lux(driver.read()) == pytest.approx(400.0, abs=lux_per_count("high", 200))
    chip.power_cycle()  # brown-out: MTreg back to 69 (p.11 default)
    assert chip.mtreg == MTREG_DEFAULT
    assert lux(driver.read()) == pytest.approx(400.0, abs=lux_per_count("high", 200))
    assert chip.mtreg == 200


def test_chip_powers_down_after_a_one_time_measurement() -> None:
    _, chip, driver, _ = sim_setup()
    driver.read()
    assert not chip.powered and chip.measurements == 1  # p.5: one-time -> power down


@pytest.mark.parametrize("code", [errno.EREMOTEIO, errno.EIO, errno.ETIMEDOUT])  # 121, 5, 110
def test_bus_errors_propagate_from_read_and_the_next_read_recovers(code: int) -> None:
    bus, chip, driver, _ = sim_setup()
    error = check_bus_error_propagates(bus, driver, code)
    assert not isinstance(error, SensorError)
    chip.illuminance = 321.0
    assert lux(driver.read()) == pytest.approx(321.0, abs=1.0)


def test_empty_address_fails_setup_with_the_bus_error() -> None:
    bus, _, _, time = sim_setup()
    with pytest.raises(OSError) as caught:
        make_driver(bus, time, 0x5C).setup()
    assert caught.value.errno == errno.EREMOTEIO


def test_real_clock_default_sleep() -> None:
    """No fake time at all: the driver's real sleep outlasts the simulated measurement."""
    chip = SimBH1750(seed=1, drift=False)
    bus = sim_bus(0x5C, chip)
    driver = BH1750(DriverContext("light", bus, 0x5C), BH1750Options(resolution="low"))
    chip.illuminance = 1000.0
    assert lux(driver.read()) == pytest.approx(1000.0, abs=lux_per_count("low"))


# --- identify ----------------------------------------------------------------------------


def test_identify_own_simulator_reads_only() -> None:
    bus, chip, _, _ = sim_setup()
    before = (chip.powered, chip.mtreg, chip.data, chip.measurements)
    assert BH1750.identify(bus, ADDRESS) == (
        "BH1750 (probable: answers at its address; the chip has no id register)"
    )
    assert (chip.powered, chip.mtreg, chip.data, chip.measurements) == before


def test_identify_none_where_nothing_answers_or_no_bh1750_can_be() -> None:
    bus, _, _, _ = sim_setup()
    assert BH1750.identify(bus, 0x5C) is None  # nothing there
    bus.attach(0x48, SimBME280())
    assert BH1750.identify(bus, 0x48) is None  # not one of the BH1750's two addresses


def test_identify_cannot_tell_another_chip_at_its_address() -> None:
    """The documented limit: with no id register and no side-effect-free command, any chip
    that answers a read at 0x23 or 0x5C passes; the name says "probable"."""
    bus = SimBus()
    bus.attach(ADDRESS, SimBME280())
    name = BH1750.identify(bus, ADDRESS)
    assert name is not None and "probable" in name


# --- the simulated chip itself -------------------------------------------------------------


def test_sim_takes_one_opcode_per_transaction() -> None:
    bus, chip, _, _ = sim_setup()
    with pytest.raises(OSError) as caught:
        bus.i2c_rdwr(i2c_msg.write(ADDRESS, [POWER_ON, ONE_TIME_H]))
    assert caught.value.errno == errno.EREMOTEIO
    assert chip.powered  # the first opcode was taken, the second not acknowledged


def test_sim_ignores_measurements_and_reset_in_power_down() -> None:
    bus, chip, _, time = sim_setup()
    chip.data = 1234
    bus.write_byte(ADDRESS, RESET)  # p.5: reset is not accepted in power-down
    bus.write_byte(ADDRESS, ONE_TIME_H)  # measurement commands need power on first
    time.sleep(1.0)
    assert chip.data == 1234 and chip.measurements == 0
    bus.write_byte(ADDRESS, POWER_ON)
    bus.write_byte(ADDRESS, RESET)
    assert chip.data == 0


def test_sim_continuous_mode_keeps_measuring() -> None:
    bus, chip, _, time = sim_setup()
    bus.write_byte(ADDRESS, POWER_ON)
    bus.write_byte(ADDRESS, 0x13)  # continuously L-resolution (p.5)
    chip.illuminance = 600.0
    time.sleep(1.0)
    message = i2c_msg.read(ADDRESS, 2)
    bus.i2c_rdwr(message)
    assert parse_raw(list(cast(Iterable[int], message))) == raw_count(600.0, "low", 69)
    assert chip.powered and chip.measurements == 1  # skipped measurements are not computed


def test_sim_day_goes_from_night_to_noon() -> None:
    time = FakeTime()
    chip = SimBH1750(seed=3, clock=time.clock)
    day = []
    for second in range(int(DAY_SECONDS)):
        time.now = float(second)
        day.append(chip.daylight())
    assert min(day) == NIGHT_LUX
    assert NIGHT_LUX + 0.2 * NOON_LUX <= max(day) <= NIGHT_LUX + NOON_LUX
    assert sum(light == NIGHT_LUX for light in day) == pytest.approx(DAY_SECONDS / 2, abs=2)


def test_sim_is_reproducible_from_its_seed() -> None:
    def readings(seed: int) -> list[float]:
        time = FakeTime()
        chip = SimBH1750(seed=seed, clock=time.clock)
        bus = SimBus()
        bus.attach(ADDRESS, chip)
        driver = make_driver(bus, time)
        out = []
        for _ in range(5):
            time.now += 37.0
            out.append(lux(driver.read()))
        return out

    assert readings(11) == readings(11)
    assert readings(11) != readings(12)


# --- options and the command line ------------------------------------------------------------


@pytest.mark.parametrize(
    "options", [{"mtreg": 30}, {"mtreg": 255}, {"resolution": "medium"}, {"gain": 2}]
)
def test_bad_options_are_refused(options: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        BH1750Options.model_validate(options)


def test_registered_under_its_name() -> None:
    # p.10: ADDR 'L' 0100011, 'H' 1011100
    check_registered("bh1750", BH1750, (0x23, 0x5C))


def test_read_command_prints_illuminance_in_lux(capsys: pytest.CaptureFixture[str]) -> None:
    lines = read_example(EXAMPLE, capsys)
    assert sensor_quantity_units(lines) == [("greenhouse-light", "illuminance", "lx")]
    assert 0.0 <= lines[0]["value"] <= NIGHT_LUX + NOON_LUX
