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
from gateway.config import load_settings
from gateway.daemon import Daemon
from gateway.pki import write_pki
from gateway.polling import Poller
from gateway.readings import Reading
from gateway.workers import Worker

NOW = 1_750_000_000.0


@pytest.fixture
def daemon(tmp_path: Path) -> Daemon:
    pki = write_pki(tmp_path / "pki", thing="gw")
    config = tmp_path / "gw.yaml"
    config.write_text(
        "thing: gw\n"
        f"state_dir: {tmp_path / 'state'}\n"
        f"mqtt: {{endpoint: broker.example, ca: {pki.ca_cert}, cert: {pki.client_cert},"
        f" key: {pki.client_key}}}\n"
        "sensors:\n"
        "  - {name: beat, driver: counter, interval: 1}\n"
        "  - {name: pulse, driver: counter, interval: 1}\n"
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
        "counters": {"readings_dropped": 0},
    }
    base.update(changes)
    return base


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
