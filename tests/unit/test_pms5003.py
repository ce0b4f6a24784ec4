"""PMS5003: frame layout and check code by hand, the parser fuzzed, the driver against a
fake port and through a real pseudo-terminal with the simulator, and ``wsn-gateway read``."""

from __future__ import annotations

import json
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from drivers.base import DriverContext, DriverOptions, load_driver, out_of_range
from drivers.pms5003 import (
    COUNT_QUANTITIES,
    FRAME_SIZE,
    PM_QUANTITIES,
    PMS5003,
    READ_PASSIVE,
    SET_ACTIVE,
    SET_PASSIVE,
    SILENCE,
    START,
    Frame,
    FrameParser,
    PMS5003Options,
    checksum,
    command,
    encode_frame,
    frame_measurements,
    parse_frame,
)
from drivers.sim.pms5003 import SimPMS5003, reply
from drivers.sim.pty import PtyDevice
from gateway.cli import main
from gateway.config import load_settings
from gateway.errors import SensorError
from gateway.readings import Measurement

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "config" / "examples" / "pms5003.yaml"

# A data frame laid out by hand after Appendix I: start characters, frame length 28, then
# data 1..13 as big-endian words, then the check code. Data: PM1.0/2.5/10 CF=1 5, 8, 9;
# atmospheric 5, 8, 9; counts 1023 (0x03FF), 300 (0x012C), 50, 4, 1, 0; data 13 0x9700.
# Check code by hand: 0x42 + 0x4D + 0x00 + 0x1C = 171; data bytes 5+8+9+5+8+9 = 44,
# 0x03+0xFF = 258, 0x01+0x2C = 45, 50 + 4 + 1 + 0, 0x97 = 151: 553; 171 + 553 = 724 = 0x02D4.
HAND_FRAME = bytes.fromhex(
    "424d 001c"
    " 0005 0008 0009"  # PM1.0, PM2.5, PM10, CF=1
    " 0005 0008 0009"  # PM1.0, PM2.5, PM10, atmospheric
    " 03ff 012c 0032 0004 0001 0000"  # > 0.3, 0.5, 1.0, 2.5, 5.0, 10 um per 0.1 L
    " 9700"  # data 13, reserved
    " 02d4"  # check code
)
HAND_VALUES = Frame(5, 8, 9, 5, 8, 9, 1023, 300, 50, 4, 1, 0, 0x9700)

word = st.integers(0, 0xFFFF)
frames = st.builds(Frame, *([word] * 13))
# Noise with the pieces that confuse a parser most: start characters and frame headers.
FALSE_STARTS = [b"\x42", b"\x4d", START, START + b"\x00\x1c", START + b"\x00\x04"]
garbage = st.lists(st.sampled_from(FALSE_STARTS) | st.binary(max_size=12), max_size=6).map(b"".join)


def values(measurements: list[Measurement]) -> dict[str, float]:
    out: dict[str, float] = {}
    for m in measurements:
        assert isinstance(m.value, float)
        out[m.quantity] = m.value
    return out


# --- layout and check codes ----------------------------------------------------------------


def test_hand_built_frame_checks_out_and_parses() -> None:
    assert len(HAND_FRAME) == FRAME_SIZE == 32
    assert checksum(HAND_FRAME[:30]) == 0x02D4
    assert parse_frame(HAND_FRAME) == HAND_VALUES
    assert encode_frame(HAND_VALUES) == HAND_FRAME
    assert FrameParser().feed(HAND_FRAME) == [HAND_VALUES]


def test_checksum_is_a_16_bit_sum() -> None:
    assert checksum(b"\xff" * 300) == (255 * 300) & 0xFFFF  # wraps past 0xFFFF


@pytest.mark.parametrize(
    ("frame", "expected"),
    [
        # Appendix II: 42 4D CMD DATAH DATAL LRCH LRCL; LRC = sum of the first five bytes.
        (READ_PASSIVE, "42 4d e2 00 00 01 71"),  # 0x42 + 0x4D + 0xE2 = 0x171
        (SET_PASSIVE, "42 4d e1 00 00 01 70"),  # 0x42 + 0x4D + 0xE1 = 0x170
        (SET_ACTIVE, "42 4d e1 00 01 01 71"),  # + DATAL 0x01 = 0x171
        (command(0xE4, 0x0001), "42 4d e4 00 01 01 74"),  # wakeup, for good measure
    ],
)
def test_command_frames_and_their_check_codes(frame: bytes, expected: str) -> None:
    assert frame.hex(" ") == expected


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda b: b[:31], "32 bytes"),
        (lambda b: b"\x42\x4e" + b[2:], "starts with 42 4D"),
        (lambda b: b[:3] + b"\x1d" + b[4:], "length field 29"),
        (lambda b: b[:30] + b"\x02\xd5", "check code 0x02d5"),
    ],
)
def test_parse_frame_refuses_bad_frames(mutate: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_frame(mutate(HAND_FRAME))  # type: ignore[operator]


@given(frames)
def test_encode_parse_round_trip(frame: Frame) -> None:
    assert parse_frame(encode_frame(frame)) == frame


# --- the parser ---------------------------------------------------------------------------


def test_parser_byte_by_byte_keeps_the_tail() -> None:
    parser = FrameParser()
    got = [f for byte in HAND_FRAME for f in parser.feed(bytes([byte]))]
    assert got == [HAND_VALUES]
    assert (parser.pending, parser.discarded, parser.frames) == (0, 0, 1)


def test_parser_resynchronises_after_noise_and_false_starts() -> None:
    parser = FrameParser()
    noise = b"\x00\x42\x42\x4d\x00\x1c\x01\x02"  # a false start with a good length field
    truncated = HAND_FRAME[:20]
    assert parser.feed(noise + truncated + HAND_FRAME + b"\x42") == [HAND_VALUES]
    assert parser.pending == 1  # a trailing 0x42 may start the next frame
    assert parser.feed(HAND_FRAME[1:]) == [HAND_VALUES]
    assert parser.discarded == len(noise) + len(truncated)
    assert parser.bad_frames == 2  # the false start and the truncated frame


def test_a_frame_starting_inside_a_corrupt_one_is_found() -> None:
    # A corrupt frame whose data carries a complete good frame: the candidate at the
    # outer start fails its check code, drops one byte only, and the scan finds the inner.
    outer = bytearray(encode_frame(HAND_VALUES) * 2)
    outer[3] = 0x40  # length field 64: not a frame length
    blob = bytes(outer[:4]) + HAND_FRAME
    assert FrameParser().feed(blob) == [HAND_VALUES]
    # Same with a plausible length and a wrong check code.
    header = START + b"\x00\x1c"
    assert FrameParser().feed(header + HAND_FRAME) == [HAND_VALUES]


def test_command_replies_are_skipped_and_counted() -> None:
    parser = FrameParser()
    ack = reply(0xE1, 0x00)
    assert ack.hex(" ") == "42 4d 00 04 e1 00 01 74"  # what real sensors answer
    assert parser.feed(ack + HAND_FRAME + reply(0xE1, 0x01)) == [HAND_VALUES]
    assert (parser.replies, parser.discarded, parser.bad_frames) == (2, 0, 0)


def test_only_known_replies_are_taken() -> None:
    parser = FrameParser()
    odd = START + b"\x00\x04\xe2\x00"  # a "reply" to the read command does not exist
    odd += checksum(odd).to_bytes(2, "big")
    assert parser.feed(odd + reply(0xE4, 0x00)) == []
    assert (parser.replies, parser.bad_frames, parser.discarded) == (1, 1, 8)
    # A reply's check code never ends in 0x42, so none can swallow the next frame's start.
    assert {reply(c, d)[-1] for c in (0xE1, 0xE4) for d in (0, 1)} == {0x74, 0x75, 0x77, 0x78}


def test_reset_forgets_the_tail() -> None:
    parser = FrameParser()
    parser.feed(HAND_FRAME[:10])
    parser.reset()
    assert parser.pending == 0
    assert parser.feed(HAND_FRAME[10:]) == []
    assert parser.discarded == 32


@settings(max_examples=300)
@given(st.lists(st.binary(max_size=80), max_size=8))
def test_arbitrary_bytes_never_raise_and_every_byte_is_accounted_for(chunks: list[bytes]) -> None:
    parser = FrameParser()
    found = [f for chunk in chunks for f in parser.feed(chunk)]
    fed = sum(map(len, chunks))
    assert len(found) == parser.frames
    used = parser.frames * FRAME_SIZE + parser.replies * 8
    assert parser.discarded + parser.pending + used == fed
    assert parser.pending < FRAME_SIZE


@settings(max_examples=300)
@given(frames, st.integers(0, FRAME_SIZE - 1), st.integers(1, 255))
def test_a_corrupted_frame_never_yields_a_frame(frame: Frame, index: int, flip: int) -> None:
    corrupt = bytearray(encode_frame(frame))
    corrupt[index] ^= flip
    parser = FrameParser()
    assert parser.feed(corrupt) == []
    # ... and the next good frame still comes through, alone.
    good = Frame(*range(13))
    assert parser.feed(encode_frame(good)) == [good]


def _split(blob: bytes, cuts: list[int]) -> Iterator[bytes]:
    points = sorted({c % (len(blob) + 1) for c in cuts})
    start = 0
    for point in points:
        yield blob[start:point]
        start = point
    yield blob[start:]


@settings(max_examples=200)
@given(
    st.lists(st.tuples(garbage, frames), min_size=1, max_size=6),
    garbage,
    st.lists(st.integers(0, 10_000), max_size=10),
)
def test_frames_in_garbage_are_all_recovered_in_order(
    pairs: list[tuple[bytes, Frame]], tail: bytes, cuts: list[int]
) -> None:
    blob = b"".join(garbage + encode_frame(frame) for garbage, frame in pairs) + tail
    parser = FrameParser()
    found = [f for chunk in _split(blob, cuts) for f in parser.feed(chunk)]
    expected = [frame for _, frame in pairs]
    if not any(START in garbage for garbage, _ in pairs) and START not in tail:
        assert found == expected
    else:  # garbage may itself hold frames, but never hides a good one
        rest = iter(found)
        assert all(any(f == want for f in rest) for want in expected)


# --- measurements --------------------------------------------------------------------------


def test_measurements_of_one_frame() -> None:
    got = frame_measurements([HAND_VALUES], which="atmospheric", counts=True, when=12.5)
    assert [m.quantity for m in got] == [*PM_QUANTITIES, *COUNT_QUANTITIES]
    assert {m.unit for m in got[:3]} == {"ug/m3"}
    assert {m.unit for m in got[3:]} == {"count"}
    assert {m.time for m in got} == {12.5}
    assert values(got) == {
        "pm1_0": 5.0, "pm2_5": 8.0, "pm10": 9.0,
        "count_0_3": 1023.0, "count_0_5": 300.0, "count_1_0": 50.0,
        "count_2_5": 4.0, "count_5_0": 1.0, "count_10": 0.0,
    }  # fmt: skip


def test_standard_and_atmospheric_pick_their_words() -> None:
    frame = Frame(1, 2, 3, 4, 5, 6, 0, 0, 0, 0, 0, 0)
    std = frame_measurements([frame], which="standard", counts=False, when=None)
    atm = frame_measurements([frame], which="atmospheric", counts=False, when=None)
    assert list(values(std).values()) == [1.0, 2.0, 3.0]
    assert list(values(atm).values()) == [4.0, 5.0, 6.0]


def test_mean_of_frames_is_rounded_to_hundredths() -> None:
    a = Frame(0, 0, 0, 10, 10, 10, 1, 0, 0, 0, 0, 0)
    b = Frame(0, 0, 0, 11, 11, 12, 2, 0, 0, 0, 0, 0)
    c = Frame(0, 0, 0, 11, 12, 12, 2, 0, 0, 0, 0, 0)
    got = values(frame_measurements([a, b, c], which="atmospheric", counts=True, when=None))
    assert (got["pm1_0"], got["pm2_5"], got["pm10"]) == (10.67, 11.0, 11.33)
    assert got["count_0_3"] == 1.67
    assert frame_measurements([], which="atmospheric", counts=True, when=None) == []


def test_datasheet_ranges() -> None:
    assert not out_of_range(PMS5003, Measurement("pm2_5", "ug/m3", 1000.0))
    assert out_of_range(PMS5003, Measurement("pm10", "ug/m3", 1001.0))
    assert out_of_range(PMS5003, Measurement("pm1_0", "ug/m3", -1.0))
    assert not out_of_range(PMS5003, Measurement("count_0_3", "count", 65535.0))


# --- the driver against a fake port ---------------------------------------------------------


class FakePort:
    """The pyserial calls the driver makes, over an in-memory input queue."""

    def __init__(self) -> None:
        self.incoming = bytearray()
        self.written: list[bytes] = []
        self.closed = False
        self.fail: OSError | None = None
        self.answer: bytes = b""  # queued as input when the host writes anything

    @property
    def in_waiting(self) -> int:
        if self.fail:
            raise self.fail
        return len(self.incoming)

    def read(self, size: int = 1) -> bytes:
        if self.fail:
            raise self.fail
        data = bytes(self.incoming[:size])
        del self.incoming[:size]
        return data

    def write(self, data: bytes) -> int:
        self.written.append(bytes(data))
        self.incoming += self.answer
        return len(data)

    def close(self) -> None:
        self.closed = True


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def fake_driver(**options: object) -> tuple[PMS5003, list[FakePort], Clock]:
    ports: list[FakePort] = []
    clock = Clock()

    def open_port(url: str, **kwargs: object) -> FakePort:
        assert url == "/dev/ttyFAKE"
        assert kwargs["baudrate"] == 9600
        assert (kwargs["bytesize"], kwargs["parity"], kwargs["stopbits"]) == (8, "N", 1)
        ports.append(FakePort())
        return ports[-1]

    context = DriverContext("air", port="/dev/ttyFAKE", baudrate=9600)
    options_model = PMS5003Options.model_validate(options)
    return PMS5003(context, options_model, open_port=open_port, clock=clock), ports, clock


def test_setup_sends_the_mode_command() -> None:
    driver, ports, _ = fake_driver()
    driver.setup()
    assert ports[0].written == [SET_ACTIVE]
    passive, ports, _ = fake_driver(mode="passive")
    passive.setup()
    assert ports[0].written == [SET_PASSIVE]


def test_active_average_of_queued_frames_at_the_newest_time() -> None:
    driver, ports, clock = fake_driver()
    driver.setup()
    a, b = (
        Frame(0, 0, 0, 10, 20, 30, 0, 0, 0, 0, 0, 0),
        Frame(0, 0, 0, 12, 22, 33, 0, 0, 0, 0, 0, 0),
    )
    ports[0].incoming += encode_frame(a) + b"\x00junk" + encode_frame(b)
    clock.now += 4.0
    got = driver.read()
    assert values(got) == {"pm1_0": 11.0, "pm2_5": 21.0, "pm10": 31.5}
    assert {m.time for m in got} == {1004.0}
    assert driver.parser.discarded == 5


def test_active_every_frame_with_times_spread_since_the_last_look() -> None:
    driver, ports, clock = fake_driver(average=False, counts=True)
    driver.setup()  # looks at the port at 1000.0
    for pm in (10, 11, 12, 13):
        ports[0].incoming += encode_frame(Frame(0, 0, 0, pm, pm, pm, 1, 1, 1, 1, 1, 1))
    clock.now = 1008.0
    got = driver.read()
    assert len(got) == 4 * 9
    pm1 = [(m.value, m.time) for m in got if m.quantity == "pm1_0"]
    assert pm1 == [(10.0, 1002.0), (11.0, 1004.0), (12.0, 1006.0), (13.0, 1008.0)]


def test_active_waits_for_a_frame_then_fails_when_silent() -> None:
    driver, _, clock = fake_driver()
    driver.setup()
    clock.now += SILENCE  # nothing since setup for SILENCE seconds: one last look
    started = time.monotonic()
    with pytest.raises(SensorError, match="no valid frame for 3 s") as caught:
        driver.read()
    assert time.monotonic() - started < 0.5
    assert isinstance(caught.value, OSError)


def test_port_error_becomes_a_sensor_error_and_the_next_read_reopens() -> None:
    driver, ports, _ = fake_driver()
    driver.setup()
    ports[0].fail = OSError(5, "Input/output error")
    with pytest.raises(SensorError, match="still connected"):
        driver.read()
    assert ports[0].closed
    driver.setup()  # what the poller does after a failed read
    ports[1].incoming += HAND_FRAME
    assert values(driver.read())["pm2_5"] == 8.0


def test_open_failure_is_a_sensor_error() -> None:
    def refuse(url: str, **kwargs: object) -> FakePort:
        raise OSError(2, "No such file or directory")

    driver = PMS5003(DriverContext("air", port="/dev/ttyNONE"), PMS5003Options(), open_port=refuse)
    with pytest.raises(SensorError, match=r"/dev/ttyNONE.*No such file"):
        driver.setup()


def test_passive_read_asks_and_drops_stale_frames() -> None:
    driver, ports, clock = fake_driver(mode="passive")
    driver.setup()
    port = ports[0]
    port.incoming += encode_frame(Frame(0, 0, 0, 99, 99, 99, 0, 0, 0, 0, 0, 0))  # stale
    port.answer = HAND_FRAME
    got = driver.read()
    assert port.written == [SET_PASSIVE, READ_PASSIVE]
    assert values(got) == {"pm1_0": 5.0, "pm2_5": 8.0, "pm10": 9.0}
    assert {m.time for m in got} == {clock.now}


def test_passive_without_answer_is_a_sensor_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(PMS5003, "answer_timeout", 0.1)
    driver, _, _ = fake_driver(mode="passive")
    with pytest.raises(SensorError, match="no answer to the passive read command"):
        driver.read()  # sets up by itself


def test_missing_port_and_wrong_options() -> None:
    with pytest.raises(SensorError, match="needs a serial port"):
        PMS5003(DriverContext("air"), PMS5003Options()).setup()
    with pytest.raises(TypeError, match="PMS5003Options"):
        PMS5003(DriverContext("air"), DriverOptions())


@pytest.mark.parametrize(
    "options", [{"mode": "fast"}, {"which": "cf1"}, {"counts": "many"}, {"interval": 3}]
)
def test_options_refuse_unknown_values(options: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        PMS5003Options.model_validate(options)


def test_options_defaults_and_registry() -> None:
    opts = PMS5003Options()
    assert (opts.mode, opts.which, opts.counts, opts.average) == (
        "active", "atmospheric", False, True,
    )  # fmt: skip
    assert load_driver("pms5003") is PMS5003
    assert PMS5003.bus_kind == "serial"
    assert PMS5003.default_baudrate == 9600
    assert isinstance(PMS5003.simulator(0, 5), SimPMS5003)


# --- the simulator on its own ---------------------------------------------------------------


def test_sim_streams_in_active_mode_and_answers_in_passive_mode() -> None:
    sim = SimPMS5003(seed=1, period=1.0)
    parser = FrameParser()
    assert parser.feed(sim.transmit(0.0)) == sim.sent[:1]
    assert sim.transmit(0.5) == b""
    assert len(parser.feed(sim.transmit(1.0))) == 1
    sim.receive(b"\x01" + SET_PASSIVE[:3])  # noise, and a command split in two
    sim.receive(SET_PASSIVE[3:])
    assert sim.mode == "passive"
    assert sim.transmit(5.0) == reply(0xE1, 0x00)  # the ack, but no frame
    sim.receive(READ_PASSIVE)
    assert parser.feed(sim.transmit(5.1)) == [sim.sent[-1]]
    assert len(sim.sent) == 3
    sim.receive(SET_ACTIVE)
    assert sim.mode == "active"
    assert parser.feed(sim.transmit(6.0)) == [sim.sent[-1]]  # streams again at once


def test_sim_ignores_commands_with_a_bad_check_code() -> None:
    sim = SimPMS5003()
    sim.receive(SET_PASSIVE[:-1] + b"\x00")
    assert sim.mode == "active"
    assert sim.commands == []


def test_sim_garbage_never_hides_a_good_frame() -> None:
    sim = SimPMS5003(seed=3, period=1.0, garbage=0.7)
    parser = FrameParser()
    found = [f for step in range(400) for f in parser.feed(sim.transmit(float(step)))]
    assert found == sim.sent
    assert len(found) == 400
    assert parser.discarded > 0 and parser.bad_frames > 0


def test_sim_values_are_plausible() -> None:
    sim = SimPMS5003(seed=9, period=1.0)
    for step in range(300):
        sim.transmit(float(step))
    for frame in sim.sent:
        assert 0 <= frame.pm1_0_atm <= frame.pm2_5_atm <= frame.pm10_atm <= 500
        counts = frame.counts()
        assert list(counts) == sorted(counts, reverse=True)
    assert len({f.pm2_5_atm for f in sim.sent}) > 3  # it drifts


# --- end to end through a pseudo-terminal ----------------------------------------------------


@pytest.fixture
def pty_sim() -> Iterator[tuple[SimPMS5003, PtyDevice]]:
    sim = SimPMS5003(seed=11, period=0.05, garbage=0.3)
    device = PtyDevice(sim, tick=0.005)
    yield sim, device
    device.close()


def _as_frame(ms: list[Measurement]) -> tuple[float, ...]:
    return tuple(float(m.value) for m in ms)


def test_active_mode_through_a_pty(pty_sim: tuple[SimPMS5003, PtyDevice]) -> None:
    sim, device = pty_sim
    driver = PMS5003(
        DriverContext("air", port=device.path, baudrate=9600),
        PMS5003Options(average=False, counts=True),
    )
    driver.setup()
    got: list[Measurement] = []
    for _ in range(4):
        time.sleep(0.12)
        got += driver.read()
    driver.close()
    per_frame = [got[i : i + 9] for i in range(0, len(got), 9)]
    assert len(per_frame) >= 6
    received = [_as_frame(ms) for ms in per_frame]
    sent = [tuple(float(v) for v in (*f.pm("atmospheric"), *f.counts())) for f in sim.sent]
    # pyserial flushes input on open, so the first frames may be lost; after that,
    # every frame sent arrives, in order, despite the noise between them.
    first = sent.index(received[0])
    assert received == sent[first : first + len(received)]
    times = [ms[0].time for ms in per_frame]
    assert None not in times
    stamps = [float(t or 0) for t in times]
    assert stamps == sorted(stamps)
    assert abs(time.time() - stamps[-1]) < 1.0
    assert driver.parser.bad_frames > 0  # the noise was there, and was skipped


def test_passive_mode_through_a_pty(pty_sim: tuple[SimPMS5003, PtyDevice]) -> None:
    sim, device = pty_sim
    driver = PMS5003(
        DriverContext("air", port=device.path, baudrate=9600), PMS5003Options(mode="passive")
    )
    driver.setup()
    deadline = time.monotonic() + 2.0
    while sim.mode != "passive" and time.monotonic() < deadline:
        time.sleep(0.005)
    time.sleep(0.05)  # a frame streamed just before the switch is stale, not an answer
    for _ in range(3):
        got = driver.read()
        assert sim.mode == "passive"
        latest = sim.sent[-1]
        assert _as_frame(got) == tuple(float(v) for v in latest.pm("atmospheric"))
    assert sim.commands.count((0xE2, 0)) == 3
    driver.close()


def test_a_vanished_port_is_an_os_error(pty_sim: tuple[SimPMS5003, PtyDevice]) -> None:
    _, device = pty_sim
    driver = PMS5003(DriverContext("air", port=device.path), PMS5003Options())
    driver.setup()
    assert driver.read()
    device.close()  # the other end goes away, like an unplugged USB adapter
    with pytest.raises(SensorError, match="still connected") as caught:
        for _ in range(50):  # whatever was buffered may still be read first
            driver.read()
            time.sleep(0.01)
    assert isinstance(caught.value, OSError)  # so the poller sets it up again
    with pytest.raises(SensorError, match="could not open port"):
        driver.setup()  # ... which fails until the device is back


def test_example_config_is_valid() -> None:
    settings_ = load_settings(EXAMPLE)
    (sensor,) = settings_.sensors
    assert (sensor.driver, sensor.port, sensor.baudrate) == ("pms5003", "sim", 9600)
    assert sensor.options == PMS5003Options()


def test_cli_read_prints_readings(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["read", "--config", str(EXAMPLE)]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["quantity"] for line in lines] == list(PM_QUANTITIES)
    assert {line["sensor"] for line in lines} == {"air"}
    assert {line["unit"] for line in lines} == {"ug/m3"}
    assert all(0 <= line["value"] <= 500 for line in lines)


def test_frame_words_match_struct_layout() -> None:
    """The dataclass field order is the wire order: data 1..13."""
    assert struct.unpack(">13H", HAND_FRAME[4:30]) == HAND_VALUES.words()
