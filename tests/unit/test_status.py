"""``wsn-gateway status``: the snapshot, its file, its rendering and the command."""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path
from typing import Any

import pytest

from drivers.base import DriverContext
from drivers.counter import Counter, CounterOptions
from gateway import __version__, status
from gateway.buffer import Buffer
from gateway.cli import main
from gateway.cloudwatch import CloudWatch, LogEvent
from gateway.config import Settings, load_settings
from gateway.daemon import Daemon, mqtt_target
from gateway.pki import write_pki
from gateway.polling import Poller
from gateway.readings import Reading
from gateway.shadow import (
    RemoteConfig,
    ShadowAgent,
    ShadowTopics,
    evaluate,
    state_path,
    write_json_atomically,
)
from gateway.workers import Worker

NOW = 1_750_000_000.0


def _daemon(tmp_path: Path, extra: str = "") -> Daemon:
    pki = write_pki(tmp_path / "pki", thing="gw")
    config = tmp_path / "gw.yaml"
    config.write_text(
        "thing: gw\n"
        f"state_dir: {tmp_path / 'state'}\n"
        f"mqtt: {{endpoint: broker.example, ca: {pki.ca_cert}, cert: {pki.client_cert},"
        f" key: {pki.client_key}}}\n"
        "sensors:\n"
        "  - {name: beat, driver: counter, interval: 1}\n"
        "  - {name: pulse, driver: counter, interval: 1}\n" + extra
    )
    settings = load_settings(config)
    settings.state_dir.mkdir()
    d = Daemon(settings)
    d.buffer = Buffer(settings.buffer_path, max_bytes=1 << 24)
    d.pollers = [
        Poller(
            name=name,
            driver=Counter(DriverContext(name), CounterOptions(start=41)),
            worker=Worker(f"test-{name}"),
            interval=1.0,
            timeout=1.0,
            retries=0,
            sink=d._take,
            synced=lambda: True,
        )
        for name in ("beat", "pulse")
    ]
    d.unavailable = {"lux": "/dev/i2c-7: no such device"}
    return d


@pytest.fixture
def daemon(tmp_path: Path) -> Daemon:
    return _daemon(tmp_path)


def _readings(n: int, start: float) -> list[Reading]:
    return [Reading("beat", "count", "count", float(i), start + i, True) for i in range(n)]


async def test_snapshot_of_a_daemon(daemon: Daemon) -> None:
    await daemon.pollers[0].poll_once()
    assert daemon.buffer is not None
    daemon.buffer.add(_readings(5, NOW - 300))
    snap = status.snapshot(daemon, now=NOW)
    json.dumps(snap)  # JSON-able as it is
    assert snap["state"] == "running" and snap["pid"] == os.getpid()
    assert snap["version"] == __version__ and snap["thing"] == "gw"
    assert snap["connection"]["connected"] is False
    assert snap["connection"]["broker"] == "broker.example:8883"
    sensors = {s["name"]: s for s in snap["sensors"]}
    assert sensors["beat"]["health"] == "ok"
    assert sensors["beat"]["values"] == [{"quantity": "count", "value": 41.0, "unit": "count"}]
    assert sensors["beat"]["last_ok"] is not None
    assert sensors["pulse"]["last_ok"] is None and sensors["pulse"]["values"] == []
    assert sensors["lux"]["health"] == "unavailable"
    assert "/dev/i2c-7" in sensors["lux"]["last_error"]
    assert snap["buffer"] == {
        "readings": 5,
        "oldest_time": NOW - 300,
        "outbox_batches": 0,
        "dropped_pending": 0,
    }
    assert snap["certificate"]["days_left"] > 300
    assert snap["counters"]["readings_taken"] == 1
    assert snap["shadow"]["enabled"] is False and snap["shadow"]["state"] == "off"
    assert snap["shadow"]["applied"] == {} and snap["shadow"]["refused"] == {}
    cw = snap["cloudwatch"]
    assert cw["enabled"] is False and cw["state"] == "off"
    assert (cw["log_group"], cw["log_stream"]) == ("/wsn-gateway", "gw")
    assert cw["dropped_total"] == 0 and set(cw["dropped"]) >= {"queue_full", "spool_over_cap"}


def test_certificate_that_cannot_be_read(tmp_path: Path) -> None:
    facts = status.certificate_facts(tmp_path / "missing.pem")
    assert "error" in facts and "not_after" not in facts


def _snap(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "format": 1,
        "version": "1.2.3",
        "pid": 4242,
        "state": "running",
        "time": NOW - 2,
        "started": NOW - 3_720,
        "period": 5.0,
        "thing": "barn-7",
        "connection": {
            "broker": "a1b2.iot.eu-west-1.amazonaws.com:8883",
            "connected": False,
            "since": NOW - 300,
            "last_error": "connection refused by 1.2.3.4:8883",
            "in_flight": 0,
            "last_acked_seq": 812,
            "last_acked_time": NOW - 310,
        },
        "sensors": [
            {
                "name": "air",
                "driver": "bme280",
                "health": "ok",
                "last_ok": NOW - 4,
                "values": [
                    {"quantity": "temperature", "value": 21.4375, "unit": "Cel"},
                    {"quantity": "humidity", "value": 40.2, "unit": "%RH"},
                ],
                "readings": 10,
                "errors": 0,
                "rejected": 0,
                "last_error": None,
            },
            {
                "name": "field",
                "driver": "xbee",
                "health": "failed",
                "last_ok": NOW - 900,
                "values": [{"quantity": "n1/moisture", "value": 0.31, "unit": None}],
                "readings": 3,
                "errors": 7,
                "rejected": 0,
                "last_error": "no answer within 2 s",
                "nodes": [
                    {
                        "name": "n1",
                        "key": "0013a200",
                        "configured": True,
                        "silent_for": 905.0,
                        "missing": True,
                        "messages": 3,
                    }
                ],
            },
        ],
        "buffer": {
            "readings": 1234,
            "oldest_time": NOW - 305,
            "outbox_batches": 2,
            "dropped_pending": 0,
        },
        "disk_full": False,
        "certificate": {"path": "/etc/c.pem", "not_after": NOW + 20 * 86400, "days_left": 20},
        "cloudwatch": _cw(),
        "shadow": _shadow(),
        "counters": {"readings_dropped": 0},
    }
    base.update(changes)
    return base


def _cw(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "enabled": True,
        "log_group": "/wsn-gateway",
        "log_stream": "barn-7",
        "state": "shipping",
        "last_upload_time": NOW - 4,
        "delivered": 5120,
        "queued": 0,
        "spool_events": 0,
        "spool_bytes": 0,
        "spool_cap_bytes": 16 * 1024 * 1024,
        "dropped": {
            "queue_full": 0,
            "spool_over_cap": 0,
            "rejected_too_old": 0,
            "rejected_too_new": 0,
            "rejected_expired": 0,
        },
        "dropped_total": 0,
        "last_error": None,
        "last_error_time": None,
    }
    base.update(changes)
    return base


def _cw_text(**changes: Any) -> list[str]:
    """The CloudWatch lines of the rendered status."""
    lines = status.render(_snap(cloudwatch=_cw(**changes)), NOW).splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("cloudwatch "))
    end = next(i for i, line in enumerate(lines) if line.startswith("shadow "))
    return lines[start:end]


def _shadow(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "enabled": True,
        "name": None,
        "state": "in sync",
        "reason": None,
        "since": NOW - 600,
        "until": None,
        "version": 12,
        "applied_time": NOW - 3 * 3600,
        "answered_time": NOW - 30,
        "applied": {"sensors.board.interval": 30, "logging.level": "debug"},
        "refused": {"sensors.fan.interval": "must be greater than 0 (got -1)"},
        "report_error": None,
    }
    base.update(changes)
    return base


def _shadow_text(**changes: Any) -> list[str]:
    """The shadow's lines of the rendered status."""
    lines = status.render(_snap(shadow=_shadow(**changes)), NOW).splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("shadow "))
    end = lines.index("", start)
    return lines[start:end]


def test_render_a_running_daemon() -> None:
    text = status.render(_snap(), NOW)
    lines = text.splitlines()
    assert lines[0] == "wsn-gateway 1.2.3: running, pid 4242, up 61 min"
    assert "connection   offline since " in text and "(5 min ago)" in text
    assert "last error   connection refused by 1.2.3.4:8883" in text
    assert "last ack     seq 812, 5 min ago (0 in flight)" in text
    assert "buffer       1,234 readings, oldest 5 min ago" in text
    assert "outbox       2 batches awaiting PUBACK" in text
    assert "dropped      0 since start, 0 not yet reported" in text
    assert "(20 days left) — renew soon" in text
    table = lines[lines.index("sensors") + 1 :]
    assert table[0].split() == ["SENSOR", "HEALTH", "LAST", "GOOD", "VALUES"]
    # Columns line up: each column starts at the same offset in every row.
    air = next(line for line in table if line.lstrip().startswith("air"))
    field = next(line for line in table if line.lstrip().startswith("field"))
    for word_air, word_field in (("ok", "failed"), ("4 s ago", "15 min ago")):
        assert air.index(word_air) == field.index(word_field)
    assert air.endswith("temperature 21.4375 Cel, humidity 40.2 %RH")
    assert field.endswith("n1/moisture 0.31")
    assert "error: no answer within 2 s" in text
    assert "node n1: MISSING, silent 15 min, 3 messages" in text
    # The shadow's lines come after the certificate's.
    assert lines[lines.index("sensors") - 5].startswith("shadow       in sync (version 12, ")


class Sent:
    """The shadow agent's link: what it sends and saves."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes]] = []

    async def send(self, topic: str, payload: bytes) -> None:
        self.sent.append((topic, payload))

    async def persist(self, path: Path, data: dict[str, Any]) -> None:
        pass


def _doc(**members: Any) -> bytes:
    return json.dumps(members).encode()


async def test_shadow_facts_follow_the_agent_and_the_publisher(tmp_path: Path) -> None:
    d = _daemon(tmp_path, "shadow: {enabled: true, name: gateway-config}\n")
    facts = status.shadow_facts(d, NOW)
    assert facts["enabled"] is True and facts["name"] == "gateway-config"
    assert facts["state"] == "waiting for the shadow service"  # not started yet
    base: Settings = d.settings
    remote = RemoteConfig(state_path(base), ShadowTopics.of(base.thing, "gateway-config"))
    link = Sent()
    agent = ShadowAgent(remote, base, send=link.send, apply=d._apply_remote, persist=link.persist)
    d.shadow = agent
    d.publisher, _ = d._make_publisher(mqtt_target(base))
    t = agent.topics

    # Connected; the get is on its way.
    d.publisher.connected.set()
    await agent._request(new_session=True)
    facts = status.shadow_facts(d)
    assert facts["state"] == "waiting for the shadow service"
    assert facts["since"] == agent.asked and facts["since"] is not None
    # The document: in sync, with what applies and what is refused.
    before = time.time()
    desired = {"sensors": {"beat": {"interval": 30}}, "batch": {"max_age": -1}}
    await agent._handle(t.get_accepted, _doc(state={"desired": desired}, version=12))
    facts = status.shadow_facts(d)
    assert facts["state"] == "in sync" and facts["version"] == 12
    assert facts["applied"] == {"sensors.beat.interval": 30}
    assert facts["refused"] == {"batch.max_age": "must be greater than 0 (got -1)"}
    assert facts["applied_time"] >= before and facts["answered_time"] >= before
    assert "omitted" not in facts
    assert d.settings.sensors[0].interval == 30  # applied to the daemon
    json.dumps(facts)
    # The same document again (a new connection): it was not applied anew.
    applied_time = facts["applied_time"]
    await agent._request(new_session=True)
    await agent._handle(t.get_accepted, _doc(state={"desired": desired}, version=12))
    assert status.shadow_facts(d)["applied_time"] == applied_time
    # Nor is a delta that a report causes (a new version, the same desired state).
    await agent._handle(t.update_delta, _doc(state={"batch": {"max_age": -1}}, version=13))
    facts = status.shadow_facts(d)
    assert facts["version"] == 13 and facts["applied_time"] == applied_time
    # Offline: waiting again, with the settings still in effect.
    d.publisher.connected.clear()
    facts = status.shadow_facts(d)
    assert facts["state"] == "waiting for the shadow service" and facts["version"] == 13
    assert facts["applied"] == {"sensors.beat.interval": 30}

    # A get that goes unanswered, then another: not answering since the first.
    d.publisher.connected.set()
    await agent._request(new_session=True)
    first = agent.asked
    agent._no_answer()
    await agent._request(new_session=True)
    agent._no_answer()
    facts = status.shadow_facts(d)
    assert facts["state"] == "not answering" and facts["since"] == first
    assert facts["reason"].startswith("no answer to the get")
    # An answer, but a refusal.
    await agent._request(new_session=True)
    await agent._handle(t.get_rejected, _doc(code=403, message="Forbidden"))
    facts = status.shadow_facts(d)
    assert facts["state"] == "refused by the shadow service"
    assert facts["reason"] == "403 Forbidden"
    # Our report refused: said until one is accepted.
    await agent._handle(
        t.update_rejected, _doc(code=400, message="bad", clientToken=f"{agent._token}9")
    )
    assert status.shadow_facts(d)["report_error"] == "400 bad"
    await agent._handle(t.update_accepted, _doc(clientToken=f"{agent._token}10"))
    assert status.shadow_facts(d)["report_error"] is None
    # No document: in sync, nothing desired.
    await agent._request(new_session=True)
    await agent._handle(t.get_rejected, _doc(code=404, message="No shadow"))
    facts = status.shadow_facts(d)
    assert facts["state"] == "in sync" and facts["reason"] is None
    assert facts["version"] is None and facts["applied"] == {} and facts["refused"] == {}
    # The publisher leaves the shadow out (a policy without its topics).
    d.publisher._listener_off_until = time.monotonic() + 3600
    now = time.time()
    facts = status.shadow_facts(d, now)
    assert facts["state"] == "left out" and facts["reason"].startswith("policy: ")
    assert now + 3590 < facts["until"] <= now + 3600


async def test_shadow_facts_stay_small(tmp_path: Path) -> None:
    d = _daemon(tmp_path, "shadow: {enabled: true}\n")
    base = d.settings
    remote = RemoteConfig(state_path(base), ShadowTopics.of(base.thing))
    link = Sent()
    d.shadow = ShadowAgent(
        remote, base, send=link.send, apply=d._apply_remote, persist=link.persist
    )
    long = "x" * 1000
    desired = {long: long, "sensors": {f"ghost{i}": {"interval": 1} for i in range(30)}}
    await d.shadow._handle(d.shadow.topics.get_accepted, _doc(state={"desired": desired}))
    facts = status.shadow_facts(d)
    assert len(facts["refused"]) == status.SHADOW_ENTRIES
    assert facts["omitted"] == {"applied": 0, "refused": 31 - status.SHADOW_ENTRIES}
    assert all(
        len(text) <= status.REASON_CHARS for entry in facts["refused"].items() for text in entry
    )
    assert any(key.startswith("xxx") and key.endswith("…") for key in facts["refused"])
    assert len(json.dumps(facts)) < 6000


def test_the_applied_time_survives_a_restart(daemon: Daemon) -> None:
    base = daemon.settings
    remote = RemoteConfig(state_path(base), ShadowTopics.of(base.thing))
    assert remote.applied_time is None
    assert remote.take_document({"logging": {"level": "debug"}}, 3)
    applied = remote.applied_time
    assert applied is not None and remote.dirty
    write_json_atomically(remote.path, remote.snapshot(evaluate(remote.desired, base)))
    again = RemoteConfig.load(remote.path, remote.topics)
    assert again.version == 3 and again.applied_time == pytest.approx(applied, abs=0.01)


def test_render_the_shadow_in_sync() -> None:
    assert _shadow_text() == [
        "shadow       in sync (version 12, applied 3 h 00 min ago):"
        " 2 remote settings in effect, 1 refused",
        "  applied  sensors.board.interval: 30",
        "  applied  logging.level: debug",
        "  refused  sensors.fan.interval: must be greater than 0 (got -1)",
    ]
    assert _shadow_text(
        name="gateway-config", applied={"batch.max_age": 0.5}, refused={}, report_error="400 bad"
    ) == [
        "shadow       in sync (named shadow gateway-config, version 12, applied 3 h 00 min ago):"
        " 1 remote setting in effect",
        "  applied  batch.max_age: 0.5",
        "  error    the shadow service refused the report: 400 bad",
    ]


def test_render_the_shadow_off_waiting_and_with_nothing_desired() -> None:
    assert _shadow_text(enabled=False, state="off") == ["shadow       off"]
    nothing = {"applied": {}, "refused": {}, "version": None, "applied_time": None}
    assert _shadow_text(state="waiting for the shadow service", since=None, **nothing) == [
        "shadow       waiting for the shadow service: no remote settings in effect"
    ]
    assert _shadow_text(**{**nothing, "refused": {"mqtt": "cannot be changed remotely"}}) == [
        "shadow       in sync: no remote settings in effect, 1 refused",
        "  refused  mqtt: cannot be changed remotely",
    ]
    # A status file of a daemon from before the shadow was shown: no shadow line.
    snap = _snap()
    del snap["shadow"]
    assert "shadow" not in status.render(snap, NOW)


def test_render_the_shadow_not_answering_refused_and_left_out() -> None:
    lines = _shadow_text(state="not answering", since=NOW - 300, reason="no answer to the get")
    assert lines[0] == (
        "shadow       not answering for 5 min (version 12, applied 3 h 00 min ago):"
        " 2 remote settings in effect, 1 refused"
    )
    assert lines[1] == "  why      no answer to the get"
    lines = _shadow_text(state="refused by the shadow service", reason="403 Forbidden")
    assert lines[0].startswith("shadow       refused by the shadow service (version 12, ")
    assert lines[1] == "  why      403 Forbidden"
    lines = _shadow_text(state="left out", until=NOW + 3500, reason="policy: lost 3 times")
    assert lines[0].startswith("shadow       left out for 58 min more (version 12, ")
    assert lines[1] == "  why      policy: lost 3 times"


def test_render_the_shadow_with_entries_left_out_of_the_file() -> None:
    lines = _shadow_text(omitted={"applied": 0, "refused": 7})
    assert lines[0].endswith(": 2 remote settings in effect, 8 refused")
    assert lines[-1] == "  refused  … 7 more, not in the status file"


def test_render_connected_and_no_ack_yet() -> None:
    connection = {
        "broker": "b:8883",
        "connected": True,
        "since": NOW - 60,
        "last_error": None,
        "in_flight": 1,
        "last_acked_seq": None,
        "last_acked_time": None,
    }
    text = status.render(_snap(connection=connection, sensors=[]), NOW)
    assert "connection   connected since" in text
    assert "last error" not in text
    assert "last ack     none since start" in text
    assert "sensors      none" in text


def test_not_running_detection() -> None:
    assert status.not_running(_snap(), NOW, alive=lambda pid: True) is None
    assert status.not_running(_snap(), NOW, alive=lambda pid: False) == "process 4242 is gone"
    stale = _snap(time=NOW - 16)
    assert status.not_running(stale, NOW, alive=lambda pid: True) == "status file stale"
    stopped = _snap(state="stopped")
    assert status.not_running(stopped, NOW, alive=lambda pid: True) == "stopped"
    text = status.render(stale, NOW, why_not="status file stale")
    assert text.startswith("wsn-gateway 1.2.3: not running — last seen 16 s ago")
    assert "buffer       1,234 readings" in text  # the last snapshot is still shown


def test_pid_alive() -> None:
    assert status.pid_alive(os.getpid())
    assert not status.pid_alive(2**22 + 12345)  # above pid_max


def test_read_status_takes_the_newest_file(tmp_path: Path) -> None:
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    assert status.read_status([a, b]) is None
    status.write_atomically(a, _snap(thing="old"))
    status.write_atomically(b, _snap(thing="new"))
    os.utime(a, (NOW - 100, NOW - 100))
    found = status.read_status([a, b])
    assert found is not None and found.path == b and found.snapshot["thing"] == "new"
    assert oct(b.stat().st_mode & 0o777) == "0o644"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "b.json"]  # no temp left
    b.write_text("{not json")
    os.utime(b, (NOW, NOW))
    with pytest.raises(Exception, match="cannot read the status file"):
        status.read_status([a, b])


def test_write_path_prefers_the_runtime_directory(daemon: Daemon, tmp_path: Path) -> None:
    s = daemon.settings
    assert status.write_path(s, {}) == s.state_dir / "status.json"
    assert status.write_path(s, {"RUNTIME_DIRECTORY": "/run/x:/run/y"}) == Path(
        "/run/x/status.json"
    )


async def test_writer_writes_periodically_and_stopped_at_stop(
    daemon: Daemon, tmp_path: Path
) -> None:
    path = tmp_path / "status.json"
    stopping = False
    writer = status.StatusWriter(
        daemon,
        path,
        run_in_worker=asyncio.to_thread,
        stopping=lambda: stopping,
    )
    task = asyncio.create_task(writer.run())
    for _ in range(100):
        if path.exists():
            break
        await asyncio.sleep(0.01)
    first = json.loads(path.read_text())
    assert first["state"] == "running" and first["connection"]["since"] is not None
    stopping = True
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert json.loads(path.read_text())["state"] == "stopped"


async def test_writer_failure_is_logged_not_raised(
    daemon: Daemon, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    writer = status.StatusWriter(
        daemon,
        tmp_path / "no" / "such" / "status.json",
        run_in_worker=asyncio.to_thread,
    )
    await writer.write()
    await writer.write()
    assert [r.message for r in caplog.records].count("cannot write the status file") == 1


def _config(tmp_path: Path, state_dir: Path) -> Path:
    config = tmp_path / "cli.yaml"
    config.write_text(
        "thing: gw\n"
        f"state_dir: {state_dir}\n"
        "mqtt: {endpoint: localhost, ca: ca.pem, cert: c.pem, key: k.pem}\n"
        "sensors: [{name: c, driver: counter}]\n"
    )
    return config


@pytest.fixture
def no_run_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(status, "RUN_DIR", tmp_path / "run-absent")


@pytest.mark.usefixtures("no_run_dir")
def test_cli_without_status_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = _config(tmp_path, tmp_path / "state")
    assert main(["status", "--config", str(config)]) == 1
    assert capsys.readouterr().out.startswith("not running (no status file at ")
    assert main(["status", "--config", str(config), "--json"]) == 1
    assert json.loads(capsys.readouterr().out)["running"] is False


@pytest.mark.usefixtures("no_run_dir")
def test_cli_json_and_text(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    state = tmp_path / "state"
    state.mkdir()
    config = _config(tmp_path, state)
    status.write_atomically(state / "status.json", _snap(time=time.time() - 1, pid=os.getpid()))
    assert main(["status", "--config", str(config), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["running"] is True and data["reason"] is None
    assert data["thing"] == "barn-7" and data["path"] == str(state / "status.json")
    assert data["sensors"][0]["values"][0]["unit"] == "Cel"
    assert main(["status", "--config", str(config)]) == 0
    assert "running, pid" in capsys.readouterr().out
    status.write_atomically(state / "status.json", _snap(time=time.time() - 60))
    assert main(["status", "--config", str(config)]) == 1
    assert "not running — last seen 60 s ago" in capsys.readouterr().out


# --- CloudWatch Logs shipping ----------------------------------------------------------------
def test_render_cloudwatch_shipping() -> None:
    assert _cw_text() == [
        "cloudwatch   shipping to /wsn-gateway/barn-7, last upload 4 s ago, 0 waiting",
        "  dropped  0 log lines since start",
    ]
    assert _cw_text(queued=12, last_upload_time=None) == [
        "cloudwatch   shipping to /wsn-gateway/barn-7, last upload never, 12 waiting",
        "  dropped  0 log lines since start",
    ]
    text = status.render(_snap(), NOW)  # between the certificate and the shadow
    lines = text.splitlines()
    at = lines.index("cloudwatch   shipping to /wsn-gateway/barn-7, last upload 4 s ago, 0 waiting")
    assert lines[at - 1].startswith("certificate ") and lines[at + 2].startswith("shadow ")


def test_render_cloudwatch_losing_lines() -> None:
    dropped = {
        "queue_full": 0,
        "spool_over_cap": 12,
        "rejected_too_old": 0,
        "rejected_too_new": 0,
        "rejected_expired": 0,
    }
    assert _cw_text(
        state="failing",
        last_upload_time=NOW - 3 * 3600,
        queued=40,
        spool_events=1500,
        spool_bytes=65_000,
        spool_cap_bytes=65_536,
        dropped=dropped,
        dropped_total=12,
        last_error="Could not connect to the endpoint URL",
        last_error_time=NOW - 5,
    ) == [
        "cloudwatch   UPLOAD FAILING, spooling for /wsn-gateway/barn-7, last upload 3 h 00 min"
        " ago, 1,540 waiting (1,500 in the spool, 63.5 KiB of 64.0 KiB)",
        "  dropped  12 log lines since start (queue full 0, spool over cap 12, rejected too old 0)",
        "  error    Could not connect to the endpoint URL (5 s ago)",
    ]
    # Rarer reasons are named only when they lost lines.
    lines = _cw_text(
        dropped={**dropped, "rejected_too_new": 2, "rejected_expired": 1}, dropped_total=15
    )
    assert lines[1] == (
        "  dropped  15 log lines since start (queue full 0, spool over cap 12,"
        " rejected too old 0, too new 2, expired 1)"
    )


def test_render_cloudwatch_off_unsynced_and_old_files() -> None:
    assert _cw_text(enabled=False, state="off") == ["cloudwatch   off"]
    lines = _cw_text(state="clock unsynchronised", spool_events=None, spool_bytes=None)
    assert lines[0] == (
        "cloudwatch   clock not synchronised, spooling for /wsn-gateway/barn-7,"
        " last upload 4 s ago, 0 waiting"
    )
    snap = _snap()
    del snap["cloudwatch"]  # a status file of a daemon from before CloudWatch was shown
    assert "cloudwatch" not in status.render(snap, NOW)


def test_cloudwatch_facts_read_the_counters(tmp_path: Path) -> None:
    d = _daemon(
        tmp_path,
        "cloudwatch: {enabled: true, region: eu-west-1, log_group: /farm, spool_bytes: 64KiB}\n",
    )
    assert status.snapshot(d, now=NOW)["cloudwatch"]["state"] == "not started"

    async def nothing() -> tuple[int, None]:
        return 0, None

    cloud = CloudWatch(
        d.settings,
        counters=d.counters,
        pollers=list,
        latencies=list,
        buffer_state=nothing,
        context_factory=lambda: None,
        client_factory=lambda: None,  # never called: nothing is shipped here
    )
    try:
        d._cloud = cloud
        cloud.handler.queue = type(cloud.handler.queue)(maxlen=2)
        for i in range(5):
            cloud.handler.put(LogEvent(i, "x"))
        shipper = cloud.shipper
        shipper.spool.dropped = 7
        shipper.spool.events, shipper.spool.bytes = 3, 120
        shipper.stats.rejected_too_old = 1
        shipper.stats.delivered = 9
        shipper.last_upload = NOW - 10
        snap = json.loads(json.dumps(status.snapshot(d, now=NOW)))
    finally:
        cloud.shipper.close()
    cw = snap["cloudwatch"]
    assert cw["enabled"] is True and cw["state"] == "shipping"
    assert (cw["log_group"], cw["log_stream"]) == ("/farm", "gw")
    assert (cw["queued"], cw["spool_events"], cw["spool_bytes"]) == (2, 3, 120)
    assert cw["spool_cap_bytes"] == 65536 and cw["delivered"] == 9
    assert cw["last_upload_time"] == NOW - 10
    assert cw["dropped"] == {
        "queue_full": 3,
        "spool_over_cap": 7,
        "rejected_too_old": 1,
        "rejected_too_new": 0,
        "rejected_expired": 0,
    }
    assert cw["dropped_total"] == 11
    text = status.render(snap, NOW)
    assert "cloudwatch   shipping to /farm/gw, last upload 10 s ago, 5 waiting" in text
    assert (
        "  dropped  11 log lines since start (queue full 3, spool over cap 7,"
        " rejected too old 1)" in text
    )
