"""ADS1115: config words and output codes against the datasheet (SBAS444E), the driver's
register traffic, and the driver against the simulator."""

from __future__ import annotations

import errno
import logging
from pathlib import Path

import pytest
from hypothesis import given, settings
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

from drivers.ads1115 import (
    ADS1115,
    CONFIG_RESET,
    MUX_CODES,
    OS,
    PGA_CODES,
    REG_CONFIG,
    REG_CONVERSION,
    REG_HI_THRESH,
    ADS1115Options,
    at_rail,
    config_word,
    decode_config,
    lsb_size,
    max_conversion_time,
    parse_word,
    raw_to_volts,
    to_signed,
    word_bytes,
)
from drivers.base import DriverContext
from drivers.sim.ads1115 import VDD, SimADS1115, raw_code
from drivers.sim.bme280 import SimBME280
from drivers.sim.bus import SimBus
from drivers.sim.ina219 import SimINA219
from gateway.config import load_settings
from gateway.errors import ConfigError, SensorError, SensorRangeError

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "config" / "examples" / "ads1115.yaml"
ADDRESS = 0x48
GAINS = tuple(PGA_CODES)


def channel(name: str, pair: str, **more: object) -> dict[str, object]:
    return {"name": name, "input": pair, **more}


def make_driver(
    bus: object, time: FakeTime, *channels: dict[str, object], **options: object
) -> ADS1115:
    context = DriverContext(sensor="adc", bus=bus, address=ADDRESS)  # type: ignore[arg-type]
    opts = ADS1115Options.model_validate({"channels": list(channels), **options})
    return ADS1115(context, opts, sleep=time.sleep)


def sim_setup(
    *channels: dict[str, object], **options: object
) -> tuple[SimBus, SimADS1115, ADS1115, FakeTime]:
    time = FakeTime()
    chip = SimADS1115(seed=5, drift=False, clock=time.clock)
    bus = sim_bus(ADDRESS, chip)
    return bus, chip, make_driver(bus, time, *channels, **options), time


# --- config words and output codes against the datasheet ------------------------------------


def test_reset_config_decodes_as_the_datasheet_says() -> None:
    # 8.1.3: reset 8583h = OS 1, MUX 000 (AIN0-AIN1), PGA 010 (±2.048 V), MODE 1
    # (single-shot), DR 100 (128 SPS), COMP_MODE/POL/LAT 0, COMP_QUE 11 (off).
    fields = decode_config(0x8583)
    assert fields.idle and fields.single_shot and fields.comparator_off
    assert (fields.input, fields.fsr, fields.data_rate) == ("AIN0-AIN1", 2.048, 128)
    assert config_word("AIN0-AIN1", 2.048, 128) == CONFIG_RESET


def test_config_word_fields() -> None:
    # 8.1.3 bit by bit: OS 1 | MUX 100 (AIN0-GND) | PGA 001 (±4.096 V) | MODE 1 | DR 100 |
    # COMP 000 | COMP_QUE 11 = 1100_0011_1000_0011.
    assert config_word("AIN0", 4.096, 128) == 0b1100_0011_1000_0011 == 0xC383
    assert config_word("AIN0", 4.096, 128, start=False) == 0x4383
    # AIN3-GND (111), ±0.256 V (101), 860 SPS (111).
    assert config_word("AIN3", 0.256, 860) == 0b1111_1011_1110_0011
    # 8.1.3 MUX table: differential pairs 000-011, single-ended 100-111.
    assert MUX_CODES == {
        "AIN0-AIN1": 0, "AIN0-AIN3": 1, "AIN1-AIN3": 2, "AIN2-AIN3": 3,
        "AIN0": 4, "AIN1": 5, "AIN2": 6, "AIN3": 7,
    }  # fmt: skip
    for rate, code in zip((8, 16, 32, 64, 128, 250, 475, 860), range(8), strict=True):
        assert config_word("AIN0", 2.048, rate) >> 5 & 0b111 == code  # DR table, 8.1.3


def test_pga_codes_110_and_111_are_also_0256() -> None:
    # 8.1.3: "110 : FSR = ±0.256 V, 111 : FSR = ±0.256 V".
    assert decode_config(0b110 << 9).fsr == 0.256
    assert decode_config(0b111 << 9).fsr == 0.256


@pytest.mark.parametrize(
    ("fsr", "lsb"),
    # 7.3.3, Table 7-1: full-scale range and LSB size.
    [(6.144, 187.5e-6), (4.096, 125e-6), (2.048, 62.5e-6), (1.024, 31.25e-6),
     (0.512, 15.625e-6), (0.256, 7.8125e-6)],
)  # fmt: skip
def test_lsb_sizes_of_table_7_1(fsr: float, lsb: float) -> None:
    assert lsb_size(fsr) == pytest.approx(lsb, rel=1e-12)
    assert raw_to_volts(1, fsr) == pytest.approx(lsb, rel=1e-12)


def test_output_codes_of_table_7_3() -> None:
    # 7.5.4, Table 7-3: +FS (2^15 - 1)/2^15 -> 7FFFh, +FS/2^15 -> 0001h, 0 -> 0,
    # -FS/2^15 -> FFFFh, -FS -> 8000h.
    fs = 2.048
    assert raw_to_volts(to_signed(0x7FFF), fs) == pytest.approx(fs * (2**15 - 1) / 2**15)
    assert raw_to_volts(to_signed(0x0001), fs) == pytest.approx(fs / 2**15)
    assert raw_to_volts(to_signed(0x0000), fs) == 0.0
    assert raw_to_volts(to_signed(0xFFFF), fs) == pytest.approx(-fs / 2**15)
    assert raw_to_volts(to_signed(0x8000), fs) == pytest.approx(-fs)
    # And the simulated chip produces exactly those codes.
    assert raw_code(fs * (2**15 - 1) / 2**15, fs) == 0x7FFF
    assert raw_code(fs / 2**15, fs) == 1
    assert raw_code(-fs / 2**15, fs) & 0xFFFF == 0xFFFF
    assert raw_code(-fs, fs) & 0xFFFF == 0x8000
    assert raw_code(5.0, fs) == 0x7FFF and raw_code(-5.0, fs) == -0x8000  # clipped


def test_rails_are_the_clipped_codes() -> None:
    assert at_rail(to_signed(0x7FFF)) and at_rail(to_signed(0x8000))
    assert not at_rail(to_signed(0x7FFE)) and not at_rail(to_signed(0x8001))


def test_conversion_time() -> None:
    # 1/DR (7.3.6) at a clock 10% slow (5.5 data rate variation) after ~25 µs power-up
    # (7.4.2.1). 7.4.3 quotes "approximately 1.2 ms" for 860 SPS; at the limit 1.317 ms.
    assert max_conversion_time(128) == pytest.approx(25e-6 + 1 / (128 * 0.9))
    assert max_conversion_time(860) == pytest.approx(1.3170e-3, abs=1e-6)
    assert max_conversion_time(8) == pytest.approx(0.13891, abs=1e-5)


def test_words_are_big_endian() -> None:
    # 7.5.3: the most significant byte goes first.
    assert word_bytes(0x8583) == [0x85, 0x83]
    assert parse_word([0x85, 0x83]) == 0x8583
    with pytest.raises(ValueError, match="2 bytes"):
        parse_word([0x85])


@settings(max_examples=300)
@given(a=st.integers(-0x8000, 0x7FFF), b=st.integers(-0x8000, 0x7FFF), fsr=st.sampled_from(GAINS))
def test_volts_are_monotonic_and_within_the_full_scale(a: int, b: int, fsr: float) -> None:
    low, high = sorted((a, b))
    assert raw_to_volts(low, fsr) <= raw_to_volts(high, fsr)
    assert -fsr <= raw_to_volts(low, fsr) < fsr
    assert -fsr <= raw_to_volts(high, fsr) < fsr


@settings(max_examples=300)
@given(volts=st.floats(-6.5, 6.5), fsr=st.sampled_from(GAINS))
def test_code_and_volts_are_inverse_within_half_an_lsb(volts: float, fsr: float) -> None:
    code = raw_code(volts, fsr)
    if at_rail(code):
        assert abs(volts) >= fsr * (2**15 - 1.5) / 2**15
    else:
        assert raw_to_volts(code, fsr) == pytest.approx(volts, abs=lsb_size(fsr) / 2 + 1e-12)


# --- the driver's register traffic ---------------------------------------------------------


def test_setup_writes_power_down_config_and_reads_it_back() -> None:
    time = FakeTime()
    sim = SimBus()
    sim.attach(ADDRESS, SimADS1115(drift=False, clock=time.clock))
    bus = WordRecorder(sim, parse_word)
    make_driver(bus, time, channel("a", "AIN2", gain=0.512), data_rate=860).setup()
    idle = config_word("AIN2", 0.512, 860, start=False)
    assert bus.calls == [("write", REG_CONFIG, idle), ("read", REG_CONFIG, idle | OS)]


def test_read_converts_each_channel_single_shot() -> None:
    time = FakeTime()
    sim = SimBus()
    sim.attach(ADDRESS, SimADS1115(drift=False, clock=time.clock))
    bus = WordRecorder(sim, parse_word)
    driver = make_driver(bus, time, channel("a", "AIN0"), channel("b", "AIN1-AIN3", gain=4.096))
    driver.setup()
    bus.calls.clear()
    time.sleeps.clear()
    driver.read()
    ops = [(op, register) for op, register, _ in bus.calls]
    assert ops == [
        ("read", REG_CONFIG),  # idle before the first start
        ("write", REG_CONFIG), ("read", REG_CONFIG), ("read", REG_CONVERSION),
        ("write", REG_CONFIG), ("read", REG_CONFIG), ("read", REG_CONVERSION),
    ]  # fmt: skip
    writes = [word for op, _, word in bus.calls if op == "write"]
    assert writes == [config_word("AIN0", 2.048, 128), config_word("AIN1-AIN3", 4.096, 128)]
    assert time.sleeps == [pytest.approx(max_conversion_time(128))] * 2


# --- the driver against the simulator ------------------------------------------------------


@pytest.mark.parametrize("gain", GAINS)
@pytest.mark.parametrize("pair", ["AIN0", "AIN1", "AIN2", "AIN3"])
def test_single_ended_round_trip(gain: float, pair: str) -> None:
    _, chip, driver, _ = sim_setup(channel("x", pair, gain=gain))
    true = min(gain * 0.73, VDD)  # inside the range and the supply
    chip.inputs[int(pair[-1])] = true
    got = values(driver.read())["x"]
    assert got == pytest.approx(true, abs=lsb_size(gain) / 2 + 1e-12)


@pytest.mark.parametrize(
    ("pair", "positive", "negative"),
    [("AIN0-AIN1", 0, 1), ("AIN0-AIN3", 0, 3), ("AIN1-AIN3", 1, 3), ("AIN2-AIN3", 2, 3)],
)
def test_differential_round_trip_both_signs(pair: str, positive: int, negative: int) -> None:
    _, chip, driver, _ = sim_setup(channel("x", pair, gain=1.024))
    for difference in (0.4321, -0.4321):
        chip.inputs = [1.0, 1.0, 1.0, 1.0]
        chip.inputs[positive] = 1.0 + difference / 2
        chip.inputs[negative] = 1.0 - difference / 2
        got = values(driver.read())["x"]
        assert got == pytest.approx(difference, abs=lsb_size(1.024) / 2 + 1e-12)


@settings(max_examples=60, deadline=None)
@given(
    volts=st.floats(0.0, 3.3),
    gain=st.sampled_from(GAINS),
    scale=st.floats(-1000.0, 1000.0),
    offset=st.floats(-1000.0, 1000.0),
)
def test_scaled_round_trip_property(volts: float, gain: float, scale: float, offset: float) -> None:
    _, chip, driver, _ = sim_setup(
        channel("x", "AIN1", gain=gain, scale=scale, offset=offset, unit="Pa")
    )
    chip.inputs[1] = volts
    if raw_code(volts, gain) == 0x7FFF:
        with pytest.raises(SensorRangeError):
            driver.read()
        return
    [m] = driver.read()
    assert (m.quantity, m.unit) == ("x", "Pa")
    tolerance = abs(scale) * lsb_size(gain) / 2 + 1e-9 * (abs(offset) + abs(scale) + 1)
    assert m.value == pytest.approx(volts * scale + offset, abs=tolerance)


def test_a_channel_at_a_rail_is_dropped_counted_and_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    _, chip, driver, _ = sim_setup(
        channel("low", "AIN0", gain=0.256),
        channel("ok", "AIN1"),
        channel("neg", "AIN2-AIN3", gain=0.512),
    )
    chip.inputs = [1.0, 1.5, 0.0, 1.0]  # AIN0 beyond 0.256 V; AIN2-AIN3 = -1 V beyond -0.512
    with caplog.at_level(logging.WARNING, logger="drivers.ads1115"):
        got = values(driver.read())
        got_again = values(driver.read())
    assert got == got_again == {"ok": pytest.approx(1.5, abs=lsb_size(2.048))}
    assert driver.rail_counts == {"low": 2, "neg": 2}
    messages = [r.getMessage() for r in caplog.records]
    assert any("low dropped" in m and "+0.256 V" in m and "larger gain" in m for m in messages)
    assert any("neg dropped" in m and "-0.512 V" in m for m in messages)
    record = next(r for r in caplog.records if "low dropped" in r.getMessage())
    assert record.__dict__["sensor"] == "adc" and record.__dict__["raw"] == 0x7FFF


def test_every_channel_at_a_rail_is_a_range_error() -> None:
    _, chip, driver, _ = sim_setup(
        channel("a", "AIN0", gain=0.256), channel("b", "AIN1", gain=0.256)
    )
    chip.inputs = [3.0, 3.0, 0.0, 0.0]
    with pytest.raises(SensorRangeError, match=r"every channel \(a, b\)"):
        driver.read()


def test_os_bit_is_polled_when_the_chip_is_slow() -> None:
    _, chip, driver, time = sim_setup(channel("x", "AIN0"))
    chip.oscillator = 1.3  # 30% slow: beyond the datasheet's 10%, so the first poll sees OS = 0
    chip.inputs[0] = 1.2345
    assert values(driver.read())["x"] == pytest.approx(1.2345, abs=lsb_size(2.048))
    poll = max_conversion_time(128) / ADS1115.status_polls
    assert time.sleeps[1:] == [pytest.approx(poll)] * (len(time.sleeps) - 1)
    assert len(time.sleeps) > 1


def test_a_conversion_that_never_ends_is_a_sensor_error() -> None:
    time = FakeTime()
    chip = SimADS1115(drift=False, clock=lambda: 0.0)  # its conversion never ends
    bus = SimBus()
    bus.attach(ADDRESS, chip)
    driver = make_driver(bus, time, channel("x", "AIN0"))
    with pytest.raises(SensorError, match="still converting"):
        driver.read()
    assert len(time.sleeps) == 1 + ADS1115.status_polls


def test_read_waits_for_a_conversion_left_running() -> None:
    # A start for another input is still converting when read() begins: a second start
    # would be ignored (8.1.3), and the result would be the other input's.
    bus, chip, driver, _ = sim_setup(channel("x", "AIN0"))
    chip.inputs = [0.5, 1.5, 0.0, 0.0]
    bus.write_i2c_block_data(ADDRESS, REG_CONFIG, word_bytes(config_word("AIN1", 2.048, 128)))
    assert chip.converting
    assert values(driver.read())["x"] == pytest.approx(0.5, abs=lsb_size(2.048))


def test_setup_brings_a_chip_out_of_continuous_mode() -> None:
    bus, chip, driver, _ = sim_setup(channel("x", "AIN0"))
    continuous = config_word("AIN0", 2.048, 128) & ~0x0100  # MODE 0 (8.1.3)
    bus.write_i2c_block_data(ADDRESS, REG_CONFIG, word_bytes(continuous))
    assert chip.converting
    driver.setup()
    chip.inputs[0] = 0.777
    assert values(driver.read())["x"] == pytest.approx(0.777, abs=lsb_size(2.048))


def test_setup_refuses_a_chip_that_does_not_keep_the_config() -> None:
    time = FakeTime()
    bus = SimBus()
    bus.attach(ADDRESS, SimINA219(clock=time.clock))  # an INA219 answers at 0x48 too
    with pytest.raises(SensorError, match="no ADS1115 at 0x48") as caught:
        make_driver(bus, time, channel("x", "AIN0")).setup()
    assert "check the address" in str(caught.value)


@pytest.mark.parametrize("code", [errno.EREMOTEIO, errno.EIO, errno.ETIMEDOUT])  # 121, 5, 110
def test_bus_errors_propagate_from_read_and_the_next_read_recovers(code: int) -> None:
    bus, chip, driver, _ = sim_setup(channel("x", "AIN0"))
    error = check_bus_error_propagates(bus, driver, code)
    assert not isinstance(error, SensorError)
    chip.inputs[0] = 1.1
    assert values(driver.read())["x"] == pytest.approx(1.1, abs=lsb_size(2.048))


def test_real_clock_default_sleep() -> None:
    chip = SimADS1115(seed=2, drift=False)
    bus = sim_bus(0x4B, chip)
    opts = ADS1115Options.model_validate({"channels": [channel("x", "AIN3")], "data_rate": 860})
    driver = ADS1115(DriverContext("adc", bus, 0x4B), opts)
    chip.inputs[3] = 0.25
    driver.setup()
    assert values(driver.read())["x"] == pytest.approx(0.25, abs=lsb_size(2.048))


# --- identify ----------------------------------------------------------------------------


def test_identify_own_simulator() -> None:
    bus, chip, driver, _ = sim_setup(channel("x", "AIN0"))
    assert ADS1115.identify(bus, ADDRESS) == "ADS1115 or ADS1015"  # conversion register 0
    chip.inputs[0] = 1.0 + 3 * lsb_size(2.048)  # a code with low bits set: no ADS1015
    driver.setup()
    driver.read()
    assert ADS1115.identify(bus, ADDRESS) == "ADS1115"


def test_identify_none_for_other_chips_at_its_addresses() -> None:
    bus = SimBus()
    bus.attach(0x48, SimINA219())
    bus.attach(0x49, SimBME280())
    assert ADS1115.identify(bus, 0x48) is None
    assert ADS1115.identify(bus, 0x49) is None
    assert ADS1115.identify(bus, 0x4A) is None  # nothing there
    bus.attach(0x40, SimADS1115())
    assert ADS1115.identify(bus, 0x40) is None  # not an ADS1115 address


def test_identify_none_when_the_comparator_is_in_use() -> None:
    bus, _, _, _ = sim_setup(channel("x", "AIN0"))
    bus.write_i2c_block_data(ADDRESS, REG_HI_THRESH, word_bytes(0x1234))
    assert ADS1115.identify(bus, ADDRESS) is None


# --- the simulated chip itself -----------------------------------------------------------


def test_sim_ignores_a_start_during_a_conversion() -> None:
    bus, chip, _, time = sim_setup(channel("x", "AIN0"))
    chip.inputs = [0.5, 1.5, 0.0, 0.0]
    bus.write_i2c_block_data(ADDRESS, REG_CONFIG, word_bytes(config_word("AIN0", 2.048, 8)))
    bus.write_i2c_block_data(ADDRESS, REG_CONFIG, word_bytes(config_word("AIN1", 2.048, 8)))
    time.sleep(0.2)
    assert not chip.converting  # the chip settles when it is next looked at
    assert chip.conversions == 1
    result = to_signed(parse_word(bus.read_i2c_block_data(ADDRESS, REG_CONVERSION, 2)))
    assert raw_to_volts(result, 2.048) == pytest.approx(0.5, abs=lsb_size(2.048))


def test_sim_uses_only_the_two_pointer_bits() -> None:
    bus, _, _, _ = sim_setup(channel("x", "AIN0"))
    # 8.1.1: P[1:0] select the register; 0x05 = 0b101 reads the config register (01).
    assert parse_word(bus.read_i2c_block_data(ADDRESS, 0x05, 2)) == CONFIG_RESET


# --- options and the command line ------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"channels": []}, "at least 1"),
        ({"channels": [channel("x", "AIN4")]}, "input"),
        ({"channels": [channel("x", "AIN0", gain=2)]}, "6.144, 4.096, 2.048, 1.024, 0.512, 0.256"),
        ({"channels": [channel("x", "AIN0"), channel("x", "AIN1")]}, "names must be unique"),
        ({"channels": [channel("a/b", "AIN0")]}, "name"),
        ({"channels": [channel("x", "AIN0", unit="volt s")]}, "unit"),
        ({"channels": [channel("x", "AIN0", scale=float("inf"))]}, "scale"),
        ({"channels": [channel("x", "AIN0", colour="red")]}, "colour"),
        ({"channels": [channel("x", "AIN0")], "data_rate": 100}, "data_rate"),
    ],
)
def test_bad_options_are_refused(options: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        ADS1115Options.model_validate(options)


def test_defaults_of_a_channel() -> None:
    opts = ADS1115Options.model_validate({"channels": [channel("x", "AIN0")]})
    [ch] = opts.channels
    assert (ch.gain, ch.scale, ch.offset, ch.unit, opts.data_rate) == (2.048, 1.0, 0.0, "V", 128)


def test_a_bad_gain_in_a_config_file_names_file_line_and_choices(tmp_path: Path) -> None:
    text = EXAMPLE.read_text().replace("          gain: 2.048\n", "          gain: 3.0\n")
    path = tmp_path / "gateway.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    [problem] = caught.value.problems
    line = text.splitlines().index("          gain: 3.0") + 1
    assert problem.startswith(f"{path}:{line}: sensors[0].options.channels[2].gain: must be one of")


def test_registered_under_its_name() -> None:
    # 7.5.1.1: ADDR to GND/VDD/SDA/SCL
    check_registered("ads1115", ADS1115, (0x48, 0x49, 0x4A, 0x4B))


def test_read_command_prints_every_channel_with_its_unit(
    capsys: pytest.CaptureFixture[str],
) -> None:
    lines = read_example(EXAMPLE, capsys)
    assert sensor_quantity_units(lines) == [
        ("cabinet", "supply", "V"),
        ("cabinet", "battery", "V"),
        ("cabinet", "pressure", "Pa"),
    ]
    by_name = {r["quantity"]: r["value"] for r in lines}
    assert 3.0 < by_name["supply"] < 3.6  # 1.65 V ± 0.05 through a 1:2 divider
    assert 11.0 < by_name["battery"] < 14.0
    assert 0.0 < by_name["pressure"] < 1_000_000.0
