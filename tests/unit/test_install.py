"""systemd/install.sh into a throwaway root: idempotent, and --uninstall keeps the data."""

from __future__ import annotations

import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "systemd" / "install.sh"


def _run(root: Path, *args: str, cwd: Path) -> str:
    done = subprocess.run(
        ["bash", str(SCRIPT), "--root", str(root), "--no-venv", *args],
        capture_output=True,
        text=True,
        check=False,
        cwd=cwd,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def _tree(root: Path) -> dict[str, tuple[int, bytes]]:
    return {
        str(p.relative_to(root)): (p.stat().st_mode, p.read_bytes() if p.is_file() else b"")
        for p in sorted(root.rglob("*"))
    }


def test_install_twice_then_uninstall(tmp_path: Path) -> None:
    root, keys = tmp_path / "root", tmp_path / "keys"
    keys.mkdir()
    (keys / "private.pem.key").write_text("key")
    (keys / "private.pem.key").chmod(0o644)
    (keys / "device.pem.crt").write_text("cert")
    _run(root, cwd=keys)
    first = _tree(root)
    etc = root / "etc" / "wsn-gateway"
    assert (etc / "gateway.yaml").read_bytes() == (
        REPO / "config" / "gateway.example.yaml"
    ).read_bytes()
    assert (etc / "private.pem.key").stat().st_mode & 0o777 == 0o600
    assert (etc / "device.pem.crt").is_file()
    unit = root / "etc" / "systemd" / "system" / "wsn-gateway.service"
    assert unit.read_bytes() == (REPO / "systemd" / "wsn-gateway.service").read_bytes()
    passwd = (root / "etc" / "passwd").read_text()
    assert [line.split(":")[0] for line in passwd.splitlines()] == ["wsn-gateway"]
    groups = [line.split(":")[0] for line in (root / "etc" / "group").read_text().splitlines()]
    assert sorted(groups) == ["dialout", "gpio", "i2c", "wsn-gateway"]

    (etc / "gateway.yaml").write_text("thing: mine\n")  # the user's edits survive
    (root / "var" / "lib" / "wsn-gateway" / "buffer.db").write_text("data")
    _run(root, cwd=keys)
    second = _tree(root)
    assert second.keys() == first.keys() | {"var/lib/wsn-gateway/buffer.db"}
    assert (etc / "gateway.yaml").read_text() == "thing: mine\n"
    assert (root / "etc" / "passwd").read_text() == passwd

    _run(root, "--uninstall", cwd=keys)
    assert not unit.exists() and not (root / "opt" / "wsn-gateway").exists()
    assert (root / "var" / "lib" / "wsn-gateway" / "buffer.db").read_text() == "data"
    assert (etc / "gateway.yaml").exists()

    _run(root, "--uninstall", "--purge", cwd=keys)
    assert not (root / "var" / "lib" / "wsn-gateway").exists() and not etc.exists()
    assert (root / "etc" / "passwd").read_text() == ""
