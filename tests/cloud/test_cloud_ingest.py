"""The ingest Lambda's handler on batches the real daemon published, against moto.

The daemon runs with counter sensors (values 1, 2, 3, ...) against the Mosquitto
fixture; the collector's payloads become the events the IoT rule would deliver.
DynamoDB, IoT and SQS are moto's server on 127.0.0.1.
"""

from __future__ import annotations

import base64
import itertools
import json
import time
from collections.abc import Callable
from typing import Any

import ingest
import pytest
import rfc8785
from cryptography.hazmat.primitives.asymmetric import ed25519
from daemon_harness import THING, counter_values

from gateway import verify
from gateway.envelope import Chain, Sealer
from gateway.readings import Reading
from gateway.signing import b64url, ed25519_signer

from .conftest import (
    DaemonRun,
    Stack,
    certificate_id,
    emf_lines,
    load_ed25519_private,
    log_lines,
    rule_event,
)

pytestmark = pytest.mark.integration

DYNAMODB_ITEM_LIMIT = 400 * 1024


def handle(payload: bytes, **event: Any) -> dict[str, Any]:
    """Run the handler as Lambda would on the rule's event for ``payload``."""
    result: dict[str, Any] = ingest.handler(rule_event(payload, **event), None)
    return result


def pk(batch: verify.Batch) -> str:
    return f"{batch.thing}#{batch.stream}"


def resign(obj: dict[str, Any], key: ed25519.Ed25519PrivateKey, kid: str) -> bytes:
    """``obj`` (without its old sig) canonicalised and signed EdDSA by ``key`` as ``kid``."""
    unsigned = {name: value for name, value in obj.items() if name != "sig"}
    signature = key.sign(rfc8785.dumps(unsigned))
    return rfc8785.dumps(
        {**unsigned, "sig": {"alg": "EdDSA", "kid": kid, "value": b64url(signature)}}
    )


def changed_value(batch: verify.Batch) -> dict[str, Any]:
    """The batch as an object with one digit of one counter value changed."""
    obj: dict[str, Any] = json.loads(batch.payload)
    record = obj["records"][-1]
    record["v"] = record["v"] + 1 if record["v"] % 10 != 9 else record["v"] - 1
    return obj


def assert_rejected(
    stack: Stack, result: dict[str, Any], payload: bytes, code: str, *, in_reason: str = ""
) -> dict[str, Any]:
    """The result says rejected with ``code``; the rejects queue holds exactly that message
    with the original base64 payload; returns the message."""
    assert result["status"] == "rejected", result
    assert result["code"] == code, result
    assert in_reason in result["reason"], result
    (message,) = stack.rejects()
    assert message["code"] == code
    assert message["reason"] == result["reason"]
    assert message["payload"] == base64.b64encode(payload).decode()
    assert message["_attributes"]["code"] == code
    return message


def store_all(run: DaemonRun, seqs: list[int] | None = None) -> list[verify.Batch]:
    """Hand the run's unique batches (those of ``seqs``, in that order) to the handler."""
    by_seq = {batch.seq: batch for batch in run.unique()}
    chosen = [by_seq[seq] for seq in (seqs if seqs is not None else sorted(by_seq))]
    for batch in chosen:
        result = handle(batch.payload)
        assert result["status"] == "stored", result
    return chosen


# --------------------------------------------------------------------------- stored once


def test_real_batches_are_stored_once_and_replays_are_duplicates(
    stack: Stack, daemon_run: Callable[[str], DaemonRun], capsys: pytest.CaptureFixture[str]
) -> None:
    run = daemon_run("ed25519")
    stack.register_ed25519(THING, run.signing_key_file)
    unique = run.unique()
    assert len(unique) >= 5

    received = int(time.time() * 1000)
    results = [handle(payload, topic=topic, received=received) for topic, payload in run.messages]
    assert {r["status"] for r in results} <= {"stored", "duplicate"}, results
    assert sum(r["status"] == "stored" for r in results) == len(unique)
    assert stack.rejects() == []

    items = stack.items()
    assert [item["seq"] for item in items] == [batch.seq for batch in unique]
    for item, batch in zip(items, unique, strict=True):
        assert item["pk"] == pk(batch) == f"{THING}#{batch.stream}"
        assert item["hash"] == batch.digest
        assert item.get("prev") == batch.prev
        assert item["kid"] == batch.kid and item["alg"] == "EdDSA"
        assert item["thing"] == THING and item["stream"] == batch.stream
        assert item["received"] == received
        assert item["count"] == len(batch.records) == len(item["readings"])
        assert "gap_before" not in item
        for stored, record in zip(item["readings"], batch.records, strict=True):
            assert stored["n"] == f"{record.sensor}/{record.quantity}"
            assert stored["t"] == pytest.approx(record.time, abs=1e-6)
            assert stored["v"] == record.value
            assert stored.get("u") == record.unit

    # Every reading once: per sensor, the counter values 1, 2, 3, ... without gap or repeat.
    stored_values: dict[str, list[int]] = {}
    for item in items:
        for reading in item["readings"]:
            stored_values.setdefault(reading["n"].split("/")[0], []).append(int(reading["v"]))
    assert stored_values == counter_values(unique)
    for values in stored_values.values():
        assert values == list(range(1, len(values) + 1))

    gateway = stack.gateway(THING)
    assert gateway is not None
    assert gateway["last_seen"] == pytest.approx(received / 1000)
    assert gateway["last_seq"] == unique[-1].seq
    assert gateway["last_stream"] == unique[-1].stream

    out = capsys.readouterr().out
    stored_lines = [line for line in emf_lines(out) if line["BatchesStored"] == 1]
    assert len(stored_lines) == len(unique)
    directive = stored_lines[0]["_aws"]["CloudWatchMetrics"][0]
    assert directive["Namespace"] == "WsnCloudTest"
    assert directive["Dimensions"] == [["Thing"], []]
    assert stored_lines[0]["Thing"] == THING
    assert sum(line["ReadingsStored"] for line in stored_lines) == sum(
        len(batch.records) for batch in unique
    )

    # A replay of everything (a resend after a crash, a redelivery) is stored once.
    replay = [handle(payload, topic=topic) for topic, payload in run.messages]
    assert {r["status"] for r in replay} == {"duplicate"}, replay
    assert stack.items() == items
    assert stack.rejects() == []
    lines = emf_lines(capsys.readouterr().out)
    assert [line["Duplicates"] for line in lines] == [1] * len(run.messages)
    assert all(line["BatchesStored"] == 0 and line["BatchesRejected"] == 0 for line in lines)


# --------------------------------------------------------------------------- gaps


def test_out_of_order_arrival_reports_gaps_and_closes_them(
    stack: Stack, daemon_run: Callable[[str], DaemonRun], capsys: pytest.CaptureFixture[str]
) -> None:
    run = daemon_run("ed25519")
    stack.register_ed25519(THING, run.signing_key_file)
    batches = {batch.seq: batch for batch in run.unique()}
    key = pk(batches[1])

    def send(seq: int) -> dict[str, Any]:
        result = handle(batches[seq].payload)
        assert result["status"] == "stored", result
        return result

    send(1)
    send(2)
    # 3 and 4 are late: 5 is stored anyway, with the gap recorded and reported.
    five = send(5)
    assert five["gap"] == {"missing_from": 3, "missing_to": 4, "missing": 2}
    item = stack.item(key, 5)
    assert item is not None
    assert item["gap_before"] == 2 and item["gap_open"] is True
    out = capsys.readouterr().out
    (warning,) = log_lines(out, "gap before batch")
    assert warning["level"] == "WARNING"
    assert (warning["missing_from"], warning["missing_to"], warning["seq"]) == (3, 4, 5)
    assert emf_lines(out)[-1]["Gaps"] == 1

    # 4 arrives: the gap before 5 is closed; 4 itself now has 3 missing before it.
    four = send(4)
    assert four["closed_gap"] == 5
    assert four["gap"] == {"missing_from": 3, "missing_to": 3, "missing": 1}
    closed = stack.item(key, 5)
    assert closed is not None
    assert closed["gap_open"] is False and closed["gap_closed"] > 0
    assert closed["gap_before"] == 2  # what was missing when 5 arrived stays on record

    # 3 arrives: the last gap closes; nothing is missing any more.
    three = send(3)
    assert three["closed_gap"] == 4
    assert "gap" not in three
    out = capsys.readouterr().out
    assert [line["seq"] for line in log_lines(out, "gap closed")] == [5, 4]
    assert [line["GapsClosed"] for line in emf_lines(out)] == [1, 1]

    send(6)
    items = stack.items(key)
    assert [item["seq"] for item in items] == [1, 2, 3, 4, 5, 6]
    assert not [item for item in items if item.get("gap_open")]
    # The chain holds across the out-of-order arrival.
    for before, after in itertools.pairwise(items):
        assert after["prev"] == before["hash"]
    assert stack.rejects() == []


def test_a_stream_first_seen_after_seq_1_is_stored_with_its_gap(
    stack: Stack, daemon_run: Callable[[str], DaemonRun]
) -> None:
    run = daemon_run("ed25519")
    stack.register_ed25519(THING, run.signing_key_file)
    (batch,) = [b for b in run.unique() if b.seq == 3]
    result = handle(batch.payload)
    assert result["status"] == "stored"
    assert result["gap"] == {"missing_from": 1, "missing_to": 2, "missing": 2}


# --------------------------------------------------------------------------- rejections


def test_a_tampered_batch_is_rejected_to_the_queue(
    stack: Stack, daemon_run: Callable[[str], DaemonRun], capsys: pytest.CaptureFixture[str]
) -> None:
    run = daemon_run("ed25519")
    stack.register_ed25519(THING, run.signing_key_file)
    batch = run.unique()[1]
    tampered = rfc8785.dumps(changed_value(batch))
    assert len(tampered) == len(batch.payload)
    assert sum(a != b for a, b in zip(tampered, batch.payload, strict=True)) == 1

    result = handle(tampered)
    message = assert_rejected(stack, result, tampered, "bad_signature", in_reason="signature")
    assert (message["thing"], message["stream"], message["seq"]) == (THING, batch.stream, batch.seq)
    assert message["client_id"] == THING
    assert stack.items() == []
    out = capsys.readouterr().out
    (line,) = emf_lines(out)
    assert line["BatchesRejected"] == 1 and line["BatchesStored"] == 0
    (logged,) = log_lines(out, "batch rejected")
    assert logged["level"] == "ERROR" and logged["code"] == "bad_signature"

    # The untouched batch is stored: the rejection did not poison the stream.
    assert handle(batch.payload)["status"] == "stored"


def test_a_forged_signature_is_rejected(
    stack: Stack, daemon_run: Callable[[str], DaemonRun]
) -> None:
    run = daemon_run("ed25519")
    kid = stack.register_ed25519(THING, run.signing_key_file)
    batch = run.unique()[0]
    forger = ed25519.Ed25519PrivateKey.generate()
    forged = resign(changed_value(batch), forger, kid)  # another key, the gateway's kid
    assert verify.verify_batch(forged, None).kid == kid
    assert_rejected(stack, handle(forged), forged, "bad_signature")
    assert stack.items() == []


def test_a_broken_chain_is_rejected_both_ways(
    stack: Stack, daemon_run: Callable[[str], DaemonRun]
) -> None:
    run = daemon_run("ed25519")
    kid = stack.register_ed25519(THING, run.signing_key_file)
    gateway_key = load_ed25519_private(run.signing_key_file)  # signs like the gateway
    batches = {batch.seq: batch for batch in run.unique()}
    store_all(run, [1, 2, 3, 5])

    # prev of 4 does not match the stored 3 (validly signed by the gateway's own key).
    obj = json.loads(batches[4].payload)
    obj["prev"] = batches[2].digest
    wrong_prev = resign(obj, gateway_key, kid)
    verify.verify_batch(wrong_prev, {kid: gateway_key.public_key()})  # signature is fine
    assert_rejected(stack, handle(wrong_prev), wrong_prev, "broken_chain", in_reason="seq 3")

    # A 4 with the right prev but other readings: the stored 5 does not follow from it.
    other_four = resign(changed_value(batches[4]), gateway_key, kid)
    assert_rejected(stack, handle(other_four), other_four, "broken_chain", in_reason="seq 5")
    assert stack.item(pk(batches[4]), 4) is None

    # The real 4 fits both ways and closes the gap.
    result = handle(batches[4].payload)
    assert result["status"] == "stored" and result["closed_gap"] == 5


def test_a_second_batch_with_a_stored_seq_is_a_conflict(
    stack: Stack, daemon_run: Callable[[str], DaemonRun]
) -> None:
    run = daemon_run("ed25519")
    kid = stack.register_ed25519(THING, run.signing_key_file)
    gateway_key = load_ed25519_private(run.signing_key_file)
    (first,) = store_all(run, [1])
    other = resign(changed_value(first), gateway_key, kid)
    assert_rejected(stack, handle(other), other, "conflict", in_reason="already stored")
    (item,) = stack.items()
    assert item["hash"] == first.digest


def test_a_gateway_may_only_publish_its_own_data(
    stack: Stack, daemon_run: Callable[[str], DaemonRun]
) -> None:
    run = daemon_run("ed25519")
    stack.register_ed25519(THING, run.signing_key_file)
    stack.register_ed25519("other-gw", run.signing_key_file)  # even with the same key
    batch = run.unique()[0]

    # Published under test-gw's topic by another client.
    result = handle(batch.payload, client_id="other-gw")
    assert_rejected(stack, result, batch.payload, "thing_mismatch", in_reason="client id")

    # other-gw publishing test-gw's batch on its own topic.
    result = handle(batch.payload, topic="dt/wsn/other-gw/telemetry")
    message = assert_rejected(
        stack, result, batch.payload, "thing_mismatch", in_reason="payload thing"
    )
    assert message["_attributes"]["thing"] == "other-gw"
    assert stack.items() == []


def test_unknown_keys_and_things_are_rejected(
    stack: Stack, daemon_run: Callable[[str], DaemonRun]
) -> None:
    run = daemon_run("ed25519")
    batch = run.unique()[0]

    # No such thing in AWS IoT.
    result = handle(batch.payload)
    assert_rejected(stack, result, batch.payload, "unknown_key", in_reason="not registered")

    # The thing exists but has registered another key: the kid is then looked up as an
    # AWS IoT certificate id, and there is no such certificate.
    ingest.clear_key_cache()
    other = ed25519.Ed25519PrivateKey.generate().public_key()
    stack.create_thing(
        THING,
        {
            ingest.KID_ATTRIBUTE: verify.kid_for_public_key(other),
            ingest.KEY_ATTRIBUTE: b64url(other.public_bytes_raw()),
        },
    )
    result = handle(batch.payload)
    assert_rejected(stack, result, batch.payload, "unknown_key", in_reason="neither")

    # The right kid, but a key attribute that is not that key.
    ingest.clear_key_cache()
    stack.iot.update_thing(
        thingName=THING,
        attributePayload={
            "attributes": {
                ingest.KID_ATTRIBUTE: batch.kid,
                ingest.KEY_ATTRIBUTE: b64url(other.public_bytes_raw()),
            },
            "merge": False,
        },
    )
    result = handle(batch.payload)
    assert_rejected(stack, result, batch.payload, "unknown_key", in_reason="does not hash")
    assert stack.items() == []


def test_payloads_that_are_not_batches_are_rejected(stack: Stack) -> None:
    stack.create_thing(THING)
    for payload, code in ((b"not json", "not_json"), (b'{"v":1}', "invalid")):
        assert_rejected(stack, handle(payload), payload, code)

    result = ingest.handler({"payload": "***", "thing": THING, "client_id": THING}, None)
    assert result["status"] == "rejected" and result["code"] == "not_base64"
    (message,) = stack.rejects()
    assert message["payload"] == "***"

    result = ingest.handler(["not", "an", "event"], None)
    assert result["code"] == "malformed_event"
    (message,) = stack.rejects()
    assert "not" in message["event"]


# --------------------------------------------------------------------------- size


def dynamodb_size(value: Any) -> int:
    """An upper bound of DynamoDB's size of an attribute value (its documented rules,
    numbers counted generously as their text plus one byte)."""
    if isinstance(value, bool) or value is None:
        return 1
    if isinstance(value, str):
        return len(value.encode())
    if isinstance(value, int | float):
        return len(repr(value)) + 1
    if isinstance(value, list):
        return 3 + sum(1 + dynamodb_size(v) for v in value)
    if isinstance(value, dict):
        return 3 + sum(1 + len(k.encode()) + dynamodb_size(v) for k, v in value.items())
    raise TypeError(type(value))


def test_a_full_size_batch_fits_in_one_item_with_drops_and_unsynced_clock_reported(
    stack: Stack, daemon_run: Callable[[str], DaemonRun], capsys: pytest.CaptureFixture[str]
) -> None:
    run = daemon_run("ed25519")
    stack.register_ed25519(THING, run.signing_key_file)
    stored = store_all(run)
    last = stored[-1]

    # The next batch of the same stream, sealed by the daemon's sealer with its key and
    # filled to the default 128,000-byte limit with numbers, strings and booleans.
    signer = ed25519_signer(load_ed25519_private(run.signing_key_file))
    sealer = Sealer(thing=THING, signer=signer, max_bytes=128_000, max_records=100_000)
    start = time.time()
    readings = []
    for i in range(6000):
        when = start + i * 0.01
        kind = i % 4
        if kind == 0:
            readings.append(Reading("bme280", "temperature", "Cel", 21.5 + i / 1000, when))
        elif kind == 1:
            readings.append(Reading("door", "open", None, bool(i % 3), when, synced=i > 10))
        elif kind == 2:
            readings.append(Reading("xbee-0013a2", "state", None, f"ok-{i}", when))
        else:
            readings.append(Reading("counter", "count", "count", float(i), when))
    sealed = sealer.seal(
        Chain(last.stream, last.seq, last.digest), readings, now=time.time(), dropped=5
    )
    assert 127_000 < len(sealed.payload) <= 128_000

    result = handle(sealed.payload)
    assert result["status"] == "stored", result
    assert result["dropped"] == 5 and result["clock"] == "unsynced"
    assert result["readings"] == sealed.count

    item = stack.item(pk(last), sealed.seq)
    assert item is not None
    size = sum(len(name) + dynamodb_size(value) for name, value in item.items())
    assert size < DYNAMODB_ITEM_LIMIT, f"{size} bytes"
    assert item["dropped"] == 5 and item["clock"] == "unsynced"
    assert item["prev"] == last.digest and item["hash"] == sealed.digest
    assert len(item["readings"]) == sealed.count
    first_four = item["readings"][:4]
    assert first_four[0] == {
        "n": "bme280/temperature",
        "t": pytest.approx(start),
        "u": "Cel",
        "v": 21.5,
    }
    assert first_four[1] == {"n": "door/open", "t": pytest.approx(start + 0.01), "vb": True}
    assert first_four[2] == {
        "n": "xbee-0013a2/state",
        "t": pytest.approx(start + 0.02),
        "vs": "ok-2",
    }
    assert first_four[3]["u"] == "count" and first_four[3]["v"] == 3

    line = emf_lines(capsys.readouterr().out)[-1]
    assert line["ReadingsDropped"] == 5 and line["UnsyncedBatches"] == 1
    assert line["dropped"] == 5 and line["clock"] == "unsynced"


# --------------------------------------------------------------------------- certificate key


def test_batches_signed_with_the_device_certificate_are_verified_through_aws_iot(
    stack: Stack, daemon_run: Callable[[str], DaemonRun]
) -> None:
    run = daemon_run("certificate")
    unique = run.unique()
    cert_id = certificate_id(run.cert)
    assert {batch.kid for batch in unique} == {cert_id}
    assert {batch.alg for batch in unique} == {"ES256"}

    stack.create_thing(THING)  # no signing-key attributes: the certificate's key signs
    assert stack.register_certificate(THING, run.cert, attach=False) == cert_id
    first = unique[0]
    result = handle(first.payload)
    assert_rejected(stack, result, first.payload, "unknown_key", in_reason="not attached")

    stack.iot.attach_thing_principal(
        thingName=THING,
        principal=stack.iot.describe_certificate(certificateId=cert_id)["certificateDescription"][
            "certificateArn"
        ],
    )
    # The refusal is cached for a minute in the container; a new container asks again.
    assert handle(first.payload)["code"] == "unknown_key"
    stack.rejects()
    ingest.clear_key_cache()

    for topic, payload in run.messages:
        assert handle(payload, topic=topic)["status"] in ("stored", "duplicate")
    items = stack.items()
    assert [item["seq"] for item in items] == [batch.seq for batch in unique]
    assert {item["alg"] for item in items} == {"ES256"}
    assert {item["kid"] for item in items} == {cert_id}
    assert stack.rejects() == []
