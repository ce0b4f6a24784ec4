"""The driver interface and the registry that finds drivers through entry points.

A driver does blocking I/O through a narrow seam (an object with the
``smbus2.SMBus`` method set for I2C); the polling layer runs it on the bus's
own worker thread, so drivers stay plain synchronous code and the conversion
math stays pure functions of bytes.
"""

from __future__ import annotations

import functools
import importlib
import typing
from abc import ABC, abstractmethod
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, ClassVar, Protocol

from pydantic import BaseModel, ConfigDict, ValidationInfo, field_validator

from gateway.readings import Measurement, is_publishable

ENTRY_POINT_GROUP = "wsn_gateway.drivers"

# Used only when the package metadata is absent (running from a bare source tree).
BUILTIN_DRIVERS = {
    "ads1115": "drivers.ads1115:ADS1115",
    "bh1750": "drivers.bh1750:BH1750",
    "bme280": "drivers.bme280:BME280",
    "counter": "drivers.counter:Counter",
    "ds18b20": "drivers.ds18b20:DS18B20",
    "ina219": "drivers.ina219:INA219",
    "linesink": "drivers.linesink:LineSink",
    "modbus": "drivers.modbus:ModbusRTU",
    "pms5003": "drivers.pms5003:PMS5003",
    "scd4x": "drivers.scd4x:SCD4x",
    "sht3x": "drivers.sht3x:SHT3x",
    "thermal": "drivers.thermal:Thermal",
    "xbee": "drivers.xbee:XBee",
}


class SMBusLike(Protocol):
    """The part of ``smbus2.SMBus`` that drivers may use; simulators implement the same."""

    def read_byte_data(self, i2c_addr: int, register: int, force: bool | None = None) -> int: ...

    def write_byte_data(
        self, i2c_addr: int, register: int, value: int, force: bool | None = None
    ) -> None: ...

    def read_i2c_block_data(
        self, i2c_addr: int, register: int, length: int, force: bool | None = None
    ) -> list[int]: ...

    def write_i2c_block_data(
        self, i2c_addr: int, register: int, data: list[int], force: bool | None = None
    ) -> None: ...

    def read_byte(self, i2c_addr: int, force: bool | None = None) -> int: ...

    def write_byte(self, i2c_addr: int, value: int, force: bool | None = None) -> None: ...

    def i2c_rdwr(self, *i2c_msgs: Any) -> None: ...

    def close(self) -> None: ...


class DriverOptions(BaseModel):
    """Base of each driver's own settings (the ``options:`` mapping of a sensor).

    Stricter than pydantic's defaults in the two ways YAML invites mistakes: ``.nan``
    and ``.inf`` are refused, and so is ``yes``/``true`` where a number belongs
    (pydantic would read it as 1).
    """

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_booleans_for_numbers(cls, value: object, info: ValidationInfo) -> object:
        if isinstance(value, bool) and info.field_name is not None:
            annotation = cls.model_fields[info.field_name].annotation
            if bool not in _leaf_types(annotation):
                raise ValueError("must be a number")
        return value


def _leaf_types(annotation: object) -> set[object]:
    """The types an annotation admits, through unions, Optional, Annotated and Literal."""
    args = typing.get_args(annotation)
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        return {type(a) for a in args}
    if not args or origin in (list, tuple, dict, set, frozenset):
        return {annotation}
    leaves: set[object] = set()
    for arg in args:
        leaves |= _leaf_types(arg)
    return leaves


@dataclass(frozen=True)
class DriverContext:
    """Where a driver instance lives.

    I2C chips get ``bus`` and ``address``; serial devices get ``port`` (any
    pyserial URL, or the path of the simulator's pseudo-terminal) and
    ``baudrate``; sysfs devices (1-Wire) get ``root``, the directory their
    device folders live in (a simulated tree when simulated).
    """

    sensor: str
    bus: SMBusLike | None = None
    address: int | None = None
    port: str | None = None
    baudrate: int | None = None
    root: Path | None = None


class Driver(ABC):
    """A polled sensor.

    ``setup`` checks the chip's identity and configures it; it is called before
    the first read and again after failed reads, so it must be idempotent.
    ``read`` returns one cycle's measurements or raises ``OSError`` (bus errors,
    including ``gateway.errors.SensorError`` for bad CRCs or ids).
    """

    #: The settings model for this driver's ``options:`` mapping.
    options_model: ClassVar[type[DriverOptions]] = DriverOptions
    #: "i2c" drivers get a bus and an address, "serial" drivers a port and baud
    #: rate, "w1" drivers a sysfs root; "none" drivers need none of them.
    bus_kind: ClassVar[str] = "none"
    #: Serial drivers: the device's default baud rate.
    default_baudrate: ClassVar[int] = 9600
    #: Addresses the chip can answer on; the first is the default.
    addresses: ClassVar[tuple[int, ...]] = ()
    #: Physical range per quantity from the datasheet; values outside are rejected.
    ranges: ClassVar[dict[str, tuple[float, float]]] = {}

    def __init__(self, context: DriverContext, options: DriverOptions) -> None:
        self.context = context
        self.options = options

    def setup(self) -> None:  # noqa: B027 - optional hook, empty by default
        """Check the chip and configure it; idempotent."""

    @abstractmethod
    def read(self) -> list[Measurement]:
        """Take one measurement cycle (blocking)."""

    def close(self) -> None:  # noqa: B027 - optional hook, empty by default
        """Release what ``setup`` acquired."""

    @classmethod
    def identify(cls, bus: SMBusLike, address: int) -> str | None:
        """For ``wsn-gateway scan``: the chip's name if the device at ``address``
        answers like this chip (read its id register), else None. Must only read,
        or issue commands that leave the chip as it was."""
        return None

    @classmethod
    def simulator(cls, address: int, seed: int) -> Any:
        """A simulated chip to attach to ``drivers.sim.bus.SimBus`` at ``address``."""
        raise NotImplementedError(f"{cls.__name__} has no simulator")


def out_of_range(driver: type[Driver], measurement: Measurement) -> bool:
    """True when a numeric value lies outside the chip's datasheet range.

    Quantities of remote nodes (``node/temperature``) are checked by their last part.
    """
    bounds = driver.ranges.get(measurement.quantity)
    if bounds is None:
        bounds = driver.ranges.get(measurement.quantity.rsplit("/", 1)[-1])
    value = measurement.value
    if bounds is None or isinstance(value, str | bool):
        return False
    low, high = bounds
    return not low <= value <= high


def rejection(driver: type[Driver], measurement: Measurement) -> str | None:
    """Why a measurement must not be published, or None when it may be."""
    if not is_publishable(measurement.value):
        return f"{measurement.value!r} cannot be published (not a finite JSON number)"
    if out_of_range(driver, measurement):
        low, high = (
            driver.ranges.get(measurement.quantity)
            or driver.ranges[measurement.quantity.rsplit("/", 1)[-1]]
        )
        return f"{measurement.value!r} is outside the datasheet range {low:g}..{high:g}"
    return None


@functools.cache
def _registered() -> tuple[tuple[str, str], ...]:
    # Cached: scanning the installed packages' metadata costs milliseconds, and
    # validation asks several times per sensor.
    found = dict(BUILTIN_DRIVERS)
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        found[ep.name] = ep.value
    return tuple(found.items())


def available_drivers() -> dict[str, str]:
    """Driver name to ``module:Class`` for every registered driver."""
    return dict(_registered())


def load_driver(name: str) -> type[Driver]:
    """The driver class registered under ``name``; KeyError lists the known ones."""
    target = available_drivers().get(name)
    if target is None:
        raise KeyError(name)
    module_name, _, attr = target.partition(":")
    cls = getattr(importlib.import_module(module_name), attr)
    if not (isinstance(cls, type) and issubclass(cls, Driver)):
        raise TypeError(f"entry point {name!r} ({target}) is not a Driver subclass")
    return cls
