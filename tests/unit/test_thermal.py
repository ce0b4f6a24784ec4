"""thermal: the parsing of a zone's ``temp`` (table-driven, good and bad), choosing the
zone by number or by type, the messages that list the zones there are, read errors
(EAGAIN/ENODATA while a driver starts), the options, the simulated tree through the real
driver, and ``wsn-gateway read`` on the example configuration."""

from __future__ import annotations

import errno
import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import ValidationError
from sim_tree_checks import (
    check_open_sensor_closes_tree,
    check_rewrites_while_running,
    check_seeded_and_closes,
    read_example,
)

from drivers.base import DriverContext, DriverOptions, load_driver, rejection
from drivers.sim.thermal import SIM_ZONE_TYPES, SimThermalTree
from drivers.thermal import (
    SYSFS_THERMAL,
    THERMAL_TEMP_INVALID,
    Thermal,
    ThermalOptions,
    describe_zones,
    find_zone,
    list_zones,
    parse_temp,
)
from gateway.config import load_settings
from gateway.errors import SensorError
from gateway.readings import Measurement

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "config" / "examples" / "thermal.yaml"


# --- parsing ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "celsius"),
    [
        ("48312\n", 48.312),  # a Pi 4 at idle
        ("53692\n", 53.692),  # a Pi 3
        ("47236", 47.236),  # no newline
        ("  61000 \n", 61.0),
        ("0\n", 0.0),
        ("-5250\n", -5.25),  # a board outdoors in winter
        ("-40000\n", -40.0),  # the limits are inside
        ("150000\n", 150.0),
    ],
)
def test_parse_good(text: str, celsius: float) -> None:
    assert parse_temp(text) == celsius


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "temp is empty: .* check dmesg"),
        ("\n", "temp is empty"),
        ("48.312\n", r"unreadable temp content '48\.312\\n' \(expected whole millidegrees"),
        ("48312 mC\n", "unreadable temp content"),
        ("0x4b\n", "unreadable temp content"),
        ("4?.3\n", "unreadable temp content"),
        ("--1\n", "unreadable temp content"),
        ("1 2\n", "unreadable temp content"),
        ("\x00\x00\n", "unreadable temp content"),
        ("٤٨٣١٢\n", "unreadable temp content"),  # Arabic-Indic digits are not ASCII
        ("9" * 40 + "\n", "unreadable temp content '9{30}"),  # excerpt, not the whole
        (f"{THERMAL_TEMP_INVALID}\n", "THERMAL_TEMP_INVALID.* check dmesg"),
        ("-40001\n", r"reads -40\.001 °C, outside -40\.\.150 °C: a sensor fault"),
        ("150001\n", r"reads 150\.001 °C, outside -40\.\.150 °C"),
        ("200000\n", "check the zone's type file"),
        ("-273150\n", "outside"),
    ],
)
def test_parse_bad(text: str, message: str) -> None:
    with pytest.raises(SensorError, match=message):
        parse_temp(text)


def test_parse_names_where_the_text_came_from() -> None:
    with pytest.raises(SensorError, match=r"^thermal_zone2/temp is empty"):
        parse_temp("", "thermal_zone2/temp")


# --- a hand-made tree -------------------------------------------------------------------


def make_zone(root: Path, number: int, kind: str | None, temp: str = "45000\n") -> None:
    folder = root / f"thermal_zone{number}"
    folder.mkdir(parents=True)
    if kind is not None:
        (folder / "type").write_text(f"{kind}\n")
    (folder / "temp").write_text(temp)


@pytest.fixture
def board(tmp_path: Path) -> Path:
    """A board with two zones, as on a Rockchip or Allwinner SoC, and a cooling device."""
    root = tmp_path / "thermal"
    make_zone(root, 0, "soc-thermal", "41250\n")
    make_zone(root, 1, "gpu-thermal", "39375\n")
    (root / "cooling_device0").mkdir()
    (root / "cooling_device0" / "type").write_text("cpufreq-cpu0\n")
    return root


def make_driver(context_root: Path | None = None, **options: object) -> Thermal:
    """The driver as the daemon builds it: ``context_root`` is what ``bus: sim`` passes."""
    context = DriverContext(sensor="board", root=context_root)
    return Thermal(context, ThermalOptions.model_validate(options))


def test_list_zones_ignores_what_is_not_a_zone(board: Path) -> None:
    (board / "thermal_zoneX").mkdir()
    (board / "thermal_zone7").write_text("a file, not a folder")
    make_zone(board, 10, None)  # no type file
    assert list_zones(board) == {0: "soc-thermal", 1: "gpu-thermal", 10: None}
    assert describe_zones(list_zones(board)) == (
        "thermal_zone0 (soc-thermal), thermal_zone1 (gpu-thermal), thermal_zone10 (type unreadable)"
    )
    assert list_zones(board / "absent") == {}


def test_zone_by_number(board: Path) -> None:
    driver = make_driver(board, zone=1)
    driver.setup()
    assert driver.zone == 1
    assert driver.read() == [Measurement("temperature", "Cel", 39.375)]


def test_zone_zero_by_default(board: Path) -> None:
    driver = make_driver(board)
    assert driver.read() == [Measurement("temperature", "Cel", 41.25)]  # setup on demand
    assert driver.zone == 0


def test_zone_by_type(board: Path) -> None:
    assert find_zone(board, kind="gpu-thermal") == 1
    driver = make_driver(board, type="gpu-thermal")
    driver.setup()
    assert driver.zone == 1
    assert driver.read() == [Measurement("temperature", "Cel", 39.375)]


def test_missing_zone_lists_the_zones_there_are(board: Path) -> None:
    driver = make_driver(board, zone=3)
    with pytest.raises(SensorError) as caught:
        driver.setup()
    assert caught.value.errno == errno.ENODEV
    assert str(caught.value.strerror) == (
        f"no thermal_zone3 under {board}; the zones there are thermal_zone0 (soc-thermal),"
        " thermal_zone1 (gpu-thermal) — set options.zone or options.type to one of them"
    )


def test_missing_type_lists_the_zones_there_are(board: Path) -> None:
    with pytest.raises(SensorError, match="no thermal zone of type 'cpu-thermal' under") as caught:
        make_driver(board, type="cpu-thermal").setup()
    assert "thermal_zone0 (soc-thermal), thermal_zone1 (gpu-thermal)" in str(caught.value)


def test_type_shared_by_two_zones_is_refused(board: Path) -> None:
    make_zone(board, 2, "soc-thermal")
    with pytest.raises(SensorError, match=r"matches thermal_zone0 and thermal_zone2.*zone"):
        make_driver(board, type="soc-thermal").setup()


def test_no_zones_at_all_says_so(tmp_path: Path) -> None:
    # As in a container: /sys/class/thermal is there, and empty.
    (tmp_path / "thermal").mkdir()
    with pytest.raises(SensorError, match=r"no thermal zones under .*bus: sim") as caught:
        make_driver(tmp_path / "thermal").setup()
    assert caught.value.errno == errno.ENODEV


def test_missing_root_says_what_to_check(tmp_path: Path) -> None:
    with pytest.raises(SensorError, match=r"does not exist: .*CONFIG_THERMAL") as caught:
        make_driver(tmp_path / "nothing").setup()
    assert caught.value.errno == errno.ENOENT


def test_zone_that_vanishes_fails_the_read_and_is_looked_up_again(board: Path) -> None:
    driver = make_driver(board, zone=1)
    driver.setup()
    (board / "thermal_zone1" / "temp").unlink()
    (board / "thermal_zone1" / "type").unlink()
    (board / "thermal_zone1").rmdir()
    with pytest.raises(SensorError, match=r"no thermal_zone1 under .*thermal_zone0 \(soc"):
        driver.read()
    assert driver.zone is None
    make_zone(board, 1, "gpu-thermal", "40000\n")  # its driver loads again
    assert driver.read() == [Measurement("temperature", "Cel", 40.0)]


def test_bad_content_fails_the_read_with_the_zone_named(board: Path) -> None:
    (board / "thermal_zone0" / "temp").write_text("")
    with pytest.raises(SensorError, match=r"^thermal_zone0/temp is empty"):
        make_driver(board).read()


@pytest.mark.parametrize("code", [errno.EAGAIN, errno.ENODATA])
def test_not_ready_yet_is_a_retryable_sensor_error(
    board: Path, code: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    driver = make_driver(board)
    driver.setup()

    def not_ready(path: Path) -> str:
        raise OSError(code, "from the zone's driver", str(path))

    monkeypatch.setattr("drivers.thermal._read", not_ready)
    with pytest.raises(SensorError) as caught:
        driver.read()
    assert caught.value.errno == code
    assert "thermal_zone0 has no temperature yet" in str(caught.value)
    assert "retried" in str(caught.value)
    monkeypatch.undo()
    assert driver.read() == [Measurement("temperature", "Cel", 41.25)]


def test_other_read_errors_keep_their_errno(board: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    driver = make_driver(board)
    driver.setup()

    def broken(path: Path) -> str:
        raise OSError(errno.EIO, "Input/output error", str(path))

    monkeypatch.setattr("drivers.thermal._read", broken)
    with pytest.raises(SensorError, match=r"failed .*check dmesg") as caught:
        driver.read()
    assert caught.value.errno == errno.EIO


# --- options ----------------------------------------------------------------------------


def test_options_defaults() -> None:
    options = ThermalOptions()
    assert (options.zone, options.type, options.root) == (None, None, SYSFS_THERMAL)
    assert Path("/sys/class/thermal") == SYSFS_THERMAL
    assert ThermalOptions(type="  cpu-thermal ").type == "cpu-thermal"
    assert ThermalOptions(type="INT3400 Thermal").type == "INT3400 Thermal"


def test_root_option_is_used_unless_simulated(board: Path, tmp_path: Path) -> None:
    assert make_driver(None).root == SYSFS_THERMAL
    assert make_driver(None, root=str(board)).root == board
    assert make_driver(tmp_path / "sim", root=str(board)).root == tmp_path / "sim"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"zone": 0, "type": "cpu-thermal"}, "either zone or type, not both"),
        ({"zone": -1}, "greater than or equal to 0"),
        ({"zone": "first"}, "valid integer"),
        ({"zone": 1.5}, "integer"),
        ({"zone": True}, "must be a number"),
        ({"type": ""}, "at least 1 character"),
        ({"type": "   "}, "at least 1 character"),
        ({"type": "cpu/thermal"}, "pattern"),
        ({"type": "cpu\nthermal"}, "pattern"),
        ({"type": 5}, "must be the text of a zone's type file"),
        ({"type": True}, "must be the text of a zone's type file, such as cpu-thermal"),
        ({"root": "sys/class/thermal"}, "absolute path"),
        ({"device": "thermal_zone0"}, "Extra inputs"),
        ({"zones": [0]}, "Extra inputs"),
    ],
)
def test_bad_options(options: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        ThermalOptions.model_validate(options)


def test_wrong_options_type_is_refused() -> None:
    with pytest.raises(TypeError, match="ThermalOptions"):
        Thermal(DriverContext(sensor="x"), DriverOptions())


def test_registered_as_a_sysfs_driver() -> None:
    assert load_driver("thermal") is Thermal
    assert Thermal.bus_kind == "w1"


@pytest.mark.parametrize(
    ("value", "ok"), [(-40.0, True), (150.0, True), (-40.001, False), (150.001, False)]
)
def test_range(value: float, ok: bool) -> None:
    assert (rejection(Thermal, Measurement("temperature", "Cel", value)) is None) is ok


def test_config_errors_name_the_line(tmp_path: Path) -> None:
    from gateway.errors import ConfigError  # noqa: PLC0415

    path = tmp_path / "gw.yaml"
    path.write_text(
        "thing: gw\n"
        "mqtt: {endpoint: localhost, ca: ca, cert: c, key: k}\n"
        "sensors:\n"
        "  - name: board\n"
        "    driver: thermal\n"
        "    options:\n"
        "      zone: 1\n"
        "      type: cpu-thermal\n"
    )
    with pytest.raises(ConfigError, match="either zone or type") as caught:
        load_settings(path)
    assert str(path) in str(caught.value)


# --- the simulated tree -----------------------------------------------------------------


@pytest.fixture
def tree() -> Iterator[SimThermalTree]:
    sim = SimThermalTree(seed=3, interval=None)
    try:
        yield sim
    finally:
        sim.close()


def test_tree_looks_like_the_kernels(tree: SimThermalTree) -> None:
    tree.set_temperature(0, 48.312)
    zone = tree.root / "thermal_zone0"
    assert zone.is_symlink() and zone.resolve().parent.name == "thermal"
    assert (zone / "type").read_text() == "cpu-thermal\n"
    assert (zone / "temp").read_text() == "48312\n"
    assert (tree.root / "cooling_device0").is_dir()
    assert tree.zones == [0]
    assert list_zones(tree.root) == {0: "cpu-thermal"} == dict(enumerate(SIM_ZONE_TYPES))


def test_simulator_through_the_real_driver(tree: SimThermalTree) -> None:
    driver = make_driver(tree.root)
    driver.setup()
    [m] = driver.read()
    assert (m.quantity, m.unit) == ("temperature", "Cel")
    assert m.value == pytest.approx(tree.zone(0).temperature, abs=0.001)
    assert rejection(Thermal, m) is None
    tree.set_temperature(0, 71.5)
    assert driver.read()[0].value == 71.5


def test_simulator_drifts_slowly(tree: SimThermalTree) -> None:
    driver = make_driver(tree.root)
    values = []
    for _ in range(200):
        tree.refresh()
        values.append(driver.read()[0].value)
    assert len(set(values)) > 100
    steps = [abs(b - a) for a, b in itertools.pairwise(values)]
    assert max(steps) < 0.5  # slowly
    assert all(33.0 <= v <= 63.0 for v in values)


@pytest.mark.parametrize(
    ("fault", "message"),
    [
        ("empty", "empty"),
        ("garbage", "unreadable"),
        ("invalid", "THERMAL_TEMP_INVALID"),
        ("hot", "outside"),
    ],
)
def test_simulator_faults_through_the_driver(
    tree: SimThermalTree, fault: str, message: str
) -> None:
    driver = make_driver(tree.root)
    tree.set_fault(0, fault)  # type: ignore[arg-type]
    with pytest.raises(SensorError, match=message):
        driver.read()
    tree.set_fault(0, None)
    assert len(driver.read()) == 1


def test_simulator_zones_by_type_and_removal() -> None:
    sim = SimThermalTree(seed=1, types=("cpu-thermal", "gpu-thermal"), interval=None)
    try:
        driver = make_driver(sim.root, type="gpu-thermal")
        driver.setup()
        assert driver.zone == 1
        sim.remove(1)
        gone = r"no thermal_zone1 \(type 'gpu-thermal'\) .*are thermal_zone0 \(cpu-thermal\) —"
        with pytest.raises(SensorError, match=gone):
            driver.read()
        sim.add("gpu-thermal", 50.0, number=4)
        assert driver.read() == [Measurement("temperature", "Cel", 50.0)]
        assert driver.zone == 4
    finally:
        sim.close()


def test_tree_rewrites_the_files_while_it_runs() -> None:
    check_rewrites_while_running(
        SimThermalTree(seed=5, interval=0.01), "thermal_zone0/temp", parse_temp
    )


def test_simulator_is_seeded_and_closes_its_tree() -> None:
    check_seeded_and_closes(Thermal.simulator, lambda tree: tree.zone(0).temperature)


# --- through the gateway ----------------------------------------------------------------


def test_open_sensor_gives_a_simulated_tree_that_closes_with_the_buses() -> None:
    check_open_sensor_closes_tree(EXAMPLE, Thermal, "thermal_zone0/temp")


def test_read_command_on_the_example(capsys: pytest.CaptureFixture[str]) -> None:
    lines = read_example(EXAMPLE, capsys)
    assert [(r["sensor"], r["quantity"], r["unit"]) for r in lines] == [
        ("board", "temperature", "Cel"),
        ("soc", "temperature", "Cel"),
    ]
    assert all(33 <= r["value"] <= 63 for r in lines)


def test_the_example_gateway_config_starts_with_the_board() -> None:
    settings = load_settings(ROOT / "config" / "gateway.example.yaml")
    board = settings.sensors[0]
    assert (board.name, board.driver, board.interval, board.bus) == ("board", "thermal", 60, None)
    assert board.options == ThermalOptions()
