"""GPIO: simulated pins, the status LED's patterns, power cycling a failing sensor."""

from __future__ import annotations

import asyncio
import errno
import os
from pathlib import Path

import pytest

from drivers.base import Driver, DriverContext, DriverOptions
from gateway.buses import Buses
from gateway.config import load_settings
from gateway.daemon import Daemon
from gateway.gpio import (
    GpioError,
    LedState,
    SimPins,
    drive_status_led,
    open_pins,
    power_cycle,
)
from gateway.polling import FAILED_AFTER, Poller
from gateway.readings import Measurement
from gateway.workers import Worker


def test_sim_pins_record_level_changes_only() -> None:
    pins = SimPins()
    pins.setup_output(5, False)
    pins.write(5, False)
    pins.write(5, True)
    assert pins.levels == {5: True}
    assert [(pin, value) for _, pin, value in pins.history] == [(5, False), (5, True)]


def test_auto_backend_falls_back_to_simulated_pins_without_rpi_gpio() -> None:
    try:
        import RPi.GPIO  # noqa: F401, PLC0415 - present only on a Pi
    except (ImportError, RuntimeError):
        assert isinstance(open_pins("auto"), SimPins)
        with pytest.raises(GpioError, match="pip install"):
            open_pins("rpi")
    else:  # pragma: no cover - only on a Pi
        pytest.skip("RPi.GPIO is importable here")


async def _transitions(state: LedState, seconds: float, *, active_low: bool = False) -> list[bool]:
    pins = SimPins()
    task = asyncio.create_task(
        drive_status_led(pins, 17, active_low=active_low, state=lambda: state)
    )
    await asyncio.sleep(seconds)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    return [value for _, _, value in pins.history]


async def test_led_patterns_differ_per_state() -> None:
    online = await _transitions(LedState.ONLINE, 0.6)
    offline = await _transitions(LedState.OFFLINE, 1.2)
    error = await _transitions(LedState.ERROR, 1.0)
    assert online == [False, True, False]  # off at setup, on, off at the end
    assert 4 <= len(offline) <= 7  # about one change every 0.5 s
    assert len(error) >= 8  # about one change every 0.1 s
    assert error[-1] is False  # left dark when the daemon stops


async def test_led_active_low_inverts_levels() -> None:
    levels = await _transitions(LedState.ONLINE, 0.3, active_low=True)
    assert levels == [True, False, True]


class _Dead(Driver):
    """A chip that never answers (SDA held low): every read fails with EREMOTEIO."""

    setups = 0

    def setup(self) -> None:
        type(self).setups += 1

    def read(self) -> list[Measurement]:
        raise OSError(errno.EREMOTEIO, os.strerror(errno.EREMOTEIO))


async def test_failing_sensor_is_power_cycled_after_repeated_failures() -> None:
    pins = SimPins()
    pins.setup_output(22, True)
    poller = Poller(
        name="dead",
        driver=_Dead(DriverContext("dead"), DriverOptions()),
        worker=Worker("test-dead"),
        interval=0.01,
        timeout=1.0,
        retries=0,
        sink=lambda readings: None,
        synced=lambda: True,
        power_cycle=lambda: power_cycle(pins, 22, 0.01),
    )
    for _ in range(FAILED_AFTER - 1):
        await poller.poll_once()
    assert poller.status.power_cycles == 0
    await poller.poll_once()
    assert poller.status.power_cycles == 1
    assert [value for _, _, value in pins.history] == [True, False, True]
    setups = _Dead.setups
    await poller.poll_once()
    assert _Dead.setups == setups + 1  # set up afresh after the power came back


def test_a_sensor_that_cannot_be_opened_does_not_stop_the_others(tmp_path: Path) -> None:
    config = tmp_path / "gw.yaml"
    config.write_text(
        "thing: gw\n"
        f"state_dir: {tmp_path}\n"
        "mqtt: {endpoint: localhost, ca: ca.pem, cert: c.pem, key: k.pem}\n"
        "sensors:\n"
        "  - {name: missing, driver: bme280, bus: 97, address: 0x76}\n"
        "  - {name: beat, driver: counter, interval: 1}\n"
    )
    daemon = Daemon(load_settings(config))
    buses = Buses()
    try:
        pollers = daemon._make_pollers(buses, None)
    finally:
        buses.close()
    assert [p.name for p in pollers] == ["beat"]
    assert "/dev/i2c-97" in daemon.unavailable["missing"]
    assert daemon.led_state() is LedState.ERROR
