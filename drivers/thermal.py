"""The board's own temperature sensor, read through the Linux thermal sysfs class.

Every Raspberry Pi, and nearly every Linux board, has a temperature sensor in its SoC
that the kernel's thermal framework exposes as a "thermal zone"
(Documentation/driver-api/thermal/sysfs-api.rst)::

    /sys/class/thermal/thermal_zone0/type   cpu-thermal
    /sys/class/thermal/thermal_zone0/temp   48312            (millidegrees Celsius)

``temp`` is printed by ``temp_show`` in ``drivers/thermal/thermal_sysfs.c`` as ``"%d\\n"``;
a zone whose driver cannot produce a value fails the read with that driver's error
instead (``-EAGAIN`` or ``-ENODATA`` from some drivers while they start, ``-EIO`` on a
bus error). It needs nothing wired, so a new gateway has one working sensor from the
start, and in a field cabinet the SoC temperature is worth watching for itself.

Everything above ``class Thermal`` is pure or reads only the zone folders it is given,
so the parsing is tested without a sysfs tree.
"""

from __future__ import annotations

import errno
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, ClassVar

from pydantic import AfterValidator, Field, StringConstraints, field_validator, model_validator

from drivers.base import Driver, DriverContext, DriverOptions
from gateway.errors import SensorError
from gateway.readings import Measurement

if TYPE_CHECKING:
    from drivers.sim.thermal import SimThermalTree

# --- constants ---------------------------------------------------------------------------

#: Where the kernel lists thermal zones (and cooling devices, which are not zones).
SYSFS_THERMAL = Path("/sys/class/thermal")
ZONE_PREFIX = "thermal_zone"
_ZONE_NAME = re.compile(ZONE_PREFIX + r"([0-9]+)")

#: A SoC that reads outside this range is not measuring: no board runs below -40 °C or
#: above 150 °C (the Pi's SoC throttles at 80-85 °C and is specified to 85 °C).
MIN_CELSIUS, MAX_CELSIUS = -40.0, 150.0
#: What some thermal drivers report for "no valid temperature" (include/linux/thermal.h).
THERMAL_TEMP_INVALID = -274000
#: Errors that mean "not yet": the zone's driver is still starting up.
NOT_READY_ERRNOS = frozenset({errno.EAGAIN, errno.ENODATA})

# --- pure functions ----------------------------------------------------------------------


def parse_temp(text: str, where: str = "temp") -> float:
    """°C from the text of a zone's ``temp`` file (millidegrees Celsius, ``48312\\n``).

    ``SensorError`` says what is wrong and what to check: an empty file, text that is
    not a whole number, or a value outside -40..150 °C (a sensor fault).
    """
    value = text.strip()
    if not value:
        raise SensorError(
            f"{where} is empty: the zone's driver returned no value — check dmesg for"
            " thermal errors"
        )
    if not re.fullmatch(r"-?[0-9]{1,9}", value):
        raise SensorError(
            f"unreadable {where} content {_excerpt(text)} (expected whole millidegrees"
            " Celsius such as 48312): check that root points at a thermal sysfs tree"
        )
    millidegrees = int(value)
    if millidegrees == THERMAL_TEMP_INVALID:
        raise SensorError(
            f"{where} is {THERMAL_TEMP_INVALID} (THERMAL_TEMP_INVALID): the zone's driver"
            " has no valid temperature — check dmesg, or choose another zone"
        )
    celsius = millidegrees / 1000
    if not MIN_CELSIUS <= celsius <= MAX_CELSIUS:
        raise SensorError(
            f"{where} reads {celsius:g} °C, outside {MIN_CELSIUS:g}..{MAX_CELSIUS:g} °C: a"
            " sensor fault or a zone that is not a temperature sensor — check the zone's"
            " type file and choose the SoC's zone"
        )
    return celsius


def zone_path(root: Path, zone: int) -> Path:
    """The folder of thermal zone ``zone`` under ``root``."""
    return root / f"{ZONE_PREFIX}{zone}"


def list_zones(root: Path) -> dict[int, str | None]:
    """Zone number to its type (None when the type file cannot be read), by number.

    Only ``thermal_zone<N>`` folders count; ``cooling_device<N>`` beside them does not.
    """
    zones: dict[int, str | None] = {}
    try:
        entries = list(root.iterdir())
    except OSError:
        return zones
    for entry in entries:
        match = _ZONE_NAME.fullmatch(entry.name)
        if match is None or not entry.is_dir():
            continue
        try:
            kind: str | None = _read(entry / "type").strip() or None
        except OSError:
            kind = None
        zones[int(match.group(1))] = kind
    return dict(sorted(zones.items()))


def describe_zones(zones: dict[int, str | None]) -> str:
    """``thermal_zone0 (cpu-thermal), thermal_zone1 (type unreadable)``."""
    return ", ".join(
        f"{ZONE_PREFIX}{number} ({kind if kind is not None else 'type unreadable'})"
        for number, kind in zones.items()
    )


def _no_such_zone(root: Path, wanted: str, zones: dict[int, str | None]) -> SensorError:
    if not zones:
        return SensorError(
            errno.ENODEV,
            f"no thermal zones under {root}: this kernel exposes no temperature sensor"
            " there (a container, a VM, or a board without a thermal driver) — set"
            " options.root if the board puts them elsewhere, or use bus: sim",
        )
    return SensorError(
        errno.ENODEV,
        f"no {wanted} under {root}; the zones there are {describe_zones(zones)}"
        " — set options.zone or options.type to one of them",
    )


def find_zone(root: Path, zone: int | None = None, kind: str | None = None) -> int:
    """The number of the zone chosen by number (default 0) or by type.

    ``SensorError`` (ENODEV) when it is not there, listing the zones that are; a type
    that several zones share is refused, since it does not say which one is meant.
    """
    zones = list_zones(root)
    if kind is None:
        number = 0 if zone is None else zone
        if not zone_path(root, number).is_dir():
            raise _no_such_zone(root, f"{ZONE_PREFIX}{number}", zones)
        return number
    matches = [number for number, found in zones.items() if found == kind]
    if not matches:
        raise _no_such_zone(root, f"thermal zone of type {kind!r}", zones)
    if len(matches) > 1:
        names = " and ".join(f"{ZONE_PREFIX}{n}" for n in matches)
        raise SensorError(
            errno.EINVAL,
            f"type {kind!r} matches {names} under {root}: choose one with options.zone",
        )
    return matches[0]


def _excerpt(text: str, limit: int = 40) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "…")


def _read(path: Path) -> str:
    # sysfs attributes produce the whole text in one read(); ASCII by construction,
    # so anything else is garbage that the parser rejects with the excerpt.
    return path.read_text(encoding="ascii", errors="replace")


# --- options -----------------------------------------------------------------------------


def _absolute(value: Path) -> Path:
    if not value.is_absolute():
        raise ValueError("must be an absolute path such as /sys/class/thermal")
    return value


ZoneType = Annotated[
    str,
    StringConstraints(
        strip_whitespace=True, min_length=1, max_length=64, pattern=r"^[^\x00-\x1f/]+$"
    ),
]


class ThermalOptions(DriverOptions):
    """Which thermal zone to read.

    - nothing: ``thermal_zone0``, the SoC on a Raspberry Pi (type ``cpu-thermal``).
    - ``zone: 2``: ``thermal_zone2``.
    - ``type: cpu-thermal``: the zone whose ``type`` file says so, whatever its number.
    """

    zone: int | None = Field(
        default=None, ge=0, description="the N of thermal_zone<N>; default 0 (unless type)"
    )
    type: ZoneType | None = Field(
        default=None, description="choose the zone by its type, e.g. cpu-thermal, instead"
    )
    root: Annotated[Path, AfterValidator(_absolute)] = Field(
        default=SYSFS_THERMAL, description="the folder that holds the thermal_zone<N> folders"
    )

    @field_validator("type", mode="before")
    @classmethod
    def _type_is_text(cls, value: object) -> object:
        # Before the base class's check, whose "must be a number" would mislead here.
        if value is not None and not isinstance(value, str):
            raise ValueError("must be the text of a zone's type file, such as cpu-thermal")
        return value

    @model_validator(mode="after")
    def _one_way_to_choose(self) -> ThermalOptions:
        if self.zone is not None and self.type is not None:
            raise ValueError("give either zone or type, not both")
        return self


# --- the driver --------------------------------------------------------------------------


class Thermal(Driver):
    """One thermal zone of the board: ``temperature`` in Cel.

    The zone is looked up in ``setup`` (again after a failed read, so a zone that was
    missing at boot is found once its driver has loaded). A read is one small sysfs
    read, answered by the zone's driver.

    The sysfs root is ``context.root`` when the sensor is simulated (``bus: sim``), else
    ``options.root``.
    """

    options_model: ClassVar[type[DriverOptions]] = ThermalOptions
    # "w1" is the daemon's kind for sysfs drivers: no bus or port, a sysfs root instead,
    # and bus: sim gives the driver a simulated tree (``simulator``).
    bus_kind: ClassVar[str] = "w1"
    ranges: ClassVar[dict[str, tuple[float, float]]] = {"temperature": (MIN_CELSIUS, MAX_CELSIUS)}

    def __init__(self, context: DriverContext, options: DriverOptions) -> None:
        super().__init__(context, options)
        if not isinstance(options, ThermalOptions):
            raise TypeError(f"Thermal needs ThermalOptions, got {type(options).__name__}")
        self._opts = options
        self._root = context.root if context.root is not None else options.root
        self._zone: int | None = None

    @property
    def root(self) -> Path:
        """The directory the ``thermal_zone<N>`` folders live in."""
        return self._root

    @property
    def zone(self) -> int | None:
        """The number of the zone read, once ``setup`` has found it."""
        return self._zone

    def setup(self) -> None:
        """Find the zone; ``SensorError`` lists the zones there are when it is missing."""
        self._zone = None
        if not self._root.is_dir():
            raise SensorError(
                errno.ENOENT,
                f"{self._root} does not exist: the kernel has no thermal sysfs class"
                " (CONFIG_THERMAL) or options.root is wrong — or use bus: sim",
            )
        self._zone = find_zone(self._root, self._opts.zone, self._opts.type)

    def read(self) -> list[Measurement]:
        """The zone's temperature now."""
        if self._zone is None:
            self.setup()
        assert self._zone is not None
        name = f"{ZONE_PREFIX}{self._zone}"
        path = zone_path(self._root, self._zone) / "temp"
        try:
            text = _read(path)
        except FileNotFoundError as err:
            zones = list_zones(self._root)
            self._zone = None
            wanted = name if self._opts.type is None else f"{name} (type {self._opts.type!r})"
            raise _no_such_zone(self._root, wanted, zones) from err
        except OSError as err:
            code = err.errno if err.errno is not None else errno.EIO
            reason = os.strerror(code)
            if code in NOT_READY_ERRNOS:
                raise SensorError(
                    code,
                    f"{name} has no temperature yet ({reason}): its driver is still"
                    " starting; the read is retried",
                ) from err
            raise SensorError(
                code,
                f"reading {path} failed ({reason}): check dmesg for errors of the"
                " zone's driver, or choose another zone",
            ) from err
        return [Measurement("temperature", "Cel", parse_temp(text, f"{name}/temp"))]

    @classmethod
    def simulator(cls, address: int, seed: int) -> SimThermalTree:
        """A simulated ``/sys/class/thermal`` whose SoC temperature drifts from ``seed``."""
        from drivers.sim.thermal import SimThermalTree  # noqa: PLC0415 - the sim imports this module

        return SimThermalTree(seed=seed)
