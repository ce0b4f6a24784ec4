"""The naive baselines, each run as its own process: ``python -m bench.baselines KIND ...``.

- ``paho``: one QoS 1 message per reading (small JSON), as the AWS IoT Device SDK
  samples publish, through paho-mqtt with an in-flight window; prints ``ready
  <cpu>`` before connecting and ``acked <monotonic> <cpu>`` once every PUBACK is in
  (``cpu``: the process's CPU seconds so far).
- ``aiomqtt``: the same through aiomqtt (the daemon's MQTT library), one task per
  message, at most ``window`` awaiting their PUBACK.
- ``sqlite``: one SQLite transaction per reading into a WAL file with
  synchronous=FULL, at a fixed rate, until killed.
- ``paced``: the ``paho`` publisher held to a message rate (AWS IoT Core allows 100
  publishes/s per connection), for a fixed time; prints ``done <sent> <acked>
  <first publish> <last PUBACK> <cpu>``.
- ``durable``: what the naive way needs to lose nothing: every reading committed to
  SQLite on its own (WAL, synchronous=FULL; the same transaction deletes the rows
  acknowledged since the last one), then published as its own QoS 1 message through
  paho, at a fixed rate, until killed.

``IDLE_AIOMQTT`` is the ``python -c`` program of the memory baseline.
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import ssl
import sys
import threading
import time
from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import paho.mqtt.client as mqtt

#: The memory baseline: a bare asyncio + aiomqtt process connected with mutual TLS.
#: argv: CA, cert, key, port.
IDLE_AIOMQTT = """\
import asyncio, ssl, sys, aiomqtt
async def main():
    ctx = ssl.create_default_context(cafile=sys.argv[1])
    ctx.load_cert_chain(sys.argv[2], sys.argv[3])
    async with aiomqtt.Client("127.0.0.1", int(sys.argv[4]), identifier="bench-idle",
                              tls_context=ctx):
        print("connected", flush=True)
        await asyncio.sleep(3600)
asyncio.run(main())
"""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS readings (
    id INTEGER PRIMARY KEY,
    series INTEGER NOT NULL,
    value,
    kind INTEGER NOT NULL,
    time REAL NOT NULL,
    unsynced INTEGER NOT NULL
);
"""


def _tls(ca: str, cert: str, key: str) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=ca)
    context.load_cert_chain(cert, key)
    return context


def run_paho(args: argparse.Namespace) -> None:
    import paho.mqtt.client as mqtt  # noqa: PLC0415
    from paho.mqtt.enums import CallbackAPIVersion  # noqa: PLC0415

    from bench.common import naive_json, synthetic_readings  # noqa: PLC0415

    readings = synthetic_readings(args.count, start=time.time() - args.count / 100)
    topic = f"dt/wsn/{args.client_id}/telemetry"
    acked = 0
    done = threading.Event()
    connected = threading.Event()
    last = [0.0]

    def on_connect(_c: mqtt.Client, _u: object, _f: object, reason: object, _p: object) -> None:
        connected.set()

    def on_publish(_c: mqtt.Client, _u: object, _mid: int, _r: object, _p: object) -> None:
        nonlocal acked
        acked += 1
        if acked == len(readings):
            last[0] = time.monotonic()
            done.set()

    client = mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id=args.client_id, protocol=mqtt.MQTTv311
    )
    client.tls_set_context(_tls(args.ca, args.cert, args.key))
    client.max_inflight_messages_set(args.window)
    client.max_queued_messages_set(0)
    client.on_connect = on_connect
    client.on_publish = on_publish
    print(f"ready {time.process_time()!r}", flush=True)
    client.connect("127.0.0.1", args.port, keepalive=60)
    client.loop_start()
    if not connected.wait(30):
        raise SystemExit("not connected")
    for reading in readings:
        client.publish(topic, naive_json(reading), qos=1)
    if not done.wait(600):
        raise SystemExit(f"only {acked} of {len(readings)} PUBACKs")
    print(f"acked {last[0]!r} {time.process_time()!r}", flush=True)
    client.disconnect()
    client.loop_stop()


async def _aiomqtt(args: argparse.Namespace) -> None:
    import aiomqtt  # noqa: PLC0415

    from bench.common import naive_json, synthetic_readings  # noqa: PLC0415

    readings = synthetic_readings(args.count, start=time.time() - args.count / 100)
    topic = f"dt/wsn/{args.client_id}/telemetry"
    window = asyncio.Semaphore(args.window)
    tasks: set[asyncio.Task[None]] = set()
    print(f"ready {time.process_time()!r}", flush=True)
    async with aiomqtt.Client(
        "127.0.0.1",
        args.port,
        identifier=args.client_id,
        tls_context=_tls(args.ca, args.cert, args.key),
        max_inflight_messages=args.window,
        max_queued_outgoing_messages=args.window,
    ) as client:

        async def one(payload: bytes) -> None:
            try:
                await client.publish(topic, payload, qos=1)
            finally:
                window.release()

        for reading in readings:
            await window.acquire()
            task = asyncio.create_task(one(naive_json(reading)))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        await asyncio.gather(*tasks)
        print(f"acked {time.monotonic()!r} {time.process_time()!r}", flush=True)


def _paho_client(args: argparse.Namespace) -> mqtt.Client:
    """A paho client with the in-flight window, connected, its network thread running."""
    import paho.mqtt.client as mqtt  # noqa: PLC0415
    from paho.mqtt.enums import CallbackAPIVersion  # noqa: PLC0415

    connected = threading.Event()

    def on_connect(_c: mqtt.Client, _u: object, _f: object, reason: object, _p: object) -> None:
        connected.set()

    client = mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id=args.client_id, protocol=mqtt.MQTTv311
    )
    client.tls_set_context(_tls(args.ca, args.cert, args.key))
    client.max_inflight_messages_set(args.window)
    client.max_queued_messages_set(0)
    client.on_connect = on_connect
    client.connect("127.0.0.1", args.port, keepalive=60)
    client.loop_start()
    if not connected.wait(30):
        raise SystemExit("not connected")
    return client


def run_paced(args: argparse.Namespace) -> None:
    from bench.common import naive_json, sensor_history  # noqa: PLC0415

    n = int(args.rate * args.duration)
    readings = [r for chunk in sensor_history(n, start=time.time() - 3600) for r in chunk]
    topic = f"dt/wsn/{args.client_id}/telemetry"
    acked = 0
    last_ack = [0.0]

    def on_publish(_c: mqtt.Client, _u: object, _mid: int, _r: object, _p: object) -> None:
        nonlocal acked
        acked += 1
        last_ack[0] = time.monotonic()

    client = _paho_client(args)
    client.on_publish = on_publish
    print("ready", flush=True)
    start = time.monotonic()
    for k, reading in enumerate(readings):
        delay = start + k / args.rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        client.publish(topic, naive_json(reading), qos=1)
    deadline = time.monotonic() + 30
    while acked < len(readings) and time.monotonic() < deadline:
        time.sleep(0.01)
    cpu = time.process_time()
    print(f"done {len(readings)} {acked} {start!r} {last_ack[0]!r} {cpu!r}", flush=True)
    client.disconnect()
    client.loop_stop()


def run_durable(args: argparse.Namespace) -> None:
    from bench.common import naive_json  # noqa: PLC0415
    from gateway.readings import Reading  # noqa: PLC0415

    db = sqlite3.connect(args.db, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.executescript(_SCHEMA)
    topic = f"dt/wsn/{args.client_id}/telemetry"
    acked: deque[int] = deque()  # message ids, appended by paho's network thread
    rows: dict[int, int] = {}  # message id -> row id, written by this thread only

    def on_publish(_c: mqtt.Client, _u: object, mid: int, _r: object, _p: object) -> None:
        acked.append(mid)

    client = _paho_client(args)
    client.on_publish = on_publish
    print("ready", flush=True)
    interval = 1.0 / args.rate
    start = time.monotonic()
    counts = [0] * 10
    unresolved: list[int] = []
    k = 0
    while True:
        s = k % 10
        counts[s] += 1
        reading = Reading(f"naive-{s}", "count", "count", float(counts[s]), time.time())
        # A PUBACK can beat the line that records its message id: keep it for later.
        while acked:
            unresolved.append(acked.popleft())
        done: list[int] = []
        waiting: list[int] = []
        for mid in unresolved:
            if mid in rows:
                done.append(rows.pop(mid))
            else:
                waiting.append(mid)
        unresolved = waiting
        db.execute("BEGIN IMMEDIATE")
        rowid = db.execute(
            "INSERT INTO readings (series, value, kind, time, unsynced) VALUES (?, ?, 0, ?, 0)",
            (s + 1, reading.value, reading.time),
        ).lastrowid
        if done:
            db.execute(
                f"DELETE FROM readings WHERE id IN ({','.join('?' * len(done))})",
                done,
            )
        db.execute("COMMIT")
        info = client.publish(topic, naive_json(reading), qos=1)
        assert rowid is not None
        rows[info.mid] = rowid
        k += 1
        delay = start + k * interval - time.monotonic()
        if delay > 0:
            time.sleep(delay)


def run_sqlite(args: argparse.Namespace) -> None:
    db = sqlite3.connect(args.db, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.executescript(_SCHEMA)
    print("ready", flush=True)
    interval = 1.0 / args.rate
    start = time.monotonic()
    k = 0
    while True:
        db.execute("BEGIN IMMEDIATE")
        db.execute(
            "INSERT INTO readings (series, value, kind, time, unsynced) VALUES (?, ?, 0, ?, 0)",
            (k % 10 + 1, 20.0 + (k % 1000) / 100, time.time()),
        )
        db.execute("COMMIT")
        k += 1
        delay = start + k * interval - time.monotonic()
        if delay > 0:
            time.sleep(delay)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.baselines")
    sub = parser.add_subparsers(dest="kind", required=True)
    for kind in ("paho", "aiomqtt"):
        p = sub.add_parser(kind)
        p.add_argument("--port", type=int, required=True)
        p.add_argument("--ca", required=True)
        p.add_argument("--cert", required=True)
        p.add_argument("--key", required=True)
        p.add_argument("--count", type=int, required=True)
        p.add_argument("--window", type=int, default=100)
        p.add_argument("--client-id", default=f"bench-naive-{kind}")
    for kind in ("paced", "durable"):
        p = sub.add_parser(kind)
        p.add_argument("--port", type=int, required=True)
        p.add_argument("--ca", required=True)
        p.add_argument("--cert", required=True)
        p.add_argument("--key", required=True)
        p.add_argument("--rate", type=float, default=100.0, help="messages (readings) per s")
        p.add_argument("--window", type=int, default=100)
        p.add_argument("--client-id", default=f"bench-naive-{kind}")
        if kind == "paced":
            p.add_argument("--duration", type=float, default=10.0)
        else:
            p.add_argument("--db", type=Path, required=True)
    p = sub.add_parser("sqlite")
    p.add_argument("--db", type=Path, required=True)
    p.add_argument("--rate", type=float, default=100.0)
    args = parser.parse_args(argv)
    if args.kind == "paho":
        run_paho(args)
    elif args.kind == "aiomqtt":
        asyncio.run(_aiomqtt(args))
    elif args.kind == "paced":
        run_paced(args)
    elif args.kind == "durable":
        run_durable(args)
    else:
        run_sqlite(args)


if __name__ == "__main__":
    main(sys.argv[1:])
