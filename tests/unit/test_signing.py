"""Signing keys: the gateway's own Ed25519 key file, and the device certificate's key
(ES256 for P-256, RS256 for RSA); every signature is checked with ``cryptography``."""

from __future__ import annotations

import base64
import datetime as dt
import errno
import hashlib
import io
import os
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.x509.oid import NameOID

from gateway.pki import KeyType, create_ca, issue_certificate, write_cert, write_key
from gateway.signing import (
    Signer,
    SigningKeyError,
    b64url,
    certificate_signer,
    load_or_create_ed25519,
    spki_kid,
)

PAYLOAD = b'{"records":[],"seq":1,"stream":"s","thing":"gw-1","time":1700000000,"v":1}'


def device_pair(directory: Path, key_type: KeyType = "ec") -> tuple[Path, Path]:
    """A device certificate and its key, issued by a throwaway CA, as files."""
    ca_key, ca_cert = create_ca("test CA")
    key, cert = issue_certificate(ca_key, ca_cert, "gw-1", server=False, key_type=key_type)
    cert_path, key_path = directory / f"{key_type}.crt", directory / f"{key_type}.key"
    write_cert(cert_path, cert)
    write_key(key_path, key)
    return cert_path, key_path


def self_signed(key: ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey) -> x509.Certificate:
    """A certificate for key types ``gateway.pki`` does not issue (P-384, Ed25519)."""
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "gw-1")])
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=1))
    )
    algorithm = None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA384()
    return builder.sign(key, algorithm)


def write_pem_key(path: Path, key: ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)


def der_of(cert_path: Path) -> bytes:
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    return cert.public_bytes(serialization.Encoding.DER)


# --------------------------------------------------------------------------- Ed25519


def test_ed25519_key_is_created_private_and_reused(tmp_path: Path) -> None:
    path = tmp_path / "state" / "signing.key"  # the directory is created too

    first = load_or_create_ed25519(path)

    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert first.alg == "EdDSA"
    assert first.signature_length == 64
    assert first.kid == spki_kid(first.key.public_key())
    assert len(first.kid) == 64 and first.kid == first.kid.lower()
    again = load_or_create_ed25519(path)
    assert again.kid == first.kid
    assert again.public_key_pem() == first.public_key_pem()


def test_failed_key_creation_leaves_nothing_half_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A full disk (or a power cut) while the first start writes the key must not leave
    # a partial key file that every later start refuses.
    path = tmp_path / "signing.key"
    real_fdopen = os.fdopen

    class FullDisk(io.RawIOBase):
        def __init__(self, fd: int) -> None:
            self.inner = real_fdopen(fd, "wb")

        def write(self, data: object) -> int:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        def close(self) -> None:
            self.inner.close()
            super().close()

    monkeypatch.setattr(os, "fdopen", lambda fd, *_a, **_k: FullDisk(fd))
    with pytest.raises(SigningKeyError, match="cannot create the signing key") as caught:
        load_or_create_ed25519(path)
    assert str(path) in str(caught.value)
    monkeypatch.undo()

    assert list(tmp_path.iterdir()) == []
    signer = load_or_create_ed25519(path)
    assert signer.kid == load_or_create_ed25519(path).kid


def test_ed25519_signature_verifies(tmp_path: Path) -> None:
    signer = load_or_create_ed25519(tmp_path / "signing.key")
    signature = signer.sign(PAYLOAD)
    assert len(signature) == signer.signature_length == 64
    public = serialization.load_pem_public_key(signer.public_key_pem())
    assert isinstance(public, ed25519.Ed25519PublicKey)
    public.verify(signature, PAYLOAD)
    with pytest.raises(InvalidSignature):
        public.verify(signature, PAYLOAD + b" ")


def test_kid_is_the_sha256_of_the_spki(tmp_path: Path) -> None:
    signer = load_or_create_ed25519(tmp_path / "signing.key")
    spki = signer.key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert signer.kid == hashlib.sha256(spki).hexdigest()


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660, 0o644])
def test_key_file_readable_by_others_is_refused(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "signing.key"
    load_or_create_ed25519(path)
    path.chmod(mode)
    with pytest.raises(SigningKeyError) as caught:
        load_or_create_ed25519(path)
    message = str(caught.value)
    assert str(path) in message
    assert f"chmod 600 {path}" in message
    assert f"{mode:04o}" in message


def test_non_ed25519_key_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "signing.key"
    write_pem_key(path, ec.generate_private_key(ec.SECP256R1()))
    with pytest.raises(SigningKeyError, match="another key type") as caught:
        load_or_create_ed25519(path)
    assert str(path) in str(caught.value)


@pytest.mark.parametrize("content", [b"", b"not a key\n", b"-----BEGIN PRIVATE KEY-----\nAAAA\n"])
def test_garbage_key_file_is_refused_with_a_clear_message(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "signing.key"
    path.write_bytes(content)
    path.chmod(0o600)
    with pytest.raises(SigningKeyError) as caught:
        load_or_create_ed25519(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: not an unencrypted PEM private key")
    # This is the gateway's own key, not a certificate's: the advice must fit.
    assert "certificate" not in message
    assert "signing key" in message
    assert path.read_bytes() == content  # never replaced behind the operator's back


def test_encrypted_key_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "signing.key"
    path.write_bytes(
        ed25519.Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    path.chmod(0o600)
    with pytest.raises(SigningKeyError, match="not an unencrypted PEM private key"):
        load_or_create_ed25519(path)


# --------------------------------------------------------------------------- certificates


def test_p256_certificate_signs_es256(tmp_path: Path) -> None:
    cert_path, key_path = device_pair(tmp_path, "ec")

    signer = certificate_signer(cert_path, key_path)

    assert signer.alg == "ES256"
    assert signer.kid == hashlib.sha256(der_of(cert_path)).hexdigest()
    signature = signer.sign(PAYLOAD)
    assert len(signature) == signer.signature_length == 64  # JWS r||s, not DER
    r, s = int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    public = cert.public_key()
    assert isinstance(public, ec.EllipticCurvePublicKey)
    public.verify(encode_dss_signature(r, s), PAYLOAD, ec.ECDSA(hashes.SHA256()))
    with pytest.raises(InvalidSignature):
        public.verify(encode_dss_signature(r, s), PAYLOAD[:-1], ec.ECDSA(hashes.SHA256()))


def test_es256_signatures_are_always_64_bytes(tmp_path: Path) -> None:
    # r or s below 2^248 happens in 1 of 128 signatures: they must be left-padded.
    signer = certificate_signer(*device_pair(tmp_path, "ec"))
    public = signer.key.public_key()
    assert isinstance(public, ec.EllipticCurvePublicKey)
    for i in range(300):
        data = PAYLOAD + str(i).encode()
        signature = signer.sign(data)
        assert len(signature) == 64
        r, s = int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
        public.verify(encode_dss_signature(r, s), data, ec.ECDSA(hashes.SHA256()))


def test_rsa_certificate_signs_rs256(tmp_path: Path) -> None:
    cert_path, key_path = device_pair(tmp_path, "rsa")

    signer = certificate_signer(cert_path, key_path)

    assert signer.alg == "RS256"
    assert signer.kid == hashlib.sha256(der_of(cert_path)).hexdigest()
    signature = signer.sign(PAYLOAD)
    assert len(signature) == signer.signature_length == 256
    public = x509.load_pem_x509_certificate(cert_path.read_bytes()).public_key()
    assert isinstance(public, rsa.RSAPublicKey)
    public.verify(signature, PAYLOAD, padding.PKCS1v15(), hashes.SHA256())


def test_key_of_another_certificate_is_refused(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    cert_path, _ = device_pair(tmp_path / "a")
    _, other_key = device_pair(tmp_path / "b")
    with pytest.raises(SigningKeyError, match="does not belong to the certificate") as caught:
        certificate_signer(cert_path, other_key)
    assert str(other_key) in str(caught.value) and str(cert_path) in str(caught.value)


def test_p384_certificate_is_refused(tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP384R1())
    cert_path, key_path = tmp_path / "p384.crt", tmp_path / "p384.key"
    write_cert(cert_path, self_signed(key))
    write_pem_key(key_path, key)
    with pytest.raises(SigningKeyError, match="ES256 needs a P-256 key, this one is secp384r1"):
        certificate_signer(cert_path, key_path)


def test_ed25519_certificate_key_is_refused(tmp_path: Path) -> None:
    key = ed25519.Ed25519PrivateKey.generate()
    cert_path, key_path = tmp_path / "ed.crt", tmp_path / "ed.key"
    write_cert(cert_path, self_signed(key))
    write_pem_key(key_path, key)
    with pytest.raises(SigningKeyError, match="cannot sign as ES256/RS256"):
        certificate_signer(cert_path, key_path)


def test_certificate_key_readable_by_others_is_refused(tmp_path: Path) -> None:
    cert_path, key_path = device_pair(tmp_path)
    key_path.chmod(0o644)
    with pytest.raises(SigningKeyError, match=f"chmod 600 {key_path}"):
        certificate_signer(cert_path, key_path)


def test_missing_files_are_named(tmp_path: Path) -> None:
    cert_path, key_path = device_pair(tmp_path)
    missing = tmp_path / "missing.pem"
    with pytest.raises(SigningKeyError, match=f"{missing}: cannot read certificate"):
        certificate_signer(missing, key_path)
    with pytest.raises(SigningKeyError, match=f"{missing}: cannot read private key"):
        certificate_signer(cert_path, missing)


def test_garbage_certificate_is_refused(tmp_path: Path) -> None:
    _, key_path = device_pair(tmp_path)
    garbage = tmp_path / "garbage.crt"
    garbage.write_text("hello\n")
    with pytest.raises(SigningKeyError, match=f"{garbage}: not a PEM certificate"):
        certificate_signer(garbage, key_path)


def test_b64url_has_no_padding() -> None:
    assert b64url(b"\xfb\xff") == "-_8"
    assert base64.urlsafe_b64decode(b64url(bytes(range(10))) + "==") == bytes(range(10))


def test_signer_is_frozen(tmp_path: Path) -> None:
    signer = load_or_create_ed25519(tmp_path / "signing.key")
    assert isinstance(signer, Signer)
    with pytest.raises(AttributeError):
        signer.kid = "x"  # type: ignore[misc]
