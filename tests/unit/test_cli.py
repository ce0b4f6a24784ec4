"""The command line: exit codes and messages that say what to do."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from gateway.buffer import Buffer
from gateway.cli import main
from gateway.envelope import Sealer
from gateway.readings import Reading
from gateway.signing import load_or_create_ed25519

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "config" / "demo.yaml"


def _config(tmp_path: Path, body: str = "") -> Path:
    text = DEMO.read_text() + body
    path = tmp_path / "gateway.yaml"
    path.write_text(text.replace("state_dir: ./demo-state", f"state_dir: {tmp_path / 'state'}"))
    return path


def test_check_config_ok(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-config", "--config", str(_config(tmp_path))]) == 0
    out = capsys.readouterr().out
    assert "ok" in out and "demo-gw" in out and "heartbeat (counter)" in out


def test_check_config_error_exits_2_with_file_and_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("thing: gw\nmqtt:\n  endpoint: x\n  keepalive: 5\n")
    assert main(["check-config", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"{path}:4: mqtt.keepalive" in err
    assert "Traceback" not in err


def test_missing_config_file_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-config", "--config", str(tmp_path / "nope.yaml")]) == 2
    assert "nope.yaml" in capsys.readouterr().err


def test_config_from_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("WSN_GATEWAY_CONFIG", str(_config(tmp_path)))
    assert main(["check-config"]) == 0
    assert "demo-gw" in capsys.readouterr().out


def test_read_prints_one_json_reading_per_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["read", "--config", str(_config(tmp_path)), "greenhouse", "heartbeat"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    quantities = {(r["sensor"], r["quantity"]) for r in lines}
    assert quantities == {
        ("greenhouse", "temperature"),
        ("greenhouse", "pressure"),
        ("greenhouse", "humidity"),
        ("heartbeat", "count"),
    }
    temperature = next(r for r in lines if r["quantity"] == "temperature")
    assert temperature["unit"] == "Cel" and -40 <= temperature["value"] <= 85


def test_read_unknown_sensor_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["read", "--config", str(_config(tmp_path)), "attic"]) == 2
    err = capsys.readouterr().err
    assert "attic" in err and "greenhouse" in err


def _payloads(tmp_path: Path, key_path: Path, batches: int = 3) -> list[bytes]:
    signer = load_or_create_ed25519(key_path)
    buffer = Buffer(tmp_path / "b.sqlite3", max_bytes=1 << 20)
    sealer = Sealer(thing="gw", signer=signer, max_bytes=1024, max_records=1000)
    buffer.add([Reading("c", "count", "count", float(i), 1.7e9 + i) for i in range(60)])
    out = []
    for _ in range(batches):
        rows = buffer.oldest(1000)
        sealed = sealer.seal(buffer.chain(), [r.reading for r in rows], now=1.7e9)
        buffer.commit_batch(sealed, [r.id for r in rows[: sealed.count]], 0)
        out.append(sealed.payload)
    buffer.close()
    return out


def test_verify_good_and_tampered(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    key = tmp_path / "signing.pem"
    payloads = _payloads(tmp_path, key)
    good = tmp_path / "good.jsonl"
    good.write_bytes(b"\n".join(payloads) + b"\n")
    assert main(["verify", "--key", str(key), str(good)]) == 0
    assert "seq 1..3" in capsys.readouterr().out

    tampered = tmp_path / "bad.jsonl"
    tampered.write_bytes(b"\n".join([payloads[0], payloads[1].replace(b'"v":1', b'"v":2', 1)]))
    assert main(["verify", "--key", str(key), str(tampered)]) == 1

    other = tmp_path / "other.pem"
    other_key = ed25519.Ed25519PrivateKey.generate()
    other.write_bytes(
        other_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    assert main(["verify", "--key", str(other), str(good)]) == 1
    assert "kid" in capsys.readouterr().out


def test_verify_missing_source_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    key = tmp_path / "k.pem"
    load_or_create_ed25519(key)
    assert main(["verify", "--key", str(key), str(tmp_path / "none.jsonl")]) == 2
    assert "none.jsonl: no such file" in capsys.readouterr().err


def test_verify_unreadable_key_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    payloads = tmp_path / "p.jsonl"
    payloads.write_text("{}\n")
    assert main(["verify", "--key", str(tmp_path / "absent.pem"), str(payloads)]) == 1
    err = capsys.readouterr().err
    assert "absent.pem" in err and "Traceback" not in err


def test_buffer_stats(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = _config(tmp_path)
    assert main(["buffer", "stats", "--config", str(config)]) == 1
    assert "no buffer yet" in capsys.readouterr().err
    buffer = Buffer(tmp_path / "state" / "buffer.sqlite3", max_bytes=1 << 20)
    buffer.add([Reading("c", "count", "count", 1.0, 1.7e9)])
    buffer.close()
    assert main(["buffer", "stats", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert "readings      1" in out
    assert main(["buffer", "stats", "--config", str(config), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["readings"] == 1 and data["last_seq"] == 0 and data["dropped_total"] == 0


def test_usage_error_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["frobnicate"])
    assert exc.value.code == 2


def test_scan_simulated_bus_names_the_chips(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["scan", "--bus", "sim", "--config", str(_config(tmp_path))]) == 0
    out = capsys.readouterr().out
    assert "0x76  BME280" in out
    assert "0x44  SHT3x" in out
    assert "0x23  BH1750" in out


def test_scan_missing_bus_says_how_to_enable_i2c(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["scan", "--bus", "97"]) == 1
    err = capsys.readouterr().err
    assert "/dev/i2c-97 does not exist" in err and "raspi-config" in err
    assert "Errno" not in err


def test_scan_bad_bus_argument_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["scan", "--bus", "one"]) == 2
