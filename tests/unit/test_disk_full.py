"""A full file system: the buffer drops oldest (counted) to make room, the daemon holds
what it cannot write in memory, and everything recovers when space returns.

SQLite's ``max_page_count`` makes the database report SQLITE_FULL exactly as a full
file system does, without needing a small mount."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import gateway.daemon as daemon_module
from gateway.buffer import Buffer, BufferFull
from gateway.config import load_settings
from gateway.daemon import Daemon
from gateway.envelope import Sealer
from gateway.gpio import LedState
from gateway.readings import Reading
from gateway.signing import load_or_create_ed25519

T0 = 1_795_000_000.0


def _readings(start: int, n: int) -> list[Reading]:
    return [Reading("c", "count", "count", float(i), T0 + i) for i in range(start, start + n)]


def _limit_pages(buffer: Buffer, extra: int) -> None:
    (pages,) = buffer._db.execute("PRAGMA page_count").fetchone()
    buffer._db.execute(f"PRAGMA max_page_count = {pages + extra}")


def test_full_disk_drops_oldest_counted_then_recovers(tmp_path: Path) -> None:
    buffer = Buffer(tmp_path / "b.sqlite3", max_bytes=1 << 30)
    buffer.add(_readings(0, 5_000))
    _limit_pages(buffer, 4)
    dropped = 0
    start = 5_000
    for _ in range(40):  # far more than the few free pages hold
        dropped += buffer.add(_readings(start, 500))
        start += 500
    assert dropped > 0
    kept = [b.reading.value for b in buffer.oldest(1_000_000)]
    # Everything taken is either kept or counted, and the losses are the oldest.
    assert len(kept) + dropped == start
    assert kept == [float(v) for v in range(start - len(kept), start)]
    assert buffer.dropped_pending == dropped
    buffer._db.execute("PRAGMA max_page_count = 1073741823")  # space returns
    assert buffer.add(_readings(start, 10)) == 0


def test_buffer_full_when_no_room_can_be_made(tmp_path: Path) -> None:
    buffer = Buffer(tmp_path / "b.sqlite3", max_bytes=1 << 30)
    _limit_pages(buffer, 0)
    with pytest.raises(BufferFull, match="free some space"):
        buffer.add(_readings(0, 5_000))
    assert buffer.count == 0


async def test_daemon_holds_readings_in_memory_and_reports_losses(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "gw.yaml"
    config.write_text(
        "thing: gw\n"
        f"state_dir: {tmp_path}\n"
        "mqtt: {endpoint: localhost, ca: ca.pem, cert: c.pem, key: k.pem}\n"
        "sensors: [{name: c, driver: counter}]\n"
    )
    daemon = Daemon(load_settings(config))
    daemon.buffer = buffer = Buffer(tmp_path / "b.sqlite3", max_bytes=1 << 30)
    daemon._sealer = Sealer(
        thing="gw",
        signer=load_or_create_ed25519(tmp_path / "k.pem"),
        max_bytes=128_000,
        max_records=100_000,
    )
    _limit_pages(buffer, 0)
    daemon._take(_readings(0, 1_000))
    await daemon._commit()
    assert daemon.disk_full and len(daemon._pending) == 1_000
    assert daemon.led_state() is LedState.ERROR
    # More than MAX_HELD readings while the disk stays full: the oldest are counted.
    monkeypatch.setattr(daemon_module, "MAX_HELD", 1_500)
    daemon._take(_readings(1_000, 1_000))
    await daemon._commit()
    assert len(daemon._pending) == 1_500 and daemon._lost_in_memory == 500
    buffer._db.execute("PRAGMA max_page_count = 1073741823")  # space returns
    await daemon._commit()
    assert not daemon.disk_full and daemon._pending == []
    sealed = daemon._seal_one(force=True)
    assert sealed is not None
    batch = json.loads(sealed.payload)
    assert batch["dropped"] == 500
    assert batch["records"][0]["v"] == 500  # the oldest 500 went
