"""Start-up: from process start to the daemon's "started" log line (and to "connected").

``wsn-gateway run`` with the 10-sensor configuration of the memory benchmark; the
clock starts just before the process is spawned and stops when its "started" line
arrives on the pipe. The first start is cold (it creates the signing key and the
buffer file); the others find both. Baselines, interleaved in the same loop:
``python -c pass`` (spawn to exit) and ``python -c "import ..."`` of the daemon's
main dependencies (the floor that third-party imports set). One more start with
``-X importtime`` shows where the import time goes.
"""

from __future__ import annotations

import re
import subprocess
import time
from typing import Any

from bench.common import (
    PYTHON,
    REPO,
    Context,
    Proc,
    Table,
    daemon_argv,
    median,
    mixed_sensors,
    ratio,
    write_config,
)

DEPENDENCIES = "import asyncio, sqlite3, ssl, aiomqtt, cryptography.x509, pydantic, yaml, rfc8785"

# Time the phases of start-up inside one fresh interpreter.
PHASES = """\
import sys, time
t0 = time.perf_counter()
import gateway.cli, gateway.config
t1 = time.perf_counter()
import gateway.daemon, gateway.logs
t2 = time.perf_counter()
settings = gateway.config.load_settings(sys.argv[1])
t3 = time.perf_counter()
settings = gateway.config.load_settings(sys.argv[1])
t4 = time.perf_counter()
print(f"{t1 - t0} {t2 - t1} {t3 - t2} {t4 - t3}")
"""


def _spawn_to_exit(argv: list[str]) -> float:
    t = time.monotonic()
    subprocess.run(argv, check=True)
    return time.monotonic() - t


def _importtime() -> list[tuple[str, float]]:
    """Import time (ms) of the daemon's modules, summed by top-level package, largest first."""
    result = subprocess.run(
        [PYTHON, "-X", "importtime", "-c", "import gateway.cli, gateway.daemon, gateway.logs"],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
    )
    by_package: dict[str, float] = {}
    for line in result.stderr.splitlines():
        match = re.match(r"import time:\s+(\d+) \|\s+\d+ \|\s*(\S+)", line)
        if match:
            package = match.group(2).split(".")[0]
            by_package[package] = by_package.get(package, 0.0) + int(match.group(1)) / 1000
    return sorted(by_package.items(), key=lambda item: -item[1])[:10]


def run(ctx: Context) -> dict[str, Any]:
    reps = 3 if ctx.quick else 7
    d = ctx.directory("startup")
    config = write_config(
        d / "gateway.yaml", ctx=ctx, state_dir=d / "state", sensors=mixed_sensors()
    )
    started: list[float] = []
    connected: list[float] = []
    bare: list[float] = []
    deps: list[float] = []
    for i in range(reps + 1):
        bare.append(_spawn_to_exit([PYTHON, "-c", "pass"]))
        deps.append(_spawn_to_exit([PYTHON, "-c", DEPENDENCIES]))
        proc = Proc(daemon_argv(config), log_path=d / f"daemon-{i}.log")
        try:
            started.append(proc.wait_msg("started", 60) - proc.spawned)
            connected.append(proc.wait_msg("connected", 60) - proc.spawned)
        finally:
            proc.stop()
    cold_started, cold_connected = started.pop(0), connected.pop(0)
    bare.pop(0)
    deps.pop(0)
    phases_out = subprocess.run(
        [PYTHON, "-c", PHASES, str(config)], capture_output=True, text=True, check=True, cwd=d
    ).stdout.split()
    phases = dict(
        zip(
            ("import_cli_config", "import_daemon", "load_settings_first", "load_settings_again"),
            (round(float(x) * 1000, 1) for x in phases_out),
            strict=True,
        )
    )
    imports = _importtime()
    fig = {
        "started_ms": round(median(started) * 1000, 1),
        "started_min_ms": round(min(started) * 1000, 1),
        "connected_ms": round(median(connected) * 1000, 1),
        "cold_started_ms": round(cold_started * 1000, 1),
        "cold_connected_ms": round(cold_connected * 1000, 1),
        "python_pass_ms": round(median(bare) * 1000, 1),
        "python_pass_min_ms": round(min(bare) * 1000, 1),
        "python_deps_ms": round(median(deps) * 1000, 1),
    }
    ratios = {
        "started_vs_python_pass": ratio(fig["started_ms"], fig["python_pass_ms"]),
        "started_vs_python_deps": ratio(fig["started_ms"], fig["python_deps_ms"]),
    }
    table = Table(["", f"median of {reps} (ms)", "min (ms)"])
    table.add('wsn-gateway run → "started"', fig["started_ms"], fig["started_min_ms"])
    table.add('wsn-gateway run → "connected"', fig["connected_ms"], round(min(connected) * 1000, 1))
    table.add('first start (cold: new key and buffer) → "started"', fig["cold_started_ms"], "")
    table.add("python -c pass", fig["python_pass_ms"], fig["python_pass_min_ms"])
    table.add(
        'python -c "import <dependencies>"', fig["python_deps_ms"], round(min(deps) * 1000, 1)
    )
    ctx.log(table.markdown())
    ctx.log(
        "in one interpreter (ms): "
        + ", ".join(f"{k} {v}" for k, v in phases.items())
        + "\nimport time by package (ms, self time summed): "
        + ", ".join(f"{name} {ms:.0f}" for name, ms in imports)
    )
    ctx.log(
        f"ratio started / python -c pass: {ratios['started_vs_python_pass']}x; "
        f"started / dependency imports: {ratios['started_vs_python_deps']}x"
    )
    return {
        "params": {"repetitions": reps, "sensors": 10, "command": daemon_argv(config)[:2]},
        "figures": fig,
        "phases_ms": phases,
        "largest_imports_ms": imports,
        "ratios": ratios,
        "table": table.markdown(),
        "summary": [
            [
                'start-up to "started" (10 sensors)',
                f"{fig['started_ms']} ms",
                f"python -c pass {fig['python_pass_ms']} ms",
                f"{ratios['started_vs_python_pass']}x",
            ]
        ],
    }
