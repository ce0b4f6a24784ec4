"""Consumer-side reference check of the wire format (v1) in DESIGN.md.

Given only payload bytes (and optionally the gateway's public keys or device
certificates) this module checks what a cloud consumer relies on: the bytes
are the RFC 8785 canonical form, the members and the SenML pack are as the
contract says, the signature (EdDSA, ES256 as JWS r||s, RS256) verifies, and
within a stream every ``seq`` is present once and every ``prev`` is the
SHA-256 of the payload before it.

It is written from DESIGN.md alone and deliberately imports nothing from the
sealing side (``gateway.envelope``, ``gateway.signing``), so that it can be
used to check the sealer; its only dependencies are ``cryptography`` and
``rfc8785``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Final, TypeAlias, TypeGuard

import rfc8785
from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from gateway.errors import GatewayError

__all__ = [
    "ALGORITHMS",
    "FORMAT_VERSION",
    "Batch",
    "BatchInvalid",
    "PublicKey",
    "Report",
    "ResolvedRecord",
    "StreamSummary",
    "VerificationKeyError",
    "format_report",
    "kid_for_certificate",
    "kid_for_public_key",
    "load_verification_keys",
    "read_payloads",
    "verify_batch",
    "verify_stream",
]

PublicKey: TypeAlias = ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey | rsa.RSAPublicKey
Value: TypeAlias = float | str | bool

FORMAT_VERSION: Final = 1
ALGORITHMS: Final = frozenset({"EdDSA", "ES256", "RS256"})

# RFC 8428 section 4.5.1: the characters of a SenML name, first one alphanumeric.
_SENML_NAME: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:/-]*")
_B64URL: Final = re.compile(r"[A-Za-z0-9_-]*")
_KID: Final = re.compile(r"[0-9a-f]{64}")
_PEM_BLOCK: Final = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----.*?-----END \1-----", re.DOTALL)

_REQUIRED: Final = ("v", "thing", "stream", "seq", "prev", "time", "records", "sig")
_OPTIONAL: Final = ("dropped", "clock")
_SIG_MEMBERS: Final = frozenset({"alg", "kid", "value"})
_VALUE_MEMBERS: Final = ("v", "vs", "vb")
_RECORD_MEMBERS: Final = frozenset({"n", "u", "t", *_VALUE_MEMBERS})
_BASE_MEMBERS: Final = frozenset({"bn", "bt"})
_SHA256_BYTES: Final = 32
_JWS_SIG_BYTES: Final = 64  # Ed25519, and r||s of P-256 (RFC 7518 section 3.4)
_MAX_SAFE_INT: Final = 2**53 - 1  # I-JSON (RFC 7493): integers beyond this are not exact


class VerificationKeyError(GatewayError, ValueError):
    """A key file cannot be read or holds no key that can verify v1 batches."""


class BatchInvalid(GatewayError, ValueError):
    """A payload is not a valid v1 batch; ``reason`` says what is wrong."""

    def __init__(self, reason: str, *, stream: str | None = None, seq: int | None = None) -> None:
        self.reason = reason
        self.stream = stream
        self.seq = seq
        where = " ".join(
            part
            for part in (
                f"stream {stream}" if stream is not None else "",
                f"seq {seq}" if seq is not None else "",
            )
            if part
        )
        super().__init__(f"{where}: {reason}" if where else reason)


class _Reject(Exception):
    """Internal: one check failed; turned into BatchInvalid with the batch's context."""


@dataclass(frozen=True, slots=True)
class ResolvedRecord:
    """One SenML record with base values applied (RFC 8428 section 4.6)."""

    name: str  # resolved name: bn + n = "{thing}/{sensor}/{quantity}"
    sensor: str
    quantity: str
    unit: str | None
    value: Value
    time: float  # absolute UNIX seconds: bt + t


@dataclass(frozen=True, slots=True)
class Batch:
    """A payload that passed every check of the v1 wire format."""

    thing: str
    stream: str
    seq: int
    prev: str | None
    time: float
    dropped: int  # 0 when the member is absent
    clock_unsynced: bool
    records: tuple[ResolvedRecord, ...]
    alg: str
    kid: str
    payload: bytes = field(repr=False)
    digest: str  # base64url (no padding) SHA-256 of payload: the next batch's prev
    signature_checked: bool


@dataclass(slots=True)
class StreamSummary:
    """What arrived of one (thing, stream)."""

    thing: str
    stream: str
    batches: int  # valid payloads received, copies included
    unique_batches: int
    duplicates: int  # byte-identical copies of a seq already seen (normal after a resend)
    conflicts: int  # copies of a seq already seen with different bytes
    records: int  # over unique batches
    dropped: int  # sum of ``dropped`` over unique batches
    unsynced_batches: int
    first_seq: int
    last_seq: int
    starts_at: int | None  # first_seq when > 1: the consumer joined late
    missing: list[tuple[int, int]] = field(default_factory=list)  # inclusive seq ranges
    broken_links: list[int] = field(default_factory=list)  # seqs whose prev does not match


@dataclass(slots=True)
class Report:
    """Outcome of :func:`verify_stream`; ``ok`` when nothing is wrong."""

    payloads: int
    invalid: int
    streams: list[StreamSummary]
    problems: list[str]

    @property
    def ok(self) -> bool:
        """True iff no problem was found."""
        return not self.problems


# -- keys ---------------------------------------------------------------------


def kid_for_public_key(key: PublicKey) -> str:
    """Lowercase hex SHA-256 of the DER SubjectPublicKeyInfo."""
    der = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(der).hexdigest()


def kid_for_certificate(cert: x509.Certificate) -> str:
    """Lowercase hex SHA-256 of the DER certificate (the AWS IoT certificate id)."""
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def load_verification_keys(paths: Iterable[Path]) -> dict[str, PublicKey]:
    """Read PEM certificates, public keys or private keys; return kid -> public key.

    A certificate is registered under its certificate kid and, leniently, also
    under the SPKI kid of its key. Raises VerificationKeyError naming the file
    when a file cannot be read or holds no usable key.
    """
    keys: dict[str, PublicKey] = {}
    for path in paths:
        try:
            data = Path(path).read_bytes()
        except OSError as err:
            raise VerificationKeyError(f"{path}: cannot read key file: {err}") from err
        keys.update(_keys_from_pem(Path(path), data))
    return keys


def _keys_from_pem(path: Path, data: bytes) -> dict[str, PublicKey]:
    found: dict[str, PublicKey] = {}
    problems: list[str] = []
    blocks = list(_PEM_BLOCK.finditer(data))
    if not blocks:
        raise VerificationKeyError(
            f"{path}: no PEM block found; expected a certificate, a public key or a private key"
        )
    for block in blocks:
        label = block.group(1).decode("ascii")
        pem = block.group(0)
        try:
            if label in ("CERTIFICATE", "X509 CERTIFICATE"):
                cert = x509.load_pem_x509_certificate(pem)
                key = _usable(cert.public_key())
                if key is None:
                    problems.append(
                        f"certificate has an unsupported {_key_kind(cert.public_key())} key"
                    )
                    continue
                found[kid_for_certificate(cert)] = key
                found[kid_for_public_key(key)] = key
            elif label.endswith("PUBLIC KEY"):
                key = _usable(serialization.load_pem_public_key(pem))
                if key is None:
                    problems.append(f"{label}: unsupported key type")
                    continue
                found[kid_for_public_key(key)] = key
            elif label.endswith("PRIVATE KEY"):
                private = serialization.load_pem_private_key(pem, password=None)
                key = _usable(private.public_key())
                if key is None:
                    problems.append(f"{label}: unsupported key type")
                    continue
                found[kid_for_public_key(key)] = key
            # Other blocks (EC PARAMETERS, ...) are ignored.
        except TypeError:
            problems.append(f"{label}: encrypted; give the certificate or public key instead")
        except (ValueError, UnsupportedAlgorithm) as err:
            problems.append(f"{label}: cannot be loaded ({err})")
    if not found:
        detail = "; ".join(problems) or "no certificate or key block"
        raise VerificationKeyError(
            f"{path}: no usable verification key (Ed25519, EC P-256 or RSA): {detail}"
        )
    return found


def _usable(key: object) -> PublicKey | None:
    """The key if it can verify one of the v1 algorithms, else None."""
    if isinstance(key, ed25519.Ed25519PublicKey | rsa.RSAPublicKey):
        return key
    if isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1):
        return key
    return None


# -- one batch ----------------------------------------------------------------


def verify_batch(payload: bytes, keys: Mapping[str, PublicKey] | None) -> Batch:
    """Check one payload against the v1 wire format; return it parsed.

    With ``keys`` None the signature is not checked (``signature_checked`` is
    False); otherwise ``sig.kid`` must be in ``keys``. Raises BatchInvalid.
    """
    data = bytes(payload)
    try:
        obj = _parse(data)
    except _Reject as err:
        raise BatchInvalid(str(err)) from err
    stream = obj.get("stream")
    seq = obj.get("seq")
    try:
        return _check(data, obj, keys)
    except _Reject as err:
        raise BatchInvalid(
            str(err),
            stream=stream if isinstance(stream, str) else None,
            seq=seq if _is_int(seq) else None,
        ) from err


def _parse(data: bytes) -> dict[str, object]:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise _Reject(f"payload is not UTF-8 (invalid byte at {err.start})") from err
    try:
        obj: object = json.loads(
            text,
            object_pairs_hook=_object_without_duplicates,
            parse_constant=_reject_constant,
            parse_int=_parse_int,
            parse_float=_parse_float,
        )
    except json.JSONDecodeError as err:
        raise _Reject(f"payload is not JSON: {err.msg} at character {err.pos}") from err
    except (ValueError, RecursionError) as err:
        raise _Reject(f"payload is not JSON: {err}") from err
    if not isinstance(obj, dict):
        raise _Reject(f"payload is a JSON {type(obj).__name__}, not an object")
    return obj


def _object_without_duplicates(pairs: list[tuple[str, object]]) -> dict[str, object]:
    obj: dict[str, object] = {}
    for name, value in pairs:
        if name in obj:
            raise _Reject(f"duplicate member name {_short(name)}")
        obj[name] = value
    return obj


def _reject_constant(name: str) -> object:
    raise _Reject(f"{name} is not a JSON value")


def _parse_float(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):
        raise _Reject(f"number {_short(text)} is out of range")
    return number


def _parse_int(text: str) -> int | float:
    # JSON numbers are doubles (RFC 8785 section 3.2.2.3): an integer beyond
    # 2**53 is kept as the double it denotes, which canonicalises the way
    # ECMAScript prints it (1e21 -> "1e+21").
    number = _parse_float(text)
    if abs(number) < 2**54:
        exact = int(text)
        if abs(exact) <= _MAX_SAFE_INT:
            return exact
    return number


def _check(data: bytes, obj: dict[str, object], keys: Mapping[str, PublicKey] | None) -> Batch:
    if "v" not in obj:
        raise _Reject("missing member v (format version)")
    if not (_is_int(obj["v"]) and obj["v"] == FORMAT_VERSION):
        raise _Reject(f"unsupported format version v={_short(obj['v'])}, expected 1")
    if _canonical(obj) != data:
        raise _Reject(
            f"payload is not RFC 8785 canonical JSON (differs at byte {_diff(obj, data)})"
        )

    missing = [name for name in _REQUIRED if name not in obj]
    if missing:
        raise _Reject(f"missing member(s): {', '.join(missing)}")
    unknown = sorted(set(obj) - {*_REQUIRED, *_OPTIONAL})
    if unknown:
        raise _Reject(f"unexpected member(s): {', '.join(_short(n) for n in unknown)}")

    header = _check_header(obj)
    records = _check_records(obj["records"], header.thing)
    alg, kid, signature = _check_sig_member(obj["sig"])
    if keys is not None:
        key = keys.get(kid)
        if key is None:
            raise _Reject(f"unknown kid {kid}")
        unsigned = _canonical({name: value for name, value in obj.items() if name != "sig"})
        _check_signature(alg, kid, key, signature, unsigned)

    return Batch(
        thing=header.thing,
        stream=header.stream,
        seq=header.seq,
        prev=header.prev,
        time=header.time,
        dropped=header.dropped,
        clock_unsynced=header.clock_unsynced,
        records=records,
        alg=alg,
        kid=kid,
        payload=data,
        digest=_b64url(hashlib.sha256(data).digest()),
        signature_checked=keys is not None,
    )


def _canonical(obj: object) -> bytes:
    """RFC 8785 bytes of a parsed JSON value."""
    try:
        return rfc8785.dumps(obj)  # type: ignore[arg-type]  # any parsed JSON value
    except (rfc8785.CanonicalizationError, RecursionError) as err:
        raise _Reject(f"payload cannot be canonicalised (RFC 8785): {err}") from err


def _diff(obj: object, data: bytes) -> int:
    canonical = _canonical(obj)
    return next(
        (i for i, (a, b) in enumerate(zip(canonical, data, strict=False)) if a != b),
        min(len(canonical), len(data)),
    )


@dataclass(frozen=True, slots=True)
class _Header:
    thing: str
    stream: str
    seq: int
    prev: str | None
    time: float
    dropped: int
    clock_unsynced: bool


def _check_header(obj: dict[str, object]) -> _Header:
    """The members other than records and sig."""
    thing = obj["thing"]
    if not isinstance(thing, str) or not thing:
        raise _Reject("thing must be a non-empty string")
    stream = obj["stream"]
    if not isinstance(stream, str) or not stream:
        raise _Reject("stream must be a non-empty string")
    seq = obj["seq"]
    if not _is_int(seq) or seq < 1:
        raise _Reject(f"seq must be an integer >= 1, got {_short(seq)}")
    prev = obj["prev"]
    if seq == 1:
        if prev is not None:
            raise _Reject("prev must be null at seq 1")
    elif not isinstance(prev, str):
        raise _Reject(f"prev must be a string when seq > 1, got {_short(prev)}")
    else:
        decoded = _b64url_decode(prev)
        if decoded is None or len(decoded) != _SHA256_BYTES:
            raise _Reject("prev must be base64url (no padding) of a 32-byte SHA-256")
    sealed_at = obj["time"]
    if not _is_number(sealed_at):
        raise _Reject(f"time must be a number, got {_short(sealed_at)}")
    dropped = obj.get("dropped", 0)
    if not _is_int(dropped) or dropped < 0:
        raise _Reject(f"dropped must be an integer >= 0, got {_short(dropped)}")
    clock = obj.get("clock")
    if "clock" in obj and clock != "unsynced":
        raise _Reject(f'clock must be "unsynced" when present, got {_short(clock)}')
    return _Header(
        thing=thing,
        stream=stream,
        seq=seq,
        prev=prev if isinstance(prev, str) else None,
        time=float(sealed_at),
        dropped=dropped,
        clock_unsynced=clock == "unsynced",
    )


def _check_records(records: object, thing: str) -> tuple[ResolvedRecord, ...]:
    """The SenML pack: base values on the first record, then time-ordered records."""
    if not isinstance(records, list) or not records:
        raise _Reject("records must be a non-empty array (a SenML pack)")
    first = records[0]
    if not isinstance(first, dict):
        raise _Reject("records[0] must be an object")
    base_name = thing + "/"
    if first.get("bn") != base_name:
        raise _Reject(f"records[0].bn must be {base_name!r}, got {_short(first.get('bn'))}")
    bt = first.get("bt")
    if not _is_number(bt):
        raise _Reject(f"records[0].bt must be a number, got {_short(bt)}")
    base_time = float(bt)

    resolved: list[ResolvedRecord] = []
    for index, record in enumerate(records):
        current = _resolve_record(index, record, base_name, base_time)
        if resolved and current.time < resolved[-1].time:
            raise _Reject(
                f"records[{index}]: records are not time-ordered "
                f"({current.time!r} < {resolved[-1].time!r})"
            )
        resolved.append(current)
    return tuple(resolved)


def _resolve_record(index: int, record: object, base_name: str, base_time: float) -> ResolvedRecord:
    where = f"records[{index}]"
    if not isinstance(record, dict):
        raise _Reject(f"{where} must be an object")
    allowed = _RECORD_MEMBERS | _BASE_MEMBERS if index == 0 else _RECORD_MEMBERS
    unknown = sorted(set(record) - allowed)
    if unknown:
        names = ", ".join(_short(n) for n in unknown)
        hint = " (bn and bt belong to the first record only)" if index else ""
        raise _Reject(f"{where}: unexpected member(s): {names}{hint}")

    name = record.get("n")
    if not isinstance(name, str) or not _SENML_NAME.fullmatch(name):
        raise _Reject(f"{where}.n must be a SenML name, got {_short(name)}")
    sensor, _, quantity = name.rpartition("/")
    if not sensor or "" in name.split("/"):
        raise _Reject(f"{where}.n must be 'sensor/quantity', got {_short(name)}")
    if not _SENML_NAME.fullmatch(base_name + name):
        raise _Reject(f"{where}: resolved name {_short(base_name + name)} is not a SenML name")

    present = [member for member in _VALUE_MEMBERS if member in record]
    if len(present) != 1:
        raise _Reject(f"{where} must have exactly one of v, vs, vb; has {present or 'none'}")
    value = _record_value(where, present[0], record[present[0]])

    unit = record.get("u")
    if "u" in record and (not isinstance(unit, str) or not unit):
        raise _Reject(f"{where}.u must be a non-empty string (omit it when dimensionless)")

    if "t" not in record:
        raise _Reject(f"{where}: missing t")
    t = record["t"]
    if not _is_number(t):
        raise _Reject(f"{where}.t must be a number, got {_short(t)}")
    when = base_time + t
    if not math.isfinite(when):
        raise _Reject(f"{where}: bt + t is out of range")
    return ResolvedRecord(
        name=base_name + name,
        sensor=sensor,
        quantity=quantity,
        unit=unit if isinstance(unit, str) else None,
        value=value,
        time=when,
    )


def _record_value(where: str, member: str, value: object) -> Value:
    if member == "v":
        if not _is_number(value):
            raise _Reject(f"{where}.v must be a number, got {_short(value)}")
        return float(value)
    if member == "vs":
        if not isinstance(value, str):
            raise _Reject(f"{where}.vs must be a string, got {_short(value)}")
        return value
    if not isinstance(value, bool):
        raise _Reject(f"{where}.vb must be a boolean, got {_short(value)}")
    return value


def _check_sig_member(sig: object) -> tuple[str, str, bytes]:
    if not isinstance(sig, dict):
        raise _Reject("sig must be an object")
    missing = sorted(_SIG_MEMBERS - set(sig))
    if missing:
        raise _Reject(f"sig: missing member(s): {', '.join(missing)}")
    unknown = sorted(set(sig) - _SIG_MEMBERS)
    if unknown:
        raise _Reject(f"sig: unexpected member(s): {', '.join(_short(n) for n in unknown)}")
    alg, kid, value = sig["alg"], sig["kid"], sig["value"]
    if not isinstance(alg, str) or alg not in ALGORITHMS:
        raise _Reject(f"sig.alg must be one of EdDSA, ES256, RS256, got {_short(alg)}")
    if not isinstance(kid, str) or not _KID.fullmatch(kid):
        raise _Reject(f"sig.kid must be 64 lowercase hex digits (a SHA-256), got {_short(kid)}")
    signature = _b64url_decode(value) if isinstance(value, str) else None
    if not signature:
        raise _Reject("sig.value must be non-empty base64url without padding")
    if alg in ("EdDSA", "ES256") and len(signature) != _JWS_SIG_BYTES:
        raise _Reject(f"sig.value for {alg} must be 64 bytes, got {len(signature)}")
    return alg, kid, signature


def _check_signature(alg: str, kid: str, key: PublicKey, signature: bytes, message: bytes) -> None:
    try:
        if alg == "EdDSA":
            if not isinstance(key, ed25519.Ed25519PublicKey):
                raise _Reject(f"alg EdDSA does not match the {_key_kind(key)} key of kid {kid}")
            key.verify(signature, message)
        elif alg == "ES256":
            if not (isinstance(key, ec.EllipticCurvePublicKey) and _is_p256(key)):
                raise _Reject(f"alg ES256 does not match the {_key_kind(key)} key of kid {kid}")
            # JWS carries r||s (RFC 7518 section 3.4); cryptography wants DER.
            r = int.from_bytes(signature[:32], "big")
            s = int.from_bytes(signature[32:], "big")
            key.verify(encode_dss_signature(r, s), message, ec.ECDSA(hashes.SHA256()))
        else:
            if not isinstance(key, rsa.RSAPublicKey):
                raise _Reject(f"alg RS256 does not match the {_key_kind(key)} key of kid {kid}")
            size = (key.key_size + 7) // 8
            if len(signature) != size:
                raise _Reject(f"sig.value for RS256 must be {size} bytes, got {len(signature)}")
            key.verify(signature, message, padding.PKCS1v15(), hashes.SHA256())
    except InvalidSignature as err:
        raise _Reject(f"signature does not verify ({alg}, kid {kid})") from err


def _is_p256(key: ec.EllipticCurvePublicKey) -> bool:
    return isinstance(key.curve, ec.SECP256R1)


def _key_kind(key: object) -> str:
    if isinstance(key, ed25519.Ed25519PublicKey):
        return "Ed25519"
    if isinstance(key, ec.EllipticCurvePublicKey):
        return f"EC {key.curve.name}"
    if isinstance(key, rsa.RSAPublicKey):
        return f"RSA-{key.key_size}"
    return type(key).__name__.removesuffix("PublicKey").lstrip("_")


# -- a stream -----------------------------------------------------------------


@dataclass(slots=True)
class _StreamState:
    by_seq: dict[int, Batch] = field(default_factory=dict)
    first_index: dict[int, int] = field(default_factory=dict)
    batches: int = 0
    duplicates: int = 0
    conflicts: int = 0


def verify_stream(payloads: Iterable[bytes], keys: Mapping[str, PublicKey] | None) -> Report:
    """Verify every payload, deduplicate, and check seq and prev per (thing, stream).

    Payloads may arrive in any order and more than once. A stream that starts
    after seq 1 is not a problem (``starts_at``); gaps, broken prev links,
    differing copies of one seq and invalid payloads are.
    """
    states: dict[tuple[str, str], _StreamState] = {}
    problems: list[str] = []
    count = invalid = 0
    for index, payload in enumerate(payloads, start=1):
        count = index
        try:
            batch = verify_batch(payload, keys)
        except BatchInvalid as err:
            invalid += 1
            problems.append(f"payload {index}: {err}")
            continue
        state = states.setdefault((batch.thing, batch.stream), _StreamState())
        state.batches += 1
        first = state.by_seq.get(batch.seq)
        if first is None:
            state.by_seq[batch.seq] = batch
            state.first_index[batch.seq] = index
        elif first.payload == batch.payload:
            state.duplicates += 1
        else:
            state.conflicts += 1
            problems.append(
                f"{_label(batch.thing, batch.stream)} seq {batch.seq}: conflicting copies "
                f"(payload {index}, sha256 {batch.digest}, differs from payload "
                f"{state.first_index[batch.seq]}, sha256 {first.digest})"
            )

    summaries = []
    for (thing, stream), state in states.items():
        summary, stream_problems = _summarise(thing, stream, state)
        summaries.append(summary)
        problems.extend(stream_problems)
    return Report(payloads=count, invalid=invalid, streams=summaries, problems=problems)


def _summarise(thing: str, stream: str, state: _StreamState) -> tuple[StreamSummary, list[str]]:
    label = _label(thing, stream)
    seqs = sorted(state.by_seq)
    unique = [state.by_seq[seq] for seq in seqs]
    summary = StreamSummary(
        thing=thing,
        stream=stream,
        batches=state.batches,
        unique_batches=len(unique),
        duplicates=state.duplicates,
        conflicts=state.conflicts,
        records=sum(len(batch.records) for batch in unique),
        dropped=sum(batch.dropped for batch in unique),
        unsynced_batches=sum(batch.clock_unsynced for batch in unique),
        first_seq=seqs[0],
        last_seq=seqs[-1],
        starts_at=seqs[0] if seqs[0] > 1 else None,
    )
    problems: list[str] = []
    for before, after in pairwise(unique):
        if after.seq != before.seq + 1:
            low, high = before.seq + 1, after.seq - 1
            summary.missing.append((low, high))
            span = f"seq {low}" if low == high else f"seq {low}..{high} ({high - low + 1} batches)"
            problems.append(f"{label}: missing {span}")
        elif after.prev != before.digest:
            summary.broken_links.append(after.seq)
            problems.append(
                f"{label} seq {after.seq}: prev {after.prev} is not the sha256 of seq "
                f"{before.seq} ({before.digest})"
            )
    return summary, problems


def _label(thing: str, stream: str) -> str:
    return f"thing {thing} stream {stream}"


def read_payloads(source: Path) -> Iterator[bytes]:
    """Payloads from a file (one a line, blank lines skipped) or a directory.

    In a directory each regular file, in name order, holds one payload; hidden
    files are skipped. A trailing line end is not part of a payload.
    """
    source = Path(source)
    if source.is_dir():
        for entry in sorted(source.iterdir(), key=lambda path: path.name):
            if entry.name.startswith(".") or not entry.is_file():
                continue
            data = _strip_line_end(entry.read_bytes())
            if data.strip():
                yield data
        return
    with source.open("rb") as lines:
        for line in lines:
            data = _strip_line_end(line)
            if data.strip():
                yield data


def format_report(report: Report) -> str:
    """Human-readable report: one line per stream, then one per problem."""
    lines = []
    for s in report.streams:
        line = (
            f"{_label(s.thing, s.stream)}: seq {s.first_seq}..{s.last_seq}, "
            f"{s.unique_batches} batches ({s.duplicates} duplicates, {s.conflicts} conflicts), "
            f"{s.records} records, {s.dropped} dropped, {s.unsynced_batches} unsynced"
        )
        if s.starts_at is not None:
            line += f", starts at seq {s.starts_at}"
        lines.append(line)
    lines.extend(f"problem: {problem}" for problem in report.problems)
    if not lines:
        lines.append("no payloads")
    return "\n".join(lines)


# -- helpers ------------------------------------------------------------------


def _strip_line_end(data: bytes) -> bytes:
    return data.removesuffix(b"\n").removesuffix(b"\r")


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _b64url_decode(text: str) -> bytes | None:
    """Strict base64url without padding: the alphabet only, no spare bits set."""
    if not _B64URL.fullmatch(text) or len(text) % 4 == 1:
        return None
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        return None
    return raw if _b64url(raw) == text else None


def _short(value: object, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
