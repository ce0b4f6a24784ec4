"""Embedded MQTT broker (amqtt) with mutual TLS on 127.0.0.1, for ``wsn-gateway demo``.

amqtt builds the TLS context of its own listeners with ``CERT_OPTIONAL``: a client
that presents no certificate at all is let in. It offers no option to change that,
but it does support *external* listeners: the application accepts connections
itself and hands each stream to ``Broker.external_connected``. So this module runs
its own ``asyncio`` TLS server with a ``CERT_REQUIRED`` context and gives amqtt the
connections that passed the handshake; amqtt never opens a socket of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from types import TracebackType
from typing import Any

from amqtt.adapters import StreamReaderAdapter, StreamWriterAdapter
from amqtt.broker import Broker
from amqtt.contexts import BrokerConfig, ListenerConfig, ListenerType

from gateway.pki import PkiFiles

_LISTENER = "default"
_QUIET_LOGGERS = ("amqtt", "transitions")


def server_ssl_context(files: PkiFiles) -> ssl.SSLContext:
    """TLS 1.2+ server context that requires a client certificate issued by the PKI's CA."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(files.server_cert, files.server_key)
    context.load_verify_locations(cafile=files.ca_cert)
    context.verify_mode = ssl.CERT_REQUIRED
    return context


class DemoBroker:
    """An in-process MQTT 3.1.1 broker listening with mutual TLS on 127.0.0.1.

    ``port=0`` takes a free port, which is kept across ``stop()``/``start()``.
    Sessions and queued messages live in memory only: a restart forgets them.

        async with DemoBroker(files) as broker:
            ...  # connect to 127.0.0.1:broker.port with a client certificate
    """

    def __init__(
        self,
        files: PkiFiles,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        log_level: int = logging.WARNING,
    ) -> None:
        self.files = files
        self.host = host
        self._port = port
        self._log_level = log_level
        self._broker: Any = None
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[Any]] = set()

    @property
    def port(self) -> int:
        """The TCP port (the one actually bound, once started)."""
        return self._port

    @property
    def running(self) -> bool:
        return self._server is not None

    async def start(self) -> None:
        """Start the broker; returns when the listener accepts connections."""
        if self._server is not None:
            raise RuntimeError("demo broker already running")
        for name in _QUIET_LOGGERS:
            logging.getLogger(name).setLevel(self._log_level)
        config = BrokerConfig(
            listeners={_LISTENER: ListenerConfig(type=ListenerType.EXTERNAL)},
            # Authentication is the TLS client certificate; the MQTT layer admits everyone
            # who got through the handshake. No $SYS publisher, no packet logger.
            plugins={"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
        )
        broker = Broker(config)
        await broker.start()
        try:
            self._server = await asyncio.start_server(
                self._accept,
                self.host,
                self._port,
                ssl=server_ssl_context(self.files),
                reuse_address=True,
            )
        except BaseException:
            await broker.shutdown()
            raise
        self._broker = broker
        self._port = self._server.sockets[0].getsockname()[1]

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One connection that passed the TLS handshake (so it has a valid client cert)."""
        task = asyncio.current_task()
        if task is not None:
            self._connections.add(task)
        try:
            await self._broker.external_connected(
                reader=StreamReaderAdapter(reader),
                writer=StreamWriterAdapter(writer),
                listener_name=_LISTENER,
            )
        finally:
            writer.close()
            if task is not None:
                self._connections.discard(task)

    async def stop(self) -> None:
        """Stop accepting, disconnect every client, and shut the broker down."""
        server, broker = self._server, self._broker
        self._server, self._broker = None, None
        if server is not None:
            server.close()
        if broker is not None:
            await broker.shutdown()
        # Connection tasks end when amqtt closes their sessions; cancel any straggler.
        for task in list(self._connections):
            task.cancel()
        if self._connections:
            await asyncio.gather(*self._connections, return_exceptions=True)
        if server is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(server.wait_closed(), timeout=5)

    async def __aenter__(self) -> DemoBroker:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.stop()
