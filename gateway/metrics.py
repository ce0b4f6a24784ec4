"""Counters the daemon keeps for logs, status lines and the demo's progress."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass
class Counters:
    """Monotonic counts since start; plain ints mutated on the event loop only."""

    readings_taken: int = 0
    readings_rejected: int = 0
    readings_buffered: int = 0
    readings_dropped: int = 0
    readings_sealed: int = 0
    readings_acked: int = 0
    batches_sealed: int = 0
    batches_published: int = 0
    batches_acked: int = 0
    bytes_published: int = 0
    sensor_errors: int = 0
    connects: int = 0
    connect_failures: int = 0

    def snapshot(self) -> dict[str, int]:
        """A copy for logging."""
        return asdict(self)
