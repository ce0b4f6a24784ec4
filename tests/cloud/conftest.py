"""Fixtures of the cloud suite: moto's server on 127.0.0.1, the template's tables and
queue created in it, things registered in its IoT, and batches of the real daemon.

- ``moto_endpoint`` (session): a ThreadedMotoServer on 127.0.0.1, any free port.
- ``aws`` (per test): the environment pointed at it (``AWS_ENDPOINT_URL``, dummy
  credentials, eu-west-1), moto reset, the functions' client and key caches cleared;
  boto3 clients for the test's own calls.
- ``stack`` (per test): the batches and gateways tables (key schemas read from
  cloud/template.yaml), the rejects queue, and the functions' environment variables.
- ``daemon_run(signing)``: payloads the real ``wsn-gateway run`` published to the
  Mosquitto fixture, collected by the collector fixture; one daemon run per signing
  mode ("ed25519", "certificate") per session, shared by the tests (read only).
"""

from __future__ import annotations

import base64
import json
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

import boto3
import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from moto.core.config import default_user_config
from moto.server import ThreadedMotoServer

REPO = Path(__file__).resolve().parents[2]
TEMPLATE = REPO / "cloud" / "template.yaml"
FUNCTIONS = REPO / "cloud" / "functions"
sys.path.insert(0, str(REPO / "tests" / "integration"))  # daemon_harness
sys.path.insert(0, str(FUNCTIONS))  # ingest, silence, lambda_support: as in the Lambda zip

import ingest  # noqa: E402
import lambda_support  # noqa: E402
from daemon_harness import (  # noqa: E402
    TELEMETRY_TOPIC,
    GatewayProcess,
    gateway_config,
    wait_until,
    write_config,
)

from gateway import verify  # noqa: E402

if TYPE_CHECKING:
    from conftest import Collector, Mosquitto, PkiBundle

REGION = "eu-west-1"


# --------------------------------------------------------------------------- the template


class _CfnLoader(yaml.SafeLoader):
    """YAML with CloudFormation's short tags (!Ref, !GetAtt, !Sub, ...) as plain mappings."""


def _cfn_tag(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> dict[str, Any]:
    name = "Ref" if suffix == "Ref" else f"Fn::{suffix}"
    if isinstance(node, yaml.ScalarNode):
        value: Any = loader.construct_scalar(node)
        if suffix == "GetAtt":
            value = str(value).split(".", 1)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)  # type: ignore[arg-type]
    return {name: value}


_CfnLoader.add_multi_constructor("!", _cfn_tag)


def load_template() -> dict[str, Any]:
    """cloud/template.yaml as a dict (short tags as their long forms)."""
    loaded: dict[str, Any] = yaml.load(TEMPLATE.read_text(), Loader=_CfnLoader)
    return loaded


def resource(template: dict[str, Any], name: str) -> dict[str, Any]:
    found: dict[str, Any] = template["Resources"][name]
    return found


# --------------------------------------------------------------------------- moto


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """moto's server on 127.0.0.1 (a free port), serving every AWS API the suite uses."""
    # Real AWS IoT certificate ids are the SHA-256 of the DER certificate; moto does
    # that only when told (it hashes the PEM text by default). Its server runs in
    # this process, so its configuration is this process's.
    previous = dict(default_user_config["iot"])
    default_user_config["iot"]["use_valid_cert"] = True
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()
    default_user_config["iot"] = previous  # type: ignore[typeddict-item]


@dataclass
class Aws:
    """boto3 clients on moto for the tests' own calls."""

    endpoint: str

    def client(self, service: str) -> Any:
        return boto3.client(
            service,
            endpoint_url=self.endpoint,
            region_name=REGION,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )


@pytest.fixture
def aws(moto_endpoint: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Aws]:
    """A clean moto, and this process's environment pointed at it (as the Lambda's would be)."""
    request = urllib.request.Request(f"{moto_endpoint}/moto-api/reset", method="POST")
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("AWS_REGION", REGION)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    lambda_support.client.cache_clear()
    ingest.clear_key_cache()
    yield Aws(moto_endpoint)
    lambda_support.client.cache_clear()
    ingest.clear_key_cache()


# --------------------------------------------------------------------------- the stack


def _plain(value: Any) -> Any:
    """DynamoDB's Decimals as int/float, recursively (for comparisons)."""
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


@dataclass
class Stack:
    """The template's data resources in moto, and helpers to look into them."""

    aws: Aws
    batches_table: str
    gateways_table: str
    rejects_queue_url: str

    def __post_init__(self) -> None:
        self.dynamodb = self.aws.client("dynamodb")
        self.iot = self.aws.client("iot")
        self.sqs = self.aws.client("sqs")
        resource = boto3.resource(
            "dynamodb",
            endpoint_url=self.aws.endpoint,
            region_name=REGION,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )
        self.batches = resource.Table(self.batches_table)
        self.gateways = resource.Table(self.gateways_table)

    # --- DynamoDB ------------------------------------------------------------------------
    def items(self, pk: str | None = None) -> list[dict[str, Any]]:
        """Every stored batch (of one partition), numbers as int/float, in (pk, seq) order."""
        found: list[dict[str, Any]] = []
        kwargs: dict[str, Any] = {"ConsistentRead": True}
        while True:
            page = self.batches.scan(**kwargs)
            found.extend(page["Items"])
            if "LastEvaluatedKey" not in page:
                break
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]
        items = [_plain(item) for item in found if pk is None or item["pk"] == pk]
        return sorted(items, key=lambda item: (item["pk"], item["seq"]))

    def item(self, pk: str, seq: int) -> dict[str, Any] | None:
        response = self.batches.get_item(Key={"pk": pk, "seq": seq}, ConsistentRead=True)
        return _plain(response["Item"]) if "Item" in response else None

    def gateway(self, thing: str) -> dict[str, Any] | None:
        response = self.gateways.get_item(Key={"thing": thing}, ConsistentRead=True)
        return _plain(response["Item"]) if "Item" in response else None

    # --- SQS -----------------------------------------------------------------------------
    def rejects(self) -> list[dict[str, Any]]:
        """Every message on the rejects queue (received and deleted), body parsed, with
        its message attributes under ``_attributes``."""
        messages: list[dict[str, Any]] = []
        while True:
            response = self.sqs.receive_message(
                QueueUrl=self.rejects_queue_url,
                MaxNumberOfMessages=10,
                MessageAttributeNames=["All"],
                WaitTimeSeconds=0,
            )
            batch = response.get("Messages", [])
            if not batch:
                return messages
            for message in batch:
                body = json.loads(message["Body"])
                body["_attributes"] = {
                    name: value["StringValue"]
                    for name, value in message.get("MessageAttributes", {}).items()
                }
                messages.append(body)
                self.sqs.delete_message(
                    QueueUrl=self.rejects_queue_url, ReceiptHandle=message["ReceiptHandle"]
                )

    # --- IoT -----------------------------------------------------------------------------
    def register_ed25519(self, thing: str, key_file: Path) -> str:
        """Create ``thing`` with the signing-key attributes of ``key_file`` (a PEM private
        or public Ed25519 key); returns the kid."""
        public = load_ed25519_public(key_file)
        kid = verify.kid_for_public_key(public)
        raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        self.create_thing(
            thing,
            {
                ingest.KID_ATTRIBUTE: kid,
                ingest.KEY_ATTRIBUTE: base64.urlsafe_b64encode(raw).rstrip(b"=").decode(),
            },
        )
        return kid

    def create_thing(self, thing: str, attributes: dict[str, str] | None = None) -> None:
        self.iot.create_thing(
            thingName=thing, attributePayload={"attributes": attributes or {}, "merge": False}
        )

    def register_certificate(self, thing: str, cert_file: Path, *, attach: bool = True) -> str:
        """Register a device certificate (without its CA) and attach it to ``thing``;
        returns the certificate id, which is the kid of batches it signs."""
        pem = cert_file.read_text()
        registered = self.iot.register_certificate_without_ca(certificatePem=pem, status="ACTIVE")
        if attach:
            self.iot.attach_thing_principal(thingName=thing, principal=registered["certificateArn"])
        cert_id: str = registered["certificateId"]
        return cert_id


def load_ed25519_public(path: Path) -> ed25519.Ed25519PublicKey:
    data = path.read_bytes()
    if b"PRIVATE KEY" in data:
        private = serialization.load_pem_private_key(data, password=None)
        assert isinstance(private, ed25519.Ed25519PrivateKey)
        return private.public_key()
    public = serialization.load_pem_public_key(data)
    assert isinstance(public, ed25519.Ed25519PublicKey)
    return public


def load_ed25519_private(path: Path) -> ed25519.Ed25519PrivateKey:
    private = serialization.load_pem_private_key(path.read_bytes(), password=None)
    assert isinstance(private, ed25519.Ed25519PrivateKey)
    return private


def _key_schema(template: dict[str, Any], name: str) -> dict[str, Any]:
    properties = resource(template, name)["Properties"]
    return {
        "KeySchema": properties["KeySchema"],
        "AttributeDefinitions": properties["AttributeDefinitions"],
        "BillingMode": properties["BillingMode"],
    }


@pytest.fixture
def stack(aws: Aws, monkeypatch: pytest.MonkeyPatch) -> Stack:
    """The tables (as the template defines them), the rejects queue, and the functions'
    environment (as the template sets it)."""
    template = load_template()
    dynamodb = aws.client("dynamodb")
    names = {"BatchesTable": "wsn-batches", "GatewaysTable": "wsn-gateways"}
    for logical, table in names.items():
        dynamodb.create_table(TableName=table, **_key_schema(template, logical))
    queue_url = aws.client("sqs").create_queue(QueueName="wsn-rejects")["QueueUrl"]
    monkeypatch.setenv("BATCHES_TABLE", names["BatchesTable"])
    monkeypatch.setenv("GATEWAYS_TABLE", names["GatewaysTable"])
    monkeypatch.setenv("REJECTS_QUEUE_URL", queue_url)
    monkeypatch.setenv("METRIC_NAMESPACE", "WsnCloudTest")
    return Stack(aws, names["BatchesTable"], names["GatewaysTable"], queue_url)


# --------------------------------------------------------------------------- the real daemon


@dataclass(frozen=True)
class DaemonRun:
    """What one run of the real daemon published, and where its keys are."""

    signing: str
    messages: list[tuple[str, bytes]]  # (topic, payload) in arrival order, copies included
    state_dir: Path
    cert: Path  # the device certificate it connected with

    @property
    def payloads(self) -> list[bytes]:
        return [payload for _, payload in self.messages]

    def unique(self) -> list[verify.Batch]:
        """Each batch once, in seq order (checked, signatures not)."""
        by_seq = {}
        for payload in self.payloads:
            batch = verify.verify_batch(payload, None)
            by_seq.setdefault(batch.seq, batch)
        return [by_seq[seq] for seq in sorted(by_seq)]

    @property
    def signing_key_file(self) -> Path:
        return self.state_dir / "signing-ed25519.pem"


#: Batches wanted from each daemon run: enough for gaps in the middle of a stream.
MIN_BATCHES = 7


def _run_daemon(
    broker: Mosquitto,
    make_collector: Callable[..., Collector],
    pki: PkiBundle,
    directory: Path,
    signing: str,
) -> DaemonRun:
    files = pki.files
    state_dir = directory / "state"
    config = gateway_config(
        port=broker.port,
        ca=files.ca_cert,
        cert=files.client_cert,
        key=files.client_key,
        state_dir=state_dir,
        sensors={"fast": 0.05, "slow": 0.2},
        batch={"max_age": 0.3},
        signing={"key": signing},
    )
    telemetry = make_collector(broker, TELEMETRY_TOPIC)
    process = GatewayProcess(write_config(directory / "gateway.yaml", config), directory / "log")
    process.start()
    try:
        process.wait_log("connected", timeout=20)
        telemetry.wait_for(lambda messages: len(messages) >= MIN_BATCHES, timeout=30)
        assert process.terminate() == 0, process.describe()
    finally:
        process.kill()
    sealed = process.counters()["batches_sealed"]
    wait_until(
        lambda: (
            {verify.verify_batch(p, None).seq for p in telemetry.payloads()}
            >= set(range(1, sealed + 1))
        ),
        timeout=10,
        what="every sealed batch arrives",
    )
    return DaemonRun(signing, telemetry.snapshot(), state_dir, files.client_cert)


@pytest.fixture(scope="session")
def _daemon_runs() -> dict[str, DaemonRun]:
    return {}


@pytest.fixture
def daemon_run(
    request: pytest.FixtureRequest,
    pki: PkiBundle,
    tmp_path_factory: pytest.TempPathFactory,
    _daemon_runs: dict[str, DaemonRun],
) -> Callable[[str], DaemonRun]:
    """``daemon_run("ed25519" | "certificate")`` -> that run's payloads (run on first use)."""

    def get(signing: str = "ed25519") -> DaemonRun:
        if signing not in _daemon_runs:
            broker = request.getfixturevalue("mosquitto")
            make_collector = request.getfixturevalue("collector")
            directory = tmp_path_factory.mktemp(f"daemon-{signing}")
            _daemon_runs[signing] = _run_daemon(broker, make_collector, pki, directory, signing)
        return _daemon_runs[signing]

    return get


# --------------------------------------------------------------------------- events


def rule_event(
    payload: bytes,
    topic: str = TELEMETRY_TOPIC,
    *,
    client_id: str | None = None,
    received: int | None = None,
) -> dict[str, Any]:
    """What the IoT rule's SELECT makes of a message on ``topic`` from ``client_id``."""
    thing = topic.split("/")[2]  # topic(3)
    return {
        "payload": base64.b64encode(payload).decode("ascii"),
        "thing": thing,
        "client_id": thing if client_id is None else client_id,
        "received": int(time.time() * 1000) if received is None else received,
    }


def emf_lines(text: str) -> list[dict[str, Any]]:
    """The EMF objects among stdout's lines."""
    lines = []
    for line in text.splitlines():
        if line.startswith("{") and '"_aws"' in line:
            lines.append(json.loads(line))
    return lines


def log_lines(text: str, msg: str) -> list[dict[str, Any]]:
    """The JSON log lines with this ``msg``."""
    found = []
    for line in text.splitlines():
        if line.startswith("{"):
            entry = json.loads(line)
            if entry.get("msg") == msg:
                found.append(entry)
    return found


def certificate_id(path: Path) -> str:
    """The AWS IoT certificate id of a PEM certificate (SHA-256 of its DER)."""
    return verify.kid_for_certificate(x509.load_pem_x509_certificate(path.read_bytes()))
