"""Shared parts of the wireless-sensor-network coordinator drivers (XBee, LineSink).

A coordinator is one serial port that speaks for many remote nodes. What every
such driver needs lives here once: the node table (configured nodes, last time
heard, a missing/back report exactly once each, unknown-node policy), the
mapping of a node's raw values to quantities (``{node}/{quantity}``), and a
thin serial part that drains the port and stamps each chunk with its arrival
time. The protocol parsers themselves (``drivers.xbee``, ``drivers.linesink``)
stay pure functions of bytes.
"""

from __future__ import annotations

import logging
import math
import re
import time
from abc import abstractmethod
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, ClassVar, Generic, Literal, Protocol, TypeVar, cast

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from drivers.base import Driver, DriverContext, DriverOptions
from gateway.errors import SensorError
from gateway.readings import Measurement, Value

log = logging.getLogger(__name__)

# --- names ---------------------------------------------------------------------------------

#: A node or quantity name: SenML name characters (RFC 8428 section 4.5.1) without "/",
#: which separates sensor, node and quantity; starts like a sensor name does.
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$"
_NAME_RE = re.compile(NAME_PATTERN)
_NOT_NAME_CHARS = re.compile(r"[^A-Za-z0-9_.:-]")

#: Seconds of silence after which a node counts as missing, unless configured.
DEFAULT_MISSING_AFTER = 300.0
#: Distinct unknown nodes remembered (and, with ``unknown_nodes: publish``, published):
#: a noisy radio must not grow the table or the set of SenML names without bound.
MAX_UNKNOWN_NODES = 64
#: Distinct keys a ``LogOnce`` remembers before it stops logging new ones.
MAX_LOGGED_KEYS = 256

UnknownNodes = Literal["drop", "publish"]


def is_name(text: str) -> bool:
    """True when ``text`` may be a node or quantity name."""
    return _NAME_RE.match(text) is not None


def generated_name(prefix: str, key: str) -> str:
    """A valid node name for an unknown node: ``prefix`` + its id, odd characters as ``_``."""
    return (prefix + _NOT_NAME_CHARS.sub("_", key))[:64]


# --- option models -------------------------------------------------------------------------


def _no_bool(value: object) -> object:
    """``scale: yes`` is YAML for True, which pydantic would take as 1.0: refuse it."""
    if isinstance(value, bool):
        raise ValueError(f"must be a number, not {str(value).lower()}")
    return value


#: A finite float that refuses YAML booleans.
Number = Annotated[float, BeforeValidator(_no_bool)]


class OptionsModel(BaseModel):
    """Base of the nested option models: unknown keys and NaN refused, frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class NodeOptions(OptionsModel):
    """One configured remote node: its name in SenML names, and when it counts as missing."""

    name: str = Field(pattern=NAME_PATTERN, description="node name, part of the SenML name")
    missing_after: Number = Field(
        default=DEFAULT_MISSING_AFTER, gt=0, description="seconds of silence before 'missing'"
    )


class FieldMapping(OptionsModel):
    """How one raw value becomes a quantity: ``value · scale + offset`` in ``unit``."""

    quantity: str = Field(pattern=NAME_PATTERN)
    unit: str | None = Field(default=None, description="SenML unit, e.g. Cel, %RH, V")
    scale: Number = 1.0
    offset: Number = 0.0

    def apply(self, raw: float) -> float:
        """The calibrated value of ``raw``."""
        return raw * self.scale + self.offset


class WsnOptions(DriverOptions):
    """Options every coordinator driver has."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    unknown_nodes: UnknownNodes = Field(
        default="drop", description="data of nodes not in `nodes`: drop, or publish"
    )
    first_wait: Number = Field(
        default=2.0,
        ge=0,
        le=30,
        description="seconds the first read after opening the port waits for a first message",
    )


def duplicates(values: Iterable[str]) -> list[str]:
    """The values that occur more than once, in first-repeat order."""
    seen: set[str] = set()
    repeated: list[str] = []
    for value in values:
        if value in seen and value not in repeated:
            repeated.append(value)
        seen.add(value)
    return repeated


def check_nodes(nodes: Sequence[NodeOptions], keys: Sequence[str], key_name: str) -> None:
    """Refuse repeated node names or ids (``ValueError`` naming them)."""
    for what, values in (("name", [n.name for n in nodes]), (key_name, list(keys))):
        repeated = duplicates(values)
        if repeated:
            raise ValueError(f"nodes: {what} {repeated[0]!r} is used by more than one node")


# --- the node table ------------------------------------------------------------------------


@dataclass
class NodeState:
    """What the table knows of one node; ``last_heard`` is on the table's clock."""

    key: str
    name: str
    missing_after: float | None
    configured: bool
    last_heard: float | None = None
    missing: bool = False
    messages: int = 0


@dataclass(frozen=True, slots=True)
class NodeStatus:
    """A node as status output shows it."""

    key: str
    name: str
    configured: bool
    silent_for: float
    missing: bool
    messages: int


class NodeTable:
    """Configured nodes by id, last time heard, missing/back reports, unknown-node policy.

    ``clock`` is monotonic seconds (injectable for tests). A node never heard counts
    as silent since the table was made, so a node that never reports is reported
    missing too. Every report is logged exactly once per transition.
    """

    def __init__(
        self,
        nodes: Iterable[tuple[str, NodeOptions]],
        *,
        sensor: str,
        unknown: UnknownNodes = "drop",
        unknown_prefix: str = "node-",
        clock: Callable[[], float] = time.monotonic,
        logger: logging.Logger | None = None,
    ) -> None:
        self.sensor = sensor
        self.unknown = unknown
        self.unknown_prefix = unknown_prefix
        self._clock = clock
        self._log = logger or log
        self._start = clock()
        self._nodes: dict[str, NodeState] = {
            key: NodeState(key, node.name, node.missing_after, configured=True)
            for key, node in nodes
        }
        self._names = {state.name for state in self._nodes.values()}
        self._unknown_seen: set[str] = set()
        #: Messages from unknown nodes: dropped, or published under a generated name.
        self.unknown_messages = 0
        self.dropped_messages = 0

    @property
    def nodes(self) -> tuple[NodeState, ...]:
        """Every node the table tracks (configured ones first)."""
        return tuple(self._nodes.values())

    @property
    def missing(self) -> frozenset[str]:
        """Names of the nodes currently reported missing."""
        return frozenset(s.name for s in self._nodes.values() if s.missing)

    @property
    def unknown_keys(self) -> frozenset[str]:
        """Ids of unknown nodes heard so far (at most ``MAX_UNKNOWN_NODES``)."""
        return frozenset(self._unknown_seen)

    def heard(self, key: str) -> str | None:
        """Record a message from node ``key``; its name, or None when its data is dropped."""
        now = self._clock()
        state = self._nodes.get(key)
        if state is None:
            state = self._unknown(key)
            if state is None:
                return None
        if state.missing:
            state.missing = False
            since = state.last_heard if state.last_heard is not None else self._start
            self._log.info(
                f"node {state.name} ({key}) of sensor {self.sensor} is back "
                f"after {now - since:.0f} s of silence",
                extra={"sensor": self.sensor, "node": state.name, "silent_s": round(now - since)},
            )
        state.last_heard = now
        state.messages += 1
        return state.name

    def _unknown(self, key: str) -> NodeState | None:
        self.unknown_messages += 1
        first = key not in self._unknown_seen
        if first and len(self._unknown_seen) < MAX_UNKNOWN_NODES:
            self._unknown_seen.add(key)
        elif first:
            # Over the cap: neither remembered nor published, and logged no more.
            self.dropped_messages += 1
            return None
        if self.unknown == "drop":
            self.dropped_messages += 1
            if first:
                self._log.warning(
                    f"sensor {self.sensor}: message from unknown node {key!r} dropped "
                    "(add it to nodes, or set unknown_nodes: publish); logged once",
                    extra={"sensor": self.sensor, "node_id": key},
                )
            return None
        name = generated_name(self.unknown_prefix, key)
        while name in self._names:
            name = name[:55] + "-unknown"  # never merge into a configured node's series
        state = NodeState(key, name, None, configured=False)
        self._nodes[key] = state
        self._names.add(name)
        self._log.warning(
            f"sensor {self.sensor}: unknown node {key!r} published as {name!r} "
            "(add it to nodes to name it); logged once",
            extra={"sensor": self.sensor, "node_id": key, "node": name},
        )
        return state

    def check(self) -> list[str]:
        """Report configured nodes silent for longer than their ``missing_after``, once each.

        Returns the names newly reported missing.
        """
        now = self._clock()
        newly: list[str] = []
        for state in self._nodes.values():
            if state.missing or state.missing_after is None:
                continue
            since = state.last_heard if state.last_heard is not None else self._start
            silence = now - since
            if silence <= state.missing_after:
                continue
            state.missing = True
            newly.append(state.name)
            heard = "not heard since start" if state.last_heard is None else "silent"
            self._log.warning(
                f"node {state.name} ({state.key}) of sensor {self.sensor} is missing: "
                f"{heard} for {silence:.0f} s (missing_after {state.missing_after:g} s)",
                extra={
                    "sensor": self.sensor,
                    "node": state.name,
                    "silent_s": round(silence),
                    "missing_after": state.missing_after,
                },
            )
        return newly

    def status(self) -> list[NodeStatus]:
        """Every node's state, for status output."""
        now = self._clock()
        return [
            NodeStatus(
                key=s.key,
                name=s.name,
                configured=s.configured,
                silent_for=now - (s.last_heard if s.last_heard is not None else self._start),
                missing=s.missing,
                messages=s.messages,
            )
            for s in self._nodes.values()
        ]


# --- values to measurements ----------------------------------------------------------------


@dataclass
class Mapped:
    """One message's values sorted out: what maps to quantities, what is unknown or invalid."""

    values: list[tuple[FieldMapping, Value]] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)
    invalid: list[str] = field(default_factory=list)

    def measurements(self, node: str, at: float | None) -> list[Measurement]:
        """The mapped values as measurements of ``node``."""
        return [
            measurement(node, spec.quantity, None if isinstance(v, bool) else spec.unit, v, at)
            for spec, v in self.values
        ]


def measurement(
    node: str, quantity: str, unit: str | None, value: Value, at: float | None
) -> Measurement:
    """A node's measurement: quantity ``{node}/{quantity}``, so SenML ``{sensor}/{node}/...``."""
    return Measurement(f"{node}/{quantity}", unit, value, at)


def map_values(values: Mapping[str, Value | None], fields: Mapping[str, FieldMapping]) -> Mapped:
    """Sort one message's raw values by the ``fields`` mapping, and calibrate them.

    Keys not in ``fields`` are returned as ``unknown``. A mapped value that is NaN or
    infinite (a sensor's own "no reading", e.g. Arduino's ``nan``) is skipped and
    returned as ``invalid``. A mapped value that is not a number or boolean at all
    means the message is corrupt: ``ValueError``, and nothing of it is used.
    Booleans pass uncalibrated (SenML ``vb``).
    """
    mapped = Mapped()
    for key, raw in values.items():
        spec = fields.get(key)
        if spec is None:
            mapped.unknown.append(key)
            continue
        if isinstance(raw, bool):
            mapped.values.append((spec, raw))
            continue
        if not isinstance(raw, int | float):
            raise ValueError(f"field {key!r} is not a number")
        value = spec.apply(float(raw))
        if math.isfinite(value):
            mapped.values.append((spec, value))
        else:
            mapped.invalid.append(key)
    return mapped


class LogOnce:
    """Logs a message the first time each key is seen; remembers a bounded number of keys."""

    def __init__(self, logger: logging.Logger, cap: int = MAX_LOGGED_KEYS) -> None:
        self._log = logger
        self._cap = cap
        self._seen: set[Any] = set()

    def __call__(self, key: Any, level: int, message: str, **extra: Any) -> bool:
        """Log ``message`` if ``key`` is new; True when it was logged."""
        if key in self._seen or len(self._seen) >= self._cap:
            return False
        self._seen.add(key)
        self._log.log(level, message, extra=extra)
        return True


# --- the serial part -----------------------------------------------------------------------

#: One blocking read waits at most this long for a byte: a gap this long ends the drain.
#: 20 ms is about 20 characters at 9600 baud, longer than any gap inside a message.
QUIET = 0.02
#: Most time one read spends draining a port that keeps talking.
READ_BUDGET = 0.2


class SerialPort(Protocol):
    """The part of a pyserial port the drivers use."""

    timeout: float | None

    @property
    def in_waiting(self) -> int: ...

    def read(self, size: int = 1) -> bytes: ...

    def close(self) -> None: ...


def open_serial(url: str, baudrate: int) -> SerialPort:
    """Open ``url`` (a device path or any pyserial URL) for short non-blocking reads."""
    import serial  # noqa: PLC0415 - only real ports need pyserial loaded

    try:
        port: SerialPort = serial.serial_for_url(
            url, baudrate=baudrate, timeout=QUIET, exclusive=True
        )
    except (serial.SerialException, ValueError) as err:
        raise SensorError(
            f"cannot open serial port {url}: {err} — check the device "
            "(ls -l /dev/serial/by-id/) and that the service user is in the dialout group"
        ) from err
    return port


#: The options of one coordinator driver (its ``options_model``).
OptionsT = TypeVar("OptionsT", bound=WsnOptions)


class FieldCounts(Protocol):
    """The counters ``WsnDriver._note`` keeps; a driver's stats dataclass has them."""

    unknown_fields: int
    invalid_values: int


class WsnDriver(Driver, Generic[OptionsT]):
    """A coordinator on a serial port: drains what arrived, parses, reports per node.

    Subclasses set ``options_model`` (their ``OptionsT``), make their parser in ``_prepare``,
    turn bytes into measurements (``_feed``) and count complete messages
    (``_messages``). ``read`` drains the port for at most ``READ_BUDGET``
    seconds (stopping at the first ``QUIET`` gap), stamps every message with the
    wall time its last chunk was read, and runs the missing-node check. The stamp
    is late by at most the poll interval, which is why the examples poll every
    second; the kernel keeps what arrives in between (about 4 KB).

    Right after the port is opened, pyserial has flushed whatever was pending, so
    the first read waits up to ``first_wait`` seconds for one complete message;
    ``wsn-gateway read`` then shows data instead of nothing, and the daemon pays
    the wait once per (re)opening, on this sensor's own worker thread.
    """

    options_model: ClassVar[type[DriverOptions]] = WsnOptions
    bus_kind: ClassVar[str] = "serial"

    def __init__(
        self,
        context: DriverContext,
        options: DriverOptions,
        *,
        opener: Callable[[str, int], SerialPort] = open_serial,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(context, options)
        model = self.options_model
        if not isinstance(options, model):
            raise TypeError(
                f"{type(self).__name__} needs {model.__name__}, got {type(options).__name__}"
            )
        self._opts: OptionsT = cast("OptionsT", options)  # options_model: checked just above
        self._opener = opener
        self._wall = wall
        self._port: SerialPort | None = None
        self._fresh = False
        self._first_wait = self._opts.first_wait
        # Logged under the protocol's module, so that its logger level applies.
        driver_log = logging.getLogger(type(self).__module__)
        self._log_once = LogOnce(driver_log)
        self._prepare()
        self.nodes = NodeTable(
            self._node_keys(),
            sensor=context.sensor,
            unknown=self._opts.unknown_nodes,
            unknown_prefix=self._unknown_prefix(),
            clock=clock,
            logger=driver_log,
        )

    def _prepare(self) -> None:
        """Make the protocol's parser and counters (``self._opts`` is set by now)."""

    def _unknown_prefix(self) -> str:
        """Prefix of the generated name of an unknown node (``unknown_nodes: publish``)."""
        return "node-"

    @abstractmethod
    def _node_keys(self) -> list[tuple[str, NodeOptions]]:
        """(id, node) of every configured node, the id as the protocol reports it."""

    @abstractmethod
    def _feed(self, data: bytes, at: float) -> list[Measurement]:
        """Parse ``data`` (read at wall time ``at``; b"" to let time pass)."""

    @abstractmethod
    def _messages(self) -> int:
        """Complete, valid messages parsed so far."""

    @abstractmethod
    def _reset(self) -> None:
        """Forget partial input: the port was (re)opened."""

    @property
    @abstractmethod
    def stats(self) -> dict[str, int]:
        """Counters for status and metrics (a copy)."""

    def setup(self) -> None:
        """Open the port (again); the node table and counters survive a reopening."""
        self.close()
        if not self.context.port:
            raise SensorError(
                f"sensor {self.context.sensor!r}: a {type(self).__name__} needs a serial port"
            )
        baudrate = self.context.baudrate or self.default_baudrate
        self._port = self._opener(self.context.port, baudrate)
        self._reset()
        self._fresh = True

    def close(self) -> None:
        """Close the port; the next read opens it again."""
        port, self._port = self._port, None
        if port is not None:
            try:
                port.close()
            except OSError as err:
                log.debug("closing the serial port failed", extra={"error": str(err)})

    def read(self) -> list[Measurement]:
        """Everything complete that arrived since the last read, one measurement per value."""
        if self._port is None:
            self.setup()
        port = self._port
        assert port is not None
        out: list[Measurement] = []
        try:
            if self._fresh:
                self._fresh = False
                before = self._messages()
                deadline = time.monotonic() + self._first_wait
                while self._messages() == before and time.monotonic() < deadline:
                    out += self._receive(port) or []
            deadline = time.monotonic() + READ_BUDGET
            while time.monotonic() < deadline:
                got = self._receive(port)
                if got is None:
                    break
                out += got
        except OSError as err:
            self.close()  # the next read opens it again
            if not out:
                raise SensorError(
                    f"serial port {self.context.port}: {err} — the device may have been "
                    "unplugged; the port is opened again on the next read"
                ) from err
            log.warning(
                "serial read failed after some data; kept what was complete",
                extra={"sensor": self.context.sensor, "error": str(err)},
            )
        out += self._feed(b"", self._wall())
        self.nodes.check()
        return out

    def _receive(self, port: SerialPort) -> list[Measurement] | None:
        """One read: all that waits, else up to one byte within ``QUIET``; parsed.

        None when nothing arrived within ``QUIET``: the line is quiet.
        """
        data = port.read(max(1, port.in_waiting))
        if not data:
            return None
        return self._feed(data, self._wall())

    def _note(self, mapped: Mapped, node: str, counts: FieldCounts) -> None:
        """Count a message's unmapped fields and non-readings; log each kind once."""
        sensor = self.context.sensor
        counts.unknown_fields += len(mapped.unknown)
        counts.invalid_values += len(mapped.invalid)
        for key in mapped.unknown:
            self._log_once(
                ("field", key),
                logging.INFO,
                f"sensor {sensor}: field {key!r} is not in fields and is ignored; logged once",
                sensor=sensor,
                field=key,
            )
        for key in mapped.invalid:
            self._log_once(
                ("invalid", node, key),
                logging.WARNING,
                f"sensor {sensor}: node {node} sent no valid value for {key!r} (nan or inf); "
                "logged once",
                sensor=sensor,
                node=node,
                field=key,
            )
