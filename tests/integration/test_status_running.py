"""``wsn-gateway status`` against the real daemon process (no broker needed: it is offline)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from conftest import free_port
from daemon_harness import REPO, GatewayProcess, gateway_config, wait_until, write_config

if TYPE_CHECKING:
    from conftest import PkiBundle

pytestmark = pytest.mark.integration


def _status(config: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ}
    env.pop("WSN_GATEWAY_CONFIG", None)
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", "status", "--config", str(config), *extra],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=30,
        check=False,
    )


def test_status_of_the_running_and_the_stopped_daemon(pki: PkiBundle, tmp_path: Path) -> None:
    files = pki.files
    state_dir = tmp_path / "state"
    config = write_config(
        tmp_path / "gateway.yaml",
        gateway_config(
            port=free_port(),  # nothing listens: the daemon runs offline
            ca=files.ca_cert,
            cert=files.client_cert,
            key=files.client_key,
            state_dir=state_dir,
            sensors={"beat": 0.2, "pulse": 0.2},
        ),
    )
    assert _status(config).returncode == 1  # not started yet: no status file
    gateway = GatewayProcess(config, tmp_path / "gateway.log").start()
    try:
        gateway.wait_log("started")

        def sensors_ok() -> dict[str, object] | None:
            result = _status(config, "--json")
            if result.returncode != 0:
                return None
            data: dict[str, object] = json.loads(result.stdout)
            sensors = data["sensors"]
            assert isinstance(sensors, list)
            return data if all(s["health"] == "ok" and s["values"] for s in sensors) else None

        data = wait_until(sensors_ok, timeout=20, what="status shows the sensors ok")
        assert data["running"] is True and data["pid"] == gateway.pid
        assert data["connection"]["connected"] is False
        assert data["shadow"]["enabled"] is False and data["shadow"]["state"] == "off"
        text = _status(config)
        assert text.returncode == 0, text.stdout + text.stderr
        assert f"running, pid {gateway.pid}" in text.stdout
        assert "connection   offline since" in text.stdout
        assert "\nshadow       off\n" in text.stdout
        for name in ("beat", "pulse"):
            line = next(li for li in text.stdout.splitlines() if li.split()[:2] == [name, "ok"])
            assert "count" in line
        assert gateway.terminate() == 0
    finally:
        gateway.kill()
    after = _status(config)
    assert after.returncode == 1
    assert "not running" in after.stdout and "(stopped)" in after.stdout
    assert json.loads((state_dir / "status.json").read_text())["state"] == "stopped"
