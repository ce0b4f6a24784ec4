"""Drain: delivering the backlog of an outage, without rate limits and within AWS IoT Core's.

The runner preloads N readings (1,000,000; 200,000 with --quick) into a buffer file
with ``Buffer.add``, in transactions of 10,000: the history of 10 BME280-like
sensors (``bme-0`` to ``bme-9``, temperature, humidity and pressure as
full-precision floats) taken at 100 readings/s, i.e. the backlog of a 2.8-hour outage
(33 minutes for 200,000). Each drain starts ``wsn-gateway run`` on a copy of that
file, connected to the local mutual-TLS Mosquitto, with default batch settings
(128,000-byte batches, 100 in flight) and 3 live counter sensors (``live-0`` to
``live-2``, every 0.1 s: 30 readings/s) that keep taking readings during the drain.
The clock runs from the daemon's "started" log line until no preloaded reading is
left in the buffer file, a QoS 1 subscriber has received all N preloaded records,
and no outbox batch holds a preloaded record any more (its PUBACK is recorded).

- (a) ``mqtt.messages_per_second: 0`` and ``bytes_per_second: 0``: no limits.
- (b) AWS IoT Core's per-connection limits, the daemon's defaults: 100 messages/s and
  524,288 bytes/s. The figure of merit is the payload bytes/s achieved over the
  drain as a percentage of 524,288 (target: at least 90 %), which needs batches filled
  close to ``batch.max_bytes``: mean payload size and fill ratio are reported too,
  with the largest payload volume that arrived within any 1 s (at the subscriber).

Fresh readings during the drain: for every message the subscriber notes the wall
time of arrival and the times of its ``live-*`` records. Reported: the age of the
newest live reading delivered when the drain ended, the longest time during the
drain with no newer live reading delivered (staleness), and the delay from a live
reading being taken to its arrival.

Baselines, same broker, same TLS, in the same run: one QoS 1 message per reading
(small JSON, in-flight window 100, paho-mqtt). (a) The unlimited publisher of the
throughput benchmark on 40,000 readings (15,000 with --quick). (b) The same publisher
paced to 100 messages/s (it could not send more to AWS IoT Core: the excess is
discarded) for 10 s (5 s with --quick). Both rates are measured, and the time each
would need for the same N is *extrapolated* from them: the baselines do not drain N
readings.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import statistics
import time
from pathlib import Path
from typing import Any

from bench import bench_throughput
from bench.common import (
    PYTHON,
    THING,
    Context,
    Proc,
    Subscriber,
    Table,
    counter,
    cpu_seconds,
    daemon_argv,
    mib,
    proc_io,
    proc_status,
    ratio,
    sensor_history,
    write_config,
)
from gateway.buffer import Buffer
from gateway.config import BatchSettings, load_settings

BACKLOG = "bme-"
LIVE = "live-"
LIVE_SENSORS = 3
LIVE_INTERVAL = 0.1
AWS_MESSAGES_PER_S = 100.0
AWS_BYTES_PER_S = 524_288.0
TARGET = 0.90
CHUNK = 10_000


class Deliveries:
    """What the subscriber saw, message by message: (arrival wall time, payload bytes,
    preloaded records, live records' times). ``count`` is the subscriber's callback,
    called on its network thread."""

    def __init__(self) -> None:
        self.rows: list[tuple[float, int, int, list[float]]] = []

    def count(self, payload: bytes) -> int:
        arrival = time.time()
        records = json.loads(payload)["records"]
        base = float(records[0].get("bt", 0.0))
        backlog = 0
        live: list[float] = []
        for record in records:
            name = record["n"]
            if name.startswith(BACKLOG):
                backlog += 1
            elif name.startswith(LIVE):
                live.append(base + float(record.get("t", 0.0)))
        self.rows.append((arrival, len(payload), backlog, live))
        return backlog


def preload(path: Path, n: int, max_bytes: int) -> float:
    """Write the backlog into a fresh buffer file; returns the seconds it took."""
    t = time.monotonic()
    buffer = Buffer(path, max_bytes=max_bytes)
    for chunk in sensor_history(n, start=time.time() - n / 100 - 60, prefix=BACKLOG, chunk=CHUNK):
        buffer.add(chunk)
    buffer.close()  # checkpoints the WAL into the file: one file to copy
    return time.monotonic() - t


def _poll(db: sqlite3.Connection, query: str, args: tuple[Any, ...], timeout: float) -> float:
    """Poll until ``query`` returns 0; returns when (monotonic)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if db.execute(query, args).fetchone()[0] == 0:
            return time.monotonic()
        time.sleep(0.01)
    raise TimeoutError(f"{query}: not 0 within {timeout} s")


def _peak_per_second(rows: list[tuple[float, int, int, list[float]]]) -> int:
    """The most payload bytes that arrived within any 1 s."""
    best = total = 0
    j = 0
    for arrival, size, _, _ in rows:
        total += size
        while rows[j][0] <= arrival - 1.0:
            total -= rows[j][1]
            j += 1
        best = max(best, total)
    return best


def _live_figures(
    rows: list[tuple[float, int, int, list[float]]], t0: float, end: float
) -> dict[str, Any]:
    """Freshness of the live readings over the drain [t0, end] (wall times)."""
    newest = None  # newest live reading delivered so far
    staleness = 0.0
    delays: list[float] = []
    delivered = 0
    for arrival, _, _, live in rows:
        if arrival > end:
            break
        staleness = max(staleness, arrival - (newest if newest is not None else t0))
        if live:
            delivered += len(live)
            delays += [arrival - t for t in live]
            newest = max(live) if newest is None else max(newest, *live)
    staleness = max(staleness, end - (newest if newest is not None else t0))
    return {
        "live_delivered": delivered,
        "live_taken_approx": round((end - t0) * LIVE_SENSORS / LIVE_INTERVAL),
        "live_age_at_end_s": round(end - newest, 2) if newest is not None else None,
        "live_max_staleness_s": round(staleness, 2),
        "live_delay_median_s": round(statistics.median(delays), 2) if delays else None,
        "live_delay_max_s": round(max(delays), 2) if delays else None,
    }


def drain_round(ctx: Context, template: Path, n: int, *, limited: bool) -> dict[str, Any]:
    """One drain of the preloaded backlog by the daemon."""
    d = ctx.directory("drain-" + ("limited" if limited else "unlimited"))
    rates = (AWS_MESSAGES_PER_S, AWS_BYTES_PER_S) if limited else (0, 0)
    config = write_config(
        d / "gateway.yaml",
        ctx=ctx,
        state_dir=d / "state",
        sensors=[counter(f"{LIVE}{i}", LIVE_INTERVAL) for i in range(LIVE_SENSORS)],
        mqtt={"messages_per_second": rates[0], "bytes_per_second": rates[1]},
    )
    settings = load_settings(config)
    settings.buffer_path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(template, settings.buffer_path)

    deliveries = Deliveries()
    sub = Subscriber(
        ctx.broker, ctx.pki, deliveries.count, topic_filter=f"dt/wsn/{THING}/telemetry"
    ).start()
    proc = Proc(daemon_argv(config), log_path=d / "daemon.log")
    db = sqlite3.connect(settings.buffer_path, isolation_level=None, timeout=5)
    try:
        t0 = proc.wait_msg("started", 60)
        t0_wall = time.time() - (time.monotonic() - t0)
        cpu0, io0 = cpu_seconds(proc.target), proc_io(proc.target)
        proc.wait_msg("connected", 30)
        budget = 120 + n / (1000 if limited else 5000)
        # Cheap while the backlog is large: EXISTS stops at the first row.
        _poll(
            db,
            "SELECT EXISTS (SELECT 1 FROM readings WHERE series IN"
            " (SELECT id FROM series WHERE name LIKE ?))",
            (BACKLOG + "%",),
            budget,
        )
        sub.wait_total(n, timeout=120)
        # By now the outbox is small: look into its payloads.
        t_end = _poll(
            db,
            "SELECT COUNT(*) FROM outbox WHERE instr(payload, ?) > 0",
            (f'"n":"{BACKLOG}'.encode(),),
            60,
        )
        end_wall = time.time() - (time.monotonic() - t_end)
        cpu1, io1 = cpu_seconds(proc.target), proc_io(proc.target)
        status = proc_status(proc.target)
    finally:
        db.close()
        proc.stop()
        sub.close()
    seconds = t_end - t0
    rows = [row for row in deliveries.rows if row[0] <= end_wall]
    sizes = [size for _, size, backlog, _ in rows]
    backlog_sizes = [size for _, size, backlog, _ in rows if backlog]
    total_bytes = sum(sizes)
    carrying = [row for row in rows if row[2]]
    steady = carrying[-1][0] - carrying[0][0] if len(carrying) > 1 else 0.0
    max_bytes = settings.batch.max_bytes
    res: dict[str, Any] = {
        "limited": limited,
        "readings": n,
        "seconds": round(seconds, 2),
        "readings_per_s": round(n / seconds),
        "messages": len(rows),
        "messages_with_backlog": len(carrying),
        "messages_per_s": round(len(rows) / seconds, 2),
        "payload_bytes": total_bytes,
        "bytes_per_s": round(total_bytes / seconds),
        "percent_of_aws_bytes_limit": round(100 * total_bytes / seconds / AWS_BYTES_PER_S, 1),
        # From the first to the last arrival of a batch with backlog: no start-up.
        "steady_bytes_per_s": round(sum(backlog_sizes[1:]) / steady) if steady else None,
        "peak_bytes_in_1s": _peak_per_second(rows),
        "mean_payload_bytes": round(statistics.mean(sizes)) if sizes else 0,
        "fill_ratio": round(statistics.mean(backlog_sizes) / max_bytes, 4) if backlog_sizes else 0,
        "batches_under_99_percent_full": sum(1 for s in backlog_sizes if s < 0.99 * max_bytes),
        "payload_bytes_per_reading": round(total_bytes / n, 1),
        "cpu_us_per_reading": round((cpu1 - cpu0) / n * 1e6, 1),
        "cpu_percent": round((cpu1 - cpu0) / seconds * 100, 1),
        "vm_hwm_mib": mib(status["VmHWM"]),
        "disk_write_bytes_per_reading": round((io1["write_bytes"] - io0["write_bytes"]) / n),
    }
    res.update(_live_figures(rows, t0_wall, end_wall))
    # Preloaded readings that arrived in each second of the drain: stalls show here.
    per_second = [0] * (int(end_wall - t0_wall) + 1)
    for arrival, _, backlog, _ in rows:
        per_second[max(0, int(arrival - t0_wall))] += backlog
    res["backlog_readings_per_second"] = per_second
    return res


def paced_round(ctx: Context, seconds: float) -> dict[str, Any]:
    """The naive per-reading publisher held to AWS IoT Core's 100 messages/s."""
    d = ctx.directory("drain-naive-paced")
    client_id = "bench-naive-paced"
    sub = Subscriber(
        ctx.broker, ctx.pki, lambda _p: 1, topic_filter=f"dt/wsn/{client_id}/telemetry"
    ).start()
    pki = ctx.pki
    argv = [PYTHON, "-m", "bench.baselines", "paced", "--port", str(ctx.broker.port)]
    argv += ["--ca", str(pki.ca_cert), "--cert", str(pki.client_cert), "--key", str(pki.client_key)]
    argv += ["--rate", str(AWS_MESSAGES_PER_S), "--duration", str(seconds)]
    argv += ["--client-id", client_id]
    proc = Proc(argv, log_path=d / "paced.log")
    try:
        proc.wait_line(lambda line: line.startswith("done "), seconds + 90)
        words = next(line.split()[1:] for _, line in proc.lines if line.startswith("done "))
        sent, acked = int(words[0]), int(words[1])
        start, last_ack = float(words[2]), float(words[3])
        sub.wait_total(acked, 30)
    finally:
        proc.stop()
        sub.close()
    span = last_ack - start
    return {
        "sent": sent,
        "acked": acked,
        "received": sub.total,
        "seconds": round(span, 2),
        "readings_per_s": round(acked / span, 1),
        "bytes_per_s": round(sub.payload_bytes / span),
        "mean_payload_bytes": round(sub.payload_bytes / max(sub.messages, 1), 1),
    }


def _hours(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    if seconds >= 120:
        return f"{seconds / 60:.1f} min"
    return f"{seconds:.1f} s"


def run(ctx: Context) -> dict[str, Any]:
    """Preload once, drain it twice (no limits, AWS limits), run both baselines."""
    n = 200_000 if ctx.quick else 1_000_000
    n_naive = 15_000 if ctx.quick else 40_000
    paced_seconds = 5.0 if ctx.quick else 10.0
    d = ctx.directory("drain-backlog")
    template = d / "backlog.sqlite3"
    preload_s = preload(template, n, max_bytes=256 * 1024 * 1024)
    ctx.log(
        f"  preloaded {n:,} readings in {preload_s:.1f} s "
        f"({mib(template.stat().st_size)} MiB buffer file)"
    )
    interleave = BatchSettings.model_fields.get("interleave")
    feature = "absent" if interleave is None else f"present, default {interleave.default}"
    ctx.log(f"  batch.interleave (live batches between backlog batches): {feature}")

    unlimited = drain_round(ctx, template, n, limited=False)
    ctx.log(_line("(a) gateway, no limits", unlimited))
    naive = bench_throughput.baseline_round(ctx, "paho", n_naive)
    ctx.log(
        f"  (a) naive paho, no limits: {naive['readings']:,} readings at "
        f"{naive['readings_per_s']:,.0f}/s -> {n:,} would take "
        f"{_hours(n / naive['readings_per_s'])} (extrapolated)"
    )
    limited = drain_round(ctx, template, n, limited=True)
    ctx.log(_line("(b) gateway, AWS limits", limited))
    paced = paced_round(ctx, paced_seconds)
    ctx.log(
        f"  (b) naive paho at {AWS_MESSAGES_PER_S:.0f} msg/s: {paced['acked']:,} readings in "
        f"{paced['seconds']} s = {paced['readings_per_s']}/s, {paced['bytes_per_s']:,} B/s "
        f"-> {n:,} would take {_hours(n / paced['readings_per_s'])} (extrapolated)"
    )
    naive_a_s = n / naive["readings_per_s"]
    naive_b_s = n / paced["readings_per_s"]
    ratios = {
        "unlimited_naive_vs_gateway_time": ratio(naive_a_s, unlimited["seconds"]),
        "limited_naive_vs_gateway_time": ratio(naive_b_s, limited["seconds"]),
    }

    table = Table(
        ["", "(a) no limits: gateway", "naive paho", "(b) AWS limits: gateway", "naive, 100 msg/s"]
    )
    table.add(
        f"time to deliver {n:,} readings",
        _hours(unlimited["seconds"]),
        f"{_hours(naive_a_s)} (extrapolated)",
        _hours(limited["seconds"]),
        f"{_hours(naive_b_s)} (extrapolated)",
    )
    table.add(
        "readings/s",
        f"{unlimited['readings_per_s']:,}",
        f"{naive['readings_per_s']:,.0f}",
        f"{limited['readings_per_s']:,}",
        f"{paced['readings_per_s']:,}",
    )
    table.add(
        "payload bytes/s (% of 524,288)",
        f"{unlimited['bytes_per_s']:,} ({unlimited['percent_of_aws_bytes_limit']} %)",
        "",
        f"{limited['bytes_per_s']:,} ({limited['percent_of_aws_bytes_limit']} %)",
        f"{paced['bytes_per_s']:,} ({100 * paced['bytes_per_s'] / AWS_BYTES_PER_S:.1f} %)",
    )
    table.add(
        "messages/s",
        f"{unlimited['messages_per_s']:,}",
        f"{naive['readings_per_s']:,.0f}",
        f"{limited['messages_per_s']:,}",
        f"{paced['readings_per_s']:,}",
    )
    table.add(
        "mean payload bytes (fill of 128,000)",
        f"{unlimited['mean_payload_bytes']:,} ({unlimited['fill_ratio']:.1%})",
        f"{naive['wire_bytes_per_reading']:.0f}",
        f"{limited['mean_payload_bytes']:,} ({limited['fill_ratio']:.1%})",
        f"{paced['mean_payload_bytes']:.0f}",
    )
    table.add(
        "peak payload bytes within 1 s",
        f"{unlimited['peak_bytes_in_1s']:,}",
        "",
        f"{limited['peak_bytes_in_1s']:,}",
        "",
    )
    for label, key in (
        ("newest live reading delivered: its age at the end", "live_age_at_end_s"),
        ("longest wait for a newer live reading", "live_max_staleness_s"),
        ("live reading taken → delivered, median", "live_delay_median_s"),
        ("live reading taken → delivered, max", "live_delay_max_s"),
    ):
        table.add(label, _secs(unlimited[key]), "", _secs(limited[key]), "")
    table.add(
        "live readings delivered during the drain",
        f"{unlimited['live_delivered']:,} of ~{unlimited['live_taken_approx']:,}",
        "",
        f"{limited['live_delivered']:,} of ~{limited['live_taken_approx']:,}",
        "",
    )
    ctx.log(table.markdown())
    met = limited["percent_of_aws_bytes_limit"] >= TARGET * 100
    ctx.log(
        f"(b) reached {limited['percent_of_aws_bytes_limit']} % of AWS IoT Core's 524,288 B/s "
        f"(target {TARGET:.0%}: {'met' if met else 'NOT met'}); naive/gateway time: "
        f"{ratios['unlimited_naive_vs_gateway_time']}x without limits, "
        f"{ratios['limited_naive_vs_gateway_time']}x within AWS's limits"
    )
    return {
        "params": {
            "readings": n,
            "backlog": "10 BME280-like sensors x 3 quantities at 100 readings/s",
            "live_sensors": LIVE_SENSORS,
            "live_readings_per_s": LIVE_SENSORS / LIVE_INTERVAL,
            "naive_unlimited_readings": n_naive,
            "naive_paced_seconds": paced_seconds,
            "interleave": feature,
            "preload_s": round(preload_s, 1),
        },
        "unlimited": unlimited,
        "limited": limited,
        "naive_unlimited": naive,
        "naive_paced": paced,
        "naive_extrapolated_s": {"unlimited": round(naive_a_s), "limited": round(naive_b_s)},
        "ratios": ratios,
        "table": table.markdown(),
        "summary": [
            [
                f"drain {n:,} buffered readings, AWS limits (100 msg/s, 512 KiB/s)",
                f"{_hours(limited['seconds'])}, {limited['percent_of_aws_bytes_limit']} % "
                f"of 512 KiB/s",
                f"1 message/reading at 100 msg/s: {_hours(naive_b_s)} (extrapolated)",
                f"**{ratios['limited_naive_vs_gateway_time']}x**",
            ],
            [
                f"drain {n:,} buffered readings, no limits",
                _hours(unlimited["seconds"]),
                f"1 message/reading, paho: {_hours(naive_a_s)} (extrapolated)",
                f"{ratios['unlimited_naive_vs_gateway_time']}x",
            ],
        ],
    }


def _secs(value: float | None) -> str:
    return "none delivered" if value is None else f"{value:,.1f} s"


def _line(label: str, r: dict[str, Any]) -> str:
    return (
        f"  {label}: {r['readings']:,} readings in {r['seconds']:.1f} s = "
        f"{r['readings_per_s']:,}/s, {r['messages']:,} messages, {r['bytes_per_s']:,} B/s "
        f"({r['percent_of_aws_bytes_limit']} % of 524,288), mean payload "
        f"{r['mean_payload_bytes']:,} B (fill {r['fill_ratio']:.1%}), CPU "
        f"{r['cpu_us_per_reading']} µs/reading; newest live reading {_secs(r['live_age_at_end_s'])}"
        f" old at the end, longest wait {r['live_max_staleness_s']} s"
    )
