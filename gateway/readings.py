"""The Reading type: one measured value of one quantity of one sensor at one time."""

from __future__ import annotations

import math
from dataclasses import dataclass

Value = float | str | bool


@dataclass(frozen=True, slots=True)
class Measurement:
    """What a driver returns: a quantity, its SenML unit and its value, not yet timestamped."""

    quantity: str
    unit: str | None
    value: Value
    #: When the value was measured (UNIX seconds), for devices that report on
    #: their own schedule (serial streams, WSN nodes); None means "at the read".
    time: float | None = None


@dataclass(frozen=True, slots=True)
class Reading:
    """A measurement stamped with its sensor name and UNIX time.

    ``synced`` is False when the wall clock was not known to be synchronised at
    the time of the reading (a Pi has no RTC until NTP has answered).
    """

    sensor: str
    quantity: str
    unit: str | None
    value: Value
    time: float
    synced: bool = True

    @property
    def name(self) -> str:
        """SenML record name relative to the base name: ``{sensor}/{quantity}``."""
        return f"{self.sensor}/{self.quantity}"


#: I-JSON (RFC 7493) interoperable magnitude: larger numbers lose precision in
#: consumers that parse JSON numbers as doubles, and RFC 8785 refuses them as integers.
MAX_SAFE = 2.0**53


def is_publishable(value: Value) -> bool:
    """JSON cannot carry NaN or infinities (and I-JSON no magnitude ≥ 2^53), so such
    values never reach a batch."""
    if isinstance(value, bool) or not isinstance(value, float | int):
        return True
    return math.isfinite(value) and abs(value) < MAX_SAFE


def senml_value(value: Value) -> tuple[str, Value]:
    """The SenML member (``v``, ``vs`` or ``vb``) that carries this value."""
    if isinstance(value, bool):
        return "vb", value
    if isinstance(value, str):
        return "vs", value
    return "v", value


def senml_record(name: str, unit: str | None, value: Value, t: float) -> dict[str, object]:
    """One SenML record (RFC 8428); ``t`` is relative to the pack's base time."""
    key, val = senml_value(value)
    record: dict[str, object] = {"n": name, key: val, "t": t}
    if unit:
        record["u"] = unit
    return record
