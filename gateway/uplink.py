"""A TCP relay whose link can be cut and restored: the demo's stand-in for a Wi-Fi
or cellular uplink that drops, with the broker and its consumers staying up."""

from __future__ import annotations

import asyncio
import contextlib


class Uplink:
    """Relays 127.0.0.1:``port`` to ``target_host:target_port`` while up."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self.up = True
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        """Listen on a free loopback port."""
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self.up:
            writer.close()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        link = {writer, up_writer}
        self._writers |= link
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(_pipe(reader, up_writer))
                group.create_task(_pipe(up_reader, writer))
        except* (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            self._writers -= link
            for w in link:
                w.close()

    def cut(self) -> None:
        """Drop every open connection (as a dead link would: no goodbye) and refuse
        new ones."""
        self.up = False
        for writer in list(self._writers):
            writer.transport.abort()

    def restore(self) -> None:
        """Accept connections again."""
        self.up = True

    async def stop(self) -> None:
        """Close the listener and all links."""
        self.cut()
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()
    writer.close()
