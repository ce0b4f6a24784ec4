"""A simulated XBee coordinator: a handful of remote nodes reporting through its serial port.

It is a ``SerialDevice`` for ``drivers.sim.pty.PtyDevice``: the real XBee driver
reads it through pyserial. The nodes are those of ``config/examples/xbee.yaml``:
four send text payloads (0x90 Receive Packets, two as key=value lines, two as JSON),
one sends IO samples (0x92) of a TMP36 on AD1 and a door contact on DIO4. At
start it sends a Modem Status frame, as a real coordinator does on power-up.

Frames are built with the driver's own ``encode_frame``; the tests check that
function against Digi's documented frames, not against this simulator. The nodes'
schedule and weather come from ``drivers.sim.wsn_nodes``, shared with the LineSink
simulator; everything random is drawn from one seeded generator, so a run repeats
exactly.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from drivers.sim.wsn_nodes import SimNodeState, SimWsnCoordinator, key_values, readings
from drivers.xbee import (
    ADC_MAX,
    DEFAULT_ADC_FULL_SCALE_MV,
    IO_SAMPLE,
    RX_PACKET,
    START,
    checksum,
    encode_frame,
    escape,
)

MODEM_STATUS = 0x8A  # [S2C "Modem Status frame - 0x8A"]
COORDINATOR_STARTED = 0x06  # modem status: the coordinator formed its network
RECEIVE_ACKNOWLEDGED = 0x01  # receive options bit 0 [S2C 0x90]
DOOR_LINE = 4  # DIO4
SPARE_LINE = 3  # DIO3: a digital output the node drives low, sampled too (as in [S2C 0x92])
TMP36_CHANNEL = 1  # AD1
TMP36_OFFSET_V = 0.5  # TMP36 datasheet: 500 mV at 0 °C, 10 mV/°C
TMP36_V_PER_C = 0.01

NodeKind = Literal["kv", "json", "io"]


@dataclass(frozen=True)
class SimNode:
    """A simulated remote node: its 64-bit address, a label, and what it sends."""

    address: str
    label: str
    kind: NodeKind


#: The nodes of config/examples/xbee.yaml (0013A200 is Digi's OUI).
EXAMPLE_NODES: tuple[SimNode, ...] = (
    SimNode("0013A20041A7B101", "greenhouse", "kv"),
    SimNode("0013A20041A7B102", "barn", "kv"),
    SimNode("0013A20041A7B103", "orchard", "json"),
    SimNode("0013A20041A7B104", "cellar", "json"),
    SimNode("0013A20041A7B105", "gate", "io"),
)


@dataclass
class _NodeState(SimNodeState[SimNode]):
    """A node's weather and schedule, and what only an XBee node has."""

    network_address: int = 0
    door_open: bool = False


class SimXBeeCoordinator(SimWsnCoordinator[SimNode, _NodeState]):
    """An XBee coordinator in API mode 1 or 2 with simulated remote nodes.

    ``period``: seconds between two reports of one node (each node drifts a few
    per cent, as independent nodes do). ``garbage``: probability that noise bytes
    precede a frame. ``corrupt``: probability that a frame has one byte of its
    frame data changed (the checksum no longer matches, so the driver must drop
    it). ``silence(node)`` / ``resume(node)`` (address or label) make a node go
    quiet and come back.
    """

    def __init__(
        self,
        *,
        seed: int = 0,
        api_mode: int = 2,
        period: float = 2.0,
        nodes: Sequence[SimNode] = EXAMPLE_NODES,
        garbage: float = 0.0,
        corrupt: float = 0.0,
        modem_status: bool = True,
    ) -> None:
        if api_mode not in (1, 2):
            raise ValueError(f"api_mode must be 1 or 2, got {api_mode}")
        self.api_mode = api_mode
        self.modem_status = modem_status
        super().__init__(seed=seed, period=period, nodes=nodes, garbage=garbage, corrupt=corrupt)

    def _greeting(self) -> bytes:
        """A Modem Status frame, as a real coordinator sends on power-up."""
        if not self.modem_status:
            return b""
        return self._wrap(bytes((MODEM_STATUS, COORDINATOR_STARTED)))

    def _new_state(self, node: SimNode) -> _NodeState:
        return _NodeState(node, network_address=self._rng.randrange(0x0001, 0xFFF0))

    def _is_named(self, node: SimNode, name: str) -> bool:
        return name.upper() in (node.address, node.label.upper())

    # --- frames ------------------------------------------------------------------------------

    def frame(self, node: str) -> bytes:
        """One report of ``node`` as it goes on the wire (the weather moves on a step)."""
        return self._report(self._find(node))

    def _encode(self, state: _NodeState) -> bytes:
        source = bytes.fromhex(state.node.address) + state.network_address.to_bytes(2, "big")
        if state.node.kind == "io":
            data = bytes((IO_SAMPLE,)) + source + self._io_body(state)
        else:
            data = bytes((RX_PACKET,)) + source + bytes((RECEIVE_ACKNOWLEDGED,))
            data += self.payload(state)
        return self._wrap(data)

    def payload(self, state: _NodeState) -> bytes:
        """The RF data of a text node: a key=value line or a JSON object."""
        values = readings(state)
        if state.node.kind == "json":
            return json.dumps(values).encode()
        return key_values(values).encode()

    def _io_body(self, state: _NodeState) -> bytes:
        """Options, one sample set: DIO3 and DIO4 digital, AD1 analog [ZB "IO sampling"]."""
        digital_mask = 1 << DOOR_LINE | 1 << SPARE_LINE
        digital = (1 << DOOR_LINE) if state.door_open else 0
        volts = TMP36_OFFSET_V + state.temperature * TMP36_V_PER_C
        raw = min(ADC_MAX, max(0, round(volts * 1000.0 * ADC_MAX / DEFAULT_ADC_FULL_SCALE_MV)))
        return (
            bytes((RECEIVE_ACKNOWLEDGED, 1))
            + digital_mask.to_bytes(2, "big")
            + bytes((1 << TMP36_CHANNEL,))
            + digital.to_bytes(2, "big")
            + raw.to_bytes(2, "big")
        )

    def _step(self, state: _NodeState) -> None:
        super()._step(state)
        if self._rng.random() < 0.1:
            state.door_open = not state.door_open

    def _wrap(self, data: bytes) -> bytes:
        """``data`` framed for the wire; maybe with one byte changed after the checksum."""
        if self._corrupting():
            # One byte of the frame data changed after the checksum was taken: exactly
            # one bad byte, which the checksum always catches.
            bad = bytearray(data)
            bad[self._rng.randrange(len(data))] ^= self._rng.randrange(1, 256)
            body = len(data).to_bytes(2, "big") + bytes(bad) + bytes((checksum(data),))
            return bytes((START,)) + (escape(body) if self.api_mode == 2 else body)
        return encode_frame(data, self.api_mode)

    def _garbage(self) -> bytes:
        return bytes(self._rng.randrange(256) for _ in range(self._rng.randrange(1, 17)))
