"""What the I2C chip tests (SCD4x, SHT3x, ADS1115, INA219, BH1750) share, written once:
a clock whose sleep advances it, a simulated bus with one chip, a recorder of register
traffic, the poller around a driver, and the checks each chip's tests call with their own
driver, options and expected values."""

from __future__ import annotations

import errno
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from drivers.base import DriverContext, DriverOptions, load_driver
from drivers.sim.bme280 import SimBME280
from drivers.sim.bus import SimBus
from gateway.config import load_settings
from gateway.errors import SensorError
from gateway.polling import Poller
from gateway.readings import Measurement, Reading
from gateway.workers import Worker

BUS_ERRORS = [errno.EREMOTEIO, errno.EIO, errno.ETIMEDOUT]  # 121, 5, 110


class FakeTime:
    """A clock and a sleep that advances it, shared by the driver and the simulator."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


class WordRecorder:
    """A SimBus behind the two block methods the driver uses; logs each register access,
    the word as the chip's ``parse_word`` reads it."""

    def __init__(self, bus: SimBus, parse_word: Callable[[Sequence[int]], int]) -> None:
        self.bus = bus
        self.parse_word = parse_word
        self.calls: list[tuple[str, int, int]] = []

    def read_i2c_block_data(
        self, i2c_addr: int, register: int, length: int, force: bool | None = None
    ) -> list[int]:
        data = self.bus.read_i2c_block_data(i2c_addr, register, length)
        self.calls.append(("read", register, self.parse_word(data)))
        return data

    def write_i2c_block_data(
        self, i2c_addr: int, register: int, data: list[int], force: bool | None = None
    ) -> None:
        self.calls.append(("write", register, self.parse_word(data)))
        self.bus.write_i2c_block_data(i2c_addr, register, data)


def sim_bus(address: int, chip: Any) -> SimBus:
    """A simulated bus with ``chip`` at ``address``."""
    bus = SimBus()
    bus.attach(address, chip)
    return bus


def values(measurements: list[Measurement]) -> dict[str, float]:
    """Each measurement's float value by its quantity."""
    out: dict[str, float] = {}
    for m in measurements:
        assert isinstance(m.value, float)
        out[m.quantity] = m.value
    return out


def nacks(call: Callable[[], object]) -> bool:
    """Whether ``call`` fails with the NACK errno (EREMOTEIO)."""
    try:
        call()
    except OSError as err:
        return err.errno == errno.EREMOTEIO
    return False


def check_bus_error_propagates(bus: SimBus, driver: Any, code: int) -> OSError:
    """A fault ``code`` on the bus of a set-up ``driver`` fails its read with that errno;
    the error, for the caller's further checks."""
    driver.setup()
    bus.inject_faults(code)
    with pytest.raises(OSError) as caught:
        driver.read()
    assert caught.value.errno == code
    return caught.value


def check_missing_bus_is_a_clear_error(cls: Any, options: DriverOptions, sensor: str) -> None:
    """Without a bus, reading ``cls`` with ``options`` is a clear error."""
    with pytest.raises(SensorError, match="needs an I2C bus"):
        cls(DriverContext(sensor), options).read()


def check_wrong_options_type_is_refused(cls: Any, options_name: str, sensor: str) -> None:
    """``cls`` refuses options that are not its own, naming the ones it takes."""
    with pytest.raises(TypeError, match=options_name):
        cls(DriverContext(sensor), DriverOptions())


def check_registered(
    name: str, cls: Any, addresses: tuple[int, ...], options_model: Any = None
) -> None:
    """``name`` loads ``cls``, which answers at ``addresses``; given ``options_model``,
    also an I2C driver with those options."""
    assert load_driver(name) is cls
    if options_model is not None:
        assert cls.bus_kind == "i2c"
    assert cls.addresses == addresses
    if options_model is not None:
        assert cls.options_model is options_model


def check_identify_none_for_a_bme280(cls: Any, address: int) -> None:
    """A BME280 at ``address`` is not taken for a ``cls``."""
    bus = SimBus()
    bus.attach(address, SimBME280())
    assert cls.identify(bus, address) is None


def check_example_documents_every_option(
    example: Path, drivers: list[str], options_model: Any
) -> Any:
    """``example`` loads with sensors of ``drivers`` and comments every option; its
    settings, for the caller's further checks."""
    settings = load_settings(example)
    assert [s.driver for s in settings.sensors] == drivers
    text = example.read_text()
    for field in options_model.model_fields:
        assert f"# {field}: " in text, field
    return settings


def sensor_quantity_units(lines: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    """(sensor, quantity, unit) of each reading ``wsn-gateway read`` printed."""
    return [(r["sensor"], r["quantity"], r["unit"]) for r in lines]


# --- the poller ------------------------------------------------------------------------------


class Sink:
    def __init__(self) -> None:
        self.readings: list[Reading] = []

    def __call__(self, readings: list[Reading]) -> None:
        self.readings.extend(readings)


def worker_named(name: str) -> Iterator[Worker]:
    """A worker for a fixture to yield, shut down after the test."""
    made = Worker(name)
    yield made
    made.shutdown()


def poller_for(name: str, driver: Any, worker: Worker, retries: int) -> tuple[Poller, Sink]:
    """A poller of ``driver`` as sensor ``name`` that publishes into the returned sink."""
    sink = Sink()
    poller = Poller(
        name=name,
        driver=driver,
        worker=worker,
        interval=0.05,
        timeout=1.0,
        retries=retries,
        sink=sink,
        synced=lambda: True,
    )
    return poller, sink
