"""sd_notify(3) over $NOTIFY_SOCKET: READY, STATUS, WATCHDOG, RELOADING, STOPPING.

The protocol is one datagram of ``KEY=value`` lines to the AF_UNIX socket named in
$NOTIFY_SOCKET (a leading "@" means the abstract namespace). Without that variable,
as outside systemd, every call does nothing. Sending never raises: a lost
notification must not stop the gateway.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Mapping

log = logging.getLogger(__name__)


class Notifier:
    """The service manager's notification socket, if there is one."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        path = env.get("NOTIFY_SOCKET", "")
        self.address: str | bytes | None = None
        if path.startswith("@"):
            self.address = b"\0" + path[1:].encode()
        elif path.startswith("/"):
            self.address = path
        self._socket: socket.socket | None = None
        self._failed = False
        self.watchdog_interval = _watchdog_interval(env)

    @property
    def enabled(self) -> bool:
        """True when running under a service manager that listens."""
        return self.address is not None

    def send(self, *lines: str) -> bool:
        """Send ``lines`` as one message; False when it could not be sent."""
        if self.address is None:
            return False
        try:
            if self._socket is None:
                self._socket = socket.socket(
                    socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC
                )
                self._socket.setblocking(False)
            self._socket.sendto("\n".join(lines).encode(), self.address)
        except OSError as err:
            if not self._failed:  # once, not on every ping
                log.warning("cannot notify the service manager", extra={"error": str(err)})
            self._failed = True
            return False
        return True

    def ready(self) -> bool:
        """READY=1: the service is up (again, after a reload)."""
        return self.send("READY=1")

    def reloading(self) -> bool:
        """RELOADING=1, with the timestamp that systemd ≥ 253 asks for."""
        return self.send(
            "RELOADING=1", f"MONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}"
        )

    def stopping(self) -> bool:
        """STOPPING=1: shutdown has begun."""
        return self.send("STOPPING=1")

    def status(self, text: str) -> bool:
        """STATUS=: one line shown by ``systemctl status``."""
        return self.send("STATUS=" + " ".join(text.split()))

    def watchdog(self) -> bool:
        """WATCHDOG=1: the event loop is alive."""
        return self.send("WATCHDOG=1")

    def close(self) -> None:
        """Close the socket (a later send opens it again)."""
        if self._socket is not None:
            self._socket.close()
            self._socket = None


def _watchdog_interval(env: Mapping[str, str]) -> float | None:
    """Seconds between WATCHDOG=1 pings: half of $WATCHDOG_USEC, when it is meant for
    this process ($WATCHDOG_PID unset or ours); None when no watchdog is armed."""
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    pid = env.get("WATCHDOG_PID")
    if usec <= 0 or (pid and pid != str(os.getpid())):
        return None
    return usec / 2e6
