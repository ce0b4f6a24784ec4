"""``wsn-gateway status``: the running daemon's snapshot, written to a file and shown.

The daemon writes :func:`snapshot` as JSON every :data:`PERIOD` seconds, and once
more at stop with ``"state": "stopped"``, atomically (a temporary file in the same
directory, then ``os.replace``): to ``$RUNTIME_DIRECTORY/status.json`` under systemd
(a tmpfs, so no SD-card wear), else to ``state_dir/status.json``. The command reads
the newer of ``/run/wsn-gateway/status.json`` and ``state_dir/status.json`` and
renders it for a terminal (:func:`render`) or prints it as JSON.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography import x509

from drivers.wsn import NodeTable
from gateway import __version__
from gateway.errors import GatewayError

if TYPE_CHECKING:
    from gateway.buffer import Buffer
    from gateway.config import Settings
    from gateway.daemon import Daemon

log = logging.getLogger(__name__)

#: Seconds between two status files.
PERIOD = 5.0
#: A status file older than this many periods belongs to a daemon that is not running.
STALE_PERIODS = 3
#: Where systemd's ``RuntimeDirectory=wsn-gateway`` puts it.
RUN_DIR = Path("/run/wsn-gateway")
FILE_NAME = "status.json"
#: Days before the certificate expires from which status warns.
CERT_WARN_DAYS = 30
#: When this process started (wall clock): the module is imported at start-up.
STARTED = time.time()

Snapshot = dict[str, Any]


# --- where -------------------------------------------------------------------------------
def write_path(settings: Settings, environ: dict[str, str] | None = None) -> Path:
    """Where the daemon writes: ``$RUNTIME_DIRECTORY`` (its first entry), else state_dir."""
    runtime = (os.environ if environ is None else environ).get("RUNTIME_DIRECTORY", "")
    first = runtime.split(":")[0]
    return (Path(first) if first else settings.state_dir) / FILE_NAME


def read_paths(settings: Settings) -> list[Path]:
    """Where ``status`` looks, in order of preference."""
    return [RUN_DIR / FILE_NAME, settings.state_dir / FILE_NAME]


# --- building the snapshot -----------------------------------------------------------------
def buffer_facts(buffer: Buffer) -> dict[str, Any]:
    """What status shows of the buffer; cheap queries only (by primary key), so that it
    can run every few seconds on the buffer's worker thread."""
    oldest = buffer.oldest(1)
    return {
        "readings": buffer.count,
        "oldest_time": oldest[0].reading.time if oldest else None,
        "outbox_batches": buffer.outbox_count(),
        "dropped_pending": buffer.dropped_pending,
    }


def certificate_facts(path: Path, now: float | None = None) -> dict[str, Any]:
    """Expiry of the PEM certificate at ``path``: not_after (UNIX s) and days left."""
    now = time.time() if now is None else now
    try:
        cert = x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError) as err:
        return {"path": str(path), "error": str(err) or type(err).__name__}
    not_after = cert.not_valid_after_utc.timestamp()
    return {
        "path": str(path),
        "not_after": not_after,
        "days_left": int((not_after - now) // 86400),
    }


def _nodes(driver: object) -> list[dict[str, Any]] | None:
    table = getattr(driver, "nodes", None)
    if not isinstance(table, NodeTable):
        return None
    try:  # the driver's thread may add a node meanwhile: skip this time
        nodes = table.status()
    except RuntimeError:
        return None
    return [
        {
            "name": n.name,
            "key": n.key,
            "configured": n.configured,
            "silent_for": round(n.silent_for, 1),
            "missing": n.missing,
            "messages": n.messages,
        }
        for n in nodes
    ]


def _sensors(daemon: Daemon) -> list[dict[str, Any]]:
    drivers = {s.name: s.driver for s in daemon.settings.sensors}
    out: list[dict[str, Any]] = []
    for poller in daemon.pollers:
        st = poller.status
        entry: dict[str, Any] = {
            "name": poller.name,
            "driver": drivers.get(poller.name),
            "health": st.health.value,
            "last_ok": st.last_ok,
            "values": [
                {"quantity": q, "value": v, "unit": st.last_units.get(q)}
                for q, v in st.last_values.items()
            ],
            "readings": st.readings,
            "errors": st.errors,
            "rejected": st.rejected,
            "last_error": st.last_error,
        }
        nodes = _nodes(poller.driver)
        if nodes is not None:
            entry["nodes"] = nodes
        out.append(entry)
    for name, error in daemon.unavailable.items():
        out.append(
            {
                "name": name,
                "driver": drivers.get(name),
                "health": "unavailable",
                "last_ok": None,
                "values": [],
                "readings": 0,
                "errors": 0,
                "rejected": 0,
                "last_error": error,
            }
        )
    return out


def snapshot(
    daemon: Daemon,
    *,
    now: float | None = None,
    state: str = "running",
    buffer: dict[str, Any] | None = None,
    since: float | None = None,
    certificate: dict[str, Any] | None = None,
) -> Snapshot:
    """The daemon's state for ``status``. ``buffer`` is :func:`buffer_facts` (queried
    here when not given: the running daemon passes it from the buffer's worker thread),
    ``since`` when the connection state last changed, ``certificate`` as
    :func:`certificate_facts` (read here when not given)."""
    now = time.time() if now is None else now
    s = daemon.settings
    publisher = daemon.publisher
    if buffer is None:
        buffer = buffer_facts(daemon.buffer) if daemon.buffer is not None else None
    return {
        "format": 1,
        "version": __version__,
        "pid": os.getpid(),
        "state": state,
        "time": now,
        "started": STARTED,
        "period": PERIOD,
        "thing": s.thing,
        "connection": {
            "broker": f"{s.mqtt.endpoint}:{s.mqtt.port}",
            "connected": bool(publisher and publisher.connected.is_set()),
            "since": since,
            "last_error": publisher.last_error if publisher else None,
            "in_flight": publisher.in_flight if publisher else 0,
            "last_acked_seq": publisher.last_acked_seq if publisher else None,
            "last_acked_time": publisher.last_acked_time if publisher else None,
        },
        "sensors": _sensors(daemon),
        "buffer": buffer,
        "disk_full": daemon.disk_full,
        "certificate": certificate
        if certificate is not None
        else certificate_facts(s.mqtt.cert, now),
        "counters": daemon.counters.snapshot(),
    }


# --- writing -------------------------------------------------------------------------------
def write_atomically(path: Path, data: Snapshot) -> None:
    """Write ``data`` as JSON to ``path``: a temporary file beside it, then a rename,
    so a reader never sees half a file. Readable by all (it holds no secrets)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps(data, default=str, separators=(",", ":")))
        tmp.chmod(0o644)
        tmp.replace(path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


class StatusWriter:
    """The daemon's status file: written every :data:`PERIOD` seconds and at stop.

    Never raises: a status file that cannot be written is logged once per error and
    the gateway goes on.
    """

    def __init__(
        self,
        daemon: Daemon,
        path: Path,
        *,
        run_in_worker: Callable[..., Awaitable[Any]],
        stopping: Callable[[], bool] = lambda: False,
    ) -> None:
        self.daemon = daemon
        self.path = path
        self._run_in_worker = run_in_worker
        self._stopping = stopping
        self._certificate = certificate_facts(daemon.settings.mqtt.cert)
        self._connected: bool | None = None
        self._since: float | None = None
        self._last_error: str | None = None

    async def run(self) -> None:
        """Write now and then every period, until cancelled; cancelled while the daemon
        stops (not reloads), a last file says ``"state": "stopped"``."""
        try:
            while True:
                await self.write()
                await asyncio.sleep(PERIOD)
        except asyncio.CancelledError:
            if self._stopping():
                await self.write(state="stopped")
            raise

    async def write(self, state: str = "running") -> None:
        """One status file."""
        try:
            now = time.time()
            publisher = self.daemon.publisher
            connected = bool(publisher and publisher.connected.is_set())
            if connected != self._connected:
                self._connected, self._since = connected, now
            buffer = self.daemon.buffer
            facts = await self._run_in_worker(buffer_facts, buffer) if buffer else None
            cert = dict(self._certificate)
            if "not_after" in cert:
                cert["days_left"] = int((cert["not_after"] - now) // 86400)
            data = snapshot(
                self.daemon,
                now=now,
                state=state,
                buffer=facts,
                since=self._since,
                certificate=cert,
            )
            await asyncio.to_thread(write_atomically, self.path, data)
        except asyncio.CancelledError:
            raise
        except Exception as err:  # status must never stop the gateway
            message = f"{type(err).__name__}: {err}"
            if message != self._last_error:
                log.warning(
                    "cannot write the status file",
                    extra={"path": str(self.path), "error": message},
                )
            self._last_error = message
        else:
            self._last_error = None


# --- reading -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Found:
    """A status file and what it says."""

    path: Path
    snapshot: Snapshot


def read_status(paths: Sequence[Path]) -> Found | None:
    """The newest of the status files at ``paths`` (None when there is none).
    Raises ``GatewayError`` when the file is unreadable or not a snapshot."""
    existing = []
    denied: list[Path] = []
    for path in paths:
        try:
            existing.append((path.stat().st_mtime, path))
        except PermissionError:
            denied.append(path)
        except OSError:
            continue
    if not existing:
        if denied:
            raise GatewayError(
                f"{denied[0]}: permission denied; run as root or as a member of the service's group"
            )
        return None
    path = max(existing, key=lambda item: item[0])[1]
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise GatewayError(f"{path}: cannot read the status file: {err}") from err
    if not isinstance(data, dict) or "time" not in data:
        raise GatewayError(f"{path}: not a status file of wsn-gateway")
    return Found(path, data)


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists (a daemon of another user counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except (OSError, OverflowError):
        return False
    return True


def not_running(
    snap: Snapshot, now: float, *, alive: Callable[[int], bool] = pid_alive
) -> str | None:
    """Why the daemon that wrote ``snap`` is not running, or None when it is."""
    if snap.get("state") == "stopped":
        return "stopped"
    period = float(snap.get("period") or PERIOD)
    age = now - float(snap["time"])
    if age > STALE_PERIODS * period:
        return "status file stale"
    pid = snap.get("pid")
    if isinstance(pid, int) and not alive(pid):
        return f"process {pid} is gone"
    return None


# --- rendering -----------------------------------------------------------------------------
def _duration(seconds: float) -> str:
    s = max(0, round(seconds))
    if s < 120:
        return f"{s} s"
    if s < 7200:
        return f"{s // 60} min"
    if s < 172800:
        return f"{s // 3600} h {s % 3600 // 60:02d} min"
    return f"{s // 86400} d {s % 86400 // 3600} h"


def _ago(t: float | None, now: float) -> str:
    return "never" if t is None else f"{_duration(now - t)} ago"


def _clock(t: float) -> str:
    return dt.datetime.fromtimestamp(t).strftime("%Y-%m-%d %H:%M:%S")


def _value(v: object) -> str:
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


def _table(rows: list[list[str]], indent: str = "  ") -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return [
        (indent + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True))).rstrip()
        for r in rows
    ]


def _sensor_lines(snap: Snapshot, now: float) -> list[str]:
    sensors = snap.get("sensors") or []
    if not sensors:
        return ["sensors      none"]
    rows = [["SENSOR", "HEALTH", "LAST GOOD", "VALUES"]]
    notes: dict[int, list[str]] = {}
    for s in sensors:
        values = ", ".join(
            f"{v['quantity']} {_value(v['value'])}" + (f" {v['unit']}" if v.get("unit") else "")
            for v in s.get("values", [])
        )
        rows.append([s["name"], s["health"], _ago(s.get("last_ok"), now), values or "-"])
        extra = []
        if s.get("last_error") and s["health"] != "ok":
            extra.append(f"error: {s['last_error']}")
        for n in s.get("nodes") or []:
            flag = "MISSING" if n["missing"] else "heard"
            extra.append(
                f"node {n['name']}: {flag}, silent {_duration(n['silent_for'])}, "
                f"{n['messages']} messages"
            )
        if extra:
            notes[len(rows) - 1] = extra
    table = _table(rows)
    lines = [table[0]]
    for i, line in enumerate(table[1:], start=1):
        lines.append(line)
        lines.extend(f"      {note}" for note in notes.get(i, []))
    return ["sensors", *lines]


def render(snap: Snapshot, now: float, *, why_not: str | None = None) -> str:
    """``snap`` for a terminal: plain text, aligned. ``why_not`` (from
    :func:`not_running`) makes the first line say the daemon is not running."""
    taken = float(snap["time"])
    last_seen = _duration(now - taken)
    up = _duration(taken - float(snap.get("started") or taken))
    version = snap.get("version", "?")
    if why_not is None:
        head = f"wsn-gateway {version}: running, pid {snap.get('pid')}, up {up}"
    else:
        head = (
            f"wsn-gateway {version}: not running — last seen {last_seen} ago ({why_not}),"
            f" was up {up}"
        )
    lines = [head, f"thing        {snap.get('thing')}   (snapshot from {last_seen} ago)", ""]
    c = snap.get("connection") or {}
    since = c.get("since")
    when = "" if since is None else f" since {_clock(since)} ({_ago(since, now)})"
    state = "connected" if c.get("connected") else "offline"
    lines.append(f"connection   {state}{when} — {c.get('broker')}")
    if c.get("last_error"):
        lines.append(f"last error   {c['last_error']}")
    if c.get("last_acked_seq") is None:
        lines.append("last ack     none since start")
    else:
        lines.append(
            f"last ack     seq {c['last_acked_seq']}, {_ago(c.get('last_acked_time'), now)}"
            f" ({c.get('in_flight', 0)} in flight)"
        )
    b = snap.get("buffer")
    if b is None:
        lines.append("buffer       not open")
    else:
        oldest = "" if b.get("oldest_time") is None else f", oldest {_ago(b['oldest_time'], now)}"
        full = " — DISK FULL" if snap.get("disk_full") else ""
        lines.append(f"buffer       {b['readings']:,} readings{oldest}{full}")
        lines.append(f"outbox       {b['outbox_batches']:,} batches awaiting PUBACK")
    counters = snap.get("counters") or {}
    dropped = counters.get("readings_dropped", 0)
    pending = "" if b is None else f", {b.get('dropped_pending', 0):,} not yet reported"
    lines.append(f"dropped      {dropped:,} since start{pending}")
    cert = snap.get("certificate") or {}
    if "error" in cert:
        lines.append(f"certificate  {cert.get('path')}: cannot read: {cert['error']}")
    elif cert:
        days = int(cert["days_left"])
        warn = " — EXPIRED" if days < 0 else (" — renew soon" if days < CERT_WARN_DAYS else "")
        expires = dt.datetime.fromtimestamp(cert["not_after"], tz=dt.UTC).strftime("%Y-%m-%d")
        lines.append(f"certificate  expires {expires} ({days} days left){warn}")
    lines.append("")
    lines.extend(_sensor_lines(snap, now))
    return "\n".join(lines)
