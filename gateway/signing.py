"""Signing keys: the gateway's own Ed25519 key, or the device certificate's key.

Algorithm names are those of JOSE (RFC 7518). The key id (``kid``) is the
lowercase hex SHA-256 of the DER certificate when the certificate's key signs
(equal to the AWS IoT certificate id), else of the DER SubjectPublicKeyInfo.
"""

from __future__ import annotations

import base64
import hashlib
import os
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from gateway.errors import GatewayError

PrivateKey = ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


class SigningKeyError(GatewayError):
    """A key or certificate file cannot be used for signing."""


def b64url(data: bytes) -> str:
    """Base64url without padding, as JWS and the wire format use it."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def spki_kid(
    public_key: ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey | rsa.RSAPublicKey,
) -> str:
    """Hex SHA-256 of the DER SubjectPublicKeyInfo."""
    der = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(der).hexdigest()


@dataclass(frozen=True)
class Signer:
    """Signs canonical payload bytes; ``signature_length`` is fixed per key, which
    lets the sealer size a batch exactly before signing it."""

    alg: str
    kid: str
    key: PrivateKey
    signature_length: int

    def sign(self, data: bytes) -> bytes:
        """The raw signature: 64 bytes for EdDSA, r‖s for ES256, PKCS#1 v1.5 for RS256."""
        key = self.key
        if isinstance(key, ed25519.Ed25519PrivateKey):
            return key.sign(data)
        if isinstance(key, ec.EllipticCurvePrivateKey):
            r, s = decode_dss_signature(key.sign(data, ec.ECDSA(hashes.SHA256())))
            return r.to_bytes(32, "big") + s.to_bytes(32, "big")
        return key.sign(data, padding.PKCS1v15(), hashes.SHA256())

    def public_key_pem(self) -> bytes:
        """The public half, for consumers that verify batches."""
        return self.key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )


def _check_private_file(path: Path) -> None:
    try:
        mode = path.stat().st_mode
    except OSError as err:
        raise SigningKeyError(f"{path}: cannot read private key: {err.strerror}") from err
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise SigningKeyError(
            f"{path}: private key is readable by others (mode {stat.S_IMODE(mode):04o}); "
            f"run: chmod 600 {path}"
        )


def _load_private_key(path: Path, hint: str) -> PrivateKey:
    try:
        data = path.read_bytes()
    except OSError as err:
        raise SigningKeyError(f"{path}: cannot read private key: {err.strerror}") from err
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as err:
        raise SigningKeyError(
            f"{path}: not an unencrypted PEM private key ({err}); {hint}"
        ) from err
    if not isinstance(
        key, ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
    ):
        raise SigningKeyError(f"{path}: unsupported key type {type(key).__name__}")
    return key


def ed25519_signer(key: ed25519.Ed25519PrivateKey) -> Signer:
    """A signer on a dedicated Ed25519 key."""
    return Signer("EdDSA", spki_kid(key.public_key()), key, 64)


def _create_private_file(path: Path, data: bytes) -> None:
    """Create ``path`` holding ``data`` with mode 0600, all or nothing.

    The data goes to a temporary file beside it (mkstemp: mode 0600), is made
    durable, then linked into place: a crash or a full disk never leaves a partial
    key behind, and the link fails with FileExistsError instead of overwriting a key
    that another start created meanwhile.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    temporary = Path(name)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.link(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    directory = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(directory)  # the new name survives a power cut too
    finally:
        os.close(directory)


def load_or_create_ed25519(path: Path) -> Signer:
    """The gateway's signing key, created with mode 0600 on first start."""
    if not path.exists():
        key = ed25519.Ed25519PrivateKey.generate()
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        try:
            _create_private_file(path, pem)
        except FileExistsError:
            pass  # another start created it first: use that one
        except OSError as err:
            raise SigningKeyError(f"{path}: cannot create the signing key: {err}") from err
    _check_private_file(path)
    loaded = _load_private_key(
        path,
        "this is the gateway's own signing key: restore it from a backup, or delete the "
        "file so that a new one is created (its kid changes)",
    )
    if not isinstance(loaded, ed25519.Ed25519PrivateKey):
        raise SigningKeyError(
            f"{path}: signing.key is ed25519 but this file holds another key type"
        )
    return ed25519_signer(loaded)


def certificate_signer(cert_path: Path, key_path: Path) -> Signer:
    """A signer on the device certificate's key: ES256 for P-256, RS256 for RSA."""
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    except OSError as err:
        raise SigningKeyError(f"{cert_path}: cannot read certificate: {err.strerror}") from err
    except ValueError as err:
        raise SigningKeyError(f"{cert_path}: not a PEM certificate") from err
    _check_private_file(key_path)
    key = _load_private_key(key_path, "give the key file that belongs to the certificate")
    if key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ) != cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ):
        raise SigningKeyError(
            f"{key_path}: this key does not belong to the certificate {cert_path}"
        )
    kid = hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()
    if isinstance(key, ec.EllipticCurvePrivateKey):
        if not isinstance(key.curve, ec.SECP256R1):
            raise SigningKeyError(
                f"{key_path}: ES256 needs a P-256 key, this one is {key.curve.name}"
            )
        return Signer("ES256", kid, key, 64)
    if isinstance(key, rsa.RSAPrivateKey):
        return Signer("RS256", kid, key, (key.key_size + 7) // 8)
    raise SigningKeyError(f"{key_path}: an Ed25519 certificate key cannot sign as ES256/RS256")
