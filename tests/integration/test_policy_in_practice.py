"""The device policy `wsn-gateway provision` attaches is enough, and no more, in practice.

The policy document (gateway.iot_policy.device_policy) is turned into a Mosquitto ACL:
``${iot:Connection.Thing.ThingName}`` becomes ``%u``, the certificate's common name
(``use_identity_as_username``), which is what AWS IoT checks it against when the
certificate is attached to the thing; iot:Publish and iot:RetainPublish become
``write``, iot:Subscribe and iot:Receive ``read``. Then the real daemon runs under it,
with its shadow: batches, the retained status and the remote configuration all work,
so the daemon needs nothing the policy does not grant; and a client holding a
gateway's certificate cannot publish as, or read, another gateway.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from conftest import Collector, Mosquitto, PkiBundle, client_tls_context
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from daemon_harness import (
    THING,
    GatewayProcess,
    gateway_config,
    signing_keys,
    unique_batches,
    wait_until,
    write_config,
)
from shadow_service import ShadowService

from gateway.iot_policy import THING_VARIABLE, PolicyScope, device_policy
from gateway.pki import PkiFiles, issue_certificate, write_cert, write_key

pytestmark = pytest.mark.integration

OBSERVER = "cloud-observer"
ARN_PREFIX = "arn:aws:iot:eu-west-1:123456789012:"


def policy_as_acl(document: dict[str, Any]) -> str:
    """Mosquitto ACL lines that grant what the IoT policy grants to every gateway."""
    access = {
        "iot:Publish": "write",
        "iot:RetainPublish": "write",
        "iot:Subscribe": "read",
        "iot:Receive": "read",
    }
    lines: set[str] = set()
    for statement in document["Statement"]:
        assert statement["Effect"] == "Allow"
        mode = access.get(statement["Action"])
        if mode is None:
            continue  # iot:Connect and credentials: not topic rights
        resources = statement["Resource"]
        for resource in [resources] if isinstance(resources, str) else resources:
            assert resource.startswith(ARN_PREFIX)
            kind, topic = resource[len(ARN_PREFIX) :].split("/", 1)
            assert kind in ("topic", "topicfilter")
            lines.add(f"pattern {mode} {topic.replace(THING_VARIABLE, '%u')}")
    return "\n".join(sorted(lines))


def observer_files(pki: PkiBundle, directory: Path) -> PkiFiles:
    """A second client certificate from the test CA: the cloud side's own identity."""
    ca_key = serialization.load_pem_private_key(pki.files.ca_key.read_bytes(), password=None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    ca_cert = x509.load_pem_x509_certificate(pki.files.ca_cert.read_bytes())
    key, cert = issue_certificate(ca_key, ca_cert, OBSERVER, server=False)
    files = dataclasses.replace(
        pki.files, client_cert=directory / "observer.crt", client_key=directory / "observer.key"
    )
    write_cert(files.client_cert, cert)
    write_key(files.client_key, key)
    return files


@pytest.fixture
def broker(
    mosquitto_factory: Any, pki: PkiBundle, tmp_path: Path
) -> Iterator[tuple[Mosquitto, PkiFiles, str]]:
    scope = PolicyScope(region="eu-west-1", account="123456789012")
    acl = policy_as_acl(device_policy(scope))
    # The cloud side (rules engine, shadow service) reads and writes everything.
    acl += f"\n\nuser {OBSERVER}\ntopic readwrite #\ntopic readwrite $aws/#\n"
    running: Mosquitto = mosquitto_factory(
        acl_text=acl, extra_config="use_identity_as_username true"
    )
    yield running, observer_files(pki, tmp_path), acl


def test_the_daemon_works_with_exactly_the_policy_and_cannot_reach_another_gateway(
    broker: tuple[Mosquitto, PkiFiles, str], pki: PkiBundle, tmp_path: Path
) -> None:
    mosquitto, observer, acl = broker
    assert "pattern write dt/wsn/%u/telemetry" in acl
    assert "pattern read $aws/things/%u/shadow/update/delta" in acl
    telemetry = Collector(mosquitto.host, mosquitto.port, observer, "dt/wsn/#").start()
    shadow = ShadowService(mosquitto.host, mosquitto.port, observer, thing=THING).start()
    files = pki.files
    config = write_config(
        tmp_path / "gateway.yaml",
        gateway_config(
            port=mosquitto.port,
            ca=files.ca_cert,
            cert=files.client_cert,  # common name = the thing name
            key=files.client_key,
            state_dir=tmp_path / "state",
            sensors={"probe": 0.2},
            shadow={"enabled": True},
        ),
    )
    process = GatewayProcess(config, tmp_path / "gateway.log").start()
    try:
        # Batches and the retained status go out under the policy.
        telemetry.wait_for(
            lambda messages: any(topic.endswith("/telemetry") for topic, _ in messages), 20
        )
        telemetry.wait_for(
            lambda messages: any(
                topic == f"dt/wsn/{THING}/status" and b"online" in payload
                for topic, payload in messages
            ),
            10,
        )
        # The shadow works both ways: a desired change is applied and reported.
        shadow.desire({"sensors": {"probe": {"interval": 0.5}}})
        reported = shadow.wait_reported(
            lambda state: state.get("sensors", {}).get("probe", {}).get("interval") == 0.5, 20
        )
        assert "refused" not in reported or not reported["refused"]

        # Another gateway's topics are out of reach for this certificate.
        intruder = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id="intruder", protocol=mqtt.MQTTv311
        )
        intruder.tls_set_context(
            client_tls_context(files.ca_cert, files.client_cert, files.client_key)
        )
        received: list[str] = []
        intruder.on_message = lambda _c, _u, message: received.append(message.topic)
        intruder.connect(mosquitto.host, mosquitto.port)
        intruder.loop_start()
        try:
            intruder.subscribe([("dt/wsn/+/telemetry", 1), ("$aws/things/other-gw/shadow/#", 1)])
            intruder.publish("dt/wsn/other-gw/telemetry", b"forged", qos=1).wait_for_publish(5)
            intruder.publish(f"dt/wsn/{THING}/telemetry-x", b"off-policy", qos=1)
            time.sleep(1.5)
        finally:
            intruder.loop_stop()
            intruder.disconnect()
        assert received == []  # it reads nobody's telemetry, not even its own
        payloads = [payload for _, payload in telemetry.snapshot()]
        assert b"forged" not in payloads
        assert b"off-policy" not in payloads
        wait_until(
            lambda: len(telemetry.payloads(f"dt/wsn/{THING}/telemetry")) >= 2,
            timeout=10,
            what="two batches",
        )
    finally:
        process.terminate()
        shadow.stop()
        telemetry.close()
    batches = unique_batches(
        telemetry.payloads(f"dt/wsn/{THING}/telemetry"), signing_keys(tmp_path / "state")
    )
    assert batches
    assert not process.find(lambda entry: entry.get("level") == "error")
