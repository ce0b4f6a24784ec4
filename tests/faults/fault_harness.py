"""What the fault scenarios share: the rig, the faults it can inject, and the audit of
what arrived.

The real process, its configuration, log and buffer snapshots come from
``tests/integration/daemon_harness.py`` (imported, not copied). On top of it:

- :class:`FaultRig`: one broker, the test PKI, one state directory and the daemons
  started on them; it can freeze the broker (SIGSTOP: TCP stays up, nothing is
  answered), mount a small tmpfs, and cleans all of that up.
- :func:`arrival`: the batches a consumer received, deduplicated on (stream, seq),
  and every counter reading in them with the seq of its batch and its time.
- :func:`audit_drops`: the consumer's check that loss is never silent: counter values
  go ``start, start+1, ...`` per sensor and run, so every missing value is a lost
  reading; the missing ones must add up exactly to the ``dropped`` the batches
  announce, and they must be the oldest: no reading older than one announced as
  dropped in batch ``j`` may arrive in batch ``j`` or later.
"""

from __future__ import annotations

import bisect
import contextlib
import os
import signal
import subprocess
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from daemon_harness import (
    BufferSnapshot,
    GatewayProcess,
    gateway_config,
    signing_keys,
    snapshot_buffer,
    wait_until,
    write_config,
)

from gateway import verify

if TYPE_CHECKING:
    from conftest import Collector, Mosquitto, PkiBundle

#: Counter values of run ``k`` start at ``k * RUN``, so that no value repeats across
#: restarts and every value names the run that took it.
RUN = 100_000

Key = tuple[str, int]  # (sensor, counter value)


def sensors(count: int, interval: float, prefix: str = "s") -> dict[str, float]:
    """``count`` counter sensors named s00, s01, ... polled every ``interval`` seconds."""
    width = len(str(count - 1))
    return {f"{prefix}{i:0{width}d}": interval for i in range(count)}


# --------------------------------------------------------------------------- the rig


@dataclass
class FaultRig:
    """A broker, the test PKI, one state directory, and the daemons started on them."""

    broker: Mosquitto
    pki: PkiBundle
    directory: Path
    processes: list[GatewayProcess] = field(default_factory=list)
    mounts: list[Path] = field(default_factory=list)
    paused: bool = False

    def __post_init__(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)

    @property
    def state_dir(self) -> Path:
        return self.directory / "state"

    @property
    def buffer_path(self) -> Path:
        return self.state_dir / "buffer.sqlite3"

    def config(
        self,
        name: str = "gateway.yaml",
        *,
        sensors: Mapping[str, float],
        start: int = RUN,
        **sections: Any,
    ) -> Path:
        """Write a configuration for this broker and state directory; returns its path."""
        files = self.pki.files
        config = gateway_config(
            port=self.broker.port,
            ca=files.ca_cert,
            cert=files.client_cert,
            key=files.client_key,
            state_dir=self.state_dir,
            sensors=sensors,
            start=start,
            **sections,
        )
        return write_config(self.directory / name, config)

    def launch(self, config: Path) -> GatewayProcess:
        """Start ``wsn-gateway run --config CONFIG``; killed at teardown if still running."""
        log = self.directory / f"gateway-{len(self.processes) + 1}.log"
        process = GatewayProcess(config, log).start()
        self.processes.append(process)
        return process

    def snapshot(self) -> BufferSnapshot:
        return snapshot_buffer(self.buffer_path)

    def keys(self) -> dict[str, verify.PublicKey]:
        return signing_keys(self.state_dir)

    # --- faults ---------------------------------------------------------------------------
    def pause_broker(self) -> None:
        """SIGSTOP Mosquitto: connections stay open, nothing is read or answered."""
        process = self.broker.process
        assert process is not None and process.poll() is None, "the broker is not running"
        process.send_signal(signal.SIGSTOP)
        self.paused = True

    def resume_broker(self) -> None:
        """SIGCONT a paused Mosquitto."""
        process = self.broker.process
        if self.paused and process is not None and process.poll() is None:
            process.send_signal(signal.SIGCONT)
        self.paused = False

    def mount_tmpfs(self, path: Path, size: str) -> None:
        """Mount a tmpfs of ``size`` on ``path``; skips the test where that is not allowed."""
        path.mkdir(parents=True, exist_ok=True)
        if os.geteuid() != 0:
            pytest.skip("mounting a small tmpfs needs root (mount -t tmpfs)")
        result = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path)],
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip() or result.returncode}")
        self.mounts.append(path)

    # --- teardown ---------------------------------------------------------------------------
    def cleanup(self) -> None:
        """Kill the daemons still running, wake the broker, unmount: never raises."""
        for process in self.processes:
            with contextlib.suppress(Exception):
                process.kill()
        with contextlib.suppress(Exception):
            self.resume_broker()
        for path in reversed(self.mounts):
            subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)
        self.mounts.clear()
        _checked.clear()

    def assert_healthy(self, process: GatewayProcess) -> None:
        """No task failed unseen (asyncio's own log lines) and nothing on stderr."""
        unseen = process.find(lambda entry: entry.get("logger") == "asyncio")
        assert not unseen, f"asyncio reported errors: {unseen}"
        assert not process.stderr_text().strip(), process.describe()


# --------------------------------------------------------------------------- what arrived


@dataclass(frozen=True)
class Arrived:
    """One counter reading as a consumer received it."""

    seq: int
    time: float


@dataclass
class Arrival:
    """What a consumer received: unique batches and every counter reading in them."""

    batches: list[verify.Batch]
    readings: dict[Key, Arrived]

    def values(self, sensor: str) -> list[int]:
        return sorted(v for s, v in self.readings if s == sensor)

    def count(self, *, at_least: int = 0, below: int | None = None) -> int:
        return sum(1 for _, v in self.readings if v >= at_least and (below is None or v < below))

    def has(self, keys: Iterable[Key]) -> bool:
        return all(key in self.readings for key in keys)

    @property
    def dropped(self) -> int:
        return sum(batch.dropped for batch in self.batches)


#: Checked batches by (payload, kids): the scenarios look at what arrived again and
#: again while they wait, and checking a full batch (canonical form, signature) of
#: thousands of records costs tens of milliseconds. Emptied by ``FaultRig.cleanup``.
_checked: dict[tuple[bytes, frozenset[str]], verify.Batch] = {}


def checked_batch(payload: bytes, keys: Mapping[str, verify.PublicKey]) -> verify.Batch:
    """``verify.verify_batch``, remembered."""
    memo = (payload, frozenset(keys))
    batch = _checked.get(memo)
    if batch is None:
        batch = _checked[memo] = verify.verify_batch(payload, keys)
    return batch


def arrival(payloads: Iterable[bytes], keys: Mapping[str, verify.PublicKey]) -> Arrival:
    """Deduplicate on (stream, seq) -- copies must be byte-identical -- and index the
    readings. A counter value in two different batches is a duplicated reading.

    The same as ``daemon_harness.unique_batches``, with each payload checked once."""
    by_key: dict[tuple[str, int], verify.Batch] = {}
    for payload in payloads:
        batch = checked_batch(payload, keys)
        first = by_key.setdefault((batch.stream, batch.seq), batch)
        assert first.payload == batch.payload, f"seq {batch.seq}: two different payloads"
    batches = [by_key[key] for key in sorted(by_key)]
    readings: dict[Key, Arrived] = {}
    for batch in batches:
        for record in batch.records:
            assert isinstance(record.value, float), record
            key = (record.sensor, int(record.value))
            assert key not in readings, (
                f"reading {key} arrived in seq {readings[key].seq} and again in seq {batch.seq}"
            )
            readings[key] = Arrived(batch.seq, record.time)
    return Arrival(batches, readings)


def committed(snapshot: BufferSnapshot, keys: Mapping[str, verify.PublicKey]) -> set[Key]:
    """Every counter reading the buffer file holds: buffered rows and sealed batches."""
    held = {(name.partition("/")[0], int(value)) for name, value in snapshot.readings}
    for payload in snapshot.outbox.values():
        batch = checked_batch(payload, keys)
        held |= {(r.sensor, int(r.value)) for r in batch.records if isinstance(r.value, float)}
    return held


def single_stream(report: verify.Report) -> verify.StreamSummary:
    """The one stream of a clean report: from seq 1, no gap, no broken link, no conflict."""
    assert report.ok, verify.format_report(report)
    assert len(report.streams) == 1, verify.format_report(report)
    (stream,) = report.streams
    assert stream.first_seq == 1, verify.format_report(report)
    assert stream.conflicts == 0
    assert not stream.missing
    assert not stream.broken_links
    _entry()["batches"] = stream.unique_batches
    _entry()["duplicates removed"] = stream.duplicates
    return stream


# --------------------------------------------------------------------------- the ledger

#: Per test: what the suite's closing summary prints (see conftest.pytest_terminal_summary).
LEDGER: dict[str, dict[str, int]] = {}


def _entry() -> dict[str, int]:
    test = os.environ.get("PYTEST_CURRENT_TEST", "?").split(" ")[0]
    return LEDGER.setdefault(test, {})


# --------------------------------------------------------------------------- the drop audit


@dataclass
class DropAudit:
    """The outcome of :func:`audit_drops`."""

    received: int
    missing: list[tuple[float, str, int]]  # (estimated time, sensor, value), oldest first
    announced: dict[int, int]  # seq -> dropped, for batches that announce drops
    problems: list[str]

    @property
    def dropped(self) -> int:
        return sum(self.announced.values())


def _runs(readings: Iterable[Key]) -> dict[tuple[str, int], list[int]]:
    """Received values per (sensor, run), sorted."""
    runs: dict[tuple[str, int], list[int]] = {}
    for sensor, value in readings:
        runs.setdefault((sensor, value // RUN), []).append(value)
    for values in runs.values():
        values.sort()
    return runs


def audit_drops(
    got: Arrival, interval: Mapping[str, float], *, tolerance: float = 0.3
) -> DropAudit:
    """Check that what is missing is exactly what the batches announce, and the oldest.

    Per sensor and run the values start at ``run * RUN`` and are consecutive, so the
    missing ones are the gaps up to the highest value received (a run's unsent tail
    cannot be seen here: callers compare totals with the daemon's counters). Missing
    readings get a time by interpolation between their received neighbours (the
    poller keeps a fixed schedule); sorted oldest first, they are assigned to the
    announcing batches in seq order (each drop removes the oldest readings, so drops
    are in time order). Then, for every announcing batch ``j``: every reading that
    arrived in batch ``j`` or later must be newer than the newest reading assigned to
    ``j``, within ``tolerance`` seconds -- a reading that old was in the buffer when
    the drop happened, and oldest-first would have dropped it instead.
    """
    problems: list[str] = []
    missing: list[tuple[float, str, int]] = []
    for (sensor, run), values in _runs(got.readings).items():
        present = set(values)
        times = [got.readings[(sensor, v)].time for v in values]
        period = interval[sensor]
        for value in range(run * RUN, values[-1]):
            if value in present:
                continue
            after = bisect.bisect_right(values, value)
            b, tb = values[after], times[after]
            if after == 0:
                estimate = tb - (b - value) * period
            else:
                a, ta = values[after - 1], times[after - 1]
                estimate = ta + (value - a) * (tb - ta) / (b - a)
            missing.append((estimate, sensor, value))
    missing.sort()
    announced = {b.seq: b.dropped for b in got.batches if b.dropped}
    if len(missing) != sum(announced.values()):
        problems.append(
            f"{len(missing)} readings are missing but the batches announce "
            f"{sum(announced.values())} dropped ({announced})"
        )
    # The oldest reading that arrived in each batch, and in that batch or any later one.
    seqs = [b.seq for b in got.batches]
    oldest_in: dict[int, float] = {}
    for arrived in got.readings.values():
        oldest_in[arrived.seq] = min(oldest_in.get(arrived.seq, float("inf")), arrived.time)
    from_here = dict.fromkeys(seqs, float("inf"))
    running = float("inf")
    for seq in reversed(seqs):
        running = min(running, oldest_in.get(seq, float("inf")))
        from_here[seq] = running
    position = 0
    for seq, count in announced.items():
        group = missing[position : position + count]
        position += count
        if not group:
            break
        newest = max(t for t, _, _ in group)
        if from_here[seq] < newest - tolerance:
            older = sorted(
                (a.time, key, a.seq)
                for key, a in got.readings.items()
                if a.seq >= seq and a.time < newest - tolerance
            )
            problems.append(
                f"seq {seq} announces {count} dropped readings up to t={newest:.3f}, but "
                f"{len(older)} older readings arrived in it or later, e.g. {older[:3]}: "
                "the dropped ones were not the oldest"
            )
    entry = _entry()
    entry["delivered"] = len(got.readings)
    entry["dropped and reported"] = sum(announced.values())
    entry["taken"] = len(got.readings) + len(missing)
    entry["lost"] = len(missing) - sum(announced.values())
    return DropAudit(len(got.readings), missing, announced, problems)


# --------------------------------------------------------------------------- recovery


@dataclass
class Recovery:
    """The outcome of :func:`recover_and_audit`: what the daemon took, what arrived."""

    taken: int
    got: Arrival
    audit: DropAudit


def recover_and_audit(
    rig: FaultRig,
    gateway: GatewayProcess,
    telemetry: Collector,
    interval: Mapping[str, float],
    *,
    backlog: int = 4_000,
) -> Recovery:
    """End an outage and audit the whole stream: the consumer's ledger must balance.

    The broker comes back, the buffer drains below ``backlog`` readings, the daemon
    stops cleanly; once every reading taken arrived or was announced dropped, the
    stream is one unbroken stream, :func:`audit_drops` finds no problem, and the
    accounting is exact: taken = arrived + announced dropped, and the daemon's
    ``readings_dropped`` agrees with the batches.
    """
    rig.broker.start()
    gateway.wait_log("connected", count=2, timeout=30)
    wait_until(
        lambda: len(rig.snapshot().readings) < backlog,
        timeout=60,
        what="the backlog drains",
        interval=0.5,
    )
    assert gateway.terminate() == 0, gateway.describe()
    counters = gateway.counters()
    taken = counters["readings_taken"]

    def accounted() -> bool:
        got = arrival(telemetry.payloads(), rig.keys())
        return len(got.readings) + got.dropped >= taken

    wait_until(
        accounted, timeout=30, what="every reading arrives or is announced dropped", interval=0.5
    )
    payloads = telemetry.payloads()
    stream = single_stream(verify.verify_stream(payloads, rig.keys()))
    got = arrival(payloads, rig.keys())
    audit = audit_drops(got, interval)
    assert not audit.problems, "\n".join(audit.problems)
    # Exact accounting: taken = arrived + announced, and the daemon agrees.
    assert audit.dropped == stream.dropped == counters["readings_dropped"]
    assert len(got.readings) + audit.dropped == taken
    return Recovery(taken, got, audit)
