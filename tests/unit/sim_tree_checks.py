"""Checks every simulated sysfs tree (``drivers.sim.sysfs``) must pass, written once for
the thermal and DS18B20 tests, which call them with their own tree, files and parser."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from drivers.ds18b20 import DS18B20
from drivers.sim.sysfs import SimSysfsTree
from drivers.thermal import Thermal
from gateway.buses import Buses
from gateway.cli import main
from gateway.config import load_settings
from gateway.sensors import open_sensor

Tree = TypeVar("Tree", bound=SimSysfsTree[Any, Any, Any])


def check_rewrites_while_running(
    sim: SimSysfsTree[Any, Any, Any], file: str, parse: Callable[[str], object]
) -> None:
    """``sim`` (rewriting every few ms) changes ``root/file``, never shows half of it,
    and ``close()`` removes the tree, safely twice."""
    try:
        path = sim.root / file
        first = path.read_text()
        deadline = time.monotonic() + 5
        while path.read_text() == first and time.monotonic() < deadline:
            time.sleep(0.01)
        assert path.read_text() != first
        parse(path.read_text())  # never half a file
    finally:
        sim.close()
    assert not sim.root.exists()
    sim.close()  # twice is fine


def check_seeded_and_closes(
    simulator: Callable[[int, int], Tree], temperature: Callable[[Tree], float]
) -> None:
    """The same seed gives the same temperatures, in trees of their own that close."""
    one, two = simulator(0, 42), simulator(0, 42)
    try:
        assert temperature(one) == temperature(two)
        assert one.root != two.root
    finally:
        one.close()
        two.close()
    assert not one.root.exists() and not two.root.exists()


def check_open_sensor_closes_tree(
    example: Path, driver_type: type[Thermal | DS18B20], file: str
) -> None:
    """``bus: sim`` in ``example`` gives its first sensor a tree holding ``file``,
    removed when the buses close."""
    settings = load_settings(example)
    buses = Buses()
    driver, _ = open_sensor(settings.sensors[0], buses)
    assert isinstance(driver, driver_type)
    root = driver.root
    assert (root / file).is_file()
    buses.close()
    assert not root.exists()


def read_example(example: Path, capsys: pytest.CaptureFixture[str]) -> list[dict[str, Any]]:
    """The readings ``wsn-gateway read`` prints for ``example``, one dict a line."""
    assert main(["read", "--config", str(example)]) == 0
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]
