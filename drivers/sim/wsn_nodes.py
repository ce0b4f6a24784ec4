"""What the simulated WSN coordinators (XBee, LineSink) share, written once.

A coordinator is one serial device speaking for a few remote nodes, each of which
reports its weather (temperature, humidity, battery) every ``period`` seconds, drifting
a few per cent as independent nodes do. Here live the nodes' schedule, ``silence`` /
``resume`` for tests, the noise and corruption gates and the ``SerialDevice`` side. A
subclass says how a node is looked up, what it sends on the wire (a frame, a line) and
what noise looks like on its line. Everything random is drawn from one seeded
generator in a fixed order, so a run repeats exactly.
"""

from __future__ import annotations

import random
import threading
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

#: A simulated node as configured (its id or address, and what it sends).
N = TypeVar("N")


@dataclass
class SimNodeState(Generic[N]):
    """One node's weather and schedule.

    The drawn fields are placeholders until the coordinator draws them, after the
    subclass's own per-node draws: the order of draws is what makes a seed repeat.
    """

    node: N
    period: float = 0.0
    phase: float = 0.0
    temperature: float = 0.0
    humidity: float = 0.0
    battery: float = 0.0
    next_due: float | None = None
    silent: bool = False
    sent: int = 0


#: The state a coordinator keeps per node (``SimNodeState`` or a subclass of it).
S = TypeVar("S", bound="SimNodeState[Any]")


class SimWsnCoordinator(ABC, Generic[N, S]):
    """A serial device that reports for simulated nodes, each on its own schedule.

    ``period``: seconds between two reports of one node. ``garbage``: probability
    that noise precedes a report. ``corrupt``: probability that a report is damaged
    so that the driver must drop it (``corrupted`` counts them). ``silence(node)`` /
    ``resume(node)`` make a node go quiet and come back.
    """

    def __init__(
        self,
        *,
        seed: int,
        period: float,
        nodes: Sequence[N],
        garbage: float,
        corrupt: float,
    ) -> None:
        self.garbage = garbage
        self.corrupt = corrupt
        self.received = bytearray()  # what the host sent (kept, never answered)
        self.corrupted = 0
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._start: float | None = None
        self._pending = bytearray(self._greeting())
        count = max(1, len(nodes))
        self._nodes: list[S] = []
        for index, node in enumerate(nodes):
            state = self._new_state(node)
            state.period = period * self._rng.uniform(0.97, 1.03)
            state.phase = period * (index + self._rng.random() * 0.5) / count
            state.temperature = self._rng.uniform(12.0, 24.0)
            state.humidity = self._rng.uniform(40.0, 70.0)
            state.battery = self._rng.uniform(3.6, 4.1)
            self._nodes.append(state)

    # --- what a protocol adds ------------------------------------------------------------

    def _greeting(self) -> bytes:
        """What the device sends at power-up, before any node reports (none here)."""
        return b""

    @abstractmethod
    def _new_state(self, node: N) -> S:
        """A fresh state of ``node``, with the protocol's own per-node draws (if any)."""

    @abstractmethod
    def _is_named(self, node: N, name: str) -> bool:
        """True when ``name`` (as a test writes it) means ``node``."""

    @abstractmethod
    def _encode(self, state: S) -> bytes:
        """One report of ``state`` as it goes on the wire (maybe corrupted)."""

    @abstractmethod
    def _garbage(self) -> bytes:
        """Noise as it looks on this device's line."""

    # --- controls for tests --------------------------------------------------------------

    def _find(self, node: str) -> S:
        for state in self._nodes:
            if self._is_named(state.node, node):
                return state
        raise KeyError(f"no simulated node {node!r}")

    def silence(self, node: str) -> None:
        """Stop ``node`` from sending until ``resume``."""
        with self._lock:
            self._find(node).silent = True

    def resume(self, node: str) -> None:
        """Let a silenced node send again (at once)."""
        with self._lock:
            state = self._find(node)
            state.silent = False
            state.next_due = None

    def sent(self, node: str) -> int:
        """How many reports ``node`` has sent."""
        with self._lock:
            return self._find(node).sent

    # --- SerialDevice --------------------------------------------------------------------

    def receive(self, data: bytes) -> None:
        """Host bytes (commands); kept, not answered."""
        with self._lock:
            self.received += data

    def transmit(self, now: float) -> bytes:
        """The reports of every node due at ``now`` (monotonic seconds)."""
        with self._lock:
            if self._start is None:
                self._start = now
            out = bytes(self._pending)
            self._pending.clear()
            for state in self._nodes:
                if state.next_due is None:
                    state.next_due = (
                        self._start + state.phase if state.sent == 0 and not state.silent else now
                    )
                if now < state.next_due:
                    continue
                # Catch up by skipping, not bursting: a node that was held up sends once.
                state.next_due = max(state.next_due + state.period, now)
                if state.silent:
                    continue
                out += self._noise() + self._report(state)
            return out

    # --- reports -------------------------------------------------------------------------

    def _report(self, state: S) -> bytes:
        """The next report of ``state``: the weather moves on a step first."""
        self._step(state)
        state.sent += 1
        return self._encode(state)

    def _step(self, state: S) -> None:
        """The weather's random walk, within what a node can measure."""
        rng = self._rng
        state.temperature = min(35.0, max(5.0, state.temperature + rng.gauss(0.0, 0.05)))
        state.humidity = min(95.0, max(20.0, state.humidity + rng.gauss(0.0, 0.2)))
        state.battery = max(3.3, state.battery - rng.uniform(0.0, 0.0005))

    def _corrupting(self) -> bool:
        """Whether to damage the report being built (counted in ``corrupted``)."""
        if self.corrupt and self._rng.random() < self.corrupt:
            self.corrupted += 1
            return True
        return False

    def _noise(self) -> bytes:
        if not self.garbage or self._rng.random() >= self.garbage:
            return b""
        return self._garbage()


def readings(state: SimNodeState[N]) -> dict[str, float]:
    """A node's values as the example configs map them: ``t``, ``h`` and ``bat``, rounded."""
    return {
        "t": round(state.temperature, 2),
        "h": round(state.humidity, 1),
        "bat": round(state.battery, 2),
    }


def key_values(values: dict[str, float], separator: str = ";") -> str:
    """``t=21.50;h=45.2;bat=3.91``, with as many decimals as ``readings`` keeps."""
    t, h, bat = values["t"], values["h"], values["bat"]
    return f"t={t:.2f}{separator}h={h:.1f}{separator}bat={bat:.2f}"
