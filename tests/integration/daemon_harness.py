"""Drive the real ``wsn-gateway run`` process: its config, its signals, its log, its buffer.

- :func:`gateway_config` / :func:`write_config`: a YAML configuration in the test's
  directory that points at a test broker and PKI, with counter sensors polled fast and
  short batch, commit and reconnect times.
- :class:`GatewayProcess`: ``python -m gateway.cli run --config FILE`` as a subprocess,
  its stdout (one JSON log object a line) captured to a file, with helpers to send
  signals, wait for log lines and wait for the exit.
- :func:`snapshot_buffer`: what the buffer file holds, read through a read-only SQLite
  connection (safe while the daemon runs and after it was killed).
- :func:`unique_batches` / :func:`counter_values`: the batches a consumer received,
  deduplicated on (stream, seq) and checked, and the counter values they carry.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from gateway import verify

REPO = Path(__file__).resolve().parents[2]
THING = "test-gw"
TELEMETRY_TOPIC = f"dt/wsn/{THING}/telemetry"
STATUS_TOPIC = f"dt/wsn/{THING}/status"

#: The daemon's SIGTERM grace period (gateway.daemon.STOP_GRACE) plus room for a slow start.
STOP_TIMEOUT = 20.0

LogEntry = dict[str, Any]


# --------------------------------------------------------------------------- configuration


def _merge(base: dict[str, Any], changes: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``changes`` merged in, mapping by mapping."""
    merged = copy.deepcopy(base)
    for key, value in changes.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def gateway_config(
    *,
    port: int,
    ca: Path,
    cert: Path,
    key: Path,
    state_dir: Path,
    sensors: Mapping[str, float],
    start: int = 1,
    **sections: Mapping[str, Any],
) -> dict[str, Any]:
    """A configuration for ``thing: test-gw`` with one counter sensor per ``sensors`` entry
    (name -> poll interval in seconds) counting from ``start``; ``sections`` are merged
    over the defaults (e.g. ``batch={"max_bytes": 2048}``)."""
    base: dict[str, Any] = {
        "thing": THING,
        "state_dir": str(state_dir),
        "clock": "assume-synced",
        "mqtt": {
            "endpoint": "127.0.0.1",
            "port": port,
            "ca": str(ca),
            "cert": str(cert),
            "key": str(key),
            "keepalive": 30,
            "reconnect_min": 0.2,
            "reconnect_max": 1.0,
            "connect_timeout": 5.0,
            "publish_timeout": 10.0,
        },
        "batch": {"max_age": 0.5},
        "buffer": {"commit_interval": 0.2},
        "sensors": [
            {
                "name": name,
                "driver": "counter",
                "interval": interval,
                "options": {"start": start},
            }
            for name, interval in sensors.items()
        ],
    }
    return _merge(base, sections)


def write_config(path: Path, config: Mapping[str, Any]) -> Path:
    """Write ``config`` as YAML to ``path`` (replacing it); returns the path."""
    path.write_text(yaml.safe_dump(dict(config), sort_keys=False))
    return path


# --------------------------------------------------------------------------- the process


class GatewayProcess:
    """One ``wsn-gateway run`` process; its stdout (JSON log lines) goes to ``log_path``."""

    def __init__(self, config: Path, log_path: Path) -> None:
        self.config = config
        self.log_path = log_path
        self.stderr_path = log_path.with_suffix(".stderr")
        self.process: subprocess.Popen[bytes] | None = None
        self.returncode: int | None = None

    def start(self) -> GatewayProcess:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        env.pop("WSN_GATEWAY_CONFIG", None)
        with self.log_path.open("ab") as out, self.stderr_path.open("ab") as err:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "gateway.cli", "run", "--config", str(self.config)],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                cwd=REPO,
                env=env,
            )
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None, "not started"
        return self.process.pid

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    # --- the log ------------------------------------------------------------------------
    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def stderr_text(self) -> str:
        try:
            return self.stderr_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def logs(self) -> list[LogEntry]:
        """Every complete JSON log line so far (a line still being written is skipped)."""
        entries = []
        for line in self.log_text().splitlines():
            with contextlib.suppress(ValueError):
                entry = json.loads(line)
                if isinstance(entry, dict):
                    entries.append(entry)
        return entries

    def find(self, msg: str | Callable[[LogEntry], bool]) -> list[LogEntry]:
        """Log entries whose ``msg`` equals ``msg`` (or that satisfy the predicate)."""
        match = msg if callable(msg) else (lambda entry: entry.get("msg") == msg)
        return [entry for entry in self.logs() if match(entry)]

    def wait_log(
        self,
        msg: str | Callable[[LogEntry], bool],
        *,
        count: int = 1,
        timeout: float = 15.0,
    ) -> LogEntry:
        """Wait until ``count`` entries match; return the last of them.

        Fails at once, with the log, if the process exits first.
        """
        deadline = time.monotonic() + timeout
        while True:
            found = self.find(msg)
            if len(found) >= count:
                return found[count - 1]
            if not self.running:
                found = self.find(msg)  # lines written just before the exit
                if len(found) >= count:
                    return found[count - 1]
                raise AssertionError(
                    f"gateway exited ({self._exit_status()}) before logging {msg!r}"
                    f"{self.describe()}"
                )
            if time.monotonic() >= deadline:
                raise AssertionError(
                    f"gateway did not log {msg!r} (x{count}) within {timeout} s{self.describe()}"
                )
            time.sleep(0.05)

    def describe(self) -> str:
        """The tail of stdout and stderr, for failure messages."""
        out = "\n".join(self.log_text().splitlines()[-40:])
        err = "\n".join(self.stderr_text().splitlines()[-20:])
        return f"\n--- gateway log (tail) ---\n{out}\n--- stderr ---\n{err}"

    # --- signals and exit -----------------------------------------------------------------
    def send(self, signum: int) -> None:
        assert self.process is not None, "not started"
        self.process.send_signal(signum)

    def _exit_status(self) -> str:
        code = None if self.process is None else self.process.poll()
        return f"status {code}"

    def wait_exit(self, timeout: float = STOP_TIMEOUT) -> int:
        """Wait for the process to end; returns its exit status."""
        assert self.process is not None, "not started"
        try:
            self.returncode = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"gateway still running {timeout} s later{self.describe()}"
            ) from None
        return self.returncode

    def terminate(self, timeout: float = STOP_TIMEOUT) -> int:
        """SIGTERM (a graceful stop) and wait for the exit."""
        self.send(signal.SIGTERM)
        return self.wait_exit(timeout)

    def kill(self) -> None:
        """SIGKILL (a crash) and reap the process."""
        if self.running:
            self.send(signal.SIGKILL)
        if self.process is not None:
            self.returncode = self.process.wait(10)

    def counters(self) -> dict[str, int]:
        """The counters of the last "stopped" line (logged on every exit and reload)."""
        stopped = self.find("stopped")
        assert stopped, f"no 'stopped' line in the log{self.describe()}"
        counters: dict[str, int] = stopped[-1]["counters"]
        return counters


# --------------------------------------------------------------------------- the buffer


@dataclass(frozen=True)
class BufferSnapshot:
    """What one look at the buffer file found."""

    readings: list[tuple[str, float]]  # (sensor/quantity, value) of buffered readings
    outbox: dict[int, bytes]  # seq -> payload of sealed, unacknowledged batches
    stream: str
    seq: int  # last sealed seq

    def values(self, sensor: str) -> set[int]:
        """Counter values of ``sensor`` buffered as readings (not in the outbox)."""
        return {int(v) for name, v in self.readings if name.partition("/")[0] == sensor}


def snapshot_buffer(path: Path) -> BufferSnapshot:
    """Read the buffer through a read-only connection: one consistent WAL snapshot."""
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        db.execute("BEGIN")  # one read transaction: readings, outbox and state agree
        readings = [
            (str(name), float(value))
            for name, value in db.execute(
                "SELECT s.name, r.value FROM readings r JOIN series s ON s.id = r.series"
                " ORDER BY r.id"
            )
        ]
        outbox = {
            int(seq): bytes(payload)
            for seq, payload in db.execute("SELECT seq, payload FROM outbox ORDER BY seq")
        }
        state = dict(db.execute("SELECT key, value FROM state").fetchall())
        db.execute("COMMIT")
    finally:
        db.close()
    return BufferSnapshot(readings, outbox, str(state["stream"]), int(state["seq"]))


def wait_until(
    condition: Callable[[], Any], *, timeout: float, what: str, interval: float = 0.05
) -> Any:
    """Poll ``condition`` until it returns something truthy; return that."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        time.sleep(interval)


# --------------------------------------------------------------------------- what arrived


def signing_keys(state_dir: Path) -> dict[str, verify.PublicKey]:
    """The daemon's Ed25519 verification key, from its state directory."""
    return verify.load_verification_keys([state_dir / "signing-ed25519.pem"])


def unique_batches(
    payloads: Iterable[bytes], keys: Mapping[str, verify.PublicKey]
) -> list[verify.Batch]:
    """Every valid batch once, in (stream, seq) order; duplicates must be byte-identical."""
    by_key: dict[tuple[str, int], verify.Batch] = {}
    for payload in payloads:
        batch = verify.verify_batch(payload, keys)
        first = by_key.setdefault((batch.stream, batch.seq), batch)
        assert first.payload == batch.payload, f"seq {batch.seq}: two different payloads"
    return [by_key[k] for k in sorted(by_key)]


def counter_values(batches: Iterable[verify.Batch]) -> dict[str, list[int]]:
    """Counter values per sensor, in batch and record order."""
    values: dict[str, list[int]] = {}
    for batch in batches:
        for record in batch.records:
            assert isinstance(record.value, float), record
            values.setdefault(record.sensor, []).append(int(record.value))
    return values


def received_values(
    payloads: Iterable[bytes], keys: Mapping[str, verify.PublicKey]
) -> dict[str, list[int]]:
    """Counter values per sensor in what arrived, each batch counted once."""
    return counter_values(unique_batches(payloads, keys))
