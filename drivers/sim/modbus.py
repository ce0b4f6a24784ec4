"""A simulated Modbus RTU server (slave): a single-phase energy meter on a serial line.

It is a ``drivers.sim.pty.SerialDevice``: it takes request bytes, answers read
holding (0x03) and read input (0x04) requests with correct RTU frames, and answers
"illegal data address" for registers it does not have, so the real pymodbus client
and the driver's decoding run against it through a pseudo-terminal. Only this small
server side is written by hand; the CRC is pymodbus's.

Register map (0-based addresses; see ``INPUTS`` and ``HOLDINGS``): measurements in
input registers, float32 high word first as Eastron SDM meters have them, plus the
same energy and power in other types and word orders; identity and settings in
holding registers. Tests may put raw words at other addresses of ``input_registers``
and ``holding_registers``.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from pymodbus.framer import FramerRTU

from drivers.modbus import (
    FUNCTION_CODES,
    MAX_REGISTERS,
    RegisterType,
    WordOrder,
    encode,
)

REQUEST_SIZE = 8  # unit, function, start (2), count (2), CRC (2) for 0x03/0x04 (AP 6.3, 6.4)
MAX_FRAME = 256  # an RTU frame is at most 256 bytes (SL 2.5.1.1)
ILLEGAL_FUNCTION = 0x01  # AP 7
ILLEGAL_DATA_ADDRESS = 0x02
ILLEGAL_DATA_VALUE = 0x03
EXCEPTION_FLAG = 0x80  # function code | 0x80 in an exception answer (AP 7)


def crc16(data: bytes | bytearray) -> bytes:
    """CRC-16/MODBUS of ``data`` as it goes on the wire, low byte first (SL 2.5.1.2, 6.2.2).

    pymodbus's ``compute_CRC`` returns the two bytes already swapped into wire order.
    """
    crc: int = FramerRTU.compute_CRC(bytes(data))
    return crc.to_bytes(2, "big")


@dataclass(frozen=True)
class SimValue:
    """Where the meter shows one of its values, and how it encodes it."""

    address: int
    source: str  # attribute of SimModbus holding the value in its natural unit
    type: RegisterType
    word_order: WordOrder = "big"
    resolution: float = 1.0  # raw = value / resolution


INPUTS = (
    SimValue(0x0000, "voltage", "float32"),  # V
    SimValue(0x0002, "current", "float32"),  # A
    SimValue(0x0004, "power", "float32"),  # W
    SimValue(0x0006, "frequency", "float32"),  # Hz
    SimValue(0x0008, "energy_wh", "uint32"),  # Wh
    SimValue(0x000A, "temperature", "int16", resolution=0.1),  # °C, may be negative
    SimValue(0x000B, "power_factor", "int16", resolution=0.001),
    SimValue(0x000C, "energy_kwh", "float32", "little"),  # kWh, low word first
    SimValue(0x000E, "power", "int32", "little"),  # W, low word first
)
HOLDINGS = (
    SimValue(0x0000, "unit", "uint16"),
    SimValue(0x0001, "baud_code", "uint16"),
    SimValue(0x0002, "serial_number", "uint32"),
    SimValue(0x0004, "ct_ratio", "uint16"),
    SimValue(0x0005, "uptime", "uint32", "little"),  # s
)


class SimModbus:
    """The meter, answering as ``unit``; its load drifts as a seeded random walk.

    Faults for tests: ``drop_answers`` swallows that many answers (a timeout), and
    ``corrupt_answers`` sends that many with a broken CRC.
    """

    def __init__(
        self,
        *,
        unit: int = 1,
        seed: int = 0,
        drift: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.unit = unit
        self.drift = drift
        self._clock = clock
        self._rng = random.Random(seed)
        self.voltage = 230.0 + self._rng.uniform(-3.0, 3.0)
        self.current = 2.0 + self._rng.uniform(-1.0, 1.0)
        self.power_factor = 0.95
        self.frequency = 50.0
        self.temperature = 21.0 + self._rng.uniform(-2.0, 2.0)
        self.energy_wh = 12345.0 + self._rng.uniform(0.0, 1000.0)
        self.baud_code = 2  # 9600 in the SDM convention
        self.serial_number = 20240000 + self._rng.randrange(10000)
        self.ct_ratio = 1
        self._started = clock()
        self._last = self._started
        self.input_registers: dict[int, int] = {}
        self.holding_registers: dict[int, int] = {}
        #: Requests answered (including exception answers).
        self.requests = 0
        self.drop_answers = 0
        self.corrupt_answers = 0
        self._rx = bytearray()
        self._out = bytearray()
        self._lock = threading.Lock()
        self._refresh()

    # --- derived values ------------------------------------------------------------------
    @property
    def power(self) -> float:
        """Active power in W."""
        return self.voltage * self.current * self.power_factor

    @property
    def energy_kwh(self) -> float:
        """Imported energy in kWh."""
        return self.energy_wh / 1000.0

    @property
    def uptime(self) -> int:
        """Seconds since the meter started."""
        return int(self._clock() - self._started)

    # --- the SerialDevice protocol -------------------------------------------------------
    def receive(self, data: bytes) -> None:
        """Request bytes from the client; answers are queued for ``transmit``."""
        with self._lock:
            self._rx += data
            self._parse()

    def transmit(self, now: float) -> bytes:
        """Queued answers (an RTU server only ever answers)."""
        with self._lock:
            out = bytes(self._out)
            self._out.clear()
            return out

    # --- behaviour -----------------------------------------------------------------------
    def _parse(self) -> None:
        rx = self._rx
        while len(rx) >= 2:
            function = rx[1]
            if function not in FUNCTION_CODES.values():
                # Unknown function, so unknown length: a whole buffer that checks out is
                # one request (a real server finds its end by the silence after it);
                # anything else is noise to skip.
                if 4 <= len(rx) <= MAX_FRAME and crc16(rx[:-2]) == rx[-2:]:
                    if rx[0] == self.unit:
                        self._answer(rx[0], function | EXCEPTION_FLAG, bytes([ILLEGAL_FUNCTION]))
                    rx.clear()
                else:
                    del rx[:1]
                continue
            if len(rx) < REQUEST_SIZE:
                return
            frame = bytes(rx[:REQUEST_SIZE])
            if crc16(frame[:6]) != frame[6:]:
                del rx[:1]  # noise: resynchronise one byte later
                continue
            del rx[:REQUEST_SIZE]
            start = int.from_bytes(frame[2:4], "big")
            count = int.from_bytes(frame[4:6], "big")
            self._read(frame[0], function, start, count)

    def _read(self, unit: int, function: int, start: int, count: int) -> None:
        if unit != self.unit:
            return  # another server's request, or a broadcast, which reads never answer
        if not 1 <= count <= MAX_REGISTERS:
            self._answer(unit, function | EXCEPTION_FLAG, bytes([ILLEGAL_DATA_VALUE]))
            return
        self._refresh()
        table = self.holding_registers if function == 0x03 else self.input_registers
        addresses = range(start, start + count)
        if any(address not in table for address in addresses):
            self._answer(unit, function | EXCEPTION_FLAG, bytes([ILLEGAL_DATA_ADDRESS]))
            return
        payload = b"".join(table[address].to_bytes(2, "big") for address in addresses)
        self._answer(unit, function, bytes([len(payload)]) + payload)

    def _answer(self, unit: int, function: int, pdu: bytes) -> None:
        self.requests += 1
        frame = bytes([unit, function]) + pdu
        crc = crc16(frame)
        if self.drop_answers:
            self.drop_answers -= 1
            return
        if self.corrupt_answers:
            self.corrupt_answers -= 1
            crc = bytes([crc[0] ^ 0xFF, crc[1]])
        self._out += frame + crc

    def _refresh(self) -> None:
        """Advance the load by the time since the last request, then encode the registers."""
        now = self._clock()
        elapsed, self._last = max(0.0, now - self._last), now
        self.energy_wh += self.power * elapsed / 3600.0
        if self.drift and elapsed:
            rng = self._rng
            self.voltage = min(max(self.voltage + rng.gauss(0.0, 0.3), 215.0), 245.0)
            self.current = min(max(self.current + rng.gauss(0.0, 0.1), 0.1), 10.0)
            self.frequency = min(max(self.frequency + rng.gauss(0.0, 0.005), 49.9), 50.1)
            self.temperature = min(max(self.temperature + rng.gauss(0.0, 0.05), -10.0), 45.0)
        for spec in INPUTS:
            self._encode(self.input_registers, spec)
        for spec in HOLDINGS:
            self._encode(self.holding_registers, spec)

    def _encode(self, table: dict[int, int], spec: SimValue) -> None:
        value = getattr(self, spec.source) / spec.resolution
        raw = value if spec.type == "float32" else round(value)
        for i, word in enumerate(encode(raw, spec.type, spec.word_order)):
            table[spec.address + i] = word
