"""CloudWatch Logs shipping against moto's server, with credentials from a local
HTTPS endpoint that plays the AWS IoT credentials provider (client certificate required)."""

from __future__ import annotations

import datetime as dt
import json
import logging
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import boto3
import pytest
from conftest import THING, PkiBundle
from moto.server import ThreadedMotoServer

import gateway.cloudwatch as cloudwatch_module
from gateway import status
from gateway.cloudwatch import CloudWatch
from gateway.config import load_settings
from gateway.credentials import CredentialsError, IotCredentialsProvider
from gateway.daemon import Daemon, mqtt_target
from gateway.metrics import Counters
from gateway.publisher import tls_context

pytestmark = pytest.mark.integration

REGION = "eu-west-1"
ALIAS = "wsn-gateway-logs"
log = logging.getLogger("gateway.test_cloudwatch")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Provider:
    """The credentials provider: mutual TLS, GET /role-aliases/<alias>/credentials."""

    def __init__(self, pki: PkiBundle) -> None:
        self.up = True
        self.requests: list[tuple[str, str | None]] = []
        provider = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                provider.requests.append((self.path, self.headers.get("x-amzn-iot-thingname")))
                if not provider.up:
                    self.send_response(503)
                    self.end_headers()
                    return
                if self.path != f"/role-aliases/{ALIAS}/credentials":
                    self.send_response(403)
                    self.end_headers()
                    self.wfile.write(b'{"message":"Access Denied"}')
                    return
                expiration = dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)
                body = json.dumps(
                    {
                        "credentials": {
                            "accessKeyId": "ASIAFROMIOTPROVIDER1",
                            "secretAccessKey": "secret-from-the-iot-provider",
                            "sessionToken": "token-from-the-iot-provider",
                            "expiration": expiration.strftime("%Y-%m-%dT%H:%M:%SZ"),
                        }
                    }
                ).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(pki.files.server_cert, pki.files.server_key)
        context.load_verify_locations(pki.files.ca_cert)
        context.verify_mode = ssl.CERT_REQUIRED
        self.server = HTTPServer(("127.0.0.1", 0), Handler)
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def provider(pki: PkiBundle) -> Iterator[Provider]:
    p = Provider(pki)
    yield p
    p.close()


@pytest.fixture
def moto_server() -> Iterator[tuple[ThreadedMotoServer, int]]:
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield server, port
    server.stop()


@pytest.fixture(autouse=True)
def no_aws_keys(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The default boto3 chain finds nothing: credentials must come from the provider."""
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


def make_cloudwatch(
    tmp_path: Path,
    pki: PkiBundle,
    moto_port: int,
    provider_port: int,
    group: str,
    spool_bytes: str = "1MiB",
) -> CloudWatch:
    f = pki.files
    config = tmp_path / "gateway.yaml"
    config.write_text(
        f"""
thing: {THING}
state_dir: {tmp_path / "state"}
clock: assume-synced
mqtt:
  endpoint: 127.0.0.1
  port: {free_port()}
  ca: {f.ca_cert}
  cert: {f.client_cert}
  key: {f.client_key}
sensors:
  - name: heartbeat
    driver: counter
cloudwatch:
  enabled: true
  region: {REGION}
  log_group: {group}
  endpoint_url: http://127.0.0.1:{moto_port}
  role_alias: {ALIAS}
  credentials_endpoint: 127.0.0.1:{provider_port}
  spool_bytes: {spool_bytes}
"""
    )
    settings = load_settings(config)
    target = mqtt_target(settings)
    counters = Counters(readings_taken=5)

    async def buffer_state() -> tuple[int, float | None]:
        return 2, time.time() - 30

    return CloudWatch(
        settings,
        counters=counters,
        pollers=lambda: [],
        latencies=lambda: [0.01, 0.02, 0.5],
        buffer_state=buffer_state,
        context_factory=lambda: tls_context(target),
    )


def messages(port: int, group: str) -> list[str]:
    logs = boto3.client(
        "logs",
        region_name=REGION,
        endpoint_url=f"http://127.0.0.1:{port}",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    events = logs.get_log_events(logGroupName=group, logStreamName=THING, startFromHead=True)
    return [e["message"] for e in events["events"]]


def emit(cloud: CloudWatch, text: str) -> None:
    record = log.makeRecord(log.name, logging.INFO, __file__, 0, text, (), None)
    cloud.handler.handle(record)


async def test_logs_and_metrics_arrive_with_provider_credentials(
    tmp_path: Path, pki: PkiBundle, provider: Provider, moto_server: tuple[Any, int]
) -> None:
    _, port = moto_server
    group = "/wsn-gateway/test-arrive"
    cloud = make_cloudwatch(tmp_path, pki, port, provider.port, group)
    try:
        emit(cloud, "hello cloudwatch")
        counters = cloud.metrics.counters  # deltas: what happened since the last event
        counters.readings_taken += 10
        counters.readings_acked += 8
        counters.batches_acked += 2
        await cloud.metrics.emit()
        await cloud.shipper.ship()
    finally:
        cloud.shipper.close()
    got = messages(port, group)
    assert json.loads(got[0])["msg"] == "hello cloudwatch"
    emf = [json.loads(m) for m in got if "_aws" in m]
    assert emf, got
    metric = emf[0]
    assert metric["Thing"] == THING
    assert metric["ReadingsTaken"] == 10 and metric["ReadingsPublished"] == 8
    assert metric["BufferDepth"] == 2 and metric["PublishLatencyP99"] == 500.0
    assert metric["_aws"]["CloudWatchMetrics"][0]["Namespace"] == "WsnGateway"
    assert provider.requests == [(f"/role-aliases/{ALIAS}/credentials", THING)]
    assert cloud.shipper.stats.delivered == len(got)


async def test_spooled_logs_arrive_after_outages(
    tmp_path: Path, pki: PkiBundle, provider: Provider, moto_server: tuple[Any, int]
) -> None:
    server, port = moto_server
    group = "/wsn-gateway/test-outage"
    cloud = make_cloudwatch(tmp_path, pki, port, provider.port, group)
    try:
        # The credentials provider is down: nothing can be signed, logs are spooled.
        provider.up = False
        emit(cloud, "during provider outage")
        await cloud.shipper.flush()
        assert cloud.shipper.stats.failures == 1
        assert "during provider outage" in cloud.shipper.spool.path.read_text()
        provider.up = True
        # Now CloudWatch itself goes away.
        server.stop()
        emit(cloud, "during cloudwatch outage")
        await cloud.shipper.flush(timeout=60)
        assert cloud.shipper.stats.failures == 2
        server.start()
        emit(cloud, "after the outages")
        await cloud.shipper.flush(timeout=60)
        assert not cloud.shipper.spool.path.exists()
    finally:
        cloud.shipper.close()
    got = [json.loads(m)["msg"] for m in messages(port, group)]
    assert got == ["during provider outage", "during cloudwatch outage", "after the outages"]


async def test_rejected_events_are_counted_not_delivered(
    tmp_path: Path, pki: PkiBundle, provider: Provider, moto_server: tuple[Any, int]
) -> None:
    _, port = moto_server
    group = "/wsn-gateway/test-rejected"
    cloud = make_cloudwatch(tmp_path, pki, port, provider.port, group)
    old = int((time.time() - 20 * 86400) * 1000)
    try:
        cloud.handler.put(cloudwatch_module.LogEvent(old, "ancient 1"))
        cloud.handler.put(cloudwatch_module.LogEvent(old + 1, "ancient 2"))
        emit(cloud, "fresh")
        await cloud.shipper.ship()
    finally:
        cloud.shipper.close()
    stats = cloud.shipper.stats
    # AWS documents tooOldLogEventEndIndex as exclusive; moto reports the index of the
    # last too-old event, so it counts one fewer here than AWS would.
    assert stats.rejected_too_old >= 1
    assert stats.delivered <= 2
    got = messages(port, group)
    assert not any("ancient" in m for m in got)


async def test_no_upload_while_the_clock_is_unsynchronised(
    tmp_path: Path,
    pki: PkiBundle,
    provider: Provider,
    moto_server: tuple[Any, int],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _, port = moto_server
    group = "/wsn-gateway/test-unsynced"
    cloud = make_cloudwatch(tmp_path, pki, port, provider.port, group)
    synced = False
    monkeypatch.setattr(cloudwatch_module, "clock_synchronised", lambda policy="kernel": synced)
    try:
        emit(cloud, "clock unknown")
        await cloud.shipper.ship()
        assert provider.requests == [] and cloud.shipper.stats.calls == 0
        assert "clock unknown" in cloud.shipper.spool.path.read_text()
        synced = True
        await cloud.shipper.ship()
    finally:
        cloud.shipper.close()
    assert json.loads(messages(port, group)[0])["msg"] == "clock unknown"


async def test_status_shows_uploads_and_spool_drops(
    tmp_path: Path, pki: PkiBundle, provider: Provider, moto_server: tuple[Any, int]
) -> None:
    """What ``wsn-gateway status`` shows of a daemon's CloudWatch: an upload, then an
    outage long enough for the spool to go over its cap, then uploads again."""
    server, port = moto_server
    group = "/wsn-gateway/test-status"
    cloud = make_cloudwatch(tmp_path, pki, port, provider.port, group, spool_bytes="64KiB")
    daemon = Daemon(cloud_settings := load_settings(tmp_path / "gateway.yaml"))
    daemon._cloud = cloud  # as Daemon._start_cloudwatch leaves it

    def shown() -> tuple[dict[str, Any], list[str]]:
        snap = json.loads(json.dumps(status.snapshot(daemon)))  # as the file holds it
        text = status.render(snap, time.time()).splitlines()
        start = next(i for i, line in enumerate(text) if line.startswith("cloudwatch "))
        return snap["cloudwatch"], text[start : start + 3]

    try:
        facts, _ = shown()
        assert facts["state"] == "shipping" and facts["last_upload_time"] is None
        emit(cloud, "before the outage")
        await cloud.shipper.ship()
        facts, lines = shown()
        assert facts["delivered"] == 1 and facts["last_upload_time"] is not None
        assert facts["dropped_total"] == 0
        assert lines[0] == (
            f"cloudwatch   shipping to {group}/{THING}, last upload 0 s ago, 0 waiting"
        )
        assert lines[1] == "  dropped  0 log lines since start"
        # CloudWatch goes away: lines go to the spool, more than its 64 KiB.
        server.stop()
        for i in range(100):
            emit(cloud, f"during the outage {i:03d} " + "x" * 1_000)
        await cloud.shipper.flush(timeout=60)
        facts, lines = shown()
        lost = facts["dropped"]["spool_over_cap"]
        assert lost > 0 and facts["dropped_total"] == lost
        assert 0 < facts["spool_events"] == 100 - lost
        assert facts["spool_bytes"] == cloud.shipper.spool.path.stat().st_size <= 65536
        assert facts["state"] == "failing" and facts["last_error"]
        assert lines[0].startswith(f"cloudwatch   UPLOAD FAILING, spooling for {group}/{THING}")
        assert f"{100 - lost} waiting ({100 - lost} in the spool," in lines[0]
        assert lines[1] == (
            f"  dropped  {lost} log lines since start (queue full 0, spool over cap {lost},"
            " rejected too old 0)"
        )
        assert lines[2].startswith("  error    ")
        # It works again: the spool goes up, the loss stays on show.
        server.start()
        await cloud.shipper.flush(timeout=60)
        facts, lines = shown()
        assert facts["state"] == "shipping" and facts["last_error"] is None
        assert facts["spool_events"] == 0 and facts["delivered"] == 1 + 100 - lost
        assert lines[0].endswith("last upload 0 s ago, 0 waiting")
        assert lines[1].startswith(f"  dropped  {lost} log lines since start")
    finally:
        cloud.shipper.close()
    assert cloud_settings.cloudwatch.spool_bytes == 65536
    got = [json.loads(m)["msg"] for m in messages(port, group)]
    assert got[0] == "before the outage" and got[-1].startswith("during the outage 099 ")
    assert len(got) == 1 + 100 - lost


def test_provider_403_is_explained(pki: PkiBundle, provider: Provider) -> None:
    client = IotCredentialsProvider(
        endpoint=f"127.0.0.1:{provider.port}",
        role_alias="not-allowed",
        thing=THING,
        context=_client_context(pki),
    )
    with pytest.raises(CredentialsError, match="iot:AssumeRoleWithCertificate"):
        client.get()
    good = IotCredentialsProvider(
        endpoint=f"127.0.0.1:{provider.port}",
        role_alias=ALIAS,
        thing=THING,
        context=_client_context(pki),
    )
    creds = good.get()
    assert creds.access_key_id == "ASIAFROMIOTPROVIDER1"
    assert good.get() is creds  # cached until 5 minutes before expiry
    assert good.fetches == 1


def _client_context(pki: PkiBundle) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(pki.files.ca_cert))
    context.load_cert_chain(pki.files.client_cert, pki.files.client_key)
    return context
