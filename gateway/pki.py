"""Throwaway certificate authority and mutual-TLS key pairs for the demo and the tests."""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TypeAlias

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

PrivateKey: TypeAlias = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
KeyType: TypeAlias = Literal["ec", "rsa"]

# Certificates are back-dated a little so a peer whose clock runs slightly behind accepts them.
_CLOCK_SKEW = dt.timedelta(minutes=5)


@dataclass(frozen=True)
class PkiFiles:
    """PEM files of one CA, a server certificate for the broker and a client certificate."""

    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def generate_key(key_type: KeyType = "ec") -> PrivateKey:
    """A new private key: ECDSA P-256 (``"ec"``) or RSA 2048 (``"rsa"``)."""
    if key_type == "ec":
        return ec.generate_private_key(ec.SECP256R1())
    if key_type == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    raise ValueError(f"unknown key type {key_type!r}: use 'ec' or 'rsa'")


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _validity(days: int) -> tuple[dt.datetime, dt.datetime]:
    now = dt.datetime.now(dt.UTC)
    return now - _CLOCK_SKEW, now + dt.timedelta(days=days)


def create_ca(
    common_name: str, *, key_type: KeyType = "ec", days: int = 30
) -> tuple[PrivateKey, x509.Certificate]:
    """A self-signed CA certificate (BasicConstraints ca=True, keyCertSign) and its key."""
    key = generate_key(key_type)
    not_before, not_after = _validity(days)
    public_key = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(_name(common_name))
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def _general_name(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def issue_certificate(
    ca_key: PrivateKey,
    ca_cert: x509.Certificate,
    common_name: str,
    *,
    server: bool,
    hosts: Sequence[str] = (),
    key_type: KeyType = "ec",
    days: int = 30,
) -> tuple[PrivateKey, x509.Certificate]:
    """A new key and an end-entity certificate for it, signed by the CA.

    A server certificate carries the serverAuth extended key usage and one
    subjectAltName entry (DNS or IP) per host; a client certificate carries clientAuth.
    """
    key = generate_key(key_type)
    public_key = key.public_key()
    not_before, not_after = _validity(days)
    usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(ca_cert.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                # RSA key exchange (TLS 1.2 without ECDHE) encrypts with the key.
                key_encipherment=key_type == "rsa",
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
    )
    if hosts:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([_general_name(host) for host in hosts]),
            critical=False,
        )
    return key, builder.sign(ca_key, hashes.SHA256())


def write_key(path: Path, key: PrivateKey) -> None:
    """Write an unencrypted PKCS#8 PEM private key that only its owner can read (mode 0600).

    The file is created with that mode, so the key is never readable by others,
    not even for an instant; an existing file at the path is replaced.
    """
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    # An existing file keeps its mode under O_CREAT, so remove it and create afresh.
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as file:
        file.write(pem)


def write_cert(path: Path, cert: x509.Certificate) -> None:
    """Write a PEM certificate."""
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def write_pki(
    directory: Path,
    *,
    thing: str,
    hosts: Sequence[str] = ("localhost", "127.0.0.1"),
    client_key_type: KeyType = "ec",
) -> PkiFiles:
    """Create a CA, a server certificate for ``hosts`` and a client certificate for ``thing``.

    The client certificate's common name is the thing name. Files are written
    into ``directory`` (created if missing) as PEM; private keys get mode 0600.
    """
    directory.mkdir(parents=True, exist_ok=True)
    files = PkiFiles(
        ca_cert=directory / "ca.crt",
        ca_key=directory / "ca.key",
        server_cert=directory / "server.crt",
        server_key=directory / "server.key",
        client_cert=directory / "client.crt",
        client_key=directory / "client.key",
    )
    ca_key, ca_cert = create_ca(f"{thing} throwaway CA")
    server_name = hosts[0] if hosts else "localhost"
    server_key, server_cert = issue_certificate(
        ca_key, ca_cert, server_name, server=True, hosts=hosts
    )
    client_key, client_cert = issue_certificate(
        ca_key, ca_cert, thing, server=False, key_type=client_key_type
    )
    write_key(files.ca_key, ca_key)
    write_cert(files.ca_cert, ca_cert)
    write_key(files.server_key, server_key)
    write_cert(files.server_cert, server_cert)
    write_key(files.client_key, client_key)
    write_cert(files.client_cert, client_cert)
    return files
