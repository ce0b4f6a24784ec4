"""A custom sink node (ESP32, Arduino) that prints one text line per received message.

Two line formats, detected per line or fixed by ``format``:

- key=value pairs: ``node=7;t=21.5;h=40.2`` (separator configurable)
- JSON objects:    ``{"node": 7, "t": 21.5, "h": 40.2}``

One key names the node (``node_key``, default ``node``); ``fields`` maps the other
keys to quantities. Lines end in ``\\n`` or ``\\r\\n``. The line protocol has no
checksum, so what can be checked is checked: valid UTF-8, no control characters,
strict syntax, no repeated keys, numbers where numbers are mapped. A line that
fails any check is dropped whole and counted, never half used. The XBee driver
decodes its text payloads with the same functions (``parse_line``).

Everything above ``class LineSink`` is pure: bytes in, lines and messages out.
"""

from __future__ import annotations

import json
import logging
import math
import re
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from drivers.base import DriverOptions
from drivers.wsn import (
    NAME_PATTERN,
    FieldMapping,
    NodeOptions,
    WsnDriver,
    WsnOptions,
    check_nodes,
    duplicates,
    is_name,
    map_values,
)
from gateway.readings import Measurement, Value

if TYPE_CHECKING:
    from drivers.sim.linesink import SimLineSink

log = logging.getLogger(__name__)

LineFormat = Literal["auto", "kv", "json"]

#: Longest line accepted unless configured (bytes, line ending excluded).
DEFAULT_MAX_LINE = 512
NEWLINE = 0x0A
CARRIAGE_RETURN = 0x0D

# Characters no sink prints in a message: C0 controls (tab allowed) and DEL. A line
# holding one is line noise, e.g. the bytes a UART reads while the sink reboots.
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
# A key of a key=value line: name characters only, so that noise does not pass as a key.
_KEY = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
# A plain decimal number as printf/Serial.print write them; not Python's wider float().
_NUMBER = re.compile(r"^[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?$")
# What C's printf and Arduino print for a failed reading: kept apart from noise.
_NOT_FINITE = {"nan": math.nan, "-nan": math.nan, "+nan": math.nan, "inf": math.inf,
               "+inf": math.inf, "-inf": -math.inf, "ovf": math.nan}  # fmt: skip


class LineError(ValueError):
    """A line that cannot be used; ``reason`` is one word for counters and logs."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Line:
    """One complete line (ending stripped) and the wall time its end was read."""

    raw: bytes
    time: float


@dataclass(frozen=True, slots=True)
class Message:
    """A parsed line: the node id (None when the format has none) and its raw values.

    A value is a number, a boolean, a string, or None for a JSON value that is
    none of these (an array, an object, null).
    """

    node: str | None
    values: dict[str, Value | None]


class LineFramer:
    """Splits a byte stream into lines: pure, incremental, never raises.

    A line longer than ``max_line`` bytes is discarded, through to its end even
    when that end arrives much later, and counted in ``too_long``. A partial line
    waits in the buffer until its end arrives.
    """

    def __init__(self, max_line: int = DEFAULT_MAX_LINE) -> None:
        self.max_line = max_line
        self.too_long = 0
        self._buf = bytearray()
        self._discarding = False

    def reset(self) -> None:
        """Forget the partial line (the port was reopened)."""
        self._buf.clear()
        self._discarding = False

    @property
    def pending(self) -> int:
        """Bytes of a partial line waiting for their end."""
        return len(self._buf)

    def feed(self, data: bytes, at: float = 0.0) -> list[Line]:
        """The lines that ``data`` completes, each stamped ``at``."""
        self._buf += data
        lines: list[Line] = []
        start = 0
        while (end := self._buf.find(NEWLINE, start)) >= 0:
            line = bytes(self._buf[start:end])
            start = end + 1
            if line.endswith(b"\r"):
                line = line[:-1]
            if self._discarding:
                self._discarding = False  # the end of a line already counted
            elif len(line) > self.max_line:
                self.too_long += 1
            else:
                lines.append(Line(line, at))
        del self._buf[:start]
        # +1: the CR of a CR LF ending may wait for its LF.
        if len(self._buf) > self.max_line + 1:
            if not self._discarding:
                self.too_long += 1
                self._discarding = True
            self._buf.clear()
        return lines


def decode_text(raw: bytes) -> str:
    """The line as text: UTF-8 without control characters, else ``LineError``."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise LineError("invalid_utf8", f"not UTF-8 at byte {err.start}") from err
    if _CONTROL.search(text):
        raise LineError("unparsable", "control character in the line")
    return text


def _kv_value(text: str) -> Value:
    if _NUMBER.match(text):
        return float(text)
    lowered = text.lower()
    if lowered in _NOT_FINITE:
        return _NOT_FINITE[lowered]
    if lowered in ("true", "false"):
        return lowered == "true"
    return text


def _node_id(value: object, node_key: str) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, str) and is_name(value):
        return value
    raise LineError("unparsable", f"{node_key} is not a node id: {value!r}"[:120])


def parse_kv(text: str, separator: str = ";", node_key: str | None = "node") -> Message:
    """A ``key=value<sep>key=value`` line. Empty parts (a trailing separator) are allowed."""
    values: dict[str, Value | None] = {}
    node: str | None = None
    for raw_part in text.split(separator):
        part = raw_part.strip()
        if not part:
            continue
        key, eq, value = part.partition("=")
        key, value = key.strip(), value.strip()
        if not eq or not _KEY.match(key) or not value:
            raise LineError("unparsable", f"not key=value: {part!r}"[:120])
        if key in values or (key == node_key and node is not None):
            raise LineError("unparsable", f"key {key!r} repeated")
        if key == node_key:
            node = _node_id(value, node_key)
        else:
            values[key] = _kv_value(value)
    if node_key is not None and node is None:
        raise LineError("unparsable", f"no {node_key} in the line")
    return Message(node, values)


def _refuse_constant(name: str) -> Any:
    raise LineError("unparsable", f"{name} is not JSON")


def _unique_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise LineError("unparsable", f"key {key!r} repeated")
        result[key] = value
    return result


def _json_value(value: object) -> Value | None:
    if isinstance(value, bool | str):
        return value
    if isinstance(value, int):
        try:
            return float(value)
        except OverflowError:  # JSON integers have no limit; such a one is no reading
            return math.inf
    if isinstance(value, float):
        return value
    return None


def parse_json(text: str, node_key: str | None = "node") -> Message:
    """A JSON object line; NaN, Infinity and repeated keys are refused."""
    try:
        data = json.loads(text, parse_constant=_refuse_constant, object_pairs_hook=_unique_pairs)
    except LineError:
        raise
    except (ValueError, RecursionError) as err:
        raise LineError("unparsable", f"not JSON: {err}"[:120]) from err
    if not isinstance(data, dict):
        raise LineError("unparsable", "JSON line is not an object")
    node: str | None = None
    if node_key is not None:
        if node_key not in data:
            raise LineError("unparsable", f"no {node_key} in the line")
        node = _node_id(data.pop(node_key), node_key)
    return Message(node, {str(k): _json_value(v) for k, v in data.items()})


def parse_line(
    raw: bytes,
    *,
    fmt: LineFormat = "auto",
    separator: str = ";",
    node_key: str | None = "node",
) -> Message:
    """One line (ending stripped) in either format; ``LineError`` says why not.

    ``auto`` takes a line that starts with ``{`` as JSON, any other as key=value.
    ``node_key`` None: the line names no node (an XBee payload: the radio does).
    """
    text = decode_text(raw).strip()
    if not text:
        raise LineError("empty", "empty line")
    if fmt == "json" or (fmt == "auto" and text.startswith("{")):
        return parse_json(text, node_key)
    return parse_kv(text, separator, node_key)


# --- the driver ----------------------------------------------------------------------------


class SinkNode(NodeOptions):
    """A node of the sink, by the id it prints (``node=7`` or ``"node": 7``)."""

    id: str = Field(description="the node id the sink prints")

    @field_validator("id", mode="before")
    @classmethod
    def _id_as_text(cls, value: object) -> object:
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)
        if isinstance(value, str) and not is_name(value):
            raise ValueError(f"must be a node id of letters, digits, _ . : - (got {value!r})")
        return value


class LineSinkOptions(WsnOptions):
    """Options of a line-printing sink node."""

    format: LineFormat = Field(default="auto", description="auto, kv or json")
    separator: str = Field(default=";", min_length=1, max_length=4)
    node_key: str = Field(default="node", pattern=NAME_PATTERN)
    nodes: list[SinkNode] = Field(default_factory=list)
    fields: dict[str, FieldMapping] = Field(min_length=1)
    max_line: int = Field(default=DEFAULT_MAX_LINE, ge=16, le=65536)

    @field_validator("separator")
    @classmethod
    def _check_separator(cls, value: str) -> str:
        if "=" in value or not value.strip() or _CONTROL.search(value):
            raise ValueError(f"must be a visible separator other than '=' (got {value!r})")
        return value

    @model_validator(mode="after")
    def _check_names(self) -> LineSinkOptions:
        check_nodes(self.nodes, [n.id for n in self.nodes], "id")
        if self.node_key in self.fields:
            raise ValueError(f"fields: {self.node_key!r} is the node_key, not a field")
        repeated = duplicates(f.quantity for f in self.fields.values())
        if repeated:
            raise ValueError(f"fields: quantity {repeated[0]!r} is mapped from two fields")
        if not self.nodes and self.unknown_nodes == "drop":
            raise ValueError("list the nodes, or set unknown_nodes: publish")
        return self


@dataclass
class LineSinkStats:
    """Counters of one LineSink (``LineSink.stats``)."""

    lines_ok: int = 0
    dropped_lines: int = 0  # all of the next three
    line_too_long: int = 0
    invalid_utf8: int = 0
    unparsable: int = 0
    unknown_fields: int = 0  # values of keys not in fields
    invalid_values: int = 0  # nan / inf values skipped
    readings: int = 0


class LineSink(WsnDriver[LineSinkOptions]):
    """A sink node on a serial port printing ``key=value`` or JSON lines, one per message."""

    options_model: ClassVar[type[DriverOptions]] = LineSinkOptions
    #: ESP32 and most Arduino sketches print at 115200 baud.
    default_baudrate: ClassVar[int] = 115200

    def _prepare(self) -> None:
        self._framer = LineFramer(self._opts.max_line)
        self._counts = LineSinkStats()

    def _unknown_prefix(self) -> str:
        return f"{self._opts.node_key}-"  # node=9 -> "node-9"

    def _node_keys(self) -> list[tuple[str, NodeOptions]]:
        return [(node.id, node) for node in self._opts.nodes]

    def _reset(self) -> None:
        self._framer.reset()

    def _messages(self) -> int:
        return self._counts.lines_ok

    @property
    def stats(self) -> dict[str, int]:
        """lines_ok, dropped_lines (line_too_long + invalid_utf8 + unparsable),
        unknown_nodes, unknown_fields, invalid_values, readings."""
        counts = asdict(self._counts)
        counts["line_too_long"] = self._framer.too_long
        counts["unknown_nodes"] = self.nodes.unknown_messages
        counts["dropped_lines"] = (
            self._framer.too_long + counts["invalid_utf8"] + counts["unparsable"]
        )
        return counts

    def _feed(self, data: bytes, at: float) -> list[Measurement]:
        too_long = self._framer.too_long
        lines = self._framer.feed(data, at)
        if self._framer.too_long > too_long:
            self._dropped("line_too_long", f"a line longer than {self._opts.max_line} bytes", b"")
        out: list[Measurement] = []
        for line in lines:
            out += self._line(line)
        return out

    def _line(self, line: Line) -> list[Measurement]:
        opts = self._opts
        try:
            message = parse_line(
                line.raw, fmt=opts.format, separator=opts.separator, node_key=opts.node_key
            )
            mapped = map_values(message.values, opts.fields)
        except LineError as err:
            if err.reason != "empty":  # blank lines between messages are harmless
                self._dropped(err.reason, str(err), line.raw)
            return []
        except ValueError as err:
            self._dropped("unparsable", str(err), line.raw)
            return []
        self._counts.lines_ok += 1
        assert message.node is not None  # node_key is set: parse_line demands the id
        name = self.nodes.heard(message.node)  # only once the whole line is known good
        if name is None:
            return []
        self._note(mapped, name, self._counts)
        measurements = mapped.measurements(name, line.time)
        self._counts.readings += len(measurements)
        return measurements

    def _dropped(self, reason: str, detail: str, raw: bytes) -> None:
        if reason == "invalid_utf8":
            self._counts.invalid_utf8 += 1
        elif reason == "unparsable":
            self._counts.unparsable += 1
        sensor = self.context.sensor
        logged = self._log_once(
            ("dropped", reason),
            logging.WARNING,
            f"sensor {sensor}: line dropped ({reason}): {detail}; further ones are "
            "counted and logged at debug level",
            sensor=sensor,
            reason=reason,
            line=repr(raw[:80]),
        )
        if not logged:
            log.debug(
                f"line dropped ({reason}): {detail}",
                extra={"sensor": sensor, "reason": reason, "line": repr(raw[:80])},
            )

    @classmethod
    def simulator(cls, address: int, seed: int) -> SimLineSink:
        """A sink with the nodes of config/examples/linesink.yaml, for ``port: sim``.

        Without the boot banner: ``wsn-gateway read`` on the example stays free of
        warnings about it (the tests turn it on).
        """
        from drivers.sim.linesink import SimLineSink  # noqa: PLC0415 - sim only when asked

        return SimLineSink(seed=seed, banner=False)
