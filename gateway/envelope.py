"""Sealing: readings into one signed, canonical payload (DESIGN.md, wire format v1).

Sizing is exact, not estimated: RFC 8785 serialises an array as its elements'
canonical forms joined by commas, so the payload length is the length of the
envelope with an empty ``records`` array plus each record's own length. That
lets a batch be filled right up to the byte limit in one pass, and the
signature has a fixed length per key, so the size is known before signing.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import rfc8785

from gateway.readings import Reading, senml_record, senml_value
from gateway.signing import Signer, b64url

_EMPTY_RECORDS = b'"records":[]'


class RecordTooLarge(ValueError):
    """The first reading alone does not fit in a batch: it can never be published."""


@dataclass(frozen=True, slots=True)
class Chain:
    """Where a stream stands: the last sealed seq and the hash of its payload."""

    stream: str
    seq: int
    last_hash: str | None


@dataclass(frozen=True, slots=True)
class Sealed:
    """A sealed batch: its seq, exact payload bytes, payload hash and reading count."""

    seq: int
    payload: bytes
    digest: str
    count: int


def payload_digest(payload: bytes) -> str:
    """base64url SHA-256 of a payload: the next batch's ``prev``."""
    return b64url(hashlib.sha256(payload).digest())


def _splice(header: dict[str, Any], records: Sequence[bytes]) -> bytes:
    """Canonical bytes of ``header`` with its empty records array filled in."""
    base = rfc8785.dumps(header)
    head, sep, tail = base.partition(_EMPTY_RECORDS)
    assert sep, "envelope header must hold an empty records array"
    return head + b'"records":[' + b",".join(records) + b"]" + tail


class Sealer:
    """Packs time-ordered readings into payloads no larger than ``max_bytes``."""

    def __init__(self, *, thing: str, signer: Signer, max_bytes: int, max_records: int) -> None:
        self.thing = thing
        self.signer = signer
        self.max_bytes = max_bytes
        self.max_records = max_records
        self._base_name = f"{thing}/"
        self._series_bytes: dict[tuple[str, str | None], tuple[bytes, bytes]] = {}

    def _header(self, chain: Chain, now: float, dropped: int, unsynced: bool) -> dict[str, Any]:
        header: dict[str, Any] = {
            "v": 1,
            "thing": self.thing,
            "stream": chain.stream,
            "seq": chain.seq + 1,
            "prev": chain.last_hash,
            "time": round(now, 3),
            "records": [],
        }
        if dropped:
            header["dropped"] = dropped
        if unsynced:
            header["clock"] = "unsynced"
        return header

    def _record(self, reading: Reading, base_time: float, first: bool) -> bytes:
        t = round(reading.time - base_time, 3)
        if first:  # the one record with bn and bt: rare, so build it the plain way
            record: dict[str, Any] = senml_record(reading.name, reading.unit, reading.value, t)
            record["bn"] = self._base_name
            record["bt"] = base_time
            return rfc8785.dumps(record)
        # Members in RFC 8785 order: n, t, u, then v / vb / vs. Name and unit repeat in
        # every record of a series, so their canonical bytes are made once.
        parts = self._series_bytes.get((reading.name, reading.unit))
        if parts is None:
            head = b'{"n":' + rfc8785.dumps(reading.name) + b',"t":'
            unit = b',"u":' + rfc8785.dumps(reading.unit) if reading.unit else b""
            parts = self._series_bytes[(reading.name, reading.unit)] = (head, unit)
        key, value = senml_value(reading.value)
        return (
            parts[0]
            + rfc8785.dumps(t)
            + parts[1]
            + b',"'
            + key.encode()
            + b'":'
            + rfc8785.dumps(value)
            + b"}"
        )

    def seal(
        self, chain: Chain, readings: Sequence[Reading], *, now: float, dropped: int = 0
    ) -> Sealed:
        """Seal as many of ``readings`` as fit; ``count`` says how many were used.

        ``readings`` must be sorted by time. Those that do not fit stay for the
        next batch; the ones used are always a prefix of the given sequence.
        """
        if not readings:
            raise ValueError("a batch needs at least one reading")
        readings = readings[: self.max_records]
        base_time = readings[0].time
        unsynced = False
        header = self._header(chain, now, dropped, unsynced)
        sig_stub = {
            "alg": self.signer.alg,
            "kid": self.signer.kid,
            "value": "A" * len(b64url(bytes(self.signer.signature_length))),
        }
        # Bytes of the signed envelope without any record; each record then adds
        # its own length plus a separating comma. The clock flag may add bytes
        # once the first unsynced reading goes in, so reserve them up front.
        clock_bytes = len(b',"clock":"unsynced"')
        size = len(rfc8785.dumps({**header, "sig": sig_stub})) + clock_bytes
        records: list[bytes] = []
        for i, reading in enumerate(readings):
            rec = self._record(reading, base_time, first=i == 0)
            size += len(rec) + (1 if i else 0)
            if size > self.max_bytes:
                break
            records.append(rec)
            unsynced = unsynced or not reading.synced
        if not records:
            raise RecordTooLarge(
                f"the record of {readings[0].name} does not fit in max_bytes={self.max_bytes}"
            )
        count = len(records)
        header = self._header(chain, now, dropped, unsynced)
        signed = _splice(header, records)
        header["sig"] = {
            "alg": self.signer.alg,
            "kid": self.signer.kid,
            "value": b64url(self.signer.sign(signed)),
        }
        payload = _splice(header, records)
        if len(payload) > self.max_bytes:  # pragma: no cover - sizing above is exact
            raise AssertionError(f"sealed payload {len(payload)} > {self.max_bytes} bytes")
        return Sealed(chain.seq + 1, payload, payload_digest(payload), count)
