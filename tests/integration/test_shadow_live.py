"""Remote configuration through the device shadow, with the real daemon process.

The daemon (``python -m gateway.cli run``, ``shadow.enabled: true``) runs against the
Mosquitto fixture; a test-side shadow service (shadow_service.py) answers the AWS IoT
shadow topics on the same broker. Counter sensors make the poll rate and the batch
sizes visible in what a subscriber receives, checked with the independent verifier.
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import math
import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from daemon_harness import (
    REPO,
    GatewayProcess,
    LogEntry,
    gateway_config,
    received_values,
    signing_keys,
    unique_batches,
    wait_until,
    write_config,
)
from shadow_service import PolicyProxy, ShadowService

from gateway import verify
from gateway.shadow import ANSWER_TIMEOUT

if TYPE_CHECKING:
    from conftest import Collector, Mosquitto, PkiBundle

pytestmark = pytest.mark.integration

SECOND_RUN = 100_000
FILE_BATCH = {"max_records": 5000, "max_bytes": 128000, "max_age": 0.5}
NO_ANSWER = "shadow: no answer from the device shadow service"
FUSE = "the connection was lost 3 times in a row while subscribing to or publishing on"


@dataclass
class Rig:
    broker: Mosquitto
    pki: PkiBundle
    directory: Path
    processes: list[GatewayProcess] = field(default_factory=list)
    services: list[ShadowService] = field(default_factory=list)
    proxies: list[PolicyProxy] = field(default_factory=list)
    expected_errors: tuple[str, ...] = ()

    @property
    def state_dir(self) -> Path:
        return self.directory / "state"

    def config(
        self,
        *,
        start: int = 1,
        sensors: dict[str, float] | None = None,
        port: int | None = None,
        **sections: Any,
    ) -> Path:
        files = self.pki.files
        config = gateway_config(
            port=port or self.broker.port,
            ca=files.ca_cert,
            cert=files.client_cert,
            key=files.client_key,
            state_dir=self.state_dir,
            sensors=sensors or {"probe": 0.25},
            start=start,
            **{"shadow": {"enabled": True}, **sections},
        )
        return write_config(self.directory / "gateway.yaml", config)

    def launch(self, config: Path) -> GatewayProcess:
        log = self.directory / f"gateway-{len(self.processes) + 1}.log"
        process = GatewayProcess(config, log).start()
        self.processes.append(process)
        return process

    def service(self, name: str | None = None) -> ShadowService:
        service = ShadowService(self.broker.host, self.broker.port, self.pki.files, name=name)
        self.services.append(service.start())
        return service

    def batches(self, collector: Collector) -> list[verify.Batch]:
        return unique_batches(collector.payloads(), signing_keys(self.state_dir))


@pytest.fixture
def rig(mosquitto: Mosquitto, pki: PkiBundle, tmp_path: Path) -> Iterator[Rig]:
    setup = Rig(mosquitto, pki, tmp_path)
    yield setup
    for service in setup.services:
        service.stop()
    for proxy in setup.proxies:
        proxy.stop()
    for process in setup.processes:
        process.kill()
    for process in setup.processes:
        unseen = process.find(lambda entry: entry.get("logger") == "asyncio")
        assert not unseen, f"asyncio reported errors: {unseen}"
        errors = process.find(
            lambda entry: (
                entry.get("level") == "error"
                and not entry["msg"].startswith(setup.expected_errors or ("\0",))
            )
        )
        assert not errors, f"errors logged: {errors}"
        assert not process.stderr_text().strip(), process.describe()


def logged_at(entry: LogEntry) -> float:
    """UNIX time of a log line."""
    return (
        dt.datetime.strptime(entry["time"], "%Y-%m-%dT%H:%M:%S.%fZ")
        .replace(tzinfo=dt.UTC)
        .timestamp()
    )


def starts(prefix: str) -> Callable[[LogEntry], bool]:
    return lambda entry: str(entry.get("msg", "")).startswith(prefix)


def spacing(
    batches: list[verify.Batch], after: float, before: float = math.inf, minimum: int = 10
) -> float:
    """Median seconds between the probe's readings taken between ``after`` and ``before``."""
    records = [r for b in batches for r in b.records if r.sensor == "probe"]
    times = sorted(r.time for r in records if after < r.time < before)
    assert len(times) >= minimum, f"only {len(times)} readings between {after} and {before}"
    return statistics.median(b - a for a, b in itertools.pairwise(times))


def shown_shadow(
    state_dir: Path, condition: Callable[[dict[str, Any]], bool], what: str
) -> dict[str, Any]:
    """The ``shadow`` of the daemon's status file, once it meets ``condition`` (the
    file is written every 5 s)."""

    def current() -> dict[str, Any] | None:
        try:
            shadow: dict[str, Any] = json.loads((state_dir / "status.json").read_text())["shadow"]
        except (OSError, ValueError, KeyError):
            return None
        return shadow if condition(shadow) else None

    result: dict[str, Any] = wait_until(current, timeout=15, what=f"status shows {what}")
    return result


def status_command(config: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    """``wsn-gateway status``, as an operator runs it."""
    env = {key: value for key, value in os.environ.items() if key != "WSN_GATEWAY_CONFIG"}
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", "status", "--config", str(config), *extra],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=30,
        check=False,
    )


def sealed_after(batches: list[verify.Batch], after: float) -> list[int]:
    """Record counts of the batches whose readings were all taken after ``after``."""
    return [len(b.records) for b in batches if min(r.time for r in b.records) > after]


# --------------------------------------------------------------------------- (1)


def test_desired_settings_apply_without_a_restart_and_are_reported(
    rig: Rig, collector: Callable[..., Collector]
) -> None:
    service = rig.service()  # no shadow document yet: get is answered 404
    telemetry = collector(rig.broker)
    config = rig.config()
    gateway = rig.launch(config)
    gateway.wait_log("started")
    gateway.wait_log(starts("shadow: this thing has no shadow document yet"))
    # The settings in effect are reported, which creates the document.
    service.wait_reported(
        lambda r: (
            r.get("sensors") == {"probe": {"interval": 0.25}}
            and r.get("batch") == FILE_BATCH
            and r.get("logging") == {"level": "info"}
        )
    )
    assert not gateway.find(lambda entry: entry["level"] == "debug")
    wait_until(
        lambda: sum(len(b.records) for b in rig.batches(telemetry)) >= 5,
        timeout=10,
        what="readings at the file's interval arrive",
    )

    # One document: good values, and bad ones of every kind; the good ones apply.
    service.desire(
        {
            "sensors": {"probe": {"interval": 0.05, "timeout": 1}, "ghost": {"interval": 1}},
            "batch": {"max_records": 3, "max_age": -1},
            "logging": {"level": "debug"},
            "mqtt": {"port": 1883},
        }
    )
    reported = service.wait_reported(
        lambda r: (
            r["sensors"]["probe"]["interval"] == 0.05
            and r["batch"]["max_records"] == 3
            and r["logging"]["level"] == "debug"
            and "refused" in r
        )
    )
    refused = reported["refused"]
    assert set(refused) == {"sensors.probe.timeout", "sensors.ghost", "batch.max_age", "mqtt"}
    assert refused["batch.max_age"] == "must be greater than 0 (got -1)"
    assert refused["sensors.ghost"] == "unknown sensor 'ghost' (configured: probe)"
    assert refused["sensors.probe.timeout"].startswith("cannot be changed remotely")
    assert refused["mqtt"].startswith("cannot be changed remotely")
    assert reported["batch"] == {**FILE_BATCH, "max_records": 3}  # max_age kept
    # The reported state matches the desired one except where refused.
    assert service.delta() == {
        "sensors": {"probe": {"timeout": 1}, "ghost": {"interval": 1}},
        "batch": {"max_age": -1},
        "mqtt": {"port": 1883},
    }

    changed = gateway.wait_log("shadow: settings changed remotely")
    assert changed["changes"]["sensors.probe.interval"] == {"from": 0.25, "to": 0.05}
    assert gateway.wait_log("shadow: remote settings refused")["level"] == "warning"

    # `wsn-gateway status` shows what applies and what was refused, and why.
    applied = {"sensors.probe.interval": 0.05, "batch.max_records": 3, "logging.level": "debug"}
    shown_shadow(rig.state_dir, lambda s: s["applied"] == applied, "the remote settings")
    result = status_command(config, "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    shadow = json.loads(result.stdout)["shadow"]
    assert shadow["enabled"] is True and shadow["name"] is None
    assert shadow["state"] == "in sync" and shadow["version"] >= 1
    assert shadow["applied"] == applied
    assert shadow["refused"] == refused
    assert shadow["applied_time"] <= time.time() and shadow["answered_time"] is not None
    text = status_command(config).stdout
    assert "shadow       in sync (version " in text
    assert ": 3 remote settings in effect, 4 refused\n" in text
    assert "\n  applied  sensors.probe.interval: 0.05\n" in text
    assert "\n  refused  batch.max_age: must be greater than 0 (got -1)\n" in text
    since = logged_at(changed) + 0.3
    wait_until(
        lambda: len(sealed_after(rig.batches(telemetry), since)) >= 8,
        timeout=20,
        what="batches of readings taken after the change arrive",
    )
    batches = rig.batches(telemetry)
    # The new interval is in force: readings 0.05 s apart, where they were 0.25 s ...
    assert spacing(batches, 0, logged_at(changed), minimum=5) > 0.2
    assert spacing(batches, since) < 0.1
    # ... and the new batch limit: at most 3 records (10 per max_age before).
    sizes = sealed_after(batches, since)
    assert max(sizes) == 3, sizes
    # The log level: debug lines now, none before the change.
    debug = gateway.find(lambda entry: entry["level"] == "debug")
    assert debug, gateway.describe()
    assert min(logged_at(entry) for entry in debug) >= logged_at(changed)
    # All of it in the same process: not restarted, not reloaded.
    assert gateway.running
    status = json.loads((rig.state_dir / "status.json").read_text())
    assert status["pid"] == gateway.pid
    assert len(gateway.find("started")) == 1
    assert not gateway.find("configuration reloaded")
    # The report did not loop: each delta caused by it changed nothing.
    time.sleep(1.0)
    reports = len(service.updates())
    time.sleep(1.0)
    assert len(service.updates()) == reports, service.updates()

    # Fixed and deleted keys: the refusals are cleared, nulls go back to the file.
    fixed = service.desire(
        {
            "sensors": {"probe": {"timeout": None}, "ghost": None},
            "batch": {"max_records": None, "max_age": 2},
            "logging": None,
            "mqtt": None,
        }
    )
    reported = service.wait_reported(
        lambda r: (
            "refused" not in r
            and r["batch"] == {**FILE_BATCH, "max_age": 2}
            and r["logging"] == {"level": "info"}
        )
    )
    assert reported["sensors"] == {"probe": {"interval": 0.05}}
    assert service.delta() == {}
    gateway.wait_log("shadow: no remote setting is refused any more")
    shown = shown_shadow(rig.state_dir, lambda s: not s["refused"], "no refusals")
    assert shown["applied"] == {"sensors.probe.interval": 0.05, "batch.max_age": 2}

    # What applies is kept in state_dir for the next start.
    saved = json.loads((rig.state_dir / "shadow.json").read_text())
    desired, _ = service.snapshot()
    assert saved["desired"] == desired
    assert fixed <= saved["version"] < service.version  # (the reports come after it)
    assert saved["applied"] == {"sensors.probe.interval": 0.05, "batch.max_age": 2}

    # A reload (SIGHUP) applies them over the new file: probe stays at 0.05 s.
    rig.config(sensors={"probe": 1.0, "extra": 0.5})
    gateway.send(signal.SIGHUP)
    over = gateway.wait_log("shadow: remote settings apply over the configuration file")
    assert over["applied"] == {"sensors.probe.interval": 0.05, "batch.max_age": 2}
    reloaded = gateway.wait_log("configuration reloaded")
    service.wait_reported(
        lambda r: r["sensors"] == {"probe": {"interval": 0.05}, "extra": {"interval": 0.5}}
    )
    since = logged_at(reloaded) + 0.3
    wait_until(
        lambda: len([r for b in rig.batches(telemetry) for r in b.records if r.time > since]) >= 30,
        timeout=20,
        what="readings taken after the reload arrive",
    )
    assert spacing(rig.batches(telemetry), since) < 0.1
    assert gateway.terminate() == 0, gateway.describe()
    assert not gateway.find(starts(NO_ANSWER))


# --------------------------------------------------------------------------- (2)


def test_a_restart_without_the_shadow_service_keeps_the_remote_settings(
    rig: Rig, collector: Callable[..., Collector]
) -> None:
    service = rig.service(name="gateway-config")
    version = service.desire(
        {
            "sensors": {"probe": {"interval": 0.05}},
            "batch": {"max_records": 4},
            "logging": {"level": "debug"},
        }
    )
    telemetry = collector(rig.broker)
    config = rig.config(shadow={"enabled": True, "name": "gateway-config"})
    first = rig.launch(config)
    first.wait_log("started")
    # Applied from get/accepted at connect, then reported on the named shadow.
    service.wait_reported(
        lambda r: (
            r.get("sensors") == {"probe": {"interval": 0.05}}
            and r.get("batch", {}).get("max_records") == 4
            and r.get("logging") == {"level": "debug"}
        )
    )
    assert service.delta() == {}
    assert first.terminate() == 0, first.describe()
    saved = json.loads((rig.state_dir / "shadow.json").read_text())
    assert saved["shadow"] == "$aws/things/test-gw/shadow/name/gateway-config"
    assert saved["version"] == version

    # The shadow service goes away; the gateway restarts on the same configuration.
    service.stop()
    second = rig.launch(
        rig.config(start=SECOND_RUN, shadow={"enabled": True, "name": "gateway-config"})
    )
    applied = second.wait_log("shadow: remote settings apply over the configuration file")
    assert applied["applied"] == {
        "sensors.probe.interval": 0.05,
        "batch.max_records": 4,
        "logging.level": "debug",
    }
    started = second.wait_log("started")
    assert logged_at(applied) <= logged_at(started)  # before the first connect
    second.wait_log("connected")
    no_answer = second.wait_log(starts(NO_ANSWER), timeout=ANSWER_TIMEOUT + 10)
    assert no_answer["level"] == "warning"
    # Status says so, with the remote settings kept from the first run.
    shown = shown_shadow(rig.state_dir, lambda s: s["state"] == "not answering", "no answer")
    assert shown["name"] == "gateway-config" and shown["version"] == version
    assert shown["applied"] == applied["applied"] and shown["refused"] == {}
    assert shown["since"] <= logged_at(no_answer)
    wait_until(
        lambda: len([b for b in rig.batches(telemetry) if b.records[0].value >= SECOND_RUN]) >= 8,
        timeout=20,
        what="batches of the second run arrive",
    )
    batches = [b for b in rig.batches(telemetry) if b.records[0].value >= SECOND_RUN]
    assert spacing(batches, 0) < 0.1  # 0.05 s, not the file's 0.25 s
    assert max(len(b.records) for b in batches) == 4  # not up to 5000
    assert second.find(lambda entry: entry["level"] == "debug")  # debug from the start
    assert second.terminate() == 0, second.describe()
    assert len(second.find(starts(NO_ANSWER))) == 1


# --------------------------------------------------------------------------- (3)


def test_without_a_shadow_service_the_daemon_publishes_and_says_so_once(
    rig: Rig, collector: Callable[..., Collector]
) -> None:
    telemetry = collector(rig.broker)
    gateway = rig.launch(rig.config())
    gateway.wait_log("connected")
    gateway.wait_log(starts(NO_ANSWER), timeout=ANSWER_TIMEOUT + 10)
    # A new connection asks again; still no answer, and nothing more is said.
    rig.broker.restart()
    gateway.wait_log("connected", count=2, timeout=20)
    reconnected = time.monotonic()
    wait_until(
        lambda: time.monotonic() - reconnected > ANSWER_TIMEOUT + 1,
        timeout=ANSWER_TIMEOUT + 5,
        what="the answer timeout of the second connection passes",
    )
    assert gateway.terminate() == 0, gateway.describe()
    assert len(gateway.find(starts(NO_ANSWER))) == 1
    taken = gateway.counters()["readings_taken"]
    wait_until(
        lambda: (
            sum(
                len(v)
                for v in received_values(telemetry.payloads(), signing_keys(rig.state_dir)).values()
            )
            >= taken
        ),
        timeout=15,
        what="every reading arrives",
    )
    values = received_values(telemetry.payloads(), signing_keys(rig.state_dir))["probe"]
    assert values == list(range(1, taken + 1))
    assert not (rig.state_dir / "shadow.json").exists()  # nothing was ever applied


# --------------------------------------------------------------------------- (4)


@pytest.mark.parametrize("deny", ["subscribe", "publish"])
def test_a_policy_without_the_shadow_topics_does_not_keep_the_batches_from_going_out(
    rig: Rig, collector: Callable[..., Collector], deny: str
) -> None:
    # Like AWS IoT with such a policy: the connection is closed on the first SUBSCRIBE
    # to (or PUBLISH on) a $aws/ topic.
    proxy = PolicyProxy(rig.broker, rig.pki.files, deny=deny).start()
    rig.proxies.append(proxy)
    rig.expected_errors = (FUSE,)
    telemetry = collector(rig.broker)
    gateway = rig.launch(rig.config(port=proxy.port))
    fuse = gateway.wait_log(starts(FUSE), timeout=30)
    assert fuse["level"] == "error"
    assert "$aws/things/test-gw/shadow/get/accepted" in fuse["topics"]
    shown = shown_shadow(rig.state_dir, lambda s: s["state"] == "left out", "the shadow left out")
    assert shown["reason"].startswith("policy: ")
    assert logged_at(fuse) + 3500 < shown["until"] < logged_at(fuse) + 3700
    assert proxy.refusals == 3
    assert len(gateway.find("connection lost")) == 3
    # The next connection leaves the shadow out, and holds.
    gateway.wait_log("connected", count=4, timeout=20)
    held = time.monotonic()
    wait_until(
        lambda: time.monotonic() - held > 3 and len(telemetry.payloads()) >= 5,
        timeout=20,
        what="batches go out over a connection that holds",
    )
    assert len(gateway.find("connection lost")) == 3
    assert proxy.refusals == 3
    assert gateway.terminate() == 0, gateway.describe()
    taken = gateway.counters()["readings_taken"]
    keys = signing_keys(rig.state_dir)
    values = wait_until(
        lambda: (
            (got := received_values(telemetry.payloads(), keys).get("probe", []))
            and len(got) >= taken
            and got
        ),
        timeout=15,
        what="every reading arrives",
    )
    assert values == list(range(1, taken + 1))
