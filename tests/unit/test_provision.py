"""``wsn-gateway provision`` against moto's AWS IoT server on loopback.

moto stands in for AWS IoT and STS. Two fixes make it behave as AWS does where
provisioning depends on it: certificate ids are the SHA-256 of the DER
certificate (moto's ``use_valid_cert``), and CreateCertificateFromCsr issues a
certificate for the CSR's own public key (moto signs a random key).
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
import requests
from botocore.stub import Stubber
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import NameOID
from moto.core.config import default_user_config
from moto.iot.models import IoTBackend
from moto.server import ThreadedMotoServer

from gateway import provision_cli
from gateway.config import load_settings
from gateway.files import root_ca_pem
from gateway.provision import (
    KEY_ATTRIBUTE,
    KID_ATTRIBUTE,
    Provisioner,
    ProvisionError,
    ProvisionOptions,
    clients,
)
from gateway.signing import load_or_create_ed25519

REGION = "eu-west-1"
ACCOUNT = "123456789012"
THING = "greenhouse-1"
VAR = "${iot:Connection.Thing.ThingName}"
ARN = f"arn:aws:iot:{REGION}:{ACCOUNT}"
#: SHA-256 fingerprints published at https://www.amazontrust.com/repository/
AMAZON_ROOT_FINGERPRINTS = {
    "Amazon Root CA 1": "8ecde6884f3d87b1125ba31ac3fcb13d7016de7f57cc904fe1cb97c6ae98196e",
    "Amazon Root CA 3": "18ce6cfe7bf14e60b2e347b8dfe868cb31d02ebb3ada271569f50343b46db3a4",
}

_CA_KEY = ec.generate_private_key(ec.SECP256R1())
_CA_NAME = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "moto stand-in for AWS IoT CA")])


def _create_certificate_from_csr(self: IoTBackend, csr: str, set_as_active: bool) -> Any:
    """What AWS does: a certificate for the CSR's public key (moto signs a random one)."""
    request = x509.load_pem_x509_csr(csr.encode())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "AWS IoT Certificate")]))
        .issuer_name(_CA_NAME)
        .public_key(request.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=3650))
        .sign(_CA_KEY, hashes.SHA256())
    )
    pem = cert.public_bytes(serialization.Encoding.PEM).decode()
    return self.register_certificate(pem, None, set_as_active, "INACTIVE")


_DESCRIBE_ENDPOINT = IoTBackend.describe_endpoint


def _stable_describe_endpoint(self: IoTBackend, endpoint_type: str) -> Any:
    """What AWS does: one endpoint per account and type (moto makes a new one each call)."""
    cache = self.__dict__.setdefault("_stable_endpoints", {})
    if endpoint_type not in cache:
        cache[endpoint_type] = _DESCRIBE_ENDPOINT(self, endpoint_type)
    return cache[endpoint_type]


@pytest.fixture(scope="module")
def moto_url() -> Iterator[str]:
    default_user_config.setdefault("iot", {})["use_valid_cert"] = True
    patch = pytest.MonkeyPatch()
    patch.setattr(IoTBackend, "create_certificate_from_csr", _create_certificate_from_csr)
    patch.setattr(IoTBackend, "describe_endpoint", _stable_describe_endpoint)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()
    patch.undo()
    default_user_config["iot"].pop("use_valid_cert", None)


@pytest.fixture
def aws(moto_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """An IoT client on a fresh moto account state, with the environment boto3 reads."""
    for name, value in {
        "AWS_ENDPOINT_URL": moto_url,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": REGION,
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    requests.post(f"{moto_url}/moto-api/reset", timeout=10)
    yield boto3.client("iot", region_name=REGION)


def _options(tmp_path: Path, **changes: Any) -> ProvisionOptions:
    base: dict[str, Any] = {
        "thing": THING,
        "region": REGION,
        "config_path": tmp_path / "etc" / "gateway.yaml",
        "state_dir": tmp_path / "state",
    }
    base.update(changes)
    return ProvisionOptions(**base)


def _provision(options: ProvisionOptions, lines: list[str] | None = None) -> Any:
    iot, sts = clients(options.region)
    say = lines.append if lines is not None else (lambda _text: None)
    return Provisioner(options, iot=iot, sts=sts, say=say).run()


def _policy(aws: Any, name: str = "wsn-gateway") -> dict[str, Any]:
    return json.loads(aws.get_policy(policyName=name)["policyDocument"])


def _expected_statements(
    *, telemetry: str = f"dt/wsn/{VAR}/telemetry", role_alias: str | None = None
) -> list[dict[str, Any]]:
    shadow = f"$aws/things/{VAR}/shadow"
    responses = ["get/accepted", "get/rejected", "update/accepted", "update/rejected"]
    responses.append("update/delta")
    statements: list[dict[str, Any]] = [
        {
            "Sid": "ConnectAsItsOwnThing",
            "Effect": "Allow",
            "Action": "iot:Connect",
            "Resource": f"{ARN}:client/{VAR}",
            "Condition": {"Bool": {"iot:Connection.Thing.IsAttached": "true"}},
        },
        {
            "Sid": "PublishOnItsOwnTopics",
            "Effect": "Allow",
            "Action": "iot:Publish",
            "Resource": [
                f"{ARN}:topic/{telemetry}",
                f"{ARN}:topic/dt/wsn/{VAR}/status",
                f"{ARN}:topic/{shadow}/get",
                f"{ARN}:topic/{shadow}/update",
            ],
        },
        {
            "Sid": "RetainItsStatus",
            "Effect": "Allow",
            "Action": "iot:RetainPublish",
            "Resource": f"{ARN}:topic/dt/wsn/{VAR}/status",
        },
        {
            "Sid": "SubscribeToItsShadow",
            "Effect": "Allow",
            "Action": "iot:Subscribe",
            "Resource": [f"{ARN}:topicfilter/{shadow}/{r}" for r in responses],
        },
        {
            "Sid": "ReceiveFromItsShadow",
            "Effect": "Allow",
            "Action": "iot:Receive",
            "Resource": [f"{ARN}:topic/{shadow}/{r}" for r in responses],
        },
    ]
    if role_alias:
        statements.append(
            {
                "Sid": "CredentialsForItsLogs",
                "Effect": "Allow",
                "Action": "iot:AssumeRoleWithCertificate",
                "Resource": f"{ARN}:rolealias/{role_alias}",
            }
        )
    return statements


def test_fresh_provisioning_creates_everything_and_writes_a_working_configuration(
    aws: Any, tmp_path: Path
) -> None:
    options = _options(tmp_path)
    result = _provision(options)

    # The key was made here, only its owner can read it, and the certificate is for it.
    key = serialization.load_pem_private_key(options.key_path.read_bytes(), password=None)
    assert stat.S_IMODE(options.key_path.stat().st_mode) == 0o600
    cert = x509.load_pem_x509_certificate(options.cert_path.read_bytes())
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    assert cert.public_key().public_bytes(serialization.Encoding.DER, spki) == (
        key.public_key().public_bytes(serialization.Encoding.DER, spki)
    )
    cert_id = hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()
    assert result.certificate_id == cert_id

    # In AWS IoT: active certificate, attached to the thing, with the policy attached.
    description = aws.describe_certificate(certificateId=cert_id)["certificateDescription"]
    assert description["status"] == "ACTIVE"
    assert aws.list_thing_principals(thingName=THING)["principals"] == [result.certificate_arn]
    attached = aws.list_attached_policies(target=result.certificate_arn)["policies"]
    assert [p["policyName"] for p in attached] == ["wsn-gateway"]

    # The signing key is registered where the cloud side reads it.
    signer = load_or_create_ed25519(options.signing_key_path)
    public = signer.key.public_key()
    assert isinstance(public, ed25519.Ed25519PublicKey)
    attributes = aws.describe_thing(thingName=THING)["attributes"]
    assert attributes[KID_ATTRIBUTE] == signer.kid == result.signing_kid
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    padded = attributes[KEY_ATTRIBUTE] + "=" * (-len(attributes[KEY_ATTRIBUTE]) % 4)
    assert base64.urlsafe_b64decode(padded) == raw

    # The configuration is valid and points at what was written.
    settings = load_settings(options.config_path)
    endpoint = aws.describe_endpoint(endpointType="iot:Data-ATS")["endpointAddress"]
    assert endpoint.endswith(f"-ats.iot.{REGION}.amazonaws.com")
    assert settings.thing == THING
    assert settings.mqtt.endpoint == endpoint
    assert (settings.mqtt.cert, settings.mqtt.key, settings.mqtt.ca) == (
        options.cert_path,
        options.key_path,
        options.ca_path,
    )
    assert settings.telemetry_topic == f"dt/wsn/{THING}/telemetry"
    assert settings.signing_key_path == options.signing_key_path
    assert [s.driver for s in settings.sensors] == ["thermal"]
    assert settings.shadow.enabled


def test_the_policy_is_least_privilege_key_by_key(aws: Any, tmp_path: Path) -> None:
    _provision(_options(tmp_path))
    document = _policy(aws)
    assert set(document) == {"Version", "Statement"}
    assert document["Version"] == "2012-10-17"
    expected = _expected_statements()
    assert [s["Sid"] for s in document["Statement"]] == [s["Sid"] for s in expected]
    for got, want in zip(document["Statement"], expected, strict=True):
        assert set(got) == set(want), got["Sid"]
        for key in want:
            assert got[key] == want[key], f"{got['Sid']}.{key}"
    # Nothing anywhere grants a wildcard action or a resource outside the thing's own.
    for statement in document["Statement"]:
        assert statement["Effect"] == "Allow"
        assert "*" not in json.dumps(statement["Action"])
        resources = statement["Resource"]
        for resource in [resources] if isinstance(resources, str) else resources:
            assert resource.startswith(f"{ARN}:")
            assert "*" not in resource
            assert VAR in resource or resource.endswith("rolealias/")


def test_running_again_changes_nothing(aws: Any, tmp_path: Path) -> None:
    options = _options(tmp_path)
    first = _provision(options)
    files = {p: p.read_bytes() for p in (options.cert_path, options.key_path, options.ca_path)}
    files[options.config_path] = options.config_path.read_bytes()
    second = _provision(options)
    assert second.changes == []
    assert second.certificate_id == first.certificate_id
    assert {p: p.read_bytes() for p in files} == files
    assert len(aws.list_certificates()["certificates"]) == 1
    assert len(aws.list_policy_versions(policyName="wsn-gateway")["policyVersions"]) == 1
    assert not options.config_path.with_name("gateway.yaml.bak").exists()


def test_dry_run_only_looks(aws: Any, tmp_path: Path) -> None:
    options = _options(tmp_path, dry_run=True)
    lines: list[str] = []
    result = _provision(options, lines)
    assert not (tmp_path / "etc").exists()
    assert not (tmp_path / "state").exists()
    assert aws.list_things()["things"] == []
    assert aws.list_certificates()["certificates"] == []
    assert aws.list_policies()["policies"] == []
    text = "\n".join(lines)
    for planned in ("would generate an EC P-256", "would create thing", "would create policy"):
        assert planned in text
    assert VAR in text  # the policy document it would create is shown
    assert len(result.changes) >= 6


def test_a_thing_owned_by_another_certificate_is_not_taken_over(aws: Any, tmp_path: Path) -> None:
    _provision(_options(tmp_path / "first"))
    with pytest.raises(ProvisionError, match="--adopt") as caught:
        _provision(_options(tmp_path / "second"))
    assert "already exists" in str(caught.value)
    assert not (tmp_path / "second" / "etc" / "gateway.yaml").exists()
    # The old owner keeps its certificate; --adopt attaches the new one beside it.
    result = _provision(_options(tmp_path / "second", adopt=True))
    principals = aws.list_thing_principals(thingName=THING)["principals"]
    assert result.certificate_arn in principals
    assert len(principals) == 2


def test_a_shared_policy_with_another_document_is_replaced_only_when_asked(
    aws: Any, tmp_path: Path
) -> None:
    aws.create_policy(
        policyName="wsn-gateway",
        policyDocument=json.dumps(
            {
                "Version": "2012-10-17",
                "Statement": [{"Effect": "Allow", "Action": "iot:*", "Resource": "*"}],
            }
        ),
    )
    with pytest.raises(ProvisionError, match="--update-policy"):
        _provision(_options(tmp_path))
    _provision(_options(tmp_path, update_policy=True))
    assert _policy(aws)["Statement"] == _expected_statements()
    versions = aws.list_policy_versions(policyName="wsn-gateway")["policyVersions"]
    assert [v["isDefaultVersion"] for v in sorted(versions, key=lambda v: v["versionId"])] == [
        False,
        True,
    ]


def test_basic_ingest_publishes_to_the_rule_and_the_policy_allows_exactly_that(
    aws: Any, tmp_path: Path
) -> None:
    options = _options(tmp_path, basic_ingest_rule="wsn_telemetry", policy_name="wsn-ingest")
    _provision(options)
    settings = load_settings(options.config_path)
    assert settings.telemetry_topic == f"$aws/rules/wsn_telemetry/dt/wsn/{THING}/telemetry"
    expected = _expected_statements(telemetry=f"$aws/rules/wsn_telemetry/dt/wsn/{VAR}/telemetry")
    assert _policy(aws, "wsn-ingest")["Statement"] == expected


def test_role_alias_turns_on_cloudwatch_with_the_credentials_provider(
    aws: Any, tmp_path: Path
) -> None:
    with pytest.raises(ProvisionError, match=r"deploy cloud/template\.yaml"):
        _provision(_options(tmp_path, role_alias="wsn-gateway-logs"))
    aws.create_role_alias(
        roleAlias="wsn-gateway-logs", roleArn=f"arn:aws:iam::{ACCOUNT}:role/wsn-gateway-logs"
    )
    options = _options(tmp_path, role_alias="wsn-gateway-logs")
    result = _provision(options)
    settings = load_settings(options.config_path)
    cw = settings.cloudwatch
    assert cw.enabled
    assert cw.region == REGION
    assert cw.role_alias == "wsn-gateway-logs"
    assert cw.credentials_endpoint == result.credentials_endpoint
    assert ".credentials.iot." in (cw.credentials_endpoint or "")
    assert _policy(aws)["Statement"] == _expected_statements(role_alias="wsn-gateway-logs")


def test_an_existing_configuration_keeps_its_comments_and_sensors(aws: Any, tmp_path: Path) -> None:
    options = _options(tmp_path)
    options.config_path.parent.mkdir(parents=True)
    original = (
        "# my greenhouse\n"
        "thing: old-name\n"
        f"state_dir: {tmp_path / 'state'}\n"
        "mqtt:\n"
        "  endpoint: localhost  # was a test broker\n"
        "  ca: ca.pem\n"
        "  cert: c.pem\n"
        "  key: k.pem\n"
        "  keepalive: 120\n"
        "sensors:\n"
        "  - name: tunnel\n"
        "    driver: bme280\n"
        "    bus: sim\n"
        "    address: 0x76\n"
    )
    options.config_path.write_text(original)
    _provision(options)
    text = options.config_path.read_text()
    assert "# my greenhouse" in text
    assert "address: 0x76" in text
    settings = load_settings(options.config_path)
    assert settings.thing == THING
    assert settings.mqtt.keepalive == 120
    assert [s.name for s in settings.sensors] == ["tunnel"]
    assert options.config_path.with_name("gateway.yaml.bak").read_text() == original


def test_an_inactive_certificate_is_reported_with_the_fix(aws: Any, tmp_path: Path) -> None:
    options = _options(tmp_path)
    result = _provision(options)
    aws.update_certificate(certificateId=result.certificate_id, newStatus="INACTIVE")
    with pytest.raises(ProvisionError, match=r"update-certificate .* --new-status ACTIVE"):
        _provision(options)


def test_missing_permissions_name_the_action_and_the_fix(aws: Any, tmp_path: Path) -> None:
    iot, sts = clients(REGION)
    stub = Stubber(iot)
    stub.add_response("describe_endpoint", {"endpointAddress": "x-ats.iot.eu-west-1.amazonaws.com"})
    stub.add_client_error(
        "create_certificate_from_csr",
        service_error_code="AccessDeniedException",
        service_message="User: arn:aws:iam::123456789012:user/pi is not authorized",
        http_status_code=403,
    )
    with stub, pytest.raises(ProvisionError) as caught:
        Provisioner(_options(tmp_path), iot=iot, sts=sts, say=lambda _: None).run()
    message = str(caught.value)
    assert "iot:CreateCertificateFromCsr" in message
    assert "--print-iam-policy" in message
    assert not (tmp_path / "etc" / "device.pem.crt").exists()


def test_no_credentials_says_how_to_give_them(
    aws: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    with pytest.raises(ProvisionError, match="aws configure"):
        _provision(_options(tmp_path))


def test_the_bundled_root_cas_are_amazons() -> None:
    found = {}
    for cert in x509.load_pem_x509_certificates(root_ca_pem()):
        name = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
        found[name] = hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()
    assert found == AMAZON_ROOT_FINGERPRINTS


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", "provision", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=60,
        check=False,
    )


def test_cli_provisions_and_reports_bad_usage_with_exit_2(aws: Any, tmp_path: Path) -> None:
    config = tmp_path / "etc" / "gateway.yaml"
    common = ["--region", REGION, "--config", str(config), "--state-dir", str(tmp_path / "s")]
    done = _cli("--thing", THING, *common)
    assert done.returncode == 0, done.stderr
    assert f"provisioned {THING}" in done.stdout
    assert load_settings(config).thing == THING
    again = _cli("--thing", THING, *common, "--dry-run")
    assert again.returncode == 0, again.stderr
    assert "0 change(s) planned" in again.stdout

    missing = _cli(*common)
    assert missing.returncode == 2
    assert "--thing is required" in missing.stderr
    bad = _cli("--thing", "no spaces allowed", *common)
    assert bad.returncode == 2
    assert "thing name" in bad.stderr
    iam = _cli("--print-iam-policy")
    assert iam.returncode == 0
    actions = json.loads(iam.stdout)["Statement"][0]["Action"]
    assert "iot:CreateCertificateFromCsr" in actions
    policy = _cli("--region", REGION, "--print-policy", "--basic-ingest", "wsn_telemetry")
    assert policy.returncode == 0, policy.stderr
    assert f"$aws/rules/wsn_telemetry/dt/wsn/{VAR}/telemetry" in policy.stdout


def test_cli_options_default_to_the_configurations_state_dir(tmp_path: Path) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text("thing: x\nstate_dir: ./here\n")
    parser = __import__("gateway.cli", fromlist=["build_parser"]).build_parser()
    args = parser.parse_args(["provision", "--thing", "t", "--region", REGION, "-c", str(config)])
    options = provision_cli._options(args, thing="t")
    assert options.state_dir == tmp_path / "here"


def test_the_example_configuration_install_sh_copies_is_provisioned_in_place(
    aws: Any, tmp_path: Path
) -> None:
    """systemd/install.sh puts config/gateway.example.yaml in place; provision fills it in."""
    options = _options(tmp_path, role_alias="wsn-gateway-logs")
    aws.create_role_alias(
        roleAlias="wsn-gateway-logs", roleArn=f"arn:aws:iam::{ACCOUNT}:role/wsn-gateway-logs"
    )
    options.config_path.parent.mkdir(parents=True)
    example = Path(__file__).resolve().parents[2] / "config" / "gateway.example.yaml"
    options.config_path.write_bytes(example.read_bytes())
    _provision(options)
    settings = load_settings(options.config_path)
    assert settings.thing == THING
    assert settings.mqtt.cert == options.cert_path
    assert settings.cloudwatch.enabled
    assert settings.sensors[0].name == "board"
    # Every explanation in the example is still there.
    comments = [line for line in example.read_text().splitlines() if line.lstrip().startswith("#")]
    text = options.config_path.read_text()
    assert all(comment.strip() in text for comment in comments)
    assert _provision(options).changes == []


def test_cli_names_a_file_it_cannot_write_instead_of_a_traceback(aws: Any, tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    done = _cli(
        "--thing",
        THING,
        "--region",
        REGION,
        "--config",
        str(blocker / "gateway.yaml"),
        "--state-dir",
        str(tmp_path / "s"),
    )
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert "not-a-directory" in done.stderr
    assert aws.list_things()["things"] == []  # it stopped before changing anything
