"""Runs the benchmark suite: ``python -m bench [--quick] [--only NAME ...] [--json PATH]``.

One Mosquitto with a mutual-TLS listener on 127.0.0.1 and a throwaway PKI serve
every benchmark; everything else lives in a temporary work directory that is
removed at the end (``--keep`` keeps it, with every process's log).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

from bench import (
    bench_cost,
    bench_disk,
    bench_drain,
    bench_memory,
    bench_startup,
    bench_throughput,
)
from bench.common import Context, Mosquitto, Table, machine_info, make_pki, strace_usable

BENCHES: dict[str, ModuleType] = {
    "throughput": bench_throughput,
    "memory": bench_memory,
    "disk": bench_disk,
    "startup": bench_startup,
    "drain": bench_drain,
    "cost": bench_cost,
}


def _log(text: str) -> None:
    print(text, flush=True)


def describe_machine(info: dict[str, Any]) -> str:
    """The machine block of the report."""
    packages = ", ".join(f"{k} {v}" for k, v in info["packages"].items())
    load = ", ".join(f"{x:.2f}" for x in info["loadavg_at_start"])
    return "\n".join(
        [
            f"- date: {info['date']}",
            f"- CPU: {info['cpu']}, {info['cores']} logical cores "
            f"({info['cores_usable']} usable), {info['memory_mib']:,} MiB RAM",
            f"- kernel {info['kernel']}; work directory on {info['filesystem']}",
            f"- {info['python']}, SQLite {info['sqlite']}, {info['openssl']}, "
            f"Mosquitto {info['mosquitto']}",
            f"- {packages}",
            f"- load average at start: {load}; wsn-gateway at {info['git']}",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench", description="wsn-gateway benchmarks, each against a baseline."
    )
    parser.add_argument("--quick", action="store_true", help="a ~3.5 minute run with smaller sizes")
    parser.add_argument(
        "--only", action="append", choices=sorted(BENCHES), help="run only this one (repeatable)"
    )
    parser.add_argument("--json", type=Path, help="also write every figure to this JSON file")
    parser.add_argument(
        "--workdir", type=Path, help="parent of the work directory (default: the system's temp)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the work directory and logs")
    parser.add_argument("--no-strace", action="store_true", help="do not count fsyncs with strace")
    args = parser.parse_args(argv)

    selected = [name for name in BENCHES if not args.only or name in args.only]
    if args.workdir:
        args.workdir.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="wsn-bench-", dir=args.workdir))
    info = machine_info(workdir)
    _log(f"wsn-gateway benchmarks ({'quick' if args.quick else 'full'} run), work in {workdir}")
    _log(describe_machine(info))
    use_strace = not args.no_strace and strace_usable()
    if not use_strace:
        _log("strace not usable here: fsyncs are not counted")

    started = time.monotonic()
    pki = make_pki(workdir / "pki")
    broker = Mosquitto(pki, workdir)
    results: dict[str, Any] = {}
    try:
        broker.start()
        ctx = Context(
            workdir=workdir, pki=pki, broker=broker, quick=args.quick, strace=use_strace, log=_log
        )
        for name in selected:
            _log(f"\n== {name}: {BENCHES[name].__doc__.splitlines()[0]}")  # type: ignore[union-attr]
            t = time.monotonic()
            run: Callable[[Context], dict[str, Any]] = BENCHES[name].run
            results[name] = run(ctx)
            results[name]["elapsed_s"] = round(time.monotonic() - t, 1)
    finally:
        broker.stop()
        if args.keep:
            _log(f"\nkept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)

    summary = Table(["benchmark", "wsn-gateway", "baseline (same run)", "ratio"])
    for name in selected:
        for row in results[name]["summary"]:
            summary.add(*row)
    elapsed = time.monotonic() - started
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    _log(f"\n== summary ({elapsed:.0f} s; load average at the end: {load})\n")
    _log(summary.markdown())
    if args.json:
        report = {"machine": info, "quick": args.quick, "elapsed_s": round(elapsed, 1)}
        report["loadavg_at_end"] = os.getloadavg()
        report["results"] = results
        args.json.write_text(json.dumps(report, indent=2, default=str) + "\n")
        _log(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
