"""Fleet provisioning by claim against a real Mosquitto with mutual TLS.

``fleet_service.FleetService`` plays AWS IoT's side of the two MQTT APIs
(CreateCertificateFromCsr, RegisterThing) with the test CA; the device side is
``gateway.fleet.provision_by_claim`` over the official SDK (awsiotsdk / awscrt).
"""

from __future__ import annotations

import hashlib
import json
import re
import socket
import stat
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import LOCALHOST, Mosquitto, PkiBundle, free_port, paho_publish
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from fleet_service import FleetService, error_payload

from gateway.cli import main
from gateway.config import load_settings
from gateway.fleet import (
    CERT_FILE,
    KEY_FILE,
    RECORD_FILE,
    FleetProvisioningError,
    FleetResult,
    claim_policy_document,
    provision_by_claim,
    provisioning_template_document,
)
from gateway.pki import issue_certificate, write_cert, write_key

pytest.importorskip("awsiot.iotidentity", reason="needs awsiotsdk (extra 'aws')")

pytestmark = pytest.mark.integration

TEMPLATE = "wsn-gateway-fleet"
SERIAL = "SN123"
CLAIM_CN = "fleet-claim"
DOCS = Path(__file__).resolve().parents[2] / "docs" / "fleet-provisioning.md"


# --------------------------------------------------------------------------- fixtures


class Claim:
    """The factory image's claim certificate, issued by the test CA."""

    def __init__(self, cert: Path, key: Path) -> None:
        self.cert = cert
        self.key = key


@pytest.fixture(scope="module")
def claim(pki: PkiBundle, tmp_path_factory: pytest.TempPathFactory) -> Claim:
    directory = tmp_path_factory.mktemp("claim")
    ca_key = serialization.load_pem_private_key(pki.files.ca_key.read_bytes(), password=None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    ca_cert = x509.load_pem_x509_certificate(pki.files.ca_cert.read_bytes())
    key, cert = issue_certificate(ca_key, ca_cert, CLAIM_CN, server=False)
    found = Claim(directory / "claim.pem.crt", directory / "claim.key")
    write_cert(found.cert, cert)
    write_key(found.key, key)
    return found


@pytest.fixture
def service(mosquitto: Mosquitto, pki: PkiBundle) -> Iterator[FleetService]:
    files = pki.files
    running = FleetService(
        mosquitto.host,
        mosquitto.port,
        files.ca_cert,
        files.ca_key,
        files.client_cert,
        files.client_key,
        template=TEMPLATE,
    ).start()
    yield running
    running.stop()


@pytest.fixture
def provision(claim: Claim, pki: PkiBundle, tmp_path: Path) -> Callable[..., FleetResult]:
    """``provision(port, **overrides)``: provision_by_claim as the CLI calls it."""

    def run(port: int, **overrides: Any) -> FleetResult:
        arguments: dict[str, Any] = {
            "endpoint": LOCALHOST,
            "port": port,
            "ca": pki.files.ca_cert,
            "claim_cert": claim.cert,
            "claim_key": claim.key,
            "template": TEMPLATE,
            "parameters": {"SerialNumber": SERIAL},
            "client_id": SERIAL,
            "out_dir": tmp_path / "out",
            "timeout": 10.0,
        }
        arguments.update(overrides)
        return provision_by_claim(**arguments)

    return run


def spki(public_key: Any) -> bytes:
    der: bytes = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return der


def directory_listing(path: Path) -> list[str]:
    """Every name in ``path``, hidden temporaries included ([] when it does not exist)."""
    return sorted(entry.name for entry in path.iterdir()) if path.exists() else []


# --------------------------------------------------------------------------- success


def test_provisioning_writes_a_device_key_and_a_certificate_for_it(
    mosquitto: Mosquitto,
    service: FleetService,
    provision: Callable[..., FleetResult],
    pki: PkiBundle,
) -> None:
    result = provision(mosquitto.port)

    assert result.thing_name == f"wsn-{SERIAL}"  # named by the template
    assert result.device_configuration == {"topic": f"dt/wsn/wsn-{SERIAL}/telemetry"}
    assert not result.already_provisioned
    assert directory_listing(result.key_path.parent) == sorted([KEY_FILE, CERT_FILE, RECORD_FILE])

    # The key: mode 0600, and the certificate carries its public key.
    assert stat.S_IMODE(result.key_path.stat().st_mode) == 0o600
    key = serialization.load_pem_private_key(result.key_path.read_bytes(), password=None)
    cert = x509.load_pem_x509_certificate(result.cert_path.read_bytes())
    assert spki(cert.public_key()) == spki(key.public_key())
    # The certificate verifies against the CA, and its id is AWS IoT's (SHA-256 of DER).
    ca_cert = x509.load_pem_x509_certificate(pki.files.ca_cert.read_bytes())
    cert.verify_directly_issued_by(ca_cert)
    der = cert.public_bytes(serialization.Encoding.DER)
    assert result.certificate_id == hashlib.sha256(der).hexdigest()

    # Only a CSR went out: no private key material in any request.
    assert len(service.csr_requests) == 1
    assert "PRIVATE KEY" not in json.dumps(service.csr_requests + service.register_requests)
    csr = x509.load_pem_x509_csr(service.csr_requests[0]["certificateSigningRequest"].encode())
    assert spki(csr.public_key()) == spki(key.public_key())

    # RegisterThing named that certificate, with the template's parameter.
    [registration] = service.registrations
    assert registration.certificate_id == result.certificate_id
    assert registration.parameters == {"SerialNumber": SERIAL}

    record = json.loads(result.record_path.read_text())
    assert record["thingName"] == result.thing_name
    assert record["certificateId"] == result.certificate_id
    assert record["template"] == TEMPLATE
    assert service.errors == []


def test_the_new_certificate_connects_to_the_broker_with_mutual_tls(
    mosquitto: Mosquitto,
    service: FleetService,
    provision: Callable[..., FleetResult],
    mqtt_connect: Callable[..., str],
    tls_context: Callable[..., Any],
) -> None:
    result = provision(mosquitto.port)
    context = tls_context(cert=result.cert_path, key=result.key_path)
    assert mqtt_connect(mosquitto, context=context) == "connected"
    # ... and publishes as the thing it became.
    acks = paho_publish(
        mosquitto.host,
        mosquitto.port,
        context,
        f"dt/wsn/{result.thing_name}/telemetry",
        [b"{}"],
        client_id=result.thing_name,
    )
    assert acks == [0]


def test_a_second_run_finds_the_first_and_does_nothing(
    mosquitto: Mosquitto, service: FleetService, provision: Callable[..., FleetResult]
) -> None:
    first = provision(mosquitto.port)
    before = {
        path: (path.read_bytes(), path.stat().st_mtime_ns)
        for path in (first.key_path, first.cert_path, first.record_path)
    }
    mosquitto.stop()  # the rerun must not need the network at all

    again = provision(mosquitto.port)

    assert again.already_provisioned
    assert (again.thing_name, again.certificate_id) == (first.thing_name, first.certificate_id)
    assert again.device_configuration == first.device_configuration
    assert {path: (path.read_bytes(), path.stat().st_mtime_ns) for path in before} == before
    assert len(service.csr_requests) == 1
    assert len(service.register_requests) == 1


def test_force_provisions_again_with_a_new_key(
    mosquitto: Mosquitto, service: FleetService, provision: Callable[..., FleetResult]
) -> None:
    first = provision(mosquitto.port)
    old_key = first.key_path.read_bytes()
    second = provision(mosquitto.port, force=True)
    assert not second.already_provisioned
    assert second.certificate_id != first.certificate_id
    assert second.key_path.read_bytes() != old_key
    assert stat.S_IMODE(second.key_path.stat().st_mode) == 0o600
    assert len(service.registrations) == 2
    assert directory_listing(second.key_path.parent) == sorted([KEY_FILE, CERT_FILE, RECORD_FILE])


def test_an_incomplete_directory_is_reported_not_overwritten(
    provision: Callable[..., FleetResult], tmp_path: Path
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / KEY_FILE).write_text("a key from elsewhere")
    with pytest.raises(FleetProvisioningError, match="--force") as caught:
        provision(free_port())
    assert "not the result of a finished fleet provisioning run" in str(caught.value)
    assert (out / KEY_FILE).read_text() == "a key from elsewhere"


# --------------------------------------------------------------------------- rejections


def test_a_rejected_csr_says_why_and_leaves_no_files(
    mosquitto: Mosquitto,
    service: FleetService,
    provision: Callable[..., FleetResult],
    tmp_path: Path,
) -> None:
    service.csr_rejection = error_payload(403, "AccessDenied", "Not authorized")
    with pytest.raises(FleetProvisioningError) as caught:
        provision(mosquitto.port)
    error = caught.value
    assert (error.step, error.status_code, error.error_code) == (
        "CreateCertificateFromCsr",
        403,
        "AccessDenied",
    )
    message = str(error)
    assert "403 AccessDenied: Not authorized" in message
    assert "$aws/certificates/create-from-csr/*" in message
    assert f"$aws/provisioning-templates/{TEMPLATE}/provision/*" in message
    assert service.register_requests == []
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("overrides", "status", "code", "hint"),
    [
        pytest.param(
            {"template": "no-such-template"},
            404,
            "ResourceNotFound",
            "describe-provisioning-template --template-name no-such-template",
            id="unknown-template",
        ),
        pytest.param(
            {"parameters": {}}, 400, "InvalidParameters", "(sent: none)", id="missing-serial"
        ),
    ],
)
def test_a_rejected_register_thing_says_why_and_leaves_no_files(
    mosquitto: Mosquitto,
    service: FleetService,
    provision: Callable[..., FleetResult],
    tmp_path: Path,
    overrides: dict[str, Any],
    status: int,
    code: str,
    hint: str,
) -> None:
    with pytest.raises(FleetProvisioningError) as caught:
        provision(mosquitto.port, **overrides)
    error = caught.value
    assert (error.step, error.status_code, error.error_code) == ("RegisterThing", status, code)
    assert f"{status} {code}" in str(error)
    assert hint in str(error)
    assert "PENDING_ACTIVATION" in str(error)
    assert len(service.issued) == 1  # a certificate was created ...
    assert service.registrations == []  # ... but never registered
    assert not (tmp_path / "out").exists()  # and nothing is left on the device


def test_a_certificate_for_another_key_is_refused_before_registering(
    mosquitto: Mosquitto,
    service: FleetService,
    provision: Callable[..., FleetResult],
    tmp_path: Path,
) -> None:
    service.wrong_key = True
    with pytest.raises(FleetProvisioningError, match="does not carry this device's public key"):
        provision(mosquitto.port)
    assert service.register_requests == []
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- failures


def test_an_unreachable_broker_fails_fast_with_what_to_check(
    provision: Callable[..., FleetResult], tmp_path: Path
) -> None:
    started = time.monotonic()
    with pytest.raises(FleetProvisioningError, match=r"connection refused by 127\.0\.0\.1:"):
        provision(free_port(), timeout=5.0)
    assert time.monotonic() - started < 5.0
    assert not (tmp_path / "out").exists()


def test_a_silent_endpoint_fails_within_the_timeout(
    provision: Callable[..., FleetResult], tmp_path: Path
) -> None:
    # Accepts TCP and never says a word: the TLS handshake never finishes.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind((LOCALHOST, 0))
        listener.listen(4)
        started = time.monotonic()
        with pytest.raises(FleetProvisioningError, match=r"no connection to .* within 1.5 s"):
            provision(listener.getsockname()[1], timeout=1.5)
        elapsed = time.monotonic() - started
    assert 1.4 < elapsed < 3.0
    assert not (tmp_path / "out").exists()


def test_no_answer_from_the_service_times_out_with_the_policy_to_check(
    mosquitto: Mosquitto,
    service: FleetService,
    provision: Callable[..., FleetResult],
    tmp_path: Path,
) -> None:
    service.silent = True
    started = time.monotonic()
    with pytest.raises(FleetProvisioningError) as caught:
        provision(mosquitto.port, timeout=2.0)
    elapsed = time.monotonic() - started
    assert elapsed < 4.0
    assert caught.value.step == "CreateCertificateFromCsr"
    assert "no answer to CreateCertificateFromCsr within 2 s" in str(caught.value)
    assert "iot:Publish, iot:Subscribe and iot:Receive" in str(caught.value)
    assert not (tmp_path / "out").exists()


def test_a_claim_certificate_the_broker_does_not_trust_fails_the_handshake(
    mosquitto: Mosquitto, provision: Callable[..., FleetResult], pki: PkiBundle, tmp_path: Path
) -> None:
    with pytest.raises(FleetProvisioningError, match=r"TLS handshake with .* failed") as caught:
        provision(mosquitto.port, claim_cert=pki.rogue_cert, claim_key=pki.rogue_key)
    assert "ACTIVE" in str(caught.value)
    assert not (tmp_path / "out").exists()


def test_a_policy_without_the_provisioning_topics_is_named(
    mosquitto_factory: Callable[..., Mosquitto],
    pki: PkiBundle,
    provision: Callable[..., FleetResult],
    tmp_path: Path,
) -> None:
    # The claim identity may request certificates but not use the template's topics.
    acl = "\n".join(
        [
            "user test-gw",
            "topic readwrite $aws/#",
            f"user {CLAIM_CN}",
            "topic write $aws/certificates/create-from-csr/json",
            "topic read $aws/certificates/create-from-csr/json/+",
            "",
        ]
    )
    broker = mosquitto_factory(acl_text=acl, extra_config="use_identity_as_username true")
    files = pki.files
    running = FleetService(
        broker.host, broker.port, files.ca_cert, files.ca_key, files.client_cert, files.client_key
    ).start()
    started = time.monotonic()
    try:
        with pytest.raises(FleetProvisioningError) as caught:
            provision(broker.port, timeout=3.0)
    finally:
        running.stop()
    # Mosquitto, like AWS IoT, drops the forbidden request without an answer.
    assert time.monotonic() - started < 3.0 + 1.5
    assert caught.value.step == "RegisterThing"
    assert f"$aws/provisioning-templates/{TEMPLATE}/provision/*" in str(caught.value)
    assert len(running.issued) == 1 and running.registrations == []
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("missing", ["claim_cert", "claim_key"])
def test_a_missing_claim_file_is_named_before_any_connection(
    provision: Callable[..., FleetResult], tmp_path: Path, missing: str
) -> None:
    absent = tmp_path / "absent.pem"
    with pytest.raises(FleetProvisioningError, match=re.escape(f"{absent}: cannot read the claim")):
        provision(free_port(), **{missing: absent})
    assert not (tmp_path / "out").exists()


def test_a_claim_key_of_another_certificate_is_named(
    provision: Callable[..., FleetResult], pki: PkiBundle
) -> None:
    with pytest.raises(FleetProvisioningError, match="is not the key of the claim certificate"):
        provision(free_port(), claim_key=pki.files.client_key)


# --------------------------------------------------------------------------- documents


def test_claim_policy_allows_exactly_the_provisioning_topics() -> None:
    policy = claim_policy_document("eu-west-1", "123456789012", TEMPLATE)
    arn = "arn:aws:iot:eu-west-1:123456789012"
    csr = "$aws/certificates/create-from-csr/json"
    provision_topic = f"$aws/provisioning-templates/{TEMPLATE}/provision/json"
    answers = [f"{t}/{s}" for t in (csr, provision_topic) for s in ("accepted", "rejected")]
    by_action = {statement["Action"]: statement["Resource"] for statement in policy["Statement"]}
    assert all(statement["Effect"] == "Allow" for statement in policy["Statement"])
    assert by_action == {
        "iot:Connect": f"{arn}:client/*",
        "iot:Publish": [f"{arn}:topic/{csr}", f"{arn}:topic/{provision_topic}"],
        "iot:Subscribe": [f"{arn}:topicfilter/{topic}" for topic in answers],
        "iot:Receive": [f"{arn}:topic/{topic}" for topic in answers],
    }
    china = claim_policy_document("cn-north-1", "123456789012", TEMPLATE)
    assert china["Statement"][0]["Resource"].startswith("arn:aws-cn:iot:cn-north-1:")
    with pytest.raises(ValueError, match="account"):
        claim_policy_document("eu-west-1", "12345", TEMPLATE)


def _json_blocks(markdown: str) -> list[Any]:
    return [json.loads(block) for block in re.findall(r"```json\n(.*?)```", markdown, re.S)]


def test_the_documentation_shows_the_policy_and_template_the_code_makes() -> None:
    blocks = _json_blocks(DOCS.read_text())
    assert claim_policy_document("eu-west-1", "123456789012", TEMPLATE) in blocks
    assert provisioning_template_document() in blocks


def test_the_cli_provisions_by_claim_and_writes_a_configuration_for_the_thing(
    service: FleetService, claim: Claim, pki: PkiBundle, mosquitto: Mosquitto, tmp_path: Path
) -> None:
    config = tmp_path / "etc" / "gateway.yaml"
    args = [
        "provision",
        "--claim-cert",
        str(claim.cert),
        "--claim-key",
        str(claim.key),
        "--template",
        TEMPLATE,
        "--serial",
        SERIAL,
        "--endpoint",
        mosquitto.host,
        "--port",
        str(mosquitto.port),
        "--ca",
        str(pki.files.ca_cert),
        "--region",
        "eu-west-1",
        "--config",
        str(config),
        "--state-dir",
        str(tmp_path / "state"),
    ]
    assert main(args) == 0
    settings = load_settings(config)
    assert settings.thing == f"wsn-{SERIAL}"
    assert settings.signing.key == "certificate"  # no credentials to register a key
    assert settings.mqtt.cert == config.parent / CERT_FILE
    assert stat.S_IMODE(settings.mqtt.key.stat().st_mode) == 0o600
    assert settings.mqtt.ca == pki.files.ca_cert
    assert settings.shadow.enabled
    before = config.read_bytes()
    assert main(args) == 0  # provisioned already: nothing changes
    assert config.read_bytes() == before
    missing = main(["provision", "--claim-cert", str(claim.cert), "--config", str(config)])
    assert missing == 2
