"""The AWS side of fleet provisioning by claim, on a real broker, for the tests.

AWS IoT Core answers two MQTT APIs for a device that connects with a claim
certificate; ``FleetService`` answers them the same way on Mosquitto:

- ``$aws/certificates/create-from-csr/json``: checks the CSR and its signature, issues
  a client certificate for the CSR's public key signed by the test CA (so the
  device's key never leaves the device), and answers on ``.../json/accepted`` with
  ``certificateId`` (hex SHA-256 of the DER certificate), ``certificatePem`` and a
  one-time ``certificateOwnershipToken``; a bad request on ``.../json/rejected``.
- ``$aws/provisioning-templates/{template}/provision/json``: checks the template
  name, the ownership token and the ``SerialNumber`` parameter, "creates" the thing
  ``{thing_prefix}{SerialNumber}`` and answers on ``.../provision/json/accepted`` with
  ``thingName`` and ``deviceConfiguration``; else on ``.../rejected``.

Rejections carry ``statusCode``, ``errorCode`` and ``errorMessage`` as AWS sends them.
The service connects with its own client certificate (mutual TLS) and subscribes to the
request topics explicitly: ``$``-topics never match a leading wildcard.

Knobs make it misbehave the ways the real service can: ``csr_rejection`` and
``register_rejection`` answer every request with that error, ``silent`` never
answers, ``wrong_key`` issues the certificate for some other key.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import secrets
import threading
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from conftest import client_tls_context
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from gateway.pki import PrivateKey, generate_key

CSR_TOPIC = "$aws/certificates/create-from-csr/json"
PROVISION_TOPIC = "$aws/provisioning-templates/{template}/provision/json"
PROVISION_FILTER = "$aws/provisioning-templates/+/provision/json"


def error_payload(status: int, code: str, message: str) -> dict[str, Any]:
    """A rejection as AWS IoT sends it."""
    return {"statusCode": status, "errorCode": code, "errorMessage": message}


@dataclass
class Registration:
    """One accepted RegisterThing: what the device sent and which certificate it named."""

    thing_name: str
    certificate_id: str
    parameters: dict[str, str]


@dataclass
class FleetService:
    """Answers CreateCertificateFromCsr and RegisterThing like AWS IoT Core."""

    host: str
    port: int
    ca_cert: Path
    ca_key: Path
    cert: Path
    key: Path
    template: str = "wsn-gateway-fleet"
    thing_prefix: str = "wsn-"
    csr_rejection: dict[str, Any] | None = None
    register_rejection: dict[str, Any] | None = None
    silent: bool = False
    wrong_key: bool = False
    csr_requests: list[dict[str, Any]] = field(default_factory=list)
    register_requests: list[dict[str, Any]] = field(default_factory=list)
    issued: dict[str, x509.Certificate] = field(default_factory=dict)  # by certificate id
    registrations: list[Registration] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        loaded = serialization.load_pem_private_key(self.ca_key.read_bytes(), password=None)
        assert isinstance(loaded, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey)
        self._ca_private: PrivateKey = loaded
        self._ca_certificate = x509.load_pem_x509_certificate(self.ca_cert.read_bytes())
        self._tokens: dict[str, str] = {}  # ownership token -> certificate id, used once
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self._client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=f"fleet-service-{uuid.uuid4().hex[:8]}",
            protocol=mqtt.MQTTv311,
        )
        self._client.tls_set_context(client_tls_context(self.ca_cert, self.cert, self.key))
        self._client.on_connect = self._on_connect
        self._client.on_subscribe = self._on_subscribe
        self._client.on_message = self._on_message

    # ------------------------------------------------------------------ lifecycle

    def start(self, timeout: float = 10.0) -> FleetService:
        """Connect, subscribe to both request topics, and return once the broker confirmed."""
        self._client.connect_async(self.host, self.port, keepalive=30)
        self._client.loop_start()
        if not self._subscribed.wait(timeout):
            self.stop()
            raise TimeoutError(f"fleet service not subscribed within {timeout} s")
        return self

    def stop(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    def _on_connect(
        self, client: mqtt.Client, _userdata: Any, _flags: Any, reason: Any, _props: Any
    ) -> None:
        if not reason.is_failure:
            client.subscribe([(CSR_TOPIC, 1), (PROVISION_FILTER, 1)])

    def _on_subscribe(
        self, _client: mqtt.Client, _userdata: Any, _mid: int, reasons: Any, _props: Any
    ) -> None:
        if all(not reason.is_failure for reason in reasons):
            self._subscribed.set()
        else:
            self.errors.append(f"subscription refused: {reasons}")

    # ------------------------------------------------------------------ requests

    def _on_message(self, _client: mqtt.Client, _userdata: Any, message: mqtt.MQTTMessage) -> None:
        try:
            request = json.loads(message.payload)
            if not isinstance(request, dict):
                raise ValueError("not a JSON object")
        except ValueError as exc:
            self._answer(
                message.topic, False, error_payload(400, "InvalidPayload", f"bad JSON: {exc}")
            )
            return
        with self._lock:
            if message.topic == CSR_TOPIC:
                self.csr_requests.append(request)
                accepted, payload = self._create_from_csr(request)
            else:
                self.register_requests.append(request)
                template = message.topic.split("/")[2]
                accepted, payload = self._register_thing(template, request)
        if not self.silent:
            self._answer(message.topic, accepted, payload)

    def _answer(self, request_topic: str, accepted: bool, payload: dict[str, Any]) -> None:
        suffix = "accepted" if accepted else "rejected"
        self._client.publish(f"{request_topic}/{suffix}", json.dumps(payload), qos=1)

    def _create_from_csr(self, request: dict[str, Any]) -> tuple[bool, dict[str, Any]]:
        if self.csr_rejection is not None:
            return False, self.csr_rejection
        pem = request.get("certificateSigningRequest")
        if not isinstance(pem, str):
            return False, error_payload(400, "InvalidPayload", "certificateSigningRequest missing")
        try:
            csr = x509.load_pem_x509_csr(pem.encode())
        except ValueError:
            return False, error_payload(400, "InvalidCsr", "the CSR is not a PEM CSR")
        if not csr.is_signature_valid:
            return False, error_payload(400, "InvalidCsr", "the CSR's signature does not verify")
        public_key = csr.public_key()
        if self.wrong_key:
            public_key = generate_key("ec").public_key()
        assert isinstance(public_key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey)
        cert = self._sign(public_key)
        certificate_id = hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()
        token = secrets.token_urlsafe(32)
        self._tokens[token] = certificate_id
        self.issued[certificate_id] = cert
        return True, {
            "certificateId": certificate_id,
            "certificatePem": cert.public_bytes(serialization.Encoding.PEM).decode(),
            "certificateOwnershipToken": token,
        }

    def _sign(self, public_key: ec.EllipticCurvePublicKey | rsa.RSAPublicKey) -> x509.Certificate:
        """A client certificate for ``public_key``, as AWS IoT issues one from a CSR."""
        now = dt.datetime.now(dt.UTC)
        return (
            x509.CertificateBuilder()
            .subject_name(
                x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "AWS IoT Certificate")])
            )
            .issuer_name(self._ca_certificate.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._ca_private.public_key()),
                critical=False,
            )
            .sign(self._ca_private, hashes.SHA256())
        )

    def _register_thing(
        self, template: str, request: dict[str, Any]
    ) -> tuple[bool, dict[str, Any]]:
        if self.register_rejection is not None:
            return False, self.register_rejection
        if template != self.template:
            return False, error_payload(
                404, "ResourceNotFound", f"The provisioning template {template} does not exist"
            )
        token = request.get("certificateOwnershipToken")
        certificate_id = self._tokens.pop(token, None) if isinstance(token, str) else None
        if certificate_id is None:
            return False, error_payload(
                400, "InvalidCertificateOwnershipToken", "certificate ownership token is invalid"
            )
        parameters = request.get("parameters") or {}
        serial = parameters.get("SerialNumber") if isinstance(parameters, dict) else None
        if not isinstance(serial, str) or not serial:
            return False, error_payload(
                400, "InvalidParameters", "Parameter SerialNumber is required by the template"
            )
        thing_name = f"{self.thing_prefix}{serial}"
        self.registrations.append(Registration(thing_name, certificate_id, dict(parameters)))
        return True, {
            "thingName": thing_name,
            "deviceConfiguration": {"topic": f"dt/wsn/{thing_name}/telemetry"},
        }
