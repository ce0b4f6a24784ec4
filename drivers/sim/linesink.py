"""A simulated sink node (an ESP32 receiving from a few radio nodes) printing one line each.

It is a ``SerialDevice`` for ``drivers.sim.pty.PtyDevice``: the real LineSink
driver reads it through pyserial. The nodes are those of
``config/examples/linesink.yaml``: two print key=value lines, two JSON lines,
all with ``\\r\\n`` endings as Arduino's ``Serial.println`` writes them. At start
it prints what an ESP32's boot ROM prints, which the driver must drop.
Everything random comes from one seeded generator, so a run repeats exactly.
"""

from __future__ import annotations

import json
import random
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

LineKind = Literal["kv", "json"]

#: The first lines an ESP32 prints after reset (ROM bootloader), noise to the driver.
BOOT_BANNER = (
    b"ets Jun  8 2016 00:22:57\r\n\r\nrst:0x1 (POWERON_RESET),boot:0x13 (SPI_FAST_FLASH_BOOT)\r\n"
)


@dataclass(frozen=True)
class SimSinkNode:
    """A simulated radio node behind the sink: the id it is printed with and its format."""

    id: str
    kind: LineKind


#: The nodes of config/examples/linesink.yaml.
EXAMPLE_NODES: tuple[SimSinkNode, ...] = (
    SimSinkNode("1", "kv"),
    SimSinkNode("2", "kv"),
    SimSinkNode("3", "json"),
    SimSinkNode("4", "json"),
)


@dataclass
class _NodeState:
    node: SimSinkNode
    period: float
    phase: float
    temperature: float
    humidity: float
    battery: float
    next_due: float | None = None
    silent: bool = False
    sent: int = 0


class SimLineSink:
    """A sink printing ``node=1;t=21.50;h=45.2;bat=3.91`` and JSON lines for its nodes.

    ``period``: seconds between two lines of one node. ``garbage``: probability
    that a line of noise (random bytes, often not UTF-8) precedes a message.
    ``corrupt``: probability that one byte of a line becomes 0xFF, which is never
    valid UTF-8, so the driver must drop that line. ``silence(node)`` /
    ``resume(node)`` make a node go quiet and come back.
    """

    def __init__(
        self,
        *,
        seed: int = 0,
        period: float = 2.0,
        nodes: Sequence[SimSinkNode] = EXAMPLE_NODES,
        garbage: float = 0.0,
        corrupt: float = 0.0,
        banner: bool = True,
        separator: str = ";",
        node_key: str = "node",
    ) -> None:
        self.garbage = garbage
        self.corrupt = corrupt
        self.separator = separator
        self.node_key = node_key
        self.received = bytearray()
        self.corrupted = 0
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._start: float | None = None
        self._pending = bytearray(BOOT_BANNER if banner else b"")
        count = max(1, len(nodes))
        self._nodes = [
            _NodeState(
                node=node,
                period=period * self._rng.uniform(0.97, 1.03),
                phase=period * (index + self._rng.random() * 0.5) / count,
                temperature=self._rng.uniform(12.0, 24.0),
                humidity=self._rng.uniform(40.0, 70.0),
                battery=self._rng.uniform(3.6, 4.1),
            )
            for index, node in enumerate(nodes)
        ]

    def _find(self, node: str) -> _NodeState:
        for state in self._nodes:
            if state.node.id == str(node):
                return state
        raise KeyError(f"no simulated node {node!r}")

    def silence(self, node: str) -> None:
        """Stop node ``node`` from sending until ``resume``."""
        with self._lock:
            self._find(node).silent = True

    def resume(self, node: str) -> None:
        """Let a silenced node send again (at once)."""
        with self._lock:
            state = self._find(node)
            state.silent = False
            state.next_due = None

    def sent(self, node: str) -> int:
        """How many lines ``node`` has sent."""
        with self._lock:
            return self._find(node).sent

    def receive(self, data: bytes) -> None:
        """Host bytes; a sink only talks, so they are kept and ignored."""
        with self._lock:
            self.received += data

    def transmit(self, now: float) -> bytes:
        """The lines of every node due at ``now`` (monotonic seconds)."""
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
                state.next_due = max(state.next_due + state.period, now)
                if state.silent:
                    continue
                out += self._noise() + self.line(state.node.id)
            return out

    def line(self, node: str) -> bytes:
        """One message of ``node``, line ending included (the weather moves on a step)."""
        state = self._find(node)
        rng = self._rng
        state.temperature = min(35.0, max(5.0, state.temperature + rng.gauss(0.0, 0.05)))
        state.humidity = min(95.0, max(20.0, state.humidity + rng.gauss(0.0, 0.2)))
        state.battery = max(3.3, state.battery - rng.uniform(0.0, 0.0005))
        state.sent += 1
        t, h, bat = round(state.temperature, 2), round(state.humidity, 1), round(state.battery, 2)
        if state.node.kind == "json":
            node_id: int | str = int(node) if node.isdigit() else node
            text = json.dumps({self.node_key: node_id, "t": t, "h": h, "bat": bat})
        else:
            sep = self.separator
            text = f"{self.node_key}={node}{sep}t={t:.2f}{sep}h={h:.1f}{sep}bat={bat:.2f}"
        raw = bytearray(text.encode())
        if self.corrupt and rng.random() < self.corrupt:
            self.corrupted += 1
            raw[rng.randrange(len(raw))] = 0xFF  # never valid in UTF-8
        return bytes(raw) + b"\r\n"

    def _noise(self) -> bytes:
        if not self.garbage or self._rng.random() >= self.garbage:
            return b""
        size = self._rng.randrange(1, 40)
        noise = bytes(self._rng.choice(range(256)) for _ in range(size)).replace(b"\n", b"")
        return noise + b"\r\n"
