"""The daemon's sealing step: full batches only unless forced, poison readings counted."""

from __future__ import annotations

import json
from pathlib import Path

from gateway.buffer import Buffer
from gateway.config import load_settings
from gateway.daemon import Daemon, _Age
from gateway.envelope import Sealer
from gateway.readings import Reading
from gateway.signing import load_or_create_ed25519

T0 = 1_795_000_000.0


def _daemon(tmp_path: Path, max_bytes: int = 1024, interleave: bool = True) -> Daemon:
    config = tmp_path / "gw.yaml"
    config.write_text(
        "thing: gw\n"
        f"state_dir: {tmp_path}\n"
        "mqtt: {endpoint: localhost, ca: ca.pem, cert: c.pem, key: k.pem}\n"
        f"batch: {{max_bytes: {max_bytes}, interleave: {str(interleave).lower()}}}\n"
        "sensors: [{name: beat, driver: counter}]\n"
    )
    daemon = Daemon(load_settings(config))
    daemon.buffer = Buffer(tmp_path / "b.sqlite3", max_bytes=1 << 20)
    signer = load_or_create_ed25519(tmp_path / "key.pem")
    daemon._sealer = Sealer(thing="gw", signer=signer, max_bytes=max_bytes, max_records=5000)
    return daemon


def _counts(n: int) -> list[Reading]:
    return [Reading("beat", "count", "count", float(i), T0 + i) for i in range(n)]


def test_partial_batch_waits_unless_forced(tmp_path: Path) -> None:
    daemon = _daemon(tmp_path)
    assert daemon.buffer is not None
    daemon.buffer.add(_counts(3))
    assert daemon._seal_one(force=False) is None
    assert daemon.buffer.count == 3
    sealed = daemon._seal_one(force=True)
    assert sealed is not None and sealed.count == 3
    assert daemon.buffer.count == 0


def test_full_batch_is_sealed_without_force(tmp_path: Path) -> None:
    daemon = _daemon(tmp_path)
    assert daemon.buffer is not None
    daemon.buffer.add(_counts(200))
    sealed = daemon._seal_one(force=False)
    assert sealed is not None and 0 < sealed.count < 200
    assert len(sealed.payload) <= 1024


def test_a_reading_too_large_for_any_batch_is_dropped_and_counted(tmp_path: Path) -> None:
    daemon = _daemon(tmp_path)
    assert daemon.buffer is not None
    poison = Reading("sink", "message", None, "x" * 2000, T0 - 1)
    daemon.buffer.add([poison, *_counts(3)])
    sealed = daemon._seal_one(force=True)
    assert sealed is not None and sealed.count == 3
    batch = json.loads(sealed.payload)
    assert batch["dropped"] == 1
    assert daemon.buffer.count == 0
    assert daemon.buffer.stats().dropped_total == 1


def _values(payload: bytes) -> list[float]:
    return [r["v"] for r in json.loads(payload)["records"]]


def test_live_batches_interleave_with_the_backlog(tmp_path: Path) -> None:
    daemon = _daemon(tmp_path)
    assert daemon.buffer is not None
    daemon.buffer.add(_counts(10_000))
    batches = [daemon._seal_one(force=False) for _ in range(4)]
    assert all(b is not None for b in batches)
    first, second, third, fourth = (_values(b.payload) for b in batches if b is not None)
    assert first[0] == 0  # the backlog starts with the oldest
    assert second[-1] == 9_999  # then the newest readings
    assert third[0] == first[-1] + 1  # the backlog resumes where it was
    assert fourth[-1] == second[0] - 1  # and live goes on just before the last live batch
    assert [b.seq for b in batches if b is not None] == [1, 2, 3, 4]
    assert all(v == sorted(v) for v in (first, second, third, fourth))  # time-ordered


def test_interleaving_can_be_switched_off(tmp_path: Path) -> None:
    daemon = _daemon(tmp_path, interleave=False)
    assert daemon.buffer is not None
    daemon.buffer.add(_counts(10_000))
    first = daemon._seal_one(force=False)
    second = daemon._seal_one(force=False)
    assert first is not None and second is not None
    assert _values(second.payload)[0] == _values(first.payload)[-1] + 1


def test_age_record_credits_live_batches_to_the_newest_commits() -> None:
    age = _Age()
    age.add(100, 1.0)  # backlog
    age.add(10, 50.0)  # fresh
    age.sealed(10, newest=True)  # a live batch took the fresh readings
    assert age.oldest() == 1.0 and list(age.commits) == [[1.0, 100]]
    age.sealed(60)
    assert list(age.commits) == [[1.0, 40]]


def test_lookahead_follows_the_rate_limits(tmp_path: Path) -> None:
    daemon = _daemon(tmp_path, max_bytes=128_000)
    # AWS IoT's limits: 512 KiB/s of 128 KB batches is about 4 a second.
    assert daemon._lookahead() == 9


def test_a_batch_that_was_not_full_corrects_the_size_estimate(tmp_path: Path) -> None:
    """A seal that finds the batch not full after all lowers the bytes-per-record
    estimate, so the next commit does not trigger another wasted attempt."""
    daemon = _daemon(tmp_path)
    assert daemon.buffer is not None
    daemon._record_bytes = 100.0  # too high: 11 short records look like a full batch
    daemon.buffer.add(_counts(11))
    assert daemon._seal_due(11, force=False)
    assert daemon._seal_one(force=False) is None
    assert daemon.buffer.count == 11
    assert daemon._record_bytes < 1024 / 11
    assert not daemon._seal_due(11, force=False)
    daemon.buffer.add(_counts(200))
    sealed = daemon._seal_one(force=False)
    assert sealed is not None and len(sealed.payload) <= 1024
