"""Modbus RTU devices on RS-485: registers described as data, pure decoding, and a thin
driver on pymodbus's serial client.

References: "MODBUS Application Protocol Specification V1.1b3" (AP) and "MODBUS over
Serial Line Specification and Implementation Guide V1.02" (SL). The register map is
configuration (each device documents its own); everything above ``class ModbusRTU``
is pure, so decoding and request planning are tested without a line. pymodbus is
imported only when a Modbus sensor is set up, so the daemon does not load it
otherwise (it is the ``modbus`` extra).
"""

from __future__ import annotations

import contextlib
import re
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from drivers.base import Driver, DriverContext, DriverOptions
from gateway.errors import SensorError
from gateway.readings import Measurement

if TYPE_CHECKING:
    from drivers.sim.modbus import SimModbus

RegisterType = Literal["int16", "uint16", "int32", "uint32", "float32"]
WordOrder = Literal["big", "little"]
Function = Literal["holding", "input"]

#: Registers per type; 32-bit values span two consecutive registers.
WIDTHS: dict[str, int] = {"int16": 1, "uint16": 1, "int32": 2, "uint32": 2, "float32": 2}
# Within one register the high byte comes first (AP 4.2, "big-Endian"); the order of the
# two registers of a 32-bit value is not specified, hence word_order.
# float32 is IEEE 754 single precision, the convention of every device that has floats.
_FORMATS: dict[str, str] = {
    "int16": ">h", "uint16": ">H", "int32": ">i", "uint32": ">I", "float32": ">f",
}  # fmt: skip

FUNCTION_CODES: dict[str, int] = {"holding": 0x03, "input": 0x04}  # AP 6.3, 6.4
MAX_REGISTERS = 125  # most registers one read may ask for: 0x7D (AP 6.3, 6.4)
ADDRESS_MAX = 0xFFFF  # register addresses are 16 bits (AP 4.4)
UNIT_MIN, UNIT_MAX = 1, 247  # individual server addresses; 0 is broadcast (SL 2.2)

# Exception codes (AP 7).
EXCEPTION_NAMES: dict[int, str] = {
    0x01: "illegal function",
    0x02: "illegal data address",
    0x03: "illegal data value",
    0x04: "server device failure",
    0x05: "acknowledge",
    0x06: "server device busy",
    0x08: "memory parity error",
    0x0A: "gateway path unavailable",
    0x0B: "gateway target device failed to respond",
}
_EXCEPTION_HINTS: dict[int, str] = {
    0x01: "the device does not support this function: try function: holding or input",
    0x02: "check the register addresses (0-based) and function against the device's manual",
    0x03: "the device refuses this many registers at once: lower max_registers",
    0x06: "the device is busy: a longer interval may help",
}

_NAME_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")


def exception_name(code: int) -> str:
    """``0x02 (illegal data address)`` for an exception code (AP 7)."""
    return f"0x{code:02x} ({EXCEPTION_NAMES.get(code, 'unknown exception')})"


def decode(words: Sequence[int], kind: RegisterType, word_order: WordOrder = "big") -> int | float:
    """The value of ``kind`` held in ``words`` (one register, or two for 32-bit types).

    ``word_order`` "big" means the first register holds the high half (AP 4.2
    applied to words, as Modicon did); "little" the low half first, as many meters do.
    """
    width = WIDTHS[kind]
    if len(words) != width:
        raise ValueError(f"{kind} needs {width} register(s), got {len(words)}")
    if any(not 0 <= word <= 0xFFFF for word in words):
        raise ValueError(f"registers are 16-bit words, got {list(words)}")
    ordered = list(words) if word_order == "big" else list(reversed(words))
    raw = b"".join(word.to_bytes(2, "big") for word in ordered)
    value: int | float = struct.unpack(_FORMATS[kind], raw)[0]
    if kind == "float32":
        return shortest_float32(value)
    return value


def shortest_float32(value: float) -> float:
    """The shortest decimal that is the same float32 as ``value``: 0x4048F5C3 is 3.14,
    not the 3.140000104904175 its exact double shows (at most 9 digits, IEEE 754 5.12.2)."""
    exact = struct.pack(">f", value)
    for digits in range(1, 10):
        candidate = float(f"{value:.{digits}g}")
        if struct.pack(">f", candidate) == exact:
            return candidate
    return value  # NaN payloads: kept as they are, and refused as unpublishable later


def encode(value: float, kind: RegisterType, word_order: WordOrder = "big") -> list[int]:
    """The registers that hold ``value``: the inverse of ``decode`` (simulator and tests)."""
    fmt = _FORMATS[kind]
    raw = struct.pack(fmt, value if kind == "float32" else int(value))
    words = [int.from_bytes(raw[i : i + 2], "big") for i in range(0, len(raw), 2)]
    return words if word_order == "big" else list(reversed(words))


class Register(BaseModel):
    """One value in the device's register map (its manual's table, as data)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    name: str = Field(description="the quantity's name: <sensor>/<name> in SenML")
    address: int = Field(ge=0, le=ADDRESS_MAX, description="0-based address on the wire")
    function: Function = Field(default="holding", description="holding (0x03) or input (0x04)")
    type: RegisterType = Field(default="uint16")
    word_order: WordOrder = Field(default="big", description="32-bit types: high word first?")
    scale: float = Field(default=1.0, description="value = raw * scale + offset")
    offset: float = Field(default=0.0)
    unit: str | None = Field(default=None, min_length=1, description="SenML unit, e.g. V, W, Cel")

    @property
    def width(self) -> int:
        """Registers this value spans."""
        return WIDTHS[self.type]

    @property
    def end(self) -> int:
        """One past its last register."""
        return self.address + self.width

    @field_validator("name")
    @classmethod
    def _check_name(cls, name: str) -> str:
        if not _NAME_RE.match(name):
            raise ValueError(
                "must be 1 to 64 letters, digits, '_', '.', ':' or '-'"
                " (it becomes part of the SenML name)"
            )
        return name

    @model_validator(mode="after")
    def _check(self) -> Register:
        if self.end - 1 > ADDRESS_MAX:
            raise ValueError(f"a {self.type} at {self.address} runs past register {ADDRESS_MAX}")
        if self.width == 1 and "word_order" in self.model_fields_set and self.word_order != "big":
            raise ValueError(f"word_order applies to 32-bit types only, not {self.type}")
        return self

    def value(self, words: Sequence[int]) -> float:
        """raw * scale + offset, from this register's words.

        Rounded to 12 significant digits: that drops the binary residue of scaling
        (222 * 0.1 is 22.200000000000003) and keeps every digit a 32-bit register holds.
        """
        value = float(decode(words, self.type, self.word_order)) * self.scale + self.offset
        return float(f"{value:.12g}")

    def describe(self) -> str:
        """``voltage (input 0x0000)`` for messages."""
        return f"{self.name} ({self.function} 0x{self.address:04x})"


@dataclass(frozen=True)
class Block:
    """One read request: ``count`` registers from ``start`` with one function code."""

    function: Function
    start: int
    count: int
    registers: tuple[Register, ...]

    def describe(self) -> str:
        """``input registers 0x0000..0x0005 (voltage, current)`` for messages."""
        names = ", ".join(r.name for r in self.registers)
        last = self.start + self.count - 1
        return f"{self.function} registers 0x{self.start:04x}..0x{last:04x} ({names})"


def plan_blocks(registers: Iterable[Register], max_count: int = MAX_REGISTERS) -> list[Block]:
    """Group registers into as few reads as possible.

    Registers of the same function that are adjacent or overlap share one read of
    at most ``max_count`` registers (a 32-bit value is always read whole). Gaps are
    never bridged: a device may answer "illegal data address" for a register nobody
    asked for.
    """
    blocks: list[Block] = []
    ordered = sorted(registers, key=lambda r: (r.function, r.address, r.end))
    current: list[Register] = []
    start = end = 0
    for reg in ordered:
        joins = (
            current
            and reg.function == current[0].function
            and reg.address <= end
            and max(end, reg.end) - start <= max_count
        )
        if not joins:
            if current:
                blocks.append(Block(current[0].function, start, end - start, tuple(current)))
            current, start, end = [], reg.address, reg.end
        current.append(reg)
        end = max(end, reg.end)
    if current:
        blocks.append(Block(current[0].function, start, end - start, tuple(current)))
    return blocks


def block_values(block: Block, words: Sequence[int]) -> dict[str, float]:
    """Each register's scaled value from the words a read of ``block`` returned."""
    if len(words) != block.count:
        raise ValueError(f"asked for {block.count} registers, got {len(words)}")
    return {
        reg.name: reg.value(words[reg.address - block.start : reg.end - block.start])
        for reg in block.registers
    }


# --- the driver --------------------------------------------------------------------------


class ModbusOptions(DriverOptions):
    """Options of a Modbus RTU device: its address, line settings and register map."""

    unit: int = Field(default=1, ge=UNIT_MIN, le=UNIT_MAX, description="server (slave) address")
    registers: tuple[Register, ...] = Field(min_length=1, description="the values to read")
    # SL 2.5.1 makes even parity the default, yet most sensors ship with 8N1.
    parity: Literal["N", "E", "O"] = Field(default="N", description="N, E or O")
    # SL 2.5.1 asks for 2 stop bits without parity; devices almost always use 1.
    stopbits: Literal[1, 2] = 1
    # RTU characters have 8 data bits (SL 2.5.1); 7 is for odd devices only.
    bytesize: Literal[7, 8] = 8
    timeout: float = Field(default=1.0, gt=0, le=10, description="seconds to wait per answer")
    # Some devices answer fewer registers per request than the protocol allows.
    max_registers: int = Field(
        default=MAX_REGISTERS, ge=1, le=MAX_REGISTERS, description="most registers per request"
    )

    @field_validator("registers")
    @classmethod
    def _check_names(cls, registers: tuple[Register, ...]) -> tuple[Register, ...]:
        seen: set[str] = set()
        for reg in registers:
            if reg.name in seen:
                raise ValueError(f"the name {reg.name!r} is used twice")
            seen.add(reg.name)
        return registers


class ModbusRTU(Driver):
    """A Modbus RTU server (slave) on a serial line, read with pymodbus's sync client.

    Each read asks for every configured register, grouped into as few requests as
    possible; values come back in the configured order. pymodbus does not retry
    (the poller retries the whole cycle, after setting up again).
    """

    options_model: ClassVar[type[DriverOptions]] = ModbusOptions
    bus_kind: ClassVar[str] = "serial"
    default_baudrate: ClassVar[int] = 9600  # SL 2.5.1 names 19200 the default; 9600 is common

    def __init__(self, context: DriverContext, options: DriverOptions) -> None:
        super().__init__(context, options)
        if not isinstance(options, ModbusOptions):
            raise TypeError(f"ModbusRTU needs ModbusOptions, got {type(options).__name__}")
        self._opts = options
        self._blocks = plan_blocks(options.registers, options.max_registers)
        self._client: Any = None
        self._modbus_error: type[Exception] = Exception

    @property
    def blocks(self) -> list[Block]:
        """The read requests one cycle makes."""
        return list(self._blocks)

    def _where(self) -> str:
        return f"modbus unit {self._opts.unit} on {self.context.port}"

    def setup(self) -> None:
        """(Re)open the port with pymodbus's serial client (any pyserial URL or device)."""
        self.close()
        if not self.context.port:
            raise SensorError(f"sensor {self.context.sensor!r}: the modbus driver needs a port")
        try:
            # Imported here: only gateways with Modbus sensors need pymodbus.
            import pymodbus  # noqa: PLC0415
            from pymodbus.client import ModbusSerialClient  # noqa: PLC0415
            from pymodbus.exceptions import ModbusException  # noqa: PLC0415
        except ImportError as err:
            raise SensorError(
                "the modbus driver needs pymodbus: pip install 'wsn-gateway[modbus]'"
            ) from err
        major, minor = (int(part) for part in pymodbus.__version__.split(".")[:2])
        if (major, minor) < (3, 10):  # device_id= replaced slave= in 3.10
            raise SensorError(
                f"the modbus driver needs pymodbus 3.10 or later, not {pymodbus.__version__}"
            )
        opts = self._opts
        client = ModbusSerialClient(
            self.context.port,
            baudrate=self.context.baudrate or self.default_baudrate,
            bytesize=opts.bytesize,
            parity=opts.parity,
            stopbits=opts.stopbits,
            timeout=opts.timeout,
            retries=0,
        )
        if not client.connect():  # pymodbus logs the reason and returns False
            raise SensorError(
                f"{self._where()}: cannot open the port — check the device path, that no"
                " other program holds it, and the permissions (dialout group)"
            )
        self._client = client
        self._modbus_error = ModbusException

    def read(self) -> list[Measurement]:
        """Read every block; an exception answer or a failed transfer raises SensorError."""
        if self._client is None:
            self.setup()
        values: dict[str, float] = {}
        for block in self._blocks:
            values.update(block_values(block, self._read_block(block)))
        return [Measurement(reg.name, reg.unit, values[reg.name]) for reg in self._opts.registers]

    def _read_block(self, block: Block) -> list[int]:
        client = self._client
        call = (
            client.read_holding_registers
            if block.function == "holding"
            else client.read_input_registers
        )
        try:
            response = call(block.start, count=block.count, device_id=self._opts.unit)
        except self._modbus_error as err:
            # Timeouts and CRC errors alike: pymodbus drops a frame with a bad CRC and
            # then times out waiting for a good one.
            raise SensorError(
                f"{self._where()}: no valid answer reading {block.describe()}: {err}"
                " — check wiring (A/B), baud rate, parity and unit"
            ) from err
        if response.isError():
            code = int(getattr(response, "exception_code", 0))
            hint = _EXCEPTION_HINTS.get(code, "see the device's manual")
            raise SensorError(
                f"{self._where()} answered exception {exception_name(code)}"
                f" reading {block.describe()} — {hint}"
            )
        words: list[int] = list(response.registers)
        if len(words) != block.count:
            raise SensorError(
                f"{self._where()}: asked for {block.count} registers of"
                f" {block.describe()}, got {len(words)}"
            )
        return words

    def close(self) -> None:
        """Close the port (and release pymodbus's exclusive lock on it)."""
        client, self._client = self._client, None
        if client is not None:
            client.close()

    def __del__(self) -> None:
        # The daemon drops drivers without close() on reload; pymodbus's client sits in a
        # reference cycle and would hold its exclusive port lock until a GC pass, so that
        # the new instance could not open the port.
        with contextlib.suppress(Exception):  # best effort, even at interpreter shutdown
            self.close()

    @classmethod
    def simulator(cls, address: int, seed: int) -> SimModbus:
        """A simulated energy meter answering as unit 1, for ``port: sim``."""
        from drivers.sim.modbus import SimModbus  # noqa: PLC0415 - needs pymodbus's CRC

        return SimModbus(seed=seed)
