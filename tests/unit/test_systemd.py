"""The systemd unit (verify, security rating) and the daemon's sd_notify messages."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from gateway.notify import Notifier
from gateway.pki import write_pki

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "systemd" / "wsn-gateway.service"
ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(
    ANALYZE is None,
    reason="systemd-analyze is not installed (scripts/test installs Debian's systemd as root)",
)


def _unit_copy(directory: Path) -> Path:
    """The unit with ExecStart on an executable that exists here (/opt is not installed)."""
    text = UNIT.read_text()
    assert "ExecStart=/opt/wsn-gateway/bin/wsn-gateway run" in text
    unit = directory / UNIT.name
    unit.write_text(text.replace("/opt/wsn-gateway/bin/wsn-gateway", sys.executable))
    return unit


@needs_analyze
def test_unit_verifies(tmp_path: Path) -> None:
    unit = _unit_copy(tmp_path)
    env = {**os.environ, "SYSTEMD_LOG_LEVEL": "warning"}
    done = subprocess.run(
        [str(ANALYZE), "verify", str(unit)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    # verify reports unknown or misspelt settings without failing: none allowed.
    assert "wsn-gateway.service" not in done.stderr, done.stderr


@needs_analyze
def test_unit_security_exposure_is_ok(tmp_path: Path) -> None:
    unit = _unit_copy(tmp_path)
    done = subprocess.run(
        [str(ANALYZE), "security", "--offline=true", str(unit)],
        capture_output=True,
        text=True,
        check=False,
        cwd=tmp_path,
    )
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d)\s+(\w+)", done.stdout)
    assert match, done.stdout + done.stderr
    assert float(match.group(1)) <= 2.0, done.stdout
    assert match.group(2) in {"OK", "SAFE", "PERFECT"}, done.stdout


def test_watchdog_interval_from_environment() -> None:
    assert Notifier({}).watchdog_interval is None
    assert Notifier({"WATCHDOG_USEC": "30000000"}).watchdog_interval == 15.0
    mine = {"WATCHDOG_USEC": "400000", "WATCHDOG_PID": str(os.getpid())}
    assert Notifier(mine).watchdog_interval == 0.2
    other = {"WATCHDOG_USEC": "400000", "WATCHDOG_PID": str(os.getpid() + 1)}
    assert Notifier(other).watchdog_interval is None


def test_notifier_without_socket_does_nothing() -> None:
    notifier = Notifier({})
    assert not notifier.enabled
    assert notifier.ready() is False


def test_notifier_abstract_namespace() -> None:
    name = f"wsn-gateway-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(b"\0" + name.encode())
        server.settimeout(2)
        notifier = Notifier({"NOTIFY_SOCKET": "@" + name})
        assert notifier.status("sensors  ok\n1/1")
        assert server.recv(4096) == b"STATUS=sensors ok 1/1"
        notifier.close()


class _Listener:
    """A fake service manager: the datagrams the daemon sends, with arrival times."""

    def __init__(self, path: Path) -> None:
        self.socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.socket.bind(str(path))
        self.messages: list[tuple[float, str]] = []

    def collect(self, seconds: float) -> list[tuple[float, str]]:
        deadline = time.monotonic() + seconds
        got = []
        while (left := deadline - time.monotonic()) > 0:
            self.socket.settimeout(left)
            try:
                data = self.socket.recv(65536)
            except TimeoutError:
                break
            for line in data.decode().splitlines():
                got.append((time.monotonic(), line))
        self.messages += got
        return got

    def wait_for(self, prefix: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for _, line in self.collect(min(0.2, deadline - time.monotonic())):
                if line.startswith(prefix):
                    return line
        raise AssertionError(f"no {prefix!r} within {timeout} s: {self.messages}")


def test_daemon_notifies_ready_status_watchdog_stopping(tmp_path: Path) -> None:
    pki = write_pki(tmp_path / "pki", thing="test-gw")
    with socket.socket() as probe:  # a port where no broker listens
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = tmp_path / "gateway.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "thing": "test-gw",
                "state_dir": str(tmp_path / "state"),
                "clock": "assume-synced",
                "mqtt": {
                    "endpoint": "127.0.0.1",
                    "port": port,
                    "ca": str(pki.ca_cert),
                    "cert": str(pki.client_cert),
                    "key": str(pki.client_key),
                    "reconnect_min": 0.2,
                    "reconnect_max": 1.0,
                },
                "buffer": {"commit_interval": 0.2},
                "sensors": [
                    {"name": "a", "driver": "counter", "interval": 0.1},
                    {"name": "b", "driver": "counter", "interval": 0.1},
                ],
            }
        )
    )
    listener = _Listener(tmp_path / "notify.sock")
    env = {
        **os.environ,
        "NOTIFY_SOCKET": str(tmp_path / "notify.sock"),
        "WATCHDOG_USEC": "400000",
        "PYTHONUNBUFFERED": "1",
    }
    env.pop("WATCHDOG_PID", None)
    env.pop("WSN_GATEWAY_CONFIG", None)
    log = (tmp_path / "gateway.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "run", "--config", str(config)],
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=REPO,
        env=env,
    )
    try:
        listener.wait_for("READY=1", 20)
        status = listener.wait_for("STATUS=", 10)
        assert re.fullmatch(r"STATUS=sensors ok \d/2, buffered \d+, last acked seq (-|\d+)", status)
        pings = [t for t, line in listener.collect(1.5) if line == "WATCHDOG=1"]
        assert len(pings) >= 4, listener.messages  # every 0.2 s

        process.send_signal(signal.SIGSTOP)  # a blocked event loop
        listener.collect(0.1)  # a ping already in flight
        stalled = listener.collect(0.8)
        assert not [line for _, line in stalled if line == "WATCHDOG=1"], stalled
        process.send_signal(signal.SIGCONT)
        listener.wait_for("WATCHDOG=1", 5)

        process.send_signal(signal.SIGTERM)
        listener.wait_for("STOPPING=1", 10)
        assert process.wait(30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        log.close()
        listener.socket.close()
