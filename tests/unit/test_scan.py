"""The I2C scan: i2cdetect's probing rules, chip identification by the registered drivers,
bus faults (no ACK, busy, broken identify), the printed grid, and opening the bus."""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import ClassVar

import pytest

from drivers.base import Driver, SMBusLike
from drivers.bme280 import BME280
from drivers.sim.bme280 import SimBME280
from drivers.sim.bus import SimBus
from gateway.buses import BusError
from gateway.config import load_settings
from gateway.readings import Measurement
from gateway.scan import (
    FIRST_ADDRESS,
    LAST_ADDRESS,
    Found,
    ScanBusLike,
    format_scan,
    i2c_drivers,
    open_scan_bus,
    scan_bus,
)

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "config" / "demo.yaml"


class Memory:
    """A register file with no chip behind it: answers, but is no known chip."""

    def __init__(self, chip_id: int = 0x00) -> None:
        self.regs = bytearray(256)
        self.regs[0xD0] = chip_id

    def read_registers(self, register: int, length: int) -> list[int]:
        return list(self.regs[register : register + length])

    def write_registers(self, register: int, data: list[int]) -> None:
        self.regs[register : register + len(data)] = bytes(data)


class RecordingBus(SimBus):
    """A SimBus that logs how each address was probed and fails chosen addresses."""

    def __init__(self, faults: dict[int, int] | None = None) -> None:
        super().__init__()
        self.faults = faults or {}
        self.probes: list[tuple[str, int]] = []

    def _fail(self, address: int) -> None:
        code = self.faults.get(address)
        if code is not None:
            raise OSError(code, os.strerror(code))

    def write_quick(self, i2c_addr: int, force: bool | None = None) -> None:
        self.probes.append(("write_quick", i2c_addr))
        self._fail(i2c_addr)
        super().write_quick(i2c_addr, force)

    def read_byte(self, i2c_addr: int, force: bool | None = None) -> int:
        self.probes.append(("read_byte", i2c_addr))
        self._fail(i2c_addr)
        return super().read_byte(i2c_addr, force)

    def read_byte_data(self, i2c_addr: int, register: int, force: bool | None = None) -> int:
        self._fail(i2c_addr)
        return super().read_byte_data(i2c_addr, register, force)


class Fussy(Driver):
    """A driver whose identify always breaks: a scan must carry on."""

    bus_kind: ClassVar[str] = "i2c"
    addresses: ClassVar[tuple[int, ...]] = (0x76,)

    def read(self) -> list[Measurement]:
        return []

    @classmethod
    def identify(cls, bus: SMBusLike, address: int) -> str | None:
        raise RuntimeError("confused")


class Other(Driver):
    """Another chip that can sit at 0x76 and says so for any device (a greedy identify)."""

    bus_kind: ClassVar[str] = "i2c"
    addresses: ClassVar[tuple[int, ...]] = (0x40, 0x76)

    def read(self) -> list[Measurement]:
        return []

    @classmethod
    def identify(cls, bus: SMBusLike, address: int) -> str | None:
        bus.read_byte_data(address, 0x00)
        return "OTHER"


class Serial(Driver):
    """Not an I2C driver: never asked, whatever its addresses."""

    bus_kind: ClassVar[str] = "serial"
    addresses: ClassVar[tuple[int, ...]] = (0x76,)

    def read(self) -> list[Measurement]:
        return []

    @classmethod
    def identify(cls, bus: SMBusLike, address: int) -> str | None:
        raise AssertionError("a serial driver was asked to identify an I2C chip")


def bus_with(**chips: object) -> RecordingBus:
    bus = RecordingBus()
    for address, chip in chips.items():
        bus.attach(int(address, 16), chip)  # type: ignore[arg-type]
    return bus


# --- BME280.identify (the one driver that has one so far) --------------------------------


def test_bme280_identify_by_chip_id() -> None:
    bus = bus_with(**{"0x76": SimBME280(), "0x77": SimBME280(variant="bmp280")})
    assert BME280.identify(bus, 0x76) == "BME280"
    assert BME280.identify(bus, 0x77) == "BMP280"
    for chip_id in (0x56, 0x57):  # BMP280 engineering samples (BST-BMP280-DS001 4.3.1)
        assert BME280.identify(bus_with(**{"0x76": Memory(chip_id)}), 0x76) == "BMP280"
    assert BME280.identify(bus_with(**{"0x76": Memory(0x61)}), 0x76) is None  # a BME680


# --- probing --------------------------------------------------------------------------


def test_scan_names_what_answers() -> None:
    # 0x2a: no registered driver lives there, so whatever answers stays unnamed.
    bus = bus_with(**{"0x76": SimBME280(), "0x77": SimBME280(variant="bmp280"), "0x2a": Memory()})
    assert scan_bus(bus) == [
        Found(0x2A, []),
        Found(0x76, ["BME280"]),
        Found(0x77, ["BMP280"]),
    ]


def test_probes_like_i2cdetect() -> None:
    bus = RecordingBus()
    scan_bus(bus, drivers={})
    kinds = {address: kind for kind, address in bus.probes}
    assert sorted(kinds) == list(range(0x08, 0x78))  # 0x08..0x77, each once
    assert len(bus.probes) == 0x78 - 0x08
    reads = sorted(a for a, kind in kinds.items() if kind == "read_byte")
    assert reads == [*range(0x30, 0x38), *range(0x50, 0x60)]  # EEPROM ranges: read, no write
    assert (FIRST_ADDRESS, LAST_ADDRESS) == (0x08, 0x77)


def test_an_eeprom_answers_to_the_read() -> None:
    bus = bus_with(**{"0x50": Memory(), "0x33": Memory()})
    assert scan_bus(bus, drivers={}) == [Found(0x33, []), Found(0x50, [])]


@pytest.mark.parametrize("code", [errno.EREMOTEIO, errno.ENXIO, errno.EIO, errno.ETIMEDOUT])
def test_an_address_that_fails_is_nothing_there(code: int) -> None:
    bus = bus_with(**{"0x76": SimBME280(), "0x50": Memory()})
    bus.faults = {0x76: code, 0x50: code}
    assert scan_bus(bus) == []


def test_busy_address_is_in_use_by_a_kernel_driver() -> None:
    # The I2C_SLAVE ioctl answers EBUSY when a kernel driver (say bmp280 from a
    # dtoverlay) has claimed the address: i2cdetect prints UU and does not probe it.
    bus = bus_with(**{"0x76": SimBME280()})
    bus.faults = {0x76: errno.EBUSY}
    assert scan_bus(bus) == [Found(0x76, [], in_use=True)]


def test_identify_that_raises_counts_as_no() -> None:
    bus = bus_with(**{"0x76": SimBME280()})
    drivers: dict[str, type[Driver]] = {"fussy": Fussy, "bme280": BME280, "serial": Serial}
    assert scan_bus(bus, drivers=drivers) == [Found(0x76, ["BME280"])]


def test_a_chip_can_match_several_drivers_and_addresses_limit_who_is_asked() -> None:
    bus = bus_with(**{"0x76": SimBME280(), "0x77": SimBME280()})
    found = scan_bus(bus, drivers={"bme280": BME280, "other": Other})
    # Other may live at 0x76 only, so only there does it get asked.
    assert found == [Found(0x76, ["BME280", "OTHER"]), Found(0x77, ["BME280"])]


def test_identify_errors_from_the_bus_count_as_no() -> None:
    bus = bus_with(**{"0x76": SimBME280()})
    original = bus.read_byte_data

    def flaky(i2c_addr: int, register: int, force: bool | None = None) -> int:
        raise OSError(errno.EIO, "bus glitch")

    bus.read_byte_data = flaky  # type: ignore[method-assign]
    assert scan_bus(bus) == [Found(0x76, [])]
    bus.read_byte_data = original  # type: ignore[method-assign]
    assert scan_bus(bus) == [Found(0x76, ["BME280"])]


def test_registry_default_skips_what_cannot_load_and_what_is_not_i2c() -> None:
    drivers = i2c_drivers()
    assert drivers["bme280"] is BME280
    assert "ds18b20" not in drivers and "counter" not in drivers
    assert all(cls.bus_kind == "i2c" for cls in drivers.values())


def test_scan_does_not_disturb_a_chip() -> None:
    chip = SimBME280(drift=False)
    bus = bus_with(**{"0x76": chip})
    before = chip.read_registers(0x00, 256)
    scan_bus(bus)
    assert chip.read_registers(0x00, 256) == before
    assert chip.measurements == 0


# --- the printout ----------------------------------------------------------------------


def test_format_is_an_i2cdetect_grid_and_a_list() -> None:
    found = [Found(0x3C, []), Found(0x68, [], in_use=True), Found(0x76, ["BME280"])]
    assert format_scan(found) == "\n".join(
        [
            "     0  1  2  3  4  5  6  7  8  9  a  b  c  d  e  f",
            "00:                         -- -- -- -- -- -- -- --",
            "10: -- -- -- -- -- -- -- -- -- -- -- -- -- -- -- --",
            "20: -- -- -- -- -- -- -- -- -- -- -- -- -- -- -- --",
            "30: -- -- -- -- -- -- -- -- -- -- -- -- 3c -- -- --",
            "40: -- -- -- -- -- -- -- -- -- -- -- -- -- -- -- --",
            "50: -- -- -- -- -- -- -- -- -- -- -- -- -- -- -- --",
            "60: -- -- -- -- -- -- -- -- UU -- -- -- -- -- -- --",
            "70: -- -- -- -- -- -- 76 --",
            "",
            "0x3c  answers, but no installed driver recognises it",
            "0x68  in use by a kernel driver (UU)",
            "0x76  BME280",
        ]
    )


def test_format_of_an_empty_bus_says_so() -> None:
    text = format_scan([])
    assert text.endswith("no device answered between 0x08 and 0x77")
    assert "UU" not in text and text.count("--") == 0x78 - 0x08


def test_format_lists_several_names() -> None:
    assert format_scan([Found(0x76, ["BME280", "OTHER"])]).endswith("0x76  BME280, OTHER")


# --- opening the bus -------------------------------------------------------------------


def test_sim_bus_carries_the_configured_simulators() -> None:
    settings = load_settings(DEMO)  # a BH1750, an SHT3x and a BME280 on bus sim
    with open_scan_bus("sim", settings) as bus:
        assert isinstance(bus, SimBus)
        found = scan_bus(bus)
    assert [(f.address, f.names[0].split()[0]) for f in found] == [
        (0x23, "BH1750"),
        (0x44, "SHT3x"),
        (0x76, "BME280"),
    ]


def test_sim_bus_without_settings_is_empty() -> None:
    with open_scan_bus("sim") as bus:
        assert scan_bus(bus) == []


def test_sim_bus_ignores_sensors_that_are_not_on_i2c() -> None:
    settings = load_settings(ROOT / "config" / "examples" / "ds18b20.yaml")  # 1-Wire, bus: sim
    with open_scan_bus("sim", settings) as bus:
        assert scan_bus(bus) == []


def test_missing_bus_device_is_the_buses_error() -> None:
    with (
        pytest.raises(BusError, match=r"/dev/i2c-99 does not exist.*or use bus: sim"),
        open_scan_bus(99),
    ):
        pass


def test_real_smbus_has_what_a_scan_needs() -> None:
    smbus2 = pytest.importorskip("smbus2")
    assert issubclass(smbus2.SMBus, ScanBusLike)
    assert isinstance(SimBus(), ScanBusLike)
