"""Plantower PMS5003 particulate sensor on a UART: frame layout, a pure resynchronising
parser, and a thin driver that only moves bytes.

Section names refer to the Plantower PMS5003 series data manual v2.x ("Appendix I:
transport protocol - active mode", "Appendix II: transport protocol - passive mode").
As in Adafruit's PM25 driver, framing and checking live apart from the port: the
parser is a pure function of the byte stream, so it is tested (and fuzzed) without
any serial line, and the driver just fills it.
"""

from __future__ import annotations

import contextlib
import struct
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import serial
from pydantic import Field

from drivers.base import Driver, DriverContext, DriverOptions
from gateway.errors import SensorError
from gateway.readings import Measurement

if TYPE_CHECKING:
    from drivers.sim.pms5003 import SimPMS5003

# --- frame layout (Appendix I) ------------------------------------------------------------

START = b"\x42\x4d"  # start characters 1 and 2, "BM"
DATA_LENGTH = 28  # frame length field of a data frame: 13 data words + check code (2*13 + 2)
DATA_WORDS = 13  # data 1..13; data 13 is reserved
FRAME_SIZE = 4 + DATA_LENGTH  # start characters and length field, then the counted bytes: 32
# The answer to a change-mode (0xE1) or sleep (0xE4) command: length 4, then command,
# data, check code. Not in the manual (Appendix II lists an answer for 0xE2 only), but
# sensors send it, e.g. 42 4D 00 04 E1 00 01 74 after "passive".
REPLY_LENGTH = 4
HEADER_SIZE = 4  # start characters + length field

# --- host commands (Appendix II): 42 4D, CMD, DATAH, DATAL, LRCH, LRCL ---------------------

CMD_READ_PASSIVE = 0xE2  # "read in passive mode"; answered with one data frame
CMD_CHANGE_MODE = 0xE1  # DATAL 0x00 passive, 0x01 active
CMD_SLEEP = 0xE4  # DATAL 0x00 sleep, 0x01 wakeup
MODE_PASSIVE = 0x00
MODE_ACTIVE = 0x01
# Replies echo the command and DATAL. Accepting only these keeps a false start in noise
# from passing as a reply: their check codes end in 0x74..0x78, never in the 0x42 of a
# following frame, so a reply can never swallow the start of the next data frame.
REPLY_COMMANDS = (CMD_CHANGE_MODE, CMD_SLEEP)
REPLY_DATA = (0x00, 0x01)

# --- effective values --------------------------------------------------------------------

UNIT_PM = "ug/m3"  # SenML unit of a mass concentration
UNIT_COUNT = "count"  # particles in 0.1 L of air (Appendix I, data 7..12)
PM_QUANTITIES = ("pm1_0", "pm2_5", "pm10")
COUNT_QUANTITIES = ("count_0_3", "count_0_5", "count_1_0", "count_2_5", "count_5_0", "count_10")
#: In active mode the sensor sends every 2.3 s when readings are steady ("stable mode")
#: and every 200..800 ms when they change fast (manual, "Output result"); no frame for
#: longer than this means the sensor is silent.
SILENCE = 3.0


def checksum(data: bytes | bytearray) -> int:
    """The check code of a frame or command: the 16-bit sum of its bytes (Appendix I, II)."""
    return sum(data) & 0xFFFF


def command(cmd: int, data: int = 0) -> bytes:
    """A host command frame: 42 4D, CMD, DATAH, DATAL, then the 16-bit sum of those 5 bytes
    big-endian (Appendix II)."""
    body = START + bytes([cmd & 0xFF]) + (data & 0xFFFF).to_bytes(2, "big")
    return body + checksum(body).to_bytes(2, "big")


READ_PASSIVE = command(CMD_READ_PASSIVE)  # 42 4D E2 00 00 01 71
SET_PASSIVE = command(CMD_CHANGE_MODE, MODE_PASSIVE)  # 42 4D E1 00 00 01 70
SET_ACTIVE = command(CMD_CHANGE_MODE, MODE_ACTIVE)  # 42 4D E1 00 01 01 71


@dataclass(frozen=True, slots=True)
class Frame:
    """The 13 data words of one data frame (Appendix I), in their order on the wire."""

    pm1_0_cf1: int  # data 1: PM1.0, CF=1 standard particle, µg/m³
    pm2_5_cf1: int  # data 2
    pm10_cf1: int  # data 3
    pm1_0_atm: int  # data 4: PM1.0 under atmospheric environment, µg/m³
    pm2_5_atm: int  # data 5
    pm10_atm: int  # data 6
    count_0_3: int  # data 7: particles > 0.3 µm in 0.1 L of air
    count_0_5: int  # data 8
    count_1_0: int  # data 9
    count_2_5: int  # data 10
    count_5_0: int  # data 11
    count_10: int  # data 12
    reserved: int = 0  # data 13

    def pm(self, which: Literal["atmospheric", "standard"]) -> tuple[int, int, int]:
        """PM1.0, PM2.5, PM10 in µg/m³: atmospheric environment, or CF=1 standard particle."""
        if which == "standard":
            return self.pm1_0_cf1, self.pm2_5_cf1, self.pm10_cf1
        return self.pm1_0_atm, self.pm2_5_atm, self.pm10_atm

    def counts(self) -> tuple[int, int, int, int, int, int]:
        """Particles beyond 0.3, 0.5, 1.0, 2.5, 5.0 and 10 µm in 0.1 L of air."""
        return (
            self.count_0_3, self.count_0_5, self.count_1_0,
            self.count_2_5, self.count_5_0, self.count_10,
        )  # fmt: skip

    def words(self) -> tuple[int, ...]:
        """Data 1..13 in wire order."""
        return (*self.pm("standard"), *self.pm("atmospheric"), *self.counts(), self.reserved)


def encode_frame(frame: Frame) -> bytes:
    """The 32 bytes of a data frame: the inverse of ``parse_frame`` (simulator and tests)."""
    body = START + struct.pack(">H13H", DATA_LENGTH, *frame.words())
    return body + checksum(body).to_bytes(2, "big")


def parse_frame(data: bytes | bytearray) -> Frame:
    """One complete 32-byte data frame -> its words; ValueError when it does not check out."""
    if len(data) != FRAME_SIZE:
        raise ValueError(f"a data frame has {FRAME_SIZE} bytes, got {len(data)}")
    if data[:2] != START:
        raise ValueError(f"a frame starts with 42 4D, got {data[:2].hex(' ')}")
    length, *words, check = struct.unpack(">H13HH", data[2:])
    if length != DATA_LENGTH:
        raise ValueError(f"frame length field {length}, expected {DATA_LENGTH}")
    if checksum(data[:-2]) != check:
        raise ValueError(f"check code 0x{check:04x}, computed 0x{checksum(data[:-2]):04x}")
    return Frame(*words)


class FrameParser:
    """Incremental frame finder for the byte stream of a PMS5003; never raises.

    Feed it whatever the port delivered; it returns the data frames completed so
    far and keeps an incomplete tail for the next call. A candidate starts at
    42 4D; its length field must be that of a data frame (28) or of a command reply
    (4, with a known command and data), and its check code must match. A candidate
    that fails drops only its first byte and the scan resumes one byte later, so a
    good frame that begins inside a corrupt one is still found.
    """

    def __init__(self) -> None:
        self._buffer = bytearray()
        #: Bytes thrown away: noise, truncated and corrupt frames.
        self.discarded = 0
        #: Candidates (42 4D ...) refused for their length field or check code.
        self.bad_frames = 0
        #: Good data frames returned.
        self.frames = 0
        #: Good command replies seen (and skipped): 42 4D 00 04 CMD DATAL LRC.
        self.replies = 0

    @property
    def pending(self) -> int:
        """Bytes held back as the possible start of a frame."""
        return len(self._buffer)

    def reset(self) -> None:
        """Forget the incomplete tail (after reopening the port, say)."""
        self.discarded += len(self._buffer)
        self._buffer.clear()

    def feed(self, data: bytes | bytearray) -> list[Frame]:
        """The data frames completed by ``data``, in order."""
        buf = self._buffer
        buf += data
        found: list[Frame] = []
        pos = 0
        while True:
            start = buf.find(START, pos)
            if start < 0:
                # Keep a trailing 0x42: it may be the first start character.
                end = len(buf) - 1 if buf.endswith(START[:1]) else len(buf)
                self.discarded += end - pos
                pos = end
                break
            self.discarded += start - pos
            pos = start
            if len(buf) - start < HEADER_SIZE:
                break  # wait for the length field
            length = int.from_bytes(buf[start + 2 : start + 4], "big")
            if length not in (DATA_LENGTH, REPLY_LENGTH):
                self._refuse()
                pos = start + 1
                continue
            end = start + HEADER_SIZE + length
            if len(buf) < end:
                break  # wait for the rest of the frame
            check = int.from_bytes(buf[end - 2 : end], "big")
            known = length == DATA_LENGTH or (
                buf[start + 4] in REPLY_COMMANDS and buf[start + 5] in REPLY_DATA
            )
            if not known or checksum(buf[start : end - 2]) != check:
                self._refuse()
                pos = start + 1
                continue
            if length == DATA_LENGTH:
                found.append(Frame(*struct.unpack_from(">13H", buf, start + HEADER_SIZE)))
                self.frames += 1
            else:
                self.replies += 1
            pos = end
        del buf[:pos]
        return found

    def _refuse(self) -> None:
        self.bad_frames += 1
        self.discarded += 1


def frame_measurements(
    frames: Sequence[Frame],
    *,
    which: Literal["atmospheric", "standard"],
    counts: bool,
    when: float | None,
) -> list[Measurement]:
    """Measurements of the mean of ``frames`` (a single frame: its own values), at ``when``.

    Means are rounded to 0.01: the sensor reports whole µg/m³ and whole counts, so
    more digits only cost bytes in every batch.
    """
    if not frames:
        return []
    n = len(frames)
    pm = [round(sum(f.pm(which)[i] for f in frames) / n, 2) for i in range(3)]
    out = [Measurement(q, UNIT_PM, float(v), when) for q, v in zip(PM_QUANTITIES, pm, strict=True)]
    if counts:
        means = [round(sum(f.counts()[i] for f in frames) / n, 2) for i in range(6)]
        out += [
            Measurement(q, UNIT_COUNT, float(v), when)
            for q, v in zip(COUNT_QUANTITIES, means, strict=True)
        ]
    return out


# --- the driver --------------------------------------------------------------------------


class PMS5003Options(DriverOptions):
    """Options of a PMS5003 (also PMS7003 and PMSA003, which share the protocol)."""

    mode: Literal["active", "passive"] = Field(
        default="active",
        description="active: the sensor streams frames; passive: one frame per read, on request",
    )
    which: Literal["atmospheric", "standard"] = Field(
        default="atmospheric",
        description="PM values under atmospheric environment, or CF=1 standard particle",
    )
    counts: bool = Field(
        default=False, description="also report particle counts per 0.1 L (6 more quantities)"
    )
    average: bool = Field(
        default=True,
        description="active mode: one mean of the frames since the last read, not every frame",
    )


class PMS5003(Driver):
    """A PMS5003 on a serial port, 9600 8N1.

    Active mode (the sensor's power-on default): ``read`` takes every frame that
    arrived since the previous read and returns their mean (``average: true``) or
    each of them. Passive mode: ``read`` asks for one frame and waits for it.
    """

    options_model: ClassVar[type[DriverOptions]] = PMS5003Options
    bus_kind: ClassVar[str] = "serial"
    # Fixed: 9600 baud, no parity, 1 stop bit (Appendix I, "serial port").
    default_baudrate: ClassVar[int] = 9600
    # "Range of measurement" 0..500 µg/m³, "maximum range" >= 1000 µg/m³ (manual, Technical
    # Index); counts are 16-bit words.
    ranges: ClassVar[dict[str, tuple[float, float]]] = {
        **dict.fromkeys(PM_QUANTITIES, (0.0, 1000.0)),
        **dict.fromkeys(COUNT_QUANTITIES, (0.0, 65535.0)),
    }

    #: Seconds one blocking port read waits for a byte while a frame is awaited.
    poll: ClassVar[float] = 0.05
    #: Most seconds spent emptying the OS buffer, so a babbling line cannot hold a read.
    drain_budget: ClassVar[float] = 0.2
    #: Passive mode: seconds to wait for the answer to a read command.
    answer_timeout: ClassVar[float] = 2.0

    def __init__(
        self,
        context: DriverContext,
        options: DriverOptions,
        *,
        open_port: Callable[..., Any] = serial.serial_for_url,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(context, options)
        if not isinstance(options, PMS5003Options):
            raise TypeError(f"PMS5003 needs PMS5003Options, got {type(options).__name__}")
        self._opts = options
        self._open_port = open_port
        self._clock = clock
        self._port: Any = None
        self.parser = FrameParser()
        # Wall time of the last look at the port, and of the last frame (or of setup).
        self._drained_at = 0.0
        self._heard_at = 0.0

    def _where(self) -> str:
        return f"PMS5003 on {self.context.port}"

    def setup(self) -> None:
        """(Re)open the port and put the sensor in the configured mode.

        The mode command is sent in active mode too: a sensor left in passive mode
        by an earlier configuration would otherwise stay silent.
        """
        self.close()
        if not self.context.port:
            raise SensorError(f"sensor {self.context.sensor!r}: the PMS5003 needs a serial port")
        try:
            self._port = self._open_port(
                self.context.port,
                baudrate=self.context.baudrate or self.default_baudrate,
                bytesize=8,
                parity="N",
                stopbits=1,
                timeout=self.poll,
                write_timeout=1.0,
            )
            self._port.write(SET_PASSIVE if self._opts.mode == "passive" else SET_ACTIVE)
        except OSError as err:  # serial.SerialException is an OSError
            self.close()
            raise SensorError(
                f"{self._where()}: {err} — check the device path and its permissions"
            ) from err
        self.parser.reset()
        self._drained_at = self._heard_at = self._clock()

    def read(self) -> list[Measurement]:
        """Active mode: the frames since the last read (their mean, or each one); passive
        mode: one frame on request. Raises SensorError when the sensor stays silent."""
        if self._port is None:
            self.setup()
        try:
            if self._opts.mode == "passive":
                return self._read_passive()
            return self._read_active()
        except SensorError:
            raise
        except OSError as err:
            self.close()  # the port is gone (USB unplugged): setup reopens it
            raise SensorError(f"{self._where()}: {err} — is it still connected?") from err

    def _read_active(self) -> list[Measurement]:
        stamped = self._receive()
        if not stamped:
            # Nothing new: wait for the next frame, up to SILENCE after the last one.
            deadline = time.monotonic() + max(0.0, self._heard_at + SILENCE - self._clock())
            stamped = self._await(deadline)
        if not stamped:
            raise SensorError(
                f"{self._where()}: no valid frame for {self._clock() - self._heard_at:.0f} s"
                f" ({self.parser.discarded} bytes discarded, {self.parser.bad_frames} bad"
                " frames) — check the wiring (sensor TX to our RX), the 5 V supply and the fan"
            )
        opts = self._opts
        if opts.average:
            frames = [frame for _, frame in stamped]
            when = stamped[-1][0]
            return frame_measurements(frames, which=opts.which, counts=opts.counts, when=when)
        out: list[Measurement] = []
        for when, frame in stamped:
            out += frame_measurements([frame], which=opts.which, counts=opts.counts, when=when)
        return out

    def _read_passive(self) -> list[Measurement]:
        self._receive()  # drop frames sent before this request: they are not its answer
        self._port.write(READ_PASSIVE)
        stamped = self._await(time.monotonic() + self.answer_timeout)
        if not stamped:
            raise SensorError(
                f"{self._where()}: no answer to the passive read command within"
                f" {self.answer_timeout:g} s — check the wiring (our TX to the sensor's RX)"
            )
        when, frame = stamped[-1]
        opts = self._opts
        return frame_measurements([frame], which=opts.which, counts=opts.counts, when=when)

    def _await(self, deadline: float) -> list[tuple[float, Frame]]:
        """Block until at least one frame has arrived, or ``deadline`` (monotonic) passes."""
        while True:
            first = self._port.read(1)  # waits up to ``poll`` seconds for a byte
            stamped = self._receive(first)
            if stamped or time.monotonic() >= deadline:
                return stamped

    def _receive(self, first: bytes = b"") -> list[tuple[float, Frame]]:
        """Parse what the OS has buffered, each frame with its (estimated) arrival time.

        Bytes that queued while nobody read arrived at unknown moments since the
        previous look: their frames are spread evenly over that span, the newest at
        now. Frames that arrive while ``_await`` watches the port are exact to ``poll``.
        """
        data = bytearray(first)
        stop = time.monotonic() + self.drain_budget
        while (waiting := self._port.in_waiting) and time.monotonic() < stop:
            data += self._port.read(waiting)
        now = self._clock()
        frames = self.parser.feed(data)
        span = max(0.0, now - self._drained_at)
        self._drained_at = now
        if not frames:
            return []
        self._heard_at = now
        n = len(frames)
        return [(now - span * (n - 1 - i) / n, frame) for i, frame in enumerate(frames)]

    def close(self) -> None:
        """Close the port; the next read sets up again."""
        port, self._port = self._port, None
        if port is not None:
            with contextlib.suppress(OSError):  # already gone with its device
                port.close()

    @classmethod
    def simulator(cls, address: int, seed: int) -> SimPMS5003:
        """A simulated PMS5003 for ``port: sim``, streaming a frame every second."""
        from drivers.sim.pms5003 import SimPMS5003  # noqa: PLC0415 - the sim imports this module

        return SimPMS5003(seed=seed)
