"""A simulated sink node (an ESP32 receiving from a few radio nodes) printing one line each.

It is a ``SerialDevice`` for ``drivers.sim.pty.PtyDevice``: the real LineSink
driver reads it through pyserial. The nodes are those of
``config/examples/linesink.yaml``: two print key=value lines, two JSON lines,
all with ``\\r\\n`` endings as Arduino's ``Serial.println`` writes them. At start
it prints what an ESP32's boot ROM prints, which the driver must drop. The nodes'
schedule and weather come from ``drivers.sim.wsn_nodes``, shared with the XBee
simulator; everything random comes from one seeded generator, so a run repeats exactly.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from drivers.sim.wsn_nodes import SimNodeState, SimWsnCoordinator, key_values, readings

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


_NodeState = SimNodeState[SimSinkNode]


class SimLineSink(SimWsnCoordinator[SimSinkNode, _NodeState]):
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
        self.banner = banner
        self.separator = separator
        self.node_key = node_key
        super().__init__(seed=seed, period=period, nodes=nodes, garbage=garbage, corrupt=corrupt)

    def _greeting(self) -> bytes:
        """What an ESP32's boot ROM prints, which the driver must drop."""
        return BOOT_BANNER if self.banner else b""

    def _new_state(self, node: SimSinkNode) -> _NodeState:
        return _NodeState(node)

    def _is_named(self, node: SimSinkNode, name: str) -> bool:
        return node.id == str(name)

    def line(self, node: str) -> bytes:
        """One message of ``node``, line ending included (the weather moves on a step)."""
        return self._report(self._find(node))

    def _encode(self, state: _NodeState) -> bytes:
        node, values = state.node.id, readings(state)
        if state.node.kind == "json":
            node_id: int | str = int(node) if node.isdigit() else node
            text = json.dumps({self.node_key: node_id} | values)
        else:
            text = f"{self.node_key}={node}{self.separator}" + key_values(values, self.separator)
        raw = bytearray(text.encode())
        if self._corrupting():
            raw[self._rng.randrange(len(raw))] = 0xFF  # never valid in UTF-8
        return bytes(raw) + b"\r\n"

    def _garbage(self) -> bytes:
        size = self._rng.randrange(1, 40)
        noise = bytes(self._rng.choice(range(256)) for _ in range(size)).replace(b"\n", b"")
        return noise + b"\r\n"
