"""A simulated I2C bus with the ``smbus2.SMBus`` method set.

Chips attach at an address and expose their register file; the bus routes
reads and writes to them, answers ``OSError(EREMOTEIO)`` for empty addresses
like the Linux i2c-dev driver does, and can inject bus faults for tests.
"""

from __future__ import annotations

import errno
import os
import threading
from typing import Protocol


class SimChip(Protocol):
    """A simulated chip: register reads and writes, auto-incrementing like real parts."""

    def read_registers(self, register: int, length: int) -> list[int]: ...

    def write_registers(self, register: int, data: list[int]) -> None: ...


class SimBus:
    """An in-memory I2C bus; thread-safe so that it can sit behind the bus worker."""

    def __init__(self) -> None:
        self._chips: dict[int, SimChip] = {}
        self._faults: list[int] = []
        self._lock = threading.Lock()

    def attach(self, address: int, chip: SimChip) -> None:
        """Put a chip on the bus at a 7-bit address."""
        self._chips[address] = chip

    def chip(self, address: int) -> SimChip:
        """The chip at ``address`` (for tests that steer the simulation)."""
        return self._chips[address]

    def inject_faults(self, *errnos: int) -> None:
        """Make the next transfers fail with these errno values, one per transfer."""
        with self._lock:
            self._faults.extend(errnos)

    def _target(self, address: int) -> SimChip:
        with self._lock:
            if self._faults:
                code = self._faults.pop(0)
                raise OSError(code, os.strerror(code))
        chip = self._chips.get(address)
        if chip is None:
            raise OSError(errno.EREMOTEIO, os.strerror(errno.EREMOTEIO))
        return chip

    # --- the smbus2.SMBus method set -------------------------------------------------
    def read_byte_data(self, i2c_addr: int, register: int, force: bool | None = None) -> int:
        return self._target(i2c_addr).read_registers(register, 1)[0]

    def write_byte_data(
        self, i2c_addr: int, register: int, value: int, force: bool | None = None
    ) -> None:
        self._target(i2c_addr).write_registers(register, [value & 0xFF])

    def read_i2c_block_data(
        self, i2c_addr: int, register: int, length: int, force: bool | None = None
    ) -> list[int]:
        return self._target(i2c_addr).read_registers(register, length)

    def write_i2c_block_data(
        self, i2c_addr: int, register: int, data: list[int], force: bool | None = None
    ) -> None:
        self._target(i2c_addr).write_registers(register, [b & 0xFF for b in data])

    def read_byte(self, i2c_addr: int, force: bool | None = None) -> int:
        return self._target(i2c_addr).read_registers(0, 1)[0]

    def write_quick(self, i2c_addr: int, force: bool | None = None) -> None:
        self._target(i2c_addr)

    def close(self) -> None:
        """Nothing to release; present because drivers close their bus."""
