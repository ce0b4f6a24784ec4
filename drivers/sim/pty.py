"""Serial devices simulated behind a pseudo-terminal, so drivers use real pyserial.

The simulated device sits on the master side; the driver opens the slave path
like any ``/dev/ttyUSB0``. Both sides are raw (no echo, no newline
translation), so the bytes are exactly what the device would put on the wire.
"""

from __future__ import annotations

import contextlib
import os
import select
import threading
import time
import tty
from typing import Protocol


class SerialDevice(Protocol):
    """A device that speaks on a serial line."""

    def receive(self, data: bytes) -> None:
        """Bytes the host sent (commands)."""

    def transmit(self, now: float) -> bytes:
        """Bytes the device sends at monotonic time ``now`` (often b"")."""


class PtyDevice:
    """Runs ``device`` on the master side of a new pseudo-terminal pair."""

    def __init__(self, device: SerialDevice, *, tick: float = 0.02) -> None:
        self.device = device
        self.tick = tick
        self._master, self._slave = os.openpty()
        tty.setraw(self._slave)  # until pyserial opens it: no echo back to the device
        # A device talks whether or not anyone listens: never block on a full buffer.
        os.set_blocking(self._master, False)
        self.path = os.ttyname(self._slave)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name=f"pty-{self.path}", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            readable, _, _ = select.select([self._master], [], [], self.tick)
            if readable:
                try:
                    data = os.read(self._master, 4096)
                except OSError:  # includes BlockingIOError after a spurious wake-up
                    data = b""
                if data:
                    self.device.receive(data)
            out = self.device.transmit(time.monotonic())
            if out:
                # Nobody reads and the pty buffer is full: the device talks on anyway.
                with contextlib.suppress(OSError):
                    os.write(self._master, out)

    def close(self) -> None:
        """Stop the device and close both ends."""
        self._stop.set()
        self._thread.join(timeout=1.0)
        for fd in (self._master, self._slave):
            with contextlib.suppress(OSError):
                os.close(fd)
