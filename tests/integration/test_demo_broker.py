"""The demo's embedded broker: MQTT over TLS that refuses clients without a valid certificate.

The broker runs in the test's event loop, as it does in ``wsn-gateway demo``: clients
here are asyncio-native (aiomqtt), and blocking probes run in a worker thread.
"""

from __future__ import annotations

import asyncio
import ssl
import time

import aiomqtt
import pytest

from gateway.demo_broker import DemoBroker

pytestmark = pytest.mark.integration

TOPIC = "dt/wsn/test-gw/telemetry"
TLS_VERSIONS = [
    pytest.param(ssl.TLSVersion.TLSv1_2, id="tls1.2"),
    pytest.param(ssl.TLSVersion.TLSv1_3, id="tls1.3"),
]


@pytest.fixture
async def demo_broker(pki):
    async with DemoBroker(pki.files) as broker:
        yield broker


def aiomqtt_client(
    broker: DemoBroker, context: ssl.SSLContext, name: str, timeout: float = 5
) -> aiomqtt.Client:
    return aiomqtt.Client(
        broker.host, broker.port, identifier=name, tls_context=context, timeout=timeout
    )


async def test_publish_qos1_is_acknowledged_and_delivered(demo_broker, tls_context):
    received: list[bytes] = []
    payloads = [f"batch-{n}".encode() for n in range(5)] + [b"\x00" * 128_000]
    async with aiomqtt_client(demo_broker, tls_context(), "subscriber") as subscriber:
        await subscriber.subscribe("dt/wsn/+/telemetry", qos=1)

        async def collect() -> None:
            async for message in subscriber.messages:
                received.append(bytes(message.payload))
                if len(received) == len(payloads):
                    return

        collecting = asyncio.create_task(collect())
        async with aiomqtt_client(demo_broker, tls_context(), "test-gw") as publisher:
            for payload in payloads:
                # aiomqtt returns from a QoS 1 publish once the PUBACK has arrived.
                await asyncio.wait_for(publisher.publish(TOPIC, payload, qos=1), timeout=5)
        await asyncio.wait_for(collecting, timeout=10)
    assert received == payloads


@pytest.mark.parametrize("maximum_version", TLS_VERSIONS)
async def test_client_with_certificate_connects(demo_broker, mqtt_connect, maximum_version):
    result = await asyncio.to_thread(
        mqtt_connect, demo_broker, "good", maximum_version=maximum_version
    )
    assert result == "connected"


@pytest.mark.parametrize("identity", ["none", "rogue"])
@pytest.mark.parametrize("maximum_version", TLS_VERSIONS)
async def test_client_without_valid_certificate_is_refused(
    demo_broker, mqtt_connect, identity, maximum_version
):
    result = await asyncio.to_thread(
        mqtt_connect, demo_broker, identity, maximum_version=maximum_version
    )
    assert result != "connected"
    assert result.startswith(("ssl error", "reset", "closed")), result


@pytest.mark.parametrize("maximum_version", TLS_VERSIONS)
async def test_aiomqtt_client_without_certificate_cannot_connect(
    demo_broker, tls_context, maximum_version
):
    # Under TLS 1.3 the refusal comes after the client's handshake is done, as a closed
    # connection before CONNACK, which aiomqtt reports only when its timeout expires.
    context = tls_context("none", maximum_version=maximum_version)
    with pytest.raises(aiomqtt.MqttError):
        async with aiomqtt_client(demo_broker, context, "intruder", timeout=1) as client:
            await client.publish(TOPIC, b"x", qos=1, timeout=1)


async def test_stop_disconnects_connected_clients(pki, tls_context):
    broker = DemoBroker(pki.files)
    await broker.start()
    client = aiomqtt_client(broker, tls_context(), "test-gw")
    await client.__aenter__()
    try:
        await client.publish(TOPIC, b"before stop", qos=1)
        await asyncio.wait_for(broker.stop(), timeout=5)
        with pytest.raises(aiomqtt.MqttError):
            await client.publish(TOPIC, b"after stop", qos=1, timeout=2)
    finally:
        await broker.stop()
        await client.__aexit__(None, None, None)


async def test_start_is_fast_and_restart_keeps_the_port(pki, mqtt_connect):
    broker = DemoBroker(pki.files)
    started = time.perf_counter()
    await broker.start()
    elapsed = time.perf_counter() - started
    try:
        assert elapsed < 2.0, f"demo broker took {elapsed:.3f} s to start"
        port = broker.port
        assert port > 0
        await broker.stop()
        await broker.start()
        assert broker.port == port
        assert await asyncio.to_thread(mqtt_connect, broker, "good") == "connected"
    finally:
        await broker.stop()
    assert not broker.running
