"""Logs and EMF metrics shipped straight to CloudWatch Logs.

- :class:`CloudWatchHandler` is a logging handler that only appends to a bounded
  in-memory queue (the oldest event goes, counted, when it is full): a log line
  never waits for the network or the disk.
- :class:`Shipper` takes the queue every few seconds and uploads it with
  PutLogEvents in batches within the API's limits (:func:`plan_batches`). While
  uploads fail, or the clock is not synchronised (SigV4 would fail), events go to
  a bounded spool file in the state directory and are uploaded first once the
  service answers again. Events CloudWatch rejects (too old, too new, expired) are
  counted and logged, not taken as delivered. boto3 runs on a worker thread.
  What was lost, by reason (:data:`DROP_REASONS`), is kept in plain counters that
  ``wsn-gateway status`` and the metrics read without any I/O.
- :class:`MetricsEmitter` writes one CloudWatch Embedded Metric Format event a
  minute (counters as deltas), to stdout for journald and to the shipper.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import math
import random
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway.clock import clock_synchronised
from gateway.credentials import IotCredentialsProvider, botocore_credentials
from gateway.logs import JsonFormatter
from gateway.workers import Worker

if TYPE_CHECKING:
    from gateway.config import Settings
    from gateway.metrics import Counters
    from gateway.polling import Poller

log = logging.getLogger(__name__)

#: PutLogEvents limits (CloudWatch Logs API reference).
MAX_BATCH_BYTES = 1_048_576
EVENT_OVERHEAD = 26
MAX_BATCH_EVENTS = 10_000
MAX_BATCH_SPAN_MS = 24 * 3600 * 1000
#: One event's message is cut to this many UTF-8 bytes (CloudWatch's event limit).
MAX_EVENT_BYTES = 256 * 1024 - EVENT_OVERHEAD
#: Events held in memory between uploads; beyond it the oldest are dropped, counted.
QUEUE_EVENTS = 20_000
#: Retry back-off after a failed upload, seconds.
BACKOFF_MIN = 2.0
BACKOFF_MAX = 300.0
#: Why log events were lost, in the order status and the metrics list them: the
#: in-memory queue was full, the spool file over its cap, or CloudWatch rejected them.
DROP_REASONS = (
    "queue_full",
    "spool_over_cap",
    "rejected_too_old",
    "rejected_too_new",
    "rejected_expired",
)
#: The ``Reason`` dimension of the ``LogEventsDropped`` metric for each reason.
DROP_METRIC_REASONS = {
    "queue_full": "QueueFull",
    "spool_over_cap": "SpoolOverCap",
    "rejected_too_old": "TooOld",
    "rejected_too_new": "TooNew",
    "rejected_expired": "Expired",
}
#: Longest error message kept for status.
ERROR_CHARS = 300
#: Loggers whose own chatter about a failing upload must not feed the queue.
_QUIET = ("botocore", "boto3", "urllib3", "s3transfer")


@dataclass(frozen=True)
class LogEvent:
    """One CloudWatch log event: milliseconds since the epoch and the message."""

    timestamp: int
    message: str

    @property
    def size(self) -> int:
        """Bytes it counts for in a PutLogEvents call."""
        return len(self.message.encode("utf-8")) + EVENT_OVERHEAD


def _truncate(message: str) -> str:
    data = message.encode("utf-8")
    if len(data) <= MAX_EVENT_BYTES:
        return message
    return data[: MAX_EVENT_BYTES - 20].decode("utf-8", "ignore") + " …[truncated]"


def plan_batches(
    events: Iterable[LogEvent],
    *,
    max_bytes: int = MAX_BATCH_BYTES,
    max_events: int = MAX_BATCH_EVENTS,
    max_span_ms: int = MAX_BATCH_SPAN_MS,
) -> list[list[LogEvent]]:
    """Split events into PutLogEvents calls: each chronological, at most ``max_events``
    events and ``max_bytes`` (UTF-8 message bytes + 26 per event), spanning at most
    ``max_span_ms``. The sort is stable: events of the same millisecond keep their order."""
    batches: list[list[LogEvent]] = []
    current: list[LogEvent] = []
    size = 0
    for event in sorted(events, key=lambda e: e.timestamp):
        cost = event.size
        if current and (
            len(current) >= max_events
            or size + cost > max_bytes
            or event.timestamp - current[0].timestamp > max_span_ms
        ):
            batches.append(current)
            current, size = [], 0
        current.append(event)
        size += cost
    if current:
        batches.append(current)
    return batches


def count_rejected(info: dict[str, int] | None, total: int) -> dict[str, int]:
    """Events of one call that ``rejectedLogEventsInfo`` reports: too old and expired
    end indexes are exclusive, the too-new start index inclusive (API reference)."""
    if not info:
        return {}
    counts = {}
    if "tooOldLogEventEndIndex" in info:
        counts["too_old"] = min(total, int(info["tooOldLogEventEndIndex"]))
    if "expiredLogEventEndIndex" in info:
        counts["expired"] = min(total, int(info["expiredLogEventEndIndex"]))
    if "tooNewLogEventStartIndex" in info:
        counts["too_new"] = max(0, total - int(info["tooNewLogEventStartIndex"]))
    return {key: value for key, value in counts.items() if value}


class CloudWatchHandler(logging.Handler):
    """Formats records as JSON lines and appends them to a bounded queue; never blocks."""

    def __init__(self, capacity: int = QUEUE_EVENTS) -> None:
        super().__init__()
        self.setFormatter(JsonFormatter())
        self.queue: deque[LogEvent] = deque(maxlen=capacity)
        self.dropped = 0

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.startswith(_QUIET) and record.levelno < logging.ERROR:
            return False
        return bool(super().filter(record))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = self.format(record)
        except Exception:  # a handler must never raise into the caller
            self.handleError(record)
            return
        self.put(LogEvent(int(record.created * 1000), message))

    def put(self, event: LogEvent) -> None:
        """Queue one event (the oldest one goes when the queue is full)."""
        if len(self.queue) == self.queue.maxlen:
            self.dropped += 1
        self.queue.append(event)

    def take(self) -> list[LogEvent]:
        """Everything queued so far."""
        taken = []
        with contextlib.suppress(IndexError):
            while True:
                taken.append(self.queue.popleft())
        return taken


def _line(event: LogEvent) -> str:
    return json.dumps([event.timestamp, event.message], ensure_ascii=False) + "\n"


class Spool:
    """A bounded JSON-lines file of events not yet uploaded (blocking: worker thread).

    ``events`` and ``bytes`` say what the file holds, kept up to date by every method
    here, so that status can read them from the event loop without touching the disk;
    None until the file was first read or written (:meth:`read` counts a spool left by
    an earlier run)."""

    def __init__(self, path: Path, max_bytes: int) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.dropped = 0
        self.events: int | None = None
        self.bytes: int | None = None

    def size(self) -> int:
        try:
            return self.path.stat().st_size
        except FileNotFoundError:
            return 0

    def append(self, events: Sequence[LogEvent]) -> None:
        """Add events; when the file would exceed its cap, the oldest go, counted."""
        if not events:
            return
        if self.events is None:
            self.read()  # count what an earlier run left
        lines = [_line(e) for e in events]
        added = sum(len(line.encode("utf-8")) for line in lines)
        if self.size() + added <= self.max_bytes:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a", encoding="utf-8") as f:
                f.writelines(lines)
            self.events = (self.events or 0) + len(lines)
            self.bytes = self.size()
            return
        kept = [_line(e) for e in self.read()]
        kept += lines
        total = sum(len(line.encode("utf-8")) for line in kept)
        start = 0
        while total > self.max_bytes and start < len(kept):
            total -= len(kept[start].encode("utf-8"))
            start += 1
        self.dropped += start
        self._rewrite(kept[start:])

    def read(self) -> list[LogEvent]:
        """Every spooled event; a damaged line (power cut mid-write) is skipped."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            self.events, self.bytes = 0, 0
            return []
        events = []
        for line in data.decode("utf-8", errors="replace").splitlines():
            try:
                timestamp, message = json.loads(line)
                events.append(LogEvent(int(timestamp), str(message)))
            except (ValueError, TypeError):
                continue
        self.events, self.bytes = len(events), len(data)
        return events

    def replace(self, events: Sequence[LogEvent]) -> None:
        """Keep only ``events`` (what is left after a partial upload)."""
        self._rewrite([_line(e) for e in events])

    def _rewrite(self, lines: list[str]) -> None:
        if not lines:
            self.path.unlink(missing_ok=True)
            self.events, self.bytes = 0, 0
            return
        data = "".join(lines).encode("utf-8")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_bytes(data)
        tmp.replace(self.path)
        self.events, self.bytes = len(lines), len(data)


@dataclass
class ShipperStats:
    """What the shipper has done since start."""

    delivered: int = 0
    rejected_too_old: int = 0
    rejected_too_new: int = 0
    rejected_expired: int = 0
    failures: int = 0
    calls: int = 0


class Shipper:
    """Uploads the handler's events to one log stream, spooling while it cannot."""

    def __init__(
        self,
        handler: CloudWatchHandler,
        *,
        client_factory: Callable[[], Any],
        log_group: str,
        log_stream: str,
        spool: Spool,
        synced: Callable[[], bool],
        flush_interval: float = 5.0,
    ) -> None:
        self.handler = handler
        self._client_factory = client_factory
        self._client: Any = None
        self.log_group = log_group
        self.log_stream = log_stream
        self.spool = spool
        self.synced = synced
        self.flush_interval = flush_interval
        self.stats = ShipperStats()
        self.worker = Worker("cloudwatch")
        self._ready = False  # group and stream known to exist
        self._backoff = 0.0
        self._next_try = 0.0
        self._unsynced_logged = False
        self._lock = asyncio.Lock()
        #: For status (wall clock, UNIX s): the last PutLogEvents call that succeeded,
        #: and the error of the last round when it failed (None once one succeeds).
        self.last_upload: float | None = None
        self.last_error: str | None = None
        self.last_error_time: float | None = None
        #: Whether the last round found the clock unsynchronised (so nothing went).
        self.unsynced = False

    def dropped(self) -> dict[str, int]:
        """Log events lost since start, by reason (:data:`DROP_REASONS`)."""
        return {
            "queue_full": self.handler.dropped,
            "spool_over_cap": self.spool.dropped,
            "rejected_too_old": self.stats.rejected_too_old,
            "rejected_too_new": self.stats.rejected_too_new,
            "rejected_expired": self.stats.rejected_expired,
        }

    def state(self) -> str:
        """``shipping``, ``failing`` (the last upload failed: spooling, retrying) or
        ``clock unsynchronised`` (spooling until it is)."""
        if self.unsynced:
            return "clock unsynchronised"
        return "failing" if self.last_error is not None else "shipping"

    # --- blocking part, on the worker thread ----------------------------------------
    def _client_now(self) -> Any:
        if self._client is None:
            self._client = self._client_factory()
        return self._client

    def _ensure_stream(self) -> None:
        client = self._client_now()
        try:
            client.create_log_group(logGroupName=self.log_group)
        except client.exceptions.ResourceAlreadyExistsException:
            pass
        except client.exceptions.ClientError as err:
            # A least-privilege role (cloud/template.yaml) may not create groups: the
            # stack made it. If it is really missing, creating the stream says so.
            if err.response.get("Error", {}).get("Code") != "AccessDeniedException":
                raise
        with contextlib.suppress(client.exceptions.ResourceAlreadyExistsException):
            client.create_log_stream(logGroupName=self.log_group, logStreamName=self.log_stream)
        self._ready = True

    def _put(self, batch: list[LogEvent]) -> dict[str, int]:
        client = self._client_now()
        if not self._ready:
            self._ensure_stream()
        request = {
            "logGroupName": self.log_group,
            "logStreamName": self.log_stream,
            "logEvents": [{"timestamp": e.timestamp, "message": e.message} for e in batch],
        }
        try:
            response = client.put_log_events(**request)
        except client.exceptions.ResourceNotFoundException:
            self._ensure_stream()  # deleted meanwhile
            response = client.put_log_events(**request)
        self.stats.calls += 1
        self.last_upload = time.time()
        return count_rejected(response.get("rejectedLogEventsInfo"), len(batch))

    def _upload(self, fresh: list[LogEvent]) -> tuple[list[dict[str, int]], Exception | None]:
        """Upload the spool, then ``fresh``. What cannot be sent stays in the spool."""
        spooled = self.spool.read()
        batches = plan_batches([*spooled, *fresh])
        results: list[dict[str, int]] = []
        for index, batch in enumerate(batches):
            try:
                rejected = self._put(batch)
            except Exception as err:  # botocore raises many kinds
                rest = [e for b in batches[index:] for e in b]
                self.spool.replace([])
                self.spool.append(rest)
                return results, err
            results.append({"sent": len(batch), **rejected})
        if spooled:
            self.spool.replace([])
        return results, None

    # --- event loop part ------------------------------------------------------------
    async def ship(self) -> None:
        """One round: upload what is queued (and spooled), or spool it."""
        async with self._lock:
            fresh = [LogEvent(e.timestamp, _truncate(e.message)) for e in self.handler.take()]
            now = time.monotonic()
            self.unsynced = not self.synced()
            if self.unsynced:
                if not self._unsynced_logged:
                    log.warning(
                        "cloudwatch: the clock is not synchronised; logs are spooled "
                        "until it is (AWS refuses requests signed with a wrong time)"
                    )
                    self._unsynced_logged = True
                await self.worker.run(self.spool.append, fresh)
                return
            self._unsynced_logged = False
            if now < self._next_try:
                await self.worker.run(self.spool.append, fresh)
                return
            if not fresh and self.spool.events == 0:  # counted, not looked up: no I/O here
                return
            results, error = await self.worker.run(self._upload, fresh)
            self._account(results)
            if error is not None:
                self.stats.failures += 1
                text = str(error) or type(error).__name__
                self.last_error = text if len(text) <= ERROR_CHARS else text[:ERROR_CHARS] + "…"
                self.last_error_time = time.time()
                self._backoff = min(BACKOFF_MAX, max(BACKOFF_MIN, self._backoff * 2))
                delay = random.uniform(self._backoff / 2, self._backoff)
                self._next_try = time.monotonic() + delay
                log.warning(
                    "cloudwatch: upload failed; logs are spooled and sent later",
                    extra={"error": str(error), "retry_in_seconds": round(delay, 1)},
                )
            else:
                self._backoff = 0.0
                self._next_try = 0.0
                self.last_error = None

    def _account(self, results: list[dict[str, int]]) -> None:
        for result in results:
            rejected = {k: v for k, v in result.items() if k != "sent"}
            self.stats.delivered += result["sent"] - sum(rejected.values())
            if rejected:
                self.stats.rejected_too_old += rejected.get("too_old", 0)
                self.stats.rejected_too_new += rejected.get("too_new", 0)
                self.stats.rejected_expired += rejected.get("expired", 0)
                log.warning(
                    "cloudwatch: log events rejected (their time is outside what "
                    "CloudWatch accepts)",
                    extra={"rejected": rejected},
                )

    async def run(self) -> None:
        """Ship every ``flush_interval`` seconds, forever."""
        with contextlib.suppress(OSError):  # count a spool an earlier run left, for status
            await self.worker.run(self.spool.read)
        while True:
            await asyncio.sleep(self.flush_interval)
            await self.ship()

    async def flush(self, timeout: float = 5.0) -> None:
        """A last round at a stop: what cannot go now stays in the spool."""
        self._next_try = 0.0
        try:
            async with asyncio.timeout(timeout):
                await self.ship()
        except TimeoutError:
            # The upload is stuck in the network: keep what is still queued.
            leftover = self.handler.take()
            self.spool.append(leftover)

    def close(self) -> None:
        self.worker.shutdown()


# --------------------------------------------------------------------------- metrics


def _percentile(samples: Sequence[float], q: float) -> float:
    ordered = sorted(samples)
    index = min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))
    return ordered[index]


def emf_event(
    namespace: str,
    dimensions: dict[str, str],
    metrics: dict[str, tuple[float, str]],
    timestamp_ms: int,
) -> dict[str, Any]:
    """One Embedded Metric Format object: ``metrics`` maps name to (value, unit)."""
    return {
        "_aws": {
            "Timestamp": timestamp_ms,
            "CloudWatchMetrics": [
                {
                    "Namespace": namespace,
                    "Dimensions": [list(dimensions)],
                    "Metrics": [
                        {"Name": name, "Unit": unit} for name, (_, unit) in metrics.items()
                    ],
                }
            ],
        },
        **dimensions,
        **{name: value for name, (value, _) in metrics.items()},
    }


class MetricsEmitter:
    """Once per interval: EMF events with per-interval deltas of the daemon's counters.

    ``log_drops`` gives the log events lost so far by reason (:meth:`Shipper.dropped`):
    their total goes out as ``LogEventsDropped`` every interval (0 included, so that an
    alarm has data), and each reason that lost some in the interval as
    ``LogEventsDropped`` with the dimension ``Reason`` as well."""

    def __init__(
        self,
        *,
        thing: str,
        namespace: str,
        interval: float,
        counters: Counters,
        pollers: Callable[[], Sequence[Poller]],
        latencies: Callable[[], list[float]],
        buffer_state: Callable[[], Any],
        sink: Callable[[LogEvent], None],
        log_drops: Callable[[], dict[str, int]] = dict,
    ) -> None:
        self.thing = thing
        self.namespace = namespace
        self.interval = interval
        self.counters = counters
        self.pollers = pollers
        self.latencies = latencies
        self.buffer_state = buffer_state
        self.sink = sink
        self.log_drops = log_drops
        self._last = counters.snapshot()
        self._last_sensor: dict[str, int] = {}
        self._last_drops = log_drops()

    async def emit(self) -> list[dict[str, Any]]:
        """Build and write the events of one interval; returns them."""
        now = time.time()
        stamp = int(now * 1000)
        snap = self.counters.snapshot()
        delta = {k: snap[k] - self._last.get(k, 0) for k in snap}
        self._last = snap
        depth, oldest = await self.buffer_state()
        metrics: dict[str, tuple[float, str]] = {
            "ReadingsTaken": (delta["readings_taken"], "Count"),
            "ReadingsPublished": (delta["readings_acked"], "Count"),
            "Batches": (delta["batches_acked"], "Count"),
            "BufferDepth": (depth, "Count"),
            "OldestBufferedAge": (max(0.0, round(now - oldest, 3)) if oldest else 0.0, "Seconds"),
            "Dropped": (delta["readings_dropped"], "Count"),
            "Reconnects": (delta["connects"], "Count"),
            "ConnectFailures": (delta["connect_failures"], "Count"),
            "SensorErrors": (delta["sensor_errors"], "Count"),
        }
        drops = self.log_drops()
        lost = {
            reason: max(0, count - self._last_drops.get(reason, 0))
            for reason, count in drops.items()
        }
        self._last_drops = drops
        metrics["LogEventsDropped"] = (sum(lost.values()), "Count")
        samples = self.latencies()
        if samples:
            metrics["PublishLatencyP50"] = (
                round(_percentile(samples, 0.5) * 1000, 1),
                "Milliseconds",
            )
            metrics["PublishLatencyP99"] = (
                round(_percentile(samples, 0.99) * 1000, 1),
                "Milliseconds",
            )
        events = [emf_event(self.namespace, {"Thing": self.thing}, metrics, stamp)]
        events.extend(
            emf_event(
                self.namespace,
                {"Thing": self.thing, "Reason": DROP_METRIC_REASONS.get(reason, reason)},
                {"LogEventsDropped": (count, "Count")},
                stamp,
            )
            for reason, count in lost.items()
            if count
        )
        for poller in self.pollers():
            errors = poller.status.errors
            previous = self._last_sensor.get(poller.name, 0)
            self._last_sensor[poller.name] = errors
            sensor_metrics: dict[str, tuple[float, str]] = {
                "SensorErrors": (max(0, errors - previous), "Count")
            }
            silent = _node_silences(poller)
            if silent is not None:
                sensor_metrics["NodeSilences"] = (silent, "Count")
            events.append(
                emf_event(
                    self.namespace,
                    {"Thing": self.thing, "Sensor": poller.name},
                    sensor_metrics,
                    stamp,
                )
            )
        for event in events:
            line = json.dumps(event, separators=(",", ":"))
            with contextlib.suppress(OSError, ValueError):
                sys.stdout.write(line + "\n")
                sys.stdout.flush()
            self.sink(LogEvent(stamp, line))
        return events

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.emit()
            except Exception as err:  # metrics must never stop the daemon
                log.warning("metrics: cannot emit", extra={"error": repr(err)})


def _node_silences(poller: Poller) -> int | None:
    """Nodes of a WSN coordinator currently missing, when the driver keeps a node table."""
    nodes = getattr(poller.driver, "nodes", None)
    missing = getattr(nodes, "missing", None)
    if missing is None or callable(missing):
        return None
    try:
        return len(missing)
    except TypeError:
        return None


# --------------------------------------------------------------------------- wiring


def logs_client_factory(
    settings: Settings, context_factory: Callable[[], Any]
) -> Callable[[], Any]:
    """A function (run on the worker thread) that makes the boto3 CloudWatch Logs client,
    with credentials from the AWS IoT credentials provider when a role alias is set,
    else from boto3's default chain."""
    cw = settings.cloudwatch

    def make() -> Any:
        try:
            import boto3  # noqa: PLC0415 - optional: pip install 'wsn-gateway[aws]'
            import botocore.session  # noqa: PLC0415
        except ImportError as err:
            raise RuntimeError(
                "cloudwatch.enabled needs boto3: pip install 'wsn-gateway[aws]'"
            ) from err
        session = botocore.session.get_session()
        if cw.role_alias is not None and cw.credentials_endpoint is not None:
            provider = IotCredentialsProvider(
                endpoint=cw.credentials_endpoint,
                role_alias=cw.role_alias,
                thing=settings.thing,
                context=context_factory(),
            )
            session._credentials = botocore_credentials(provider)
        return boto3.Session(botocore_session=session).client(
            "logs", region_name=cw.region_name(settings), endpoint_url=cw.endpoint_url
        )

    return make


class CloudWatch:
    """The handler, shipper and metrics of one daemon run: :meth:`start`, :meth:`stop`."""

    def __init__(
        self,
        settings: Settings,
        *,
        counters: Counters,
        pollers: Callable[[], Sequence[Poller]],
        latencies: Callable[[], list[float]],
        buffer_state: Callable[[], Any],
        context_factory: Callable[[], Any],
        client_factory: Callable[[], Any] | None = None,
    ) -> None:
        cw = settings.cloudwatch
        self.handler = CloudWatchHandler()
        self.shipper = Shipper(
            self.handler,
            client_factory=client_factory or logs_client_factory(settings, context_factory),
            log_group=cw.log_group,
            log_stream=cw.log_stream.format(thing=settings.thing),
            spool=Spool(settings.state_dir / "cloudwatch-spool.jsonl", cw.spool_bytes),
            synced=lambda: clock_synchronised(settings.clock),
            flush_interval=cw.flush_interval,
        )
        self.metrics = MetricsEmitter(
            thing=settings.thing,
            namespace=cw.metrics_namespace,
            interval=cw.metrics_interval,
            counters=counters,
            pollers=pollers,
            latencies=latencies,
            buffer_state=buffer_state,
            sink=self.handler.put,
            log_drops=self.shipper.dropped,
        )
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        """Attach the handler to the root logger and start shipping and metrics."""
        logging.getLogger().addHandler(self.handler)
        self._tasks = [
            asyncio.create_task(self.shipper.run(), name="cloudwatch-shipper"),
            asyncio.create_task(self.metrics.run(), name="cloudwatch-metrics"),
        ]

    async def stop(self) -> None:
        """Stop the tasks, upload what is left (or spool it) and detach the handler."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        logging.getLogger().removeHandler(self.handler)
        try:
            await self.shipper.flush()
        finally:
            self.shipper.close()


def for_daemon(daemon: Any, target: Any, *, run_in_worker: Callable[..., Any]) -> CloudWatch:
    """CloudWatch for a running :class:`gateway.daemon.Daemon` and its MQTT target (whose
    certificate and key also authenticate to the credentials provider)."""
    from gateway.publisher import tls_context  # noqa: PLC0415 - avoids an import cycle

    def latencies() -> list[float]:
        publisher = daemon.publisher
        if publisher is None:
            return []
        samples = list(publisher.latencies)
        publisher.latencies.clear()
        return samples

    async def buffer_state() -> tuple[int, float | None]:
        buffer = daemon.buffer
        if buffer is None:
            return 0, None
        oldest = await run_in_worker(buffer.oldest, 1)
        return buffer.count, oldest[0].reading.time if oldest else None

    return CloudWatch(
        daemon.settings,
        counters=daemon.counters,
        pollers=lambda: daemon.pollers,
        latencies=latencies,
        buffer_state=buffer_state,
        context_factory=lambda: tls_context(dataclasses.replace(target, alpn=False)),
    )
