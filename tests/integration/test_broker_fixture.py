"""The Mosquitto fixture really is a mutual-TLS broker with persistent sessions."""

from __future__ import annotations

import ssl

import paho.mqtt.client as mqtt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from gateway.pki import issue_certificate, write_cert, write_key

pytestmark = pytest.mark.integration

TOPIC = "dt/wsn/test-gw/telemetry"
TLS_VERSIONS = [
    pytest.param(ssl.TLSVersion.TLSv1_2, id="tls1.2"),
    pytest.param(ssl.TLSVersion.TLSv1_3, id="tls1.3"),
]


def test_client_with_certificate_publishes_qos1_and_collector_receives(
    mosquitto, collector, publish
):
    received = collector(mosquitto)
    assert publish(mosquitto, TOPIC, [b"one", b"two"]) == [0, 0]
    received.wait_for_count(2)
    assert received.payloads(TOPIC) == [b"one", b"two"]
    assert received.payloads("other/#") == []


@pytest.mark.parametrize("maximum_version", TLS_VERSIONS)
def test_client_without_certificate_is_refused(mosquitto, mqtt_connect, maximum_version):
    assert mqtt_connect(mosquitto, "good", maximum_version=maximum_version) == "connected"
    result = mqtt_connect(mosquitto, "none", maximum_version=maximum_version)
    assert result != "connected"
    assert result.startswith(("ssl error", "reset", "closed")), result


@pytest.mark.parametrize("maximum_version", TLS_VERSIONS)
def test_client_with_certificate_from_other_ca_is_refused(mosquitto, mqtt_connect, maximum_version):
    result = mqtt_connect(mosquitto, "rogue", maximum_version=maximum_version)
    assert result != "connected"
    assert result.startswith(("ssl error", "reset", "closed")), result


def test_paho_client_without_certificate_never_connects(mosquitto, publish):
    with pytest.raises((ConnectionError, OSError)):
        publish(mosquitto, TOPIC, [b"x"], identity="none", timeout=3)


def test_queued_messages_survive_broker_restart(mosquitto, collector, publish):
    received = collector(mosquitto)
    received.pause()  # clean disconnect: the broker keeps the session and queues for it
    publish(mosquitto, TOPIC, [b"before-restart"])
    mosquitto.restart()  # SIGTERM writes the queue to the persistence file
    publish(mosquitto, TOPIC, [b"after-restart"])
    received.resume()
    received.wait_for_count(2)
    assert received.payloads() == [b"before-restart", b"after-restart"]


def test_collector_reconnects_by_itself_after_restart(mosquitto, collector, publish):
    received = collector(mosquitto)
    connects = received.connects
    mosquitto.stop()
    mosquitto.start()
    # Published before the collector is back: the restored session queues it.
    publish(mosquitto, TOPIC, [b"while-reconnecting"])
    received.wait_for_count(1, timeout=15)
    assert received.payloads() == [b"while-reconnecting"]
    assert received.connects > connects


def test_acl_forbids_a_topic(mosquitto_factory, collector, publish):
    broker = mosquitto_factory(acl_text="topic readwrite dt/wsn/+/telemetry\n")
    everything = collector(broker, "#")
    # MQTT 5 reports the refusal in the PUBACK: 0x87 Not authorized.
    assert publish(broker, "forbidden/topic", [b"no"], protocol=mqtt.MQTTv5) == [0x87]
    # MQTT 3.1.1 has no reason code: Mosquitto acknowledges and drops the message.
    assert publish(broker, "forbidden/topic", [b"no"]) == [0]
    assert publish(broker, TOPIC, [b"yes"]) == [0]
    everything.wait_for_count(1)
    assert everything.payloads() == [b"yes"]


def test_message_size_limit(mosquitto_factory, collector, publish):
    broker = mosquitto_factory(message_size_limit=1000)
    received = collector(broker)
    # Mosquitto 2.0.11 drops an oversized PUBLISH, sends PUBACK (reason 0x95 in MQTT 5;
    # in 3.1.1 that is indistinguishable from success) and then closes the connection,
    # so the client sees a PUBACK or a dropped connection -- never a delivery.
    try:
        codes: list[int] | None = publish(broker, TOPIC, [b"x" * 1001], timeout=2)
    except TimeoutError:
        codes = None
    assert codes in (None, [0])
    assert publish(broker, TOPIC, [b"y" * 1000]) == [0]
    received.wait_for_count(1)
    assert received.payloads() == [b"y" * 1000]
    assert "Dropped too large PUBLISH" in broker.log_text()


def test_rsa_client_certificate_is_accepted(mosquitto, pki, tmp_path, tls_context, mqtt_connect):
    ca_key = serialization.load_pem_private_key(pki.files.ca_key.read_bytes(), password=None)
    ca_cert = x509.load_pem_x509_certificate(pki.files.ca_cert.read_bytes())
    key, cert = issue_certificate(ca_key, ca_cert, "rsa-gw", server=False, key_type="rsa")
    write_key(tmp_path / "rsa.key", key)
    write_cert(tmp_path / "rsa.crt", cert)
    context = tls_context(cert=tmp_path / "rsa.crt", key=tmp_path / "rsa.key")
    assert mqtt_connect(mosquitto, context=context) == "connected"
