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
import itertools
import json
import logging
import math
import os
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography import x509

from drivers.wsn import NodeTable
from gateway import __version__
from gateway.cloudwatch import DROP_REASONS, CloudWatch
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
#: Remote settings, and refusals, listed at most in the status file (the rest counted).
SHADOW_ENTRIES = 20
#: Longest reason for a refusal kept in the status file.
REASON_CHARS = 200

#: What ``shadow.state`` says (docs/shadow.md).
SHADOW_OFF = "off"
SHADOW_WAITING = "waiting for the shadow service"
SHADOW_IN_SYNC = "in sync"
SHADOW_SILENT = "not answering"
SHADOW_REFUSED = "refused by the shadow service"
SHADOW_LEFT_OUT = "left out"

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


def _cut(text: str, limit: int = REASON_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _capped(entries: Mapping[str, Any]) -> tuple[dict[str, Any], int]:
    """The first SHADOW_ENTRIES of ``entries`` (keys and strings cut to REASON_CHARS: a
    desired state may hold anything), and how many were left out."""
    kept = {
        _cut(key): _cut(value) if isinstance(value, str) else value
        for key, value in itertools.islice(entries.items(), SHADOW_ENTRIES)
    }
    return kept, len(entries) - len(kept)


def shadow_facts(daemon: Daemon, now: float | None = None) -> dict[str, Any]:
    """What status shows of the device shadow (docs/shadow.md): its state, the remote
    settings in effect and what was refused and why. From memory only: it runs on the
    event loop every few seconds."""
    from gateway.publisher import LISTENER_STRIKES  # noqa: PLC0415 (the daemon has it)

    now = time.time() if now is None else now
    config = daemon.settings.shadow
    facts: dict[str, Any] = {
        "enabled": config.enabled,
        "name": config.name,  # None: the thing's classic shadow
        "state": SHADOW_WAITING if config.enabled else SHADOW_OFF,
        "reason": None,
        "since": None,
        "until": None,
        "version": None,
        "applied_time": None,
        "answered_time": None,
        "applied": {},
        "refused": {},
        "report_error": None,
    }
    agent = daemon.shadow
    if not config.enabled or agent is None:
        return facts
    applied, applied_left = _capped(agent.evaluation.applied)
    refused, refused_left = _capped(agent.evaluation.refused)
    facts.update(
        version=agent.remote.version,
        applied_time=agent.remote.applied_time,
        answered_time=agent.answered,
        applied=applied,
        refused=refused,
        report_error=agent.report_error,
    )
    if applied_left or refused_left:
        facts["omitted"] = {"applied": applied_left, "refused": refused_left}
    publisher = daemon.publisher
    # The publisher leaves the shadow out for a while when its topics keep costing the
    # connection (a policy without them); monotonic seconds.
    off_for = (publisher.listener_off_until if publisher else -math.inf) - time.monotonic()
    if off_for > 0:
        facts.update(
            state=SHADOW_LEFT_OUT,
            until=now + off_for,
            reason=(
                f"policy: the connection was lost {LISTENER_STRIKES} times in a row while "
                "subscribing to or publishing on the shadow topics; check that the "
                "certificate's policy allows them"
            ),
        )
    elif agent.silent_since is not None:
        facts.update(
            state=SHADOW_SILENT,
            since=agent.silent_since,
            reason=(
                "no answer to the get: a broker without the AWS IoT shadow service, or a "
                "policy without the shadow topics"
            ),
        )
    elif agent.get_refused is not None:
        facts.update(state=SHADOW_REFUSED, since=agent.get_refused, reason=agent.get_error)
    elif agent.synced is not None and publisher is not None and publisher.connected.is_set():
        facts.update(state=SHADOW_IN_SYNC, since=agent.synced)
    else:
        facts.update(since=agent.asked)
    return facts


def cloudwatch_facts(settings: Settings, cloud: CloudWatch | None) -> dict[str, Any]:
    """What status shows of CloudWatch Logs shipping: where to, the last upload, what
    waits (in memory and in the spool file) and what was lost, by reason. Counters
    only, no I/O: it runs on the event loop every few seconds."""
    cw = settings.cloudwatch
    facts: dict[str, Any] = {
        "enabled": cw.enabled,
        "log_group": cw.log_group,
        "log_stream": cw.log_stream.format(thing=settings.thing),
        "state": "off" if not cw.enabled else "not started",
        "last_upload_time": None,
        "delivered": 0,
        "queued": 0,
        "spool_events": 0,
        "spool_bytes": 0,
        "spool_cap_bytes": cw.spool_bytes,
        "dropped": dict.fromkeys(DROP_REASONS, 0),
        "dropped_total": 0,
        "last_error": None,
        "last_error_time": None,
    }
    if cloud is None:
        return facts
    shipper = cloud.shipper
    dropped = shipper.dropped()
    facts.update(
        log_group=shipper.log_group,
        log_stream=shipper.log_stream,
        state=shipper.state(),
        last_upload_time=shipper.last_upload,
        delivered=shipper.stats.delivered,
        queued=len(cloud.handler.queue),
        spool_events=shipper.spool.events,  # None until the spool file was first read
        spool_bytes=shipper.spool.bytes,
        spool_cap_bytes=shipper.spool.max_bytes,
        dropped=dropped,
        dropped_total=sum(dropped.values()),
        last_error=shipper.last_error,
        last_error_time=shipper.last_error_time,
    )
    return facts


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
        "shadow": shadow_facts(daemon, now),
        # the daemon's CloudWatch of this run (None when off, or not started yet)
        "cloudwatch": cloudwatch_facts(s, daemon.cloudwatch),
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


def _plural(n: int, what: str) -> str:
    return f"{n} {what}" if n == 1 else f"{n} {what}s"


def _shadow_phrase(sh: dict[str, Any], now: float) -> str:
    """``in sync (version 12, applied 3 h ago)``, ``not answering for 5 min``, ..."""
    state = phrase = str(sh.get("state"))
    since, until = sh.get("since"), sh.get("until")
    if state == SHADOW_SILENT and since is not None:
        phrase = f"not answering for {_duration(now - since)}"
    elif state == SHADOW_LEFT_OUT and until is not None:
        phrase = f"left out for {_duration(until - now)} more"
    details = []
    if sh.get("name"):
        details.append(f"named shadow {sh['name']}")
    if sh.get("version") is not None:
        details.append(f"version {sh['version']}")
    if sh.get("applied_time") is not None:
        details.append(f"applied {_ago(sh['applied_time'], now)}")
    return f"{phrase} ({', '.join(details)})" if details else phrase


def _shadow_lines(snap: Snapshot, now: float) -> list[str]:
    """``shadow       in sync (version 12, applied 3 h ago): 2 remote settings in effect,
    1 refused``, then why, the settings and the refusals, one a line."""
    sh = snap.get("shadow")
    if not sh:  # a daemon from before the shadow was shown
        return []
    if (sh.get("state") or SHADOW_OFF) == SHADOW_OFF:
        return ["shadow       off"]
    applied: dict[str, Any] = sh.get("applied") or {}
    refused: dict[str, Any] = sh.get("refused") or {}
    omitted = sh.get("omitted") or {}
    n_applied = len(applied) + int(omitted.get("applied", 0))
    n_refused = len(refused) + int(omitted.get("refused", 0))
    settings = _plural(n_applied, "remote setting") if n_applied else "no remote settings"
    counts = f"{settings} in effect"
    if n_refused:
        counts += f", {n_refused} refused"
    lines = [f"shadow       {_shadow_phrase(sh, now)}: {counts}"]
    notes: list[tuple[str, str]] = []
    if sh.get("reason"):
        notes.append(("why", str(sh["reason"])))
    notes.extend(("applied", f"{key}: {_value(value)}") for key, value in applied.items())
    if omitted.get("applied"):
        notes.append(("applied", f"… {omitted['applied']} more, not in the status file"))
    notes.extend(("refused", f"{key}: {reason}") for key, reason in refused.items())
    if omitted.get("refused"):
        notes.append(("refused", f"… {omitted['refused']} more, not in the status file"))
    if sh.get("report_error"):
        notes.append(("error", f"the shadow service refused the report: {sh['report_error']}"))
    lines.extend(f"  {label:<7}  {text}" for label, text in notes)
    return lines


def _size(n: int) -> str:
    if n < 1024:
        return f"{n} B"
    if n < 1024 * 1024:
        return f"{n / 1024:.1f} KiB"
    return f"{n / (1024 * 1024):.1f} MiB"


#: How the status line names each reason for lost log events.
_DROP_WORDS = {
    "queue_full": "queue full",
    "spool_over_cap": "spool over cap",
    "rejected_too_old": "rejected too old",
    "rejected_too_new": "too new",
    "rejected_expired": "expired",
}
_CLOUDWATCH_STATES = {
    "shipping": "shipping to",
    "not started": "not started yet, for",
    "failing": "UPLOAD FAILING, spooling for",
    "clock unsynchronised": "clock not synchronised, spooling for",
}


def _cloudwatch_lines(snap: Snapshot, now: float) -> list[str]:
    """``cloudwatch   shipping to /wsn-gateway/greenhouse-1, last upload 4 s ago, 0 waiting``,
    then what was dropped since start, by reason, and the last error."""
    cw = snap.get("cloudwatch")
    if not cw:  # a daemon from before CloudWatch was shown
        return []
    if not cw.get("enabled"):
        return ["cloudwatch   off"]
    state = str(cw.get("state"))
    doing = _CLOUDWATCH_STATES.get(state, f"{state},")
    where = f"{cw.get('log_group')}/{cw.get('log_stream')}"
    spooled = cw.get("spool_events")
    waiting = int(cw.get("queued") or 0) + int(spooled or 0)
    line = (
        f"cloudwatch   {doing} {where}, last upload {_ago(cw.get('last_upload_time'), now)}, "
        f"{waiting:,} waiting"
    )
    if spooled:
        cap = cw.get("spool_cap_bytes")
        of = f" of {_size(int(cap))}" if cap else ""
        line += f" ({spooled:,} in the spool, {_size(int(cw.get('spool_bytes') or 0))}{of})"
    lines = [line]
    dropped: dict[str, int] = cw.get("dropped") or {}
    total = int(cw.get("dropped_total") or sum(dropped.values()))
    if total:
        reasons = ", ".join(
            f"{_DROP_WORDS.get(reason, reason)} {count:,}"
            for reason, count in dropped.items()
            if count or reason in ("queue_full", "spool_over_cap", "rejected_too_old")
        )
        lines.append(f"  dropped  {total:,} log lines since start ({reasons})")
    else:
        lines.append("  dropped  0 log lines since start")
    if cw.get("last_error"):
        lines.append(f"  error    {cw['last_error']} ({_ago(cw.get('last_error_time'), now)})")
    return lines


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
    lines.extend(_cloudwatch_lines(snap, now))
    lines.extend(_shadow_lines(snap, now))
    lines.append("")
    lines.extend(_sensor_lines(snap, now))
    return "\n".join(lines)
