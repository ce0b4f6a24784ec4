"""Start-up checks: key mode, certificate and key, expiry, endpoint name."""

from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from gateway.config import Settings, load_settings
from gateway.errors import GatewayError
from gateway.pki import create_ca, generate_key, issue_certificate, write_cert, write_key
from gateway.startup import config_warnings, startup_checks


def _settings(tmp_path: Path, *, days: int = 365, endpoint: str = "127.0.0.1") -> Settings:
    ca_key, ca_cert = create_ca("test CA", days=400)
    key, cert = issue_certificate(ca_key, ca_cert, "gw", server=False, days=days)
    write_cert(tmp_path / "ca.crt", ca_cert)
    write_cert(tmp_path / "gw.crt", cert)
    write_key(tmp_path / "gw.key", key)
    config = tmp_path / "gw.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "thing": "gw",
                "state_dir": str(tmp_path / "state"),
                "mqtt": {"endpoint": endpoint, "ca": "ca.crt", "cert": "gw.crt", "key": "gw.key"},
                "sensors": [{"name": "c", "driver": "counter"}],
            }
        )
    )
    return load_settings(config)


def test_good_credentials_pass(tmp_path: Path) -> None:
    assert startup_checks(_settings(tmp_path), resolve_timeout=2) == []


def test_key_readable_by_others_is_refused(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    settings.mqtt.key.chmod(0o640)
    with pytest.raises(GatewayError) as err:
        startup_checks(settings)
    assert str(settings.mqtt.key) in str(err.value)
    assert f"chmod 600 {settings.mqtt.key}" in str(err.value)


def test_key_of_another_certificate_is_refused(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    write_key(settings.mqtt.key, generate_key())
    with pytest.raises(GatewayError, match="cannot be used together"):
        startup_checks(settings)


def test_missing_certificate_is_refused(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    settings.mqtt.cert.unlink()
    with pytest.raises(GatewayError, match="does not exist"):
        startup_checks(settings)


def test_expiring_certificate_warns(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    settings = _settings(tmp_path, days=10)
    with caplog.at_level(logging.WARNING):
        warnings = startup_checks(settings, resolve_timeout=2)
    assert len(warnings) == 1 and "expires on" in warnings[0]
    assert "expires on" in caplog.text


def test_expired_certificate_is_refused(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    key = generate_key()
    now = dt.datetime.now(dt.UTC)
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "gw")])
    expired = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=60))
        .not_valid_after(now - dt.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    write_cert(settings.mqtt.cert, expired)
    write_key(settings.mqtt.key, key)
    with pytest.raises(GatewayError, match="expired on"):
        startup_checks(settings)


def test_unresolvable_endpoint_only_warns(tmp_path: Path) -> None:
    settings = _settings(tmp_path, endpoint="no-such-host.invalid")
    warnings = startup_checks(settings, resolve_timeout=5)
    assert len(warnings) == 1 and "no-such-host.invalid" in warnings[0]


def test_check_config_warnings(tmp_path: Path) -> None:
    settings = _settings(tmp_path, days=10)
    settings.mqtt.key.chmod(0o644)
    warnings = config_warnings(settings, resolve_timeout=2)
    assert len(warnings) == 1 and "chmod 600" in warnings[0]
    settings.mqtt.cert.unlink()
    assert config_warnings(settings, resolve_timeout=2) == []  # no files yet: nothing to say
