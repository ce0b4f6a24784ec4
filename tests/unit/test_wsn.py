"""The shared WSN parts: the node table (missing/back exactly once, unknown nodes), value
mapping, option models, and the serial read loop every coordinator driver shares."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable

import pytest
from pydantic import ValidationError
from wsn_checks import FakeClock

from drivers.base import DriverContext, DriverOptions
from drivers.wsn import (
    MAX_UNKNOWN_NODES,
    READ_BUDGET,
    FieldMapping,
    LogOnce,
    NodeOptions,
    NodeTable,
    SerialPort,
    WsnDriver,
    WsnOptions,
    duplicates,
    generated_name,
    is_name,
    map_values,
    open_serial,
)
from gateway.errors import SensorError
from gateway.readings import Measurement


def node(name: str, missing_after: float = 300.0) -> NodeOptions:
    return NodeOptions(name=name, missing_after=missing_after)


def make_table(
    clock: FakeClock, unknown: str = "drop", nodes: list[tuple[str, NodeOptions]] | None = None
) -> NodeTable:
    configured = nodes or [("1", node("kitchen", 60)), ("2", node("attic"))]
    return NodeTable(configured, sensor="sink", unknown=unknown, clock=clock)  # type: ignore[arg-type]


def messages(caplog: pytest.LogCaptureFixture, start: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.getMessage().startswith(start)]


# --- the node table --------------------------------------------------------------------------


def test_missing_is_reported_once_and_back_once(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    table = make_table(clock)
    with caplog.at_level(logging.INFO, logger="drivers"):
        assert table.heard("1") == "kitchen"
        clock.now += 60
        assert table.check() == []  # exactly missing_after: not yet
        clock.now += 1
        assert table.check() == ["kitchen"]
        for _ in range(5):
            clock.now += 10
            assert table.check() == []
        assert table.missing == {"kitchen"}
        assert table.heard("1") == "kitchen"
        table.heard("1")
        assert table.check() == []
    kitchen = messages(caplog, "node kitchen")
    assert [r.levelno for r in kitchen] == [logging.WARNING, logging.INFO]
    assert kitchen[0].getMessage() == (
        "node kitchen (1) of sensor sink is missing: silent for 61 s (missing_after 60 s)"
    )
    assert (
        kitchen[1].getMessage() == "node kitchen (1) of sensor sink is back after 111 s of silence"
    )
    extras = vars(kitchen[0])
    assert (extras["sensor"], extras["node"], extras["silent_s"]) == ("sink", "kitchen", 61)
    assert table.missing == frozenset()


def test_it_can_go_missing_again_after_coming_back(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    table = make_table(clock)
    with caplog.at_level(logging.INFO, logger="drivers"):
        for _ in range(2):
            table.heard("1")
            clock.now += 100
            table.check()
            table.check()
        table.heard("1")
    levels = [r.levelno for r in messages(caplog, "node kitchen")]
    assert levels == [logging.WARNING, logging.INFO] * 2


def test_a_node_never_heard_goes_missing_counted_from_the_start(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock()
    table = make_table(clock)
    clock.now += 301
    with caplog.at_level(logging.WARNING, logger="drivers"):
        assert table.check() == ["kitchen", "attic"]
    assert "not heard since start for 301 s" in messages(caplog, "node attic")[0].getMessage()


def test_status_shows_each_node() -> None:
    clock = FakeClock()
    table = make_table(clock, unknown="publish")
    table.heard("2")
    table.heard("9")
    clock.now += 5
    status = {s.name: s for s in table.status()}
    assert set(status) == {"kitchen", "attic", "node-9"}
    assert (status["attic"].silent_for, status["attic"].messages) == (5.0, 1)
    assert status["kitchen"].silent_for == 5.0 and status["kitchen"].messages == 0
    assert not status["node-9"].configured and status["attic"].configured
    assert [s.key for s in table.nodes] == ["1", "2", "9"]


def test_unknown_nodes_dropped_and_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    table = make_table(FakeClock())
    with caplog.at_level(logging.WARNING, logger="drivers"):
        assert [table.heard("9") for _ in range(3)] == [None] * 3
        assert table.heard("8") is None
    assert (table.unknown_messages, table.dropped_messages) == (4, 4)
    assert table.unknown_keys == {"8", "9"}
    logged = [r.getMessage() for r in caplog.records]
    assert len(logged) == 2 and "unknown node '9' dropped" in logged[0]


def test_unknown_nodes_published_under_generated_names(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    table = make_table(clock, unknown="publish", nodes=[("1", node("node-9"))])
    with caplog.at_level(logging.WARNING, logger="drivers"):
        assert table.heard("9") == "node-9-unknown"  # never into a configured node's series
        assert table.heard("9") == "node-9-unknown"
        assert table.heard("a b/c") == "node-a_b_c"
    assert len(caplog.records) == 2
    clock.now += 10_000
    assert table.check() == ["node-9"]  # unknown nodes have no missing_after


def test_unknown_nodes_are_capped() -> None:
    table = make_table(FakeClock(), unknown="publish")
    names = [table.heard(f"x{i}") for i in range(MAX_UNKNOWN_NODES + 10)]
    assert all(names[:MAX_UNKNOWN_NODES])
    assert names[MAX_UNKNOWN_NODES:] == [None] * 10
    assert len(table.unknown_keys) == MAX_UNKNOWN_NODES
    assert table.heard("x0") == "node-x0"  # known ones keep being published


@pytest.mark.parametrize(
    ("prefix", "key", "name"),
    [("node-", "7", "node-7"), ("xbee-", "0013A200", "xbee-0013A200"), ("n", "é/ü", "n___")],
)
def test_generated_names_are_valid(prefix: str, key: str, name: str) -> None:
    assert generated_name(prefix, key) == name
    assert is_name(name)
    assert len(generated_name("node-", "x" * 100)) == 64


# --- values -----------------------------------------------------------------------------------

FIELDS = {
    "t": FieldMapping(quantity="temperature", unit="Cel"),
    "p": FieldMapping(quantity="pressure", unit="Pa", scale=100, offset=-3),
    "door": FieldMapping(quantity="door_open", unit="ignored-for-booleans"),
}


def test_map_values_scales_and_sorts_out() -> None:
    mapped = map_values({"t": 21.5, "p": 10.0, "door": True, "rssi": -70.0, "q": math.nan}, FIELDS)
    assert [(m.quantity, m.unit, m.value, m.time) for m in mapped.measurements("n1", 5.0)] == [
        ("n1/temperature", "Cel", 21.5, 5.0),
        ("n1/pressure", "Pa", 997.0, 5.0),
        ("n1/door_open", None, True, 5.0),
    ]
    assert mapped.unknown == ["rssi", "q"]
    assert mapped.invalid == []


def test_map_values_skips_values_that_are_no_reading() -> None:
    mapped = map_values({"t": math.nan, "p": 1e307}, FIELDS)  # 1e307 · 100 overflows
    assert mapped.values == [] and mapped.invalid == ["t", "p"]


@pytest.mark.parametrize("value", ["21.5", None, "nan"])
def test_map_values_refuses_a_mapped_value_that_is_no_number(value: object) -> None:
    with pytest.raises(ValueError, match="'t' is not a number"):
        map_values({"t": value}, FIELDS)  # type: ignore[dict-item]


def test_log_once_logs_each_key_once_up_to_a_cap(caplog: pytest.LogCaptureFixture) -> None:
    once = LogOnce(logging.getLogger("drivers.test"), cap=2)
    with caplog.at_level(logging.INFO, logger="drivers.test"):
        assert once("a", logging.INFO, "a", sensor="s")
        assert not once("a", logging.INFO, "a again")
        assert once("b", logging.WARNING, "b")
        assert not once("c", logging.WARNING, "c: over the cap")
    assert [r.getMessage() for r in caplog.records] == ["a", "b"]
    assert vars(caplog.records[0])["sensor"] == "s"


# --- option models ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["kitchen", "n1", "Node_7.a:b-c", "7", "x" * 64])
def test_node_names_follow_senml_characters(name: str) -> None:
    assert NodeOptions(name=name).name == name


@pytest.mark.parametrize("name", ["", "a/b", "a b", "-a", "_a", "é", "x" * 65])
def test_node_names_outside_senml_characters_are_refused(name: str) -> None:
    with pytest.raises(ValidationError):
        NodeOptions(name=name)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"quantity": "t", "scale": True}, "not true"),
        ({"quantity": "t", "offset": float("inf")}, "finite"),
        ({"quantity": "a/b"}, "pattern"),
        ({"quantity": "t", "factor": 2}, "Extra inputs"),
    ],
)
def test_field_mapping_refuses(data: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        FieldMapping.model_validate(data)


def test_node_missing_after_must_be_positive() -> None:
    with pytest.raises(ValidationError):
        NodeOptions(name="a", missing_after=0)
    with pytest.raises(ValidationError):
        NodeOptions.model_validate({"name": "a", "missing_after": True})


def test_duplicates_in_first_repeat_order() -> None:
    assert duplicates(["a", "b", "a", "c", "b", "a"]) == ["a", "b"]
    assert duplicates([]) == []


# --- the shared serial read loop -----------------------------------------------------------


class ScriptedPort:
    """A serial port that returns scripted chunks (or raises scripted errors) in order."""

    def __init__(self, script: list[bytes | OSError], *, endless: bytes = b"") -> None:
        self.script = list(script)
        self.endless = endless
        self.timeout: float | None = 0.02
        self.closed = False

    @property
    def in_waiting(self) -> int:
        head = self.script[0] if self.script else self.endless
        return len(head) if isinstance(head, bytes) else 0

    def read(self, size: int = 1) -> bytes:
        if not self.script:
            if self.endless:
                return self.endless
            time.sleep(0.002)  # the port's own short timeout, shortened
            return b""
        head = self.script.pop(0)
        if isinstance(head, OSError):
            raise head
        return head

    def close(self) -> None:
        self.closed = True


class Lines(WsnDriver[WsnOptions]):
    """The smallest coordinator: each line ``id:value`` is a message of node ``id``."""

    def _prepare(self) -> None:
        self.buffer = b""
        self.count = 0
        self.resets = 0

    def _node_keys(self) -> list[tuple[str, NodeOptions]]:
        return [("1", node("one", 10))]

    def _feed(self, data: bytes, at: float) -> list[Measurement]:
        self.buffer += data
        *lines, self.buffer = self.buffer.split(b"\n")
        out = []
        for line in lines:
            key, _, value = line.decode().partition(":")
            self.count += 1
            name = self.nodes.heard(key)
            if name is not None:
                out.append(Measurement(f"{name}/value", None, float(value), at))
        return out

    def _messages(self) -> int:
        return self.count

    def _reset(self) -> None:
        self.buffer = b""
        self.resets += 1

    @property
    def stats(self) -> dict[str, int]:
        return {"messages": self.count}


def lines_driver(
    ports: list[ScriptedPort], clock: Callable[[], float] | None = None, **options: object
) -> tuple[Lines, list[tuple[str, int]]]:
    opened: list[tuple[str, int]] = []

    def opener(url: str, baudrate: int) -> SerialPort:
        opened.append((url, baudrate))
        return ports.pop(0)

    driver = Lines(
        DriverContext("coord", port="/dev/ttyTEST", baudrate=None),
        WsnOptions.model_validate({"first_wait": 0, **options}),
        opener=opener,
        clock=clock or FakeClock(),
        wall=lambda: 42.0,
    )
    return driver, opened


def test_read_opens_lazily_with_the_default_baud_rate_and_drains_until_quiet() -> None:
    port = ScriptedPort([b"1:1\n1:", b"2\n"])
    driver, opened = lines_driver([port])
    got = driver.read()
    assert opened == [("/dev/ttyTEST", 9600)]
    assert [(m.quantity, m.value, m.time) for m in got] == [
        ("one/value", 1.0, 42.0),
        ("one/value", 2.0, 42.0),
    ]
    assert driver.read() == []


def test_a_talker_that_never_stops_is_cut_at_the_read_budget() -> None:
    driver, _ = lines_driver([ScriptedPort([], endless=b"1:5\n")])
    started = time.monotonic()
    got = driver.read()
    assert READ_BUDGET <= time.monotonic() - started < READ_BUDGET + 0.2
    assert len(got) > 10


def test_first_read_waits_for_a_first_message_only_once() -> None:
    port = ScriptedPort([b"", b"", b"1:7\n"])
    driver, _ = lines_driver([port], first_wait=1.0)
    assert [m.value for m in driver.read()] == [7.0]
    started = time.monotonic()
    assert driver.read() == []
    assert time.monotonic() - started < 0.1


def test_setup_is_idempotent_and_closes_the_old_port() -> None:
    first, second = ScriptedPort([]), ScriptedPort([])
    driver, opened = lines_driver([first, second])
    driver.setup()
    driver.setup()
    assert first.closed and not second.closed
    assert len(opened) == 2 and driver.resets == 2
    driver.close()
    assert second.closed


def test_a_read_error_after_data_keeps_the_data_and_reopens_next_time(
    caplog: pytest.LogCaptureFixture,
) -> None:
    broken = ScriptedPort([b"1:3\n", OSError(5, "Input/output error")])
    driver, opened = lines_driver([broken, ScriptedPort([b"1:4\n"])])
    with caplog.at_level(logging.WARNING, logger="drivers"):
        assert [m.value for m in driver.read()] == [3.0]
    assert broken.closed and "kept what was complete" in caplog.text
    assert [m.value for m in driver.read()] == [4.0]
    assert len(opened) == 2


def test_a_read_error_without_data_is_a_sensor_error() -> None:
    driver, _ = lines_driver([ScriptedPort([OSError(5, "Input/output error")])])
    with pytest.raises(SensorError, match=r"/dev/ttyTEST: .*opened again") as caught:
        driver.read()
    assert isinstance(caught.value, OSError)


def test_missing_check_runs_on_every_read(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    driver, _ = lines_driver([ScriptedPort([b"1:1\n"])], clock)
    driver.read()
    clock.now += 11
    with caplog.at_level(logging.WARNING, logger="drivers"):
        driver.read()
    assert driver.nodes.missing == {"one"}
    assert "node one (1) of sensor coord is missing" in caplog.text


def test_a_driver_without_a_port_says_so() -> None:
    driver = Lines(DriverContext("coord"), WsnOptions(), opener=lambda u, b: ScriptedPort([]))
    with pytest.raises(SensorError, match="needs a serial port"):
        driver.read()


def test_wrong_options_type_is_refused() -> None:
    with pytest.raises(TypeError, match="WsnOptions"):
        Lines(DriverContext("coord", port="x"), DriverOptions())


def test_opening_a_missing_device_says_what_to_check() -> None:
    with pytest.raises(SensorError, match="dialout group") as caught:
        open_serial("/dev/ttyDOES-NOT-EXIST", 9600)
    assert isinstance(caught.value, OSError)


def test_open_serial_takes_pyserial_urls() -> None:
    port = open_serial("loop://", 115200)
    try:
        assert port.in_waiting == 0
    finally:
        port.close()
