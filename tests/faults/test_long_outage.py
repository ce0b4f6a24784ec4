"""Fault: a long outage, compressed in time.

200 counter sensors polled every 0.05 s feed 4,000 readings a second into a buffer
capped at 2 MiB while the broker is down for 26 s: about 100,000 readings, the cap
reached after about 13 s (the first half), then a steady state of dropping the oldest
(the second half). Meanwhile the daemon's resident memory is sampled (psutil) and the
buffer's files on disk (``buffer.sqlite3``, ``-wal``, ``-shm``) are measured:

- memory stays flat: the readings go to disk, not into the process (the largest RSS
  of the second half is at most the largest of the first half + 10 MiB);
- the backlog grows on disk, then stops growing at the cap: the files never exceed
  ``buffer.max_bytes`` plus the stated overhead ``DISK_OVERHEAD``: SQLite's WAL
  (checkpointed at 1,000 pages of 4 KiB, and not truncated afterwards, so up to
  about 4 MiB plus one transaction), the shared-memory index, and free pages left by
  deleted rows (up to a quarter of the cap).

The broker then returns, and the audit of ``test_buffer_cap`` applies: every reading
arrived or is counted in ``dropped``, exactly, oldest first.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import psutil
import pytest

from .fault_harness import RUN, FaultRig, recover_and_audit, sensors

if TYPE_CHECKING:
    from conftest import Collector

pytestmark = [pytest.mark.integration, pytest.mark.faults]

MIB = 1 << 20
CAP = 2 * MIB
FEED = sensors(200, 0.05)  # 4,000 readings a second
OUTAGE = 26.0
#: What the buffer's files may take beyond buffer.max_bytes (see the module docstring):
#: the WAL (1,000 pages of 4 KiB, plus a transaction), the -shm index, free pages.
DISK_OVERHEAD = 1000 * 4096 + MIB // 2 + 64 * 1024 + CAP // 4
RSS_GROWTH = 10 * MIB


def disk_use(buffer: Path) -> tuple[int, int, int]:
    """Bytes of the buffer file, its WAL and its shared-memory index."""
    sizes = []
    for suffix in ("", "-wal", "-shm"):
        try:
            sizes.append(Path(f"{buffer}{suffix}").stat().st_size)
        except FileNotFoundError:
            sizes.append(0)
    return sizes[0], sizes[1], sizes[2]


def test_a_long_outage_keeps_memory_flat_and_the_disk_within_the_cap(
    make_rig: Callable[..., FaultRig], collector: Callable[..., Collector]
) -> None:
    rig = make_rig()
    telemetry = collector(rig.broker)
    gateway = rig.launch(
        rig.config(
            sensors=FEED,
            start=RUN,
            buffer={"max_bytes": CAP, "commit_interval": 0.5},
            batch={"max_age": 1.0},
        )
    )
    gateway.wait_log("connected", timeout=30)
    telemetry.wait_for(lambda messages: len(messages) >= 2, timeout=30)
    process = psutil.Process(gateway.pid)

    rig.broker.stop()
    gateway.wait_log("connection lost", timeout=30)
    began = time.monotonic()
    samples: list[tuple[float, int, tuple[int, int, int]]] = []  # (seconds in, RSS, files)
    while (elapsed := time.monotonic() - began) < OUTAGE:
        samples.append((elapsed, process.memory_info().rss, disk_use(rig.buffer_path)))
        assert gateway.running, gateway.describe()
        time.sleep(0.25)
    drops = gateway.find("buffer full: dropped oldest readings")
    assert drops, "the outage should outlast the cap"

    first = [rss for t, rss, _ in samples if t < OUTAGE / 2]
    second = [rss for t, rss, _ in samples if t >= OUTAGE / 2]
    disk = [sum(files) for _, _, files in samples]
    main, wal, shm = (max(files[i] for _, _, files in samples) / MIB for i in range(3))
    report = (
        f"RSS first half max {max(first) / MIB:.1f} MiB, second half max "
        f"{max(second) / MIB:.1f} MiB; disk {disk[0] / MIB:.2f} -> max {max(disk) / MIB:.2f} MiB "
        f"(file {main:.2f}, WAL {wal:.2f}, shm {shm:.2f} MiB at most; "
        f"cap {CAP / MIB:.0f} MiB + overhead {DISK_OVERHEAD / MIB:.2f} MiB)"
    )
    print(report)
    assert max(second) <= max(first) + RSS_GROWTH, report
    assert max(disk) <= CAP + DISK_OVERHEAD, report
    assert max(disk) > disk[0] + CAP // 2, f"the backlog did not grow on disk: {report}"

    recovery = recover_and_audit(rig, gateway, telemetry, FEED, backlog=8_000)
    assert recovery.taken > 60_000, f"only {recovery.taken} readings taken: the feed was too slow"
    rig.assert_healthy(gateway)
