"""A simulated XBee coordinator: a handful of remote nodes reporting through its serial port.

It is a ``SerialDevice`` for ``drivers.sim.pty.PtyDevice``: the real XBee driver
reads it through pyserial. The nodes are those of ``config/examples/xbee.yaml``:
four send text payloads (0x90 Receive Packets, two as key=value lines, two as JSON),
one sends IO samples (0x92) of a TMP36 on AD1 and a door contact on DIO4. At
start it sends a Modem Status frame, as a real coordinator does on power-up.

Frames are built with the driver's own ``encode_frame``; the tests check that
function against Digi's documented frames, not against this simulator.
Everything random is drawn from one seeded generator, so a run repeats exactly.
"""

from __future__ import annotations

import json
import random
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

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
class _NodeState:
    node: SimNode
    network_address: int
    period: float
    phase: float
    temperature: float
    humidity: float
    battery: float
    door_open: bool = False
    next_due: float | None = None
    silent: bool = False
    sent: int = 0


class SimXBeeCoordinator:
    """An XBee coordinator in API mode 1 or 2 with simulated remote nodes.

    ``period``: seconds between two reports of one node (each node drifts a few
    per cent, as independent nodes do). ``garbage``: probability that noise bytes
    precede a frame. ``corrupt``: probability that a frame has one byte of its
    frame data changed (the checksum no longer matches, so the driver must drop
    it). ``silence(node)`` / ``resume(node)`` make a node go quiet and come back.
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
        self.garbage = garbage
        self.corrupt = corrupt
        self.received = bytearray()  # what the host sent (this coordinator ignores it)
        self.corrupted = 0
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._start: float | None = None
        self._pending = bytearray()
        if modem_status:
            self._pending += self._encode(bytes((MODEM_STATUS, COORDINATOR_STARTED)))
        count = max(1, len(nodes))
        self._nodes = [
            _NodeState(
                node=node,
                network_address=self._rng.randrange(0x0001, 0xFFF0),
                period=period * self._rng.uniform(0.97, 1.03),
                phase=period * (index + self._rng.random() * 0.5) / count,
                temperature=self._rng.uniform(12.0, 24.0),
                humidity=self._rng.uniform(40.0, 70.0),
                battery=self._rng.uniform(3.6, 4.1),
            )
            for index, node in enumerate(nodes)
        ]

    # --- controls for tests --------------------------------------------------------------

    def _find(self, node: str) -> _NodeState:
        key = node.upper()
        for state in self._nodes:
            if key in (state.node.address, state.node.label.upper()):
                return state
        raise KeyError(f"no simulated node {node!r}")

    def silence(self, node: str) -> None:
        """Stop node ``node`` (address or label) from sending until ``resume``."""
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

    # --- SerialDevice ----------------------------------------------------------------------

    def receive(self, data: bytes) -> None:
        """Host bytes (AT command frames); kept, not answered."""
        with self._lock:
            self.received += data

    def transmit(self, now: float) -> bytes:
        """The frames of every node due at ``now`` (monotonic seconds)."""
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
                out += self._noise() + self.frame(state.node.address)
            return out

    # --- frames ------------------------------------------------------------------------------

    def frame(self, node: str) -> bytes:
        """One report of ``node`` as it goes on the wire (the weather moves on a step)."""
        state = self._find(node)
        self._step(state)
        state.sent += 1
        source = bytes.fromhex(state.node.address) + state.network_address.to_bytes(2, "big")
        if state.node.kind == "io":
            data = bytes((IO_SAMPLE,)) + source + self._io_body(state)
        else:
            data = bytes((RX_PACKET,)) + source + bytes((RECEIVE_ACKNOWLEDGED,))
            data += self.payload(state)
        return self._encode(data)

    def payload(self, state: _NodeState) -> bytes:
        """The RF data of a text node: a key=value line or a JSON object."""
        t, h, bat = round(state.temperature, 2), round(state.humidity, 1), round(state.battery, 2)
        if state.node.kind == "json":
            return json.dumps({"t": t, "h": h, "bat": bat}).encode()
        return f"t={t:.2f};h={h:.1f};bat={bat:.2f}".encode()

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
        rng = self._rng
        state.temperature = min(35.0, max(5.0, state.temperature + rng.gauss(0.0, 0.05)))
        state.humidity = min(95.0, max(20.0, state.humidity + rng.gauss(0.0, 0.2)))
        state.battery = max(3.3, state.battery - rng.uniform(0.0, 0.0005))
        if rng.random() < 0.1:
            state.door_open = not state.door_open

    def _encode(self, data: bytes) -> bytes:
        if self.corrupt and self._rng.random() < self.corrupt:
            # One byte of the frame data changed after the checksum was taken: exactly
            # one bad byte, which the checksum always catches.
            self.corrupted += 1
            bad = bytearray(data)
            bad[self._rng.randrange(len(data))] ^= self._rng.randrange(1, 256)
            body = len(data).to_bytes(2, "big") + bytes(bad) + bytes((checksum(data),))
            return bytes((START,)) + (escape(body) if self.api_mode == 2 else body)
        return encode_frame(data, self.api_mode)

    def _noise(self) -> bytes:
        if not self.garbage or self._rng.random() >= self.garbage:
            return b""
        return bytes(self._rng.randrange(256) for _ in range(self._rng.randrange(1, 17)))
