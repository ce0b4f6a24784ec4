"""PutLogEvents batching, rejected-event accounting, the spool and EMF, as pure functions."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from gateway.cloudwatch import (
    EVENT_OVERHEAD,
    MAX_BATCH_BYTES,
    MAX_BATCH_EVENTS,
    CloudWatchHandler,
    LogEvent,
    Spool,
    count_rejected,
    emf_event,
    plan_batches,
)

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
