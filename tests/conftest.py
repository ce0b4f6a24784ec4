"""Shared fixtures: a throwaway PKI, a real Mosquitto broker with mutual TLS, and a collector.

- ``pki``: CA, server and client certificates for thing ``test-gw``, plus a client
  certificate from an unrelated ("rogue") CA that every broker must refuse.
- ``mosquitto``: a running ``/usr/sbin/mosquitto`` on 127.0.0.1; ``mosquitto_factory``
  starts one with options (message size limit, ACL, ...).
- ``collector``: a factory of persistent-session QoS 1 subscribers that record what
  the broker delivers and reconnect by themselves after a broker restart.
- ``tls_context``: a factory of client TLS contexts ("good", "none", "rogue").
- ``publish``: QoS 1 publishes with paho, returning the PUBACK reason codes.
- ``mqtt_connect``: TLS handshake + MQTT CONNECT probe -> "connected" or why not.

The paho-based helpers block the calling thread while they wait. That is fine beside
Mosquitto (another process), but a broker running in the test's own event loop
(``DemoBroker``) needs asyncio clients, or the helpers run via ``asyncio.to_thread``.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import ssl
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import paho.mqtt.client as mqtt
import pytest

from gateway.pki import PkiFiles, create_ca, issue_certificate, write_cert, write_key, write_pki

MOSQUITTO = Path(os.environ.get("WSN_TEST_MOSQUITTO", "/usr/sbin/mosquitto"))
LOCALHOST = "127.0.0.1"
THING = "test-gw"
DEFAULT_TOPIC_FILTER = "dt/wsn/+/telemetry"

Message = tuple[str, bytes]


# --------------------------------------------------------------------------- PKI


@dataclass(frozen=True)
class PkiBundle:
    """The test PKI: ``files`` for broker and gateway, and a client pair from a rogue CA."""

    files: PkiFiles
    rogue_ca_cert: Path
    rogue_cert: Path
    rogue_key: Path


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PkiBundle:
    directory = tmp_path_factory.mktemp("pki")
    files = write_pki(directory, thing=THING)
    rogue_dir = directory / "rogue"
    rogue_dir.mkdir()
    rogue_ca_key, rogue_ca = create_ca("rogue CA")
    rogue_key, rogue_cert = issue_certificate(rogue_ca_key, rogue_ca, THING, server=False)
    bundle = PkiBundle(
        files=files,
        rogue_ca_cert=rogue_dir / "ca.crt",
        rogue_cert=rogue_dir / "client.crt",
        rogue_key=rogue_dir / "client.key",
    )
    write_cert(bundle.rogue_ca_cert, rogue_ca)
    write_cert(bundle.rogue_cert, rogue_cert)
    write_key(bundle.rogue_key, rogue_key)
    return bundle


def client_tls_context(
    ca_cert: Path,
    cert: Path | None = None,
    key: Path | None = None,
    *,
    maximum_version: ssl.TLSVersion | None = None,
) -> ssl.SSLContext:
    """A client context that verifies the broker against ``ca_cert`` (hostname checked).

    With ``cert``/``key`` it presents that client certificate; without, none.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = True
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_verify_locations(cafile=ca_cert)
    if cert is not None:
        context.load_cert_chain(cert, key)
    if maximum_version is not None:
        context.maximum_version = maximum_version
    return context


@pytest.fixture
def tls_context(pki: PkiBundle) -> Callable[..., ssl.SSLContext]:
    """Factory: ``tls_context("good" | "none" | "rogue", cert=, key=, maximum_version=)``.

    "good" presents the test client certificate, "none" no certificate, "rogue" a
    certificate from an unrelated CA; ``cert``/``key`` present those files instead.
    All of them verify the broker with the test CA.
    """

    def make(
        identity: Literal["good", "none", "rogue"] = "good",
        *,
        cert: Path | None = None,
        key: Path | None = None,
        maximum_version: ssl.TLSVersion | None = None,
    ) -> ssl.SSLContext:
        ca = pki.files.ca_cert
        if cert is not None:
            return client_tls_context(ca, cert, key, maximum_version=maximum_version)
        if identity == "good":
            return client_tls_context(
                ca, pki.files.client_cert, pki.files.client_key, maximum_version=maximum_version
            )
        if identity == "rogue":
            return client_tls_context(
                ca, pki.rogue_cert, pki.rogue_key, maximum_version=maximum_version
            )
        return client_tls_context(ca, maximum_version=maximum_version)

    return make


# --------------------------------------------------------------------------- Mosquitto


def free_port(host: str = LOCALHOST) -> int:
    """A TCP port on ``host`` that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def port_accepts(host: str, port: int, timeout: float = 0.2) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


class Mosquitto:
    """One real Mosquitto broker with a mutual-TLS listener on 127.0.0.1.

    The port is chosen once, so clients find the broker again after ``restart()``.
    Persistence is on: queued messages of persistent sessions survive ``stop()``/
    ``start()`` (Mosquitto saves its database on a clean stop; after ``kill()`` only
    what ``autosave_interval`` saved survives).
    """

    def __init__(
        self,
        pki: PkiFiles,
        directory: Path,
        *,
        port: int | None = None,
        message_size_limit: int = 0,
        acl_text: str | None = None,
        max_inflight_messages: int = 100,
        max_queued_messages: int = 0,
        autosave_interval: int | None = None,
        extra_config: str = "",
    ) -> None:
        self.pki = pki
        self.directory = directory
        self.host = LOCALHOST
        self.port = port if port is not None else free_port(self.host)
        self.message_size_limit = message_size_limit
        self.acl_text = acl_text
        self.max_inflight_messages = max_inflight_messages
        self.max_queued_messages = max_queued_messages
        self.autosave_interval = autosave_interval
        self.extra_config = extra_config
        self.config_path = directory / "mosquitto.conf"
        self.log_path = directory / "mosquitto.log"
        self.output_path = directory / "mosquitto.out"
        self.persistence_dir = directory / "data"
        self.process: subprocess.Popen[bytes] | None = None
        self._started_once = False
        self._log_mark = 0
        self._output_mark = 0

    def config_text(self) -> str:
        lines = [
            f"listener {self.port} {self.host}",
            f"cafile {self.pki.ca_cert}",
            f"certfile {self.pki.server_cert}",
            f"keyfile {self.pki.server_key}",
            "require_certificate true",
            "use_identity_as_username false",
            "allow_anonymous true",
            "persistence true",
            # Mosquitto concatenates location and file name: the slash matters.
            f"persistence_location {self.persistence_dir}/",
            f"log_dest file {self.log_path}",
            "log_type all",
            "connection_messages true",
            "log_timestamp true",
            f"max_inflight_messages {self.max_inflight_messages}",
            f"max_queued_messages {self.max_queued_messages}",
        ]
        if self.message_size_limit:
            # Largest accepted PUBLISH payload in bytes; Mosquitto drops a larger one.
            lines.append(f"message_size_limit {self.message_size_limit}")
        if self.autosave_interval is not None:
            lines.append(f"autosave_interval {self.autosave_interval}")
        if self.acl_text is not None:
            acl_path = self.directory / "acl"
            acl_path.write_text(self.acl_text)
            lines.append(f"acl_file {acl_path}")
        if os.geteuid() == 0:
            # Started as root, Mosquitto switches to the "mosquitto" user, which can
            # neither read our 0600 keys nor write into the test's directories.
            lines.append("user root")
        if self.extra_config:
            lines.append(self.extra_config)
        return "\n".join(lines) + "\n"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self, timeout: float = 10.0) -> None:
        """Start Mosquitto and wait until it accepts connections.

        Before the first successful start, a port taken in the meantime by someone
        else is replaced by another free one (the port is fixed from then on).
        """
        for _attempt in range(3):
            try:
                self._start(timeout)
            except RuntimeError:
                fresh = self.output_text()[self._output_mark :] + self.log_text()[self._log_mark :]
                if self._started_once or "Address already in use" not in fresh:
                    raise
                self.port = free_port(self.host)
            else:
                self._started_once = True
                return
        raise RuntimeError(f"mosquitto found no free port:\n{self.log_text()}")

    def _start(self, timeout: float) -> None:
        if self.running:
            raise RuntimeError("mosquitto is already running")
        self.persistence_dir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(self.config_text())
        # The log is appended to across restarts: readiness is judged on what follows.
        self._log_mark = len(self.log_text())
        self._output_mark = len(self.output_text())
        with self.output_path.open("ab") as output:
            self.process = subprocess.Popen(
                [str(MOSQUITTO), "-c", str(self.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
            )
        self.wait_ready(timeout)

    def wait_ready(self, timeout: float = 10.0) -> None:
        """Wait until this Mosquitto runs and its listener accepts TCP connections.

        Fails at once if the process exits (a bad config, a port already taken).
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is None or self.process.poll() is not None:
                status = None if self.process is None else self.process.returncode
                raise RuntimeError(
                    f"mosquitto exited with status {status}:\n"
                    f"{self.output_text()[self._output_mark :]}\n"
                    f"{self.log_text()[self._log_mark :]}"
                )
            # "running" is logged once the listeners are open; checking it too means
            # another program that happens to hold the port cannot pass for Mosquitto.
            if " running" in self.log_text()[self._log_mark :] and port_accepts(
                self.host, self.port
            ):
                return
            time.sleep(0.02)
        raise TimeoutError(
            f"mosquitto did not accept connections on {self.host}:{self.port} "
            f"within {timeout} s:\n{self.log_text()}"
        )

    def _signal_and_wait(self, signum: int, timeout: float) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signum)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout)
        self.process = None

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, then wait for the exit (Mosquitto saves its persistence file first)."""
        self._signal_and_wait(signal.SIGTERM, timeout)

    def kill(self, timeout: float = 10.0) -> None:
        """SIGKILL: a crash, nothing saved since the last autosave."""
        self._signal_and_wait(signal.SIGKILL, timeout)

    def restart(self, timeout: float = 10.0) -> None:
        self.stop(timeout)
        self.start(timeout)

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def output_text(self) -> str:
        try:
            return self.output_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""


def _require_mosquitto() -> None:
    if not MOSQUITTO.exists() and shutil.which("mosquitto") is None:
        pytest.skip(f"{MOSQUITTO} not installed (Debian package 'mosquitto'; .ci/run installs it)")


@pytest.fixture
def mosquitto_factory(
    pki: PkiBundle, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[..., Mosquitto]]:
    """Factory: ``mosquitto_factory(message_size_limit=..., acl_text=...)`` -> a started broker."""
    _require_mosquitto()
    brokers: list[Mosquitto] = []

    def make(**options: Any) -> Mosquitto:
        broker = Mosquitto(pki.files, tmp_path_factory.mktemp("mosquitto"), **options)
        brokers.append(broker)
        broker.start()
        return broker

    yield make
    for broker in brokers:
        broker.stop()


@pytest.fixture
def mosquitto(
    mosquitto_factory: Callable[..., Mosquitto], request: pytest.FixtureRequest
) -> Mosquitto:
    """A started Mosquitto; stopped at teardown.

    Options through indirect parametrization, e.g.
    ``@pytest.mark.parametrize("mosquitto", [{"message_size_limit": 1000}], indirect=True)``.
    """
    return mosquitto_factory(**getattr(request, "param", {}))


# --------------------------------------------------------------------------- Collector


class Collector:
    """A persistent-session (clean_session=False) QoS 1 subscriber, recording messages.

    Runs paho-mqtt's network thread, so it works beside sync and async tests. The
    broker queues messages for it while it is disconnected; after a broker restart
    paho reconnects by itself and the queued messages arrive.
    """

    def __init__(
        self,
        host: str,
        port: int,
        files: PkiFiles,
        topic_filter: str = DEFAULT_TOPIC_FILTER,
        *,
        client_id: str | None = None,
        qos: int = 1,
    ) -> None:
        self.host = host
        self.port = port
        self.topic_filter = topic_filter
        self.qos = qos
        self.client_id = client_id or f"collector-{uuid.uuid4().hex[:12]}"
        self.messages: list[Message] = []
        self.connects = 0
        self._condition = threading.Condition()
        self._subscribed = threading.Event()
        self._client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            clean_session=False,
            protocol=mqtt.MQTTv311,
        )
        self._client.tls_set_context(
            client_tls_context(files.ca_cert, files.client_cert, files.client_key)
        )
        self._client.reconnect_delay_set(min_delay=1, max_delay=2)
        self._client.on_connect = self._on_connect
        self._client.on_subscribe = self._on_subscribe
        self._client.on_message = self._on_message

    def start(self, timeout: float = 10.0) -> Collector:
        """Connect, subscribe, and return once the broker has confirmed the subscription."""
        self._client.connect_async(self.host, self.port, keepalive=30)
        self._client.loop_start()
        if not self._subscribed.wait(timeout):
            self.close()
            raise TimeoutError(f"collector {self.client_id} not subscribed within {timeout} s")
        return self

    def _on_connect(
        self, client: mqtt.Client, _userdata: Any, flags: Any, reason: Any, _props: Any
    ) -> None:
        if reason.is_failure:
            return
        with self._condition:
            self.connects += 1
        # The persistent session keeps the subscription; subscribing again is harmless
        # and covers a broker that lost its state.
        client.subscribe(self.topic_filter, qos=self.qos)

    def _on_subscribe(
        self, _client: mqtt.Client, _userdata: Any, _mid: int, reasons: Any, _props: Any
    ) -> None:
        if all(not reason.is_failure for reason in reasons):
            self._subscribed.set()

    def _on_message(self, _client: mqtt.Client, _userdata: Any, message: mqtt.MQTTMessage) -> None:
        with self._condition:
            self.messages.append((message.topic, bytes(message.payload)))
            self._condition.notify_all()

    def payloads(self, topic_filter: str | None = None) -> list[bytes]:
        """Payloads received so far, in arrival order, optionally only matching a filter."""
        with self._condition:
            return [
                payload
                for topic, payload in self.messages
                if topic_filter is None or mqtt.topic_matches_sub(topic_filter, topic)
            ]

    def snapshot(self) -> list[Message]:
        with self._condition:
            return list(self.messages)

    def wait_for(
        self, predicate: Callable[[list[Message]], bool], timeout: float = 10.0
    ) -> list[Message]:
        """Block until ``predicate(messages)`` is true; return the messages.

        Blocks the calling thread: from async code use ``await wait_for_async(...)``
        so the event loop (and a gateway running in it) keeps going.
        """
        deadline = time.monotonic() + timeout
        with self._condition:
            while not predicate(list(self.messages)):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(self._timeout_message(timeout))
                self._condition.wait(min(remaining, 0.2))
            return list(self.messages)

    async def wait_for_async(
        self, predicate: Callable[[list[Message]], bool], timeout: float = 10.0
    ) -> list[Message]:
        """Like ``wait_for`` but sleeps on the event loop instead of blocking it."""
        deadline = time.monotonic() + timeout
        while True:
            messages = self.snapshot()
            if predicate(messages):
                return messages
            if time.monotonic() >= deadline:
                raise TimeoutError(self._timeout_message(timeout))
            await asyncio.sleep(0.02)

    def wait_for_count(self, count: int, timeout: float = 10.0) -> list[Message]:
        return self.wait_for(lambda messages: len(messages) >= count, timeout)

    def _timeout_message(self, timeout: float) -> str:
        return (
            f"collector {self.client_id}: condition not met within {timeout} s; "
            f"{len(self.messages)} messages received, connected {self.connects} times"
        )

    def pause(self) -> None:
        """Disconnect cleanly; the broker keeps the session and queues messages for it."""
        self._client.disconnect()
        self._client.loop_stop()

    def resume(self) -> None:
        """Reconnect to the same session after ``pause()``; queued messages follow."""
        self._client.connect_async(self.host, self.port, keepalive=30)
        self._client.loop_start()

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


@pytest.fixture
def collector(pki: PkiBundle, request: pytest.FixtureRequest) -> Iterator[Callable[..., Collector]]:
    """Factory: ``collector(broker, topic_filter=..., client_id=...)`` -> a subscribed Collector.

    ``broker`` is anything with ``.host`` and ``.port`` (Mosquitto, DemoBroker); when
    omitted, the ``mosquitto`` fixture is used.
    """
    collectors: list[Collector] = []

    def make(
        broker: Any = None,
        topic_filter: str = DEFAULT_TOPIC_FILTER,
        *,
        client_id: str | None = None,
        timeout: float = 10.0,
    ) -> Collector:
        if broker is None:
            broker = request.getfixturevalue("mosquitto")
        host = getattr(broker, "host", LOCALHOST)
        instance = Collector(host, broker.port, pki.files, topic_filter, client_id=client_id)
        collectors.append(instance)
        return instance.start(timeout)

    yield make
    for instance in collectors:
        instance.close()


# --------------------------------------------------------------------------- clients


def paho_publish(
    host: str,
    port: int,
    context: ssl.SSLContext,
    topic: str,
    payloads: list[bytes],
    *,
    protocol: int = mqtt.MQTTv311,
    client_id: str | None = None,
    timeout: float = 10.0,
) -> list[int]:
    """Publish each payload at QoS 1 and wait for every PUBACK; return their reason codes.

    MQTT 3.1.1 PUBACKs carry no reason code: they count as 0 (success).
    Raises ``ConnectionError`` if the broker does not accept the connection.
    """
    client = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2,
        client_id=client_id or f"publisher-{uuid.uuid4().hex[:12]}",
        protocol=protocol,
    )
    client.tls_set_context(context)
    connected = threading.Event()
    connect_reason: list[Any] = []
    acks: dict[int, int] = {}
    acked = threading.Condition()

    def on_connect(_c: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        connect_reason.append(reason)
        connected.set()

    def on_disconnect(_c: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        if not connected.is_set():  # lost before CONNACK: e.g. the TLS 1.3 refusal alert
            connect_reason.append(f"disconnected before CONNACK: {reason}")
            connected.set()

    def on_publish(_c: mqtt.Client, _u: Any, mid: int, reason: Any, _p: Any) -> None:
        with acked:
            acks[mid] = int(reason.value)
            acked.notify_all()

    client.on_connect = on_connect
    client.on_disconnect = on_disconnect
    client.on_publish = on_publish
    client.connect(host, port, keepalive=30)
    client.loop_start()
    try:
        if not connected.wait(timeout) or getattr(connect_reason[0], "is_failure", True):
            raise ConnectionError(f"not connected to {host}:{port}: {connect_reason}")
        mids = [client.publish(topic, payload, qos=1).mid for payload in payloads]
        deadline = time.monotonic() + timeout
        with acked:
            while not all(mid in acks for mid in mids):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"{len(acks)} of {len(mids)} PUBACKs within {timeout} s")
                acked.wait(remaining)
        return [acks[mid] for mid in mids]
    finally:
        client.disconnect()
        client.loop_stop()


def _mqtt_connect_packet(client_id: str) -> bytes:
    cid = client_id.encode()
    variable = b"\x00\x04MQTT\x04\x02\x00\x3c"  # MQTT 3.1.1, clean session, keep-alive 60
    payload = len(cid).to_bytes(2, "big") + cid
    body = variable + payload
    return bytes([0x10, len(body)]) + body


def try_mqtt_connect(host: str, port: int, context: ssl.SSLContext, timeout: float = 5.0) -> str:
    """TLS handshake, MQTT CONNECT, read the answer: "connected" or why it failed.

    With TLS 1.3 a server's refusal of the client certificate arrives after the
    client's side of the handshake has finished, as an alert on the first read:
    so this reads, rather than stopping at ``do_handshake``.
    """
    try:
        with (
            socket.create_connection((host, port), timeout=timeout) as raw,
            context.wrap_socket(raw, server_hostname=host) as tls,
        ):
            tls.sendall(_mqtt_connect_packet(f"probe-{uuid.uuid4().hex[:8]}"))
            answer = tls.recv(4)
    except ssl.SSLError as exc:
        return f"ssl error: {exc.reason or exc}"
    except (ConnectionResetError, BrokenPipeError) as exc:
        return f"reset: {exc}"
    except TimeoutError:
        return "timeout"
    if answer[:1] == b"\x20" and answer[3:4] == b"\x00":
        return "connected"
    if not answer:
        return "closed"
    return f"answer: {answer!r}"


@pytest.fixture
def publish(tls_context: Callable[..., ssl.SSLContext]) -> Callable[..., list[int]]:
    """``publish(broker, topic, payloads, identity="good", protocol=MQTTv311)`` -> reason codes."""

    def run(
        broker: Any,
        topic: str,
        payloads: list[bytes],
        *,
        identity: str = "good",
        protocol: int = mqtt.MQTTv311,
        timeout: float = 10.0,
    ) -> list[int]:
        host = getattr(broker, "host", LOCALHOST)
        return paho_publish(
            host,
            broker.port,
            tls_context(identity),
            topic,
            payloads,
            protocol=protocol,
            timeout=timeout,
        )

    return run


@pytest.fixture
def mqtt_connect(tls_context: Callable[..., ssl.SSLContext]) -> Callable[..., str]:
    """``mqtt_connect(broker, identity="good", maximum_version=None, context=None)``.

    Returns "connected" or why not; ``context`` overrides the identity's TLS context.
    """

    def run(
        broker: Any,
        identity: str = "good",
        *,
        maximum_version: ssl.TLSVersion | None = None,
        context: ssl.SSLContext | None = None,
    ) -> str:
        host = getattr(broker, "host", LOCALHOST)
        if context is None:
            context = tls_context(identity, maximum_version=maximum_version)
        return try_mqtt_connect(host, broker.port, context)

    return run
