"""DS18B20: the 1-Wire CRC against Maxim's worked example, the datasheet's temperature
table, real ``w1_slave`` captures (table-driven, good and bad), the driver against the
simulated sysfs tree, and ``wsn-gateway read`` on the example configuration."""

from __future__ import annotations

import errno
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError
from sim_tree_checks import (
    check_open_sensor_closes_tree,
    check_rewrites_while_running,
    check_seeded_and_closes,
    read_example,
)

from drivers.base import DriverContext, DriverOptions, load_driver, rejection
from drivers.ds18b20 import (
    DS18B20,
    SYSFS_DEVICES,
    DS18B20Options,
    celsius,
    crc8,
    parse_w1_slave,
    raw_temperature,
    resolution_bits,
    temperature_from_file,
    temperature_from_w1_slave,
)
from drivers.sim.ds18b20 import (
    POWER_ON_SCRATCHPAD,
    SIM_PROBE_IDS,
    SimW1Tree,
    encode_scratchpad,
    kernel_millidegrees,
    render_w1_slave,
)
from gateway.errors import SensorError
from gateway.readings import Measurement

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "config" / "examples" / "ds18b20.yaml"
A, B = SIM_PROBE_IDS


# --- CRC-8 ------------------------------------------------------------------------------


def test_crc8_matches_maxim_application_note_27() -> None:
    # AN27 "Understanding and Using Cyclic Redundancy Checks with Maxim 1-Wire and iButton
    # Products", the worked example: family 02, serial 00000001B81C, CRC A2 (sent LSB first).
    rom = bytes([0x02, 0x1C, 0xB8, 0x01, 0x00, 0x00, 0x00])
    assert crc8(rom) == 0xA2
    assert crc8(rom + b"\xa2") == 0  # a block followed by its CRC leaves 0 in the register


@pytest.mark.parametrize(
    ("scratchpad", "crc"),
    [
        ("50 05 4b 46 7f ff 0c 10", 0x1C),  # power-on, raspberrypi.stackexchange.com/q/65828
        ("3f 00 4b 46 7f ff 01 10", 0x47),  # raspberrypi.org/forums t=91982
        ("5e 01 ff ff 7f ff ff ff", 0x52),  # raspberrypi.stackexchange.com/q/48106 (a clone)
        ("66 01 4b 46 7f ff 0a 10", 0x2D),  # thepiandi.blogspot.com 2013-06 (good read)
        ("66 01 4b 46 7f ff 2a 10", 0xEC),  # the same post: the kernel's CRC of the bad read
        ("ff ff ff ff ff ff ff ff", 0xC9),  # an open data line: the known "crc=c9 NO"
    ],
)
def test_crc8_of_real_scratchpads(scratchpad: str, crc: int) -> None:
    assert crc8(bytes.fromhex(scratchpad)) == crc


@given(st.binary(min_size=0, max_size=16))
def test_crc8_of_data_and_its_crc_is_zero(data: bytes) -> None:
    assert crc8(data + bytes([crc8(data)])) == 0


# --- temperature register (datasheet Table 1, Table 2) ---------------------------------


@pytest.mark.parametrize(
    ("register", "expected"),
    [  # Table 1 "Temperature/Data Relationship", every row
        (0x07D0, 125.0),
        (0x0550, 85.0),
        (0x0191, 25.0625),
        (0x00A2, 10.125),
        (0x0008, 0.5),
        (0x0000, 0.0),
        (0xFFF8, -0.5),
        (0xFF5E, -10.125),
        (0xFE6F, -25.0625),
        (0xFC90, -55.0),
    ],
)
def test_datasheet_table_1(register: int, expected: float) -> None:
    raw = raw_temperature(register.to_bytes(2, "little"))
    assert celsius(raw) == expected


@pytest.mark.parametrize(
    ("config", "bits", "value"),
    # Table 2: R1:R0 in bits 6:5; bits 4:0 read 1. Bits below the resolution are
    # undefined and cleared: 0x00A7 is 10.4375 at 12 bits.
    [(0x1F, 9, 10.0), (0x3F, 10, 10.25), (0x5F, 11, 10.375), (0x7F, 12, 10.4375)],
)
def test_resolution_clears_undefined_bits(config: int, bits: int, value: float) -> None:
    assert resolution_bits(config) == bits
    assert celsius(0x00A7, bits) == value


# --- w1_slave captures -----------------------------------------------------------------


def capture(line1: str, line2: str) -> str:
    return f"{line1}\n{line2}\n"


GOOD = [
    pytest.param(
        capture("72 01 4b 46 7f ff 0e 10 57 : crc=57 YES", "72 01 4b 46 7f ff 0e 10 57 t=23125"),
        23.125,
        id="typical",
    ),
    pytest.param(
        # raspberrypi.org/forums/viewtopic.php?t=91982: the kernel's t= truncates to
        # millidegrees; the bytes give the exact 1/16 °C.
        capture("3f 00 4b 46 7f ff 01 10 47 : crc=47 YES", "3f 00 4b 46 7f ff 01 10 47 t=3937"),
        3.9375,
        id="forum-3.9375",
    ),
    pytest.param(
        # raspberrypi.stackexchange.com/q/48106: a clone with TH, TL and bytes 6, 7 at 0xff.
        capture("5e 01 ff ff 7f ff ff ff 52 : crc=52 YES", "5e 01 ff ff 7f ff ff ff 52 t=21875"),
        21.875,
        id="clone",
    ),
    pytest.param(
        # thepiandi.blogspot.com "Interpreting the Data" (2013-06), its first read.
        capture("66 01 4b 46 7f ff 0a 10 2d : crc=2d YES", "66 01 4b 46 7f ff 0a 10 2d t=22375"),
        22.375,
        id="blog-good",
    ),
    pytest.param(
        # Table 1's -10.125 °C (FF5Eh) as an authentic chip holds it: byte 6 = 0x10 - 0xE.
        capture("5e ff 4b 46 7f ff 02 10 b6 : crc=b6 YES", "5e ff 4b 46 7f ff 02 10 b6 t=-10125"),
        -10.125,
        id="negative",
    ),
    pytest.param(
        # A real 85.0 °C conversion: byte 6 is 0x10, not the power-on 0x0c.
        capture("50 05 4b 46 7f ff 10 10 bd : crc=bd YES", "50 05 4b 46 7f ff 10 10 bd t=85000"),
        85.0,
        id="real-85",
    ),
    pytest.param(
        # 9-bit resolution (configuration 0x1f): the undefined low bits are dropped.
        capture("a7 00 4b 46 1f ff 09 10 4d : crc=4d YES", "a7 00 4b 46 1f ff 09 10 4d t=10437"),
        10.0,
        id="9-bit",
    ),
]

BAD = [
    pytest.param(
        # thepiandi.blogspot.com, the second read: byte 6 arrived as 2a instead of 0a; an
        # older kernel prints the last good bytes on line 2 and t= from the bad ones.
        capture("66 01 4b 46 7f ff 2a 10 2d : crc=ec NO", "66 01 4b 46 7f ff 0a 10 2d t=22375"),
        "CRC check failed",
        id="crc-no",
    ),
    pytest.param(
        # raspberrypi.stackexchange.com/q/65828: "always returns t=85000".
        capture("50 05 4b 46 7f ff 0c 10 1c : crc=1c YES", "50 05 4b 46 7f ff 0c 10 1c t=85000"),
        "85 °C power-on value",
        id="power-on-85",
    ),
    pytest.param(
        # A data line shorted to ground: zeros pass the CRC and would read as 0 °C.
        capture("00 00 00 00 00 00 00 00 00 : crc=00 YES", "00 00 00 00 00 00 00 00 00 t=0"),
        "shorted",
        id="all-zeros",
    ),
    pytest.param(
        # An open data line, as older kernels print it.
        capture("ff ff ff ff ff ff ff ff ff : crc=c9 NO", "ff ff ff ff ff ff ff ff ff t=-62"),
        "CRC check failed",
        id="all-ones",
    ),
    pytest.param(
        # 0x07ff with byte 6 at 0x0c: the conversion ran out of power (w1_therm.c).
        capture("ff 07 4b 46 7f ff 0c 10 a6 : crc=a6 YES", "ff 07 4b 46 7f ff 0c 10 a6 t=127937"),
        "failed-conversion",
        id="failed-conversion",
    ),
    pytest.param(
        # Our own CRC-8 catches a YES whose bytes do not add up (a corrupted capture).
        capture("72 01 4b 46 7f ff 0e 10 58 : crc=58 YES", "72 01 4b 46 7f ff 0e 10 58 t=23125"),
        "CRC mismatch",
        id="yes-but-wrong",
    ),
    pytest.param("", "no data", id="empty"),  # current kernels on a failed read
    pytest.param("\n", "no data", id="blank"),
    pytest.param("72 01 4b 46 7f ff 0e 10 57 : crc=57 YES\n", "unreadable", id="one-line"),
    pytest.param("72 01 4b 46 7f ff 0e 10 57 : crc=57 YES\n72 01 4b", "unreadable", id="cut"),
    pytest.param("72 01 4b 46 7f", "unreadable", id="cut-early"),
    pytest.param("hello world\n", "unreadable", id="garbage"),
    pytest.param("\ufffd\ufffd\x00\n", "unreadable", id="binary"),
    pytest.param(
        capture("72 01 4b 46 7f ff 0e 10 57 : crc=57 YES", "72 01 4b 46 7f ff 0e 10 57 t=")
        + "extra\n",
        "unreadable",
        id="three-lines",
    ),
]


@pytest.mark.parametrize(("text", "expected"), GOOD)
def test_good_captures(text: str, expected: float) -> None:
    assert temperature_from_w1_slave(text) == expected


@pytest.mark.parametrize(("text", "reason"), BAD)
def test_bad_captures_are_sensor_errors(text: str, reason: str) -> None:
    with pytest.raises(SensorError, match=reason) as caught:
        temperature_from_w1_slave(text)
    assert isinstance(caught.value, OSError)  # the poller counts it as a failed read


def test_parse_keeps_both_lines_apart() -> None:
    text = capture("66 01 4b 46 7f ff 2a 10 2d : crc=ec NO", "66 01 4b 46 7f ff 0a 10 2d t=22375")
    parsed = parse_w1_slave(text)
    assert parsed.scratchpad == bytes.fromhex("66014b467fff2a102d")
    assert parsed.shown == bytes.fromhex("66014b467fff0a102d")
    assert (parsed.crc, parsed.crc_ok, parsed.millidegrees) == (0xEC, False, 22375)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("23125\n", 23.125), ("-10125\n", -10.125), ("0\n", 0.0), ("125000", 125.0)],
)
def test_temperature_file(text: str, expected: float) -> None:
    assert temperature_from_file(text) == expected


@pytest.mark.parametrize(
    ("text", "reason"),
    # Without the scratchpad a real 85 °C cannot be told from a reset: refused.
    [("85000\n", "power-on"), ("", "no data"), ("twenty\n", "unreadable"), ("1.5\n", "unreadable")],
)
def test_temperature_file_bad(text: str, reason: str) -> None:
    with pytest.raises(SensorError, match=reason):
        temperature_from_file(text)


# --- the simulator's files are the kernel's --------------------------------------------


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (23.125, GOOD[0].values[0]),
        (3.9375, GOOD[1].values[0]),
        (22.375, GOOD[3].values[0]),
        (-10.125, GOOD[4].values[0]),
        (85.0, GOOD[5].values[0]),
    ],
)
def test_simulated_scratchpads_match_captures_byte_for_byte(value: float, text: str) -> None:
    assert render_w1_slave(encode_scratchpad(value)) == text


def test_simulated_power_on_matches_the_capture() -> None:
    assert render_w1_slave(POWER_ON_SCRATCHPAD) == BAD[1].values[0]


@given(st.integers(-55 * 16, 125 * 16))
def test_round_trip_over_the_whole_range(sixteenths: int) -> None:
    value = sixteenths / 16
    text = render_w1_slave(encode_scratchpad(value))
    if sixteenths == 85 * 16:
        assert "10 10" in text  # a real 85 °C: byte 6 says a conversion ran
    assert temperature_from_w1_slave(text) == value
    # The kernel's decimal truncates towards zero, within a millidegree of the bytes.
    assert abs(kernel_millidegrees(encode_scratchpad(value)) / 1000 - value) < 0.001


# --- the driver against the simulated tree ---------------------------------------------


@pytest.fixture
def tree() -> Iterator[SimW1Tree]:
    sim = SimW1Tree(seed=3, drift=False, interval=None)
    yield sim
    sim.close()


def make_driver(root: Path | None, **options: object) -> DS18B20:
    context = DriverContext(sensor="probes", root=root)
    return DS18B20(context, DS18B20Options.model_validate(options))


def values(measurements: list[Measurement]) -> dict[str, object]:
    assert all(m.unit == "Cel" for m in measurements)
    return {m.quantity: m.value for m in measurements}


def test_all_reads_every_probe_by_id(tree: SimW1Tree) -> None:
    tree.set_temperature(A, 4.5)
    tree.set_temperature(B, -3.25)
    driver = make_driver(tree.root)
    driver.setup()
    assert values(driver.read()) == {f"{A}/temperature": 4.5, f"{B}/temperature": -3.25}


def test_one_device_is_plain_temperature(tree: SimW1Tree) -> None:
    tree.set_temperature(B, 60.0625)
    assert values(make_driver(tree.root, device=B).read()) == {"temperature": 60.0625}


def test_named_probes(tree: SimW1Tree) -> None:
    tree.set_temperature(A, 11.0)
    tree.set_temperature(B, 12.0)
    driver = make_driver(tree.root, probes=[{"id": B, "name": "deep"}, {"id": A, "name": "top"}])
    assert values(driver.read()) == {"deep/temperature": 12.0, "top/temperature": 11.0}


def test_probes_plugged_in_later_are_found(tree: SimW1Tree) -> None:
    driver = make_driver(tree.root)
    assert len(driver.read()) == 2
    tree.add("28-00000a1b2c3d", 20.0)
    assert values(driver.read())["28-00000a1b2c3d/temperature"] == 20.0
    tree.remove(A)
    assert sorted(values(driver.read())) == ["28-00000a1b2c3d/temperature", f"{B}/temperature"]


def test_all_with_no_probe_says_what_to_check(tree: SimW1Tree) -> None:
    tree.remove(A)
    tree.remove(B)
    with pytest.raises(SensorError, match=r"no DS18B20 \(28-\*\).*pull-up"):
        make_driver(tree.root).read()


@pytest.mark.parametrize(
    ("fault", "reason"),
    [
        ("crc", "CRC check failed"),
        ("empty", "no data"),
        ("power_on", "power-on"),
        ("zeros", "shorted"),
    ],
)
def test_faults_of_a_single_device_fail_the_read(tree: SimW1Tree, fault: str, reason: str) -> None:
    driver = make_driver(tree.root, device=A)
    tree.set_fault(A, fault)  # type: ignore[arg-type]
    with pytest.raises(SensorError, match=reason):
        driver.read()
    tree.set_fault(A, None)
    assert len(driver.read()) == 1
    assert driver.probe_errors == {A: 1}


def test_a_vanished_device_is_enodev(tree: SimW1Tree) -> None:
    driver = make_driver(tree.root, device=A)
    driver.read()
    tree.remove(A)
    with pytest.raises(SensorError, match=f"probe {A} is gone") as caught:
        driver.read()
    assert caught.value.errno == errno.ENODEV


def test_one_failing_probe_is_skipped_counted_and_logged_once(
    tree: SimW1Tree, caplog: pytest.LogCaptureFixture
) -> None:
    tree.set_temperature(B, 7.0)
    driver = make_driver(tree.root)
    tree.set_fault(A, "crc")
    with caplog.at_level(logging.INFO, logger="drivers.ds18b20"):
        for _ in range(3):
            assert values(driver.read()) == {f"{B}/temperature": 7.0}
        tree.set_fault(A, None)
        assert len(driver.read()) == 2
    assert driver.probe_errors == {A: 3}
    messages = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert messages == [
        ("WARNING", f"probe {A} failed; publishing the others"),
        ("INFO", f"probe {A} reads again"),
    ]
    assert caplog.records[0].probe == A  # type: ignore[attr-defined]
    assert "CRC" in caplog.records[0].error  # type: ignore[attr-defined]


def test_a_missing_named_probe_does_not_hide_the_others(tree: SimW1Tree) -> None:
    driver = make_driver(tree.root, probes=[{"id": A, "name": "a"}, {"id": B, "name": "b"}])
    tree.remove(B)
    assert list(values(driver.read())) == ["a/temperature"]
    assert driver.probe_errors == {B: 1}


def test_every_probe_failing_fails_the_read_and_names_them(tree: SimW1Tree) -> None:
    tree.set_fault(A, "empty")
    tree.set_fault(B, "power_on")
    with pytest.raises(SensorError, match="all 2 probes failed") as caught:
        make_driver(tree.root).read()
    assert f"{A}: the kernel returned no data" in str(caught.value)
    assert f"{B}: 85 °C power-on" in str(caught.value)


def test_temperature_file_is_the_fallback() -> None:
    sim = SimW1Tree(seed=1, drift=False, interval=None, w1_slave=False)
    try:
        sim.set_temperature(A, -0.0625)
        assert not (sim.root / A / "w1_slave").exists()
        got = values(make_driver(sim.root, device=A).read())
        assert got == {"temperature": -0.062}  # the kernel's millidegrees, truncated
    finally:
        sim.close()


def test_no_readable_file_at_all() -> None:
    sim = SimW1Tree(seed=1, drift=False, interval=None, w1_slave=False, temperature_file=False)
    try:
        with pytest.raises(SensorError, match="has no readable file"):
            make_driver(sim.root, device=A).read()
    finally:
        sim.close()


def test_setup_without_a_w1_bus_explains_how_to_enable_it(tmp_path: Path) -> None:
    with pytest.raises(SensorError, match="dtoverlay=w1-gpio") as caught:
        make_driver(tmp_path / "nope").setup()
    assert caught.value.errno == errno.ENOENT


def test_default_root_is_sysfs() -> None:
    assert make_driver(None).root == SYSFS_DEVICES == Path("/sys/bus/w1/devices")


def test_the_bus_master_folder_is_not_a_probe(tree: SimW1Tree) -> None:
    assert (tree.root / "w1_bus_master1").is_dir()
    assert len(make_driver(tree.root).read()) == 2


def test_wrong_options_type_is_refused() -> None:
    with pytest.raises(TypeError, match="DS18B20Options"):
        DS18B20(DriverContext(sensor="x"), DriverOptions())


# --- the simulated tree ----------------------------------------------------------------


def test_tree_files_look_like_the_kernels(tree: SimW1Tree) -> None:
    tree.set_temperature(A, 23.125)
    assert (tree.root / A / "w1_slave").read_text() == GOOD[0].values[0]
    assert (tree.root / A / "temperature").read_text() == "23125\n"
    assert tree.devices == sorted(SIM_PROBE_IDS)


def test_tree_rewrites_the_files_while_it_runs() -> None:
    check_rewrites_while_running(
        SimW1Tree(seed=5, interval=0.01), f"{A}/w1_slave", temperature_from_w1_slave
    )


def test_simulator_is_seeded_and_closes_its_tree() -> None:
    check_seeded_and_closes(DS18B20.simulator, lambda tree: tree.probe(A).temperature)


# --- options, registry, ranges ---------------------------------------------------------


def test_options_defaults_and_normalisation() -> None:
    assert DS18B20Options().device == "all"
    assert DS18B20Options().probes == ()
    assert DS18B20Options(device=" 28-0316A2794F0E ").device == "28-0316a2794f0e"
    assert DS18B20Options(device="ALL").device == "all"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"device": "29-0316a2794f0e"}, 'must be "all" or a DS18B20 id'),
        ({"device": "28-0316a2794f"}, 'must be "all" or a DS18B20 id'),
        ({"device": A, "probes": [{"id": B, "name": "x"}]}, "either device or probes"),
        ({"probes": [{"id": A, "name": "x"}, {"id": A, "name": "y"}]}, "id .* twice"),
        ({"probes": [{"id": A, "name": "x"}, {"id": B, "name": "x"}]}, "name 'x' appears twice"),
        ({"probes": [{"id": A, "name": "a b"}]}, "pattern"),
        ({"probes": [{"id": A}]}, "name"),
        ({"root": "/tmp"}, "Extra inputs"),
    ],
)
def test_bad_options(options: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        DS18B20Options.model_validate(options)


def test_registered_as_a_w1_driver() -> None:
    assert load_driver("ds18b20") is DS18B20
    assert DS18B20.bus_kind == "w1"


@pytest.mark.parametrize(
    ("value", "ok"), [(-55.0, True), (125.0, True), (-55.0625, False), (125.0625, False)]
)
def test_datasheet_range(value: float, ok: bool) -> None:
    assert (rejection(DS18B20, Measurement(f"{A}/temperature", "Cel", value)) is None) is ok
    assert (rejection(DS18B20, Measurement("temperature", "Cel", value)) is None) is ok


# --- through the gateway ---------------------------------------------------------------


def test_open_sensor_gives_a_simulated_tree_that_closes_with_the_buses() -> None:
    check_open_sensor_closes_tree(EXAMPLE, DS18B20, "28-0316a2794f0e/w1_slave")


def test_read_command_on_the_example(capsys: pytest.CaptureFixture[str]) -> None:
    lines = read_example(EXAMPLE, capsys)
    assert [(r["sensor"], r["quantity"], r["unit"]) for r in lines] == [
        ("tank", "temperature", "Cel"),
        ("soil", "shallow/temperature", "Cel"),
        ("soil", "deep/temperature", "Cel"),
    ]
    assert all(-55 <= r["value"] <= 125 for r in lines)
    assert all(r["value"] * 16 == int(r["value"] * 16) for r in lines)  # 1/16 °C steps
