"""JSON log lines: one object per line with time, level, logger, msg and the extras;
``setup_logging`` routes the gateway's loggers at the chosen level."""

from __future__ import annotations

import datetime as dt
import io
import json
import logging
import re
import sys
from collections.abc import Iterator
from types import TracebackType

import pytest

from gateway.logs import JsonFormatter, setup_logging

ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None] | tuple[None, None, None]
TIME_RE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def record(
    msg: str = "hello %s",
    args: tuple[object, ...] = ("world",),
    level: int = logging.INFO,
    exc_info: ExcInfo | None = None,
    extra: dict[str, object] | None = None,
) -> logging.LogRecord:
    logger = logging.getLogger("gateway.test")
    return logger.makeRecord(
        "gateway.test",
        level,
        __file__,
        1,
        msg,
        args,
        exc_info,
        extra=extra,
    )


def test_one_json_object_with_the_core_fields() -> None:
    rec = record()
    line = JsonFormatter().format(rec)
    entry = json.loads(line)
    assert list(entry)[:4] == ["time", "level", "logger", "msg"]
    assert entry["level"] == "info"
    assert entry["logger"] == "gateway.test"
    assert entry["msg"] == "hello world"
    assert TIME_RE.match(entry["time"])
    stamp = dt.datetime.strptime(entry["time"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=dt.UTC)
    assert abs(stamp.timestamp() - rec.created) < 0.001


def test_extras_are_included_and_anything_becomes_json() -> None:
    extra = {
        "sensor": "barn", "count": 3, "ratio": 0.5, "ok": True,
        "tags": ["a"], "nothing": None, "obj": object(),
    }  # fmt: skip
    rec = record(extra=extra)
    entry = json.loads(JsonFormatter().format(rec))
    assert entry["sensor"] == "barn"
    assert entry["count"] == 3
    assert entry["ratio"] == 0.5
    assert entry["ok"] is True
    assert entry["tags"] == ["a"]
    assert entry["nothing"] is None
    assert entry["obj"].startswith("<object object")
    assert not {"args", "levelno", "pathname", "lineno", "process", "thread"} & set(entry)


def test_multi_line_text_stays_on_one_line() -> None:
    line = JsonFormatter().format(record("line one\nline two ° µ", (), extra={"detail": "a\nb"}))
    assert "\n" not in line
    entry = json.loads(line)
    assert entry["msg"] == "line one\nline two ° µ"
    assert entry["detail"] == "a\nb"


def test_exception_is_included() -> None:
    try:
        1 / 0  # noqa: B018
    except ZeroDivisionError:
        rec = record("failed", (), logging.ERROR, exc_info=sys.exc_info())
    line = JsonFormatter().format(rec)
    assert "\n" not in line
    entry = json.loads(line)
    assert entry["level"] == "error"
    assert entry["exception"].startswith("Traceback (most recent call last)")
    assert "ZeroDivisionError: division by zero" in entry["exception"]


def test_extras_never_overwrite_the_core_fields() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        extra = {"time": 1, "level": "debug", "logger": "other", "exception": "mine"}
        rec = record("x", (), logging.WARNING, sys.exc_info(), extra)
    entry = json.loads(JsonFormatter().format(rec))
    assert TIME_RE.match(entry["time"])
    assert entry["level"] == "warning"
    assert entry["logger"] == "gateway.test"
    assert "ValueError: boom" in entry["exception"]
    # The extras are kept, under names that do not collide.
    assert entry["extra_time"] == 1
    assert entry["extra_level"] == "debug"
    assert entry["extra_logger"] == "other"
    assert entry["extra_exception"] == "mine"


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    saved_handlers = list(root.handlers)
    saved_levels = {
        name: logging.getLogger(name).level for name in ("", "gateway", "drivers", "aiomqtt")
    }
    yield
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in saved_handlers:
        root.addHandler(handler)
    for name, level in saved_levels.items():
        logging.getLogger(name).setLevel(level)


def lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


@pytest.mark.usefixtures("restore_logging")
def test_setup_logging_routes_the_gateway_at_the_chosen_level() -> None:
    stream = io.StringIO()
    setup_logging("debug", stream=stream)

    logging.getLogger("gateway.polling").debug("poll", extra={"sensor": "barn"})
    logging.getLogger("drivers.bme280").info("chip found")
    logging.getLogger("aiomqtt").info("library chatter")  # others: warnings only
    logging.getLogger("aiomqtt").warning("library warning")

    got = lines(stream)
    assert [(e["logger"], e["level"], e["msg"]) for e in got] == [
        ("gateway.polling", "debug", "poll"),
        ("drivers.bme280", "info", "chip found"),
        ("aiomqtt", "warning", "library warning"),
    ]
    assert got[0]["sensor"] == "barn"


@pytest.mark.usefixtures("restore_logging")
def test_setup_logging_at_warning_hides_info() -> None:
    stream = io.StringIO()
    setup_logging("WARNING", stream=stream)
    log = logging.getLogger("gateway.daemon")
    log.info("started")
    log.warning("connection lost")
    assert [e["msg"] for e in lines(stream)] == ["connection lost"]


@pytest.mark.usefixtures("restore_logging")
def test_setup_logging_twice_keeps_one_handler() -> None:
    first, second = io.StringIO(), io.StringIO()
    setup_logging("info", stream=first)
    setup_logging("info", stream=second)
    logging.getLogger("gateway").info("once")
    assert first.getvalue() == ""
    assert [e["msg"] for e in lines(second)] == ["once"]


@pytest.mark.usefixtures("restore_logging")
def test_setup_logging_defaults_to_stdout(capsys: pytest.CaptureFixture[str]) -> None:
    setup_logging("info")
    logging.getLogger("gateway").info("to stdout")
    out = capsys.readouterr().out
    assert json.loads(out.splitlines()[-1])["msg"] == "to stdout"
