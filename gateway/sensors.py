"""Turns a sensor's settings into a driver instance on its bus and worker thread."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator, Sequence

from drivers.base import Driver, DriverContext, load_driver, rejection
from drivers.sim.bus import SimBus
from drivers.sim.pty import PtyDevice
from gateway.buses import Buses
from gateway.config import SensorSettings, Settings
from gateway.errors import SensorRangeError
from gateway.readings import Measurement, Reading
from gateway.workers import Worker


def simulation_seed(name: str) -> int:
    """A stable seed per sensor name, so a simulated sensor behaves the same each run."""
    return sum(name.encode()) * 7919


def open_sensor(sensor: SensorSettings, buses: Buses) -> tuple[Driver, Worker]:
    """The driver for ``sensor`` and the worker its blocking calls run on.

    I2C sensors share their bus's worker; on the simulated bus the driver's own
    simulator is attached at the sensor's address first. Serial sensors with
    ``port: sim`` get their simulator behind a pseudo-terminal, and 1-Wire
    sensors with ``bus: sim`` a simulated sysfs tree.
    """
    cls = load_driver(sensor.driver)
    seed = simulation_seed(sensor.name)
    if cls.bus_kind == "serial":
        port = sensor.port
        if port == "sim":
            # The driver opens a real pseudo-terminal; its simulator answers on the other end.
            device = PtyDevice(cls.simulator(0, seed))
            buses.own(device)
            port = device.path
        context = DriverContext(sensor.name, port=port, baudrate=sensor.baudrate)
        return cls(context, sensor.options), buses.worker(f"serial-{sensor.name}")
    if cls.bus_kind == "w1":
        root = None
        if sensor.bus == "sim":
            tree = cls.simulator(0, seed)  # a simulated sysfs tree with a ``root`` folder
            buses.own(tree)
            root = tree.root
        context = DriverContext(sensor.name, root=root)
        return cls(context, sensor.options), buses.worker(f"w1-{sensor.name}")
    if cls.bus_kind != "i2c":
        worker = buses.worker(f"sensor-{sensor.name}")
        return cls(DriverContext(sensor.name), sensor.options), worker
    assert sensor.bus is not None, "config validation requires a bus for I2C sensors"
    bus = buses.get(sensor.bus)
    address = sensor.address if sensor.address is not None else cls.addresses[0]
    if isinstance(bus.device, SimBus):
        bus.device.attach(address, cls.simulator(address, seed))
    context = DriverContext(sensor.name, bus.device, address)
    return cls(context, sensor.options), bus.worker


def read_once(
    settings: Settings, names: Sequence[str] | None = None
) -> Iterator[tuple[str, list[Reading] | BaseException]]:
    """Set up and read each selected sensor once (``wsn-gateway read``).

    Values the daemon would reject (out of range, not finite) come back as a
    ``SensorRangeError`` for the sensor instead of being printed as readings.
    """
    buses = Buses()
    try:
        for sensor in settings.sensors:
            if names and sensor.name not in names:
                continue
            try:
                driver, worker = open_sensor(sensor, buses)
                patience = max(sensor.timeout, min(sensor.interval, 60.0))
                measurements = asyncio.run(
                    _setup_and_read(driver, worker, sensor.timeout, patience)
                )
            except (OSError, TimeoutError, ValueError) as err:
                yield sensor.name, err
                continue
            reasons = [
                f"{m.quantity}: {reason}"
                for m in measurements
                if (reason := rejection(type(driver), m)) is not None
            ]
            if reasons:
                yield sensor.name, SensorRangeError("; ".join(reasons))
                continue
            now = round(time.time(), 3)
            yield (
                sensor.name,
                [
                    Reading(
                        sensor.name, m.quantity, m.unit, m.value, now if m.time is None else m.time
                    )
                    for m in measurements
                ],
            )
    finally:
        buses.close()


async def _setup_and_read(
    driver: Driver, worker: Worker, timeout: float, patience: float
) -> list[Measurement]:
    """Set up, then read until the sensor has something to say: devices that measure
    on their own schedule (an SCD4x every 5 s, a serial stream, a WSN node) have
    nothing yet right after setup. Gives up after ``patience`` seconds."""
    async with asyncio.timeout(timeout):
        await worker.run(driver.setup)
    deadline = time.monotonic() + patience
    try:
        while True:
            async with asyncio.timeout(timeout):
                measurements = await worker.run(driver.read)
            if measurements or time.monotonic() >= deadline:
                return measurements
            await asyncio.sleep(0.2)
    finally:
        async with asyncio.timeout(timeout):
            await worker.run(driver.close)
