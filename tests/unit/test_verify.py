"""The consumer-side verifier against payloads built by hand from DESIGN.md "Wire format (v1)".

Nothing here uses the gateway's sealing code: batches are plain dicts,
canonicalised with rfc8785 and signed with keys made in the test (or the
RFC 8032 test-1 Ed25519 key), so the verifier can later be pointed at the sealer.
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import rfc8785
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.verify import (
    BatchInvalid,
    VerificationKeyError,
    format_report,
    kid_for_certificate,
    kid_for_public_key,
    load_verification_keys,
    read_payloads,
    verify_batch,
    verify_stream,
)

# RFC 8032 section 7.1, TEST 1.
RFC8032_SECRET = bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
RFC8032_PUBLIC = bytes.fromhex("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")
RFC8032_EMPTY_SIG = bytes.fromhex(
    "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b"
)
# DER SubjectPublicKeyInfo of an Ed25519 key = this prefix || the 32-byte key (RFC 8410).
ED25519_SPKI_PREFIX = bytes.fromhex("302a300506032b6570032100")
RFC8032_KID = "06e3fd8fda29bb60ab59557de61edb0aecdb231134be30e75b455f8e1b792fa9"

ED_KEY = ed25519.Ed25519PrivateKey.from_private_bytes(RFC8032_SECRET)
EC_KEY = ec.generate_private_key(ec.SECP256R1())
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
OTHER_ED_KEY = ed25519.Ed25519PrivateKey.generate()

T0 = 1_700_000_000


def b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def spki_kid(key: Any) -> str:
    der = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(der).hexdigest()


@dataclass(frozen=True)
class Signer:
    alg: str
    key: Any  # a private key
    kid: str

    def sign(self, message: bytes) -> bytes:
        if self.alg == "EdDSA":
            return self.key.sign(message)  # type: ignore[no-any-return]
        if self.alg == "ES256":
            r, s = decode_dss_signature(self.key.sign(message, ec.ECDSA(hashes.SHA256())))
            return r.to_bytes(32, "big") + s.to_bytes(32, "big")
        return self.key.sign(message, padding.PKCS1v15(), hashes.SHA256())  # type: ignore[no-any-return]


ED = Signer("EdDSA", ED_KEY, RFC8032_KID)
ES = Signer("ES256", EC_KEY, spki_kid(EC_KEY.public_key()))
RS = Signer("RS256", RSA_KEY, spki_kid(RSA_KEY.public_key()))
KEYS: dict[str, Any] = {s.kid: s.key.public_key() for s in (ED, ES, RS)}


def batch(
    seq: int = 1,
    prev: str | None = None,
    *,
    stream: str = "s-1",
    thing: str = "gw-1",
    records: list[dict[str, Any]] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """An unsigned batch dict, straight from the table in DESIGN.md."""
    if records is None:
        records = [
            {
                "bn": f"{thing}/",
                "bt": T0 + seq,
                "n": "bme280/temperature",
                "u": "Cel",
                "v": 21.5,
                "t": 0,
            },
            {"n": "bme280/humidity", "u": "%RH", "v": 40.25, "t": 0.5},
        ]
    obj: dict[str, Any] = {
        "v": 1,
        "thing": thing,
        "stream": stream,
        "seq": seq,
        "prev": prev,
        "time": T0 + seq + 0.75,
        "records": records,
    }
    obj.update(extra)
    return obj


def seal(obj: dict[str, Any], signer: Signer = ED, *, kid: str | None = None) -> bytes:
    """Canonical bytes of obj with a sig over the canonical bytes of obj without sig."""
    unsigned = {k: v for k, v in obj.items() if k != "sig"}
    signature = signer.sign(rfc8785.dumps(unsigned))
    sig = {"alg": signer.alg, "kid": kid or signer.kid, "value": b64url(signature)}
    return rfc8785.dumps({**unsigned, "sig": sig})


def unseal(payload: bytes) -> dict[str, Any]:
    return json.loads(payload)  # type: ignore[no-any-return]


def chain(n: int, *, start: int = 1, stream: str = "s-1", signer: Signer = ED) -> list[bytes]:
    """n consecutive, correctly linked payloads from seq ``start``.

    When start > 1 the first prev is the hash of an unseen predecessor.
    """
    out: list[bytes] = []
    prev = None if start == 1 else b64url(hashlib.sha256(b"unseen").digest())
    for seq in range(start, start + n):
        payload = seal(batch(seq, prev, stream=stream), signer)
        out.append(payload)
        prev = b64url(hashlib.sha256(payload).digest())
    return out


# -- pinned vectors -----------------------------------------------------------


def test_rfc8032_test1_key_pins_the_ed25519_path() -> None:
    public = ED_KEY.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    assert public == RFC8032_PUBLIC
    assert ED_KEY.sign(b"") == RFC8032_EMPTY_SIG


def test_kid_of_ed25519_key_is_sha256_of_der_spki() -> None:
    expected = hashlib.sha256(ED25519_SPKI_PREFIX + RFC8032_PUBLIC).hexdigest()
    public = ed25519.Ed25519PublicKey.from_public_bytes(RFC8032_PUBLIC)
    assert kid_for_public_key(public) == expected == RFC8032_KID


# A small batch written out by hand. Members sorted (clock < dropped < ... < v,
# bn < bt < n < t < u < v), numbers in ECMAScript form: 1700000000.0 -> 1700000000,
# 21.0 -> 21, 1e30 -> 1e+30, -0.0 -> 0, 1e-7 -> 1e-7.
HAND_UNSIGNED = (
    b'{"clock":"unsynced","dropped":3,"prev":"47DEQpj8HBSa-_TImW-5JCeuQeRkm5NMpJWZG3hSuFU",'
    b'"records":[{"bn":"gw-1/","bt":1700000000,"n":"bme280/temperature","t":0,"u":"Cel","v":21},'
    b'{"n":"bme280/pressure","t":0,"u":"Pa","v":1e+30},{"n":"door/open","t":1.25,"vb":true},'
    b'{"n":"wsn:node7/status","t":2,"vs":"ok"},{"n":"bme280/humidity","t":2.5,"u":"%RH","v":1e-7}],'
    b'"seq":2,"stream":"7f3a","thing":"gw-1","time":1700000060.5,"v":1}'
)
HAND_SIG = "gY_7n7KmySdBhRdRmW-t74dIKHoxepk5s-3Ns0_39KcsFjWvrNKcEa2LqezaCAWd3o9xRIf9LfKZauED_sMWBA"
HAND_SIGNED = (
    b'{"clock":"unsynced","dropped":3,"prev":"47DEQpj8HBSa-_TImW-5JCeuQeRkm5NMpJWZG3hSuFU",'
    b'"records":[{"bn":"gw-1/","bt":1700000000,"n":"bme280/temperature","t":0,"u":"Cel","v":21},'
    b'{"n":"bme280/pressure","t":0,"u":"Pa","v":1e+30},{"n":"door/open","t":1.25,"vb":true},'
    b'{"n":"wsn:node7/status","t":2,"vs":"ok"},{"n":"bme280/humidity","t":2.5,"u":"%RH","v":1e-7}],'
    b'"seq":2,"sig":{"alg":"EdDSA",'
    b'"kid":"06e3fd8fda29bb60ab59557de61edb0aecdb231134be30e75b455f8e1b792fa9",'
    b'"value":"' + HAND_SIG.encode() + b'"},'
    b'"stream":"7f3a","thing":"gw-1","time":1700000060.5,"v":1}'
)


def hand_batch() -> dict[str, Any]:
    return {
        "v": 1,
        "thing": "gw-1",
        "stream": "7f3a",
        "seq": 2,
        "prev": b64url(hashlib.sha256(b"").digest()),
        "time": 1700000060.5,
        "dropped": 3,
        "clock": "unsynced",
        "records": [
            {
                "bn": "gw-1/",
                "bt": 1700000000.0,
                "n": "bme280/temperature",
                "u": "Cel",
                "v": 21.0,
                "t": 0.0,
            },
            {"n": "bme280/pressure", "u": "Pa", "v": 1e30, "t": -0.0},
            {"n": "door/open", "vb": True, "t": 1.25},
            {"n": "wsn:node7/status", "vs": "ok", "t": 2},
            {"n": "bme280/humidity", "u": "%RH", "v": 1e-7, "t": 2.5},
        ],
    }


def test_hand_written_canonical_payload() -> None:
    assert rfc8785.dumps(hand_batch()) == HAND_UNSIGNED
    assert b64url(ED_KEY.sign(HAND_UNSIGNED)) == HAND_SIG
    assert seal(hand_batch(), ED) == HAND_SIGNED

    public = ed25519.Ed25519PublicKey.from_public_bytes(RFC8032_PUBLIC)
    got = verify_batch(HAND_SIGNED, {RFC8032_KID: public})
    assert got.signature_checked
    assert (got.thing, got.stream, got.seq, got.time) == ("gw-1", "7f3a", 2, 1700000060.5)
    assert got.prev == "47DEQpj8HBSa-_TImW-5JCeuQeRkm5NMpJWZG3hSuFU"
    assert got.dropped == 3
    assert got.clock_unsynced
    assert (got.alg, got.kid) == ("EdDSA", RFC8032_KID)
    assert got.payload == HAND_SIGNED
    assert got.digest == b64url(hashlib.sha256(HAND_SIGNED).digest())
    assert [(r.name, r.unit, r.value, r.time) for r in got.records] == [
        ("gw-1/bme280/temperature", "Cel", 21.0, 1700000000.0),
        ("gw-1/bme280/pressure", "Pa", 1e30, 1700000000.0),
        ("gw-1/door/open", None, True, 1700000001.25),
        ("gw-1/wsn:node7/status", None, "ok", 1700000002.0),
        ("gw-1/bme280/humidity", "%RH", 1e-7, 1700000002.5),
    ]
    assert (got.records[3].sensor, got.records[3].quantity) == ("wsn:node7", "status")


# -- signatures ---------------------------------------------------------------


@pytest.mark.parametrize("signer", [ED, ES, RS], ids=lambda s: s.alg)
def test_valid_batch_for_each_algorithm(signer: Signer) -> None:
    payload = seal(batch(), signer)
    got = verify_batch(payload, KEYS)
    assert got.signature_checked
    assert got.alg == signer.alg
    assert got.kid == signer.kid
    assert len(got.records) == 2


def test_es256_signature_is_r_s_not_der() -> None:
    payload = seal(batch(), ES)
    assert len(base64.urlsafe_b64decode(unseal(payload)["sig"]["value"] + "==")) == 64

    obj = batch()
    der = EC_KEY.sign(rfc8785.dumps(obj), ec.ECDSA(hashes.SHA256()))
    obj["sig"] = {"alg": "ES256", "kid": ES.kid, "value": b64url(der)}
    with pytest.raises(BatchInvalid, match="64 bytes"):
        verify_batch(rfc8785.dumps(obj), KEYS)


def test_without_keys_the_signature_is_not_checked() -> None:
    obj = batch()
    obj["sig"] = {"alg": "EdDSA", "kid": ED.kid, "value": b64url(bytes(64))}
    got = verify_batch(rfc8785.dumps(obj), None)
    assert not got.signature_checked
    with pytest.raises(BatchInvalid, match="signature does not verify"):
        verify_batch(rfc8785.dumps(obj), KEYS)


@pytest.mark.parametrize("signer", [ED, ES, RS], ids=lambda s: s.alg)
def test_tampered_record_value_fails_the_signature(signer: Signer) -> None:
    obj = unseal(seal(batch(seq=4, prev=b64url(bytes(32))), signer))
    obj["records"][1]["v"] = 40.5
    with pytest.raises(BatchInvalid, match="signature does not verify") as err:
        verify_batch(rfc8785.dumps(obj), KEYS)
    assert err.value.stream == "s-1"
    assert err.value.seq == 4
    assert str(err.value).startswith("stream s-1 seq 4: ")


def test_forged_signature_with_another_key_under_the_same_kid() -> None:
    forger = Signer("EdDSA", OTHER_ED_KEY, ED.kid)
    with pytest.raises(BatchInvalid, match="signature does not verify"):
        verify_batch(seal(batch(), forger), KEYS)


def test_unknown_kid() -> None:
    payload = seal(batch(), ED, kid=spki_kid(OTHER_ED_KEY.public_key()))
    with pytest.raises(BatchInvalid, match="unknown kid"):
        verify_batch(payload, KEYS)
    with pytest.raises(BatchInvalid, match="unknown kid"):
        verify_batch(seal(batch(), ED), {})


def test_alg_must_match_the_key_type() -> None:
    obj = batch()
    unsigned = rfc8785.dumps(obj)
    obj["sig"] = {"alg": "ES256", "kid": ED.kid, "value": b64url(ED_KEY.sign(unsigned))}
    with pytest.raises(BatchInvalid, match="does not match the Ed25519 key"):
        verify_batch(rfc8785.dumps(obj), KEYS)


# -- canonical form and JSON ----------------------------------------------------

NON_CANONICAL: dict[str, Callable[[dict[str, Any]], bytes]] = {
    "whitespace": lambda o: json.dumps(o, sort_keys=True).encode(),
    "unsorted keys": lambda o: json.dumps(
        dict(reversed(o.items())), separators=(",", ":"), ensure_ascii=False
    ).encode(),
    "sort_keys floats": lambda o: json.dumps(
        o | {"time": 1700000000.0}, sort_keys=True, separators=(",", ":")
    ).encode(),
    "trailing newline": lambda o: rfc8785.dumps(o) + b"\n",
    "escaped letter": lambda o: rfc8785.dumps(o).replace(b'"gw-1"', b'"\\u0067w-1"'),
    "exponent form": lambda o: rfc8785.dumps(o).replace(b'"seq":1', b'"seq":1e0'),
    "negative zero": lambda o: rfc8785.dumps(o).replace(b'"t":0', b'"t":-0', 1),
    "utf-8 bom": lambda o: b"\xef\xbb\xbf" + rfc8785.dumps(o),
}


@pytest.mark.parametrize("render", NON_CANONICAL.values(), ids=NON_CANONICAL.keys())
def test_non_canonical_bytes_are_rejected(render: Callable[[dict[str, Any]], bytes]) -> None:
    obj = unseal(seal(batch(), ED))
    payload = render(obj)
    assert payload != rfc8785.dumps(obj)
    with pytest.raises(BatchInvalid, match=r"canonical|not JSON"):
        verify_batch(payload, KEYS)


@pytest.mark.parametrize("literal", [b"NaN", b"Infinity", b"-Infinity", b"1e400"])
def test_non_finite_numbers_are_rejected(literal: bytes) -> None:
    payload = seal(batch(), ED).replace(b'"v":21.5', b'"v":' + literal)
    with pytest.raises(BatchInvalid):
        verify_batch(payload, None)


def test_duplicate_member_names_are_rejected() -> None:
    payload = seal(batch(), ED).replace(b'"thing":"gw-1"', b'"thing":"gw-1","thing":"gw-1"')
    with pytest.raises(BatchInvalid, match="duplicate member name 'thing'"):
        verify_batch(payload, None)


@pytest.mark.parametrize(
    "payload",
    [b"", b"[]", b"1", b"null", b'"x"', b"\xff\xfe", b"{", b"[" * 100_000, b'{"v":1'],
)
def test_not_a_json_object(payload: bytes) -> None:
    with pytest.raises(BatchInvalid):
        verify_batch(payload, None)


def test_unsafe_integer_is_rejected_not_crashed() -> None:
    payload = seal(batch(), ED).replace(b'"seq":1', b'"seq":9007199254740993')
    with pytest.raises(BatchInvalid):
        verify_batch(payload, None)


def test_large_numbers_keep_ecmascript_form() -> None:
    obj = batch(time=1e21)  # canonical "1e+21"; 1e20 prints as 100000000000000000000
    obj["records"][1]["v"] = 1e20
    payload = seal(obj)
    assert b'"time":1e+21' in payload
    assert b'"v":100000000000000000000' in payload
    got = verify_batch(payload, KEYS)
    assert got.time == 1e21
    assert got.records[1].value == 1e20


# -- members and SenML --------------------------------------------------------


@pytest.mark.parametrize(
    "member", ["v", "thing", "stream", "seq", "prev", "time", "records", "sig"]
)
def test_missing_member(member: str) -> None:
    obj = unseal(seal(batch(), ED))
    del obj[member]
    with pytest.raises(BatchInvalid, match="missing member"):
        verify_batch(rfc8785.dumps(obj), KEYS)


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    """A mutation that sets (or, with value DELETE, removes) a dotted path."""

    def mutate(obj: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        target: Any = obj
        for part in parents:
            target = target[int(part)] if part.isdigit() else target[part]
        index: Any = int(last) if last.isdigit() else last
        if value is DELETE:
            del target[index]
        else:
            target[index] = value

    return mutate


DELETE = object()

# (mutation of a correctly signed batch at seq 2, words expected in the error)
INVALID: dict[str, tuple[Callable[[dict[str, Any]], None], str]] = {
    "v 2": (_set("v", 2), "unsupported format version"),
    "v true": (_set("v", True), "unsupported format version"),
    "thing empty": (_set("thing", ""), "thing"),
    "stream number": (_set("stream", 7), "stream"),
    "seq zero": (_set("seq", 0), "seq must be an integer"),
    "seq float": (_set("seq", 2.5), "seq must be an integer"),
    "seq string": (_set("seq", "2"), "seq must be an integer"),
    "prev null at seq 2": (_set("prev", None), "prev must be a string"),
    "prev short": (_set("prev", b64url(bytes(31))), "32-byte"),
    "prev padded": (_set("prev", b64url(bytes(32)) + "="), "32-byte"),
    "prev base64 alphabet": (_set("prev", b64url(b"\xfb" * 32).replace("-", "+")), "32-byte"),
    "time string": (_set("time", "now"), "time must be a number"),
    "dropped negative": (_set("dropped", -1), "dropped"),
    "dropped float": (_set("dropped", 1.5), "dropped"),
    "clock synced": (_set("clock", "synced"), "clock"),
    "extra member": (_set("extra", 1), "unexpected member"),
    "records empty": (_set("records", []), "non-empty array"),
    "records object": (_set("records", {}), "non-empty array"),
    "record not object": (_set("records.1", 5), r"records\[1\] must be an object"),
    "bn wrong": (_set("records.0.bn", "gw-2/"), "bn"),
    "bn missing": (_set("records.0.bn", DELETE), "bn"),
    "bt missing": (_set("records.0.bt", DELETE), "bt"),
    "bn on later record": (_set("records.1.bn", "gw-1/"), "first record only"),
    "name bad chars": (_set("records.1.n", "bme280/hum idity"), "SenML name"),
    "name leading dash": (_set("records.1.n", "-bme280/humidity"), "SenML name"),
    "name no quantity": (_set("records.1.n", "humidity"), "sensor/quantity"),
    "name empty segment": (_set("records.1.n", "bme280//humidity"), "sensor/quantity"),
    "two values": (_set("records.1.vs", "x"), "exactly one of v, vs, vb"),
    "no value": (_set("records.1.v", DELETE), "exactly one of v, vs, vb"),
    "v string": (_set("records.1.v", "40"), "v must be a number"),
    "v bool": (_set("records.1.v", True), "v must be a number"),
    "vb string": (_set("records.1", {"n": "door/open", "vb": "true", "t": 1}), "vb"),
    "unit empty": (_set("records.1.u", ""), "u must be"),
    "t missing": (_set("records.1.t", DELETE), "missing t"),
    "t string": (_set("records.1.t", "0.5"), "t must be a number"),
    "senml extension": (_set("records.1.ut", 60), "unexpected member"),
    "not time-ordered": (_set("records.1.t", -0.5), "not time-ordered"),
    "sig extra": (_set("sig.x5c", "..."), "sig: unexpected"),
    "sig alg": (_set("sig.alg", "HS256"), "sig.alg"),
    "kid uppercase": (_set("sig.kid", RFC8032_KID.upper()), "sig.kid"),
    "sig value padded": (_set("sig.value", b64url(bytes(64)) + "=="), "sig.value"),
    "sig value short": (_set("sig.value", b64url(bytes(63))), "64 bytes"),
}


@pytest.mark.parametrize("mutate, expected", INVALID.values(), ids=INVALID.keys())
def test_invalid_batch(mutate: Callable[[dict[str, Any]], None], expected: str) -> None:
    obj = batch(seq=2, prev=b64url(bytes(32)))
    obj["sig"] = {"alg": "EdDSA", "kid": RFC8032_KID, "value": ""}
    mutate(obj)
    # Sign after the change, so that only the change itself can be at fault.
    if isinstance(obj.get("sig"), dict) and obj["sig"].get("value") == "":
        unsigned = {k: v for k, v in obj.items() if k != "sig"}
        obj["sig"]["value"] = b64url(ED_KEY.sign(rfc8785.dumps(unsigned)))
    payload = rfc8785.dumps(obj)
    with pytest.raises(BatchInvalid, match=expected):
        verify_batch(payload, KEYS)


def test_prev_must_be_null_at_seq_1() -> None:
    with pytest.raises(BatchInvalid, match="prev must be null at seq 1"):
        verify_batch(seal(batch(seq=1, prev=b64url(bytes(32)))), KEYS)


def test_records_equal_times_are_in_order() -> None:
    obj = batch()
    obj["records"][1]["t"] = 0
    assert len(verify_batch(seal(obj), KEYS).records) == 2


def test_optional_members_default() -> None:
    got = verify_batch(seal(batch()), KEYS)
    assert got.dropped == 0
    assert not got.clock_unsynced
    assert got.prev is None


# -- streams ------------------------------------------------------------------


def test_a_clean_stream() -> None:
    payloads = chain(5)
    report = verify_stream(payloads, KEYS)
    assert report.ok, report.problems
    assert report.payloads == 5
    assert report.invalid == 0
    (summary,) = report.streams
    assert (summary.thing, summary.stream) == ("gw-1", "s-1")
    assert (summary.first_seq, summary.last_seq, summary.starts_at) == (1, 5, None)
    assert (summary.batches, summary.unique_batches, summary.duplicates) == (5, 5, 0)
    assert summary.records == 10


def test_counts_dropped_and_unsynced() -> None:
    first = seal(batch(1, dropped=4, clock="unsynced"))
    second = seal(batch(2, b64url(hashlib.sha256(first).digest()), dropped=2))
    (summary,) = verify_stream([first, second, second], KEYS).streams
    assert (summary.dropped, summary.unsynced_batches, summary.duplicates) == (6, 1, 1)


def test_wrong_prev_breaks_the_chain() -> None:
    payloads = chain(2)
    payloads.append(seal(batch(3, b64url(hashlib.sha256(b"other").digest()))))
    report = verify_stream(payloads, KEYS)
    assert not report.ok
    assert report.streams[0].broken_links == [3]
    assert any("seq 3: prev" in p and "sha256 of seq 2" in p for p in report.problems)


def test_seq_gap_is_reported_with_the_missing_range() -> None:
    payloads = chain(8)
    report = verify_stream(payloads[:2] + payloads[5:], KEYS)
    assert not report.ok
    assert report.streams[0].missing == [(3, 5)]
    assert report.problems == ["thing gw-1 stream s-1: missing seq 3..5 (3 batches)"]

    report = verify_stream(payloads[:3] + payloads[4:], KEYS)
    assert report.problems == ["thing gw-1 stream s-1: missing seq 4"]


def test_identical_duplicate_is_fine() -> None:
    payloads = chain(3)
    report = verify_stream([*payloads, payloads[1], payloads[1]], KEYS)
    assert report.ok, report.problems
    summary = report.streams[0]
    assert (summary.batches, summary.unique_batches, summary.duplicates) == (5, 3, 2)


def test_differing_duplicate_is_a_conflict() -> None:
    payloads = chain(3)
    prev = b64url(hashlib.sha256(payloads[0]).digest())
    other = batch(2, prev)
    other["records"][1]["v"] = 99.0
    report = verify_stream([*payloads, seal(other)], KEYS)
    assert not report.ok
    assert report.streams[0].conflicts == 1
    assert len(report.problems) == 1
    assert "seq 2: conflicting copies" in report.problems[0]
    assert "payload 4" in report.problems[0]


def test_out_of_order_arrival_is_fine() -> None:
    payloads = chain(6)
    shuffled = [payloads[i] for i in (3, 0, 5, 2, 1, 4)]
    report = verify_stream(shuffled, KEYS)
    assert report.ok, report.problems
    assert (report.streams[0].first_seq, report.streams[0].last_seq) == (1, 6)


def test_late_join_is_reported_as_starts_at_not_as_a_problem() -> None:
    report = verify_stream(chain(3, start=40), KEYS)
    assert report.ok, report.problems
    assert report.streams[0].starts_at == 40
    assert "starts at seq 40" in format_report(report)


def test_streams_and_things_are_kept_apart() -> None:
    a = chain(2, stream="a")
    b = chain(3, stream="b")
    report = verify_stream([a[0], b[0], b[1], a[1], b[2]], KEYS)
    assert report.ok, report.problems
    assert [(s.stream, s.unique_batches) for s in report.streams] == [("a", 2), ("b", 3)]


def test_invalid_payload_in_a_stream_is_a_problem() -> None:
    payloads = chain(3)
    forged = seal(batch(2, unseal(payloads[1])["prev"]), Signer("EdDSA", OTHER_ED_KEY, ED.kid))
    report = verify_stream([payloads[0], forged, payloads[2]], KEYS)
    assert report.invalid == 1
    assert report.problems[0].startswith("payload 2: stream s-1 seq 2: signature does not verify")
    assert "missing seq 2" in report.problems[1]


def test_format_report_has_one_line_per_stream_and_problem() -> None:
    a = chain(3, stream="a")
    report = verify_stream([a[0], a[2], *chain(1, stream="b"), b"junk"], KEYS)
    lines = format_report(report).splitlines()
    assert len(lines) == len(report.streams) + len(report.problems) == 4
    assert lines[0].startswith("thing gw-1 stream a: seq 1..3, 2 batches")
    assert lines[2] == "problem: payload 4: payload is not JSON: Expecting value at character 0"
    assert lines[3] == "problem: thing gw-1 stream a: missing seq 2"
    assert format_report(verify_stream([], KEYS)) == "no payloads"


# -- keys ---------------------------------------------------------------------


def self_signed(key: Any) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "gw-1")])
    now = datetime.datetime(2025, 1, 1, tzinfo=datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=365))
        .sign(key, hashes.SHA256())
    )


def test_certificate_kid_is_sha256_of_the_der_certificate(tmp_path: Path) -> None:
    cert = self_signed(EC_KEY)
    cert_kid = hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()
    assert kid_for_certificate(cert) == cert_kid

    path = tmp_path / "device.pem.crt"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    keys = load_verification_keys([path])
    assert set(keys) == {cert_kid, ES.kid}

    got = verify_batch(seal(batch(), ES, kid=cert_kid), keys)
    assert got.signature_checked
    assert got.kid == cert_kid
    # Lenient: a batch that names the certificate's key by its SPKI hash also verifies.
    assert verify_batch(seal(batch(), ES), keys).signature_checked


def test_rsa_certificate(tmp_path: Path) -> None:
    cert = self_signed(RSA_KEY)
    path = tmp_path / "rsa.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    keys = load_verification_keys([path])
    assert verify_batch(seal(batch(), RS, kid=kid_for_certificate(cert)), keys).signature_checked


def _pem_public(key: Any) -> bytes:
    return key.public_key().public_bytes(  # type: ignore[no-any-return]
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _pem_private(key: Any, fmt: serialization.PrivateFormat) -> bytes:
    return key.private_bytes(  # type: ignore[no-any-return]
        serialization.Encoding.PEM, fmt, serialization.NoEncryption()
    )


def test_load_public_and_private_keys(tmp_path: Path) -> None:
    files = {
        "ed.pub.pem": _pem_public(ED_KEY),
        "ec.key": _pem_private(EC_KEY, serialization.PrivateFormat.TraditionalOpenSSL),
        "rsa.key": _pem_private(RSA_KEY, serialization.PrivateFormat.PKCS8),
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    keys = load_verification_keys(sorted(tmp_path.iterdir()))
    assert set(keys) == {ED.kid, ES.kid, RS.kid}
    for signer in (ED, ES, RS):
        assert verify_batch(seal(batch(), signer), keys).signature_checked


@pytest.mark.parametrize(
    "content, words",
    [
        (b"not a key\n", "no PEM block"),
        (b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", "cannot be loaded"),
        (_pem_public(ed448.Ed448PrivateKey.generate()), "unsupported key type"),
        (_pem_public(ec.generate_private_key(ec.SECP384R1())), "unsupported key type"),
        (
            ED_KEY.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.BestAvailableEncryption(b"secret"),
            ),
            "encrypted",
        ),
    ],
    ids=["text", "broken cert", "ed448", "p384", "encrypted"],
)
def test_file_without_usable_key_is_named(tmp_path: Path, content: bytes, words: str) -> None:
    path = tmp_path / "bad.pem"
    path.write_bytes(content)
    with pytest.raises(VerificationKeyError, match=words) as err:
        load_verification_keys([path])
    assert str(path) in str(err.value)
    assert isinstance(err.value, ValueError)


def test_missing_key_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / "absent.pem"
    with pytest.raises(VerificationKeyError, match=r"absent\.pem"):
        load_verification_keys([path])


# -- reading payloads ---------------------------------------------------------


def test_read_payloads_from_a_file(tmp_path: Path) -> None:
    payloads = chain(3)
    path = tmp_path / "batches.jsonl"
    path.write_bytes(payloads[0] + b"\n\n" + payloads[1] + b"\r\n  \n" + payloads[2])
    assert list(read_payloads(path)) == payloads
    assert verify_stream(read_payloads(path), KEYS).ok


def test_read_payloads_from_a_directory(tmp_path: Path) -> None:
    payloads = chain(3)
    for name, payload in zip(["b", "c", "a"], payloads, strict=True):
        (tmp_path / f"{name}.json").write_bytes(payload + (b"\n" if name == "c" else b""))
    (tmp_path / ".hidden").write_bytes(b"junk")
    (tmp_path / "sub").mkdir()
    assert list(read_payloads(tmp_path)) == [payloads[2], payloads[0], payloads[1]]
    assert verify_stream(read_payloads(tmp_path), KEYS).ok


# -- fuzzing --------------------------------------------------------------------

FUZZ = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
SEED = seal(batch(3, b64url(bytes(32)), dropped=1, clock="unsynced"))


def _verify_or_reject(payload: bytes) -> None:
    for keys in (None, KEYS):
        with contextlib.suppress(BatchInvalid):
            verify_batch(payload, keys)


@FUZZ
@given(st.binary(max_size=400))
def test_fuzz_arbitrary_bytes(payload: bytes) -> None:
    _verify_or_reject(payload)


@FUZZ
@given(st.data())
def test_fuzz_byte_mutations(data: st.DataObject) -> None:
    payload = bytearray(SEED)
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, len(payload) - 1))
        op = data.draw(st.sampled_from(["replace", "insert", "delete"]))
        chunk = data.draw(
            st.binary(min_size=1, max_size=3)
            | st.sampled_from(list(b'{}[]",:0-e.\\')).map(lambda b: bytes([b]))
        )
        if op == "replace":
            payload[at : at + len(chunk)] = chunk
        elif op == "insert":
            payload[at:at] = chunk
        else:
            del payload[at : at + len(chunk)]
    _verify_or_reject(bytes(payload))


JSON_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(-(2**60), 2**60)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
    | st.sampled_from(["gw-1/", "EdDSA", "ES256", "RS256", "unsynced", "a/b", RFC8032_KID, ""])
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=8,
)
PATHS = [
    *["v", "thing", "stream", "seq", "prev", "time", "records", "dropped", "clock", "sig", "zz"],
    *[
        f"records.{i}.{m}"
        for i in (0, 1)
        for m in ("bn", "bt", "n", "u", "v", "vs", "vb", "t", "s")
    ],
    *["records.0", "records.1", "sig.alg", "sig.kid", "sig.value", "sig.crit"],
]


@FUZZ
@given(
    st.lists(
        st.tuples(st.sampled_from(PATHS), st.one_of(st.just(DELETE), JSON_VALUES)),
        min_size=1,
        max_size=4,
    ),
    st.booleans(),
)
def test_fuzz_json_mutations(mutations: list[tuple[str, Any]], resign: bool) -> None:
    obj = unseal(SEED)
    for path, value in mutations:
        try:
            _set(path, value)(obj)
        except (KeyError, IndexError, TypeError):
            continue  # the path no longer exists after an earlier mutation
    try:
        if resign and isinstance(obj.get("sig"), dict):
            payload = seal(obj, ED)
        else:
            payload = rfc8785.dumps(obj)
    except rfc8785.CanonicalizationError:
        # e.g. lone surrogates or integers beyond 2**53: send what a careless encoder would
        payload = json.dumps(obj, ensure_ascii=False).encode("utf-8", "surrogatepass")
    _verify_or_reject(payload)


READINGS = st.lists(
    st.tuples(
        st.from_regex(r"[a-z0-9][a-z0-9_.:-]{0,8}/[a-z][a-z0-9_]{0,8}", fullmatch=True),
        st.sampled_from([None, "Cel", "%RH", "Pa", "lx"]),
        st.floats(allow_nan=False, allow_infinity=False, width=32)
        | st.booleans()
        | st.text(max_size=10),
        st.floats(0, 3600, allow_nan=False),
    ),
    min_size=1,
    max_size=20,
)


@FUZZ
@given(READINGS, st.floats(1e9, 2e9), st.integers(1, 2**40))
def test_fuzz_valid_batches_round_trip(
    readings: list[tuple[str, str | None, Any, float]], bt: float, seq: int
) -> None:
    records: list[dict[str, Any]] = []
    for name, unit, value, t in sorted(readings, key=lambda r: r[3]):
        key = "vb" if isinstance(value, bool) else "vs" if isinstance(value, str) else "v"
        record: dict[str, Any] = {"n": name, key: value, "t": t}
        if unit:
            record["u"] = unit
        records.append(record)
    records[0] |= {"bn": "gw-1/", "bt": bt}
    prev = None if seq == 1 else b64url(hashlib.sha256(b"x").digest())
    got = verify_batch(seal(batch(seq, prev, records=records)), KEYS)
    assert got.seq == seq
    assert [r.value for r in got.records] == [r[2] for r in sorted(readings, key=lambda r: r[3])]
    assert [r.time for r in got.records] == [bt + r["t"] for r in records]
