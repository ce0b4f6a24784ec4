"""Is the wall clock known to be right? A Pi has no RTC until NTP has answered.

The kernel knows: ``adjtimex(2)`` returns ``TIME_ERROR`` while the clock is
unsynchronised (STA_UNSYNC), which is what chrony, ntpd and
systemd-timesyncd clear once they have set it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os

TIME_ERROR = 5  # adjtimex(2): clock not synchronised
_TIMEX_SIZE = 256  # struct timex is 208 bytes on 64-bit Linux; room to spare


@functools.cache
def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name, use_errno=True) if name else None
    except OSError:
        return None


def kernel_clock_synchronised() -> bool | None:
    """True/False from the kernel, None where adjtimex is unavailable."""
    libc = _libc()
    if libc is None or not hasattr(libc, "adjtimex"):
        return None
    buf = ctypes.create_string_buffer(_TIMEX_SIZE)  # modes = 0: read only
    state = libc.adjtimex(buf)
    if state < 0:
        return None
    return bool(state != TIME_ERROR)


def clock_synchronised(policy: str = "kernel") -> bool:
    """Whether readings taken now carry a trustworthy time.

    ``policy`` is "kernel" (ask adjtimex; unknown counts as unsynchronised) or
    "assume-synced" for boards with a battery-backed RTC or containers whose
    host keeps time. ``WSN_GATEWAY_ASSUME_SYNCED=1`` forces the latter.
    """
    if policy == "assume-synced" or os.environ.get("WSN_GATEWAY_ASSUME_SYNCED") == "1":
        return True
    return kernel_clock_synchronised() is True


class ClockWatch:
    """Follows the wall clock against the monotonic clock, so that readings taken
    before NTP set the clock can be corrected once it has (same boot).

    While the clock is unsynchronised, every reading is stamped at the same offset
    between wall and monotonic time, unless the wall clock jumps meanwhile; when the
    clock becomes synchronised, the new offset minus that one is the error of those
    readings. Readings from before a jump while unsynchronised keep their flag: their
    error is not known.
    """

    def __init__(self, jump: float = 1.0) -> None:
        self.jump = jump
        self._offset: float | None = None
        self._from_id = 0

    def observe(
        self, *, synced: bool, wall: float, mono: float, first_id: int
    ) -> tuple[int, float] | None:
        """Call after each group commit; ``first_id`` is the row id of its first reading.

        Returns ``(from_id, delta)`` when the clock has just become synchronised: add
        ``delta`` seconds to the unsynced readings with id ≥ ``from_id``.
        """
        offset = wall - mono
        if not synced:
            if self._offset is None or abs(offset - self._offset) > self.jump:
                self._offset, self._from_id = offset, first_id
            return None
        if self._offset is None:
            return None
        delta, from_id = offset - self._offset, self._from_id
        self._offset = None
        return from_id, delta
