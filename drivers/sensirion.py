"""Sensirion family code: the CRC-8, 16-bit words with their CRC, and the command transfer.

Sensirion's I2C chips (SHT3x, SCD4x, SGP4x, SEN5x, ...) share one framing: the
master sends a 16-bit command, optionally followed by argument words, waits the
command's execution time, then reads words; every word travels as two bytes,
most significant first, followed by a CRC-8 of those two bytes. This module is
that framing, once, as ESPHome's ``sensirion_common`` is for its drivers; the
chip drivers only name commands and convert words.

References: SHT3x-DIS datasheet (version 5, May 2018) 4.12, Table 20; SCD4x
datasheet (version 1.3, September 2022) 3.2 and 3.11. Both give the same CRC.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence

from smbus2 import i2c_msg

from drivers.base import SMBusLike
from gateway.errors import SensorError

# --- CRC-8 (SHT3x-DIS Table 20, SCD4x 3.11) ------------------------------------------------

CRC8_POLYNOMIAL = 0x31  # x^8 + x^5 + x^4 + 1; no reflection of input or output
CRC8_INIT = 0xFF  # initialisation value
# Final XOR is 0x00, so there is nothing to apply after the loop.
CRC8_EXAMPLE = (0xBEEF, 0x92)  # "CRC (0xBEEF) = 0x92", the datasheets' own example

WORD_BYTES = 2  # a data word is 16 bits, most significant byte first (SCD4x 3.2)
FRAME_BYTES = 3  # ... and is immediately followed by its CRC byte
WORD_MAX = 0xFFFF


def crc8(data: bytes | Sequence[int]) -> int:
    """The Sensirion CRC-8 of ``data`` (two bytes per word on the wire).

    Bitwise rather than table-driven: at six bytes a read the table buys nothing,
    and the loop reads like the datasheet's definition.
    """
    crc = CRC8_INIT
    for byte in data:
        crc ^= byte & 0xFF
        for _ in range(8):
            crc = ((crc << 1) ^ CRC8_POLYNOMIAL) if crc & 0x80 else crc << 1
            crc &= 0xFF
    return crc


def pack_word(value: int) -> bytes:
    """One word as it travels: MSB, LSB, CRC."""
    if not 0 <= value <= WORD_MAX:
        raise ValueError(f"a Sensirion word is 0..0xFFFF, got {value!r}")
    data = value.to_bytes(WORD_BYTES, "big")
    return data + bytes([crc8(data)])


def pack_words(values: Iterable[int]) -> bytes:
    """Several words, each followed by its CRC."""
    return b"".join(pack_word(value) for value in values)


def unpack_words(
    data: bytes | Sequence[int], *, sensor: str, what: str = "the answer"
) -> tuple[int, ...]:
    """The words in ``data`` (groups of MSB, LSB, CRC), every CRC checked.

    A single bad CRC makes the whole answer unusable: the words are read in one
    transfer, so a glitch that hit one may have hit the others undetected. It
    raises ``SensorError`` (an ``OSError``, so the poller counts and retries it)
    naming ``sensor``; nothing is returned that has not passed its CRC.
    """
    raw = bytes(data)
    if len(raw) % FRAME_BYTES:
        raise SensorError(
            f"sensor {sensor!r}: {what} is {len(raw)} bytes, not whole words of"
            f" {FRAME_BYTES} bytes (2 data + CRC)"
        )
    words = []
    for index in range(0, len(raw), FRAME_BYTES):
        msb, lsb, received = raw[index : index + FRAME_BYTES]
        expected = crc8((msb, lsb))
        if received != expected:
            raise SensorError(
                f"sensor {sensor!r}: bad CRC in word {index // FRAME_BYTES} of {what}"
                f" (got 0x{received:02X}, expected 0x{expected:02X} for 0x{msb:02X}{lsb:02X})"
                " — the reading is discarded; repeated CRC errors point at long wires,"
                " missing pull-ups or a noisy supply"
            )
        words.append(msb << 8 | lsb)
    return tuple(words)


def command_frame(command: int, args: Sequence[int] = ()) -> bytes:
    """The bytes of a command write: the 16-bit command (no CRC of its own), then
    each argument word with its CRC, which the chip requires (SCD4x 3.2)."""
    if not 0 <= command <= WORD_MAX:
        raise ValueError(f"a Sensirion command is 0..0xFFFF, got {command!r}")
    return command.to_bytes(WORD_BYTES, "big") + pack_words(args)


# --- the transfers ---------------------------------------------------------------------------


def write_command(
    bus: SMBusLike,
    address: int,
    command: int,
    args: Sequence[int] = (),
    *,
    delay: float = 0.0,
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    """Send a command (and its argument words), then wait its execution time ``delay``.

    The wait belongs to the write: the chip ignores or NACKs anything sent while
    it is still executing (SCD4x 3.3: "Commands must not be sent while a previous
    command is being processed").
    """
    bus.i2c_rdwr(i2c_msg.write(address, command_frame(command, args)))
    if delay > 0:
        sleep(delay)


def read_words(
    bus: SMBusLike,
    address: int,
    command: int,
    count: int,
    *,
    sensor: str,
    delay: float,
    sleep: Callable[[float], None] = time.sleep,
) -> tuple[int, ...]:
    """Send ``command``, wait ``delay`` seconds, read ``count`` words and check their CRCs.

    Two separate transfers, not one combined write-read: the chip only answers
    the read header once the command's execution time has passed, and NACKs it
    before (SCD4x 3.3; SHT3x-DIS 4.3 for measurements without clock stretching).
    A NACK surfaces as ``OSError`` (errno 121, EREMOTEIO) from the bus.
    """
    write_command(bus, address, command, delay=delay, sleep=sleep)
    answer = i2c_msg.read(address, count * FRAME_BYTES)
    bus.i2c_rdwr(answer)
    return unpack_words(bytes(answer), sensor=sensor, what=f"the answer to command 0x{command:04X}")
