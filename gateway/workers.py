"""Blocking hardware I/O off the event loop: one worker thread per bus.

A worker thread per bus is the bus lock: transfers on one bus are serialised,
while a hung transfer on one bus never delays another bus or the event loop.
A call that exceeds its timeout is abandoned by the caller; calls queued
behind it whose callers have given up are skipped rather than run late. The
threads are daemon threads, so a transfer stuck in the kernel for good never
keeps the process from exiting after a clean stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import queue
import threading
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")

_Job = tuple[Callable[[], Any], "asyncio.Future[Any]", asyncio.AbstractEventLoop]


def _settle(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.done():  # the caller timed out or was cancelled meanwhile
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


class Worker:
    """A named daemon thread that runs blocking calls one at a time, in order."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while (job := self._jobs.get()) is not None:
            call, future, loop = job
            if future.done():
                continue  # abandoned while it waited behind a slow call
            error: BaseException | None = None
            result = None
            try:
                result = call()
            except BaseException as err:
                error = err
            with contextlib.suppress(RuntimeError):  # the event loop has closed
                loop.call_soon_threadsafe(_settle, future, result, error)

    async def run(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Run ``fn`` on this worker's thread and await its result."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._jobs.put((functools.partial(fn, *args, **kwargs), future, loop))
        return await future

    def shutdown(self) -> None:
        """Let the thread end after the calls already queued."""
        self._jobs.put(None)
