"""Fault: SIGKILL of the daemon at random moments, over and over, with the broker
reachable, stopped, frozen (SIGSTOP: TCP up, nothing answered) or frozen in the middle
of a run.

After every kill the buffer file is read (read-only): its readings and the sealed
batches in its outbox are committed, and the design says they must arrive. What was
only polled (in memory, at most one commit interval) may be lost; so per sensor and
run, what arrives is ``start, start+1, ...`` without a hole, and includes everything
that was committed. After the cycles a clean run drains everything; then one stream,
seq 1 on, no gap, no broken ``prev``, copies of a batch sent twice byte-identical.

The random schedule is seeded; set WSN_FAULTS_SEED to replay a failing one.
"""

from __future__ import annotations

import os
import random
import sqlite3
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import pytest
from daemon_harness import wait_until

from gateway import verify

from .fault_harness import (
    RUN,
    FaultRig,
    Key,
    arrival,
    audit_drops,
    committed,
    sensors,
    single_stream,
)

if TYPE_CHECKING:
    from conftest import Collector

pytestmark = [pytest.mark.integration, pytest.mark.faults]

CYCLES = 30
FEED = sensors(4, 0.05)  # 80 readings a second
#: What the broker does during a cycle: even cycles it is up; odd ones rotate through
#: stopped (connection refused), frozen from the start (the TLS handshake hangs), and
#: frozen at a random moment while the daemon is connected (PUBACKs never come).
MODES = ("down", "frozen", "freezes")


def test_sigkill_at_random_moments_loses_nothing_that_was_committed(
    make_rig: Callable[..., FaultRig], collector: Callable[..., Collector]
) -> None:
    seed = int(os.environ.get("WSN_FAULTS_SEED") or random.randrange(2**32))
    rng = random.Random(seed)
    context = f"(WSN_FAULTS_SEED={seed})"
    rig = make_rig()
    telemetry = collector(rig.broker)
    sections = {
        "buffer": {"commit_interval": 0.2},
        "batch": {"max_age": 0.3},
        "mqtt": {
            "max_inflight": 4,
            "connect_timeout": 2.0,
            "publish_timeout": 2.0,
            "reconnect_min": 0.1,
            "reconnect_max": 0.5,
        },
    }

    held: set[Key] = set()  # every reading seen committed in the buffer file
    sealed: dict[int, bytes] = {}  # every sealed payload seen in the outbox, by seq
    stream: str | None = None
    history: list[str] = []
    began = time.monotonic()
    for cycle in range(1, CYCLES + 1):
        mode = "up" if cycle % 2 == 0 else MODES[(cycle // 2) % len(MODES)]
        if mode == "down":
            rig.broker.stop()
        elif mode == "frozen":
            rig.pause_broker()
        gateway = rig.launch(
            rig.config(f"run{cycle}.yaml", sensors=FEED, start=cycle * RUN, **sections)
        )
        if cycle % 5 == 0:
            # Now and then, during start-up: the buffer may be opening or just created.
            time.sleep(rng.uniform(0.05, 0.8))
        else:
            gateway.wait_log("started", timeout=30)
            if mode == "freezes":
                gateway.wait_log("connected", timeout=30)
                time.sleep(rng.uniform(0.1, 0.6))
                rig.pause_broker()
            time.sleep(rng.uniform(0.1, 1.0))
        gateway.kill()
        assert gateway.returncode is not None and gateway.returncode < 0, gateway.describe()
        rig.resume_broker()
        if not rig.broker.running:
            rig.broker.start()
        history.append(f"{cycle}:{mode}")

        if not rig.buffer_path.exists():
            continue  # killed before the buffer was created
        try:
            snapshot = rig.snapshot()
        except (sqlite3.DatabaseError, KeyError):
            # Killed while the very first start created the file: nothing in it yet.
            assert not held, f"the buffer became unreadable after cycle {cycle} {context}"
            continue
        if stream is None:
            stream = snapshot.stream
        assert snapshot.stream == stream, f"a new stream after cycle {cycle} {context}"
        held |= committed(snapshot, rig.keys())
        for seq, payload in snapshot.outbox.items():
            assert sealed.setdefault(seq, payload) == payload, (
                f"seq {seq} was sealed again with other bytes {context}"
            )
    assert len(held) > 300, f"too little was committed to prove anything {context}"
    assert sealed, f"no kill ever caught a sealed, unacknowledged batch {context}"

    # A final, clean run with the broker up drains everything.
    final = (CYCLES + 1) * RUN
    gateway = rig.launch(rig.config("final.yaml", sensors=FEED, start=final, **sections))
    assert gateway.wait_log("started", timeout=30)["stream"] == stream
    gateway.wait_log("connected", timeout=30)
    wait_until(
        lambda: arrival(telemetry.payloads(), rig.keys()).has(held),
        timeout=60,
        what=f"every committed reading arrives {context}",
    )
    assert gateway.terminate() == 0, gateway.describe()
    taken = gateway.counters()["readings_taken"]
    wait_until(
        lambda: arrival(telemetry.payloads(), rig.keys()).count(at_least=final) >= taken,
        timeout=30,
        what=f"every reading of the final run arrives {context}",
    )
    elapsed = time.monotonic() - began

    payloads = telemetry.payloads()
    summary = single_stream(verify.verify_stream(payloads, rig.keys()))
    assert summary.stream == stream
    assert summary.dropped == 0
    received = set(payloads)
    resent = [seq for seq, payload in sealed.items() if payload not in received]
    assert not resent, f"sealed batches {resent} never arrived as the same bytes {context}"
    got = arrival(payloads, rig.keys())
    missing = held - set(got.readings)
    assert not missing, f"{len(missing)} committed readings lost, e.g. {sorted(missing)[:5]}"
    # Per sensor and run no holes: what was lost is at most the uncommitted tail.
    audit = audit_drops(got, FEED)
    assert not audit.missing, f"holes in the counter values: {audit.missing[:5]} {context}"
    assert got.count(at_least=final) == taken
    runs = {value // RUN for _, value in got.readings}
    assert len(runs) >= CYCLES // 2, f"only runs {sorted(runs)} delivered anything {context}"
    print(
        f"{CYCLES} kill cycles in {elapsed:.0f} s {context}: {len(held)} readings committed, "
        f"{len(sealed)} sealed batches caught in the outbox, {summary.unique_batches} batches, "
        f"{summary.duplicates} duplicates; {' '.join(history)}"
    )
    rig.assert_healthy(gateway)
