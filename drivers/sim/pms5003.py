"""A simulated PMS5003: a serial device (``drivers.sim.pty.SerialDevice``) that streams
data frames in active mode, answers read commands in passive mode and switches modes
on command, so the real parser and driver run against it through a pseudo-terminal.

The room's particulate matter drifts as a seeded random walk. With ``garbage`` > 0
the line is noisy: random bytes, truncated and corrupted frames appear between the
good ones, as on a long cable or while the sensor's fan starts up. Every good frame
sent is kept in ``sent`` so tests can check what came through.
"""

from __future__ import annotations

import random
import threading

from drivers.pms5003 import (
    CMD_CHANGE_MODE,
    CMD_READ_PASSIVE,
    FRAME_SIZE,
    MODE_ACTIVE,
    MODE_PASSIVE,
    START,
    Frame,
    checksum,
    encode_frame,
)

COMMAND_SIZE = 7  # 42 4D CMD DATAH DATAL LRCH LRCL (Appendix II)

# Where the simulated room sits (PM2.5, atmospheric, µg/m³) and how far it may stray.
PM2_5_CENTRE, PM2_5_SPAN = 12.0, 10.0


def reply(cmd: int, data: int) -> bytes:
    """The sensor's 8-byte acknowledgement of a change-mode command: 42 4D 00 04 CMD DATA LRC."""
    body = START + bytes([0x00, 0x04, cmd & 0xFF, data & 0xFF])
    return body + checksum(body).to_bytes(2, "big")


class SimPMS5003:
    """A PMS5003 that starts in active mode, like the real sensor after power-on.

    ``period`` is the seconds between frames in active mode (the real sensor: 2.3 s when
    steady, 0.2..0.8 s when the air changes fast). ``garbage`` is the chance, per good
    frame, that noise precedes it. ``receive`` and ``transmit`` may be called from
    different threads.
    """

    def __init__(
        self,
        *,
        seed: int = 0,
        period: float = 1.0,
        garbage: float = 0.0,
        drift: bool = True,
    ) -> None:
        self.period = period
        self.garbage = garbage
        self.drift = drift
        self.mode = "active"
        self._rng = random.Random(seed)
        self.pm2_5 = PM2_5_CENTRE + self._rng.uniform(-3.0, 3.0)
        #: Good data frames sent, in order.
        self.sent: list[Frame] = []
        #: Commands understood, as (command, data).
        self.commands: list[tuple[int, int]] = []
        self._rx = bytearray()
        self._out = bytearray()
        self._due: float | None = None
        self._lock = threading.Lock()

    # --- the SerialDevice protocol -------------------------------------------------------
    def receive(self, data: bytes) -> None:
        """Commands from the host; anything that is not a valid command is ignored."""
        with self._lock:
            rx = self._rx
            rx += data
            while True:
                start = rx.find(START)
                if start < 0:
                    # Keep a trailing 0x42: it may be the first start character.
                    del rx[: len(rx) - 1 if rx.endswith(START[:1]) else len(rx)]
                    break
                del rx[:start]
                if len(rx) < COMMAND_SIZE:
                    break
                if checksum(rx[:5]) != int.from_bytes(rx[5:COMMAND_SIZE], "big"):
                    del rx[:1]  # resynchronise on the next start character
                    continue
                cmd, data_word = rx[2], int.from_bytes(rx[3:5], "big")
                del rx[:COMMAND_SIZE]
                self._command(cmd, data_word)

    def transmit(self, now: float) -> bytes:
        """In active mode a frame every ``period``; pending answers at once."""
        with self._lock:
            if self.mode == "active":
                if self._due is None:
                    self._due = now
                if now >= self._due:
                    self._emit()
                    # Catch up at most one period: a stalled host gets no burst of old frames.
                    self._due = max(self._due + self.period, now)
            out = bytes(self._out)
            self._out.clear()
            return out

    # --- behaviour -----------------------------------------------------------------------
    def _command(self, cmd: int, data: int) -> None:
        self.commands.append((cmd, data))
        if cmd == CMD_READ_PASSIVE:
            if self.mode == "passive":
                self._emit()
        elif cmd == CMD_CHANGE_MODE and data in (MODE_PASSIVE, MODE_ACTIVE):
            self.mode = "passive" if data == MODE_PASSIVE else "active"
            self._due = None
            self._out += reply(cmd, data)

    def _emit(self) -> None:
        if self.garbage and self._rng.random() < self.garbage:
            self._out += self._noise()
        frame = self.frame()
        self._out += encode_frame(frame)
        self.sent.append(frame)
        if self.drift:
            self._step()

    def frame(self) -> Frame:
        """The frame the sensor would send now: plausible ratios between sizes and counts."""
        pm2_5 = self.pm2_5
        pm1 = pm2_5 * 0.7
        pm10 = pm2_5 * 1.3
        # CF=1 equals atmospheric at low concentrations and reads higher above ~30 µg/m³,
        # as captures from real sensors show.
        cf = 1.0 if pm2_5 < 30 else 1.0 + (pm2_5 - 30) / 100
        count_0_3 = pm2_5 * 150
        return Frame(
            round(pm1 * cf), round(pm2_5 * cf), round(pm10 * cf),
            round(pm1), round(pm2_5), round(pm10),
            round(count_0_3), round(count_0_3 * 0.3), round(count_0_3 * 0.06),
            round(count_0_3 * 0.008), round(count_0_3 * 0.002), round(count_0_3 * 0.0005),
            0,
        )  # fmt: skip

    def _step(self) -> None:
        """One step of a random walk pulled back towards the centre."""
        pull = (PM2_5_CENTRE - self.pm2_5) * 0.05
        value = self.pm2_5 + pull + self._rng.gauss(0.0, 0.5)
        self.pm2_5 = min(max(value, 0.0), PM2_5_CENTRE + PM2_5_SPAN)

    def _noise(self) -> bytes:
        """Random bytes, a truncated frame or a frame with one byte changed."""
        good = encode_frame(self.frame())
        kind = self._rng.randrange(3)
        if kind == 0:
            noise = bytes(self._rng.randrange(256) for _ in range(self._rng.randint(1, 40)))
            return noise + START[: self._rng.randint(0, 2)]  # sometimes a false start
        if kind == 1:
            return good[: self._rng.randrange(1, FRAME_SIZE)]
        corrupt = bytearray(good)
        index = self._rng.randrange(FRAME_SIZE)
        corrupt[index] ^= self._rng.randint(1, 255)
        return bytes(corrupt)
