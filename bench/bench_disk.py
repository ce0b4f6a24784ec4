"""Disk: bytes written and fsyncs per reading at a steady, known feed rate.

``wsn-gateway run`` with 10 counter sensors polled every 0.1 s (100 readings/s),
default buffer and batch settings (a group commit a second, batches sealed at 30 s
of age). After a warm-up the suite reads /proc/PID/io at the start and end of a
window (60 s; 30 s with --quick): ``write_bytes`` (what reached the block layer:
SQLite's pages, including WAL checkpoints), ``wchar`` (bytes handed to write(2),
which also counts the log lines on stdout) and ``syscw`` (write calls). With strace
available, each process runs under ``strace -f --seccomp-bpf -e trace=fsync,...``
(only those calls stop it) and the calls that began within the window are counted.
The readings in the window are counted from what the broker delivered (the
daemon is stopped afterwards, which seals and publishes the rest).

Baseline, alive over the same window: a small Python program that inserts the same
100 readings/s into a WAL SQLite file with synchronous=FULL (the daemon's own
settings), one transaction per reading, measured the same way.
"""

from __future__ import annotations

import sqlite3
import time
from typing import Any

from bench.common import (
    PYTHON,
    Context,
    Proc,
    Subscriber,
    Table,
    batch_records,
    count_sync_calls,
    counter,
    daemon_argv,
    proc_io,
    ratio,
    record_times,
    strace_argv,
    write_config,
)

RATE = 100.0


def run(ctx: Context) -> dict[str, Any]:
    warmup, window = (5.0, 30.0) if ctx.quick else (10.0, 60.0)
    d = ctx.directory("disk")
    sensors = [counter(f"count-{i}", 10 / RATE) for i in range(10)]
    config = write_config(d / "gateway.yaml", ctx=ctx, state_dir=d / "state", sensors=sensors)
    naive_db = d / "naive.sqlite3"
    traces = {"daemon": d / "daemon.strace", "naive": d / "naive.strace"}
    wrap = {name: strace_argv(path) if ctx.strace else [] for name, path in traces.items()}
    sub = Subscriber(ctx.broker, ctx.pki, lambda p: len(batch_records(p)), keep=True).start()
    naive_argv = [PYTHON, "-m", "bench.baselines", "sqlite", "--db", str(naive_db)]
    naive_argv += ["--rate", str(RATE)]
    procs = {
        "daemon": Proc(
            wrap["daemon"] + daemon_argv(config), log_path=d / "daemon.log", wrapped=ctx.strace
        ),
        "naive": Proc(
            wrap["naive"] + naive_argv,
            log_path=d / "naive.log",
            wrapped=ctx.strace,
        ),
    }
    try:
        procs["daemon"].wait_msg("connected", 60)
        procs["naive"].wait_line(lambda line: line == "ready", 60)
        time.sleep(warmup)
        io0 = {name: proc_io(p.target) for name, p in procs.items()}
        w0 = time.time()
        time.sleep(window)
        io1 = {name: proc_io(p.target) for name, p in procs.items()}
        w1 = time.time()
    finally:
        for p in procs.values():
            p.stop()
    sub.wait_quiet(1.0, 20)
    sub.close()

    gateway_readings = sum(
        1 for payload in sub.payloads for t in record_times(payload) if w0 <= t < w1
    )
    db = sqlite3.connect(naive_db)
    (naive_readings,) = db.execute(
        "SELECT COUNT(*) FROM readings WHERE time >= ? AND time < ?", (w0, w1)
    ).fetchone()
    db.close()
    readings = {"daemon": gateway_readings, "naive": int(naive_readings)}

    res: dict[str, dict[str, float | int | None]] = {}
    for name in procs:
        n = max(readings[name], 1)
        delta = {key: io1[name][key] - io0[name][key] for key in io0[name]}
        entry: dict[str, float | int | None] = {
            "readings": readings[name],
            "readings_per_s": round(readings[name] / (w1 - w0), 1),
            "write_bytes_per_reading": round(delta["write_bytes"] / n, 1),
            "wchar_per_reading": round(delta["wchar"] / n, 1),
            "write_calls_per_reading": round(delta["syscw"] / n, 3),
            "write_bytes_per_s": round(delta["write_bytes"] / (w1 - w0)),
        }
        if ctx.strace:
            calls = count_sync_calls(traces[name], w0, w1)
            syncs = sum(calls.values())
            entry["sync_calls"] = syncs
            entry["sync_calls_by_name"] = {k: v for k, v in calls.items() if v}  # type: ignore[assignment]
            entry["syncs_per_reading"] = round(syncs / n, 4)
            entry["syncs_per_s"] = round(syncs / (w1 - w0), 2)
        else:
            entry["syncs_per_reading"] = None
        res[name] = entry
    g, b = res["daemon"], res["naive"]
    ratios = {
        "write_bytes_naive_vs_gateway": ratio(
            float(b["write_bytes_per_reading"] or 0), float(g["write_bytes_per_reading"] or 0)
        ),
        "wchar_naive_vs_gateway": ratio(
            float(b["wchar_per_reading"] or 0), float(g["wchar_per_reading"] or 0)
        ),
        "syncs_naive_vs_gateway": ratio(
            float(b["syncs_per_reading"] or 0), float(g["syncs_per_reading"] or 0)
        )
        if ctx.strace
        else None,
    }
    table = Table(["per reading", "wsn-gateway run", "naive: 1 transaction/reading", "ratio"])
    table.add(
        "write_bytes (block layer)",
        g["write_bytes_per_reading"],
        b["write_bytes_per_reading"],
        ratios["write_bytes_naive_vs_gateway"],
    )
    table.add(
        "wchar", g["wchar_per_reading"], b["wchar_per_reading"], ratios["wchar_naive_vs_gateway"]
    )
    table.add("write calls", g["write_calls_per_reading"], b["write_calls_per_reading"], "")
    if ctx.strace:
        table.add(
            "fsync + fdatasync",
            g["syncs_per_reading"],
            b["syncs_per_reading"],
            ratios["syncs_naive_vs_gateway"],
        )
    table.add("readings in the window", g["readings"], b["readings"], "")
    ctx.log(table.markdown())
    ctx.log(
        f"window {w1 - w0:.1f} s after {warmup:.0f} s warm-up; gateway "
        f"{g['write_bytes_per_s']:,} B/s written"
        + (f", {g['syncs_per_s']} syncs/s" if ctx.strace else "")
        + f"; naive {b['write_bytes_per_s']:,} B/s"
        + (f", {b['syncs_per_s']} syncs/s" if ctx.strace else "")
    )
    sync_note = (
        f", {g['syncs_per_reading']} vs {b['syncs_per_reading']} fsyncs/reading "
        f"({ratios['syncs_naive_vs_gateway']}x)"
        if ctx.strace
        else ""
    )
    return {
        "params": {"warmup_s": warmup, "window_s": round(w1 - w0, 1), "rate": RATE},
        "figures": res,
        "ratios": ratios,
        "table": table.markdown(),
        "summary": [
            [
                f"disk bytes written per reading at {RATE:.0f}/s",
                f"{g['write_bytes_per_reading']} B",
                f"1 SQLite transaction/reading: {b['write_bytes_per_reading']} B",
                f"{ratios['write_bytes_naive_vs_gateway']}x less" + sync_note,
            ]
        ],
    }
