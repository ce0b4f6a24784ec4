"""Bus faults end to end in the poller: retried, counted, degraded, power-cycled,
while a sensor on another bus keeps its schedule."""

from __future__ import annotations

import asyncio
import errno
import itertools

import pytest

from drivers.base import DriverContext
from drivers.bme280 import BME280, BME280Options
from drivers.counter import Counter, CounterOptions
from drivers.sim.bus import SimBus
from gateway.gpio import SimPins, power_cycle
from gateway.polling import Health, Poller
from gateway.readings import Reading
from gateway.workers import Worker


@pytest.mark.parametrize("code", [errno.EREMOTEIO, errno.EIO, errno.ETIMEDOUT])
async def test_transient_bus_error_is_retried_and_counted(code: int) -> None:
    bus = SimBus()
    bus.attach(0x76, BME280.simulator(0x76, seed=1))
    driver = BME280(DriverContext("bme", bus, 0x76), BME280Options())
    got: list[Reading] = []
    poller = Poller(
        name="bme",
        driver=driver,
        worker=Worker("t"),
        interval=1.0,
        timeout=1.0,
        retries=2,
        sink=got.extend,
        synced=lambda: True,
    )
    await poller.poll_once()
    assert poller.status.health is Health.OK
    bus.inject_faults(code)
    await poller.poll_once()
    assert poller.status.errors == 1
    assert poller.status.health is Health.DEGRADED  # it took a retry
    assert {r.quantity for r in got[-3:]} == {"temperature", "pressure", "humidity"}


async def test_dead_bus_power_cycles_while_other_sensor_keeps_its_slots() -> None:
    bus = SimBus()
    bus.attach(0x76, BME280.simulator(0x76, seed=2))
    pins = SimPins()
    pins.setup_output(22, True)
    bad = Poller(
        name="bme",
        driver=BME280(DriverContext("bme", bus, 0x76), BME280Options()),
        worker=Worker("i2c-sim"),
        interval=0.05,
        timeout=0.5,
        retries=1,
        sink=lambda r: None,
        synced=lambda: True,
        power_cycle=lambda: power_cycle(pins, 22, 0.05),
    )
    times: list[float] = []
    loop = asyncio.get_running_loop()

    def stamp(readings: list[Reading]) -> None:
        times.append(loop.time())

    good = Poller(
        name="beat",
        driver=Counter(DriverContext("beat"), CounterOptions()),
        worker=Worker("beat"),
        interval=0.05,
        timeout=0.5,
        retries=0,
        sink=stamp,
        synced=lambda: True,
    )
    bus.inject_faults(*([errno.EREMOTEIO] * 10_000))
    tasks = [asyncio.create_task(bad.run()), asyncio.create_task(good.run())]
    await asyncio.sleep(1.2)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    assert bad.status.health is Health.FAILED
    assert bad.status.power_cycles >= 1
    assert [v for _, _, v in pins.history][:3] == [True, False, True]
    # The healthy sensor kept its 50 ms slots throughout (no gap of two periods).
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert len(times) >= 18 and max(gaps) < 0.1
