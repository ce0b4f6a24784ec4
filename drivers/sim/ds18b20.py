"""A simulated Linux w1 sysfs tree of DS18B20 probes, for ``bus: sim`` and the tests.

A temporary directory stands in for ``/sys/bus/w1/devices``: one ``28-*`` folder
per probe with ``w1_slave`` and ``temperature`` files written exactly as the
kernel's w1_therm driver prints them (``drivers/w1/slaves/w1_therm.c``,
w1_slave_show and temperature_show), so the driver's real parsing runs against it.
The files are rewritten as ``drivers.sim.sysfs`` describes.

Faults the tests and demos can switch on per probe: ``crc`` (a corrupted byte and
``crc=.. NO``, as older kernels print it), ``empty`` (no data, how newer
kernels report a failed read), ``power_on`` (the 85 °C reset scratchpad), ``zeros``
(a shorted data line: all-zero bytes whose CRC is valid); ``remove()`` makes a probe
vanish as the kernel does when it drops the device.

Not simulated: the 750 ms a real read blocks, and resolutions other than 12 bits.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from typing import Literal

from drivers.ds18b20 import POWER_ON_BYTE6, RAW_POWER_ON, crc8
from drivers.sim.sysfs import SimSysfsTree, replace

Fault = Literal["crc", "empty", "power_on", "zeros"]

#: The probes a simulated tree holds unless told otherwise; fixed, so that a
#: configuration can name them (``config/examples/ds18b20.yaml`` does).
SIM_PROBE_IDS = ("28-0316a2794f0e", "28-3c01d607e8a1")

# Scratchpad bytes 2..5 and 7 as an authentic chip ships them: TH 0x4B (75 °C), TL 0x46
# (70 °C), configuration 0x7F (12 bits), reserved 0xFF and 0x10 (datasheet scratchpad map;
# cpetrich/counterfeit_DS18B20 "Family A").
TH, TL, CONFIG_12BIT, RESERVED5, RESERVED7 = 0x4B, 0x46, 0x7F, 0xFF, 0x10
# The whole power-on scratchpad, as in the captures of that page: 50 05 4b 46 7f ff 0c 10 1c.
_POWER_ON_DATA = RAW_POWER_ON.to_bytes(2, "little") + bytes(
    [TH, TL, CONFIG_12BIT, RESERVED5, POWER_ON_BYTE6, RESERVED7]
)
POWER_ON_SCRATCHPAD = _POWER_ON_DATA + bytes([crc8(_POWER_ON_DATA)])

# Where simulated probes sit (a cool plant room, a tank, soil) and how far they may stray.
TEMPERATURE_CENTRE, TEMPERATURE_SPAN = 14.0, 12.0  # °C


def encode_scratchpad(celsius: float) -> bytes:
    """The 9 scratchpad bytes an authentic DS18B20 holds after converting ``celsius``.

    The register counts 1/16 °C, two's complement, LSB first; byte 6 is
    0x10 - (LSB & 0x0F) after a conversion (cpetrich/counterfeit_DS18B20), and byte 8
    the CRC-8 of the other eight.
    """
    raw = max(-0x8000, min(0x7FFF, round(celsius * 16)))
    lsb, msb = (raw & 0xFFFF).to_bytes(2, "little")
    data = bytes([lsb, msb, TH, TL, CONFIG_12BIT, RESERVED5, 0x10 - (lsb & 0x0F), RESERVED7])
    return data + bytes([crc8(data)])


def kernel_millidegrees(scratchpad: bytes) -> int:
    """The kernel's ``t=`` for a 12-bit scratchpad: ``(int)t * 1000 / 16`` in C, which
    truncates towards zero (w1_DS18B20_convert_temp)."""
    raw = int.from_bytes(scratchpad[0:2], "little", signed=True)
    magnitude = abs(raw) * 1000 // 16
    return -magnitude if raw < 0 else magnitude


def render_w1_slave(scratchpad: bytes, last_good: bytes | None = None) -> str:
    """The text of a ``w1_slave`` read, as w1_slave_show prints it.

    Line 1 is the bytes just read with the kernel's CRC and verdict; line 2 the last
    scratchpad that passed (``last_good``; the same bytes when these pass) followed by
    ``t=`` computed from the bytes just read.
    """
    crc = crc8(scratchpad[:8])
    verdict = "YES" if crc == scratchpad[8] else "NO"
    shown = scratchpad if verdict == "YES" or last_good is None else last_good
    return (
        "".join(f"{b:02x} " for b in scratchpad)
        + f": crc={crc:02x} {verdict}\n"
        + "".join(f"{b:02x} " for b in shown)
        + f"t={kernel_millidegrees(scratchpad)}\n"
    )


@dataclass
class SimProbe:
    """One simulated probe: its true temperature and the fault it shows, if any."""

    device: str
    temperature: float
    fault: Fault | None = None
    last_good: bytes | None = None


class SimW1Tree(SimSysfsTree[str, Fault, SimProbe]):
    """A directory of simulated probes; ``root`` goes where ``/sys/bus/w1/devices`` would."""

    name = "w1"
    centre, span, sigma, spread = TEMPERATURE_CENTRE, TEMPERATURE_SPAN, 0.03, 4.0

    def __init__(
        self,
        *,
        seed: int = 0,
        devices: tuple[str, ...] = SIM_PROBE_IDS,
        drift: bool = True,
        interval: float | None = 1.0,
        w1_slave: bool = True,
        temperature_file: bool = True,
    ) -> None:
        super().__init__(seed=seed, drift=drift)
        self._w1_slave = w1_slave
        self._temperature_file = temperature_file
        self.root = self._base / "devices"
        self.root.mkdir()
        # The bus master sits beside the probes in the real directory too.
        (self.root / "w1_bus_master1").mkdir()
        for device in devices:
            self.add(device)
        self._start(interval)

    # --- steering ------------------------------------------------------------------------
    @property
    def devices(self) -> list[str]:
        """Ids of the probes present, sorted."""
        return self._keys()

    def probe(self, device: str) -> SimProbe:
        """The probe ``device`` (KeyError when absent)."""
        return self._records[device]

    def add(self, device: str, temperature: float | None = None) -> SimProbe:
        """Plug in a probe; its temperature is seeded near the centre unless given."""
        temperature = self._temperature(temperature)
        with self._lock:
            probe = self._records[device] = SimProbe(device, temperature)
            (self.root / device).mkdir(exist_ok=True)
            self._write(probe)
        return probe

    # --- the files -----------------------------------------------------------------------
    def _remove_files(self, device: str) -> None:
        shutil.rmtree(self.root / device, ignore_errors=True)

    def _contents(self, probe: SimProbe) -> tuple[str, str]:
        """(w1_slave, temperature) texts for the probe's state and fault."""
        good = encode_scratchpad(probe.temperature)
        if probe.fault == "empty":
            return "", ""
        if probe.fault == "power_on":
            return (
                render_w1_slave(POWER_ON_SCRATCHPAD),
                f"{kernel_millidegrees(POWER_ON_SCRATCHPAD)}\n",
            )
        if probe.fault == "zeros":
            return render_w1_slave(bytes(9)), "0\n"
        if probe.fault == "crc":
            # One bit flipped in transit in reserved byte 6, the CRC byte as sent.
            bad = bytearray(good)
            bad[6] ^= 0x20
            # Newer kernels return nothing for a CRC failure in ``temperature``.
            return render_w1_slave(bytes(bad), probe.last_good), ""
        probe.last_good = good
        return render_w1_slave(good), f"{kernel_millidegrees(good)}\n"

    def _write(self, record: SimProbe) -> None:
        folder = self.root / record.device
        w1_slave, temperature = self._contents(record)
        if self._w1_slave:
            replace(folder / "w1_slave", w1_slave)
        if self._temperature_file:
            replace(folder / "temperature", temperature)
