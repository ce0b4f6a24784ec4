"""MQTT over mutual TLS: connect, publish the outbox at QoS 1, delete on PUBACK.

Each connection is one ``aiomqtt.Client`` session. Batches are published in
seq order from the outbox, at most ``max_inflight`` unacknowledged at once and
within the rate limits; an outbox row is deleted only after its PUBACK. When
the connection drops, or a PUBACK does not come within ``publish_timeout``,
the session ends and the next one republishes every unacknowledged batch from
the outbox, as the very same bytes.

AWS IoT allows one connection per client id, so whatever else the gateway says over
MQTT (the device shadow) shares this one: a :class:`Listener` has its topics
subscribed on every connect and receives their messages, and :meth:`Publisher.send`
publishes its requests. Neither holds up the outbox. AWS IoT closes the connection
of a client that subscribes or publishes where its policy does not allow it: when
connections keep being lost while a listener's subscription or message is under way,
the listener is left out for a while (LISTENER_STRIKES, LISTENER_PAUSE), so that a
policy without the shadow topics cannot keep the batches from going out.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import random
import socket
import ssl
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import aiomqtt
from paho.mqtt.reasoncodes import ReasonCode

from gateway.buffer import OutboxEntry
from gateway.errors import PublishError
from gateway.metrics import Counters
from gateway.ratelimit import RateLimiter

log = logging.getLogger(__name__)

AWS_ALPN = "x-amzn-mqtt-ca"
#: PUBACKs are deleted from the outbox in groups: one transaction (one fsync)
#: per this many acknowledgements or per ACK_FLUSH_SECONDS, whichever first.
ACK_GROUP = 50
ACK_FLUSH_SECONDS = 0.2
#: QoS 1 messages of :meth:`Publisher.send` that may wait at once. The client's queue
#: has this much room beyond the outbox's in-flight window, so that they can never
#: make a batch's publish fail for want of room.
SEND_SLOTS = 4
#: Connections lost in a row while a listener's SUBSCRIBE or message was waiting for
#: its answer, after which the listener is left out for LISTENER_PAUSE seconds.
LISTENER_STRIKES = 3
LISTENER_PAUSE = 3600.0


@dataclass(frozen=True)
class Listener:
    """Subscriptions that share the publisher's connection.

    ``topics`` are subscribed at QoS 1 on every connect, then ``subscribed`` is called;
    every message that arrives goes to ``message(topic, payload)``. Both are called on
    the event loop and must return at once (queue the work for a task of your own).
    """

    topics: tuple[str, ...]
    message: Callable[[str, bytes], None]
    subscribed: Callable[[], None]


@dataclass(frozen=True)
class MqttTarget:
    """Everything a connection needs, taken from the settings."""

    thing: str
    host: str
    port: int
    ca: Path
    cert: Path
    key: Path
    alpn: bool
    keepalive: int
    topic: str
    status_topic: str
    max_inflight: int
    messages_per_second: float
    bytes_per_second: float
    reconnect_min: float
    reconnect_max: float
    connect_timeout: float
    publish_timeout: float


def tls_context(target: MqttTarget) -> ssl.SSLContext:
    """Mutual TLS ≥ 1.2 with the server's hostname verified against ``ca``."""
    try:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(target.ca))
    except (OSError, ssl.SSLError) as err:
        raise PublishError(f"mqtt.ca {target.ca}: cannot load CA certificates: {err}") from err
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(str(target.cert), str(target.key))
    except FileNotFoundError as err:
        # ssl does not set err.filename: find the missing file ourselves.
        missing = [
            f"{name} {path}"
            for name, path in (("mqtt.cert", target.cert), ("mqtt.key", target.key))
            if not path.exists()
        ] or [f"mqtt.cert/mqtt.key {err.filename or ''}".rstrip()]
        raise PublishError(
            f"{' and '.join(missing)} does not exist: give the device certificate "
            "and its private key (from AWS IoT, or `wsn-gateway demo` makes test ones)"
        ) from err
    except PermissionError as err:
        raise PublishError(
            f"{err.filename}: permission denied: the service user must be able to read it"
        ) from err
    except ssl.SSLError as err:
        raise PublishError(
            f"mqtt.cert {target.cert} and mqtt.key {target.key} cannot be used together "
            f"({err.reason or err}): check that the key belongs to the certificate"
        ) from err
    if target.alpn:
        ctx.set_alpn_protocols([AWS_ALPN])
    return ctx


def explain_connect_error(err: BaseException, target: MqttTarget) -> str:  # noqa: PLR0911
    """Turn a failed connection into a sentence that says what to check."""
    where = f"{target.host}:{target.port}"
    cause: BaseException | None = err
    text = str(err)
    while cause is not None:
        if isinstance(cause, ssl.SSLCertVerificationError):
            return (
                f"{where}: the broker's certificate does not verify against mqtt.ca "
                f"({cause.verify_message}); check mqtt.ca and mqtt.endpoint"
            )
        if isinstance(cause, socket.gaierror):
            return (
                f"{where}: cannot resolve the endpoint name ({cause.strerror}); "
                "check mqtt.endpoint and DNS"
            )
        if isinstance(cause, ConnectionRefusedError):
            return (
                f"{where}: connection refused: no broker listens there; "
                "check mqtt.endpoint and mqtt.port"
            )
        cause = cause.__cause__ or cause.__context__
    lowered = text.lower()
    tls_refusal = ("alert", "unknown ca", "bad certificate", "certificate required")
    if any(word in lowered for word in tls_refusal):
        return (
            f"{where}: the broker refused our TLS client certificate {target.cert} ({text}); "
            "check that it is registered and active and signed by a CA the broker trusts"
        )
    if "eof" in lowered or "reset" in lowered or "handshake" in lowered:
        # No TLS alert: a broker that refuses silently, or a network that drops us.
        return (
            f"{where}: the connection was closed during the TLS handshake ({text}): the "
            f"network dropped it, or the broker refused our client certificate {target.cert} "
            "without saying why (check that it is registered and active)"
        )
    if "not authori" in lowered or "bad user" in lowered or "code:5" in lowered:
        return (
            f"{where}: the broker refused the connection as not authorised ({text}); "
            "check the policy attached to the certificate"
        )
    if "timed out" in lowered or isinstance(err, TimeoutError):
        return (
            f"{where}: no answer within {target.connect_timeout:g} s; "
            "check the network and mqtt.port"
        )
    return f"{where}: {text or type(err).__name__}"


async def probe_tls(
    target: MqttTarget, context: ssl.SSLContext, timeout: float = 5.0
) -> str | None:
    """Find why a connection failed at the TLS layer, where MQTT clients only see a
    timeout: under TLS 1.3 a broker refuses a client certificate *after* the
    handshake, with an alert that arrives on the first read. Returns an
    explanation, or None when TLS works and the problem lies elsewhere."""
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(
                target.host, target.port, ssl=context, server_hostname=target.host
            ),
            timeout,
        )
    except (OSError, TimeoutError) as err:
        return explain_connect_error(err, target)
    try:
        # Nothing arrives before CONNECT unless the broker is refusing us.
        data = await asyncio.wait_for(reader.read(1), 1.0)
    except TimeoutError:
        return None
    except (OSError, ssl.SSLError) as err:
        return explain_connect_error(err, target)
    finally:
        writer.close()
    if not data:
        return explain_connect_error(
            ConnectionResetError("connection closed by the broker during TLS"), target
        )
    return None


class Publisher:
    """Owns the MQTT connection and drains the outbox through it."""

    def __init__(
        self,
        target: MqttTarget,
        *,
        fetch: Callable[[int, int], Awaitable[list[OutboxEntry]]],
        ack: Callable[[list[int]], Awaitable[int]],
        counters: Counters,
        listener: Listener | None = None,
    ) -> None:
        self.target = target
        self.listener = listener
        self._fetch = fetch
        self._ack = ack
        self.counters = counters
        self.connected = asyncio.Event()
        self.last_acked_seq: int | None = None
        self.last_acked_time: float | None = None
        self.last_error: str | None = None
        self._wake = asyncio.Event()
        self._acks: list[int] = []
        self._ack_due = asyncio.Event()
        self._in_flight: set[int] = set()
        self._client: aiomqtt.Client | None = None
        self._limiter = RateLimiter(target.messages_per_second, target.bytes_per_second)
        self._send_slots = asyncio.Semaphore(SEND_SLOTS)
        self._sends: set[asyncio.Future[None]] = set()  # the listener's publishes under way
        #: The listener's SUBSCRIBE and publishes on this connection still unanswered.
        self._listener_unanswered = 0
        self._listener_strikes = 0
        self._listener_off_until = -math.inf  # time.monotonic()
        self._ssl = tls_context(target)  # fails at start-up, not on the first connect
        #: Seconds from PUBLISH to PUBACK of recent batches (the metrics drain it).
        self.latencies: deque[float] = deque(maxlen=10_000)

    def wake(self) -> None:
        """Tell the publisher that the outbox has new batches."""
        self._wake.set()

    @property
    def listener_off_until(self) -> float:
        """Until when (time.monotonic()) the listener is left out; -inf when it is not."""
        return self._listener_off_until

    @property
    def in_flight(self) -> int:
        """Batches sent and not yet acknowledged."""
        return len(self._in_flight)

    def _status_payload(self, state: str) -> bytes:
        return json.dumps(
            {"state": state, "thing": self.target.thing, "time": round(time.time(), 3)}
        ).encode()

    async def run(self) -> None:
        """Connect, publish, reconnect with exponential backoff and jitter, forever."""
        delay = self.target.reconnect_min
        while True:
            started = time.monotonic()
            connects = self.counters.connects
            try:
                await self._session()
            except* (aiomqtt.MqttError, OSError, TimeoutError, ssl.SSLError) as group:
                err = group.exceptions[0]
                message = explain_connect_error(err, self.target)
                # The session clears ``connected`` on its way out: count connects instead.
                was_connected = self.counters.connects > connects
                self.connected.clear()
                if was_connected:
                    log.warning("connection lost", extra={"error": message})
                    self._strike_listener()
                else:
                    self.counters.connect_failures += 1
                    if "timed out" in message or "Operation timed out" in str(err):
                        message = await probe_tls(self.target, self._ssl) or message
                    log.error("cannot connect to the broker", extra={"error": message})
                self.last_error = message
            finally:
                self.connected.clear()
                self._in_flight.clear()
            await self._flush_acks()
            if time.monotonic() - started > 2 * self.target.reconnect_max:
                delay = self.target.reconnect_min  # the last session was long and healthy
            # Full jitter (AWS architecture blog): spreads a fleet's reconnects.
            sleep = random.uniform(self.target.reconnect_min, delay)
            log.info("reconnecting", extra={"in_seconds": round(sleep, 2)})
            await asyncio.sleep(sleep)
            delay = min(self.target.reconnect_max, delay * 2)

    async def _session(self) -> None:
        t = self.target
        will = aiomqtt.Will(t.status_topic, self._status_payload("offline"), qos=1, retain=True)
        client = aiomqtt.Client(
            t.host,
            t.port,
            identifier=t.thing,
            keepalive=t.keepalive,
            will=will,
            clean_session=True,
            tls_context=self._ssl,
            timeout=t.connect_timeout,
            max_inflight_messages=t.max_inflight,
            max_queued_outgoing_messages=t.max_inflight + SEND_SLOTS,
        )
        async with client:
            self._client = client
            self._listener_unanswered = 0
            self.counters.connects += 1
            self.connected.set()
            self.last_error = None
            log.info("connected", extra={"broker": f"{t.host}:{t.port}", "client_id": t.thing})
            await client.publish(
                t.status_topic,
                self._status_payload("online"),
                qos=1,
                retain=True,
                timeout=t.publish_timeout,
            )
            try:
                async with asyncio.TaskGroup() as group:
                    group.create_task(self._watch(client))
                    group.create_task(self._pump(client, group))
                    group.create_task(self._ack_flusher())
                    if self.listener is not None and time.monotonic() >= self._listener_off_until:
                        group.create_task(self._subscribe(client, self.listener))
            finally:
                self.connected.clear()
                self._client = None
                for publish in list(self._sends):  # they would wait for a dead connection
                    publish.cancel()

    async def _watch(self, client: aiomqtt.Client) -> None:
        """Hands messages to the listener; raises when the connection drops (aiomqtt
        ends message iteration then)."""
        async for message in client.messages:
            listener = self.listener
            if listener is None:
                continue
            try:
                listener.message(message.topic.value, bytes(message.payload))
            except Exception as err:  # a listener's bug must not end the session
                log.error(
                    "a message could not be handed on",
                    exc_info=err,
                    extra={"topic": message.topic.value},
                )
        raise aiomqtt.MqttError("disconnected")

    def _strike_listener(self) -> None:
        """After a lost connection: was the listener's request the likely cause?"""
        if not self._listener_unanswered:
            return
        self._listener_strikes += 1
        if self._listener_strikes < LISTENER_STRIKES:
            return
        self._listener_strikes = 0
        self._listener_off_until = time.monotonic() + LISTENER_PAUSE
        assert self.listener is not None
        log.error(
            f"the connection was lost {LISTENER_STRIKES} times in a row while subscribing to "
            f"or publishing on {self.listener.topics[0].rsplit('/', 2)[0]}/...: left out "
            f"for {LISTENER_PAUSE / 60:g} minutes so that the batches go out; check that the "
            "certificate's policy allows these topics (AWS IoT closes the connection of a "
            "client that subscribes or publishes where it may not)",
            extra={"topics": list(self.listener.topics)},
        )

    async def _subscribe(self, client: aiomqtt.Client, listener: Listener) -> None:
        """Subscribe the listener's topics on this connection. A refusal or no SUBACK is
        logged, not fatal: the batches go on either way."""
        topics = list(listener.topics)
        self._listener_unanswered += 1  # until the SUBACK
        try:
            async with asyncio.timeout(self.target.publish_timeout):
                granted = await client.subscribe([(topic, 1) for topic in topics], timeout=math.inf)
        except TimeoutError:
            log.warning(
                f"no SUBACK within {self.target.publish_timeout:g} s",
                extra={"topics": topics},
            )
            return
        self._listener_unanswered = max(0, self._listener_unanswered - 1)
        # MQTT 3.1.1 grants a QoS (0, 1, 2) per topic, or 0x80 for a refusal.
        codes: list[int | ReasonCode] = list(granted)
        refused = [
            topic
            for topic, code in zip(topics, codes, strict=False)
            if (code.is_failure if isinstance(code, ReasonCode) else code >= 0x80)
        ]
        if refused:
            log.error(
                "the broker refused the subscription: check the policy of the certificate",
                extra={"topics": refused},
            )
            return
        listener.subscribed()

    async def send(self, topic: str, payload: bytes) -> None:
        """Publish one message at QoS 1 on the current connection, beside the outbox (a
        listener's request). Raises PublishError when not connected, or when no PUBACK
        comes within ``publish_timeout``."""
        client = self._client
        if client is None or not self.connected.is_set():
            raise PublishError(f"not connected: {topic} not sent")
        async with self._send_slots:
            await self._limiter.acquire(len(payload))
            publish = asyncio.ensure_future(client.publish(topic, payload, qos=1, timeout=math.inf))
            self._sends.add(publish)
            self._listener_unanswered += 1  # until the PUBACK
            try:
                async with asyncio.timeout(self.target.publish_timeout):
                    await publish
            except asyncio.CancelledError:
                current = asyncio.current_task()
                if current is not None and current.cancelling():
                    raise
                raise PublishError(f"{topic}: the connection was lost") from None
            except (aiomqtt.MqttError, TimeoutError) as err:
                raise PublishError(f"{topic}: {err or type(err).__name__}") from err
            finally:
                self._sends.discard(publish)
                publish.cancel()
        self._listener_unanswered = max(0, self._listener_unanswered - 1)
        self._listener_strikes = 0  # the policy lets the listener's messages through

    async def _pump(self, client: aiomqtt.Client, group: asyncio.TaskGroup) -> None:
        """Publish outbox batches in seq order, each as a task of the session's group:
        a publish that fails ends the session at once, and the session's end cancels
        the publishes still waiting for a PUBACK (the next session resends them)."""
        t = self.target
        window = asyncio.Semaphore(t.max_inflight)
        last = 0
        while True:
            self._wake.clear()
            entries = await self._fetch(last, t.max_inflight)
            if not entries:
                await self._wake.wait()
                continue
            for entry in entries:
                await window.acquire()
                await self._limiter.acquire(len(entry.payload))
                group.create_task(self._publish_one(client, entry, window))
                last = entry.seq

    async def _publish_one(
        self, client: aiomqtt.Client, entry: OutboxEntry, window: asyncio.Semaphore
    ) -> None:
        self._in_flight.add(entry.seq)
        try:
            self.counters.batches_published += 1
            self.counters.bytes_published += len(entry.payload)
            try:
                sent = time.monotonic()
                async with asyncio.timeout(self.target.publish_timeout):
                    await client.publish(self.target.topic, entry.payload, qos=1, timeout=math.inf)
                self.latencies.append(time.monotonic() - sent)
            except TimeoutError as err:
                raise aiomqtt.MqttError(
                    f"no PUBACK for batch {entry.seq} within {self.target.publish_timeout:g} s"
                ) from err
        finally:
            self._in_flight.discard(entry.seq)
            window.release()
        self._acks.append(entry.seq)
        self.counters.batches_acked += 1
        self.last_acked_seq = max(entry.seq, self.last_acked_seq or 0)
        self.last_acked_time = time.time()
        if len(self._acks) >= ACK_GROUP:
            self._ack_due.set()

    async def _ack_flusher(self) -> None:
        while True:
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for swallows a
            # cancellation that coincides with the event, and the session never ends.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(ACK_FLUSH_SECONDS):
                    await self._ack_due.wait()
            self._ack_due.clear()
            await self._flush_acks()

    async def _flush_acks(self) -> None:
        """Delete acknowledged batches from the outbox in one transaction."""
        if not self._acks:
            return
        seqs, self._acks = self._acks, []
        self.counters.readings_acked += await self._ack(seqs)

    async def close(self, timeout: float = 5.0) -> None:
        """Record pending acknowledgements and, if connected, retain "offline" on the
        status topic (a clean disconnect does not fire the last will)."""
        await asyncio.wait_for(self._flush_acks(), timeout)
        client = self._client
        if client is not None and self.connected.is_set():
            with contextlib.suppress(aiomqtt.MqttError, TimeoutError):
                await client.publish(
                    self.target.status_topic,
                    self._status_payload("offline"),
                    qos=1,
                    retain=True,
                    timeout=timeout,
                )
