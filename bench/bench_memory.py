"""Memory: resident set of the daemon with 10 simulated sensors, connected to the broker.

``wsn-gateway run`` with 6 simulated BME280s on bus sim (distinct addresses) and 4
counters, intervals 0.1 to 1 s (about 87 readings/s), default settings otherwise.
From its "connected" log line the suite samples its RSS every second for the
duration (60 s; 30 s with --quick), then reads VmRSS and VmHWM (peak) from
/proc/PID/status and USS (memory only this process holds) through psutil.

Baselines alive over the same interval: a bare ``python -c "import asyncio,
aiomqtt; ..."`` that connects to the same broker with the same mutual TLS and
sleeps (what any asyncio MQTT client costs), and ``python -c`` that only sleeps
(the interpreter's floor).
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

import psutil

from bench.baselines import IDLE_AIOMQTT
from bench.common import (
    PYTHON,
    Context,
    Proc,
    Subscriber,
    Table,
    batch_records,
    cpu_seconds,
    daemon_argv,
    mib,
    mixed_rate,
    mixed_sensors,
    proc_status,
    ratio,
    write_config,
)

SLEEPER = "import time; print('ready', flush=True); time.sleep(3600)"


def _uss(process: psutil.Process) -> int:
    with contextlib.suppress(psutil.Error):
        return int(process.memory_full_info().uss)
    return 0


def run(ctx: Context) -> dict[str, Any]:
    duration = 30.0 if ctx.quick else 60.0
    d = ctx.directory("memory")
    config = write_config(
        d / "gateway.yaml", ctx=ctx, state_dir=d / "state", sensors=mixed_sensors()
    )
    pki = ctx.pki
    sub = Subscriber(ctx.broker, ctx.pki, lambda p: len(batch_records(p))).start()
    idle_argv = [PYTHON, "-c", IDLE_AIOMQTT, str(pki.ca_cert), str(pki.client_cert)]
    idle_argv += [str(pki.client_key), str(ctx.broker.port)]
    procs = {
        "daemon": Proc(daemon_argv(config), log_path=d / "daemon.log"),
        "aiomqtt": Proc(idle_argv, log_path=d / "idle-aiomqtt.log"),
        "python": Proc([PYTHON, "-c", SLEEPER], log_path=d / "sleeper.log"),
    }
    samples: list[tuple[float, int]] = []
    try:
        procs["daemon"].wait_msg("connected", 60)
        procs["aiomqtt"].wait_line(lambda line: line == "connected", 60)
        procs["python"].wait_line(lambda line: line == "ready", 60)
        daemon = procs["daemon"].target
        t0 = time.monotonic()
        cpu0 = cpu_seconds(daemon)
        while (elapsed := time.monotonic() - t0) < duration:
            samples.append((elapsed, int(daemon.memory_info().rss)))
            time.sleep(min(1.0, max(0.0, duration - elapsed)))
        cpu = (cpu_seconds(daemon) - cpu0) / (time.monotonic() - t0)
        status = {name: proc_status(p.target) for name, p in procs.items()}
        uss = {name: _uss(p.target) for name, p in procs.items()}
    finally:
        for p in procs.values():
            p.stop()
        sub.wait_quiet(0.5, 10)
        sub.close()

    def figures(name: str) -> dict[str, float]:
        s = status[name]
        return {
            "rss_mib": mib(s["VmRSS"]),
            "hwm_mib": mib(s["VmHWM"]),
            "uss_mib": mib(uss[name]),
            "threads": s.get("Threads", 0),
        }

    res = {name: figures(name) for name in procs}
    for mark in (10, 30):
        at = next((rss for t, rss in samples if t >= mark), samples[-1][1])
        res["daemon"][f"rss_at_{mark}s_mib"] = mib(at)
    res["daemon"]["cpu_percent"] = round(cpu * 100, 1)
    res["daemon"]["readings_received"] = sub.total
    dm, am, pm = res["daemon"], res["aiomqtt"], res["python"]

    table = Table(["", "wsn-gateway run", "python -c asyncio+aiomqtt", "python -c sleep"])
    for label, key in (
        ("RSS MiB", "rss_mib"),
        ("peak (VmHWM) MiB", "hwm_mib"),
        ("USS MiB", "uss_mib"),
    ):
        table.add(label, dm[key], am[key], pm[key])
    table.add("threads", dm["threads"], am["threads"], pm["threads"])
    ratios = {
        "rss_vs_aiomqtt": ratio(dm["rss_mib"], am["rss_mib"]),
        "hwm_vs_aiomqtt": ratio(dm["hwm_mib"], am["hwm_mib"]),
        "rss_minus_aiomqtt_mib": round(dm["rss_mib"] - am["rss_mib"], 1),
    }
    ctx.log(table.markdown())
    ctx.log(
        f"after {duration:.0f} s connected with 10 sensors (~{mixed_rate():.0f} readings/s): "
        f"daemon RSS {ratios['rss_vs_aiomqtt']}x the bare aiomqtt process "
        f"(+{ratios['rss_minus_aiomqtt_mib']} MiB); daemon RSS {dm['rss_at_10s_mib']} MiB at "
        f"10 s, {dm['rss_at_30s_mib']} at 30 s; daemon CPU {dm['cpu_percent']} % "
        f"of one core; {sub.total} readings received"
    )
    return {
        "params": {"duration_s": duration, "sensors": 10, "readings_per_s": mixed_rate()},
        "figures": res,
        "rss_samples": [(round(t, 1), mib(rss)) for t, rss in samples],
        "ratios": ratios,
        "table": table.markdown(),
        "summary": [
            [
                f"RSS after {duration:.0f} s, 10 sensors",
                f"{dm['rss_mib']} MiB (peak {dm['hwm_mib']})",
                f"bare asyncio+aiomqtt {am['rss_mib']} MiB (peak {am['hwm_mib']})",
                f"{ratios['rss_vs_aiomqtt']}x (+{ratios['rss_minus_aiomqtt_mib']} MiB)",
            ]
        ],
    }
