"""The durable buffer: group commits, sealing transactions, the outbox, the cap."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from gateway.buffer import ROW_BYTES, Buffer
from gateway.envelope import Sealer
from gateway.readings import Reading
from gateway.signing import ed25519_signer

T0 = 1_795_000_000.0


def _readings(n: int, start: int = 0) -> list[Reading]:
    return [Reading("c", "count", "count", float(start + i), T0 + start + i) for i in range(n)]


def _sealer(max_bytes: int = 128_000) -> Sealer:
    signer = ed25519_signer(ed25519.Ed25519PrivateKey.generate())
    return Sealer(thing="gw", signer=signer, max_bytes=max_bytes, max_records=1000)


def _seal(buffer: Buffer, sealer: Sealer, limit: int = 1000) -> int:
    rows = buffer.oldest(limit)
    dropped = buffer.dropped_pending
    sealed = sealer.seal(buffer.chain(), [r.reading for r in rows], now=T0, dropped=dropped)
    buffer.commit_batch(sealed, [r.id for r in rows[: sealed.count]], dropped)
    return sealed.seq


def test_wal_mode_and_values_round_trip(tmp_path: Path) -> None:
    buf = Buffer(tmp_path / "b.sqlite3", max_bytes=1 << 20)
    readings = [
        Reading("s", "t", "Cel", 21.5, T0),
        Reading("s", "label", None, "open", T0 + 1, synced=False),
        Reading("s", "door", None, True, T0 + 2),
    ]
    buf.add(readings)
    assert [b.reading for b in buf.oldest(10)] == readings
    mode = sqlite3.connect(tmp_path / "b.sqlite3").execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"
    buf.close()


def test_state_survives_reopen(tmp_path: Path) -> None:
    path = tmp_path / "b.sqlite3"
    buf = Buffer(path, max_bytes=1 << 20)
    sealer = _sealer()
    buf.add(_readings(10))
    _seal(buf, sealer)
    chain = buf.chain()
    buf.add(_readings(5, start=10))
    buf.close()
    again = Buffer(path, max_bytes=1 << 20)
    assert again.chain() == chain
    assert again.count == 5
    assert [e.seq for e in again.outbox()] == [1]


def test_sealing_moves_readings_into_the_outbox_atomically(tmp_path: Path) -> None:
    buf = Buffer(tmp_path / "b.sqlite3", max_bytes=1 << 20)
    buf.add(_readings(30))
    sealer = _sealer(max_bytes=700)
    seq = _seal(buf, sealer)
    (entry,) = buf.outbox()
    assert entry.seq == seq == 1
    assert buf.count == 30 - entry.count
    assert buf.chain().seq == 1
    assert buf.ack([1]) == entry.count
    assert buf.outbox() == []


def test_commit_batch_refuses_wrong_seq_and_keeps_everything(tmp_path: Path) -> None:
    buf = Buffer(tmp_path / "b.sqlite3", max_bytes=1 << 20)
    buf.add(_readings(3))
    rows = buf.oldest(3)
    sealer = _sealer()
    chain = buf.chain()
    sealed = sealer.seal(chain, [r.reading for r in rows], now=T0)
    buf.commit_batch(sealed, [r.id for r in rows], 0)
    with pytest.raises(ValueError, match="does not follow"):
        buf.commit_batch(sealed, [r.id for r in rows], 0)
    assert buf.outbox_count() == 1


def test_cap_drops_oldest_and_counts_exactly(tmp_path: Path) -> None:
    cap = 100 * ROW_BYTES
    buf = Buffer(tmp_path / "b.sqlite3", max_bytes=cap)
    dropped = 0
    for start in range(0, 300, 10):
        dropped += buf.add(_readings(10, start=start))
    kept = [b.reading.value for b in buf.oldest(1000)]
    assert len(kept) + dropped == 300
    assert kept == [float(v) for v in range(300 - len(kept), 300)]  # oldest went first
    assert buf.size <= cap
    assert buf.dropped_pending == dropped
    assert buf.stats().dropped_total == dropped


def test_dropped_count_goes_into_the_next_batch_once(tmp_path: Path) -> None:
    buf = Buffer(tmp_path / "b.sqlite3", max_bytes=20 * ROW_BYTES)
    dropped = sum(buf.add(_readings(5, start=i)) for i in range(0, 40, 5))
    assert dropped > 0
    sealer = _sealer(max_bytes=900)
    _seal(buf, sealer)
    first = json.loads(buf.outbox()[0].payload)
    assert first["dropped"] == dropped
    assert buf.dropped_pending == 0
    _seal(buf, sealer)
    assert "dropped" not in json.loads(buf.outbox()[1].payload)


def test_size_accounting_matches_a_fresh_scan(tmp_path: Path) -> None:
    path = tmp_path / "b.sqlite3"
    buf = Buffer(path, max_bytes=1 << 20)
    buf.add([*_readings(50), Reading("s", "label", None, "abcdef", T0)])
    _seal(buf, _sealer(max_bytes=1200))
    size = buf.size
    buf.close()
    assert Buffer(path, max_bytes=1 << 20).size == size


def test_group_commit_is_one_transaction(tmp_path: Path) -> None:
    path = tmp_path / "b.sqlite3"
    buf = Buffer(path, max_bytes=1 << 20)
    statements: list[str] = []
    buf._db.set_trace_callback(statements.append)
    buf.add(_readings(200))
    assert sum(s.startswith("COMMIT") for s in statements) == 1


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_corrupt_file_is_moved_aside_and_a_new_stream_begins(
    tmp_path: Path, damage: str, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "buffer.sqlite3"
    buf = Buffer(path, max_bytes=1 << 22)
    buf.add(_readings(20_000))
    old_stream = buf.chain().stream
    buf.close()
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if damage == "truncate" else b"\x07" * len(data))
    again = Buffer(path, max_bytes=1 << 22)
    assert again.chain().stream != old_stream and again.chain().seq == 0
    assert again.count == 0
    aside = [p for p in tmp_path.iterdir() if ".corrupt-" in p.name]
    assert aside, "the damaged file must be kept, not deleted"
    assert "buffer file is corrupt: moved aside" in caplog.text
    again.add(_readings(3))
    assert again.count == 3
