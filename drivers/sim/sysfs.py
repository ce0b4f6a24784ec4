"""What the simulated sysfs trees (thermal zones, 1-Wire probes) share, written once.

A temporary directory stands in for the kernel's, holding one record per simulated
device whose temperature follows a mean-reverting random walk. A regular file cannot
run code when it is read, so each device's files are rewritten: by ``refresh()``, and
every ``interval`` seconds by a background thread unless ``interval`` is None. Rewrites
replace the file atomically, so a reader never sees half of one. A subclass lays out
its tree, writes one device's files and names its walk's centre, span and step.
"""

from __future__ import annotations

import random
import shutil
import tempfile
import threading
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar, Generic, Protocol, TypeVar


class SimRecord(Protocol):
    """What the shared machinery needs of a device record: its true temperature and fault."""

    temperature: float
    fault: Any


#: A device's key in the tree (a zone's number, a probe's id).
K = TypeVar("K", int, str)
#: The faults a device can show.
F = TypeVar("F")
#: The record of one device.
R = TypeVar("R", bound=SimRecord)


class SimSysfsTree(ABC, Generic[K, F, R]):
    """A temporary directory of simulated devices whose files a thread keeps rewriting."""

    #: Names the directory (``wsn-<name>-…``) and the rewriting thread (``sim-<name>``).
    name: ClassVar[str]
    #: Where the walk is pulled to and how far it may stray (°C).
    centre: ClassVar[float]
    span: ClassVar[float]
    #: The standard deviation of one step (°C), and the half-width of a new device's
    #: spread around the centre.
    sigma: ClassVar[float]
    spread: ClassVar[float]

    #: Where the device folders are: the driver's ``context.root`` (set by the subclass).
    root: Path

    def __init__(self, *, seed: int, drift: bool) -> None:
        # The subclass lays out its tree and adds its devices, then calls _start().
        self._rng = random.Random(seed)
        self.drift = drift
        self._lock = threading.Lock()
        self._base = Path(tempfile.mkdtemp(prefix=f"wsn-{self.name}-"))
        self._records: dict[K, R] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _start(self, interval: float | None) -> None:
        """Start rewriting every ``interval`` seconds (None: only on ``refresh()``)."""
        if interval is not None:
            self._thread = threading.Thread(
                target=self._run, args=(interval,), name=f"sim-{self.name}", daemon=True
            )
            self._thread.start()

    # --- steering ------------------------------------------------------------------------
    def _keys(self) -> list[K]:
        """The devices present, sorted; under the lock, as ``add``/``remove`` may run."""
        with self._lock:
            return sorted(self._records)

    def _temperature(self, given: float | None) -> float:
        """``given``, or a temperature seeded near the centre."""
        if given is None:
            return self.centre + self._rng.uniform(-self.spread, self.spread)
        return given

    def remove(self, device: K) -> None:
        """Make ``device`` vanish, files and all, as when the kernel drops it."""
        with self._lock:
            del self._records[device]
            self._remove_files(device)

    def set_temperature(self, device: K, celsius: float) -> None:
        """Make ``device`` report ``celsius`` (to its files' resolution) from now on."""
        with self._lock:
            record = self._records[device]
            record.temperature = celsius
            self._write(record)

    def set_fault(self, device: K, fault: F | None) -> None:
        """Make ``device`` show ``fault`` from now on; None heals it."""
        with self._lock:
            record = self._records[device]
            record.fault = fault
            self._write(record)

    def refresh(self) -> None:
        """One step of every device's random walk (when drifting), then rewrite the files."""
        with self._lock:
            for record in self._records.values():
                if self.drift:
                    self._step(record)
                self._write(record)

    def close(self) -> None:
        """Stop the rewriting thread and remove the directory; safe to call twice."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        shutil.rmtree(self._base, ignore_errors=True)

    # --- the files -----------------------------------------------------------------------
    def _run(self, interval: float) -> None:
        while not self._stop.wait(interval):
            self.refresh()

    def _step(self, record: R) -> None:
        """Mean-reverting random walk, kept within the span."""
        value = record.temperature + self._rng.gauss(0.0, self.sigma)
        value += 0.02 * (self.centre - value)
        low, high = self.centre - self.span, self.centre + self.span
        record.temperature = min(max(value, low), high)

    @abstractmethod
    def _write(self, record: R) -> None:
        """Rewrite the files of one device (with ``replace``), the lock held."""

    @abstractmethod
    def _remove_files(self, device: K) -> None:
        """Remove the files of one device, the lock held."""


def replace(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically: a reader sees the old file or the new one."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="ascii")
    tmp.replace(path)
