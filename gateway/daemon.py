"""Wires sensors, buffer, sealer and publisher together and owns their lifecycle.

SIGTERM/SIGINT: polling stops, what is buffered is sealed and published
within the grace period, the rest stays safely in the buffer. SIGHUP: the
configuration is read again and every part restarted on it; buffered data
stays where it is (a bad new configuration is logged and the old one kept).

With ``shadow.enabled``, the device shadow's desired state changes poll intervals,
batch limits and the log level in the running parts, without a restart
(gateway/shadow.py); those remote settings apply over the file's, at start-up and
after every reload too.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import signal
import sqlite3
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.buffer import Buffer, Buffered, BufferFull, is_disk_full
from gateway.buses import Buses
from gateway.clock import ClockWatch, clock_synchronised
from gateway.cloudwatch import CloudWatch, for_daemon
from gateway.config import Settings, load_settings
from gateway.envelope import RecordTooLarge, Sealed, Sealer
from gateway.errors import ConfigError, GatewayError
from gateway.gpio import LedState, Pins, drive_status_led, open_pins, power_cycle
from gateway.metrics import Counters
from gateway.notify import Notifier
from gateway.polling import Health, Poller
from gateway.publisher import Listener, MqttTarget, Publisher, tls_context
from gateway.readings import Reading
from gateway.sensors import open_sensor
from gateway.shadow import (
    RemoteConfig,
    ShadowAgent,
    ShadowTopics,
    evaluate,
    state_path,
    write_json_atomically,
)
from gateway.signing import Signer, certificate_signer, load_or_create_ed25519
from gateway.status import StatusWriter, write_path
from gateway.workers import Worker

log = logging.getLogger(__name__)

#: Seconds SIGTERM allows for sealing and publishing what is buffered.
STOP_GRACE = 10.0
#: Readings held in memory while the disk is full; older ones are dropped, counted.
MAX_HELD = 100_000
#: A status line with the counters goes to the log this often (seconds).
STATUS_EVERY = 60.0
#: STATUS= goes to the service manager this often (seconds), when it listens.
NOTIFY_STATUS_EVERY = 5.0
#: Until the first batch is sealed, a record is assumed to take this many bytes.
FIRST_RECORD_ESTIMATE = 60


def make_signer(settings: Settings) -> Signer:
    """The configured signing key: the gateway's Ed25519 key or the certificate's."""
    if settings.signing.key == "certificate":
        return certificate_signer(settings.mqtt.cert, settings.mqtt.key)
    return load_or_create_ed25519(settings.signing_key_path)


def mqtt_target(settings: Settings) -> MqttTarget:
    """Connection parameters from the settings."""
    m = settings.mqtt
    return MqttTarget(
        thing=settings.thing,
        host=m.endpoint,
        port=m.port,
        ca=m.ca,
        cert=m.cert,
        key=m.key,
        alpn=m.alpn_enabled,
        keepalive=m.keepalive,
        topic=settings.telemetry_topic,
        status_topic=settings.status_topic,
        max_inflight=m.max_inflight,
        messages_per_second=m.messages_per_second,
        bytes_per_second=m.bytes_per_second,
        reconnect_min=m.reconnect_min,
        reconnect_max=m.reconnect_max,
        connect_timeout=m.connect_timeout,
        publish_timeout=m.publish_timeout,
    )


@dataclass
class _Age:
    """When each group commit landed (monotonic), to seal partial batches on age
    without trusting the wall clock."""

    commits: deque[list[float]] = field(default_factory=deque)

    def add(self, count: int, at: float) -> None:
        self.commits.append([at, count])

    def sealed(self, count: int, *, newest: bool = False) -> None:
        """Forget ``count`` sealed readings: the oldest commits', or the newest
        commits' when a live batch took the newest readings."""
        while count and self.commits:
            head = self.commits[-1] if newest else self.commits[0]
            take = min(count, int(head[1]))
            head[1] -= take
            count -= take
            if head[1] <= 0:
                if newest:
                    self.commits.pop()
                else:
                    self.commits.popleft()

    def oldest(self) -> float | None:
        return self.commits[0][0] if self.commits else None


class Daemon:
    """The running gateway: one instance per process."""

    def __init__(
        self,
        settings: Settings,
        *,
        counters: Counters | None = None,
        overrides: Mapping[str, Any] | None = None,
    ) -> None:
        #: The settings in effect: the file's, with remote ones (the shadow) over them.
        self.settings = settings
        self._file_settings = settings
        self._next_file: Settings | None = None
        self._remote: RemoteConfig | None = None
        self._log_level: str = settings.logging.level  # what the command line set up
        self._overrides = overrides
        self.counters = counters or Counters()
        self.pollers: list[Poller] = []
        self.unavailable: dict[str, str] = {}
        self.publisher: Publisher | None = None
        #: The device shadow's agent of this run (None unless ``shadow.enabled``).
        self.shadow: ShadowAgent | None = None
        self.buffer: Buffer | None = None
        self.ready = asyncio.Event()
        self._worker = Worker("buffer")
        self._pending: list[Reading] = []
        self._commit_lock = asyncio.Lock()
        self._stop = asyncio.Event()
        self._reload = asyncio.Event()
        self._seal_wake = asyncio.Event()
        self._age = _Age()
        self._record_bytes = float(FIRST_RECORD_ESTIMATE)
        self._sealer: Sealer | None = None
        self._lost_in_memory = 0
        self._full_logged = -math.inf
        self.disk_full = False
        self._live_turn = False  # only touched on the buffer's worker thread
        self._last_live = False  # whether the last sealed batch took the newest readings
        self._clock = ClockWatch()
        self._next_settings: Settings | None = None
        self.notifier = Notifier()
        self._cloud: CloudWatch | None = None

    @property
    def cloudwatch(self) -> CloudWatch | None:
        """The CloudWatch Logs shipper of this run, when ``cloudwatch.enabled``."""
        return self._cloud

    # --- signals --------------------------------------------------------------------
    def request_stop(self) -> None:
        """Stop gracefully (SIGTERM, SIGINT)."""
        self.notifier.stopping()
        self._stop.set()

    def request_reload(self) -> None:
        """Re-read the configuration (SIGHUP)."""
        self.notifier.reloading()
        self._reload.set()

    def _install_signals(self) -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self.request_stop)
        loop.add_signal_handler(signal.SIGINT, self.request_stop)
        loop.add_signal_handler(signal.SIGHUP, self.request_reload)

    # --- lifecycle ------------------------------------------------------------------
    async def run(self, *, handle_signals: bool = True) -> None:
        """Run until stopped; a reload restarts every part on the new settings."""
        if handle_signals:
            self._install_signals()
        notify = asyncio.create_task(self._notify_loop(), name="notify")
        try:
            # The remote settings last applied hold from the start, before any connect.
            self.settings = self._effective(self._file_settings)
            while True:
                self._set_log_level(self.settings.logging.level)
                await self._run_once()
                if self._stop.is_set():
                    return
                assert self._next_settings is not None and self._next_file is not None
                self.settings, self._next_settings = self._next_settings, None
                self._file_settings, self._next_file = self._next_file, None
                log.info("configuration reloaded", extra={"path": str(self.settings.source)})
        finally:
            await _cancel([notify])
            self.notifier.close()
            self._worker.shutdown()

    def _accept_reload(self) -> bool:
        """Read the configuration again (SIGHUP). True when it can be used: every part
        then restarts on it. Otherwise the error is logged and the running parts carry
        on with the old one, so that a typo in a reload never stops the readings."""
        self._reload.clear()
        assert self.settings.source is not None
        try:
            settings = load_settings(self.settings.source, self._overrides)
            # What start-up would refuse: the signing key, the certificate and its key.
            make_signer(settings)
            tls_context(mqtt_target(settings))
        except ConfigError as err:
            log.error(
                "reload refused: the new configuration is invalid; keeping the old one",
                extra={"problems": err.problems},
            )
            self.notifier.ready()  # carrying on as before
            return False
        except GatewayError as err:
            log.error(
                "reload refused: the new configuration cannot be used; keeping the old one",
                extra={"error": str(err)},
            )
            self.notifier.ready()  # carrying on as before
            return False
        self._next_file = settings
        # The remote settings apply over the new file's too (refused where they no
        # longer fit it, e.g. a sensor that is gone).
        self._next_settings = self._effective(settings)
        return True

    # --- remote settings (the device shadow) ----------------------------------------
    def _effective(self, settings: Settings) -> Settings:
        """``settings`` (the file's) with the remote settings over them, when
        ``shadow.enabled``: the desired state last applied, kept in state_dir."""
        if not settings.shadow.enabled:
            return settings
        topics = ShadowTopics.of(settings.thing, settings.shadow.name)
        path = state_path(settings)
        remote = self._remote
        if remote is None or remote.topics != topics or remote.path != path:
            remote = self._remote = RemoteConfig.load(path, topics)
        evaluation = evaluate(remote.desired, settings)
        if evaluation.applied:
            log.info(
                "shadow: remote settings apply over the configuration file",
                extra={"applied": evaluation.applied, "version": remote.version},
            )
        if evaluation.refused:
            log.warning(
                "shadow: remote settings refused",
                extra={"refused": evaluation.refused, "version": remote.version},
            )
        return evaluation.settings

    def _make_publisher(self, target: MqttTarget) -> tuple[Publisher, ShadowAgent | None]:
        """The publisher of this run and, when ``shadow.enabled``, the shadow's agent that
        listens on its connection (AWS IoT allows one connection per client id)."""
        remote = self._remote
        shadow = None
        if self._file_settings.shadow.enabled and remote is not None:
            shadow = ShadowAgent(
                remote,
                self._file_settings,
                send=self._shadow_send,
                apply=self._apply_remote,
                persist=self._save_remote,
            )
        publisher = Publisher(
            target,
            fetch=self._fetch,
            ack=self._acked,
            counters=self.counters,
            listener=None
            if shadow is None
            else Listener(shadow.subscriptions, shadow.message, shadow.subscribed),
        )
        return publisher, shadow

    async def _shadow_send(self, topic: str, payload: bytes) -> None:
        assert self.publisher is not None
        await self.publisher.send(topic, payload)

    async def _save_remote(self, path: Path, data: dict[str, Any]) -> None:
        # Not on the buffer's worker: an fsync on a slow SD card must not delay it.
        await asyncio.to_thread(write_json_atomically, path, data)

    def _apply_remote(self, settings: Settings) -> None:
        """Settings changed through the shadow take effect in the running parts: the
        poll intervals, the batch limits, the log level. Nothing restarts."""
        old, self.settings = self.settings, settings
        intervals = {sensor.name: sensor.interval for sensor in settings.sensors}
        for poller in self.pollers:
            interval = intervals.get(poller.name)
            if interval is not None and interval != poller.interval:
                poller.set_interval(interval)
        sealer = self._sealer
        if settings.batch != old.batch and sealer is not None:
            # A new sealer rather than new limits on the old one: a seal in progress on
            # the buffer's thread goes on with the limits it started with.
            self._sealer = Sealer(
                thing=sealer.thing,
                signer=sealer.signer,
                max_bytes=settings.batch.max_bytes,
                max_records=settings.batch.max_records,
            )
            self._seal_wake.set()  # smaller limits may make a batch due now
        self._set_log_level(settings.logging.level)

    def _set_log_level(self, level: str) -> None:
        """The level of the gateway's own loggers (those gateway.logs.setup_logging sets)."""
        if level == self._log_level:
            return
        for name in ("gateway", "drivers"):
            logging.getLogger(name).setLevel(level.upper())
        self._log_level = level

    async def _run_once(self) -> None:
        s = self.settings
        self._age = _Age()  # the backlog is re-counted from the buffer below
        signer = make_signer(s)
        self._sealer = Sealer(
            thing=s.thing,
            signer=signer,
            max_bytes=s.batch.max_bytes,
            max_records=s.batch.max_records,
        )
        target = mqtt_target(s)
        self.buffer = await self._worker.run(Buffer, s.buffer_path, max_bytes=s.buffer.max_bytes)
        buffer = self.buffer
        backlog = buffer.count
        if backlog:
            self._age.add(backlog, float("-inf"))  # left from before: due at once
        self.publisher, self.shadow = self._make_publisher(target)
        self._cloud = self._start_cloudwatch(target)  # logs from here on are shipped too
        buses = Buses()
        pins = self._open_pins()
        self.pollers = self._make_pollers(buses, pins)
        log.info(
            "started",
            extra={
                "thing": s.thing,
                "sensors": [p.name for p in self.pollers],
                "buffered": backlog,
                "stream": buffer.chain().stream,
                "signing": {"alg": signer.alg, "kid": signer.kid},
            },
        )
        tasks = [asyncio.create_task(p.run(), name=f"poll:{p.name}") for p in self.pollers]
        core = [
            asyncio.create_task(self.publisher.run(), name="publisher"),
            asyncio.create_task(self._commit_loop(), name="commit"),
            asyncio.create_task(self._seal_loop(), name="seal"),
            asyncio.create_task(self._status_loop(), name="status"),
            # status.json every few seconds, and "stopped" when cancelled at a stop
            asyncio.create_task(
                StatusWriter(
                    self, write_path(s), run_in_worker=self._worker.run, stopping=self._stop.is_set
                ).run(),
                name="status-file",
            ),
            # the device shadow, over the publisher's connection
            *([asyncio.create_task(self.shadow.run(), name="shadow")] if self.shadow else []),
        ]
        led = s.gpio.status_led
        if led is not None and pins is not None:
            core.append(
                asyncio.create_task(
                    drive_status_led(
                        pins, led.pin, active_low=led.active_low, state=self.led_state
                    ),
                    name="status-led",
                )
            )
        self._set_ready()
        stop = asyncio.create_task(self._stop.wait())
        reload = asyncio.create_task(self._reload.wait())
        try:
            while True:
                done, _ = await asyncio.wait(
                    [stop, reload, *core], return_when=asyncio.FIRST_COMPLETED
                )
                for task in done:
                    if task in core:
                        task.result()  # a core part failing is a bug: let it surface
                        raise RuntimeError(f"{task.get_name()} ended unexpectedly")
                if stop in done or self._accept_reload():
                    break
                reload = asyncio.create_task(self._reload.wait())
        finally:
            self.ready.clear()
            stop.cancel()
            reload.cancel()
            await _cancel(tasks)
            await self._close_drivers()
            buses.close()
            await self._commit()
            if self._stop.is_set():
                await self._drain(STOP_GRACE)
            await _cancel(core)
            await self.publisher.close()
            if pins is not None:
                pins.close()
            await self._worker.run(buffer.close)
            await self._stopped()

    def _start_cloudwatch(self, target: MqttTarget) -> CloudWatch | None:
        """Logs and EMF metrics to CloudWatch Logs, when ``cloudwatch.enabled``."""
        if not self.settings.cloudwatch.enabled:
            return None
        cloud = for_daemon(self, target, run_in_worker=self._worker.run)
        cloud.start()
        return cloud

    async def _stopped(self) -> None:
        log.info("stopped", extra={"counters": self.counters.snapshot()})
        cloud, self._cloud = self._cloud, None
        if cloud is not None:
            await cloud.stop()  # the last lines go now, or wait in the spool

    async def _close_drivers(self) -> None:
        """Let each driver release its port or chip (a serial port's lock, say),
        so that the next start or reload can open it again."""
        for poller in self.pollers:
            try:
                async with asyncio.timeout(poller.timeout):
                    await poller.worker.run(poller.driver.close)
            except (OSError, TimeoutError, ValueError) as err:
                log.warning(
                    "closing a sensor failed",
                    extra={"sensor": poller.name, "error": str(err)},
                )

    def _open_pins(self) -> Pins | None:
        s = self.settings
        if s.gpio.status_led is None and all(x.power_pin is None for x in s.sensors):
            return None
        return open_pins(s.gpio.backend)

    def _make_pollers(self, buses: Buses, pins: Pins | None) -> list[Poller]:
        policy = self.settings.clock

        def synced() -> bool:
            return clock_synchronised(policy)

        pollers = []
        self.unavailable = {}
        for sensor in self.settings.sensors:
            try:
                driver, worker = open_sensor(sensor, buses)
            except (GatewayError, OSError) as err:
                # A missing bus or device stops this sensor, not the gateway.
                self.unavailable[sensor.name] = str(err)
                log.error(
                    f"sensor {sensor.name} cannot be opened; the others run",
                    extra={"sensor": sensor.name, "error": str(err)},
                )
                continue
            cycle = None
            if sensor.power_pin is not None and pins is not None:
                pins.setup_output(sensor.power_pin, True)
                cycle = functools.partial(
                    power_cycle, pins, sensor.power_pin, sensor.power_off_seconds
                )
            pollers.append(
                Poller(
                    name=sensor.name,
                    driver=driver,
                    worker=worker,
                    interval=sensor.interval,
                    timeout=sensor.timeout,
                    retries=sensor.retries,
                    sink=self._take,
                    synced=synced,
                    power_cycle=cycle,
                )
            )
        return pollers

    def led_state(self) -> LedState:
        """What the status LED shows: error, offline (buffering) or online."""
        publisher = self.publisher
        failed = any(p.status.health is Health.FAILED for p in self.pollers)
        if failed or self.unavailable or self.disk_full:
            return LedState.ERROR
        if publisher is None or not publisher.connected.is_set():
            refused = (
                publisher is not None
                and publisher.counters.connects == 0
                and (publisher.counters.connect_failures >= 3)
            )
            return LedState.ERROR if refused else LedState.OFFLINE
        return LedState.ONLINE

    # --- readings into the buffer ---------------------------------------------------
    def _take(self, readings: list[Reading]) -> None:
        self._pending.extend(readings)
        self.counters.readings_taken += len(readings)

    async def _commit(self) -> None:
        """One group commit of everything polled since the last one.

        Serialised: the last commit of a stop or reload waits for one the commit loop
        has in progress, so the loop is never cancelled while it holds readings that
        are in neither ``_pending`` nor the buffer (a cancelled wait for the buffer's
        worker thread drops a write that has not started yet).
        """
        async with self._commit_lock:
            if not self._pending or self.buffer is None:
                return
            batch, self._pending = self._pending, []
            try:
                if self._lost_in_memory:
                    await self._worker.run(self.buffer.note_dropped, self._lost_in_memory)
                    self._lost_in_memory = 0
                dropped = await self._worker.run(self.buffer.add, batch)
            except BufferFull as err:
                self.disk_full = True
                self._hold(batch, str(err))
                return
            self.disk_full = False
            await self._watch_clock(len(batch))
            self.counters.readings_buffered += len(batch)
            self.counters.readings_dropped += dropped
            self._age.add(len(batch), time.monotonic())
            self._age.sealed(dropped)
            self._seal_wake.set()

    async def _watch_clock(self, committed: int) -> None:
        """Once the clock synchronises, correct the readings taken before (same run)."""
        assert self.buffer is not None
        last_id = await self._worker.run(self.buffer.last_id)
        found = self._clock.observe(
            synced=clock_synchronised(self.settings.clock),
            wall=time.time(),
            mono=time.monotonic(),
            first_id=last_id - committed + 1,
        )
        if found is None:
            return
        from_id, delta = found
        corrected = await self._worker.run(self.buffer.correct_unsynced, from_id, delta)
        log.info(
            "clock synchronised: readings taken before corrected",
            extra={"readings": corrected, "seconds": round(delta, 3)},
        )

    def _hold(self, batch: list[Reading], error: str) -> None:
        """Keep readings the full disk refused in memory, up to MAX_HELD; beyond that
        the oldest go, counted, and the next batch that can be sealed reports them."""
        held = batch + self._pending
        excess = max(0, len(held) - MAX_HELD)
        self._pending = held[excess:]
        self._lost_in_memory += excess
        self.counters.readings_dropped += excess
        now = time.monotonic()
        if now - self._full_logged > 60:
            self._full_logged = now
            log.error(
                "disk full: cannot write to the buffer; holding readings in memory",
                extra={"error": error, "held": len(self._pending), "lost": self._lost_in_memory},
            )

    async def _commit_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.buffer.commit_interval)
            await self._commit()

    # --- sealing --------------------------------------------------------------------
    def _aged(self) -> bool:
        """The oldest unsealed reading has waited ``batch.max_age``."""
        oldest = self._age.oldest()
        return oldest is not None and time.monotonic() - oldest >= self.settings.batch.max_age

    def _seal_due(self, buffered: int, force: bool) -> bool:
        if buffered == 0:
            return False
        s = self.settings.batch
        if force or buffered >= s.max_records or buffered * self._record_bytes >= s.max_bytes:
            return True
        return self._aged()

    def _seal_one(self, force: bool) -> Sealed | None:
        """Seal the oldest readings into one batch (runs on the buffer worker).

        Without ``force`` only a full batch is sealed. A reading too large for any
        batch is discarded and counted into ``dropped``, so it cannot wedge the stream.
        """
        buffer, sealer = self.buffer, self._sealer
        assert buffer is not None and sealer is not None
        # Read about what fits (with a margin), not max_records: most of those would
        # only be read again for the next batch.
        limit = min(sealer.max_records, math.ceil(sealer.max_bytes / self._record_bytes * 1.5) + 32)
        # While a backlog drains, every other batch carries the newest readings, so
        # fresh data is not held behind hours of history (batch.interleave).
        backlog = buffer.count > limit
        live = backlog and self.settings.batch.interleave and self._live_turn
        candidates: list[Buffered] = buffer.newest(limit) if live else buffer.oldest(limit)
        refitted = False
        candidates.sort(key=lambda b: (b.reading.time, b.id))
        while candidates:
            dropped = buffer.dropped_pending
            try:
                sealed = sealer.seal(
                    buffer.chain(),
                    [b.reading for b in candidates],
                    now=time.time(),
                    dropped=dropped,
                )
            except RecordTooLarge as err:
                buffer.discard([candidates[0].id])
                log.error(
                    "reading discarded: it can never fit in a batch", extra={"error": str(err)}
                )
                del candidates[0]
                continue
            # Full: it hit a limit, or it took every candidate and more are waiting.
            full = refitted or sealed.count < len(candidates) or sealed.count >= limit
            if not (force or full):
                # It looked due, but everything fitted: the bytes per record estimate
                # was too high. Learn it from this attempt, so that the next one waits
                # until a batch is full rather than seal and discard it every commit.
                self._record_bytes = len(sealed.payload) / sealed.count
                return None
            if live and not refitted and sealed.count < len(candidates):
                # A live batch is filled from the newest end: seal again without the
                # oldest candidates that would not have fitted anyway.
                candidates = candidates[len(candidates) - sealed.count :]
                refitted = True
                continue
            buffer.commit_batch(sealed, (b.id for b in candidates[: sealed.count]), dropped)
            self._last_live = live
            self._live_turn = backlog and not self._live_turn
            return sealed
        return None

    def _lookahead(self) -> int:
        """How many sealed batches may wait in the outbox: the in-flight window, but no
        more than the rate limits let out in about two seconds, so that a fresh batch
        never queues behind half a minute of backlog."""
        m = self.settings.mqtt
        window = m.max_inflight
        if m.messages_per_second > 0:
            window = min(window, math.ceil(2 * m.messages_per_second))
        if m.bytes_per_second > 0:
            window = min(window, math.ceil(2 * m.bytes_per_second / self.settings.batch.max_bytes))
        return max(2, window)

    async def _seal_some(self, force: bool = False) -> int:
        """Seal while there is room in the outbox and a batch is due."""
        assert self.buffer is not None and self.publisher is not None
        made = 0
        window = self._lookahead()
        while self._seal_due(self.buffer.count, force):
            if await self._worker.run(self.buffer.outbox_count) >= window:
                break
            # Sealed batches count against the cap too: sealing far ahead of a slow
            # uplink would make the cap drop unsealed readings, the newest among them.
            if self.buffer.outbox_bytes >= self.buffer.max_bytes // 4:
                break
            # Age is judged here, on the event loop that owns the commit record.
            aged = self._aged()
            try:
                sealed = await self._worker.run(self._seal_one, force or aged)
            except sqlite3.OperationalError as err:
                if not is_disk_full(err):
                    raise
                log.error("cannot seal: the disk is full", extra={"error": str(err)})
                break
            if sealed is None:
                break
            made += 1
            self.counters.batches_sealed += 1
            self.counters.readings_sealed += sealed.count
            self._age.sealed(sealed.count, newest=self._last_live)
            self._record_bytes = len(sealed.payload) / sealed.count
            log.debug(
                "batch sealed",
                extra={"seq": sealed.seq, "records": sealed.count, "bytes": len(sealed.payload)},
            )
            self.publisher.wake()
        return made

    async def _seal_loop(self) -> None:
        """Seal only while connected: offline, readings wait in the buffer and are
        packed into full batches once the uplink is back."""
        assert self.publisher is not None
        while True:
            await self.publisher.connected.wait()
            self._seal_wake.clear()
            await self._seal_some()
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for swallows a
            # cancellation that coincides with the event, and the loop would go on.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):
                    await self._seal_wake.wait()

    # --- the publisher's view of the outbox -----------------------------------------
    async def _fetch(self, after: int, limit: int) -> list:  # type: ignore[type-arg]
        assert self.buffer is not None
        return await self._worker.run(self.buffer.outbox, after=after, limit=limit)

    async def _acked(self, seqs: list[int]) -> int:
        assert self.buffer is not None
        try:
            readings = await self._worker.run(self.buffer.ack, seqs)
        except sqlite3.OperationalError as err:
            if not is_disk_full(err):
                raise
            # The rows stay in the outbox and go out again: duplicates, not loss.
            log.error("cannot record PUBACKs: the disk is full", extra={"error": str(err)})
            return 0
        self._seal_wake.set()
        return readings

    # --- shutdown and status ---------------------------------------------------------
    async def _drain(self, grace: float) -> None:
        """Seal and publish what is buffered, for at most ``grace`` seconds."""
        assert self.buffer is not None and self.publisher is not None
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            if not self.publisher.connected.is_set():
                break
            await self._seal_some(force=True)
            outbox = await self._worker.run(self.buffer.outbox_count)
            if outbox == 0 and self.buffer.count == 0:
                break
            await asyncio.sleep(0.05)
        await self.publisher.close()
        outbox = await self._worker.run(self.buffer.outbox_count)
        log.info(
            "left in the buffer for the next start",
            extra={"readings": self.buffer.count, "batches": outbox},
        )

    async def _status_loop(self) -> None:
        while True:
            await asyncio.sleep(STATUS_EVERY)
            log.info("status", extra=self.status())

    def _set_ready(self) -> None:
        """Running: for tests and the demo (``ready``), and for systemd (READY=1)."""
        self.ready.set()
        self.notifier.send("READY=1", f"STATUS={self.status_line()}")

    async def _notify_loop(self) -> None:
        """WATCHDOG=1 at half the watchdog timeout, from the event loop itself (a blocked
        loop stops the pings and systemd restarts the service), and STATUS= lines."""
        notifier = self.notifier
        if not notifier.enabled:
            return
        interval = notifier.watchdog_interval
        tick = min(interval, NOTIFY_STATUS_EVERY) if interval else NOTIFY_STATUS_EVERY
        last_status = time.monotonic()
        while True:
            if interval:
                notifier.watchdog()
            now = time.monotonic()
            if now - last_status >= NOTIFY_STATUS_EVERY and self.ready.is_set():
                notifier.status(self.status_line())
                last_status = now
            await asyncio.sleep(tick)

    def status_line(self) -> str:
        """One line for ``systemctl status``: sensors, buffer, last acknowledged batch."""
        sensors = [p.status.health for p in self.pollers]
        total = len(sensors) + len(self.unavailable)
        ok = sum(health is Health.OK for health in sensors)
        buffered = self.buffer.count if self.buffer else 0
        seq = self.publisher.last_acked_seq if self.publisher else None
        return (
            f"sensors ok {ok}/{total}, buffered {buffered}, "
            f"last acked seq {'-' if seq is None else seq}"
        )

    def status(self) -> dict[str, object]:
        """A summary for logs, the demo and ``status``."""
        publisher = self.publisher
        return {
            "connected": bool(publisher and publisher.connected.is_set()),
            "buffered": self.buffer.count if self.buffer else 0,
            "in_flight": publisher.in_flight if publisher else 0,
            "last_acked_seq": publisher.last_acked_seq if publisher else None,
            "sensors": {
                **{p.name: p.status.health.value for p in self.pollers},
                **dict.fromkeys(self.unavailable, "unavailable"),
            },
            **self.counters.snapshot(),
        }


async def _cancel(tasks: list[asyncio.Task[None]]) -> None:
    for task in tasks:
        task.cancel()
    # On Python 3.11, asyncio.wait_for returns the result instead of raising when a
    # cancellation arrives just as the awaited call completes, and the task runs on.
    # The daemon's own code uses asyncio.timeout; this guards against any other
    # such swallowed cancellation: cancel again whatever has not ended.
    pending = set(tasks)
    while pending:
        _, pending = await asyncio.wait(pending, timeout=1.0)
        for task in pending:
            task.cancel()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    for task, result in zip(tasks, results, strict=True):
        if isinstance(result, BaseException) and not isinstance(result, asyncio.CancelledError):
            log.error("task failed", extra={"task": task.get_name(), "error": repr(result)})


def run_daemon(settings: Settings) -> int:
    """Entry point of ``wsn-gateway run``: 0 after a clean stop, 1 on failure."""
    try:
        asyncio.run(Daemon(settings).run())
    except GatewayError as err:
        log.error(str(err))
        return 1
    return 0
