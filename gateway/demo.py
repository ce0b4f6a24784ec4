"""``wsn-gateway demo``: the whole path on one machine, no hardware, no AWS account.

It makes a throwaway CA and certificates, starts an embedded MQTT broker on
loopback that requires client certificates, relays the daemon's connection
through a link it cuts for a while (an uplink outage), runs the daemon on
``config/demo.yaml`` with simulated sensors, shows live progress, and ends by
verifying every batch the consumer received: signature, chain and counts.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import signal
import ssl
import sys
import tempfile
import time
from pathlib import Path

import aiomqtt

from gateway import verify
from gateway.config import Settings, load_settings
from gateway.daemon import Daemon
from gateway.demo_broker import DemoBroker
from gateway.logs import setup_logging
from gateway.metrics import Counters
from gateway.pki import PkiFiles, write_pki
from gateway.uplink import Uplink

DEMO_THING = "demo-gw"


def find_demo_config() -> Path:
    """config/demo.yaml from the working directory or the source checkout."""
    for base in (Path.cwd(), Path(__file__).resolve().parent.parent):
        candidate = base / "config" / "demo.yaml"
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        "config/demo.yaml not found: run the demo from the wsn-gateway checkout, "
        "or give --config PATH"
    )


def _client_tls(pki: PkiFiles) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(pki.ca_cert))
    ctx.load_cert_chain(str(pki.client_cert), str(pki.client_key))
    return ctx


class Consumer:
    """Subscribes to every gateway's telemetry and keeps the payloads, as the cloud would."""

    def __init__(self, port: int, pki: PkiFiles, out: Path) -> None:
        self.port = port
        self.tls = _client_tls(pki)
        self.payloads: list[bytes] = []
        self.out = out
        self.subscribed = asyncio.Event()
        self._arrived = asyncio.Condition()

    async def received(self, count: int) -> None:
        """Wait until at least ``count`` payloads have arrived."""
        async with self._arrived:
            await self._arrived.wait_for(lambda: len(self.payloads) >= count)

    async def run(self) -> None:
        """Receive until cancelled."""
        async with aiomqtt.Client(
            "localhost", self.port, identifier="demo-consumer", tls_context=self.tls
        ) as client:
            await client.subscribe("dt/wsn/+/telemetry", qos=1)
            self.subscribed.set()
            with self.out.open("ab") as fh:
                async for message in client.messages:
                    payload = message.payload
                    assert isinstance(payload, bytes | bytearray)
                    self.payloads.append(bytes(payload))
                    fh.write(bytes(payload) + b"\n")
                    fh.flush()
                    async with self._arrived:
                        self._arrived.notify_all()


def _progress(c: Counters, buffered: int, received: int, connected: bool, elapsed: float) -> str:
    link = "online " if connected else "OFFLINE"
    return (
        f"{elapsed:5.1f}s {link} | taken {c.readings_taken:5d} | buffered {buffered:5d} | "
        f"batches sealed {c.batches_sealed:3d} published {c.batches_published:3d} "
        f"acked {c.batches_acked:3d} | received {received:3d}"
    )


async def _demo(duration: float, config: Path, workdir: Path) -> int:
    pki = write_pki(workdir / "pki", thing=DEMO_THING)
    broker = DemoBroker(pki)
    await broker.start()
    uplink = Uplink("127.0.0.1", broker.port)
    await uplink.start()
    consumer = Consumer(broker.port, pki, workdir / "received.jsonl")
    consumer_task = asyncio.create_task(consumer.run())
    await asyncio.wait_for(consumer.subscribed.wait(), 10)

    overrides = {
        "state_dir": str(workdir / "state"),
        "mqtt": {
            "endpoint": "localhost",
            "port": uplink.port,
            "ca": str(pki.ca_cert),
            "cert": str(pki.client_cert),
            "key": str(pki.client_key),
            "reconnect_min": 0.5,
            "reconnect_max": 2.0,
        },
    }
    settings: Settings = load_settings(config, overrides)
    setup_logging(settings.logging.level, stream=(workdir / "gateway.log").open("a"))
    daemon = Daemon(settings, overrides=overrides)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    print(
        f"demo: broker with mutual TLS on 127.0.0.1:{broker.port}, gateway '{settings.thing}' "
        f"with {len(settings.sensors)} simulated sensors, state in {workdir}"
    )
    outage = (duration * 0.35, duration * 0.6) if duration >= 15 else None
    if outage:
        print(
            f"demo: the uplink will be cut from {outage[0]:.0f}s to {outage[1]:.0f}s; "
            "readings keep being taken and wait in the buffer"
        )
    daemon_task = asyncio.create_task(daemon.run(handle_signals=False))
    await _watch(
        daemon=daemon,
        daemon_task=daemon_task,
        uplink=uplink,
        consumer=consumer,
        stop=stop,
        duration=duration,
        outage=outage,
    )
    uplink.restore()
    print("demo: stopping the gateway (it seals and publishes what is buffered)")
    daemon.request_stop()
    await daemon_task
    # Give the consumer a moment to receive the last acknowledged batches.
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(consumer.received(daemon.counters.batches_acked), 5)
    consumer_task.cancel()
    with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
        await consumer_task
    await uplink.stop()
    await broker.stop()
    return _summary(settings, daemon.counters, consumer.payloads)


async def _watch(
    *,
    daemon: Daemon,
    daemon_task: asyncio.Task[None],
    uplink: Uplink,
    consumer: Consumer,
    stop: asyncio.Event,
    duration: float,
    outage: tuple[float, float] | None,
) -> None:
    """Show progress until the duration is up, cutting the uplink during the outage."""
    started = time.monotonic()
    tty = sys.stdout.isatty()
    end = "\n" if tty else ""
    last_line = -5.0
    while not stop.is_set() and (elapsed := time.monotonic() - started) < duration:
        if daemon_task.done():
            return
        if outage and uplink.up and outage[0] <= elapsed < outage[1]:
            uplink.cut()
            print(f"{end}demo: {elapsed:.0f}s uplink cut")
        elif outage and not uplink.up and elapsed >= outage[1]:
            uplink.restore()
            print(f"{end}demo: {elapsed:.0f}s uplink restored; the backlog drains")
        publisher = daemon.publisher
        line = _progress(
            daemon.counters,
            daemon.buffer.count if daemon.buffer else 0,
            len(consumer.payloads),
            bool(publisher and publisher.connected.is_set()),
            elapsed,
        )
        if tty:
            print("\r" + line, end="", flush=True)
        elif elapsed - last_line >= 5:
            print(line, flush=True)
            last_line = elapsed
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.5)
    print(end, end="")


def _summary(settings: Settings, c: Counters, payloads: list[bytes]) -> int:
    keys = verify.load_verification_keys([settings.signing_key_path])
    report = verify.verify_stream(payloads, keys)
    print(verify.format_report(report))
    records = sum(s.records for s in report.streams)
    left = c.readings_taken - c.readings_acked
    print(
        f"demo: readings taken {c.readings_taken}, published and acknowledged {c.readings_acked}, "
        f"received and verified {records} in {len(payloads)} batches, "
        f"left in the buffer for next time {left}, dropped {c.readings_dropped}"
    )
    ok = report.ok and records == c.readings_acked and c.readings_acked > 0
    print("demo: OK, every batch verified (signature and chain)" if ok else "demo: FAILED")
    return 0 if ok else 1


def run_demo(*, duration: float, config: Path | None, workdir: Path | None) -> int:
    """Run the demo; 0 when every received batch verified."""
    config = config or find_demo_config()
    temporary = workdir is None
    work = Path(tempfile.mkdtemp(prefix="wsn-demo-")) if workdir is None else workdir
    work.mkdir(parents=True, exist_ok=True)
    try:
        return asyncio.run(_demo(duration, config, work))
    finally:
        if temporary:
            shutil.rmtree(work, ignore_errors=True)
