"""Opens I2C buses (real ``smbus2.SMBus`` or the simulator) and gives each its worker."""

from __future__ import annotations

import errno
import logging
from dataclasses import dataclass, field
from typing import Protocol

from drivers.base import SMBusLike
from drivers.sim.bus import SimBus
from gateway.errors import GatewayError
from gateway.workers import Worker

log = logging.getLogger(__name__)


class Closable(Protocol):
    """Anything with a ``close()``."""

    def close(self) -> None: ...


class BusError(GatewayError, OSError):
    """An I2C bus could not be opened."""

    def __str__(self) -> str:
        return self.strerror or super().__str__()


@dataclass
class Bus:
    """One open bus and the worker thread that owns it."""

    key: int | str
    device: SMBusLike
    worker: Worker
    simulated: bool = False


@dataclass
class Buses:
    """All buses the sensors use, opened on first request, closed together."""

    _open: dict[int | str, Bus] = field(default_factory=dict)
    _workers: list[Worker] = field(default_factory=list)
    _owned: list[Closable] = field(default_factory=list)

    def get(self, key: int | str) -> Bus:
        """The bus ``key`` (an I2C bus number, or "sim")."""
        bus = self._open.get(key)
        if bus is None:
            bus = self._open[key] = _open_bus(key)
        return bus

    def worker(self, name: str) -> Worker:
        """A worker of its own for a sensor on no shared bus, stopped with the buses."""
        worker = Worker(name)
        self._workers.append(worker)
        return worker

    def own(self, thing: Closable) -> None:
        """Close ``thing`` (a simulated device, say) together with the buses."""
        self._owned.append(thing)

    def close(self) -> None:
        """Close every bus, stop every worker and close what was handed over."""
        for thing in self._owned:
            thing.close()
        self._owned.clear()
        for worker in self._workers:
            worker.shutdown()
        self._workers.clear()
        for bus in self._open.values():
            bus.worker.shutdown()
            try:
                bus.device.close()
            except OSError as err:
                log.warning("closing bus failed", extra={"bus": bus.key, "error": str(err)})
        self._open.clear()


def _open_bus(key: int | str) -> Bus:
    if key == "sim":
        return Bus(key, SimBus(), Worker("i2c-sim"), simulated=True)
    try:
        from smbus2 import SMBus  # noqa: PLC0415 - only real buses need the import

        device = SMBus(int(key))
    except FileNotFoundError as err:
        raise BusError(
            errno.ENOENT,
            f"/dev/i2c-{key} does not exist: enable I2C (raspi-config nonint do_i2c 0, "
            "or dtparam=i2c_arm=on in /boot/firmware/config.txt) and reboot, "
            "or use bus: sim",
        ) from err
    except PermissionError as err:
        raise BusError(
            errno.EACCES,
            f"/dev/i2c-{key}: permission denied: add the service user to the i2c group",
        ) from err
    return Bus(key, device, Worker(f"i2c-{key}"))
