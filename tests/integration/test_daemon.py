"""The real daemon process against a real Mosquitto broker with mutual TLS.

Every test starts ``python -m gateway.cli run`` on a configuration with counter
sensors (values 1, 2, 3, ...: a missing value is a lost reading), watches its JSON
log, signals it, looks into its buffer file, and checks what a persistent-session
subscriber received with the independent verifier (``gateway.verify``).
"""

from __future__ import annotations

import itertools
import json
import signal
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from daemon_harness import (
    STATUS_TOPIC,
    BufferSnapshot,
    GatewayProcess,
    counter_values,
    gateway_config,
    received_values,
    signing_keys,
    snapshot_buffer,
    unique_batches,
    wait_until,
    write_config,
)

from gateway import verify
from gateway.daemon import STOP_GRACE

if TYPE_CHECKING:
    from conftest import Collector, Mosquitto, PkiBundle

pytestmark = pytest.mark.integration

#: Counter values of a second run start here, so that they cannot be mistaken for the first's.
SECOND_RUN = 100_000


@dataclass
class Rig:
    """A broker, the test PKI, one state directory, and the daemons started on them."""

    broker: Mosquitto
    pki: PkiBundle
    directory: Path
    processes: list[GatewayProcess] = field(default_factory=list)

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
        sensors: dict[str, float] | None = None,
        cert: Path | None = None,
        key: Path | None = None,
        start: int = 1,
        **sections: Any,
    ) -> Path:
        """Write a configuration for this broker and state directory; returns its path."""
        files = self.pki.files
        config = gateway_config(
            port=self.broker.port,
            ca=files.ca_cert,
            cert=cert or files.client_cert,
            key=key or files.client_key,
            state_dir=self.state_dir,
            sensors=sensors or {"fast": 0.05, "slow": 0.2},
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

    def values(self, collector: Collector) -> dict[str, list[int]]:
        """Counter values per sensor that ``collector`` received, each batch once."""
        return received_values(collector.payloads(), self.keys())

    def count(self, collector: Collector, *, at_least: int = 1) -> int:
        """How many counter values of ``at_least`` or more ``collector`` received."""
        return sum(
            len([v for v in values if v >= at_least]) for values in self.values(collector).values()
        )

    def arrived(self, collector: Collector, expected: dict[str, set[int]]) -> bool:
        """Whether every expected counter value of every sensor has arrived."""
        got = self.values(collector)
        return all(values <= set(got.get(sensor, ())) for sensor, values in expected.items())


@pytest.fixture
def rig(mosquitto: Mosquitto, pki: PkiBundle, tmp_path: Path) -> Iterator[Rig]:
    setup = Rig(mosquitto, pki, tmp_path)
    yield setup
    for process in setup.processes:
        process.kill()
    for process in setup.processes:
        # A task that failed unseen, or anything on stderr, is a bug even when the
        # test's own checks passed.
        unseen = process.find(lambda entry: entry.get("logger") == "asyncio")
        assert not unseen, f"asyncio reported errors: {unseen}"
        assert not process.stderr_text().strip(), process.describe()


def states(messages: list[tuple[str, bytes]]) -> list[str]:
    """The ``state`` of each status message."""
    return [json.loads(payload)["state"] for _, payload in messages]


def assert_unbroken(values: dict[str, list[int]], first: int = 1) -> int:
    """Each sensor's values are first, first+1, ... without gap or repeat; returns the total."""
    for sensor, got in values.items():
        assert got == list(range(first, first + len(got))), f"{sensor}: {got}"
    return sum(len(got) for got in values.values())


def single_stream(report: verify.Report) -> verify.StreamSummary:
    """The one stream of a clean report, starting at seq 1."""
    assert report.ok, verify.format_report(report)
    assert len(report.streams) == 1, verify.format_report(report)
    (stream,) = report.streams
    assert stream.first_seq == 1
    assert stream.conflicts == 0
    return stream


# --------------------------------------------------------------------------- (1)


def test_readings_arrive_as_valid_signed_batches_and_a_graceful_stop_leaves_nothing(
    rig: Rig, collector: Callable[..., Collector]
) -> None:
    telemetry = collector(rig.broker)
    gateway = rig.launch(rig.config())
    started = gateway.wait_log("started")
    gateway.wait_log("connected")

    status = collector(rig.broker, STATUS_TOPIC)  # the retained state arrives on subscribe
    status.wait_for(lambda messages: states(messages) == ["online"])
    telemetry.wait_for(lambda messages: len(messages) >= 3, timeout=20)

    sent = time.monotonic()
    assert gateway.terminate() == 0, gateway.describe()
    assert time.monotonic() - sent < STOP_GRACE, "the stop took longer than the grace period"

    counters = gateway.counters()
    taken = counters["readings_taken"]
    assert taken > 0
    assert counters["readings_acked"] == taken
    assert counters["readings_dropped"] == 0
    # Everything was acknowledged before the exit: the subscriber gets it all.
    wait_until(lambda: rig.count(telemetry) >= taken, timeout=10, what="every reading arrives")
    report = verify.verify_stream(telemetry.payloads(), rig.keys())
    stream = single_stream(report)
    assert stream.stream == started["stream"]
    assert stream.last_seq == counters["batches_sealed"]
    assert stream.records == taken
    assert assert_unbroken(rig.values(telemetry)) == taken
    assert set(rig.values(telemetry)) == {"fast", "slow"}

    after = rig.snapshot()
    assert after.readings == []
    assert after.outbox == {}
    assert after.seq == stream.last_seq

    status.wait_for(lambda messages: states(messages)[-1:] == ["offline"])
    retained = collector(rig.broker, STATUS_TOPIC)
    retained.wait_for(lambda messages: states(messages) == ["offline"])


# --------------------------------------------------------------------------- (2)


def test_a_refused_certificate_is_named_in_the_log_and_readings_wait_in_the_buffer(
    rig: Rig, collector: Callable[..., Collector]
) -> None:
    telemetry = collector(rig.broker)
    rogue = rig.launch(
        rig.config(
            "rogue.yaml",
            sensors={"fast": 0.05},
            cert=rig.pki.rogue_cert,
            key=rig.pki.rogue_key,
            mqtt={"connect_timeout": 3},
        )
    )
    refused = rogue.wait_log(
        lambda entry: (
            entry["msg"] == "cannot connect to the broker"
            and "broker refused our TLS client certificate" in entry["error"]
        ),
        timeout=30,
    )
    assert refused["level"] == "error"
    assert str(rig.pki.rogue_cert) in refused["error"], refused
    # Meanwhile readings keep being taken and committed.
    wait_until(lambda: len(rig.snapshot().readings) >= 10, timeout=10, what="readings buffered")
    assert rogue.terminate() == 0, rogue.describe()

    counters = rogue.counters()
    assert counters["connects"] == 0
    assert counters["connect_failures"] >= 1
    assert not rogue.find("connected")
    buffered = rig.snapshot()
    assert buffered.outbox == {}
    assert len(buffered.readings) == counters["readings_taken"]
    assert buffered.values("fast") == set(range(1, counters["readings_taken"] + 1))
    assert telemetry.payloads() == []

    # A certificate file that does not exist: exit 1 at once, naming it, no traceback.
    missing = rig.directory / "no-such-client.crt"
    config = rig.config("missing.yaml", sensors={"fast": 0.05}, cert=missing)
    began = time.monotonic()
    broken = rig.launch(config)
    assert broken.wait_exit(timeout=20) == 1, broken.describe()
    assert time.monotonic() - began < 10
    errors = [entry["msg"] for entry in broken.logs() if entry["level"] == "error"]
    assert any(str(missing) in message and "does not exist" in message for message in errors), (
        broken.describe()
    )
    assert "Traceback" not in broken.log_text() + broken.stderr_text(), broken.describe()
    assert rig.snapshot() == buffered, "the failed start changed the buffer"

    # With the right certificate, what waited in the buffer is delivered.
    good = rig.launch(rig.config("good.yaml", sensors={"fast": 0.05}, start=SECOND_RUN))
    assert good.wait_log("started")["buffered"] == len(buffered.readings)
    wait_until(
        lambda: rig.arrived(telemetry, {"fast": buffered.values("fast")}),
        timeout=20,
        what="the readings buffered while refused arrive",
    )
    assert good.terminate() == 0, good.describe()
    second = good.counters()["readings_taken"]
    expected = set(range(SECOND_RUN, SECOND_RUN + second)) | buffered.values("fast")
    wait_until(
        lambda: rig.arrived(telemetry, {"fast": expected}), timeout=10, what="all readings arrive"
    )
    single_stream(verify.verify_stream(telemetry.payloads(), rig.keys()))
    got = rig.values(telemetry)["fast"]
    assert sorted(got) == sorted(expected)


# --------------------------------------------------------------------------- (3)


def test_a_broker_outage_loses_nothing_and_the_backlog_drains_in_full_batches(
    rig: Rig, collector: Callable[..., Collector]
) -> None:
    telemetry = collector(rig.broker)
    gateway = rig.launch(rig.config())
    gateway.wait_log("connected")
    telemetry.wait_for(lambda messages: len(messages) >= 2, timeout=20)

    rig.broker.stop()
    down = time.monotonic()
    lost = gateway.wait_log("connection lost")
    assert lost["level"] == "warning"
    # The outage lasts five seconds; readings go on being committed to the buffer.
    wait_until(
        lambda: (
            time.monotonic() - down >= 5
            and {"fast", "slow"} <= {name.partition("/")[0] for name, _ in rig.snapshot().readings}
        ),
        timeout=30,
        what="five seconds of outage with readings of both sensors buffered",
    )
    during = rig.snapshot()
    before = len(telemetry.payloads())
    assert before >= 2
    rig.broker.start()
    gateway.wait_log("connected", count=2, timeout=20)

    expected = {sensor: during.values(sensor) for sensor in ("fast", "slow")}
    wait_until(
        lambda: rig.arrived(telemetry, expected),
        timeout=20,
        what="every reading buffered during the outage arrives",
    )
    assert gateway.terminate() == 0, gateway.describe()
    counters = gateway.counters()
    taken = counters["readings_taken"]
    wait_until(lambda: rig.count(telemetry) >= taken, timeout=10, what="every reading arrives")

    stream = single_stream(verify.verify_stream(telemetry.payloads(), rig.keys()))
    assert stream.last_seq == counters["batches_sealed"]
    assert assert_unbroken(rig.values(telemetry)) == taken
    # What was buffered during the outage arrived after the restart...
    late = received_values(telemetry.payloads()[before:], rig.keys())
    for sensor, values in expected.items():
        assert values <= set(late[sensor]), sensor
    # ... packed into full batches, not one batch per max_age.
    largest = max(len(batch.records) for batch in unique_batches(telemetry.payloads(), rig.keys()))
    assert largest >= len(during.readings)
    assert rig.snapshot().readings == []


# --------------------------------------------------------------------------- (4)


def test_sigkill_while_the_broker_is_down_loses_nothing_that_was_committed(
    rig: Rig, collector: Callable[..., Collector]
) -> None:
    telemetry = collector(rig.broker)
    # At most two unacknowledged batches: beyond them, readings wait unsealed.
    first = rig.launch(rig.config("first.yaml", mqtt={"max_inflight": 2}))
    first.wait_log("connected")
    telemetry.wait_for(lambda messages: len(messages) >= 2, timeout=20)

    # The broker stops answering (SIGSTOP: the connection stays open, no PUBACK comes),
    # so the gateway holds sealed batches in its outbox and readings in its buffer
    # when it is killed. Then the broker goes down for good.
    broker = rig.broker.process
    assert broker is not None
    broker.send_signal(signal.SIGSTOP)
    try:
        wait_until(
            lambda: len((now := rig.snapshot()).outbox) >= 2 and len(now.readings) >= 10,
            timeout=20,
            what="unacknowledged batches in the outbox and readings in the buffer",
        )
        first.kill()
    finally:
        broker.send_signal(signal.SIGCONT)
        rig.broker.stop()
    assert first.returncode == -signal.SIGKILL

    committed = rig.snapshot()  # nothing of this may be lost
    in_outbox = counter_values(unique_batches(committed.outbox.values(), rig.keys()))
    expected = {
        sensor: committed.values(sensor) | set(in_outbox.get(sensor, ()))
        for sensor in ("fast", "slow")
    }

    # Restart on the same state while the broker is still down, then bring it back.
    second = rig.launch(rig.config("second.yaml", start=SECOND_RUN))
    started = second.wait_log("started")
    assert started["stream"] == committed.stream
    assert started["buffered"] == len(committed.readings)
    second.wait_log("cannot connect to the broker")
    rig.broker.start()
    second.wait_log("connected")
    wait_until(
        lambda: (
            set(committed.outbox.values()) <= set(telemetry.payloads())
            and rig.arrived(telemetry, expected)
        ),
        timeout=30,
        what="every committed reading and the very same sealed payloads arrive",
    )
    assert second.terminate() == 0, second.describe()
    taken = second.counters()["readings_taken"]
    wait_until(
        lambda: rig.count(telemetry, at_least=SECOND_RUN) >= taken,
        timeout=10,
        what="every reading of the second run arrives",
    )

    # One stream, no gap, and any copy sent twice is byte-identical (else: conflicts).
    report = verify.verify_stream(telemetry.payloads(), rig.keys())
    single_stream(report)
    got = rig.values(telemetry)
    for sensor, values in got.items():
        before_kill = [v for v in values if v < SECOND_RUN]
        after_restart = [v for v in values if v >= SECOND_RUN]
        # The first run: 1..K with nothing missing, K at least the last committed value.
        assert before_kill == list(range(1, len(before_kill) + 1)), sensor
        assert expected[sensor] <= set(before_kill), sensor
        assert after_restart == list(range(SECOND_RUN, SECOND_RUN + len(after_restart)))
    assert sum(len([v for v in values if v >= SECOND_RUN]) for values in got.values()) == taken


# --------------------------------------------------------------------------- reload


def test_sighup_reload_keeps_the_buffer_and_the_stream(
    rig: Rig, collector: Callable[..., Collector]
) -> None:
    telemetry = collector(rig.broker)
    path = rig.config(sensors={"probe": 0.2})
    gateway = rig.launch(path)
    first = gateway.wait_log("started")
    gateway.wait_log("connected")
    telemetry.wait_for(lambda messages: len(messages) >= 2, timeout=20)

    # A reload that names a missing certificate is refused; the daemon carries on.
    missing = rig.directory / "rotated-client.crt"
    rig.config(sensors={"probe": 0.05}, cert=missing)
    gateway.send(signal.SIGHUP)
    refused = gateway.wait_log(lambda entry: entry["msg"].startswith("reload refused"))
    assert str(missing) in json.dumps(refused), refused
    assert gateway.running
    assert len(gateway.find("started")) == 1

    # A reload with a faster interval restarts every part on it.
    rig.config(sensors={"probe": 0.05}, start=SECOND_RUN)
    gateway.send(signal.SIGHUP)
    gateway.wait_log("configuration reloaded")
    again = gateway.wait_log("started", count=2)
    assert again["stream"] == first["stream"]
    gateway.wait_log("connected", count=2)
    wait_until(
        lambda: rig.count(telemetry, at_least=SECOND_RUN) >= 20,
        timeout=20,
        what="readings on the new configuration arrive",
    )
    assert gateway.terminate() == 0, gateway.describe()
    taken = gateway.counters()["readings_taken"]  # the counters run on across a reload
    wait_until(lambda: rig.count(telemetry) >= taken, timeout=10, what="every reading arrives")

    stream = single_stream(verify.verify_stream(telemetry.payloads(), rig.keys()))
    assert stream.stream == first["stream"]
    batches = unique_batches(telemetry.payloads(), rig.keys())
    values = counter_values(batches)["probe"]
    old = [v for v in values if v < SECOND_RUN]
    new = [v for v in values if v >= SECOND_RUN]
    assert values == old + new, "readings of the new configuration came before old ones"
    assert old == list(range(1, len(old) + 1))
    assert new == list(range(SECOND_RUN, SECOND_RUN + len(new)))
    assert len(old) + len(new) == taken
    # The new interval is in force: readings 0.05 s apart, not 0.2 s.
    times = [r.time for b in batches for r in b.records if r.value >= SECOND_RUN]
    assert statistics.median(b - a for a, b in itertools.pairwise(times)) < 0.12


# --------------------------------------------------------------------------- size limit


@pytest.mark.parametrize("mosquitto", [{"message_size_limit": 2048}], indirect=True)
def test_no_published_batch_exceeds_max_bytes(
    rig: Rig, collector: Callable[..., Collector]
) -> None:
    # The broker drops any larger message, which would show as a missing seq too.
    telemetry = collector(rig.broker)
    sensors = {f"s{i}": 0.05 for i in range(4)}
    gateway = rig.launch(rig.config(sensors=sensors, batch={"max_bytes": 2048, "max_age": 5}))
    gateway.wait_log("connected")
    telemetry.wait_for(lambda messages: len(messages) >= 6, timeout=20)
    assert gateway.terminate() == 0, gateway.describe()
    counters = gateway.counters()
    wait_until(
        lambda: len(unique_batches(telemetry.payloads(), rig.keys())) >= counters["batches_acked"],
        timeout=10,
        what="every acknowledged batch arrives",
    )

    sizes = [len(payload) for payload in telemetry.payloads()]
    assert max(sizes) <= 2048, sizes
    assert max(sizes) > 2048 - 100, f"batches are not filled up to the limit: {sizes}"
    single_stream(verify.verify_stream(telemetry.payloads(), rig.keys()))
    assert assert_unbroken(rig.values(telemetry)) == counters["readings_taken"]
