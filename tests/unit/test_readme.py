"""The README's hardware table: every config snippet in it is a valid sensor entry."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from drivers.base import available_drivers
from gateway.config import load_settings

README = Path(__file__).resolve().parents[2] / "README.md"
ROW = re.compile(r"^\| [^|]+ \| `([a-z0-9_-]+)` \| [^|]+ \| `(\{.*\})` \|$", re.MULTILINE)
ROWS = ROW.findall(README.read_text())


def test_every_registered_driver_has_a_row() -> None:
    assert {driver for driver, _ in ROWS} == set(available_drivers())


@pytest.mark.parametrize(("driver", "snippet"), ROWS, ids=[d for d, _ in ROWS])
def test_snippet_validates(driver: str, snippet: str, tmp_path: Path) -> None:
    sensor = yaml.safe_load(snippet)
    assert sensor["driver"] == driver
    # As on a machine without the hardware: the simulated bus and serial port.
    if "bus" in sensor:
        sensor["bus"] = "sim"
    if "port" in sensor:
        sensor["port"] = "sim"
    config = tmp_path / "gw.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "thing": "gw",
                "mqtt": {"endpoint": "localhost", "ca": "ca", "cert": "c", "key": "k"},
                "sensors": [sensor],
            }
        )
    )
    settings = load_settings(config)
    assert settings.sensors[0].driver == driver
