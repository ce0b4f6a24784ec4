"""`wsn-gateway demo` runs to a verified summary (what the README promises first)."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.cli import main


@pytest.mark.integration
def test_demo_runs_through_an_outage_to_a_verified_summary(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["demo", "--duration", "16", "--workdir", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "uplink cut" in out and "uplink restored" in out
    assert "demo: OK, every batch verified" in out
    # What the demo kept can be verified again from the command line.
    received = tmp_path / "received.jsonl"
    key = tmp_path / "state" / "signing-ed25519.pem"
    assert main(["verify", "--key", str(key), str(received)]) == 0
