"""Throughput: readings per second from the buffer to broker-acknowledged batches.

Gateway: N readings are preloaded into the buffer file with ``Buffer.add`` (10
simulated sensors' worth of history), then ``wsn-gateway run`` starts with the rate
limits lifted and drains that backlog: sealing, signing, publishing at QoS 1 over
mutual TLS to the local Mosquitto. The clock runs from its "started" log line until
a subscriber has received all N records *and* the buffer file holds neither those
readings nor any outbox batch (every PUBACK recorded).

Baselines, same broker, same TLS, same subscriber, in the same run: the same
readings published one QoS 1 message each, as a small JSON object (what the AWS IoT
Device SDK samples do), with an in-flight window of 100 like the daemon's
``mqtt.max_inflight``, through paho-mqtt and through aiomqtt. The clock runs from
"ready" (data generated, not yet connected) until every PUBACK is in and the
subscriber has everything. JSON encoding is inside the clock for all three.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any

from bench.common import (
    PYTHON,
    Context,
    Proc,
    Subscriber,
    Table,
    batch_records,
    counter,
    cpu_seconds,
    daemon_argv,
    median,
    mib,
    proc_io,
    proc_status,
    ratio,
    synthetic_readings,
    write_config,
)
from gateway.buffer import Buffer
from gateway.config import load_settings

WINDOW = 100


def _wait_drained(path: Path, timeout: float) -> float:
    """Poll the daemon's buffer file until no preloaded reading and no batch is left
    (every PUBACK recorded). Cheap queries: EXISTS stops at the first row."""
    db = sqlite3.connect(path, isolation_level=None, timeout=5)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            row = db.execute(
                "SELECT EXISTS (SELECT 1 FROM outbox), EXISTS (SELECT 1 FROM readings"
                " WHERE series IN (SELECT id FROM series WHERE name LIKE 'pre%'))"
            ).fetchone()
            if tuple(row) == (0, 0):
                return time.monotonic()
            time.sleep(0.01)
    finally:
        db.close()
    raise TimeoutError(f"{path}: not drained within {timeout} s")


def gateway_round(ctx: Context, n: int) -> dict[str, Any]:
    """One drain of an ``n``-reading backlog by the daemon."""
    d = ctx.directory("throughput-gateway")
    config = write_config(
        d / "gateway.yaml",
        ctx=ctx,
        state_dir=d / "state",
        # One live sensor is required; it reads once at start, then once a day.
        sensors=[counter("live", 86400)],
        mqtt={"messages_per_second": 0, "bytes_per_second": 0},
    )
    settings = load_settings(config)
    buffer = Buffer(settings.buffer_path, max_bytes=settings.buffer.max_bytes)
    readings = synthetic_readings(n, start=time.time() - n / 100)
    for i in range(0, n, 10_000):
        buffer.add(readings[i : i + 10_000])
    buffer.close()
    del readings
    preload_bytes = settings.buffer_path.stat().st_size

    sub = Subscriber(ctx.broker, ctx.pki, lambda p: len(batch_records(p, "pre"))).start()
    broker0 = ctx.broker.cpu_seconds()
    proc = Proc(daemon_argv(config), log_path=d / "daemon.log")
    try:
        t0 = proc.wait_msg("started", 60)
        cpu0, io0 = cpu_seconds(proc.target), proc_io(proc.target)
        proc.wait_msg("connected", 30)
        t_drained = _wait_drained(settings.buffer_path, timeout=600)
        t_received = sub.wait_total(n, timeout=120)
        cpu1, io1 = cpu_seconds(proc.target), proc_io(proc.target)
        status = proc_status(proc.target)
        broker1 = ctx.broker.cpu_seconds()
    finally:
        proc.stop()
        sub.close()
    t_end = max(t_received, t_drained)
    return {
        "readings": n,
        "seconds": t_end - t0,
        "readings_per_s": n / (t_end - t0),
        "acked_readings_per_s": n / (t_drained - t0),
        "messages": sub.messages,
        "records_per_message": sub.total / max(sub.messages, 1),
        "wire_bytes_per_reading": sub.payload_bytes / n,
        "cpu_us_per_reading": (cpu1 - cpu0) / n * 1e6,
        "broker_cpu_us_per_reading": (broker1 - broker0) / n * 1e6,
        "vm_hwm_mib": mib(status["VmHWM"]),
        "disk_write_bytes_per_reading": (io1["write_bytes"] - io0["write_bytes"]) / n,
        "preloaded_file_mib": mib(preload_bytes),
    }


def baseline_round(ctx: Context, kind: str, n: int) -> dict[str, Any]:
    """One run of the naive per-reading publisher (``paho`` or ``aiomqtt``)."""
    d = ctx.directory(f"throughput-{kind}")
    sub = Subscriber(ctx.broker, ctx.pki, lambda _p: 1).start()
    pki = ctx.pki
    argv = [PYTHON, "-m", "bench.baselines", kind, "--port", str(ctx.broker.port)]
    argv += ["--ca", str(pki.ca_cert), "--cert", str(pki.client_cert), "--key", str(pki.client_key)]
    argv += ["--count", str(n), "--window", str(WINDOW)]
    broker0 = ctx.broker.cpu_seconds()
    proc = Proc(argv, log_path=d / f"{kind}.log")
    try:
        t0 = proc.wait_line(lambda line: line.startswith("ready "), 60)
        proc.wait_line(lambda line: line.startswith("acked "), 900)
        t_received = sub.wait_total(n, timeout=600)
        broker1 = ctx.broker.cpu_seconds()
        words = {line.split()[0]: line.split()[1:] for _, line in proc.lines}
        cpu0 = float(words["ready"][0])
        t_acked, cpu1 = (float(w) for w in words["acked"])
    finally:
        proc.stop()
        sub.close()
    t_end = max(t_acked, t_received)
    return {
        "readings": n,
        "seconds": t_end - t0,
        "readings_per_s": n / (t_end - t0),
        "acked_readings_per_s": n / (t_acked - t0),
        "messages": sub.messages,
        "records_per_message": sub.total / max(sub.messages, 1),
        "wire_bytes_per_reading": sub.payload_bytes / n,
        "cpu_us_per_reading": (cpu1 - cpu0) / n * 1e6,
        "broker_cpu_us_per_reading": (broker1 - broker0) / n * 1e6,
    }


def _medians(rounds: list[dict[str, Any]]) -> dict[str, float]:
    return {key: median(r[key] for r in rounds) for key in rounds[0]}


def run(ctx: Context) -> dict[str, Any]:
    """Alternate gateway and baselines for a few rounds; report medians and ratios."""
    n_gateway = 60_000 if ctx.quick else 200_000
    n_baseline = 15_000 if ctx.quick else 40_000
    rounds = 2 if ctx.quick else 3
    runs: dict[str, list[dict[str, Any]]] = {"gateway": [], "paho": [], "aiomqtt": []}
    for r in range(rounds):
        runs["gateway"].append(gateway_round(ctx, n_gateway))
        ctx.log(_line(f"round {r + 1} gateway", runs["gateway"][-1]))
        for kind in ("paho", "aiomqtt"):
            runs[kind].append(baseline_round(ctx, kind, n_baseline))
            ctx.log(_line(f"round {r + 1} naive {kind}", runs[kind][-1]))
    med = {kind: _medians(rs) for kind, rs in runs.items()}
    g = med["gateway"]
    table = Table(["", "gateway (batches)", "naive paho", "naive aiomqtt"])
    rows = (
        ("readings/s end to end", "readings_per_s", 0),
        ("readings/s until all PUBACKs", "acked_readings_per_s", 0),
        ("publisher CPU µs/reading", "cpu_us_per_reading", 1),
        ("broker CPU µs/reading", "broker_cpu_us_per_reading", 2),
        ("payload bytes/reading", "wire_bytes_per_reading", 1),
        ("readings/message", "records_per_message", 0),
    )
    for label, key, digits in rows:
        table.add(label, *(f"{med[k][key]:,.{digits}f}" for k in ("gateway", "paho", "aiomqtt")))
    ratios = {
        "gateway_vs_paho_readings_per_s": ratio(g["readings_per_s"], med["paho"]["readings_per_s"]),
        "gateway_vs_aiomqtt_readings_per_s": ratio(
            g["readings_per_s"], med["aiomqtt"]["readings_per_s"]
        ),
        "paho_vs_gateway_cpu_per_reading": ratio(
            med["paho"]["cpu_us_per_reading"], g["cpu_us_per_reading"]
        ),
        "aiomqtt_vs_gateway_cpu_per_reading": ratio(
            med["aiomqtt"]["cpu_us_per_reading"], g["cpu_us_per_reading"]
        ),
    }
    ctx.log(table.markdown())
    ctx.log(
        f"ratio gateway/naive paho {ratios['gateway_vs_paho_readings_per_s']}x, "
        f"gateway/naive aiomqtt {ratios['gateway_vs_aiomqtt_readings_per_s']}x (readings/s); "
        f"gateway drain: peak RSS {g['vm_hwm_mib']} MiB, "
        f"{g['disk_write_bytes_per_reading']:.0f} disk bytes written/reading"
    )
    return {
        "params": {
            "gateway_readings": n_gateway,
            "baseline_readings": n_baseline,
            "rounds": rounds,
            "window": WINDOW,
        },
        "runs": runs,
        "median": med,
        "ratios": ratios,
        "table": table.markdown(),
        "summary": [
            [
                "throughput, readings/s to broker-acknowledged",
                f"{g['readings_per_s']:,.0f}/s",
                f"1 QoS 1 message/reading: paho {med['paho']['readings_per_s']:,.0f}/s, "
                f"aiomqtt {med['aiomqtt']['readings_per_s']:,.0f}/s",
                f"{ratios['gateway_vs_paho_readings_per_s']}x, "
                f"{ratios['gateway_vs_aiomqtt_readings_per_s']}x",
            ]
        ],
    }


def _line(label: str, r: dict[str, Any]) -> str:
    return (
        f"  {label}: {r['readings']:,} readings in {r['seconds']:.2f} s = "
        f"{r['readings_per_s']:,.0f}/s end to end ({r['acked_readings_per_s']:,.0f}/s to last "
        f"PUBACK), {r['messages']:,} messages, CPU {r['cpu_us_per_reading']:.1f} µs/reading, "
        f"broker {r['broker_cpu_us_per_reading']:.2f} µs/reading"
    )
