"""INA219: calibration and register math against the datasheet (SBOS448G; its worked
example is Table 3 of SBOS448F), the driver's register traffic, and the driver against
the simulator."""

from __future__ import annotations

import errno
import logging
from pathlib import Path

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from i2c_checks import (
    FakeTime,
    WordRecorder,
    check_bus_error_propagates,
    check_registered,
    sensor_quantity_units,
    sim_bus,
    values,
)
from pydantic import ValidationError
from sim_tree_checks import read_example

from drivers.base import DriverContext, out_of_range
from drivers.ina219 import (
    CNVR,
    CONFIG_RESET,
    INA219,
    MODE_CONTINUOUS,
    MODE_POWER_DOWN,
    MODE_TRIGGERED,
    OVF,
    REG_BUS_VOLTAGE,
    REG_CALIBRATION,
    REG_CONFIG,
    REG_CURRENT,
    REG_POWER,
    REG_SHUNT_VOLTAGE,
    TRIGGERED_TIME_MAX,
    INA219Options,
    amperes,
    bus_volts,
    calibrate,
    config_word,
    parse_word,
    shunt_volts,
    to_signed,
    watts,
    word_bytes,
)
from drivers.sim.ads1115 import SimADS1115
from drivers.sim.bme280 import SimBME280
from drivers.sim.bus import SimBus
from drivers.sim.ina219 import SimINA219
from gateway.config import load_settings
from gateway.errors import ConfigError, SensorError, SensorRangeError

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "config" / "examples" / "ina219.yaml"
ADDRESS = 0x40

# The datasheet's worked example (SBOS448G 8.5.1; in revision F the "Configure/Measure/
# Calculate Example" and its Table 3): a 10 A load, VCM = 12 V, R_SHUNT = 2 mΩ,
# V_SHUNT FSR = 40 mV, V_BUS FSR = 16 V, Current_LSB = 1 mA.
EXAMPLE_SHUNT_OHMS = 0.002
EXAMPLE_MAX_CURRENT = 32.768  # 1 mA * 2^15: Equation 2 gives the example's Current_LSB
EXAMPLE_REGISTERS = {
    REG_CONFIG: 0x019F,  # step 1
    REG_SHUNT_VOLTAGE: 0x07D0,  # step 2: 2000 * 10 µV = 20 mV
    REG_BUS_VOLTAGE: 0x5D98,  # step 3: 0BB3h = 2995 * 4 mV = 11.98 V
    REG_CALIBRATION: 0x5000,  # step 4: 20480
    REG_CURRENT: 0x2710,  # step 5: 10000 * 1 mA = 10.0 A
    REG_POWER: 0x1766,  # step 6: 5990 * 20 mW = 119.8 W
}


def make_driver(
    bus: object, time: FakeTime, address: int = ADDRESS, /, **options: object
) -> INA219:
    context = DriverContext(sensor="power", bus=bus, address=address)  # type: ignore[arg-type]
    return INA219(context, INA219Options.model_validate(options), sleep=time.sleep)


def sim_setup(
    shunt_ohms: float = 0.1, **options: object
) -> tuple[SimBus, SimINA219, INA219, FakeTime]:
    time = FakeTime()
    chip = SimINA219(seed=9, drift=False, clock=time.clock, shunt_ohms=shunt_ohms)
    bus = sim_bus(ADDRESS, chip)
    return bus, chip, make_driver(bus, time, shunt_ohms=shunt_ohms, **options), time


def read_register(bus: SimBus, register: int) -> int:
    return parse_word(bus.read_i2c_block_data(ADDRESS, register, 2))


# --- the datasheet's worked example ----------------------------------------------------------


def test_worked_example_calibration() -> None:
    # 8.5.1: Current_LSB = 32.768 A / 2^15 = 1 mA (Equation 2); Cal = trunc(0.04096 /
    # (0.001 * 0.002)) = 20480 = 5000h (Equation 1); Power_LSB = 20 mW (Equation 3).
    cal = calibrate(EXAMPLE_SHUNT_OHMS, EXAMPLE_MAX_CURRENT)
    assert cal.register == 20480 == EXAMPLE_REGISTERS[REG_CALIBRATION]
    assert cal.current_lsb == pytest.approx(1e-3, rel=1e-12)
    assert cal.power_lsb == pytest.approx(20e-3, rel=1e-12)


def test_worked_example_configuration() -> None:
    # Step 1: 019Fh = 16 V range, PGA /1 (40 mV), 12-bit bus and shunt, continuous.
    assert config_word(16, 40, MODE_CONTINUOUS) == EXAMPLE_REGISTERS[REG_CONFIG]


def test_worked_example_register_values() -> None:
    cal = calibrate(EXAMPLE_SHUNT_OHMS, EXAMPLE_MAX_CURRENT)
    assert shunt_volts(EXAMPLE_REGISTERS[REG_SHUNT_VOLTAGE]) == pytest.approx(0.020)
    assert EXAMPLE_REGISTERS[REG_BUS_VOLTAGE] >> 3 == 0x0BB3 == 2995  # not right-aligned
    assert bus_volts(EXAMPLE_REGISTERS[REG_BUS_VOLTAGE]) == pytest.approx(11.98)
    assert amperes(EXAMPLE_REGISTERS[REG_CURRENT], cal) == pytest.approx(10.0)
    assert watts(EXAMPLE_REGISTERS[REG_POWER], cal) == pytest.approx(119.8)
    # Equation 4: 2000 * 20480 / 4096 = 10000; Equation 5: 10000 * 2995 / 5000 = 5990.
    assert 2000 * 20480 // 4096 == 0x2710
    assert 10000 * 2995 // 5000 == 0x1766


def test_worked_example_replayed_through_the_simulator() -> None:
    _, chip, driver, _ = sim_setup(
        shunt_ohms=EXAMPLE_SHUNT_OHMS, max_current=EXAMPLE_MAX_CURRENT, bus_range=16, pga=40
    )
    chip.bus_voltage, chip.current = 11.98, 10.0  # 12 V minus the 20 mV shunt drop
    got = values(driver.read())
    assert got == {
        "bus_voltage": pytest.approx(11.98),
        "shunt_voltage": pytest.approx(0.020),
        "current": pytest.approx(10.0),
        "power": pytest.approx(119.8),
    }
    regs = chip.registers
    assert regs[REG_SHUNT_VOLTAGE] == EXAMPLE_REGISTERS[REG_SHUNT_VOLTAGE]
    assert regs[REG_BUS_VOLTAGE] & ~(CNVR | OVF) == EXAMPLE_REGISTERS[REG_BUS_VOLTAGE]
    assert regs[REG_CALIBRATION] == EXAMPLE_REGISTERS[REG_CALIBRATION]
    assert regs[REG_CURRENT] == EXAMPLE_REGISTERS[REG_CURRENT]
    assert regs[REG_POWER] == EXAMPLE_REGISTERS[REG_POWER]


# --- calibration ---------------------------------------------------------------------------


def test_default_calibration_of_the_common_breakout() -> None:
    # 0.1 Ω and 3.2 A (320 mV / 0.1 Ω, 8.5.1's "maximum possible current"):
    # Current_LSB = 3.2 / 32768 = 97.65625 µA; Cal = trunc(0.04096 / 9.765625e-6) =
    # trunc(4194.304) = 4194. One count is then 0.04096 / (4194 * 0.1) A (Equation 4).
    cal = INA219Options().calibration
    assert cal.register == 4194
    assert cal.current_lsb == pytest.approx(0.04096 / (4194 * 0.1), rel=1e-12)
    assert 3.2 / 32768 <= cal.current_lsb < 3.2 / 32768 * 1.0001
    assert cal.power_lsb == pytest.approx(20 * cal.current_lsb)


def test_calibration_bit_0_is_void() -> None:
    # 8.6.4.1: FS0 always reads 0. 3.0 A on 0.1 Ω: trunc(4473.92) = 4473 -> 4472 is held.
    cal = calibrate(0.1, 3.0)
    assert cal.register == 4472
    assert cal.current_lsb == pytest.approx(0.04096 / (4472 * 0.1), rel=1e-12)


def test_calibration_is_exact_for_decimal_inputs() -> None:
    # In binary floating point 0.04096 / (0.001 * 0.002) is 20479.999...; trunc must not
    # lose the step.
    assert calibrate(0.002, 32.768).register == 20480
    assert calibrate(0.01, 4.096).register == 32768  # 0.04096 / (125e-6 * 0.01)


def test_calibration_that_does_not_fit_says_what_does() -> None:
    with pytest.raises(ValueError, match=r"use at least 0\.205 A"):
        calibrate(0.1, 0.2)
    assert calibrate(0.1, 0.205).register <= 0xFFFE
    with pytest.raises(ValueError, match="too large"):
        calibrate(0.1, 1e6)
    with pytest.raises(ValueError, match="greater than 0"):
        calibrate(0.0, 1.0)


@settings(max_examples=300)
@given(
    shunt_ohms=st.floats(0.0005, 10.0),
    max_current=st.floats(0.001, 200.0),
    shunt_count=st.integers(-32000, 32000),
)
def test_calibration_inverts_the_chip_arithmetic(
    shunt_ohms: float, max_current: float, shunt_count: int
) -> None:
    try:
        cal = calibrate(shunt_ohms, max_current)
    except ValueError:
        assume(False)
    nominal = max_current / 2**15  # Equation 2
    assert cal.register % 2 == 0 and 2 <= cal.register <= 0xFFFE
    # The LSB of the programmed value is at least the datasheet's, and only as much
    # larger as truncation and the void bit made the register smaller.
    assert nominal * (1 - 1e-9) <= cal.current_lsb <= nominal * (1 + 2.0 / (cal.register - 1))
    assert 0x7FFF * cal.current_lsb >= max_current * (1 - 1e-4)  # full scale holds max_current
    # Equation 4 as the chip computes it, then the driver's LSB: the current the shunt
    # voltage stands for, to within one LSB.
    register = int(shunt_count * cal.register / 4096)
    true_current = shunt_count * 10e-6 / shunt_ohms
    assert abs(register * cal.current_lsb - true_current) <= cal.current_lsb * (1 + 1e-9)


# --- the driver's register traffic ---------------------------------------------------------


def test_setup_programs_and_reads_back() -> None:
    time = FakeTime()
    sim = SimBus()
    sim.attach(ADDRESS, SimINA219(drift=False, clock=time.clock))
    bus = WordRecorder(sim, parse_word)
    make_driver(bus, time).setup()
    idle = config_word(32, 320, MODE_POWER_DOWN)
    assert idle == 0x3998  # the reset value 399Fh with mode 000
    assert bus.calls == [
        ("write", REG_CONFIG, idle),
        ("write", REG_CALIBRATION, 4194),
        ("read", REG_CONFIG, idle),
        ("read", REG_CALIBRATION, 4194),
    ]


def test_read_triggers_and_reads_the_results_then_the_calibration() -> None:
    time = FakeTime()
    sim = SimBus()
    chip = SimINA219(drift=False, clock=time.clock)
    chip.current = 0.5  # 50 mV, inside ±80 mV
    sim.attach(ADDRESS, chip)
    bus = WordRecorder(sim, parse_word)
    driver = make_driver(bus, time, bus_range=16, pga=80)
    driver.setup()
    bus.calls.clear()
    time.sleeps.clear()
    driver.read()
    assert [(op, register) for op, register, _ in bus.calls] == [
        ("write", REG_CONFIG),
        ("read", REG_BUS_VOLTAGE),
        ("read", REG_SHUNT_VOLTAGE),
        ("read", REG_CURRENT),
        ("read", REG_POWER),
        ("read", REG_CALIBRATION),
    ]
    # 8.6.2.1 bit by bit: RST 0, -, BRNG 0 (16 V), PG 01 (/2, 80 mV), BADC 0011, SADC 0011,
    # MODE 011 (shunt and bus, triggered).
    assert bus.calls[0][2] == config_word(16, 80, MODE_TRIGGERED) == 0b0_0_0_01_0011_0011_011
    assert time.sleeps == [pytest.approx(TRIGGERED_TIME_MAX)]  # 2 x 586 µs (7.5)


# --- the driver against the simulator ------------------------------------------------------


@pytest.mark.parametrize(
    ("bus_voltage", "current"),
    [(12.0, 0.8), (5.0, -1.25), (0.0, 0.0), (25.9, 3.19), (3.3, 0.0123)],
)
def test_round_trip_through_the_simulator(bus_voltage: float, current: float) -> None:
    _, chip, driver, _ = sim_setup()
    chip.bus_voltage, chip.current = bus_voltage, current
    got = values(driver.read())
    assert list(got) == ["bus_voltage", "shunt_voltage", "current", "power"]
    assert got["bus_voltage"] == pytest.approx(bus_voltage, abs=0.002)  # half of 4 mV
    assert got["shunt_voltage"] == pytest.approx(current * 0.1, abs=5e-6)  # half of 10 µV
    lsb = driver.calibration.current_lsb
    assert got["current"] == pytest.approx(current, abs=lsb + 5e-6 / 0.1)
    assert got["power"] == pytest.approx(abs(current) * bus_voltage, abs=0.03)


@settings(max_examples=60, deadline=None)
@given(bus_voltage=st.floats(0.0, 26.0), current=st.floats(-3.0, 3.0))
def test_round_trip_property(bus_voltage: float, current: float) -> None:
    _, chip, driver, _ = sim_setup()
    chip.bus_voltage, chip.current = bus_voltage, current
    got = values(driver.read())
    lsb = driver.calibration.current_lsb
    assert got["bus_voltage"] == pytest.approx(bus_voltage, abs=0.002 + 1e-9)
    assert got["current"] == pytest.approx(current, abs=lsb + 5e-5 + 1e-9)
    # Power: |current register| * bus counts / 5000 in Power_LSB steps (Equation 5).
    assert got["power"] == pytest.approx(
        abs(got["current"]) * got["bus_voltage"], abs=driver.calibration.power_lsb + 1e-9
    )
    assert not any(out_of_range(INA219, m) for m in driver.read())


def test_units_are_senml() -> None:
    _, _, driver, _ = sim_setup()
    assert [(m.quantity, m.unit) for m in driver.read()] == [
        ("bus_voltage", "V"),
        ("shunt_voltage", "V"),
        ("current", "A"),
        ("power", "W"),
    ]


def test_brown_out_is_recalibrated_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    _, chip, driver, _ = sim_setup()
    driver.setup()
    chip.current = 1.5
    chip.power_cycle()  # 8.6.4.1: calibration back to 0, which makes current and power 0
    with caplog.at_level(logging.WARNING, logger="drivers.ina219"):
        got = values(driver.read())
    assert got["current"] == pytest.approx(1.5, abs=2e-4)
    assert driver.recalibrations == 1
    assert any("lost its calibration" in r.getMessage() for r in caplog.records)
    assert chip.registers[REG_CALIBRATION] == 4194
    assert values(driver.read())["current"] == pytest.approx(1.5, abs=2e-4)
    assert driver.recalibrations == 1


def test_a_calibration_that_never_sticks_is_a_sensor_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _, chip, driver, _ = sim_setup()
    driver.setup()
    writes = chip.write_registers

    def drop_calibration(register: int, data: list[int]) -> None:
        if register != REG_CALIBRATION:
            writes(register, data)

    monkeypatch.setattr(chip, "write_registers", drop_calibration)
    chip.power_cycle()
    with pytest.raises(SensorError, match="does not keep its value"):
        driver.read()


def test_overflow_is_a_range_error_that_says_what_to_change() -> None:
    # 0.5 A full scale but 2 A flowing: Equation 4 gives 20000 * 26843 / 4096 > 32767.
    _, chip, driver, _ = sim_setup(max_current=0.5)
    chip.current = 2.0
    with pytest.raises(SensorRangeError, match="raise max_current") as caught:
        driver.read()
    assert "0.5 A" in str(caught.value)
    assert read_register_flags(chip) & OVF


def read_register_flags(chip: SimINA219) -> int:
    return chip.registers[REG_BUS_VOLTAGE] & (CNVR | OVF)


def test_bus_voltage_beyond_the_chip_is_rejected_by_range() -> None:
    # Features: bus voltages 0 to 26 V; the 32 V range still encodes more.
    _, chip, driver, _ = sim_setup()
    chip.bus_voltage = 27.0
    measurements = {m.quantity: m for m in driver.read()}
    assert measurements["bus_voltage"].value == pytest.approx(27.0)
    assert out_of_range(INA219, measurements["bus_voltage"])
    assert not out_of_range(INA219, measurements["current"])


def test_sixteen_volt_range_tops_out_at_16_38_volts() -> None:
    # 8.6.3.2: at the 16 V range BD12 is 0: at most 0FFFh * 4 mV = 16.38 V.
    _, chip, driver, _ = sim_setup(bus_range=16)
    chip.bus_voltage = 20.0
    assert values(driver.read())["bus_voltage"] == pytest.approx(4095 * 0.004)


def test_shunt_voltage_at_the_pga_limit_is_a_range_error() -> None:
    # 1 A through 0.1 Ω is 100 mV, beyond the ±40 mV of PGA /1 (8.6.2.1): the reading is
    # clipped, and the current would be silently wrong; it fails instead.
    _, chip, driver, _ = sim_setup(pga=40, max_current=0.4)
    chip.current = 1.0
    with pytest.raises(SensorRangeError, match=r"±40 mV limit of the pga"):
        driver.read()
    chip.current = -0.39  # inside: read normally
    assert values(driver.read())["shunt_voltage"] == pytest.approx(-0.039)


def test_cnvr_is_polled_when_the_chip_is_slow() -> None:
    time = FakeTime()
    chip = SimINA219(drift=False, clock=lambda: time.now * 0.5)  # half speed
    bus = SimBus()
    bus.attach(ADDRESS, chip)
    driver = make_driver(bus, time)
    chip.bus_voltage = 7.5
    assert values(driver.read())["bus_voltage"] == pytest.approx(7.5, abs=0.002)
    assert time.sleeps[-1] == INA219.status_poll_interval


def test_a_conversion_that_never_ends_is_a_sensor_error() -> None:
    time = FakeTime()
    chip = SimINA219(drift=False, clock=lambda: 0.0)
    bus = SimBus()
    bus.attach(ADDRESS, chip)
    with pytest.raises(SensorError, match="no conversion ready"):
        make_driver(bus, time).read()
    assert len(time.sleeps) == 1 + INA219.status_polls


@pytest.mark.parametrize("code", [errno.EREMOTEIO, errno.EIO, errno.ETIMEDOUT])  # 121, 5, 110
def test_bus_errors_propagate_from_read_and_the_next_read_recovers(code: int) -> None:
    bus, chip, driver, _ = sim_setup()
    error = check_bus_error_propagates(bus, driver, code)
    assert not isinstance(error, SensorError)
    chip.bus_voltage = 9.0
    assert values(driver.read())["bus_voltage"] == pytest.approx(9.0, abs=0.002)


def test_setup_refuses_a_chip_that_does_not_keep_the_registers() -> None:
    time = FakeTime()
    bus = SimBus()
    bus.attach(0x48, SimADS1115(clock=time.clock))
    with pytest.raises(SensorError, match="no INA219 at 0x48") as caught:
        make_driver(bus, time, 0x48).setup()
    assert "check the address" in str(caught.value)


def test_read_sets_up_an_unprepared_driver_without_a_false_alarm(
    caplog: pytest.LogCaptureFixture,
) -> None:
    _, chip, driver, _ = sim_setup()
    chip.current = 0.5
    with caplog.at_level(logging.WARNING, logger="drivers.ina219"):
        assert values(driver.read())["current"] == pytest.approx(0.5, abs=2e-4)
    assert driver.recalibrations == 0 and not caplog.records


def test_real_clock_default_sleep() -> None:
    chip = SimINA219(seed=4, drift=False)
    bus = sim_bus(0x45, chip)
    driver = INA219(DriverContext("power", bus, 0x45), INA219Options())
    chip.bus_voltage = 5.05
    driver.setup()
    assert values(driver.read())["bus_voltage"] == pytest.approx(5.05, abs=0.002)


# --- identify ----------------------------------------------------------------------------


def test_identify_own_simulator_at_power_on_and_once_programmed() -> None:
    bus, chip, driver, _ = sim_setup()
    assert chip.registers[REG_CONFIG] == CONFIG_RESET
    assert INA219.identify(bus, ADDRESS) == "INA219"
    driver.setup()
    driver.read()
    assert INA219.identify(bus, ADDRESS) == "INA219"


def test_identify_reads_only_and_leaves_cnvr_alone() -> None:
    bus, chip, driver, time = sim_setup()
    driver.setup()
    bus.write_i2c_block_data(ADDRESS, REG_CONFIG, word_bytes(config_word(32, 320)))
    time.sleep(0.01)
    before = chip.registers
    assert before[REG_BUS_VOLTAGE] & CNVR
    assert INA219.identify(bus, ADDRESS) == "INA219"
    assert chip.registers == before  # CNVR still set: the power register was not read


def test_identify_none_for_other_chips_and_empty_addresses() -> None:
    bus = SimBus()
    bus.attach(0x48, SimADS1115())  # 0x48 is an INA219 address too
    bus.attach(0x40, SimBME280())
    assert INA219.identify(bus, 0x48) is None
    assert INA219.identify(bus, 0x40) is None
    assert INA219.identify(bus, 0x41) is None  # nothing there
    bus.attach(0x23, SimINA219())
    assert INA219.identify(bus, 0x23) is None  # not an INA219 address


def test_identify_none_when_configured_but_never_calibrated() -> None:
    bus, _, _, _ = sim_setup()
    bus.write_i2c_block_data(ADDRESS, REG_CONFIG, word_bytes(config_word(16, 40)))
    assert INA219.identify(bus, ADDRESS) is None  # documented: indistinguishable


# --- the simulated chip itself -------------------------------------------------------------


def test_sim_reading_power_clears_cnvr_and_rst_resets() -> None:
    bus, _, driver, time = sim_setup()
    driver.setup()
    bus.write_i2c_block_data(ADDRESS, REG_CONFIG, word_bytes(config_word(32, 320)))
    time.sleep(0.01)
    assert read_register(bus, REG_BUS_VOLTAGE) & CNVR
    read_register(bus, REG_POWER)  # 8.6.3.2: reading the power register clears CNVR
    assert not read_register(bus, REG_BUS_VOLTAGE) & CNVR
    bus.write_i2c_block_data(ADDRESS, REG_CONFIG, word_bytes(0x8000))  # RST (8.6.2.1)
    assert read_register(bus, REG_CONFIG) == CONFIG_RESET
    assert read_register(bus, REG_CALIBRATION) == 0


def test_sim_averaging_takes_the_table_time() -> None:
    # ADC settings table: 128 samples take 68.10 ms, for the shunt and for the bus.
    bus, _, _, time = sim_setup()
    word = 0x3FFF & ~0b100  # 32 V, /8, BADC and SADC 1111, mode 011 (triggered)
    bus.write_i2c_block_data(ADDRESS, REG_CONFIG, word_bytes(word))
    time.sleep(0.136)
    assert not read_register(bus, REG_BUS_VOLTAGE) & CNVR
    time.sleep(0.0003)
    assert read_register(bus, REG_BUS_VOLTAGE) & CNVR


def test_sim_naks_registers_that_do_not_exist() -> None:
    bus, _, _, _ = sim_setup()
    with pytest.raises(OSError) as caught:
        bus.read_i2c_block_data(ADDRESS, 0x06, 2)
    assert caught.value.errno == errno.EREMOTEIO


# --- options and the command line ------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"shunt_ohms": 0}, "shunt_ohms"),
        ({"max_current": -1}, "max_current"),
        ({"max_current": 0.1}, r"use at least 0\.205 A"),
        ({"bus_range": 24}, "bus_range"),
        ({"pga": 100}, "pga"),
        ({"gain": 8}, "gain"),
    ],
)
def test_bad_options_are_refused(options: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        INA219Options.model_validate(options)


def test_a_max_current_too_small_in_a_config_file_names_file_line_and_fix(tmp_path: Path) -> None:
    text = EXAMPLE.read_text().replace("      # max_current: 3.2\n", "      max_current: 0.1\n")
    path = tmp_path / "gateway.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    [problem] = caught.value.problems
    line = text.splitlines().index("      max_current: 0.1") + 1
    assert problem.startswith(f"{path}:{line}: sensors[0].options.max_current: ")
    assert "use at least 0.205 A" in problem


def test_registered_under_its_name() -> None:
    # 8.5.5.1: 16 addresses by A0, A1
    check_registered("ina219", INA219, tuple(range(0x40, 0x50)))


def test_signed_registers() -> None:
    assert to_signed(0xFFFF) == -1 and to_signed(0x8000) == -32768 and to_signed(0x7FFF) == 32767
    with pytest.raises(ValueError, match="2 bytes"):
        parse_word([1, 2, 3])


def test_read_command_prints_the_four_quantities_with_units(
    capsys: pytest.CaptureFixture[str],
) -> None:
    lines = read_example(EXAMPLE, capsys)
    assert sensor_quantity_units(lines) == [
        ("pump", "bus_voltage", "V"),
        ("pump", "shunt_voltage", "V"),
        ("pump", "current", "A"),
        ("pump", "power", "W"),
    ]
    by_name = {r["quantity"]: r["value"] for r in lines}
    assert 11.0 < by_name["bus_voltage"] < 13.0
    assert 0.0 < by_name["current"] < 1.5
