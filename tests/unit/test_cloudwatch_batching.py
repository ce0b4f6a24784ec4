"""PutLogEvents batching, rejected-event accounting, the spool and EMF, as pure functions;
and the counters of lost log events that status and the metrics read, against a fake
CloudWatch Logs client."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.cloudwatch import (
    DROP_REASONS,
    EVENT_OVERHEAD,
    MAX_BATCH_BYTES,
    MAX_BATCH_EVENTS,
    CloudWatchHandler,
    LogEvent,
    MetricsEmitter,
    Shipper,
    Spool,
    count_rejected,
    emf_event,
    plan_batches,
)
from gateway.metrics import Counters

HOUR_MS = 3600 * 1000


def test_more_than_10000_events_are_split() -> None:
    events = [LogEvent(1_000 + i, "x") for i in range(25_001)]
    batches = plan_batches(events)
    assert [len(b) for b in batches] == [10_000, 10_000, 5_001]
    assert [e for b in batches for e in b] == events


def test_a_megabyte_counts_message_bytes_plus_26() -> None:
    message = "é" * 5_000  # 10,000 UTF-8 bytes, 5,000 characters
    events = [LogEvent(i, message) for i in range(300)]
    batches = plan_batches(events)
    per_event = 10_000 + EVENT_OVERHEAD
    assert len(batches[0]) == MAX_BATCH_BYTES // per_event
    for batch in batches:
        assert sum(e.size for e in batch) <= MAX_BATCH_BYTES
        assert len(batch) <= MAX_BATCH_EVENTS
    assert sum(len(b) for b in batches) == 300


def test_exactly_at_the_byte_limit_fits_in_one() -> None:
    size = MAX_BATCH_BYTES // 4 - EVENT_OVERHEAD
    events = [LogEvent(i, "a" * size) for i in range(4)]
    assert len(plan_batches(events)) == 1
    events.append(LogEvent(5, "b"))
    assert [len(b) for b in plan_batches(events)] == [4, 1]


def test_batches_are_chronological_and_span_at_most_24_hours() -> None:
    events = [LogEvent(t * HOUR_MS, str(t)) for t in (30, 0, 5, 24, 25, 49)]
    batches = plan_batches(events)
    for batch in batches:
        stamps = [e.timestamp for e in batch]
        assert stamps == sorted(stamps)
        assert stamps[-1] - stamps[0] <= 24 * HOUR_MS
    assert [[int(e.message) for e in b] for b in batches] == [[0, 5, 24], [25, 30, 49]]


def test_same_millisecond_keeps_order() -> None:
    events = [LogEvent(7, str(i)) for i in range(5)]
    assert [e.message for e in plan_batches(events)[0]] == ["0", "1", "2", "3", "4"]


def test_empty() -> None:
    assert plan_batches([]) == []


def test_rejected_counts() -> None:
    assert count_rejected(None, 10) == {}
    assert count_rejected({"tooOldLogEventEndIndex": 3}, 10) == {"too_old": 3}
    assert count_rejected({"tooNewLogEventStartIndex": 8}, 10) == {"too_new": 2}
    assert count_rejected({"expiredLogEventEndIndex": 2, "tooOldLogEventEndIndex": 0}, 10) == {
        "expired": 2
    }


def test_handler_drops_oldest_and_counts() -> None:
    handler = CloudWatchHandler(capacity=3)
    logger = logging.getLogger("gateway.test_cw_handler")
    logger.propagate = False
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        for i in range(5):
            logger.info("line %d", i, extra={"n": i})
    finally:
        logger.removeHandler(handler)
    assert handler.dropped == 2
    taken = handler.take()
    assert [json.loads(e.message)["n"] for e in taken] == [2, 3, 4]
    assert handler.take() == []


def test_spool_is_bounded_and_drops_oldest(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool.jsonl", max_bytes=2_000)
    for i in range(100):
        spool.append([LogEvent(i, f"message {i:03d}")])
    assert spool.size() <= 2_000
    kept = spool.read()
    assert kept[-1] == LogEvent(99, "message 099")
    assert spool.dropped == 100 - len(kept)
    assert [e.timestamp for e in kept] == sorted(e.timestamp for e in kept)
    spool.replace([])
    assert spool.read() == [] and not spool.path.exists()


def test_spool_skips_a_torn_line(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool.jsonl", max_bytes=10_000)
    spool.append([LogEvent(1, "a"), LogEvent(2, "b")])
    with spool.path.open("a") as f:
        f.write('[3, "c')
    assert spool.read() == [LogEvent(1, "a"), LogEvent(2, "b")]


def test_emf_shape() -> None:
    event = emf_event(
        "WsnGateway",
        {"Thing": "gw-1", "Sensor": "bme"},
        {"SensorErrors": (2, "Count")},
        1_700_000_000_000,
    )
    directive = event["_aws"]["CloudWatchMetrics"][0]
    assert event["_aws"]["Timestamp"] == 1_700_000_000_000
    assert directive["Namespace"] == "WsnGateway"
    assert directive["Dimensions"] == [["Thing", "Sensor"]]
    assert directive["Metrics"] == [{"Name": "SensorErrors", "Unit": "Count"}]
    assert (event["Thing"], event["Sensor"], event["SensorErrors"]) == ("gw-1", "bme", 2)


# --- what was lost: the counters status and the metrics read ---------------------------


class FakeLogs:
    """A CloudWatch Logs client: ``put_log_events`` fails while ``down``, else keeps the
    events and answers ``rejected`` as ``rejectedLogEventsInfo``."""

    class exceptions:  # as boto3 names it
        class ResourceAlreadyExistsException(Exception):
            pass

        class ResourceNotFoundException(Exception):
            pass

        class ClientError(Exception):
            response: dict[str, Any] = {}  # noqa: RUF012

    def __init__(self) -> None:
        self.down = False
        self.rejected: dict[str, int] | None = None
        self.events: list[dict[str, Any]] = []

    def create_log_group(self, **_: Any) -> None:
        pass

    def create_log_stream(self, **_: Any) -> None:
        pass

    def put_log_events(self, **request: Any) -> dict[str, Any]:
        if self.down:
            raise ConnectionError("Could not connect to the endpoint URL")
        self.events.extend(request["logEvents"])
        return {"rejectedLogEventsInfo": self.rejected} if self.rejected else {}


@pytest.fixture
def fake() -> FakeLogs:
    return FakeLogs()


@pytest.fixture
def shipper(tmp_path: Path, fake: FakeLogs) -> Iterator[Shipper]:
    s = Shipper(
        CloudWatchHandler(capacity=50),
        client_factory=lambda: fake,
        log_group="/wsn-gateway",
        log_stream="gw",
        spool=Spool(tmp_path / "spool.jsonl", max_bytes=2_000),
        synced=lambda: True,
    )
    yield s
    s.close()


def _put(shipper: Shipper, n: int, start: int = 0) -> None:
    now = int(time.time() * 1000)
    for i in range(start, start + n):
        shipper.handler.put(LogEvent(now + i, f"line {i:04d}"))


def test_nothing_lost_at_start(shipper: Shipper) -> None:
    assert shipper.dropped() == dict.fromkeys(DROP_REASONS, 0)
    assert shipper.state() == "shipping" and shipper.last_upload is None
    assert shipper.spool.events is None  # not looked at yet: status shows it unknown


def test_a_full_queue_counts(shipper: Shipper) -> None:
    _put(shipper, 60)
    assert shipper.dropped()["queue_full"] == 10
    assert sum(shipper.dropped().values()) == 10


async def test_an_upload_counts_and_clears_the_error(shipper: Shipper, fake: FakeLogs) -> None:
    fake.down = True
    _put(shipper, 3)
    await shipper.flush()
    assert shipper.state() == "failing" and shipper.last_upload is None
    assert shipper.last_error == "Could not connect to the endpoint URL"
    assert shipper.last_error_time is not None
    assert (shipper.spool.events, shipper.spool.bytes) == (3, shipper.spool.path.stat().st_size)
    fake.down = False
    before = time.time()
    await shipper.flush()
    assert len(fake.events) == 3 and shipper.stats.delivered == 3
    assert shipper.last_upload is not None and shipper.last_upload >= before
    assert shipper.state() == "shipping" and shipper.last_error is None
    assert (shipper.spool.events, shipper.spool.bytes) == (0, 0)
    assert not shipper.spool.path.exists()
    assert sum(shipper.dropped().values()) == 0


async def test_the_spool_over_its_cap_counts(shipper: Shipper, fake: FakeLogs) -> None:
    fake.down = True
    for round_ in range(4):  # 4 x 40 lines of ~30 bytes: more than the 2,000-byte cap
        _put(shipper, 40, start=round_ * 40)
        await shipper.flush()
    spool = shipper.spool
    assert spool.bytes == spool.path.stat().st_size and spool.bytes <= 2_000
    assert spool.events == len(spool.read())
    assert shipper.dropped()["spool_over_cap"] == 160 - spool.events > 0
    fake.down = False
    await shipper.flush()
    assert len(fake.events) == 160 - shipper.dropped()["spool_over_cap"]
    assert fake.events[-1]["message"] == "line 0159"  # the oldest went, the newest stayed


async def test_rejected_events_count(shipper: Shipper, fake: FakeLogs) -> None:
    fake.rejected = {"tooOldLogEventEndIndex": 2, "tooNewLogEventStartIndex": 4}
    _put(shipper, 5)
    await shipper.ship()
    dropped = shipper.dropped()
    assert (dropped["rejected_too_old"], dropped["rejected_too_new"]) == (2, 1)
    assert dropped["rejected_expired"] == 0 and shipper.stats.delivered == 2
    assert shipper.last_upload is not None  # the call went through


async def test_an_unsynchronised_clock_shows(tmp_path: Path, fake: FakeLogs) -> None:
    synced = False
    shipper = Shipper(
        CloudWatchHandler(),
        client_factory=lambda: fake,
        log_group="/g",
        log_stream="s",
        spool=Spool(tmp_path / "spool.jsonl", max_bytes=10_000),
        synced=lambda: synced,
    )
    try:
        _put(shipper, 2)
        await shipper.ship()
        assert shipper.state() == "clock unsynchronised" and shipper.spool.events == 2
        synced = True
        await shipper.ship()
        assert shipper.state() == "shipping" and len(fake.events) == 2
    finally:
        shipper.close()


def test_the_spool_counts_what_an_earlier_run_left(tmp_path: Path) -> None:
    path = tmp_path / "spool.jsonl"
    Spool(path, max_bytes=10_000).append([LogEvent(1, "a"), LogEvent(2, "b")])
    with path.open("a") as f:
        f.write('[3, "c')  # torn by a power cut: not an event, but bytes on disk
    spool = Spool(path, max_bytes=10_000)
    assert spool.events is None
    spool.read()
    assert (spool.events, spool.bytes) == (2, path.stat().st_size)
    spool.append([LogEvent(4, "d")])
    assert (spool.events, spool.bytes) == (3, path.stat().st_size)
    spool.replace([LogEvent(4, "d")])
    assert (spool.events, spool.bytes) == (1, path.stat().st_size)


async def test_metrics_carry_the_drops_as_deltas(capsys: pytest.CaptureFixture[str]) -> None:
    drops = dict.fromkeys(DROP_REASONS, 0)
    sent: list[LogEvent] = []

    async def buffer_state() -> tuple[int, float | None]:
        return 0, None

    emitter = MetricsEmitter(
        thing="gw",
        namespace="WsnGateway",
        interval=60,
        counters=Counters(),
        pollers=list,
        latencies=list,
        buffer_state=buffer_state,
        sink=sent.append,
        log_drops=lambda: dict(drops),
    )
    events = await emitter.emit()
    assert len(events) == 1 and events[0]["LogEventsDropped"] == 0
    names = [m["Name"] for m in events[0]["_aws"]["CloudWatchMetrics"][0]["Metrics"]]
    assert "LogEventsDropped" in names
    drops.update(spool_over_cap=12, rejected_too_old=3)
    events = await emitter.emit()
    assert events[0]["LogEventsDropped"] == 15
    by_reason = {e["Reason"]: e["LogEventsDropped"] for e in events if "Reason" in e}
    assert by_reason == {"SpoolOverCap": 12, "TooOld": 3}
    reason_event = next(e for e in events if "Reason" in e)
    assert reason_event["_aws"]["CloudWatchMetrics"][0]["Dimensions"] == [["Thing", "Reason"]]
    drops.update(queue_full=1)
    events = await emitter.emit()  # only what was lost since the last event
    assert events[0]["LogEventsDropped"] == 1
    assert [e.get("Reason") for e in events] == [None, "QueueFull"]
    assert len(sent) == 6 and len(capsys.readouterr().out.splitlines()) == 6  # and stdout
