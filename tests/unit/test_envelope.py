"""Sealing: canonical bytes, exact sizing, chain fields, signatures."""

from __future__ import annotations

import base64
import hashlib
import json

import pytest
import rfc8785
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.envelope import Chain, Sealer, payload_digest
from gateway.readings import Reading, is_publishable
from gateway.signing import Signer, ed25519_signer

T0 = 1_795_000_000.125
RFC8032_SECRET = bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")


def _b64d(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _signer() -> Signer:
    return ed25519_signer(ed25519.Ed25519PrivateKey.from_private_bytes(RFC8032_SECRET))


def _readings(n: int, *, synced: bool = True) -> list[Reading]:
    return [Reading("bme", "temperature", "Cel", 20.0 + i / 10, T0 + i, synced) for i in range(n)]


def test_payload_is_the_canonical_form_with_senml_records() -> None:
    sealer = Sealer(thing="gw-1", signer=_signer(), max_bytes=128_000, max_records=100)
    sealed = sealer.seal(Chain("s1", 0, None), _readings(3), now=T0 + 10)
    obj = json.loads(sealed.payload)
    assert rfc8785.dumps(obj) == sealed.payload
    assert obj["v"] == 1 and obj["thing"] == "gw-1" and obj["stream"] == "s1"
    assert obj["seq"] == 1 and obj["prev"] is None and obj["time"] == T0 + 10
    assert "dropped" not in obj and "clock" not in obj
    first, second, third = obj["records"]
    assert first == {"bn": "gw-1/", "bt": T0, "n": "bme/temperature", "t": 0, "u": "Cel", "v": 20}
    assert second == {"n": "bme/temperature", "t": 1, "u": "Cel", "v": 20.1}
    assert third["t"] == 2
    assert sealed.count == 3
    assert (
        sealed.digest
        == base64.urlsafe_b64encode(hashlib.sha256(sealed.payload).digest()).rstrip(b"=").decode()
    )


def test_signature_covers_canonical_bytes_without_sig() -> None:
    signer = _signer()
    sealed = Sealer(thing="gw", signer=signer, max_bytes=10_000, max_records=10).seal(
        Chain("s", 4, "abc"), _readings(2), now=T0
    )
    obj = json.loads(sealed.payload)
    sig = obj.pop("sig")
    assert sig["alg"] == "EdDSA"
    assert sig["kid"] == signer.kid
    public = ed25519.Ed25519PrivateKey.from_private_bytes(RFC8032_SECRET).public_key()
    public.verify(_b64d(sig["value"]), rfc8785.dumps(obj))
    assert obj["seq"] == 5 and obj["prev"] == "abc"


def test_kid_is_sha256_of_spki() -> None:
    public = bytes.fromhex("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")
    spki = bytes.fromhex("302a300506032b6570032100") + public
    assert _signer().kid == hashlib.sha256(spki).hexdigest()


def test_dropped_and_unsynced_clock_are_carried() -> None:
    sealer = Sealer(thing="gw", signer=_signer(), max_bytes=10_000, max_records=10)
    readings = _readings(2)
    readings[1] = Reading("bme", "temperature", "Cel", 1.0, T0 + 5, synced=False)
    obj = json.loads(sealer.seal(Chain("s", 0, None), readings, now=T0, dropped=7).payload)
    assert obj["dropped"] == 7
    assert obj["clock"] == "unsynced"


@pytest.mark.parametrize("max_bytes", [600, 1_000, 4_096, 20_000, 128_000])
def test_batches_fill_up_to_the_byte_limit_exactly(max_bytes: int) -> None:
    sealer = Sealer(thing="gw", signer=_signer(), max_bytes=max_bytes, max_records=100_000)
    readings = _readings(5_000)
    sealed = sealer.seal(Chain("s", 0, None), readings, now=T0)
    assert len(sealed.payload) <= max_bytes
    # one more record would not have fitted (the record is at most ~70 bytes)
    assert len(sealed.payload) > max_bytes - 90
    assert sealed.count < len(readings)


def test_record_limit() -> None:
    sealer = Sealer(thing="gw", signer=_signer(), max_bytes=128_000, max_records=7)
    assert sealer.seal(Chain("s", 0, None), _readings(20), now=T0).count == 7


def test_a_record_too_large_is_refused() -> None:
    sealer = Sealer(thing="gw", signer=_signer(), max_bytes=300, max_records=7)
    big = [Reading("s", "text", None, "x" * 400, T0)]
    with pytest.raises(ValueError, match="does not fit"):
        sealer.seal(Chain("s", 0, None), big, now=T0)


@pytest.mark.parametrize("kind", ["ec", "rsa"])
def test_certificate_keys_sign_es256_and_rs256(kind: str) -> None:
    key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
    if kind == "ec":
        key = ec.generate_private_key(ec.SECP256R1())
        signer = Signer("ES256", "k", key, 64)
    else:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        signer = Signer("RS256", "k", key, 256)
    sealed = Sealer(thing="gw", signer=signer, max_bytes=2_000, max_records=1000).seal(
        Chain("s", 0, None), _readings(200), now=T0
    )
    assert len(sealed.payload) <= 2_000
    obj = json.loads(sealed.payload)
    assert len(_b64d(obj["sig"]["value"])) == signer.signature_length


def test_prev_links_consecutive_batches() -> None:
    sealer = Sealer(thing="gw", signer=_signer(), max_bytes=1_000, max_records=1000)
    first = sealer.seal(Chain("s", 0, None), _readings(100), now=T0)
    second = sealer.seal(Chain("s", first.seq, first.digest), _readings(100), now=T0)
    assert json.loads(second.payload)["prev"] == payload_digest(first.payload)


@settings(max_examples=60, deadline=None)
@given(
    values=st.lists(
        st.one_of(
            st.floats(min_value=-(2.0**53) + 1, max_value=2.0**53 - 1, width=64),
            st.text(max_size=30),
            st.booleans(),
        ),
        min_size=1,
        max_size=40,
    ),
    max_bytes=st.integers(min_value=700, max_value=5_000),
)
def test_any_values_give_canonical_payloads_within_the_limit(
    values: list[float | str | bool], max_bytes: int
) -> None:
    readings = [Reading("s", f"q{i}", None, v, T0 + i / 7) for i, v in enumerate(values)]
    sealer = Sealer(thing="gw", signer=_signer(), max_bytes=max_bytes, max_records=1000)
    sealed = sealer.seal(Chain("s", 0, None), readings, now=T0)
    assert len(sealed.payload) <= max_bytes
    obj = json.loads(sealed.payload)
    assert rfc8785.dumps(obj) == sealed.payload
    assert len(obj["records"]) == sealed.count


@pytest.mark.parametrize(
    ("value", "ok"),
    [(1.5, True), (float("nan"), False), (float("inf"), False), (2.0**53, False), ("x", True)],
)
def test_values_json_cannot_carry_are_not_publishable(value: float | str, ok: bool) -> None:
    assert is_publishable(value) is ok
