"""A minimal AWS IoT device shadow service on a real broker, for the tests.

``ShadowService`` answers the MQTT API of one shadow (classic, or named) the way AWS
IoT Core does, on Mosquitto:

- ``.../get`` (any payload): the whole document on ``.../get/accepted`` (``state`` with
  ``desired``, ``reported`` and ``delta``, ``metadata``, ``version``, ``timestamp``), or
  ``{"code": 404, "message": "No shadow exists with name: ..."}`` on ``.../get/rejected``
  while there is no shadow.
- ``.../update``: ``state.desired`` and ``state.reported`` are merged into the document
  as JSON merge patches (a null deletes; ``"state": null`` deletes everything), the
  version goes up by one, ``.../update/accepted`` echoes the request's state (with its
  ``clientToken``), and when desired and reported then differ ``.../update/delta``
  carries the difference (the desired values that reported lacks or differs from, to
  the root of nested objects), as AWS does after *every* accepted update, the
  device's own reports included. A request that is not a JSON object with a
  ``state`` is answered on ``.../update/rejected`` with code 400.

The service connects with its own client id and the test client certificate, and
subscribes to ``get`` and ``update`` explicitly: ``$``-topics never match a leading
wildcard. ``desire()`` is what an operator's ``update-thing-shadow`` does.

``PolicyProxy`` stands in front of the broker like AWS IoT Core with a policy that
does not allow the shadow topics: it closes the connection of a client that
subscribes to (or publishes on) a ``$aws/`` topic, which Mosquitto never does.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import ssl
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import paho.mqtt.client as mqtt
from conftest import client_tls_context

from gateway.pki import PkiFiles

Json = Any


def merge_patch(target: Json, patch: Json) -> Json:
    """RFC 7396, written out again here so that the test does not trust the gateway's."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def delta(desired: Mapping[str, Json], reported: Mapping[str, Json]) -> dict[str, Json]:
    """The shadow's delta: each desired field that reported lacks or holds otherwise."""
    out: dict[str, Json] = {}
    for key, want in desired.items():
        have = reported.get(key)
        if isinstance(want, dict) and isinstance(have, dict):
            sub = delta(want, have)
            if sub:
                out[key] = sub
        elif key not in reported or want != have:
            out[key] = copy.deepcopy(want)
    return out


class ShadowService:
    """One shadow of one thing, answered over MQTT; see the module docstring."""

    def __init__(
        self,
        host: str,
        port: int,
        files: PkiFiles,
        *,
        thing: str = "test-gw",
        name: str | None = None,
    ) -> None:
        base = f"$aws/things/{thing}/shadow"
        self.prefix = base if name is None else f"{base}/name/{name}"
        self.label = thing if name is None else name
        self.host = host
        self.port = port
        self.exists = False
        self.desired: dict[str, Json] = {}
        self.reported: dict[str, Json] = {}
        self.version = 0
        #: Every request received: (suffix "get" or "update", the JSON document or None).
        self.requests: list[tuple[str, Json]] = []
        self._condition = threading.Condition()
        self._subscribed = threading.Event()
        self._client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=f"shadow-service-{uuid.uuid4().hex[:12]}",
            protocol=mqtt.MQTTv311,
        )
        self._client.tls_set_context(
            client_tls_context(files.ca_cert, files.client_cert, files.client_key)
        )
        self._client.on_connect = self._on_connect
        self._client.on_subscribe = self._on_subscribe
        self._client.on_message = self._on_message

    # --- lifecycle ------------------------------------------------------------------
    def start(self, timeout: float = 10.0) -> ShadowService:
        """Connect and subscribe; returns once the broker confirmed the subscription."""
        self._subscribed.clear()
        self._client.connect_async(self.host, self.port, keepalive=30)
        self._client.loop_start()
        if not self._subscribed.wait(timeout):
            self.stop()
            raise TimeoutError(f"shadow service not subscribed within {timeout} s")
        return self

    def stop(self) -> None:
        """Disconnect: from now on nobody answers the gateway's requests."""
        self._client.disconnect()
        self._client.loop_stop()

    def _on_connect(
        self, client: mqtt.Client, _userdata: Any, _flags: Any, reason: Any, _props: Any
    ) -> None:
        if not reason.is_failure:
            client.subscribe([(f"{self.prefix}/get", 1), (f"{self.prefix}/update", 1)])

    def _on_subscribe(
        self, _client: mqtt.Client, _userdata: Any, _mid: int, reasons: Any, _props: Any
    ) -> None:
        if all(not reason.is_failure for reason in reasons):
            self._subscribed.set()

    # --- the API --------------------------------------------------------------------
    def _on_message(self, _client: mqtt.Client, _userdata: Any, message: mqtt.MQTTMessage) -> None:
        suffix = message.topic.removeprefix(f"{self.prefix}/")
        try:
            document = json.loads(message.payload) if message.payload else None
        except ValueError:
            document = None
        with self._condition:
            self.requests.append((suffix, document))
            if suffix == "get":
                self._answer_get()
            elif suffix == "update":
                self._update(document)
            self._condition.notify_all()

    def _publish(self, suffix: str, document: Mapping[str, Json]) -> None:
        self._client.publish(f"{self.prefix}/{suffix}", json.dumps(document), qos=1)

    def _answer_get(self) -> None:
        if not self.exists:
            self._publish(
                "get/rejected",
                {
                    "code": 404,
                    "message": f"No shadow exists with name: '{self.label}'",
                    "timestamp": int(time.time()),
                },
            )
            return
        state: dict[str, Json] = {}
        if self.desired:
            state["desired"] = self.desired
        if self.reported:
            state["reported"] = self.reported
        difference = delta(self.desired, self.reported)
        if difference:
            state["delta"] = difference
        self._publish(
            "get/accepted",
            {
                "state": state,
                "metadata": {},
                "version": self.version,
                "timestamp": int(time.time()),
            },
        )

    def _update(self, request: Json) -> None:
        if not isinstance(request, dict) or "state" not in request:
            self._publish(
                "update/rejected",
                {
                    "code": 400,
                    "message": "Missing required node: state",
                    "clientToken": request.get("clientToken")
                    if isinstance(request, dict)
                    else None,
                },
            )
            return
        state = request["state"]
        if state is None:
            self.desired, self.reported = {}, {}
        else:
            if "desired" in state:
                self.desired = merge_patch(self.desired, state["desired"]) or {}
            if "reported" in state:
                self.reported = merge_patch(self.reported, state["reported"]) or {}
        self.exists = True
        self.version += 1
        now = int(time.time())
        accepted: dict[str, Json] = {
            "state": state,
            "metadata": {},
            "version": self.version,
            "timestamp": now,
        }
        if "clientToken" in request:
            accepted["clientToken"] = request["clientToken"]
        self._publish("update/accepted", accepted)
        difference = delta(self.desired, self.reported)
        if difference:
            self._publish(
                "update/delta",
                {"state": difference, "metadata": {}, "version": self.version, "timestamp": now},
            )

    # --- for the test ---------------------------------------------------------------
    def desire(self, patch: Mapping[str, Json]) -> int:
        """What an operator's update of the desired state does; returns the version."""
        with self._condition:
            self._update({"state": {"desired": dict(patch)}})
            self._condition.notify_all()
            return self.version

    def delta(self) -> dict[str, Json]:
        with self._condition:
            return delta(self.desired, self.reported)

    def snapshot(self) -> tuple[dict[str, Json], dict[str, Json]]:
        """(desired, reported), copied."""
        with self._condition:
            return copy.deepcopy(self.desired), copy.deepcopy(self.reported)

    def updates(self) -> list[Json]:
        """The update requests the gateway sent, in order."""
        with self._condition:
            return [document for suffix, document in self.requests if suffix == "update"]

    def wait_reported(
        self, predicate: Callable[[dict[str, Json]], bool], timeout: float = 15.0
    ) -> dict[str, Json]:
        """Wait until the reported state satisfies ``predicate``; return a copy of it."""
        deadline = time.monotonic() + timeout
        with self._condition:
            while not predicate(self.reported):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(
                        f"reported state not as expected within {timeout} s: "
                        f"{json.dumps(self.reported)}; desired {json.dumps(self.desired)}"
                    )
                self._condition.wait(min(remaining, 0.2))
            return copy.deepcopy(self.reported)


# --------------------------------------------------------------------------- a strict broker


def _packets(buffer: bytearray) -> Iterator[tuple[int, bytes]]:
    """Complete MQTT packets at the start of ``buffer`` (consumed): (first byte, body)."""
    while len(buffer) >= 2:
        length, multiplier, index = 0, 1, 1
        while True:
            if index >= len(buffer):
                return
            byte = buffer[index]
            length += (byte & 0x7F) * multiplier
            multiplier *= 128
            index += 1
            if not byte & 0x80:
                break
        if len(buffer) < index + length:
            return
        packet = (buffer[0], bytes(buffer[index : index + length]))
        del buffer[: index + length]
        yield packet


class PolicyProxy:
    """A TLS proxy in front of a broker that behaves like AWS IoT Core with a policy that
    does not allow the ``$aws/`` topics: it closes the connection of a client that
    subscribes to one (``deny="subscribe"``) or publishes on one (``deny="publish"``).

    It terminates the client's mutual TLS with the test server certificate and
    connects to the broker with the test client certificate; ``refusals`` counts the
    connections it closed. Runs its own event loop on a thread.
    """

    def __init__(self, upstream: Any, files: PkiFiles, *, deny: str = "subscribe") -> None:
        self.upstream = upstream
        self.files = files
        self.deny = deny
        self.host = "127.0.0.1"
        self.port = 0
        self.refusals = 0
        self.connections = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None

    def start(self) -> PolicyProxy:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._listen(), self._loop).result(10)
        return self

    def stop(self) -> None:
        async def close() -> None:
            if self._server is not None:
                self._server.close()

        asyncio.run_coroutine_threadsafe(close(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    async def _listen(self) -> None:
        server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(self.files.ca_cert))
        server.load_cert_chain(str(self.files.server_cert), str(self.files.server_key))
        server.verify_mode = ssl.CERT_REQUIRED
        self._server = await asyncio.start_server(self._serve, self.host, 0, ssl=server)
        self.port = self._server.sockets[0].getsockname()[1]

    def _denied(self, first: int, body: bytes) -> bool:
        kind = first >> 4
        if self.deny == "subscribe" and kind == 8:
            return b"$aws/" in body
        if self.deny == "publish" and kind == 3:
            size = int.from_bytes(body[:2], "big")
            return body[2 : 2 + size].startswith(b"$aws/")
        return False

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        client = client_tls_context(
            self.files.ca_cert, self.files.client_cert, self.files.client_key
        )
        try:
            up_reader, up_writer = await asyncio.open_connection(
                self.upstream.host, self.upstream.port, ssl=client, server_hostname="127.0.0.1"
            )
        except OSError:
            writer.close()
            return

        async def down() -> None:
            while data := await up_reader.read(65536):
                writer.write(data)
                await writer.drain()

        async def up() -> None:
            pending = bytearray()
            while data := await reader.read(65536):
                pending += data
                for first, body in _packets(pending):
                    if self._denied(first, body):
                        self.refusals += 1
                        return  # AWS IoT: the connection is closed, nothing is answered
                    size = len(body)
                    header = bytearray([first])
                    while True:
                        byte, size = size % 128, size // 128
                        header.append(byte | (0x80 if size else 0))
                        if not size:
                            break
                    up_writer.write(bytes(header) + body)
                await up_writer.drain()

        tasks = [asyncio.ensure_future(up()), asyncio.ensure_future(down())]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        except OSError:
            pass
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for stream in (writer, up_writer):
                with contextlib.suppress(Exception):
                    stream.close()
