"""Digi XBee coordinator in API mode: frame parser, frame decoders and a thin driver.

References (Digi International):
- [ZB]  XBee/XBee-PRO ZigBee RF Modules User Guide (90000976): "API operation"
        (frame format, escaping, checksum), "IO sampling" (sample layout, A/D to mV).
- [S2C] XBee/XBee-PRO S2C Zigbee RF Module User Guide (90002002): "API frame
        format", "Calculate and verify checksums", frames 0x90, 0x91, 0x92.
- [AP]  the AP (API Enable) command: 0 transparent (the factory default), 1 API
        without escapes, 2 API with escapes.

An API frame is ``0x7E``, a 2-byte big-endian length, the frame data (frame type
first) and a checksum, ``0xFF - (sum of the frame data & 0xFF)`` [S2C]. In API
mode 2, every byte after the start delimiter that is 0x7E, 0x7D, 0x11 or 0x13 is
sent as 0x7D followed by the byte XOR 0x20 [ZB]; a 0x7E then only ever starts a
frame, which is why this driver defaults to mode 2: resynchronising after noise
is certain, not probable.

Everything above ``class XBee`` is pure: bytes in, frames and samples out.
"""

from __future__ import annotations

import enum
import logging
import re
from collections import deque
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Annotated, ClassVar, Literal

from pydantic import BeforeValidator, Field, model_validator

from drivers.base import DriverOptions
from drivers.linesink import LineError, parse_line
from drivers.wsn import (
    NAME_PATTERN,
    FieldMapping,
    Mapped,
    NodeOptions,
    Number,
    OptionsModel,
    WsnDriver,
    WsnOptions,
    check_nodes,
    duplicates,
    map_values,
    measurement,
)
from gateway.readings import Measurement, Value

if TYPE_CHECKING:
    from drivers.sim.xbee import SimXBeeCoordinator

# --- framing ([ZB] "API operation"; [S2C] "API frame format") ------------------------------

START = 0x7E  # start delimiter
ESCAPE = 0x7D  # API mode 2: the next byte is XOR ESCAPE_XOR
XON = 0x11  # software flow control: escaped in mode 2 so that it can be data
XOFF = 0x13
ESCAPE_XOR = 0x20
ESCAPED = frozenset({START, ESCAPE, XON, XOFF})
#: Longest frame data accepted. The largest receive frame is 0x91's 18 header bytes
#: plus a 255-byte fragmented payload [S2C, NP]; a larger length is a corrupt header.
MAX_FRAME_DATA = 512
#: API mode 1: a frame whose start byte arrived this long ago and is still incomplete
#: is taken to be a stray 0x7E in noise, and the bytes after it are scanned again (else
#: a stray start claiming 500 bytes would hold back the frames behind it until 500
#: more bytes came). A 512-byte frame takes 0.53 s at 9600 baud (10 bits per byte).
STALE_AFTER = 1.0

# --- frame types ([S2C] "Frame descriptions") ----------------------------------------------

RX_PACKET = 0x90  # Zigbee Receive Packet (AO=0)
EXPLICIT_RX = 0x91  # Zigbee Explicit Rx Indicator (AO=1)
IO_SAMPLE = 0x92  # Zigbee IO Data Sample Rx Indicator
RX_HEADER = 12  # type, 64-bit source, 16-bit source, options
EXPLICIT_RX_HEADER = 18  # + source/destination endpoint, cluster id, profile id
IO_HEADER = 16  # type, 64-bit, 16-bit, options, samples, digital mask (2), analog mask

ANALOG_CHANNELS = 4  # AD0..AD3: analog mask bits 0..3 [ZB "IO sampling"]
SUPPLY_BIT = 0x80  # analog mask bit 7: supply voltage sample follows AD3 (V+) [ZB]
RESERVED_ANALOG_BITS = 0x70  # bits 4..6 are not used [ZB]
ADC_MAX = 0x3FF  # 10-bit samples; 0x3FF is the full-scale reference [ZB]
#: XBee ZB / S2C: 0x3FF = 1.2 V, mV = raw · 1200 / 1023 [ZB "IO sampling"]. XBee 3
#: modules scale to their AV reference instead (1.25 V by default).
DEFAULT_ADC_FULL_SCALE_MV = 1200.0


def checksum(frame_data: bytes) -> int:
    """The API frame checksum: 0xFF minus the low byte of the sum of the frame data."""
    return 0xFF - (sum(frame_data) & 0xFF)


def escape(data: bytes) -> bytes:
    """API mode 2 escaping of the bytes after the start delimiter."""
    out = bytearray()
    for byte in data:
        if byte in ESCAPED:
            out += bytes((ESCAPE, byte ^ ESCAPE_XOR))
        else:
            out.append(byte)
    return bytes(out)


def encode_frame(frame_data: bytes, api_mode: int = 2) -> bytes:
    """A complete API frame around ``frame_data`` (frame type first)."""
    if not 1 <= len(frame_data) <= 0xFFFF:
        raise ValueError(f"frame data must be 1 to 65535 bytes, got {len(frame_data)}")
    body = len(frame_data).to_bytes(2, "big") + frame_data + bytes((checksum(frame_data),))
    return bytes((START,)) + (escape(body) if api_mode == 2 else body)


@dataclass(frozen=True, slots=True)
class Frame:
    """The frame data of one valid API frame and the wall time its last byte was read."""

    data: bytes
    time: float = 0.0

    @property
    def frame_type(self) -> int:
        """The API frame type (first byte of the frame data)."""
        return self.data[0]


@dataclass
class FrameCounts:
    """What ``FrameParser`` has seen."""

    frames_ok: int = 0
    bad_checksum: int = 0
    bad_frames: int = 0  # bad length, bad escape, or cut short by the next start byte
    garbage_bytes: int = 0  # bytes that were not part of a valid frame


class _Result(enum.Enum):
    """Outcome of one decoding attempt at a start byte."""

    OK = "ok"
    INCOMPLETE = "incomplete"
    BAD_CHECKSUM = "bad_checksum"
    BAD_FRAME = "bad_frame"


class FrameParser:
    """Incremental API frame parser: pure, never raises, resynchronises on 0x7E.

    Bytes accumulate until they form a frame. At a start byte whose frame turns out
    bad (checksum, length, escape), the parser moves one byte on and looks for the
    next start byte, so a valid frame that begins inside a corrupt one is still
    found. In API mode 2 a raw 0x11/0x13 inside a frame is a flow-control
    character, not data [ZB], and is skipped.
    """

    def __init__(self, api_mode: int = 2, *, stale_after: float = STALE_AFTER) -> None:
        if api_mode not in (1, 2):
            raise ValueError(f"api_mode must be 1 or 2, got {api_mode}")
        self.api_mode = api_mode
        self.stale_after = stale_after
        self.counts = FrameCounts()
        self._buf = bytearray()
        self._base = 0  # stream offset of _buf[0]
        self._chunks: deque[tuple[int, float]] = deque()  # (stream offset of the end, time)

    def reset(self) -> None:
        """Forget any partial frame (the port was reopened)."""
        self._base += len(self._buf)
        self._buf.clear()
        self._chunks.clear()

    @property
    def pending(self) -> int:
        """Bytes waiting for the rest of a frame."""
        return len(self._buf)

    def feed(self, data: bytes, at: float = 0.0) -> list[Frame]:
        """The frames completed by ``data``, read at wall time ``at``; b"" lets time pass."""
        if data:
            self._buf += data
            self._chunks.append((self._base + len(self._buf), at))
        frames: list[Frame] = []
        counts = self.counts
        while self._buf:
            start = self._buf.find(START)
            if start < 0:
                self._skip(len(self._buf))
                break
            self._skip(start)
            result, used, frame_data = self._decode()
            if result is _Result.INCOMPLETE:
                # In mode 2 the next start byte ends a stray frame; in mode 1 only time can.
                if self.api_mode == 2 or at - self._time_of(self._base) <= self.stale_after:
                    break  # wait for the rest
                result = _Result.BAD_FRAME
            if result is _Result.OK and frame_data is not None:
                counts.frames_ok += 1
                frames.append(Frame(frame_data, self._time_of(self._base + used - 1)))
                self._consume(used)
                continue
            if result is _Result.BAD_CHECKSUM:
                counts.bad_checksum += 1
            else:
                counts.bad_frames += 1
            self._skip(1)  # scan again from the byte after this start byte
        while self._chunks and self._chunks[0][0] <= self._base:
            self._chunks.popleft()
        return frames

    def _skip(self, count: int) -> None:
        self.counts.garbage_bytes += count
        self._consume(count)

    def _consume(self, count: int) -> None:
        del self._buf[:count]
        self._base += count

    def _time_of(self, offset: int) -> float:
        """Arrival time of the chunk holding stream byte ``offset``."""
        for end, at in self._chunks:
            if offset < end:
                return at
        return self._chunks[-1][1] if self._chunks else 0.0

    def _decode(self) -> tuple[_Result, int, bytes | None]:
        """Decode the frame at _buf[0] (a start byte): (result, bytes used, frame data)."""
        if self.api_mode == 1:
            return self._decode_plain()
        return self._decode_escaped()

    def _decode_plain(self) -> tuple[_Result, int, bytes | None]:
        buf = self._buf
        if len(buf) < 3:
            return _Result.INCOMPLETE, 0, None
        length = buf[1] << 8 | buf[2]
        if not 1 <= length <= MAX_FRAME_DATA:
            return _Result.BAD_FRAME, 0, None
        if len(buf) < 4 + length:
            return _Result.INCOMPLETE, 0, None
        data = bytes(buf[3 : 3 + length])
        if checksum(data) != buf[3 + length]:
            return _Result.BAD_CHECKSUM, 0, None
        return _Result.OK, 4 + length, data

    def _decode_escaped(self) -> tuple[_Result, int, bytes | None]:  # noqa: PLR0911 - one return per outcome
        buf = self._buf
        out = bytearray()  # length, frame data, checksum: unescaped
        length = -1
        i = 1
        while True:
            if i >= len(buf):
                return _Result.INCOMPLETE, 0, None
            byte = buf[i]
            if byte == START:
                return _Result.BAD_FRAME, 0, None  # cut short: a new frame starts here
            if byte in (XON, XOFF):
                i += 1  # flow control, not data
                continue
            i += 1
            if byte == ESCAPE:
                while i < len(buf) and buf[i] in (XON, XOFF):
                    i += 1  # flow control may fall between the escape and its byte
                if i >= len(buf):
                    return _Result.INCOMPLETE, 0, None
                byte = buf[i] ^ ESCAPE_XOR
                if byte not in ESCAPED:
                    return _Result.BAD_FRAME, 0, None  # only these four are ever escaped
                i += 1
            out.append(byte)
            if len(out) == 2:
                length = out[0] << 8 | out[1]
                if not 1 <= length <= MAX_FRAME_DATA:
                    return _Result.BAD_FRAME, 0, None
            elif len(out) == length + 3:
                data = bytes(out[2:-1])
                if checksum(data) != out[-1]:
                    return _Result.BAD_CHECKSUM, 0, None
                return _Result.OK, i, data


# --- frame decoders (pure) -----------------------------------------------------------------


def address_hex(raw: bytes) -> str:
    """A 64-bit address as XCTU shows it: 16 uppercase hex digits."""
    return raw.hex().upper()


@dataclass(frozen=True, slots=True)
class ReceivePacket:
    """RF data from a remote node (0x90, or 0x91 with explicit addressing)."""

    source64: str
    source16: int
    options: int
    data: bytes


def decode_receive_packet(data: bytes) -> ReceivePacket:
    """Frame data of a 0x90 or 0x91 frame; ``ValueError`` when it is not one."""
    if not data or data[0] not in (RX_PACKET, EXPLICIT_RX):
        raise ValueError("not a receive packet")
    header = RX_HEADER if data[0] == RX_PACKET else EXPLICIT_RX_HEADER
    if len(data) < header:
        raise ValueError(f"receive packet of {len(data)} bytes is shorter than its header")
    return ReceivePacket(
        source64=address_hex(data[1:9]),
        source16=int.from_bytes(data[9:11], "big"),
        options=data[header - 1],
        data=bytes(data[header:]),
    )


@dataclass(frozen=True, slots=True)
class IoSample:
    """One IO sample set from a remote node (0x92) [ZB "IO sampling"].

    ``digital`` holds the states of the lines in ``digital_mask`` (None when no line
    is digital); ``analog`` maps channel 0..3 (AD0..AD3) to its 10-bit reading;
    ``supply`` is the raw supply-voltage sample when the node sends one (V+).
    """

    source64: str
    source16: int
    options: int
    digital_mask: int
    analog_mask: int
    digital: int | None
    analog: dict[int, int]
    supply: int | None

    def digital_state(self, line: int) -> bool | None:
        """The state of DIO``line``, or None when that line is not sampled."""
        if self.digital is None or not self.digital_mask >> line & 1:
            return None
        return bool(self.digital >> line & 1)


def decode_io_sample(data: bytes) -> IoSample:
    """Frame data of a 0x92 frame; ``ValueError`` when the layout does not add up."""
    if not data or data[0] != IO_SAMPLE:
        raise ValueError("not an IO sample frame")
    if len(data) < IO_HEADER:
        raise ValueError(f"IO sample of {len(data)} bytes is shorter than its header")
    if data[12] != 1:
        raise ValueError(f"IO sample with {data[12]} sample sets (always 1)")
    digital_mask = int.from_bytes(data[13:15], "big")
    analog_mask = data[15]
    if analog_mask & RESERVED_ANALOG_BITS:
        raise ValueError(f"analog mask 0x{analog_mask:02x} uses reserved bits")
    count = (2 if digital_mask else 0) + 2 * bin(analog_mask).count("1")
    if len(data) != IO_HEADER + count:
        raise ValueError(f"IO sample is {len(data)} bytes; its masks call for {IO_HEADER + count}")
    pos = IO_HEADER
    digital = None
    if digital_mask:  # the 2 digital bytes are present only when a line is digital [ZB]
        digital = int.from_bytes(data[pos : pos + 2], "big")
        pos += 2
    words = [int.from_bytes(data[p : p + 2], "big") for p in range(pos, len(data), 2)]
    channels = [ch for ch in range(ANALOG_CHANNELS) if analog_mask >> ch & 1]
    analog = dict(zip(channels, words, strict=False))
    if any(raw > ADC_MAX for raw in analog.values()):
        raise ValueError("analog sample above 10 bits")
    supply = words[-1] if analog_mask & SUPPLY_BIT else None
    return IoSample(
        source64=address_hex(data[1:9]),
        source16=int.from_bytes(data[9:11], "big"),
        options=data[11],
        digital_mask=digital_mask,
        analog_mask=analog_mask,
        digital=digital,
        analog=analog,
        supply=supply,
    )


def adc_volts(raw: int, full_scale_mv: float = DEFAULT_ADC_FULL_SCALE_MV) -> float:
    """Volts of a 10-bit reading: mV = raw · full scale / 1023 [ZB "IO sampling"]."""
    return raw * full_scale_mv / ADC_MAX / 1000.0


# --- options -------------------------------------------------------------------------------

_ADDRESS_RE = re.compile(r"^[0-9A-F]{16}$")


def _address(value: object) -> object:
    """``0013A20040A1B2C3``, ``0013A200 40A1B2C3``, ``00:13:a2:...``, ``0x0013A2...``."""
    if isinstance(value, int) and not isinstance(value, bool):
        raise ValueError(
            "write the 64-bit address in quotes (YAML reads some digit strings as numbers "
            'and loses the leading zeros), e.g. address: "0013A20040A1B2C3"'
        )
    if not isinstance(value, str):
        return value
    text = re.sub(r"[\s:_-]", "", value).upper().removeprefix("0X")
    if not _ADDRESS_RE.match(text):
        raise ValueError(
            f"must be a 64-bit address of 16 hex digits, e.g. 0013A20040A1B2C3 (got {value!r})"
        )
    return text


class XBeeNode(NodeOptions):
    """A remote XBee, by its 64-bit address (SH + SL, printed on the module)."""

    address: Annotated[str, BeforeValidator(_address)]


AnalogPin = Literal["AD0", "AD1", "AD2", "AD3"]
DIGITAL_PIN_PATTERN = r"^DIO([0-9]|1[0-4])$"


class AnalogInput(OptionsModel):
    """An analog input of 0x92 samples: ``volts · scale + offset`` in ``unit``."""

    pin: AnalogPin
    quantity: str = Field(pattern=NAME_PATTERN)
    unit: str | None = "V"
    scale: Number = 1.0
    offset: Number = 0.0

    @property
    def channel(self) -> int:
        """0 for AD0 ... 3 for AD3."""
        return int(self.pin[2])


class DigitalInput(OptionsModel):
    """A digital line of 0x92 samples, reported as a boolean (SenML vb)."""

    pin: str = Field(pattern=DIGITAL_PIN_PATTERN, description="DIO0 ... DIO14")
    quantity: str = Field(pattern=NAME_PATTERN)
    invert: bool = Field(default=False, description="report a low line as true")

    @property
    def line(self) -> int:
        """The DIO number."""
        return int(self.pin[3:])


class XBeeOptions(WsnOptions):
    """Options of an XBee coordinator."""

    api_mode: Literal[1, 2] = Field(default=2, description="the coordinator's AP setting")
    nodes: list[XBeeNode] = Field(default_factory=list)
    payload: Literal["lines", "json"] = Field(
        default="lines", description="RF data of 0x90/0x91 frames: line protocol or JSON"
    )
    separator: str = Field(default=";", min_length=1, max_length=4)
    fields: dict[str, FieldMapping] = Field(default_factory=dict)
    analog: list[AnalogInput] = Field(default_factory=list)
    digital: list[DigitalInput] = Field(default_factory=list)
    adc_full_scale_mv: Number = Field(default=DEFAULT_ADC_FULL_SCALE_MV, gt=0, le=5000)

    @model_validator(mode="after")
    def _check_names(self) -> XBeeOptions:
        check_nodes(self.nodes, [n.address for n in self.nodes], "address")
        for what, pins in (
            ("analog", [a.pin for a in self.analog]),
            ("digital", [d.pin for d in self.digital]),
        ):
            repeated = duplicates(pins)
            if repeated:
                raise ValueError(f"{what}: pin {repeated[0]} is listed twice")
        quantities = [f.quantity for f in self.fields.values()]
        quantities += [a.quantity for a in self.analog] + [d.quantity for d in self.digital]
        repeated = duplicates(quantities)
        if repeated:
            raise ValueError(f"quantity {repeated[0]!r} is mapped twice (fields, analog, digital)")
        if not self.nodes and self.unknown_nodes == "drop":
            raise ValueError("list the nodes, or set unknown_nodes: publish")
        if not (self.fields or self.analog or self.digital):
            raise ValueError("map something: fields (RF data), analog or digital (IO samples)")
        return self


# --- the driver ----------------------------------------------------------------------------


@dataclass
class XBeeStats:
    """Counters of one XBee driver (``XBee.stats``), beside the parser's own."""

    node_frames: int = 0  # valid 0x90/0x91/0x92 frames, from any node
    ignored_frames: int = 0  # valid frames of other types (modem status, ...)
    malformed_frames: int = 0  # right checksum, but a body that does not decode
    dropped_lines: int = 0  # RF data that is not a valid line / JSON object
    unknown_fields: int = 0
    invalid_values: int = 0
    readings: int = 0


class XBee(WsnDriver[XBeeOptions]):
    """A Digi XBee coordinator (Zigbee or 802.15.4 firmware) in API mode 1 or 2.

    Reports text payloads of remote nodes (0x90/0x91 frames, decoded like LineSink
    lines or as JSON) and IO samples (0x92: analog inputs in volts, digital lines
    as booleans), each node's values as ``{node}/{quantity}``.
    """

    options_model: ClassVar[type[DriverOptions]] = XBeeOptions
    #: BD=3, 9600 baud, is the XBee factory default [S2C, BD command].
    default_baudrate: ClassVar[int] = 9600

    def _prepare(self) -> None:
        self._parser = FrameParser(self._opts.api_mode)
        self._counts = XBeeStats()

    def _node_keys(self) -> list[tuple[str, NodeOptions]]:
        return [(node.address, node) for node in self._opts.nodes]

    def _unknown_prefix(self) -> str:
        return "xbee-"  # xbee-0013A20040A1B2C3

    def _reset(self) -> None:
        self._parser.reset()

    def _messages(self) -> int:
        # Node frames only: a coordinator's own Modem Status frame must not end the
        # first read's wait with nothing to show.
        return self._counts.node_frames

    @property
    def stats(self) -> dict[str, int]:
        """frames_ok, bad_checksum, bad_frames, garbage_bytes (the parser's), node_frames,
        ignored_frames, malformed_frames, unknown_nodes, dropped_lines, unknown_fields,
        invalid_values, readings."""
        counts = asdict(self._parser.counts) | asdict(self._counts)
        counts["unknown_nodes"] = self.nodes.unknown_messages
        return counts

    def _feed(self, data: bytes, at: float) -> list[Measurement]:
        out: list[Measurement] = []
        for frame in self._parser.feed(data, at):
            try:
                if frame.frame_type in (RX_PACKET, EXPLICIT_RX):
                    packet = decode_receive_packet(frame.data)
                    self._counts.node_frames += 1
                    out += self._packet(packet, frame.time)
                elif frame.frame_type == IO_SAMPLE:
                    sample = decode_io_sample(frame.data)
                    self._counts.node_frames += 1
                    out += self._sample(sample, frame.time)
                else:
                    self._ignored(frame.frame_type)
            except ValueError as err:
                self._counts.malformed_frames += 1
                self._log_once(
                    ("malformed", frame.frame_type),
                    logging.WARNING,
                    f"sensor {self.context.sensor}: frame 0x{frame.frame_type:02x} "
                    f"dropped: {err}; logged once per frame type",
                    sensor=self.context.sensor,
                )
        self._counts.readings += len(out)
        return out

    def _ignored(self, frame_type: int) -> None:
        self._counts.ignored_frames += 1
        self._log_once(
            ("ignored", frame_type),
            logging.INFO,
            f"sensor {self.context.sensor}: API frames of type 0x{frame_type:02x} are "
            "ignored (only 0x90, 0x91 and 0x92 carry node data); logged once",
            sensor=self.context.sensor,
        )

    def _packet(self, packet: ReceivePacket, at: float) -> list[Measurement]:
        # The address is covered by the frame checksum: the node is alive even when its
        # payload turns out unusable, so it counts as heard first.
        name = self.nodes.heard(packet.source64)
        if name is None:
            return []
        mapped: list[Mapped] = []
        try:
            if self._opts.payload == "json":
                lines = [packet.data.strip()]
                fmt: Literal["auto", "json"] = "json"
            else:
                lines = [line for line in packet.data.split(b"\n") if line.strip()]
                fmt = "auto"
            for line in lines:
                message = parse_line(
                    line.rstrip(b"\r"), fmt=fmt, separator=self._opts.separator, node_key=None
                )
                mapped.append(map_values(message.values, self._opts.fields))
        except ValueError as err:  # LineError included: the payload is dropped whole
            self._counts.dropped_lines += 1
            reason = err.reason if isinstance(err, LineError) else "unparsable"
            self._log_once(
                ("dropped", reason),
                logging.WARNING,
                f"sensor {self.context.sensor}: payload from {packet.source64} dropped "
                f"({reason}): {err}; further ones are counted only",
                sensor=self.context.sensor,
                payload=repr(packet.data[:80]),
            )
            return []
        out: list[Measurement] = []
        for each in mapped:
            self._note(each, name, self._counts)
            out += each.measurements(name, at)
        return out

    def _sample(self, sample: IoSample, at: float) -> list[Measurement]:
        name = self.nodes.heard(sample.source64)
        if name is None:
            return []
        out: list[Measurement] = []
        for analog in self._opts.analog:
            raw = sample.analog.get(analog.channel)
            if raw is not None:
                volts = adc_volts(raw, self._opts.adc_full_scale_mv)
                value = volts * analog.scale + analog.offset
                out.append(measurement(name, analog.quantity, analog.unit, value, at))
        for digital in self._opts.digital:
            state = sample.digital_state(digital.line)
            if state is not None:
                value_b: Value = state != digital.invert
                out.append(measurement(name, digital.quantity, None, value_b, at))
        return out

    @classmethod
    def simulator(cls, address: int, seed: int) -> SimXBeeCoordinator:
        """A coordinator with the nodes of config/examples/xbee.yaml, for ``port: sim``."""
        from drivers.sim.xbee import SimXBeeCoordinator  # noqa: PLC0415 - sim only when asked

        return SimXBeeCoordinator(seed=seed)
