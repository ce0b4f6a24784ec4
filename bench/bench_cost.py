"""Cost: what the gateway costs per hour at a realistic, steady load.

``wsn-gateway run`` with 10 counter sensors polled every 0.1 s (100 readings/s),
connected to the local mutual-TLS Mosquitto with default settings otherwise: a group
commit a second, 128,000-byte batches sealed when full or 30 s old (``batch.max_age``),
AWS IoT Core's rate limits. Counters, not simulated BME280s, so that the CPU
figure is the gateway's own and not the simulator's (which inverts the BME280
compensation formulas on every read). After a warm-up (10 s; 5 s with --quick) the
runner measures a window (300 s; 60 s with --quick):

- CPU seconds per hour: utime + stime from /proc/PID/stat at both ends of the
  window (every thread), scaled to an hour;
- resident memory at the end: VmRSS and VmHWM (peak) from /proc/PID/status;
- disk bytes written per reading: ``write_bytes`` of /proc/PID/io (what reached the
  block layer) over the readings taken in the window;
- fsyncs per minute: with strace available, each process runs under ``strace -f
  --seccomp-bpf -e trace=fsync,fdatasync,...`` (the disk benchmark's helpers) and the
  calls that began in the window are counted;
- messages per hour: telemetry messages that arrived at a QoS 1 subscriber within
  the window, scaled to an hour (a batch every ~25 s: a 60 s window holds only 2 or
  3, so the --quick figure is coarse), and the messages AWS IoT Core would meter
  (5 KB steps, taken as 5,120 bytes; arithmetic, not a measurement).

Readings in the window are counted from what the broker delivered whose reading time
lies in it (SIGTERM afterwards makes the daemon seal and publish the rest).

Baseline, alive over the same window, measured the same way: the naive way made
durable, ``python -m bench.baselines durable``. At the same 100 readings/s it
commits every reading to SQLite on its own (WAL, synchronous=FULL: the daemon's
settings; the same transaction deletes the rows acknowledged since the last one),
then publishes it as one QoS 1 message (small JSON) through paho-mqtt.
"""

from __future__ import annotations

import json
import math
import time
from typing import Any

from bench.common import (
    PYTHON,
    THING,
    Context,
    Proc,
    Subscriber,
    Table,
    count_sync_calls,
    counter,
    daemon_argv,
    mib,
    proc_io,
    proc_stat_cpu,
    proc_status,
    ratio,
    strace_argv,
    write_config,
)

RATE = 100.0
NAIVE_ID = "bench-naive-cost"
METER_STEP = 5120  # AWS IoT Core meters messages in 5 KB steps


class Arrivals:
    """Each message as it arrived: (arrival wall time, payload bytes, reading times)."""

    def __init__(self, gateway: bool) -> None:
        self.gateway = gateway
        self.rows: list[tuple[float, int, list[float]]] = []

    def count(self, payload: bytes) -> int:
        arrival = time.time()
        data = json.loads(payload)
        if self.gateway:
            records = data["records"]
            base = float(records[0].get("bt", 0.0))
            times = [base + float(r.get("t", 0.0)) for r in records]
        else:
            times = [float(data["time"])]
        self.rows.append((arrival, len(payload), times))
        return len(times)


def run(ctx: Context) -> dict[str, Any]:
    warmup, window = (5.0, 60.0) if ctx.quick else (10.0, 300.0)
    d = ctx.directory("cost")
    sensors = [counter(f"count-{i}", 10 / RATE) for i in range(10)]
    config = write_config(d / "gateway.yaml", ctx=ctx, state_dir=d / "state", sensors=sensors)
    traces = {"daemon": d / "daemon.strace", "naive": d / "naive.strace"}
    wrap = {name: strace_argv(path) if ctx.strace else [] for name, path in traces.items()}
    arrivals = {"daemon": Arrivals(gateway=True), "naive": Arrivals(gateway=False)}
    topics = {"daemon": f"dt/wsn/{THING}/telemetry", "naive": f"dt/wsn/{NAIVE_ID}/telemetry"}
    subs = {
        name: Subscriber(
            ctx.broker, ctx.pki, arrivals[name].count, topic_filter=topics[name]
        ).start()
        for name in arrivals
    }
    pki = ctx.pki
    naive_argv = [PYTHON, "-m", "bench.baselines", "durable", "--port", str(ctx.broker.port)]
    naive_argv += ["--ca", str(pki.ca_cert), "--cert", str(pki.client_cert)]
    naive_argv += ["--key", str(pki.client_key), "--rate", str(RATE), "--client-id", NAIVE_ID]
    naive_argv += ["--db", str(d / "naive.sqlite3")]
    procs = {
        "daemon": Proc(
            wrap["daemon"] + daemon_argv(config), log_path=d / "daemon.log", wrapped=ctx.strace
        ),
        "naive": Proc(wrap["naive"] + naive_argv, log_path=d / "naive.log", wrapped=ctx.strace),
    }
    try:
        procs["daemon"].wait_msg("connected", 60)
        procs["naive"].wait_line(lambda line: line == "ready", 60)
        time.sleep(warmup)
        cpu0 = {name: proc_stat_cpu(p.target) for name, p in procs.items()}
        io0 = {name: proc_io(p.target) for name, p in procs.items()}
        w0 = time.time()
        time.sleep(window)
        cpu1 = {name: proc_stat_cpu(p.target) for name, p in procs.items()}
        io1 = {name: proc_io(p.target) for name, p in procs.items()}
        w1 = time.time()
        status = {name: proc_status(p.target) for name, p in procs.items()}
    finally:
        for p in procs.values():
            p.stop()
        for sub in subs.values():
            sub.wait_quiet(1.0, 20)
            sub.close()

    span = w1 - w0
    res: dict[str, dict[str, Any]] = {}
    for name in procs:
        rows = arrivals[name].rows
        readings = sum(1 for _, _, times in rows for t in times if w0 <= t < w1)
        in_window = [size for arrival, size, _ in rows if w0 <= arrival < w1]
        n = max(readings, 1)
        entry: dict[str, Any] = {
            "readings": readings,
            "readings_per_s": round(readings / span, 1),
            "cpu_s_per_hour": round((cpu1[name] - cpu0[name]) / span * 3600, 1),
            "cpu_percent": round((cpu1[name] - cpu0[name]) / span * 100, 2),
            "cpu_us_per_reading": round((cpu1[name] - cpu0[name]) / n * 1e6, 1),
            "rss_mib": mib(status[name]["VmRSS"]),
            "hwm_mib": mib(status[name]["VmHWM"]),
            "write_bytes_per_reading": round(
                (io1[name]["write_bytes"] - io0[name]["write_bytes"]) / n, 1
            ),
            "write_mb_per_hour": round(
                (io1[name]["write_bytes"] - io0[name]["write_bytes"]) / span * 3600 / 1e6, 1
            ),
            "messages_in_window": len(in_window),
            "messages_per_hour": round(len(in_window) / span * 3600),
            "metered_messages_per_hour": round(
                sum(math.ceil(size / METER_STEP) for size in in_window) / span * 3600
            ),
            "readings_per_message": round(
                sum(len(times) for arrival, _, times in rows if w0 <= arrival < w1)
                / max(len(in_window), 1),
                1,
            ),
            "payload_bytes_per_reading": round(
                sum(size for arrival, size, _ in rows if w0 <= arrival < w1)
                / max(sum(len(times) for arrival, _, times in rows if w0 <= arrival < w1), 1),
                1,
            ),
        }
        if ctx.strace:
            calls = count_sync_calls(traces[name], w0, w1)
            syncs = sum(calls.values())
            entry["sync_calls"] = syncs
            entry["sync_calls_by_name"] = {k: v for k, v in calls.items() if v}
            entry["syncs_per_minute"] = round(syncs / span * 60, 1)
        else:
            entry["syncs_per_minute"] = None
        res[name] = entry
    g, b = res["daemon"], res["naive"]
    ratios = {
        "cpu_naive_vs_gateway": ratio(b["cpu_s_per_hour"], g["cpu_s_per_hour"]),
        "rss_naive_vs_gateway": ratio(b["rss_mib"], g["rss_mib"]),
        "write_bytes_naive_vs_gateway": ratio(
            b["write_bytes_per_reading"], g["write_bytes_per_reading"]
        ),
        "syncs_naive_vs_gateway": ratio(b["syncs_per_minute"], g["syncs_per_minute"])
        if ctx.strace
        else None,
        "messages_naive_vs_gateway": ratio(b["messages_per_hour"], g["messages_per_hour"]),
        "metered_naive_vs_gateway": ratio(
            b["metered_messages_per_hour"], g["metered_messages_per_hour"]
        ),
    }
    table = Table(
        [
            "per hour at 100 readings/s",
            "wsn-gateway run",
            "naive: commit + message per reading",
            "ratio",
        ]
    )
    table.add(
        "CPU seconds (% of one core)",
        f"{g['cpu_s_per_hour']:,} ({g['cpu_percent']} %)",
        f"{b['cpu_s_per_hour']:,} ({b['cpu_percent']} %)",
        ratios["cpu_naive_vs_gateway"],
    )
    table.add(
        "RSS at the end, MiB (peak)",
        f"{g['rss_mib']} ({g['hwm_mib']})",
        f"{b['rss_mib']} ({b['hwm_mib']})",
        ratios["rss_naive_vs_gateway"],
    )
    table.add(
        "disk bytes written per reading",
        f"{g['write_bytes_per_reading']:,}",
        f"{b['write_bytes_per_reading']:,}",
        ratios["write_bytes_naive_vs_gateway"],
    )
    table.add(
        "disk MB written per hour",
        f"{g['write_mb_per_hour']:,}",
        f"{b['write_mb_per_hour']:,}",
        "",
    )
    if ctx.strace:
        table.add(
            "fsyncs per minute",
            f"{g['syncs_per_minute']:,}",
            f"{b['syncs_per_minute']:,}",
            ratios["syncs_naive_vs_gateway"],
        )
    table.add(
        "MQTT messages per hour",
        f"{g['messages_per_hour']:,}",
        f"{b['messages_per_hour']:,}",
        ratios["messages_naive_vs_gateway"],
    )
    table.add(
        "AWS-metered messages per hour (5 KB steps)",
        f"{g['metered_messages_per_hour']:,}",
        f"{b['metered_messages_per_hour']:,}",
        ratios["metered_naive_vs_gateway"],
    )
    table.add(
        "readings per message",
        f"{g['readings_per_message']:,}",
        f"{b['readings_per_message']:,}",
        "",
    )
    table.add("readings in the window", f"{g['readings']:,}", f"{b['readings']:,}", "")
    ctx.log(table.markdown())
    ctx.log(
        f"window {span:.1f} s after {warmup:.0f} s warm-up; gateway "
        f"{g['messages_in_window']} messages in the window "
        f"({g['payload_bytes_per_reading']} payload B/reading), CPU "
        f"{g['cpu_us_per_reading']} µs/reading; naive {b['cpu_us_per_reading']} µs/reading"
    )
    sync_note = (
        f", {g['syncs_per_minute']} vs {b['syncs_per_minute']} fsyncs/min" if ctx.strace else ""
    )
    return {
        "params": {"warmup_s": warmup, "window_s": round(span, 1), "rate": RATE, "sensors": 10},
        "figures": res,
        "ratios": ratios,
        "table": table.markdown(),
        "summary": [
            [
                f"cost per hour at {RATE:.0f} readings/s: CPU s, messages",
                f"{g['cpu_s_per_hour']:,} CPU s, {g['messages_per_hour']:,} messages",
                f"commit + message per reading: {b['cpu_s_per_hour']:,} CPU s, "
                f"{b['messages_per_hour']:,} messages",
                f"**{ratios['cpu_naive_vs_gateway']}x** CPU, "
                f"{ratios['messages_naive_vs_gateway']}x messages" + sync_note,
            ]
        ],
    }
