"""A simulated Linux thermal sysfs class (``/sys/class/thermal``), for ``bus: sim`` and tests.

A temporary directory stands in for ``/sys/class/thermal``, laid out as the kernel lays
it out: each ``thermal_zone<N>`` is a symlink to its folder under
``devices/virtual/thermal/``, holding ``type`` (``cpu-thermal\\n``) and ``temp``
(millidegrees Celsius, ``48312\\n``, as ``temp_show`` prints it), and a
``cooling_device0`` folder sits beside the zones as on a Pi, so the driver's real
lookup and parsing run against it. ``temp`` is rewritten as ``drivers.sim.sysfs``
describes.

Faults the tests and demos can switch on per zone: ``empty`` (an empty file),
``garbage`` (text that is not a number), ``invalid`` (THERMAL_TEMP_INVALID, -274000)
and ``hot`` (200 °C, beyond any SoC); ``remove()`` makes a zone vanish. Not simulated:
the ``EAGAIN``/``ENODATA`` a driver may return while it starts (a regular file cannot
fail its read), nor the coarse steps of real sensors (a Pi 4 reads in ~0.5 °C steps).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from typing import Literal

from drivers.sim.sysfs import SimSysfsTree, replace
from drivers.thermal import THERMAL_TEMP_INVALID, ZONE_PREFIX

Fault = Literal["empty", "garbage", "invalid", "hot"]

#: The zones a simulated tree holds unless told otherwise: a Raspberry Pi's one zone.
SIM_ZONE_TYPES = ("cpu-thermal",)

# An idle SoC in a warm cabinet, and how far it may stray.
TEMPERATURE_CENTRE, TEMPERATURE_SPAN = 48.0, 15.0  # °C

_FAULT_TEXT: dict[Fault, str] = {
    "empty": "",
    "garbage": "4?.3\n",
    "invalid": f"{THERMAL_TEMP_INVALID}\n",
    "hot": "200000\n",
}


@dataclass
class SimZone:
    """One simulated zone: its number, type, true temperature and the fault it shows."""

    number: int
    type: str
    temperature: float
    fault: Fault | None = None


class SimThermalTree(SimSysfsTree[int, Fault, SimZone]):
    """A directory of simulated thermal zones; ``root`` goes where ``/sys/class/thermal`` would."""

    name = "thermal"
    centre, span, sigma, spread = TEMPERATURE_CENTRE, TEMPERATURE_SPAN, 0.05, 5.0

    def __init__(
        self,
        *,
        seed: int = 0,
        types: tuple[str, ...] = SIM_ZONE_TYPES,
        drift: bool = True,
        interval: float | None = 1.0,
    ) -> None:
        super().__init__(seed=seed, drift=drift)
        self._devices = self._base / "devices" / "virtual" / "thermal"
        self._devices.mkdir(parents=True)
        self.root = self._base / "class" / "thermal"
        self.root.mkdir(parents=True)
        cooling = self._devices / "cooling_device0"
        cooling.mkdir()
        (cooling / "type").write_text("cpufreq-cpu0\n", encoding="ascii")
        (self.root / "cooling_device0").symlink_to(cooling, target_is_directory=True)
        for kind in types:
            self.add(kind)
        self._start(interval)

    # --- steering ------------------------------------------------------------------------
    @property
    def zones(self) -> list[int]:
        """Numbers of the zones present, sorted."""
        return self._keys()

    def zone(self, number: int) -> SimZone:
        """Zone ``number`` (KeyError when absent)."""
        return self._records[number]

    def add(
        self, kind: str, temperature: float | None = None, number: int | None = None
    ) -> SimZone:
        """Add a zone of type ``kind``, numbered next unless given; its temperature is
        seeded near the centre unless given."""
        temperature = self._temperature(temperature)
        with self._lock:
            if number is None:
                number = max(self._records, default=-1) + 1
            if number in self._records:
                raise ValueError(f"zone {number} exists")
            zone = self._records[number] = SimZone(number, kind, temperature)
            folder = self._devices / f"{ZONE_PREFIX}{number}"
            folder.mkdir()
            (folder / "type").write_text(f"{kind}\n", encoding="ascii")
            self._write(zone)
            (self.root / folder.name).symlink_to(folder, target_is_directory=True)
        return zone

    # --- the files -----------------------------------------------------------------------
    def _remove_files(self, device: int) -> None:
        name = f"{ZONE_PREFIX}{device}"
        (self.root / name).unlink(missing_ok=True)
        shutil.rmtree(self._devices / name, ignore_errors=True)

    def _write(self, record: SimZone) -> None:
        text = (
            _FAULT_TEXT[record.fault]
            if record.fault is not None
            else f"{round(record.temperature * 1000)}\n"
        )
        replace(self._devices / f"{ZONE_PREFIX}{record.number}" / "temp", text)
