"""Ingest Lambda: verify one wire-format v1 batch from the AWS IoT rule and store it.

The rule (cloud/template.yaml) invokes this function asynchronously with
``{"payload": <base64 of the exact MQTT payload bytes>, "thing": topic(3),
"client_id": clientid(), "received": timestamp()}``. Every check of the batch
itself is ``gateway.verify.verify_batch`` (one verifier for the CLI, the tests and
the cloud); this module adds what only the cloud knows:

- which key may sign for a thing: the Ed25519 key registered as the thing's
  attributes ``wsn_signing_kid`` / ``wsn_signing_key``, or an AWS IoT certificate
  (kid = certificate id) attached to that thing;
- that a gateway publishes only its own data: payload thing == topic thing ==
  MQTT client id;
- the chain across invocations: ``prev`` against the stored ``hash`` of seq-1,
  and this batch's hash against the stored ``prev`` of seq+1;
- storage, idempotent on (thing, stream, seq), with gaps recorded, not refused.

A rejected batch goes to the rejects queue with its reason and the original
base64 payload, and the handler returns normally: a deterministic rejection must
not be retried. Anything else that fails (throttling, an AWS outage) raises, so
that Lambda retries the invocation and finally hands it to the on-failure
destination.
"""

from __future__ import annotations

import base64
import binascii
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Final

import lambda_support as support
from boto3.dynamodb.types import TypeDeserializer, TypeSerializer
from botocore.exceptions import ClientError
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from gateway import verify

#: Thing attributes through which a gateway registers its Ed25519 signing key.
KID_ATTRIBUTE: Final = "wsn_signing_kid"  # lowercase hex SHA-256 of the DER SPKI (64 chars)
KEY_ATTRIBUTE: Final = "wsn_signing_key"  # base64url, no padding, of the raw 32-byte key

#: Seconds a key (or the absence of one) stays cached in the container.
DEFAULT_KEY_CACHE_SECONDS: Final = 300.0
UNKNOWN_KEY_CACHE_SECONDS: Final = 60.0

#: Rejection codes (the ``code`` of a rejects-queue message).
NOT_BASE64: Final = "not_base64"
MALFORMED_EVENT: Final = "malformed_event"
NOT_JSON: Final = "not_json"
INVALID: Final = "invalid"
THING_MISMATCH: Final = "thing_mismatch"
UNKNOWN_KEY: Final = "unknown_key"
BAD_SIGNATURE: Final = "bad_signature"
BROKEN_CHAIN: Final = "broken_chain"
CONFLICT: Final = "conflict"

_NOT_JSON_PREFIXES: Final = ("payload is not JSON", "payload is not UTF-8", "payload is a JSON")
_ED25519_KEY_BYTES: Final = 32
_KID_HEX_DIGITS: Final = 64
_MAX_REJECT_EVENT_CHARS: Final = 200_000
#: DynamoDB numbers: magnitudes from 1e-130 up to (not including) 1e126.
_DYNAMODB_MIN: Final = Decimal("1e-130")
_DYNAMODB_MAX: Final = Decimal("1e126")

_serialize = TypeSerializer().serialize
_deserialize = TypeDeserializer().deserialize


@dataclass(frozen=True)
class Settings:
    """Configuration from the environment (set by cloud/template.yaml)."""

    batches_table: str
    gateways_table: str
    rejects_queue_url: str
    namespace: str
    key_cache_seconds: float

    @classmethod
    def from_env(cls) -> Settings:
        return cls(
            batches_table=support.env("BATCHES_TABLE"),
            gateways_table=support.env("GATEWAYS_TABLE"),
            rejects_queue_url=support.env("REJECTS_QUEUE_URL"),
            namespace=support.env("METRIC_NAMESPACE", support.DEFAULT_NAMESPACE),
            key_cache_seconds=support.env_number("KEY_CACHE_SECONDS", DEFAULT_KEY_CACHE_SECONDS),
        )


class Rejected(Exception):
    """The batch is refused for good: ``code`` is one of the rejection codes above."""

    def __init__(
        self, code: str, reason: str, *, stream: str | None = None, seq: int | None = None
    ) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason
        self.stream = stream
        self.seq = seq


@dataclass(frozen=True)
class Event:
    """What the rule's SELECT delivers."""

    payload_b64: str
    thing: str
    client_id: str
    received_ms: int


@dataclass
class Outcome:
    """What happened to one batch; ``result()`` is the handler's return value."""

    status: str
    thing: str
    stream: str | None = None
    seq: int | None = None
    readings: int = 0
    dropped: int = 0
    unsynced: bool = False
    gap: dict[str, int] | None = None
    closed_gap: int | None = None  # seq of the later batch whose gap this one closed
    code: str | None = None
    reason: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def result(self) -> dict[str, Any]:
        out: dict[str, Any] = {"status": self.status, "thing": self.thing}
        for name in ("stream", "seq", "code", "reason", "gap", "closed_gap"):
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        if self.status == "stored":
            out["readings"] = self.readings
        if self.dropped:
            out["dropped"] = self.dropped
        if self.unsynced:
            out["clock"] = "unsynced"
        out.update(self.extra)
        return out


# -- keys ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _Cached:
    expires: float
    key: verify.PublicKey | None
    problem: str


_key_cache: dict[tuple[str, str], _Cached] = {}


def clear_key_cache() -> None:
    """Forget every cached key (tests; a container otherwise keeps them a few minutes)."""
    _key_cache.clear()


def _error_code(err: ClientError) -> str:
    return str(err.response.get("Error", {}).get("Code", ""))


def resolve_key(thing: str, kid: str, cache_seconds: float) -> verify.PublicKey:
    """The public key ``kid`` of ``thing``, from AWS IoT, cached; raises Rejected."""
    now = time.monotonic()
    cached = _key_cache.get((thing, kid))
    if cached is None or cached.expires <= now:
        try:
            key = _lookup_key(thing, kid)
        except Rejected as rejection:
            cached = _Cached(now + UNKNOWN_KEY_CACHE_SECONDS, None, rejection.reason)
        else:
            cached = _Cached(now + cache_seconds, key, "")
        _key_cache[(thing, kid)] = cached
    if cached.key is None:
        raise Rejected(UNKNOWN_KEY, cached.problem)
    return cached.key


def _lookup_key(thing: str, kid: str) -> verify.PublicKey:
    iot = support.client("iot")
    try:
        described = iot.describe_thing(thingName=thing)
    except ClientError as err:
        if _error_code(err) == "ResourceNotFoundException":
            raise Rejected(UNKNOWN_KEY, f"thing {thing} is not registered in AWS IoT") from err
        raise
    attributes: Mapping[str, str] = described.get("attributes") or {}
    if attributes.get(KID_ATTRIBUTE) == kid:
        return _attribute_key(thing, kid, attributes.get(KEY_ATTRIBUTE))
    return _certificate_key(iot, thing, kid)


def _attribute_key(thing: str, kid: str, encoded: str | None) -> verify.PublicKey:
    """The Ed25519 key registered on the thing; its kid must be the registered kid."""
    raw = _b64url_decode(encoded or "")
    if raw is None or len(raw) != _ED25519_KEY_BYTES:
        raise Rejected(
            UNKNOWN_KEY,
            f"thing {thing}: attribute {KEY_ATTRIBUTE} must be base64url (no padding) of a "
            f"32-byte Ed25519 public key",
        )
    key = ed25519.Ed25519PublicKey.from_public_bytes(raw)
    if verify.kid_for_public_key(key) != kid:
        raise Rejected(
            UNKNOWN_KEY,
            f"thing {thing}: attribute {KEY_ATTRIBUTE} does not hash to {KID_ATTRIBUTE} {kid}",
        )
    return key


def _certificate_key(iot: Any, thing: str, kid: str) -> verify.PublicKey:
    """The key of AWS IoT certificate ``kid``, if that certificate is attached to ``thing``."""
    unknown = (
        f"kid {kid} is neither thing {thing}'s {KID_ATTRIBUTE} nor an AWS IoT certificate "
        f"attached to it"
    )
    if len(kid) != _KID_HEX_DIGITS:  # verify_batch has checked the form already
        raise Rejected(UNKNOWN_KEY, unknown)
    try:
        description = iot.describe_certificate(certificateId=kid)["certificateDescription"]
    except ClientError as err:
        if _error_code(err) in ("ResourceNotFoundException", "InvalidRequestException"):
            raise Rejected(UNKNOWN_KEY, unknown) from err
        raise
    if description.get("status") == "REVOKED":
        raise Rejected(UNKNOWN_KEY, f"certificate {kid} of thing {thing} is revoked")
    principals: set[str] = set()
    for page in iot.get_paginator("list_thing_principals").paginate(thingName=thing):
        principals.update(page.get("principals", []))
    if description.get("certificateArn") not in principals:
        raise Rejected(UNKNOWN_KEY, f"certificate {kid} is not attached to thing {thing}")
    cert = x509.load_pem_x509_certificate(str(description["certificatePem"]).encode())
    if verify.kid_for_certificate(cert) != kid:
        raise Rejected(UNKNOWN_KEY, f"certificate {kid}: its SHA-256 is not its id")
    key = cert.public_key()
    if isinstance(key, ed25519.Ed25519PublicKey | rsa.RSAPublicKey | ec.EllipticCurvePublicKey):
        return key
    raise Rejected(UNKNOWN_KEY, f"certificate {kid} has a key that cannot sign batches")


def _b64url_decode(text: str) -> bytes | None:
    if not text or "=" in text:
        return None
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        return None
    return raw if base64.urlsafe_b64encode(raw).rstrip(b"=").decode() == text else None


# -- the event ----------------------------------------------------------------------


def _event(raw: object) -> Event:
    if not isinstance(raw, dict):
        raise Rejected(MALFORMED_EVENT, f"event must be an object, got {type(raw).__name__}")
    payload, thing, client_id = raw.get("payload"), raw.get("thing"), raw.get("client_id")
    received = raw.get("received")
    if not isinstance(payload, str):
        raise Rejected(MALFORMED_EVENT, "event.payload must be a base64 string")
    if not isinstance(thing, str) or not thing:
        raise Rejected(MALFORMED_EVENT, "event.thing must be the thing name (topic(3))")
    if not isinstance(client_id, str):
        raise Rejected(MALFORMED_EVENT, "event.client_id must be a string (clientid())")
    if isinstance(received, bool) or not isinstance(received, int | float):
        received = int(time.time() * 1000)
    return Event(payload, thing, client_id, int(received))


def _decode(event: Event) -> bytes:
    try:
        return base64.b64decode(event.payload_b64, validate=True)
    except (binascii.Error, ValueError) as err:
        raise Rejected(NOT_BASE64, f"event.payload is not base64: {err}") from err


# -- verification -------------------------------------------------------------------


def check(event: Event, settings: Settings) -> verify.Batch:
    """Every check that needs no table: identity, format, key, signature."""
    if event.thing != event.client_id:
        raise Rejected(
            THING_MISMATCH,
            f"topic thing {event.thing!r} is not the MQTT client id {event.client_id!r}: "
            f"a gateway may only publish its own data",
        )
    payload = _decode(event)
    try:
        unsigned = verify.verify_batch(payload, None)  # format only: which kid, which thing
    except verify.BatchInvalid as err:
        code = NOT_JSON if err.reason.startswith(_NOT_JSON_PREFIXES) else INVALID
        raise Rejected(code, err.reason, stream=err.stream, seq=err.seq) from err
    stream, seq = unsigned.stream, unsigned.seq
    if unsigned.thing != event.thing:
        raise Rejected(
            THING_MISMATCH,
            f"payload thing {unsigned.thing!r} is not the topic thing {event.thing!r}: "
            f"a gateway may only publish its own data",
            stream=stream,
            seq=seq,
        )
    try:
        key = resolve_key(event.thing, unsigned.kid, settings.key_cache_seconds)
    except Rejected as rejection:
        raise Rejected(rejection.code, rejection.reason, stream=stream, seq=seq) from None
    try:
        return verify.verify_batch(payload, {unsigned.kid: key})
    except verify.BatchInvalid as err:  # only the signature is left to fail
        raise Rejected(BAD_SIGNATURE, err.reason, stream=stream, seq=seq) from err


# -- storage ------------------------------------------------------------------------


def _number(value: float) -> Decimal | str:
    """A DynamoDB number; a magnitude DynamoDB cannot hold is kept exactly as a string."""
    number = Decimal(repr(float(value)))
    if number and not _DYNAMODB_MIN <= abs(number) < _DYNAMODB_MAX:
        return repr(float(value))
    return number


def _reading(record: verify.ResolvedRecord) -> dict[str, Any]:
    item: dict[str, Any] = {"n": f"{record.sensor}/{record.quantity}", "t": _number(record.time)}
    if record.unit is not None:
        item["u"] = record.unit
    value = record.value
    if isinstance(value, bool):
        item["vb"] = value
    elif isinstance(value, str):
        item["vs"] = value
    else:
        item["v"] = _number(value)
    return item


def batch_item(batch: verify.Batch, received_ms: int) -> dict[str, Any]:
    """The stored form of a batch (plain Python values, numbers as Decimal)."""
    item: dict[str, Any] = {
        "pk": partition_key(batch.thing, batch.stream),
        "seq": batch.seq,
        "thing": batch.thing,
        "stream": batch.stream,
        "time": _number(batch.time),
        "hash": batch.digest,
        "kid": batch.kid,
        "alg": batch.alg,
        "received": received_ms,
        "count": len(batch.records),
        "readings": [_reading(record) for record in batch.records],
    }
    if batch.prev is not None:
        item["prev"] = batch.prev
    if batch.dropped:
        item["dropped"] = batch.dropped
    if batch.clock_unsynced:
        item["clock"] = "unsynced"
    return item


def partition_key(thing: str, stream: str) -> str:
    """The batches table's partition key: ``{thing}#{stream}``."""
    return f"{thing}#{stream}"


def _key(pk: str, seq: int) -> dict[str, Any]:
    return {"pk": {"S": pk}, "seq": {"N": str(seq)}}


def _plain(item: Mapping[str, Any]) -> dict[str, Any]:
    return {name: _deserialize(value) for name, value in item.items()}


def _neighbours(table: str, pk: str, seq: int) -> dict[int, dict[str, Any]]:
    """The stored seq-1, seq and seq+1 of the stream (chain attributes only)."""
    response = support.client("dynamodb").query(
        TableName=table,
        KeyConditionExpression="pk = :pk AND seq BETWEEN :lo AND :hi",
        ExpressionAttributeValues={
            ":pk": {"S": pk},
            ":lo": {"N": str(max(seq - 1, 0))},
            ":hi": {"N": str(seq + 1)},
        },
        ProjectionExpression="seq, #h, prev, gap_open",
        ExpressionAttributeNames={"#h": "hash"},
        ConsistentRead=True,
    )
    items = (_plain(item) for item in response.get("Items", []))
    return {int(item["seq"]): item for item in items}


def _stored_before(table: str, pk: str, seq: int) -> int:
    """The highest stored seq below ``seq`` in the stream, 0 if none."""
    response = support.client("dynamodb").query(
        TableName=table,
        KeyConditionExpression="pk = :pk AND seq < :seq",
        ExpressionAttributeValues={":pk": {"S": pk}, ":seq": {"N": str(seq)}},
        ProjectionExpression="seq",
        ScanIndexForward=False,
        Limit=1,
        ConsistentRead=True,
    )
    items = response.get("Items", [])
    return int(items[0]["seq"]["N"]) if items else 0


def _close_gap(table: str, pk: str, seq: int, now_ms: int) -> bool:
    """Mark the gap before ``seq`` closed, if it is stored with an open one."""
    try:
        support.client("dynamodb").update_item(
            TableName=table,
            Key=_key(pk, seq),
            UpdateExpression="SET gap_open = :no, gap_closed = :now",
            ConditionExpression="gap_open = :yes",
            ExpressionAttributeValues={
                ":no": {"BOOL": False},
                ":yes": {"BOOL": True},
                ":now": {"N": str(now_ms)},
            },
        )
    except ClientError as err:
        if _error_code(err) == "ConditionalCheckFailedException":
            return False
        raise
    return True


def _exists(table: str, pk: str, seq: int) -> bool:
    response = support.client("dynamodb").get_item(
        TableName=table, Key=_key(pk, seq), ProjectionExpression="seq", ConsistentRead=True
    )
    return "Item" in response


def _same_or_conflict(batch: verify.Batch, stored_hash: object) -> None:
    if stored_hash != batch.digest:
        raise Rejected(
            CONFLICT,
            f"seq {batch.seq} is already stored with payload hash {stored_hash}, this copy "
            f"has {batch.digest}: two different batches with one seq",
            stream=batch.stream,
            seq=batch.seq,
        )


def store(batch: verify.Batch, event: Event, settings: Settings, outcome: Outcome) -> None:
    """Chain checks, the idempotent put, gap bookkeeping and the gateway's last_seen."""
    table = settings.batches_table
    pk = partition_key(batch.thing, batch.stream)
    seq = batch.seq
    near = _neighbours(table, pk, seq)

    if seq in near:  # a resend of a stored batch (QoS 1, a crash, a replay)
        _same_or_conflict(batch, near[seq].get("hash"))
        outcome.status = "duplicate"
        _touch_gateway(batch, event, settings)
        return
    before, after = near.get(seq - 1), near.get(seq + 1)
    if before is not None and before.get("hash") != batch.prev:
        raise Rejected(
            BROKEN_CHAIN,
            f"prev {batch.prev} is not the hash {before.get('hash')} of the stored seq {seq - 1}",
            stream=batch.stream,
            seq=seq,
        )
    if after is not None and after.get("prev") != batch.digest:
        raise Rejected(
            BROKEN_CHAIN,
            f"the stored seq {seq + 1} has prev {after.get('prev')}, not this batch's hash "
            f"{batch.digest}",
            stream=batch.stream,
            seq=seq,
        )

    item = batch_item(batch, event.received_ms)
    if seq > 1 and before is None:
        # Stored anyway: refusing a correctly signed batch because an earlier one is
        # missing would turn one lost message into the loss of every later one.
        lowest = _stored_before(table, pk, seq) + 1
        outcome.gap = {"missing_from": lowest, "missing_to": seq - 1, "missing": seq - lowest}
        item["gap_before"] = seq - lowest
        item["gap_open"] = True

    client = support.client("dynamodb")
    try:
        client.put_item(
            TableName=table,
            Item={name: _serialize(value) for name, value in item.items()},
            ConditionExpression="attribute_not_exists(pk)",
            ReturnValuesOnConditionCheckFailure="ALL_OLD",
        )
    except ClientError as err:
        if _error_code(err) != "ConditionalCheckFailedException":
            raise
        # Stored meanwhile by a concurrent invocation with the same batch.
        old = err.response.get("Item")
        if old is None:
            response = client.get_item(TableName=table, Key=_key(pk, seq), ConsistentRead=True)
            old = response.get("Item", {})
        _same_or_conflict(batch, _plain(old).get("hash"))
        outcome.status = "duplicate"
        outcome.gap = None
        _touch_gateway(batch, event, settings)
        return

    outcome.status = "stored"
    outcome.readings = len(batch.records)
    now_ms = int(time.time() * 1000)
    # Put first, then look: of two neighbours stored at the same time, the later
    # look sees the other, so no gap stays open with both batches present.
    if _close_gap(table, pk, seq + 1, now_ms):
        outcome.closed_gap = seq + 1
    if outcome.gap is not None and _exists(table, pk, seq - 1):
        _close_gap(table, pk, seq, now_ms)  # seq-1 arrived while this one was checked
        outcome.extra["gap_closed_meanwhile"] = True
    _touch_gateway(batch, event, settings)


def _touch_gateway(batch: verify.Batch, event: Event, settings: Settings) -> None:
    """Record that the thing was heard from: ``last_seen`` only moves forward."""
    seen = Decimal(event.received_ms) / 1000
    try:
        support.client("dynamodb").update_item(
            TableName=settings.gateways_table,
            Key={"thing": {"S": batch.thing}},
            UpdateExpression="SET last_seen = :t, last_stream = :s, last_seq = :q",
            ConditionExpression="attribute_not_exists(last_seen) OR last_seen <= :t",
            ExpressionAttributeValues={
                ":t": _serialize(seen),
                ":s": {"S": batch.stream},
                ":q": {"N": str(batch.seq)},
            },
        )
    except ClientError as err:
        if _error_code(err) != "ConditionalCheckFailedException":
            raise  # a real failure: retried by Lambda like any other
        # An older message than the last one seen: last_seen stays where it is.


# -- rejection ----------------------------------------------------------------------


def _reject(rejection: Rejected, raw: object, settings: Settings, thing: str) -> Outcome:
    """Send the rejected message to the rejects queue and log it."""
    body: dict[str, Any] = {
        "code": rejection.code,
        "reason": rejection.reason,
        "thing": thing,
        "rejected_at": int(time.time() * 1000),
    }
    if rejection.stream is not None:
        body["stream"] = rejection.stream
    if rejection.seq is not None:
        body["seq"] = rejection.seq
    if isinstance(raw, dict):
        body["client_id"] = raw.get("client_id")
        body["received"] = raw.get("received")
        body["payload"] = raw.get("payload")  # the original base64, as the rule sent it
    else:
        body["event"] = json.dumps(raw, default=str)[:_MAX_REJECT_EVENT_CHARS]
    attributes = {"code": {"DataType": "String", "StringValue": rejection.code}}
    if thing:
        attributes["thing"] = {"DataType": "String", "StringValue": thing}
    support.client("sqs").send_message(
        QueueUrl=settings.rejects_queue_url,
        MessageBody=json.dumps(body, default=str),
        MessageAttributes=attributes,
    )
    support.log(
        "ERROR",
        "batch rejected",
        code=rejection.code,
        reason=rejection.reason,
        thing=thing,
        stream=rejection.stream,
        seq=rejection.seq,
    )
    return Outcome(
        status="rejected",
        thing=thing,
        stream=rejection.stream,
        seq=rejection.seq,
        code=rejection.code,
        reason=rejection.reason,
    )


# -- the handler --------------------------------------------------------------------


def ingest(raw: object, settings: Settings) -> Outcome:
    """Check and store one event; a rejection is reported, not raised."""
    thing = raw.get("thing") if isinstance(raw, dict) else None
    thing = thing if isinstance(thing, str) else ""
    try:
        event = _event(raw)
        batch = check(event, settings)
        outcome = Outcome(status="stored", thing=batch.thing, stream=batch.stream, seq=batch.seq)
        outcome.dropped = batch.dropped
        outcome.unsynced = batch.clock_unsynced
        store(batch, event, settings, outcome)
    except Rejected as rejection:
        return _reject(rejection, raw, settings, thing)
    if outcome.gap is not None:
        support.log(
            "WARNING",
            "gap before batch",
            thing=outcome.thing,
            stream=outcome.stream,
            seq=outcome.seq,
            **outcome.gap,
        )
    if outcome.closed_gap is not None:
        support.log(
            "INFO",
            "gap closed",
            thing=outcome.thing,
            stream=outcome.stream,
            seq=outcome.closed_gap,
            arrived=outcome.seq,
        )
    return outcome


def _report(outcome: Outcome, settings: Settings) -> None:
    """The invocation's EMF line: counts per thing and for the fleet, plus log fields."""
    metrics = {
        "BatchesStored": int(outcome.status == "stored"),
        "Duplicates": int(outcome.status == "duplicate"),
        "BatchesRejected": int(outcome.status == "rejected"),
        "ReadingsStored": outcome.readings,
        "Gaps": int(outcome.gap is not None),
        "GapsClosed": int(outcome.closed_gap is not None),
        "ReadingsDropped": outcome.dropped if outcome.status == "stored" else 0,
        "UnsyncedBatches": int(outcome.unsynced and outcome.status == "stored"),
    }
    properties = {
        name: value
        for name, value in outcome.result().items()
        if name not in ("thing", "readings") and value is not None
    }
    support.emit_metrics(
        settings.namespace,
        metrics,
        dimensions={"Thing": outcome.thing or "unknown"},
        properties=properties,
    )


def handler(event: object, context: object = None) -> dict[str, Any]:
    """Lambda entry point (``ingest.handler``): one rule event, one result."""
    settings = Settings.from_env()
    outcome = ingest(event, settings)
    _report(outcome, settings)
    return outcome.result()
