"""Fault: the storage under the buffer -- a damaged buffer file, a full disk.

A damaged file at start (garbage throughout, cut off in the middle of a page, or one
page of the readings overwritten): the daemon must move it aside (keeping its bytes
for forensics), say so in one clear log line that names both paths, begin a new
stream at seq 1, and run: everything of the new run arrives.

A full disk (the state directory on a small tmpfs, filled up with a filler file while
the broker is down): the daemon keeps running and says so, whatever it cannot keep
is counted in ``dropped`` (oldest first), and it recovers once the filler is deleted
and the broker returns; the audit of ``test_buffer_cap`` applies to the whole stream.
(When even deleting rows needs room the disk does not have, the daemon holds the
readings in memory, up to MAX_HELD, instead of dropping: then nothing is dropped.)
"""

from __future__ import annotations

import json
import os
import random
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from daemon_harness import GatewayProcess, wait_until

from gateway import verify

from .fault_harness import (
    RUN,
    FaultRig,
    arrival,
    audit_drops,
    checked_batch,
    recover_and_audit,
    sensors,
)

if TYPE_CHECKING:
    from conftest import Collector

pytestmark = [pytest.mark.integration, pytest.mark.faults]

FEED = sensors(4, 0.05)
#: The second run has one sensor more: a new series row, as after a configuration change.
FEED2 = {**FEED, "late": 0.05}
MIB = 1 << 20


def damage(path: Path, how: str) -> bytes:
    """Damage the (checkpointed, closed) buffer file; returns its new bytes."""
    data = path.read_bytes()
    rng = random.Random(how)
    if how == "garbage":
        damaged = rng.randbytes(len(data))
    elif how == "truncated":
        page = int.from_bytes(data[16:18], "big")
        damaged = data[: (len(data) // page // 2) * page + page // 2]  # mid-page
    else:  # one page overwritten with garbage: the readings table's, or an index's
        name = {
            "torn-page": "readings",
            "torn-series-index": "sqlite_autoindex_series_1",
        }[how]
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            (root,) = db.execute(
                "SELECT rootpage FROM sqlite_master WHERE name = ?", (name,)
            ).fetchone()
            (page,) = db.execute("PRAGMA page_size").fetchone()
        finally:
            db.close()
        offset = (root - 1) * page
        damaged = data[:offset] + rng.randbytes(page) + data[offset + page :]
    for suffix in ("-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    path.write_bytes(damaged)
    return damaged


def moved_aside_line(gateway: GatewayProcess, path: Path) -> dict[str, object] | None:
    """The log line that says the buffer file was moved aside, naming it and its new name."""
    for entry in gateway.logs():
        text = json.dumps(entry)
        if entry["level"] in ("warning", "error") and str(path) in text:
            others = [p for p in path.parent.iterdir() if p.name.startswith(path.name + ".")]
            if any(str(p) in text for p in others):
                return entry
    return None


@pytest.mark.parametrize(
    "how",
    [
        "garbage",
        "truncated",
        "torn-page",
        "torn-series-index",
    ],
)
def test_a_damaged_buffer_file_is_moved_aside_and_a_new_stream_begins(
    make_rig: Callable[..., FaultRig], collector: Callable[..., Collector], how: str
) -> None:
    rig = make_rig()
    telemetry = collector(rig.broker)
    # A first run leaves a real buffer: batches sent, then readings kept during an outage.
    first = rig.launch(rig.config("first.yaml", sensors=FEED, start=RUN))
    old_stream = first.wait_log("started", timeout=30)["stream"]
    first.wait_log("connected", timeout=30)
    telemetry.wait_for(lambda messages: len(messages) >= 2, timeout=30)
    rig.broker.stop()
    wait_until(lambda: len(rig.snapshot().readings) >= 80, timeout=30, what="readings kept")
    assert first.terminate() == 0, first.describe()
    rig.broker.start()
    damaged = damage(rig.buffer_path, how)

    second = rig.launch(rig.config("second.yaml", sensors=FEED2, start=2 * RUN))
    started = second.wait_log("started", timeout=30)
    line = moved_aside_line(second, rig.buffer_path)
    assert line is not None, (
        f"no log line names the damaged file and where it went{second.describe()}"
    )
    assert started["stream"] != old_stream
    aside = [p for p in rig.state_dir.iterdir() if p.name.startswith("buffer.sqlite3.")]
    kept = [p for p in aside if p.read_bytes() == damaged]
    assert kept, f"the damaged bytes were not kept: {aside}"
    second.wait_log("connected", timeout=30)
    telemetry.wait_for(lambda messages: len(messages) >= 4, timeout=30)
    assert second.terminate() == 0, second.describe()
    taken = second.counters()["readings_taken"]
    wait_until(
        lambda: arrival(telemetry.payloads(), rig.keys()).count(at_least=2 * RUN) >= taken,
        timeout=20,
        what="every reading of the new run arrives",
    )

    report = verify.verify_stream(telemetry.payloads(), rig.keys())
    assert report.ok, verify.format_report(report)
    new = [s for s in report.streams if s.stream == started["stream"]]
    assert len(new) == 1 and new[0].first_seq == 1, verify.format_report(report)
    assert {s.stream for s in report.streams} == {old_stream, started["stream"]}
    new_payloads = [
        p for p in telemetry.payloads() if checked_batch(p, rig.keys()).stream == new[0].stream
    ]
    got = arrival(new_payloads, rig.keys())
    assert len(got.readings) == taken == got.count(at_least=2 * RUN)
    assert not audit_drops(got, FEED2).missing
    assert {sensor for sensor, _ in got.readings} == set(FEED2)
    rig.assert_healthy(second)


# --------------------------------------------------------------------------- disk full


DISK_FEED = sensors(100, 0.05)  # 2,000 readings a second
TMPFS = "8m"
ROOM = MIB // 2  # what the filler leaves free


def free_bytes(path: Path) -> int:
    stats = os.statvfs(path)
    return stats.f_bavail * stats.f_frsize


def test_a_full_disk_drops_the_oldest_counted_and_the_daemon_recovers(
    make_rig: Callable[..., FaultRig], collector: Callable[..., Collector]
) -> None:
    rig = make_rig()
    rig.mount_tmpfs(rig.state_dir, TMPFS)
    telemetry = collector(rig.broker)
    gateway = rig.launch(
        rig.config(
            sensors=DISK_FEED,
            start=RUN,
            # The cap is far above the disk: only the file system can stop the buffer.
            buffer={"max_bytes": 64 * MIB, "commit_interval": 0.2},
            batch={"max_age": 0.5},
        )
    )
    gateway.wait_log("connected", timeout=30)
    telemetry.wait_for(lambda messages: len(messages) >= 2, timeout=30)

    rig.broker.stop()
    gateway.wait_log("connection lost", timeout=30)
    filler = rig.state_dir / "filler"
    with filler.open("wb") as out:
        out.write(b"\0" * max(0, free_bytes(rig.state_dir) - ROOM))
    full_at = time.monotonic()

    def announced() -> list[dict[str, object]]:
        return gateway.find(lambda e: e["level"] in ("warning", "error") and "full" in e["msg"])

    wait_until(
        lambda: announced() and time.monotonic() - full_at > 4,
        timeout=60,
        what="the daemon reports the full disk",
    )
    assert gateway.running, gateway.describe()
    time.sleep(2)  # it keeps running with the disk full
    assert gateway.running, gateway.describe()

    # Space returns: the buffer takes writes again (the broker is still down).
    held = len(rig.snapshot().readings)
    filler.unlink()
    wait_until(
        lambda: len(rig.snapshot().readings) > held + 4_000,
        timeout=30,
        what="the buffer takes writes again",
        interval=0.5,
    )
    # Then the broker: the backlog drains and new readings flow.
    recover_and_audit(rig, gateway, telemetry, DISK_FEED)
    rig.assert_healthy(gateway)
