"""Blocking hardware I/O off the event loop: one worker thread per bus.

A single-thread executor per bus is the bus lock: transfers on one bus are
serialised, while a hung transfer on one bus never delays another bus or the
event loop. A call that exceeds its timeout is abandoned by the caller; the
thread finishes it (or stays stuck) without blocking anyone else.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")


class Worker:
    """A named thread that runs blocking calls one at a time."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)

    async def run(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Run ``fn`` on this worker's thread and await its result."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(fn, *args, **kwargs))

    def shutdown(self) -> None:
        """Stop accepting work; a call still running is left to finish on its own."""
        self._executor.shutdown(wait=False, cancel_futures=True)
