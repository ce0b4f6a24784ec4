"""I2C bus scan (``wsn-gateway scan``): which addresses answer, and which chips they are.

Probing follows ``i2cdetect -y`` in its default mode (i2c-tools, tools/i2cdetect.c):
addresses 0x08..0x77, a zero-length "quick write" for most of them, and a
one-byte read for 0x30-0x37 and 0x50-0x5F instead, because a quick write can
corrupt some EEPROMs there (the AT24RF08; i2cdetect(8)). An address a kernel
driver has claimed cannot be probed (EBUSY from the I2C_SLAVE ioctl) and is
shown as ``UU``, as i2cdetect does. Every registered I2C driver that may live at a
responding address is then asked to recognise the chip by reading its id register.
"""

from __future__ import annotations

import contextlib
import errno
import logging
from collections.abc import Iterator, Mapping
from typing import Any, Literal, NamedTuple, Protocol, runtime_checkable

from drivers.base import Driver, SMBusLike, available_drivers, load_driver
from gateway.buses import Buses
from gateway.config import Settings
from gateway.sensors import open_sensor

log = logging.getLogger(__name__)

#: The range i2cdetect scans by default; below and above are reserved addresses
#: (general call, CBUS, HS-mode codes, 10-bit prefixes: I2C specification UM10204, 3.1.12).
FIRST_ADDRESS, LAST_ADDRESS = 0x08, 0x77
#: Where i2cdetect reads a byte instead of a quick write: EEPROM ranges.
READ_BYTE_RANGES = (range(0x30, 0x38), range(0x50, 0x60))


@runtime_checkable
class ScanBusLike(SMBusLike, Protocol):
    """An ``SMBusLike`` that can also do a quick write (``smbus2.SMBus`` and ``SimBus`` can)."""

    def write_quick(self, i2c_addr: int, force: bool | None = None) -> None: ...


class Found(NamedTuple):
    """An address that answered: the chips that recognised it (none when unknown), and
    whether a kernel driver holds it (then it could not be probed or identified)."""

    address: int
    names: list[str]
    in_use: bool = False


def _probe(bus: ScanBusLike, address: int) -> Literal["absent", "present", "in use"]:
    try:
        if any(address in span for span in READ_BYTE_RANGES):
            bus.read_byte(address)
        else:
            bus.write_quick(address)
    except OSError as err:
        # EREMOTEIO (121, no ACK) and ENXIO are the usual "nothing there"; i2cdetect
        # shows every other failure as "--" too.
        return "in use" if err.errno == errno.EBUSY else "absent"
    return "present"


def i2c_drivers() -> dict[str, type[Driver]]:
    """Every registered driver on I2C that can be loaded (a broken plugin is skipped)."""
    found: dict[str, type[Driver]] = {}
    for name in available_drivers():
        try:
            cls = load_driver(name)
        except (ImportError, AttributeError, TypeError) as err:
            log.debug("driver not loadable, not asked", extra={"driver": name, "error": str(err)})
            continue
        if cls.bus_kind == "i2c":
            found[name] = cls
    return found


def _identify(bus: ScanBusLike, address: int, drivers: Mapping[str, type[Driver]]) -> list[str]:
    names: list[str] = []
    for cls in drivers.values():
        if cls.bus_kind != "i2c" or address not in cls.addresses:
            continue
        try:
            name = cls.identify(bus, address)
        except Exception as err:  # any failure means "not this chip"; a scan must go on
            log.debug(
                "identify failed",
                extra={"driver": cls.__name__, "address": address, "error": str(err)},
            )
            continue
        if name is not None and name not in names:
            names.append(name)
    return names


def scan_bus(bus: ScanBusLike, *, drivers: Mapping[str, type[Driver]] | None = None) -> list[Found]:
    """Probe 0x08..0x77 like ``i2cdetect -y`` and name what answers; sorted by address.

    ``drivers`` (name to class) defaults to every registered I2C driver.
    """
    candidates = i2c_drivers() if drivers is None else drivers
    found: list[Found] = []
    for address in range(FIRST_ADDRESS, LAST_ADDRESS + 1):
        state = _probe(bus, address)
        if state == "in use":
            found.append(Found(address, [], in_use=True))
        elif state == "present":
            found.append(Found(address, _identify(bus, address, candidates)))
    return found


def format_scan(found: list[Found]) -> str:
    """An i2cdetect-style grid, then one line per address that answered."""
    cells = {f.address: "UU" if f.in_use else f"{f.address:02x}" for f in found}
    lines = ["     " + "  ".join(f"{column:x}" for column in range(16))]
    for row in range(0, 0x80, 0x10):
        line = f"{row:02x}:"
        for address in range(row, row + 0x10):
            if FIRST_ADDRESS <= address <= LAST_ADDRESS:
                line += " " + cells.get(address, "--")
            else:
                line += "   "
        lines.append(line.rstrip())
    lines.append("")
    if not found:
        lines.append(f"no device answered between 0x{FIRST_ADDRESS:02x} and 0x{LAST_ADDRESS:02x}")
    for f in sorted(found):
        if f.in_use:
            what = "in use by a kernel driver (UU)"
        elif f.names:
            what = ", ".join(f.names)
        else:
            what = "answers, but no installed driver recognises it"
        lines.append(f"0x{f.address:02x}  {what}")
    return "\n".join(lines)


@contextlib.contextmanager
def open_scan_bus(
    bus: int | Literal["sim"], settings: Settings | None = None
) -> Iterator[ScanBusLike]:
    """The bus to scan, closed on exit: ``smbus2.SMBus(bus)``, or for "sim" a simulated bus
    with the simulator of every I2C sensor that ``settings`` puts on bus sim.

    Opening goes through ``gateway.buses`` and ``gateway.sensors.open_sensor``, so a
    missing ``/dev/i2c-N`` gives the same ``BusError`` and the simulated chips sit at the
    same addresses, with the same seeds, as when the daemon runs.
    """
    buses = Buses()
    try:
        if bus == "sim" and settings is not None:
            for sensor in settings.sensors:
                if sensor.bus == "sim" and load_driver(sensor.driver).bus_kind == "i2c":
                    open_sensor(sensor, buses)
        device: Any = buses.get(bus).device
        if not isinstance(device, ScanBusLike):
            raise TypeError(f"bus {bus!r} cannot do quick writes: {type(device).__name__}")
        yield device
    finally:
        buses.close()
