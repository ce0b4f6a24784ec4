"""A simulated I2C bus with the ``smbus2.SMBus`` method set.

Chips attach at an address and expose their register file; the bus routes
reads and writes to them, answers ``OSError(EREMOTEIO)`` for empty addresses
like the Linux i2c-dev driver does, and can inject bus faults for tests.
"""

from __future__ import annotations

import ctypes
import errno
import os
import threading
from typing import Protocol

from smbus2 import i2c_msg
from smbus2.smbus2 import I2C_M_RD


class SimChip(Protocol):
    """A simulated register-based chip. Reads auto-increment from the register
    pointer; how writes behave (auto-increment or address/value pairs) is the
    chip's own business.

    Command-based chips (Sensirion, BH1750) that have no register pointer also
    define ``write_raw(data: bytes)`` and ``read_raw(length) -> bytes``; plain
    transfers (``i2c_rdwr``, ``write_byte``, ``read_byte``) go to those when present.
    """

    def read_registers(self, register: int, length: int) -> list[int]: ...

    def write_registers(self, register: int, data: list[int]) -> None: ...


class SimBus:
    """An in-memory I2C bus; thread-safe so that it can sit behind the bus worker."""

    def __init__(self) -> None:
        self._chips: dict[int, SimChip] = {}
        self._faults: list[int] = []
        self._pointers: dict[int, int] = {}
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
        return self._read_raw(i2c_addr, 1)[0]

    def write_byte(self, i2c_addr: int, value: int, force: bool | None = None) -> None:
        self._write_raw(i2c_addr, bytes([value & 0xFF]))

    def write_quick(self, i2c_addr: int, force: bool | None = None) -> None:
        self._target(i2c_addr)

    def i2c_rdwr(self, *i2c_msgs: i2c_msg) -> None:
        """Combined transfers: each message is a plain write or read (no register)."""
        for msg in i2c_msgs:
            if msg.flags & I2C_M_RD:
                # A chip that answers with fewer bytes leaves the bus high: 0xFF.
                data = bytes(self._read_raw(msg.addr, msg.len))[: msg.len]
                data += b"\xff" * (msg.len - len(data))
                ctypes.memmove(msg.buf, data, msg.len)
            else:
                self._write_raw(msg.addr, bytes(msg))

    def _write_raw(self, address: int, data: bytes) -> None:
        chip = self._target(address)
        write_raw = getattr(chip, "write_raw", None)
        if write_raw is not None:
            write_raw(data)
            return
        if data:  # first byte sets the register pointer, the rest are written from it
            self._pointers[address] = data[0]
            if len(data) > 1:
                chip.write_registers(data[0], list(data[1:]))

    def _read_raw(self, address: int, length: int) -> list[int]:
        chip = self._target(address)
        read_raw = getattr(chip, "read_raw", None)
        if read_raw is not None:
            return list(read_raw(length))
        return chip.read_registers(self._pointers.get(address, 0), length)

    def close(self) -> None:
        """Nothing to release; present because drivers close their bus."""
