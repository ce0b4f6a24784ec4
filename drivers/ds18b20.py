"""Maxim DS18B20 1-Wire thermometers, read through the Linux w1 sysfs interface.

The kernel's ``w1_therm`` driver does the 1-Wire work: each read of a probe's
``w1_slave`` file starts a conversion, waits for it (750 ms at 12 bits) and
prints the 9-byte scratchpad twice with the kernel's CRC verdict::

    72 01 4b 46 7f ff 0e 10 57 : crc=57 YES
    72 01 4b 46 7f ff 0e 10 57 t=23125

This module checks that text as strictly as the I2C drivers check their bytes:
the kernel's verdict, an independent CRC-8 of the scratchpad, the fixed bits of
the configuration register, and the 85 °C power-on value. The temperature comes
from the scratchpad bytes (which the CRC covers), not from the decimal ``t=``.

Datasheet references are to Maxim DS18B20 19-7487 Rev 6; kernel references to
``drivers/w1/slaves/w1_therm.c`` as reworked in 2020. Everything above
``class DS18B20`` is pure, so it is tested against captures without a sysfs tree.
"""

from __future__ import annotations

import errno
import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, ClassVar, NamedTuple

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    model_validator,
)

from drivers.base import Driver, DriverContext, DriverOptions
from gateway.errors import SensorError
from gateway.readings import Measurement

if TYPE_CHECKING:
    from drivers.sim.ds18b20 import SimW1Tree

log = logging.getLogger(__name__)

# --- constants ---------------------------------------------------------------------------

#: Where the kernel lists 1-Wire devices (Documentation/w1/w1-generic.rst).
SYSFS_DEVICES = Path("/sys/bus/w1/devices")
#: 1-Wire family code of the DS18B20 (and MAX31820): the "28-" of the device name
#: (datasheet, "64-Bit Lasered ROM Code").
FAMILY_CODE = "28"
#: The kernel names each device "<family>-<48-bit serial as 12 hex digits>".
DEVICE_ID_PATTERN = r"^28-[0-9a-f]{12}$"

SCRATCHPAD_LENGTH = 9  # bytes 0..7 data, byte 8 their CRC (datasheet, "Memory", scratchpad map)
CONFIG_BYTE = 4  # configuration register (datasheet, "Configuration Register")
CONFIG_FIXED_ONES = 0x1F  # bits 4:0 always read 1 (datasheet, configuration register format)
RESOLUTION_SHIFT = 5  # R1:R0 in bits 6:5; 0b00 = 9 bits ... 0b11 = 12 bits (Table 2)
COUNT_REMAIN_BYTE = 6  # "reserved"; see POWER_ON_BYTE6

CRC8_POLY_REFLECTED = 0x8C  # X^8 + X^5 + X^4 + 1, LSB first (datasheet "CRC Generation"; AN27)

# The temperature register's power-on value is +85 °C = 0x0550 (datasheet, "Operation —
# Measuring Temperature", and the scratchpad map). An authentic chip shows 0x0C in byte 6
# until its first conversion and 0x10 - (LSB & 0x0F) after every conversion, so a real
# 85.0 °C carries 0x10 there (cpetrich/counterfeit_DS18B20, "Family A"); the kernel's
# W1_THERM_CHECK_RESULT feature tests the same pattern. Clones keep byte 6 at 0x0C or 0xFF:
# on those a true 85.0 °C cannot be told from a reset and is rejected too.
RAW_POWER_ON = 0x0550
POWER_ON_BYTE6 = 0x0C
CONVERTED_85_BYTE6 = 0x10
# 0x07FF (127.9375 °C) is what the chip leaves after a conversion that ran out of power,
# typically parasite power with too weak a pull-up (w1_therm.c, W1_THERM_CHECK_RESULT).
RAW_FAILED_CONVERSION = 0x07FF
POWER_ON_MILLIDEGREES = 85000  # the same +85 °C in the ``temperature`` file, which has no bytes

LSB_CELSIUS = 1 / 16  # 12-bit resolution: 0.0625 °C per count (Table 1)

# One line of w1_slave as w1_slave_show() prints it: nine "%02x " then the verdict / t=.
_HEX9 = r"((?:[0-9a-f]{2} ){9})"
_LINE1 = re.compile(_HEX9 + r": crc=([0-9a-f]{2}) (YES|NO)")
_LINE2 = re.compile(_HEX9 + r"t=(-?[0-9]+)")

# --- pure functions ----------------------------------------------------------------------


def crc8(data: bytes | Sequence[int]) -> int:
    """The Dallas/Maxim 1-Wire CRC-8 (datasheet "CRC Generation"; Maxim AN27).

    Polynomial X^8 + X^5 + X^4 + 1 shifted LSB first, initial value 0, so the CRC
    of a block followed by its own CRC is 0.
    """
    crc = 0
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ CRC8_POLY_REFLECTED if crc & 1 else crc >> 1
    return crc


class W1Slave(NamedTuple):
    """The two lines of a ``w1_slave`` read, split into their parts."""

    scratchpad: bytes  # line 1: the bytes just read from the chip
    crc: int  # the kernel's CRC-8 of scratchpad[0:8]
    crc_ok: bool  # the kernel's verdict: that CRC equals scratchpad[8]
    shown: bytes  # line 2: the last scratchpad that passed (older kernels), else the same
    millidegrees: int  # the kernel's t=, computed from line 1


def parse_w1_slave(text: str) -> W1Slave:
    """Split the text of a ``w1_slave`` read; ``SensorError`` when it is not that format.

    An empty read is how kernels since the 2020 rework report a failed conversion or
    repeated CRC failures (w1_slave_show returns 0 bytes); older ones print ``NO`` instead.
    """
    if not text.strip():
        raise SensorError(
            "the kernel returned no data: the conversion failed or the CRC failed on every"
            " retry — check the wiring, the 4.7 kΩ pull-up and the cable length"
        )
    lines = text.splitlines()
    first = _LINE1.fullmatch(lines[0]) if lines else None
    second = _LINE2.fullmatch(lines[1]) if len(lines) > 1 else None
    if len(lines) != 2 or first is None or second is None:
        raise SensorError(f"unreadable w1_slave content {_excerpt(text)} (expected two lines)")
    return W1Slave(
        scratchpad=bytes.fromhex(first.group(1)),
        crc=int(first.group(2), 16),
        crc_ok=first.group(3) == "YES",
        shown=bytes.fromhex(second.group(1)),
        millidegrees=int(second.group(2)),
    )


def raw_temperature(scratchpad: bytes) -> int:
    """The signed 16-bit temperature register, LSB first (datasheet, Figure "Temperature
    Register Format")."""
    return int.from_bytes(scratchpad[0:2], "little", signed=True)


def resolution_bits(config: int) -> int:
    """9 to 12, from R1:R0 of the configuration register (Table 2)."""
    return 9 + (config >> RESOLUTION_SHIFT & 0b11)


def celsius(raw: int, resolution: int = 12) -> float:
    """°C from the temperature register; bits below the resolution are undefined and
    cleared (datasheet: bit 0 at 11 bits, bits 1:0 at 10, bits 2:0 at 9)."""
    undefined = 12 - resolution
    return (raw >> undefined << undefined) * LSB_CELSIUS


def scratchpad_problem(scratchpad: bytes) -> str | None:
    """Why these 9 bytes are not a valid conversion result, or None when they are."""
    if len(scratchpad) != SCRATCHPAD_LENGTH:
        return f"scratchpad has {len(scratchpad)} bytes, not {SCRATCHPAD_LENGTH}"
    computed = crc8(scratchpad[:8])
    if computed != scratchpad[8]:
        return (
            f"CRC mismatch (computed 0x{computed:02x}, byte 8 is 0x{scratchpad[8]:02x}):"
            " interference or a long cable — check the 4.7 kΩ pull-up"
        )
    if scratchpad[CONFIG_BYTE] & CONFIG_FIXED_ONES != CONFIG_FIXED_ONES:
        # An all-zero scratchpad has a valid CRC (0) and would read as 0 °C.
        return (
            f"configuration byte 0x{scratchpad[CONFIG_BYTE]:02x} lacks its fixed 1 bits"
            f" (scratchpad {scratchpad.hex(' ')}): the data line is shorted or the probe"
            " has no power"
        )
    raw = raw_temperature(scratchpad)
    byte6 = scratchpad[COUNT_REMAIN_BYTE]
    if raw == RAW_POWER_ON and byte6 != CONVERTED_85_BYTE6:
        return (
            "85 °C power-on value, not a measurement: the probe reset (power dropped"
            " during the conversion) — check the supply and the pull-up"
        )
    if raw == RAW_FAILED_CONVERSION and byte6 == POWER_ON_BYTE6:
        return (
            "127.94 °C failed-conversion value: the probe lacked power during the"
            " conversion — in parasite mode tie VDD to GND and use a stronger pull-up"
        )
    return None


def temperature_from_w1_slave(text: str) -> float:
    """°C from the text of a ``w1_slave`` read; ``SensorError`` says why when it is not one."""
    reading = parse_w1_slave(text)
    if not reading.crc_ok:
        raise SensorError(
            f"CRC check failed (kernel computed 0x{reading.crc:02x}, chip sent"
            f" 0x{reading.scratchpad[8]:02x}): interference or a long cable"
            " — check the 4.7 kΩ pull-up"
        )
    problem = scratchpad_problem(reading.scratchpad)
    if problem is not None:
        raise SensorError(problem)
    sp = reading.scratchpad
    return celsius(raw_temperature(sp), resolution_bits(sp[CONFIG_BYTE]))


def temperature_from_file(text: str) -> float:
    """°C from the text of the newer ``temperature`` attribute (plain millidegrees).

    The kernel returns it only for a scratchpad that passed its CRC, but without
    the bytes a true 85 °C cannot be told from a power-on reset, so 85000 is refused.
    """
    value = text.strip()
    if not value:
        raise SensorError("the kernel returned no data: the conversion or its CRC failed")
    if not re.fullmatch(r"-?[0-9]+", value):
        raise SensorError(f"unreadable temperature content {_excerpt(text)}")
    millidegrees = int(value)
    if millidegrees == POWER_ON_MILLIDEGREES:
        raise SensorError("85 °C power-on value, not a measurement: the probe reset")
    return millidegrees / 1000


def _excerpt(text: str, limit: int = 60) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "…")


# --- options -----------------------------------------------------------------------------

_ID_HINT = "a DS18B20 id such as 28-0316a2794f0e, the folder name under /sys/bus/w1/devices"


def _device_id(value: str) -> str:
    """A probe id as sysfs spells it (lower case); ValueError says what one looks like."""
    device = value.strip().lower()
    if not re.fullmatch(DEVICE_ID_PATTERN, device):
        raise ValueError(f"must be {_ID_HINT}")
    return device


def _device(value: str) -> str:
    """``all`` or a probe id."""
    device = value.strip().lower()
    if device != "all" and not re.fullmatch(DEVICE_ID_PATTERN, device):
        raise ValueError(f'must be "all" or {_ID_HINT}')
    return device


DeviceId = Annotated[str, AfterValidator(_device_id)]
ProbeName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.:-]+$", max_length=64)]


class Probe(BaseModel):
    """A probe by its 1-Wire id, and the name its quantity is published under."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: DeviceId
    name: ProbeName


class DS18B20Options(DriverOptions):
    """Which probes to read and how to name them.

    - ``device: all`` (the default): every 28-* probe present at each read, each as
      ``<id>/temperature``; probes plugged in later are picked up.
    - ``device: 28-0316a2794f0e``: that probe only, as ``temperature``.
    - ``probes: [{id: 28-…, name: soil}, …]``: these probes, as ``soil/temperature`` ….
    """

    device: Annotated[str, AfterValidator(_device)] = Field(
        default="all", description='"all", or the id of one probe such as 28-0316a2794f0e'
    )
    probes: tuple[Probe, ...] = Field(
        default=(), description="probes to read, each with the name to publish it under"
    )

    @model_validator(mode="after")
    def _one_way_to_choose(self) -> DS18B20Options:
        if self.probes and self.device != "all":
            raise ValueError("give either device or probes, not both")
        for field in ("id", "name"):
            seen: set[str] = set()
            for probe in self.probes:
                value = getattr(probe, field)
                if value in seen:
                    raise ValueError(f"probes: {field} {value!r} appears twice")
                seen.add(value)
        return self


# --- the driver --------------------------------------------------------------------------


class DS18B20(Driver):
    """One or more DS18B20 probes on the kernel's 1-Wire bus.

    Reads block: the kernel converts on every read, about 750 ms per probe at 12 bits
    (t_CONV, datasheet Table 2) and longer when it retries a bad CRC (up to 5 times,
    W1_THERM_MAX_TRY), so the sensor's ``timeout`` must allow more than 1 s per probe.

    With several probes, one that fails is skipped and counted (``probe_errors``) and
    logged when it starts and stops failing; the read fails only when every probe fails.
    A single configured ``device`` fails the read itself.
    """

    options_model: ClassVar[type[DriverOptions]] = DS18B20Options
    bus_kind: ClassVar[str] = "w1"
    # Measurement range (datasheet, Features and Electrical Characteristics).
    ranges: ClassVar[dict[str, tuple[float, float]]] = {"temperature": (-55.0, 125.0)}

    def __init__(self, context: DriverContext, options: DriverOptions) -> None:
        super().__init__(context, options)
        if not isinstance(options, DS18B20Options):
            raise TypeError(f"DS18B20 needs DS18B20Options, got {type(options).__name__}")
        self._opts = options
        self._root = context.root if context.root is not None else SYSFS_DEVICES
        self._errors: dict[str, int] = {}
        self._failing: set[str] = set()

    @property
    def root(self) -> Path:
        """The directory the probe folders live in."""
        return self._root

    @property
    def probe_errors(self) -> dict[str, int]:
        """Failed reads per probe id since start (skipped probes included)."""
        return dict(self._errors)

    def setup(self) -> None:
        """Check that the kernel's 1-Wire bus is there; probes are looked up at each read."""
        if not self._root.is_dir():
            raise SensorError(
                errno.ENOENT,
                f"{self._root} does not exist: enable 1-Wire (dtoverlay=w1-gpio in"
                " /boot/firmware/config.txt, data on GPIO4) and reboot, or use bus: sim",
            )

    def _selection(self) -> list[tuple[str, str]]:
        """(probe id, quantity) pairs to read this cycle."""
        opts = self._opts
        if opts.probes:
            return [(p.id, f"{p.name}/temperature") for p in opts.probes]
        if opts.device != "all":
            return [(opts.device, "temperature")]
        found = sorted(
            path.name
            for path in self._root.glob(f"{FAMILY_CODE}-*")
            if re.fullmatch(DEVICE_ID_PATTERN, path.name)
        )
        if not found:
            raise SensorError(
                f"no DS18B20 (28-*) under {self._root}: check the probe's wiring and"
                " its 4.7 kΩ pull-up between data and 3.3 V"
            )
        return [(device, f"{device}/temperature") for device in found]

    def read_probe(self, device: str) -> float:
        """°C of one probe: ``w1_slave`` when present, else the ``temperature`` file."""
        folder = self._root / device
        try:
            try:
                return temperature_from_w1_slave(_read(folder / "w1_slave"))
            except FileNotFoundError:
                if not folder.is_dir():
                    raise
            return temperature_from_file(_read(folder / "temperature"))
        except FileNotFoundError as err:
            reason = "is gone from" if not folder.is_dir() else "has no readable file in"
            raise SensorError(
                errno.ENODEV,
                f"probe {device} {reason} {self._root}: check its wiring (and that"
                " the w1_therm module is loaded)",
            ) from err

    def read(self) -> list[Measurement]:
        """One conversion per selected probe, in turn."""
        selection = self._selection()
        measurements: list[Measurement] = []
        failures: list[tuple[str, OSError]] = []
        for device, quantity in selection:
            try:
                value = self.read_probe(device)
            except OSError as err:
                self._errors[device] = self._errors.get(device, 0) + 1
                failures.append((device, err))
                continue
            measurements.append(Measurement(quantity, "Cel", value))
            self._recovered(device)
        if failures and not measurements:
            # The whole read fails: the poller reports it, so no log line of our own.
            self._failing.update(device for device, _ in failures)
            if len(failures) == 1:
                raise failures[0][1]
            summary = "; ".join(f"{device}: {error}" for device, error in failures)
            raise SensorError(f"all {len(failures)} probes failed — {summary}")
        for device, error in failures:
            self._failed(device, error)
        return measurements

    def _failed(self, device: str, err: OSError) -> None:
        """Log a probe that starts failing while others still read; once, not every cycle."""
        if device not in self._failing:
            self._failing.add(device)
            log.warning(
                f"probe {device} failed; publishing the others",
                extra={"sensor": self.context.sensor, "probe": device, "error": str(err)},
            )

    def _recovered(self, device: str) -> None:
        if device in self._failing:
            self._failing.discard(device)
            log.info(
                f"probe {device} reads again",
                extra={"sensor": self.context.sensor, "probe": device},
            )

    @classmethod
    def simulator(cls, address: int, seed: int) -> SimW1Tree:
        """A simulated sysfs tree of probes whose temperatures drift from ``seed``."""
        from drivers.sim.ds18b20 import SimW1Tree  # noqa: PLC0415 - the sim imports this module

        return SimW1Tree(seed=seed)


def _read(path: Path) -> str:
    # sysfs attributes produce the whole text in one read(); ASCII by construction,
    # so anything else is garbage that the parsers reject with the excerpt.
    return path.read_text(encoding="ascii", errors="replace")
