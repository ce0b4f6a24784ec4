"""What the WSN coordinator tests (XBee, LineSink, the shared driver) share, written once:
a clock that moves only when told, drivers on pyserial's loop:// port, and the checks
that run a simulator behind a real pseudo-terminal or the example through the CLI."""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import serial

from drivers.base import DriverContext, DriverOptions, load_driver
from drivers.sim.pty import PtyDevice
from drivers.sim.wsn_nodes import SimWsnCoordinator
from drivers.wsn import WsnDriver, WsnOptions
from gateway.cli import main
from gateway.config import load_settings
from gateway.readings import Measurement

Driver = TypeVar("Driver", bound=WsnDriver[Any])
Options = TypeVar("Options", bound=WsnOptions)


class FakeClock:
    """Monotonic seconds that move only when told."""

    def __init__(self, now: float = 100.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@contextlib.contextmanager
def loop_port() -> Iterator[serial.SerialBase]:
    """pyserial's loop:// port: what a test writes, the driver reads."""
    port = serial.serial_for_url("loop://", timeout=0.02)
    try:
        yield port
    finally:
        port.close()


def loop_drivers(
    cls: type[Driver],
    options: Callable[..., WsnOptions],
    *,
    sensor: str,
    baudrate: int,
    wall: float,
) -> Callable[..., Driver]:
    """Drivers of ``cls`` on a loop:// port, ``options(**overrides)`` theirs, their wall
    clock stopped at ``wall``, their monotonic clock a ``FakeClock`` unless given."""

    def make(
        port: serial.SerialBase, clock: Callable[[], float] | None = None, **overrides: object
    ) -> Driver:
        return cls(
            DriverContext(sensor, port="loop://", baudrate=baudrate),
            options(**overrides),
            opener=lambda url, baudrate: port,
            clock=clock or FakeClock(),
            wall=lambda: wall,
        )

    return make


def check_driver_class(
    cls: type[WsnDriver[Any]], name: str, baudrate: int, simulator: type[object]
) -> None:
    """``cls`` is registered as ``name``, on a serial port at ``baudrate`` by default,
    simulated by ``simulator``, and refuses options that are not its own."""
    assert load_driver(name) is cls
    assert cls.bus_kind == "serial"
    assert cls.default_baudrate == baudrate
    assert issubclass(cls.options_model, WsnOptions)
    assert isinstance(cls.simulator(0, seed=3), simulator)
    with pytest.raises(TypeError, match=cls.options_model.__name__):
        cls(DriverContext(name, port="loop://"), DriverOptions())


def sensor_options(model: type[Options], example: Path, **overrides: object) -> Options:
    """The options of the first sensor of ``example``, with ``overrides``."""
    data = load_settings(example).sensors[0].options.model_dump()
    data.update(overrides)
    return model.model_validate(data)


def read_until(
    driver: WsnDriver[Any], done: Callable[[list[Measurement]], bool], limit: float = 4.0
) -> list[Measurement]:
    """Read every 50 ms until ``done`` says so or ``limit`` seconds pass."""
    got: list[Measurement] = []
    deadline = time.monotonic() + limit
    while not done(got) and time.monotonic() < deadline:
        got += driver.read()
        time.sleep(0.05)
    return got


def nodes_of(measurements: list[Measurement]) -> set[str]:
    """The node names of ``{node}/{quantity}`` measurements."""
    return {m.quantity.split("/")[0] for m in measurements}


def check_silenced_node_goes_missing_and_comes_back(
    sim: SimWsnCoordinator[Any, Any],
    open_driver: Callable[[str, FakeClock], WsnDriver[Any]],
    node: str,
    name: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """``sim`` behind a pty: once silenced, ``node`` (named ``name`` in the config) is
    reported missing once 301 s later while the others go on; resumed, it is back once.

    ``open_driver(path, clock)`` opens the driver on the pty with the fake clock.
    """
    device = PtyDevice(sim, tick=0.01)
    clock = FakeClock()
    driver = open_driver(device.path, clock)
    others = len(driver.nodes.nodes) - 1
    try:
        with caplog.at_level(logging.INFO, logger="drivers"):
            read_until(driver, lambda g: name in nodes_of(g))
            sim.silence(node)
            time.sleep(0.15)
            driver.read()  # whatever the node sent before the silence
            clock.now += 301
            got = read_until(driver, lambda g: len(nodes_of(g)) == others, limit=2.0)
            assert name not in nodes_of(got) and driver.nodes.missing == {name}
            sim.resume(node)
            read_until(driver, lambda g: name in nodes_of(g))
    finally:
        driver.close()
        device.close()
    reports = [r.getMessage() for r in caplog.records if r.getMessage().startswith(f"node {name}")]
    assert len(reports) == 2 and "missing" in reports[0] and "is back" in reports[1]
    assert driver.nodes.missing == frozenset()


def check_cli_read(
    example: Path,
    capsys: pytest.CaptureFixture[str],
    *,
    sensor: str,
    nodes: set[str],
    quantities: set[str],
) -> None:
    """``wsn-gateway read`` on ``example`` prints readings (the first read waits for one),
    each a quantity of one of ``nodes``."""
    assert main(["read", "--config", str(example)]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert lines, "the first read waits for a first message"
    for reading in lines:
        assert reading["sensor"] == sensor
        node, quantity = reading["quantity"].split("/")
        assert node in nodes
        assert quantity in quantities
