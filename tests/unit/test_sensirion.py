"""The Sensirion family code: CRC-8 against the datasheets' numbers and an independent
reference, word framing, and the command/read transfers on a recording bus and on SimBus."""

from __future__ import annotations

import ctypes
import errno
import os
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from smbus2.smbus2 import I2C_M_RD

from drivers.sensirion import (
    CRC8_EXAMPLE,
    FRAME_BYTES,
    command_frame,
    crc8,
    pack_word,
    pack_words,
    read_words,
    unpack_words,
    write_command,
)
from drivers.sim.bus import SimBus
from gateway.errors import SensorError


def reference_crc8(word: int) -> int:
    """The CRC as the remainder of a polynomial division, written independently of
    ``crc8``: for a non-reflected CRC the 0xFF initial value is the same as XOR-ing
    it into the first byte, and the CRC is ((message · x^8) mod (x^8+x^5+x^4+1))."""
    remainder = ((word ^ 0xFF00) & 0xFFFF) << 8
    generator = 0x131  # x^8 + x^5 + x^4 + 1 with its x^8 term
    for bit in range(23, 7, -1):
        if remainder >> bit & 1:
            remainder ^= generator << (bit - 8)
    return remainder


# --- CRC-8 ------------------------------------------------------------------------------


def test_crc_of_the_datasheet_example() -> None:
    # SHT3x-DIS 4.12 Table 20 and SCD4x 3.11: "CRC (0xBEEF) = 0x92".
    assert crc8(b"\xbe\xef") == 0x92
    assert crc8([0xBE, 0xEF]) == 0x92
    assert CRC8_EXAMPLE == (0xBEEF, 0x92)


@pytest.mark.parametrize(
    ("word", "expected"),
    [
        # SCD4x datasheet examples, word then the CRC printed after it:
        (0x6667, 0xA2),  # read_measurement (3.5.2): temperature 25 °C
        (0x5EB9, 0x3C),  # read_measurement (3.5.2): humidity 37 %RH
        (0xF896, 0x31),  # get_serial_number (3.9.2), word 0
        (0x9F07, 0xC2),  # get_serial_number (3.9.2), word 1
        (0x3BBE, 0x89),  # get_serial_number (3.9.2), word 2
        (0x07E6, 0x48),  # set_temperature_offset 5.4 °C (3.6.1)
        (0x079E, 0x09),  # set_sensor_altitude 1950 m (3.6.3)
        # Corner words, from the independent reference below.
        (0x0000, 0x81),
        (0xFFFF, 0xAC),
        (0x01F4, 0x33),  # 500 ppm
        (0x8010, 0xE1),  # the SHT3x status register after reset
    ],
)
def test_crc_vectors(word: int, expected: int) -> None:
    assert crc8(word.to_bytes(2, "big")) == expected
    assert reference_crc8(word) == expected


def test_crc_agrees_with_the_polynomial_division_for_every_word() -> None:
    for word in range(0x10000):
        assert crc8(word.to_bytes(2, "big")) == reference_crc8(word), hex(word)


def test_crc_of_nothing_is_the_initial_value() -> None:
    assert crc8(b"") == 0xFF


# --- words ------------------------------------------------------------------------------


def test_pack_word_is_msb_lsb_crc() -> None:
    assert pack_word(0xBEEF) == b"\xbe\xef\x92"
    assert pack_words([0x01F4, 0x6667]) == bytes.fromhex("01f433 6667a2")


@pytest.mark.parametrize("value", [-1, 0x10000])
def test_pack_word_refuses_what_is_not_16_bits(value: int) -> None:
    with pytest.raises(ValueError, match=r"0\.\.0xFFFF"):
        pack_word(value)


def test_unpack_words_of_the_datasheet_read_measurement_example() -> None:
    # SCD4x 3.5.2 example: 500 ppm, 25 °C, 37 %RH.
    data = bytes.fromhex("01f433 6667a2 5eb93c")
    assert unpack_words(data, sensor="co2") == (0x01F4, 0x6667, 0x5EB9)


def test_a_bad_crc_is_a_sensor_error_that_names_the_sensor_and_word() -> None:
    data = bytearray.fromhex("01f433 6667a2 5eb93c")
    data[5] ^= 0x01
    with pytest.raises(SensorError) as caught:
        unpack_words(bytes(data), sensor="kitchen", what="read_measurement")
    message = str(caught.value)
    assert "'kitchen'" in message
    assert "word 1 of read_measurement" in message
    assert "got 0xA3, expected 0xA2" in message
    assert isinstance(caught.value, OSError)  # the poller counts it as a failed read


@pytest.mark.parametrize("length", [1, 2, 4, 5])
def test_a_partial_word_is_a_sensor_error(length: int) -> None:
    with pytest.raises(SensorError, match="not whole words"):
        unpack_words(bytes(length), sensor="x")


def test_no_bytes_are_no_words() -> None:
    assert unpack_words(b"", sensor="x") == ()


@given(st.lists(st.binary(min_size=3, max_size=3), min_size=1, max_size=4))
def test_unpack_never_returns_a_value_unless_every_crc_matches(frames: list[bytes]) -> None:
    data = b"".join(frames)
    all_valid = all(crc8(frame[:2]) == frame[2] for frame in frames)
    try:
        words = unpack_words(data, sensor="fuzz")
    except SensorError:
        assert not all_valid
    else:
        assert all_valid
        assert words == tuple(frame[0] << 8 | frame[1] for frame in frames)


@given(st.lists(st.integers(0, 0xFFFF), min_size=1, max_size=4))
def test_pack_then_unpack_is_the_identity(words: list[int]) -> None:
    assert unpack_words(pack_words(words), sensor="x") == tuple(words)


@given(
    st.lists(st.integers(0, 0xFFFF), min_size=1, max_size=3),
    st.data(),
)
def test_every_single_bit_error_is_caught(words: list[int], data: st.DataObject) -> None:
    frame = bytearray(pack_words(words))
    bit = data.draw(st.integers(0, len(frame) * 8 - 1))
    frame[bit // 8] ^= 1 << (bit % 8)
    with pytest.raises(SensorError):
        unpack_words(bytes(frame), sensor="x")


# --- commands -----------------------------------------------------------------------------


def test_command_frame_has_no_crc_on_the_command_and_one_on_each_argument() -> None:
    assert command_frame(0x3682) == b"\x36\x82"
    # SCD4x examples: set_temperature_offset 5.4 °C (3.6.1), set_sensor_altitude 1950 m (3.6.3).
    assert command_frame(0x241D, [0x07E6]) == bytes.fromhex("241d 07e6 48")
    assert command_frame(0x2427, [0x079E]) == bytes.fromhex("2427 079e 09")


def test_command_frame_refuses_a_command_wider_than_16_bits() -> None:
    with pytest.raises(ValueError, match="command"):
        command_frame(0x10000)


class RecordingBus:
    """Only ``i2c_rdwr``; logs each message and answers reads with ``answer``."""

    def __init__(self, answer: bytes = b"") -> None:
        self.answer = answer
        self.log: list[tuple[str, int, bytes | int]] = []

    def i2c_rdwr(self, *msgs: Any) -> None:
        for msg in msgs:
            if msg.flags & I2C_M_RD:
                self.log.append(("read", msg.addr, msg.len))
                ctypes.memmove(msg.buf, self.answer, min(msg.len, len(self.answer)))
            else:
                self.log.append(("write", msg.addr, bytes(msg)))


def test_read_words_writes_waits_then_reads_in_two_transfers() -> None:
    bus = RecordingBus(bytes.fromhex("f89631 9f07c2 3bbe89"))
    events: list[tuple[str, float, int]] = []

    def sleep(seconds: float) -> None:
        events.append(("sleep", seconds, len(bus.log)))

    words = read_words(bus, 0x62, 0x3682, 3, sensor="co2", delay=0.001, sleep=sleep)
    assert words == (0xF896, 0x9F07, 0x3BBE)
    assert bus.log == [("write", 0x62, b"\x36\x82"), ("read", 0x62, 3 * FRAME_BYTES)]
    assert events == [("sleep", 0.001, 1)]  # between the write and the read


def test_read_words_raises_on_a_bad_crc() -> None:
    bus = RecordingBus(bytes.fromhex("f89631 9f07c2 3bbe88"))
    with pytest.raises(SensorError, match=r"'co2'.*word 2 of the answer to command 0x3682"):
        read_words(bus, 0x62, 0x3682, 3, sensor="co2", delay=0.0)


def test_write_command_sleeps_only_when_asked() -> None:
    bus = RecordingBus()
    sleeps: list[float] = []
    write_command(bus, 0x44, 0x3066, sleep=sleeps.append)
    write_command(bus, 0x62, 0x241D, [0x07E6], delay=0.001, sleep=sleeps.append)
    assert bus.log == [("write", 0x44, b"\x30\x66"), ("write", 0x62, bytes.fromhex("241d07e648"))]
    assert sleeps == [0.001]


class EchoChip:
    """A command chip that answers every command with the command word itself."""

    def __init__(self) -> None:
        self.last = b""

    def write_raw(self, data: bytes) -> None:
        self.last = data

    def read_raw(self, length: int) -> bytes:
        return pack_word(self.last[0] << 8 | self.last[1])[:length]

    def read_registers(self, register: int, length: int) -> list[int]:
        raise OSError(errno.EREMOTEIO, os.strerror(errno.EREMOTEIO))

    def write_registers(self, register: int, data: list[int]) -> None:
        raise OSError(errno.EREMOTEIO, os.strerror(errno.EREMOTEIO))


def test_read_words_through_the_simulated_bus() -> None:
    bus = SimBus()
    bus.attach(0x44, EchoChip())
    assert read_words(bus, 0x44, 0xF32D, 1, sensor="t", delay=0.0) == (0xF32D,)


@pytest.mark.parametrize("code", [errno.EREMOTEIO, errno.EIO, errno.ETIMEDOUT])
def test_bus_errors_propagate_with_their_errno(code: int) -> None:
    bus = SimBus()
    bus.attach(0x44, EchoChip())
    bus.inject_faults(code)
    with pytest.raises(OSError) as caught:
        read_words(bus, 0x44, 0xF32D, 1, sensor="t", delay=0.0)
    assert caught.value.errno == code
    assert not isinstance(caught.value, SensorError)


def test_nothing_at_the_address_is_a_nack() -> None:
    with pytest.raises(OSError) as caught:
        read_words(SimBus(), 0x44, 0xF32D, 1, sensor="t", delay=0.0)
    assert caught.value.errno == errno.EREMOTEIO
