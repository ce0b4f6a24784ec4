"""The durable buffer: readings, the outbox of sealed batches, and the stream state.

One SQLite file in WAL mode holds all three, so that sealing a batch (insert
into the outbox, delete its readings, advance seq and prev) is one transaction:
a reading is always either buffered or inside exactly one sealed batch, across
any crash. This module is synchronous on purpose; the daemon calls it from a
single worker thread, which also serialises access to the connection.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import sqlite3
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from gateway.envelope import Chain, Sealed
from gateway.errors import GatewayError
from gateway.readings import Reading, Value

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1

# Bytes a buffered reading costs on disk (row, index entry and page overhead,
# measured on SQLite 3.40 with numeric values); string values add their length.
ROW_BYTES = 40

_SCHEMA = """
CREATE TABLE IF NOT EXISTS series (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    unit TEXT,
    UNIQUE (name, unit)
);
CREATE TABLE IF NOT EXISTS readings (
    id INTEGER PRIMARY KEY,
    series INTEGER NOT NULL,
    value,
    kind INTEGER NOT NULL,
    time REAL NOT NULL,
    unsynced INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY,
    payload BLOB NOT NULL,
    count INTEGER NOT NULL,
    sealed REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS state (
    key TEXT PRIMARY KEY,
    value
);
"""

# value kinds: how the dynamically typed ``value`` column is read back
_NUMBER, _STRING, _BOOL = 0, 1, 2


@dataclass(frozen=True, slots=True)
class Buffered:
    """A reading as stored, with its row id."""

    id: int
    reading: Reading


@dataclass(frozen=True, slots=True)
class OutboxEntry:
    """A sealed batch waiting for its PUBACK."""

    seq: int
    payload: bytes
    count: int


@dataclass(frozen=True, slots=True)
class BufferStats:
    """What ``buffer stats`` shows."""

    path: Path
    readings: int
    oldest_time: float | None
    newest_time: float | None
    outbox_batches: int
    outbox_readings: int
    outbox_bytes: int
    size_bytes: int
    max_bytes: int
    file_bytes: int
    dropped_pending: int
    dropped_total: int
    stream: str
    last_seq: int


#: Bytes the WAL file is truncated to after a checkpoint.
WAL_LIMIT = 1 << 20
#: Seconds after a full disk before the buffer tries its configured cap again.
DISK_RETRY = 3600.0


class BufferFull(GatewayError, OSError):
    """The file system is full and the buffer could not make room."""


def _is_corruption(err: sqlite3.DatabaseError) -> bool:
    text = str(err).lower()
    return "malformed" in text or "not a database" in text or "corrupt" in text


def is_disk_full(err: BaseException) -> bool:
    """SQLITE_FULL: the file system has no room for the write."""
    return isinstance(err, sqlite3.OperationalError) and "full" in str(err).lower()


def _encode(value: Value) -> tuple[Value, int]:
    if isinstance(value, bool):
        return int(value), _BOOL
    if isinstance(value, str):
        return value, _STRING
    return float(value), _NUMBER


def _decode(value: object, kind: int) -> Value:
    if kind == _BOOL:
        return bool(value)
    if kind == _STRING:
        return str(value)
    assert isinstance(value, int | float)
    return float(value)


class Buffer:
    """Readings, outbox and stream state in one SQLite file, capped in bytes."""

    def __init__(self, path: Path, *, max_bytes: int) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self._disk_cap: int | None = None  # a lower cap while the disk is full
        self._disk_full_at = 0.0
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._open()
        except sqlite3.DatabaseError as err:
            if isinstance(err, sqlite3.OperationalError) and not _is_corruption(err):
                raise  # locked, read-only, disk full: not the file's fault
            aside = self._move_aside()
            log.error(
                "buffer file is corrupt: moved aside, a new stream begins",
                extra={"path": str(path), "moved_to": str(aside), "error": str(err)},
            )
            self._open()

    def _open(self) -> None:
        """Open (or create) the file and load the in-memory totals; raises
        ``sqlite3.DatabaseError`` when the file is not a sound database."""
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            # FULL: a group commit is on disk when it returns; one fsync per commit.
            self._db.execute("PRAGMA synchronous=FULL")
            # Keep the WAL near its checkpoint size on disk; it is outside the cap.
            self._db.execute(f"PRAGMA journal_size_limit = {WAL_LIMIT}")
            self._db.executescript(_SCHEMA)
            self._load_series()
            with self._transaction():
                if self._get("stream") is None:
                    self._set("stream", secrets.token_hex(8))
                    self._set("seq", 0)
                    self._set("last_hash", None)
                    self._set("dropped_pending", 0)
                    self._set("dropped_total", 0)
                    self._set("schema", SCHEMA_VERSION)
                    log.info("buffer created", extra={"path": str(self.path)})
            # These scans read every page of both tables: a damaged file fails here,
            # at start, rather than in the middle of a drain.
            self._count, self._size = self._db.execute(
                "SELECT COUNT(*), COALESCE(SUM(? + CASE kind WHEN 1 THEN LENGTH(value) ELSE 0 END),"
                " 0) FROM readings",
                (ROW_BYTES,),
            ).fetchone()
            (self._outbox_bytes,) = self._db.execute(
                "SELECT COALESCE(SUM(LENGTH(payload)), 0) FROM outbox"
            ).fetchone()
            self._size += self._outbox_bytes
            # The series index is used by every new sensor: read it through too.
            self._db.execute("SELECT COUNT(*) FROM series INDEXED BY sqlite_autoindex_series_1")
            self._db.execute("SELECT name, unit FROM series ORDER BY name, unit").fetchall()
        except sqlite3.DatabaseError:
            self._db.close()
            raise

    def _load_series(self) -> None:
        self._series: dict[tuple[str, str | None], int] = {
            (name, unit): sid
            for sid, name, unit in self._db.execute("SELECT id, name, unit FROM series")
        }
        self._names = {sid: key for key, sid in self._series.items()}

    def _move_aside(self) -> Path:
        """Rename the damaged file (and its WAL) so that nothing is deleted."""
        stamp = time.strftime("%Y%m%dT%H%M%S")
        aside = self.path.with_name(f"{self.path.name}.corrupt-{stamp}")
        n = 1
        while Path(f"{aside}").exists():  # never overwrite an earlier damaged file
            n += 1
            aside = self.path.with_name(f"{self.path.name}.corrupt-{stamp}-{n}")
        for suffix in ("", "-wal", "-shm"):
            part = Path(f"{self.path}{suffix}")
            if part.exists():
                part.rename(Path(f"{aside}{suffix}"))
        return aside

    # --- plumbing ---------------------------------------------------------------------
    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on error (the connection is in
        autocommit mode, so transactions are explicit)."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            # SQLite itself rolls back on some errors (SQLITE_FULL among them).
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def _get(self, key: str) -> object:
        row = self._db.execute("SELECT value FROM state WHERE key = ?", (key,)).fetchone()
        return None if row is None else row[0]

    def _int(self, key: str) -> int:
        value = self._get(key)
        return int(value) if isinstance(value, int | float | str) else 0

    def _set(self, key: str, value: object) -> None:
        self._db.execute("INSERT OR REPLACE INTO state (key, value) VALUES (?, ?)", (key, value))

    def _series_id(self, name: str, unit: str | None) -> int:
        key = (name, unit)
        sid = self._series.get(key)
        if sid is None:
            cur = self._db.execute("INSERT INTO series (name, unit) VALUES (?, ?)", key)
            sid = cur.lastrowid
            assert sid is not None
            self._series[key] = sid
            self._names[sid] = key
        return sid

    # --- readings ---------------------------------------------------------------------
    @property
    def count(self) -> int:
        """Readings buffered and not yet sealed."""
        return int(self._count)

    @property
    def size(self) -> int:
        """Bytes counted against the cap: readings plus outbox payloads."""
        return int(self._size)

    def add(self, readings: Sequence[Reading]) -> int:
        """Store readings in one transaction (a group commit); returns how many of
        the oldest were dropped to stay under the cap.

        When the file system is full, the oldest tenth of the buffer is dropped
        (counted) to make room and the write is tried once more; if that fails too,
        ``BufferFull`` is raised and nothing of this call was stored. Until an hour
        has passed, the buffer then keeps no more than it held when the disk filled.
        """
        if not readings:
            return 0
        if self._disk_cap is not None and time.monotonic() - self._disk_full_at > DISK_RETRY:
            self._disk_cap = None  # perhaps someone made room: try the full cap again
        try:
            return self._add(readings)
        except sqlite3.OperationalError as err:
            if not is_disk_full(err):
                raise
        self._disk_full_at = time.monotonic()
        self._disk_cap = int(self._size * 0.9)
        try:
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # give the WAL's space back
            with self._transaction():
                dropped, freed = self._drop_oldest(self._size - self._disk_cap)
            self._count -= dropped
            self._size -= freed
            if dropped:
                log.error(
                    "disk full: dropped the oldest readings to make room",
                    extra={"path": str(self.path), "dropped": dropped},
                )
            return self._add(readings) + dropped
        except sqlite3.OperationalError as err:
            self._disk_cap = None  # the lower cap did not help: do not keep it
            if is_disk_full(err):
                raise BufferFull(
                    f"{self.path}: the file system is full and no room could be made; "
                    "free some space (the readings are kept in memory meanwhile)"
                ) from err
            raise

    def _add(self, readings: Sequence[Reading]) -> int:
        rows = []
        added = 0
        try:
            with self._transaction():
                for r in readings:
                    value, kind = _encode(r.value)
                    sid = self._series_id(r.name, r.unit)
                    rows.append((sid, value, kind, r.time, int(not r.synced)))
                    added += ROW_BYTES + (len(value) if isinstance(value, str) else 0)
                self._db.executemany(
                    "INSERT INTO readings (series, value, kind, time, unsynced)"
                    " VALUES (?, ?, ?, ?, ?)",
                    rows,
                )
                cap = self.max_bytes if self._disk_cap is None else self._disk_cap
                dropped, freed = self._drop_oldest(self._size + added - cap)
        except BaseException:
            self._load_series()  # series rows added by the failed transaction are gone
            raise
        # In-memory totals change only once the transaction has committed.
        self._count += len(rows) - dropped
        self._size += added - freed
        if dropped:
            log.warning(
                "buffer full: dropped oldest readings",
                extra={"dropped": dropped, "max_bytes": cap},
            )
        return dropped

    def last_id(self) -> int:
        """The row id of the newest buffered reading (0 when none); the readings of
        one group commit have consecutive ids ending there."""
        (newest,) = self._db.execute("SELECT COALESCE(MAX(id), 0) FROM readings").fetchone()
        return int(newest)

    def correct_unsynced(self, from_id: int, delta: float) -> int:
        """Shift readings taken before the clock was synchronised by ``delta`` seconds
        and clear their flag; readings already sealed are signed and stay as they are."""
        with self._transaction():
            changed = self._db.execute(
                "UPDATE readings SET time = ROUND(time + ?, 3), unsynced = 0"
                " WHERE unsynced = 1 AND id >= ?",
                (delta, from_id),
            ).rowcount
        return int(changed)

    def note_dropped(self, count: int) -> None:
        """Count readings lost before they reached the buffer (held in memory while
        the disk was full), so that the next batch reports them in ``dropped``."""
        if count:
            with self._transaction():
                self._set("dropped_pending", self.dropped_pending + count)
                self._set("dropped_total", self._int("dropped_total") + count)

    def _drop_oldest(self, excess: int) -> tuple[int, int]:
        """Delete the oldest readings to free ``excess`` bytes, inside the caller's
        transaction; counted into ``dropped``. Returns (readings, bytes) freed."""
        if excess <= 0:
            return 0, 0
        # Free a little more than needed so that a full buffer does not delete on
        # every single commit.
        target = excess + self.max_bytes // 100
        freed = dropped = 0
        last_id = None
        for rid, kind, value in self._db.execute(
            "SELECT id, kind, value FROM readings ORDER BY id"
        ):
            freed += ROW_BYTES + (len(value) if kind == _STRING else 0)
            last_id = rid
            dropped += 1
            if freed >= target:
                break
        if last_id is None:
            return 0, 0
        self._db.execute("DELETE FROM readings WHERE id <= ?", (last_id,))
        self._set("dropped_pending", self.dropped_pending + dropped)
        self._set("dropped_total", self._int("dropped_total") + dropped)
        return dropped, freed

    def discard(self, ids: Sequence[int]) -> int:
        """Delete readings that can never be published, counted into ``dropped``."""
        if not ids:
            return 0
        marks = ",".join("?" * len(ids))
        with self._transaction():
            (size,) = self._db.execute(
                f"SELECT COALESCE(SUM(? + CASE kind WHEN 1 THEN LENGTH(value) ELSE 0 END), 0)"  # noqa: S608
                f" FROM readings WHERE id IN ({marks})",
                (ROW_BYTES, *ids),
            ).fetchone()
            gone = self._db.execute(
                f"DELETE FROM readings WHERE id IN ({marks})",  # noqa: S608
                list(ids),
            ).rowcount
            self._set("dropped_pending", self.dropped_pending + gone)
            self._set("dropped_total", self._int("dropped_total") + gone)
        self._count -= gone
        self._size -= size
        return int(gone)

    def oldest(self, limit: int) -> list[Buffered]:
        """The oldest buffered readings, by arrival, at most ``limit``."""
        return self._select("ASC", limit)

    def newest(self, limit: int) -> list[Buffered]:
        """The newest buffered readings, newest first, at most ``limit``."""
        return self._select("DESC", limit)

    def _select(self, order: str, limit: int) -> list[Buffered]:
        out = []
        for rid, sid, value, kind, t, unsynced in self._db.execute(
            "SELECT id, series, value, kind, time, unsynced FROM readings"  # noqa: S608
            f" ORDER BY id {order} LIMIT ?",
            (limit,),
        ):
            name, unit = self._names[sid]
            sensor, _, quantity = name.partition("/")
            out.append(
                Buffered(
                    rid, Reading(sensor, quantity, unit, _decode(value, kind), t, not unsynced)
                )
            )
        return out

    # --- sealing and the outbox -------------------------------------------------------
    def chain(self) -> Chain:
        """The stream id, last sealed seq and its payload hash."""
        last_hash = self._get("last_hash")
        return Chain(
            str(self._get("stream")),
            self._int("seq"),
            None if last_hash is None else str(last_hash),
        )

    @property
    def dropped_pending(self) -> int:
        """Readings dropped since the last sealed batch: the next batch's ``dropped``."""
        return self._int("dropped_pending")

    def commit_batch(self, sealed: Sealed, reading_ids: Iterable[int], dropped: int) -> None:
        """Put a sealed batch in the outbox and remove its readings, atomically."""
        ids = list(reading_ids)
        if len(ids) != sealed.count:
            raise ValueError(f"batch holds {sealed.count} readings, {len(ids)} ids given")
        with self._transaction():
            if self._int("seq") + 1 != sealed.seq:
                raise ValueError(f"batch seq {sealed.seq} does not follow the stream")
            self._db.execute(
                "INSERT INTO outbox (seq, payload, count, sealed) VALUES (?, ?, ?, ?)",
                (sealed.seq, sealed.payload, sealed.count, time.time()),
            )
            freed = 0
            for chunk_start in range(0, len(ids), 500):
                chunk = ids[chunk_start : chunk_start + 500]
                marks = ",".join("?" * len(chunk))
                (chunk_bytes,) = self._db.execute(
                    f"SELECT COALESCE(SUM(? + CASE kind WHEN 1 THEN LENGTH(value) ELSE 0 END), 0)"  # noqa: S608
                    f" FROM readings WHERE id IN ({marks})",
                    (ROW_BYTES, *chunk),
                ).fetchone()
                deleted = self._db.execute(
                    f"DELETE FROM readings WHERE id IN ({marks})",  # noqa: S608
                    chunk,
                ).rowcount
                if deleted != len(chunk):
                    raise ValueError("a sealed reading was no longer in the buffer")
                freed += chunk_bytes
            self._set("seq", sealed.seq)
            self._set("last_hash", sealed.digest)
            self._set("dropped_pending", self.dropped_pending - dropped)
        self._count -= len(ids)
        self._size += len(sealed.payload) - freed
        self._outbox_bytes += len(sealed.payload)

    def outbox(self, *, after: int = 0, limit: int = 100) -> list[OutboxEntry]:
        """Sealed, unacknowledged batches in seq order."""
        return [
            OutboxEntry(seq, bytes(payload), count)
            for seq, payload, count in self._db.execute(
                "SELECT seq, payload, count FROM outbox WHERE seq > ? ORDER BY seq LIMIT ?",
                (after, limit),
            )
        ]

    @property
    def outbox_bytes(self) -> int:
        """Bytes of sealed batches awaiting their PUBACK."""
        return int(self._outbox_bytes)

    def outbox_count(self) -> int:
        """How many sealed batches await their PUBACK."""
        return int(self._db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])

    def ack(self, seqs: Iterable[int]) -> int:
        """Delete acknowledged batches; returns the readings they carried."""
        seqs = list(seqs)
        if not seqs:
            return 0
        with self._transaction():
            marks = ",".join("?" * len(seqs))
            count, size = self._db.execute(
                f"SELECT COALESCE(SUM(count), 0), COALESCE(SUM(LENGTH(payload)), 0)"  # noqa: S608
                f" FROM outbox WHERE seq IN ({marks})",
                seqs,
            ).fetchone()
            self._db.execute(f"DELETE FROM outbox WHERE seq IN ({marks})", seqs)  # noqa: S608
        self._size -= size
        self._outbox_bytes -= size
        return int(count)

    def stats(self) -> BufferStats:
        """A snapshot of the buffer for people and metrics."""
        oldest, newest = self._db.execute("SELECT MIN(time), MAX(time) FROM readings").fetchone()
        n, readings, nbytes = self._db.execute(
            "SELECT COUNT(*), COALESCE(SUM(count), 0), COALESCE(SUM(LENGTH(payload)), 0)"
            " FROM outbox"
        ).fetchone()
        chain = self.chain()
        file_bytes = sum(
            p.stat().st_size for p in (self.path, Path(f"{self.path}-wal")) if p.exists()
        )
        return BufferStats(
            path=self.path,
            readings=self.count,
            oldest_time=oldest,
            newest_time=newest,
            outbox_batches=n,
            outbox_readings=readings,
            outbox_bytes=nbytes,
            size_bytes=self.size,
            max_bytes=self.max_bytes,
            file_bytes=file_bytes,
            dropped_pending=self.dropped_pending,
            dropped_total=self._int("dropped_total"),
            stream=chain.stream,
            last_seq=chain.seq,
        )

    def close(self) -> None:
        """Checkpoint the WAL into the main file and close."""
        try:
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            self._db.close()
