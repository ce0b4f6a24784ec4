"""XBee API frames: checksum and escaping against Digi's documented frames, frame
decoding, a parser that resynchronises after anything, and the driver end to end
through a real pseudo-terminal.

Documents cited (Digi International):
- [S2C]  XBee/XBee-PRO S2C Zigbee RF Module User Guide 90002002: "Calculate and
         verify checksums", "API examples", "Escaped characters", "I/O Data Sample
         Rx Indicator frame - 0x92".
- [ZB]   XBee/XBee-PRO ZigBee RF Modules User Guide 90000976: "IO sampling"
         (AD(mV) = (A/D reading * 1200mV) / 1023).
- [900HP] XBee-PRO 900HP/XSC RF Modules User Guide 90002173: 0x92 example frame.
- [DM24] XBee/XBee-PRO DigiMesh 2.4 User Manual 90000991: transmit request example
         "if escaping is enabled (AP=2)".
- [WIFI] XBee Wi-Fi RF Module User Guide 90002180: "API Examples" (BD command).
- [868LP] XBee 868LP RF Modules User Guide 90002126: "AT Command frame - 0x08" example.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import serial
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError
from wsn_checks import (
    FakeClock,
    check_cli_read,
    check_driver_class,
    check_silenced_node_goes_missing_and_comes_back,
    loop_drivers,
    loop_port,
    nodes_of,
    read_until,
    sensor_options,
)

from drivers.base import DriverContext
from drivers.sim.pty import PtyDevice
from drivers.sim.xbee import EXAMPLE_NODES, SimNode, SimXBeeCoordinator
from drivers.xbee import (
    ESCAPED,
    MAX_FRAME_DATA,
    START,
    XOFF,
    FrameParser,
    XBee,
    XBeeOptions,
    adc_volts,
    checksum,
    decode_io_sample,
    decode_receive_packet,
    encode_frame,
    escape,
)
from gateway.cli import main
from gateway.readings import Measurement

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "config" / "examples" / "xbee.yaml"

# [S2C] "Calculate and verify checksums": a TX (16-bit) request sending "Hello".
DIGI_CHECKSUM_EXAMPLE = bytes.fromhex("7E000A010150010048656C6C6FB8")
# [S2C] "API examples": AT command NJ=0xFF, and AT command ND.
DIGI_AT_NJ = bytes.fromhex("7E000508014E4AFF5F")
DIGI_AT_ND = bytes.fromhex("7E000408014E4464")
# [868LP] "AT Command frame - 0x08" example: query NH with frame id 0x52.
DIGI_AT_NH_QUERY = bytes.fromhex("7E000408524E480F")
# A query of NJ in the same format (frame id 1), checksum worked out by hand below.
AT_NJ_QUERY = bytes.fromhex("7E000408014E4A5E")
# [WIFI] "API Examples": AT command BD=0x08.
DIGI_AT_BD = bytes.fromhex("7E00050801424408" + "68")
# [S2C] "Escaped characters": 0x11 in the frame data is escaped as 7D 31.
DIGI_RAW = bytes.fromhex("7E00022311CB")
DIGI_ESCAPED = bytes.fromhex("7E0002237D31CB")
# [DM24]: transmit request to 0013A200 400A0127, payload "TxData0A", with AP=2: the 0x13
# of the address and the checksum 0x13 are both escaped (7D 33).
DIGI_DM24_AP2 = bytes.fromhex(
    "7E0016100100" + "7D33" + "A200400A0127FFFE0000" + "5478446174613041" + "7D33"
)
DIGI_DM24_DATA = bytes.fromhex("10010013A200400A0127FFFE00005478446174613041")
# [S2C] 0x92 example: from 0013A20040522BAA / 7D84, DIO2..DIO4 digital (DIO2 and DIO4
# high), AD1 analog reading 0x0225. Written as in the guide, unescaped (AP=1).
DIGI_IO_SAMPLE = bytes.fromhex("7E001492" + "0013A20040522BAA7D84" + "0101001C0200140225F5")
# [900HP] the same sample with the reserved 16-bit field FFFE.
DIGI_IO_SAMPLE_900HP = bytes.fromhex("7E001492" + "0013A20040522BAAFFFE" + "0101001C0200140225F9")

GREENHOUSE = "0013A20041A7B101"
GATE = "0013A20041A7B105"
WALL = 1_700_000_000.0


def body(frame: bytes) -> bytes:
    """The frame data of an unescaped frame."""
    return frame[3:-1]


# --- checksum and escaping against Digi's documents --------------------------------------


@pytest.mark.parametrize(
    "frame",
    [DIGI_CHECKSUM_EXAMPLE, DIGI_AT_NJ, DIGI_AT_ND, DIGI_AT_BD, DIGI_AT_NH_QUERY, AT_NJ_QUERY,
     DIGI_RAW],
)  # fmt: skip
def test_checksum_matches_digi_examples(frame: bytes) -> None:
    assert checksum(body(frame)) == frame[-1]
    assert (sum(body(frame)) + frame[-1]) & 0xFF == 0xFF  # Digi's way to verify
    assert encode_frame(body(frame), api_mode=1) == frame


def test_checksum_worked_example_from_the_guide() -> None:
    # [S2C]: 01+01+50+01+00+48+65+6C+6C+6F = 0x247; keep 0x47; 0xFF - 0x47 = 0xB8.
    assert sum(body(DIGI_CHECKSUM_EXAMPLE)) == 0x247
    assert checksum(body(DIGI_CHECKSUM_EXAMPLE)) == 0xB8


@pytest.mark.parametrize(
    "frame", [DIGI_CHECKSUM_EXAMPLE, DIGI_AT_NJ, DIGI_AT_ND, DIGI_AT_BD, DIGI_IO_SAMPLE]
)
def test_mode_1_parser_accepts_digi_frames(frame: bytes) -> None:
    parser = FrameParser(api_mode=1)
    frames = parser.feed(frame)
    assert [f.data for f in frames] == [body(frame)]
    assert parser.counts.frames_ok == 1 and parser.counts.garbage_bytes == 0


def test_a_wrong_checksum_is_a_bad_frame() -> None:
    # Query NJ: 08 01 4E 4A sums to 0xA1, so the checksum is 0xFF - 0xA1 = 0x5E.
    assert checksum(body(AT_NJ_QUERY)) == 0x5E
    parser = FrameParser(api_mode=1)
    assert parser.feed(AT_NJ_QUERY[:-1] + b"\x5f") == []
    assert parser.counts.bad_checksum == 1
    assert [f.data for f in parser.feed(AT_NJ_QUERY)] == [bytes.fromhex("08014E4A")]


def test_escaping_matches_digi_example() -> None:
    assert encode_frame(body(DIGI_RAW), api_mode=2) == DIGI_ESCAPED
    parser = FrameParser(api_mode=2)
    assert [f.data for f in parser.feed(DIGI_ESCAPED)] == [bytes.fromhex("2311")]


def test_escaping_of_address_and_checksum_matches_digi_ap2_example() -> None:
    assert checksum(DIGI_DM24_DATA) == 0x13
    assert encode_frame(DIGI_DM24_DATA, api_mode=2) == DIGI_DM24_AP2
    assert [f.data for f in FrameParser(api_mode=2).feed(DIGI_DM24_AP2)] == [DIGI_DM24_DATA]


def test_escape_covers_exactly_the_four_bytes() -> None:
    assert escape(bytes(range(256))).count(0x7D) == 4
    for byte in ESCAPED:
        assert escape(bytes((byte,))) == bytes((0x7D, byte ^ 0x20))


@settings(max_examples=200)
@given(st.binary(min_size=1, max_size=300))
def test_mode_2_round_trip(data: bytes) -> None:
    frame = encode_frame(data, api_mode=2)
    assert frame[0] == START
    assert not set(frame[1:]) & {0x7E, 0x11, 0x13}  # only escaped forms after the start
    assert [f.data for f in FrameParser(api_mode=2).feed(frame)] == [data]
    assert [f.data for f in FrameParser(api_mode=1).feed(encode_frame(data, 1))] == [data]


# --- frame decoders ------------------------------------------------------------------------


@pytest.mark.parametrize("frame", [DIGI_IO_SAMPLE, DIGI_IO_SAMPLE_900HP])
def test_io_sample_decodes_digi_example(frame: bytes) -> None:
    assert checksum(body(frame)) == frame[-1]
    sample = decode_io_sample(body(frame))
    assert sample.source64 == "0013A20040522BAA"
    assert sample.options == 0x01
    assert (sample.digital_mask, sample.digital, sample.analog_mask) == (0x1C, 0x14, 0x02)
    # "DIO2 and DIO4 are high, DIO3 is low"; DIO0 is not sampled.
    states = [sample.digital_state(line) for line in range(5)]
    assert states == [None, None, True, False, True]
    assert sample.analog == {1: 0x0225}
    assert sample.supply is None
    # [ZB] AD(mV) = 549 * 1200 / 1023 = 643.99 mV.
    assert adc_volts(sample.analog[1]) * 1000 == pytest.approx(643.988, abs=0.001)


def test_io_sample_source16_of_the_zigbee_example() -> None:
    assert decode_io_sample(body(DIGI_IO_SAMPLE)).source16 == 0x7D84


def io_data(digital_mask: int, analog_mask: int, words: list[int], samples: int = 1) -> bytes:
    head = bytes((0x92,)) + bytes.fromhex(GATE) + b"\x12\x34\x01" + bytes((samples,))
    return (
        head
        + digital_mask.to_bytes(2, "big")
        + bytes((analog_mask,))
        + b"".join(w.to_bytes(2, "big") for w in words)
    )


def test_io_sample_without_digital_lines_has_no_digital_bytes() -> None:
    # Two analog channels and the supply voltage (bit 7), no digital mask [ZB].
    sample = decode_io_sample(io_data(0, 0x80 | 0x09, [0x3FF, 0x000, 0x0C00]))
    assert sample.digital is None
    assert sample.analog == {0: 0x3FF, 3: 0}
    assert sample.supply == 0x0C00
    assert sample.digital_state(0) is None
    assert adc_volts(0x3FF) == pytest.approx(1.2)
    assert adc_volts(0x3FF, 1250.0) == pytest.approx(1.25)  # XBee 3, AV=0


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (io_data(0x10, 0x02, [0x10]), "masks call for"),  # analog word missing
        (io_data(0x10, 0x02, [0x10, 0x100, 0x5]), "masks call for"),  # one word too many
        (io_data(0, 0x01, [0x400]), "above 10 bits"),
        (io_data(0, 0x10, [0x1]), "reserved bits"),
        (io_data(0x10, 0, [0x10], samples=2), "sample sets"),
        (io_data(0x10, 0, [0x10])[:12], "shorter than its header"),
        (bytes((0x90,)) + bytes(20), "not an IO sample"),
    ],
)
def test_io_sample_that_does_not_add_up_is_refused(data: bytes, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        decode_io_sample(data)


def rx_data(address: str, payload: bytes, *, network: int = 0x1234, options: int = 1) -> bytes:
    source = bytes.fromhex(address) + network.to_bytes(2, "big")
    return bytes((0x90,)) + source + bytes((options,)) + payload


def test_receive_packet_decodes_a_hand_built_frame() -> None:
    frame = encode_frame(rx_data(GREENHOUSE, b"t=21.5;h=40", network=0xFFFE, options=0x41))
    (parsed,) = FrameParser(api_mode=2).feed(frame)
    packet = decode_receive_packet(parsed.data)
    assert packet.source64 == GREENHOUSE
    assert (packet.source16, packet.options, packet.data) == (0xFFFE, 0x41, b"t=21.5;h=40")


def test_explicit_receive_packet_skips_endpoints_cluster_and_profile() -> None:
    # 0x91: source64, source16, src/dst endpoint, cluster id, profile id, options, data.
    data = bytes((0x91,)) + bytes.fromhex(GREENHOUSE) + bytes.fromhex("7D84E8E80011C105") + b"\x01"
    packet = decode_receive_packet(data + b"t=1")
    assert (packet.source64, packet.source16, packet.options) == (GREENHOUSE, 0x7D84, 0x01)
    assert packet.data == b"t=1"
    with pytest.raises(ValueError, match="shorter"):
        decode_receive_packet(data[:10])


# --- the parser: resynchronisation ----------------------------------------------------------


def test_garbage_before_and_between_frames_is_counted_and_skipped() -> None:
    a, b = encode_frame(b"\x8a\x06"), encode_frame(rx_data(GREENHOUSE, b"t=1"))
    parser = FrameParser()
    frames = parser.feed(b"\x00\xffnoise" + a + b"\x42\x42" + b)
    assert [f.data for f in frames] == [b"\x8a\x06", rx_data(GREENHOUSE, b"t=1")]
    assert parser.counts.garbage_bytes == 9


def test_frames_split_anywhere_come_out_whole_with_the_time_of_their_last_byte() -> None:
    frame = encode_frame(rx_data(GREENHOUSE, b"t=21.5"))
    parser = FrameParser()
    results = [parser.feed(frame[i : i + 1], at=i / 100) for i in range(len(frame))]
    assert all(not r for r in results[:-1])
    (only,) = results[-1]
    assert only.time == (len(frame) - 1) / 100


@pytest.mark.parametrize("api_mode", [1, 2])
def test_a_valid_frame_starting_inside_a_corrupt_one_is_found(api_mode: int) -> None:
    good = encode_frame(rx_data(GREENHOUSE, b"t=2"), api_mode)
    # A start byte and a length of 40: the good frame lies inside what it claims.
    corrupt = bytes((START, 0x00, 40, 0x90, 0x01))
    parser = FrameParser(api_mode)
    frames = parser.feed(corrupt + good + bytes(60))
    assert [f.data for f in frames] == [rx_data(GREENHOUSE, b"t=2")]
    assert parser.counts.bad_checksum + parser.counts.bad_frames == 1


def test_mode_2_frame_cut_short_by_the_next_start_byte() -> None:
    first = encode_frame(rx_data(GREENHOUSE, b"t=1"))
    second = encode_frame(rx_data(GREENHOUSE, b"t=2"))
    parser = FrameParser(api_mode=2)
    frames = parser.feed(first[:9] + second)
    assert [f.data for f in frames] == [rx_data(GREENHOUSE, b"t=2")]
    assert parser.counts.bad_frames == 1


def test_mode_2_refuses_an_escape_of_an_ordinary_byte() -> None:
    parser = FrameParser(api_mode=2)
    # 7D 21 would unescape to 0x01, which is never escaped: not an XBee frame.
    assert parser.feed(bytes.fromhex("7E00027D2111CB")) == []
    assert parser.counts.bad_frames == 1


@pytest.mark.parametrize("where", range(1, 20))
def test_mode_2_skips_raw_flow_control_bytes(where: int) -> None:
    frame = encode_frame(rx_data(GREENHOUSE, b"t=3"))
    assert frame[5:7] == b"\x7d\x33"  # the 0x13 of 0013A200, escaped
    with_xoff = frame[:where] + bytes((XOFF,)) + frame[where:]  # even inside 7D 33
    assert [f.data for f in FrameParser(api_mode=2).feed(with_xoff)] == [
        rx_data(GREENHOUSE, b"t=3")
    ]


def test_mode_2_waits_for_a_stray_start_byte_without_a_timeout() -> None:
    parser = FrameParser(api_mode=2)
    assert parser.feed(bytes((START, 0, 200)), at=0.0) == []
    assert parser.feed(b"", at=100.0) == [] and parser.pending == 3
    assert [f.data for f in parser.feed(encode_frame(b"\x8a\x06"), at=101.0)] == [b"\x8a\x06"]
    assert parser.counts.bad_frames == 1


@pytest.mark.parametrize("length", [0, MAX_FRAME_DATA + 1])
def test_impossible_lengths_are_bad_frames(length: int) -> None:
    parser = FrameParser(api_mode=1)
    good = encode_frame(b"\x8a\x06", 1)
    assert [f.data for f in parser.feed(bytes((START,)) + length.to_bytes(2, "big") + good)] == [
        b"\x8a\x06"
    ]
    assert parser.counts.bad_frames == 1


def test_mode_1_stray_start_byte_is_given_up_when_stale() -> None:
    # A stray 0x7E claims 200 bytes, and only one short frame follows. Once the stray
    # start has waited longer than stale_after, the bytes after it are scanned again.
    good = encode_frame(b"\x8a\x06", 1)
    parser = FrameParser(api_mode=1, stale_after=1.0)
    assert parser.feed(bytes((START, 0, 200)) + good, at=10.0) == []
    assert parser.pending > 0
    assert parser.feed(b"", at=10.5) == []
    frames = parser.feed(b"", at=11.5)
    assert [(f.data, f.time) for f in frames] == [(b"\x8a\x06", 10.0)]
    assert parser.counts.bad_frames == 1 and parser.pending == 0


def test_reset_forgets_a_partial_frame() -> None:
    frame = encode_frame(rx_data(GREENHOUSE, b"t=1"))
    parser = FrameParser()
    parser.feed(frame[:5])
    parser.reset()
    assert parser.pending == 0
    assert [f.data for f in parser.feed(frame)] == [rx_data(GREENHOUSE, b"t=1")]


def test_api_mode_must_be_1_or_2() -> None:
    with pytest.raises(ValueError, match="api_mode"):
        FrameParser(api_mode=0)


# --- the parser, fuzzed ----------------------------------------------------------------------


@settings(max_examples=300)
@given(st.sampled_from([1, 2]), st.lists(st.binary(max_size=64), max_size=8))
def test_arbitrary_bytes_never_raise(api_mode: int, chunks: list[bytes]) -> None:
    parser = FrameParser(api_mode)
    total = 0
    for i, chunk in enumerate(chunks):
        for frame in parser.feed(chunk, at=float(i)):
            assert 1 <= len(frame.data) <= MAX_FRAME_DATA
        total += len(chunk)
    parser.feed(b"", at=1e9)  # in mode 1 everything left over is stale by now
    if api_mode == 1:
        assert parser.pending == 0
    assert parser.counts.garbage_bytes + parser.pending <= total


frame_data = st.binary(min_size=1, max_size=40)


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(st.tuples(st.binary(max_size=20), frame_data), min_size=1, max_size=6),
    st.binary(max_size=20),
    st.integers(min_value=1, max_value=7),
)
def test_mode_2_recovers_every_frame_in_garbage_in_order(
    parts: list[tuple[bytes, bytes]], tail: bytes, split: int
) -> None:
    stream = b"".join(garbage + encode_frame(data, 2) for garbage, data in parts) + tail
    parser = FrameParser(api_mode=2)
    got = []
    for i in range(0, len(stream), split):
        got += [f.data for f in parser.feed(stream[i : i + split])]
    expected = iter(got)  # garbage may form a frame by chance: look for a subsequence
    assert all(any(g == data for g in expected) for _, data in parts)


no_start = st.binary(max_size=20).map(lambda b: b.replace(b"\x7e", b""))


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(no_start, frame_data), min_size=1, max_size=6), no_start)
def test_mode_1_recovers_every_frame_in_garbage_without_start_bytes(
    parts: list[tuple[bytes, bytes]], tail: bytes
) -> None:
    # In mode 1 a stray 0x7E in noise may, with odds of 1 in 256, frame a valid-looking
    # frame over the next real one (why api_mode 2 is the default); noise without one
    # never costs a frame.
    stream = b"".join(garbage + encode_frame(data, 1) for garbage, data in parts) + tail
    got = [f.data for f in FrameParser(api_mode=1).feed(stream)]
    assert got == [data for _, data in parts]


@settings(max_examples=300)
@given(st.sampled_from([1, 2]), frame_data, st.data())
def test_one_changed_byte_never_passes(api_mode: int, data: bytes, draw: st.DataObject) -> None:
    index = draw.draw(st.integers(0, len(data)))  # a byte of the data, or the checksum
    raw = bytearray(data + bytes((checksum(data),)))
    raw[index] ^= draw.draw(st.integers(1, 255))
    framed = len(data).to_bytes(2, "big") + bytes(raw)
    corrupt = bytes((START,)) + (escape(framed) if api_mode == 2 else framed)
    marker = b"\x8a\x06"
    got = [f.data for f in FrameParser(api_mode).feed(corrupt + encode_frame(marker, api_mode))]
    # Neither the corrupted data nor the original comes out (a frame that happens to be
    # embedded in the data is shorter than both).
    assert data not in got and bytes(raw[:-1]) not in got
    if api_mode == 2:  # in mode 1 a 0x7E inside the data may, rarely, swallow the next frame
        assert got[-1:] == [marker]


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 40), st.integers(1, 255), st.sampled_from([1, 2]))
@example(index=0, delta=0x90 ^ START, api_mode=1)  # the frame type becomes a start byte
def test_a_corrupted_frame_never_yields_a_reading(index: int, delta: int, api_mode: int) -> None:
    data = rx_data(GREENHOUSE, b"t=21.5;h=402")
    raw = bytearray(data + bytes((checksum(data),)))
    raw[index % len(raw)] ^= delta
    framed = len(data).to_bytes(2, "big") + bytes(raw)
    with loop_port() as port:
        driver = make_driver(port, api_mode=api_mode)
        port.write(bytes((START,)) + (escape(framed) if api_mode == 2 else framed))
        assert driver.read() == []
        # At least one bad frame: a byte changed into 0x7E starts a second (bad) one.
        assert driver.stats["bad_checksum"] + driver.stats["bad_frames"] >= 1
        assert driver.stats["frames_ok"] == 0


# --- options -----------------------------------------------------------------------------


def options(**overrides: object) -> XBeeOptions:
    base: dict[str, object] = {
        "nodes": [
            {"address": GREENHOUSE, "name": "greenhouse"},
            {"address": GATE, "name": "gate", "missing_after": 60},
        ],
        "fields": {
            "t": {"quantity": "temperature", "unit": "Cel"},
            "h": {"quantity": "humidity", "unit": "%RH", "scale": 0.1},
        },
        "analog": [
            {
                "pin": "AD1",
                "quantity": "air_temperature",
                "unit": "Cel",
                "scale": 100,
                "offset": -50,
            },
        ],
        "digital": [{"pin": "DIO4", "quantity": "door_open"}],
        "first_wait": 0,
    }
    base.update(overrides)
    return XBeeOptions.model_validate(base)


def test_options_defaults() -> None:
    opts = XBeeOptions.model_validate(
        {
            "nodes": [{"address": GATE, "name": "gate"}],
            "digital": [{"pin": "DIO4", "quantity": "d"}],
        }
    )
    assert (opts.api_mode, opts.payload, opts.separator, opts.unknown_nodes) == (
        2,
        "lines",
        ";",
        "drop",
    )
    assert opts.nodes[0].missing_after == 300
    assert opts.adc_full_scale_mv == 1200
    assert opts.first_wait == 2.0


@pytest.mark.parametrize(
    "written",
    ["0013a20041a7b105", "0013A200 41A7B105", "00:13:A2:00:41:A7:B1:05", "0x0013A20041A7B105"],
)
def test_addresses_are_normalised(written: str) -> None:
    opts = options(nodes=[{"address": written, "name": "gate"}])
    assert opts.nodes[0].address == GATE


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"nodes": [{"address": 13200000000001, "name": "x"}]}, "in quotes"),
        ({"nodes": [{"address": "0013A2", "name": "x"}]}, "16 hex digits"),
        ({"nodes": [{"address": GATE, "name": "a/b"}]}, "pattern"),
        ({"nodes": [{"address": GATE, "name": "a"}, {"address": GATE, "name": "b"}]}, "address"),
        ({"nodes": [{"address": GATE, "name": "a"}, {"address": GREENHOUSE, "name": "a"}]},
         "name 'a'"),
        ({"nodes": [{"address": GATE, "name": "a", "missing_after": 0}]}, "greater than 0"),
        ({"nodes": []}, "unknown_nodes: publish"),
        ({"api_mode": 0}, "1 or 2"),
        ({"payload": "binary"}, "'lines' or 'json'"),
        ({"analog": [{"pin": "AD4", "quantity": "x"}]}, "AD0"),
        ({"digital": [{"pin": "DIO15", "quantity": "x"}]}, "pattern"),
        ({"digital": [{"pin": "DIO4", "quantity": "a"}, {"pin": "DIO4", "quantity": "b"}]},
         "listed twice"),
        ({"digital": [{"pin": "DIO4", "quantity": "temperature"}]}, "mapped twice"),
        ({"fields": {"t": {"quantity": "t", "scale": True}}}, "not true"),
        ({"fields": {"t": {"quantity": "t", "offset": float("nan")}}}, "finite"),
        ({"fields": {}, "analog": [], "digital": []}, "map something"),
        ({"baud": 9600}, "Extra inputs"),
    ],
)  # fmt: skip
def test_options_refuse_what_cannot_work(change: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        options(**change)


def test_unknown_nodes_publish_needs_no_node_list() -> None:
    assert options(nodes=[], unknown_nodes="publish").nodes == []


def test_registry_and_class_attributes() -> None:
    assert XBee.options_model is XBeeOptions
    check_driver_class(XBee, "xbee", 9600, SimXBeeCoordinator)


def test_wrong_options_type_is_refused() -> None:
    from drivers.base import DriverOptions  # noqa: PLC0415

    with pytest.raises(TypeError, match="XBeeOptions"):
        XBee(DriverContext("wsn", port="loop://"), DriverOptions())


# --- the driver against pyserial's loop:// port -----------------------------------------


@pytest.fixture
def loop() -> Iterator[serial.SerialBase]:
    with loop_port() as port:
        yield port


make_driver = loop_drivers(XBee, options, sensor="wsn", baudrate=9600, wall=WALL)


def by_quantity(measurements: list[Measurement]) -> dict[str, object]:
    return {m.quantity: m.value for m in measurements}


def test_text_payloads_become_node_quantities(loop: serial.SerialBase) -> None:
    driver = make_driver(loop)
    loop.write(encode_frame(rx_data(GREENHOUSE, b"t=21.5;h=402\r\n")))
    got = driver.read()
    assert [(m.quantity, m.unit, m.value, m.time) for m in got] == [
        ("greenhouse/temperature", "Cel", 21.5, WALL),
        ("greenhouse/humidity", "%RH", pytest.approx(40.2), WALL),
    ]
    assert driver.read() == []  # nothing new
    assert driver.stats["frames_ok"] == 1 and driver.stats["readings"] == 2


def test_json_payloads_and_several_lines_per_packet(loop: serial.SerialBase) -> None:
    driver = make_driver(loop)
    loop.write(encode_frame(rx_data(GREENHOUSE, b't=1\n{"t": 2, "h": 10}\n')))
    assert [m.value for m in driver.read()] == [1.0, 2.0, 1.0]

    json_driver = make_driver(loop, payload="json")
    loop.write(encode_frame(rx_data(GREENHOUSE, b'{"t": 3.5}\r\n')))
    loop.write(encode_frame(rx_data(GREENHOUSE, b"t=4")))  # not JSON: dropped
    assert by_quantity(json_driver.read()) == {"greenhouse/temperature": 3.5}
    assert json_driver.stats["dropped_lines"] == 1


def test_a_bad_payload_is_dropped_whole_but_the_node_was_heard(
    loop: serial.SerialBase, caplog: pytest.LogCaptureFixture
) -> None:
    clock = FakeClock()
    driver = make_driver(loop, clock)
    clock.now += 50
    for payload in (b"t=21.5;h=oops", b"t=1;t=2", b"\xff\xfe", b"t=1\x00"):
        loop.write(encode_frame(rx_data(GATE, payload)))
    with caplog.at_level(logging.INFO, logger="drivers"):
        assert driver.read() == []
        clock.now += 30  # 80 s since start, but only 30 s since gate was heard
        driver.read()
    assert driver.stats["dropped_lines"] == 4
    assert "gate" not in driver.nodes.missing
    dropped = [r for r in caplog.records if "payload from" in r.getMessage()]
    assert len(dropped) == 2  # once per reason: unparsable, invalid_utf8


def test_io_samples_map_analog_and_digital(loop: serial.SerialBase) -> None:
    driver = make_driver(
        loop,
        digital=[{"pin": "DIO4", "quantity": "door_open"},
                 {"pin": "DIO3", "quantity": "lamp_off", "invert": True},
                 {"pin": "DIO0", "quantity": "unsampled"}],
    )  # fmt: skip
    raw = round(0.7 * 1023 / 1.2)  # TMP36 at 20 °C gives 0.7 V
    loop.write(encode_frame(io_data(0x0018, 0x02, [0x0010, raw])))
    got = driver.read()
    assert by_quantity(got) == {
        "gate/air_temperature": pytest.approx(20.0, abs=0.1),
        "gate/door_open": True,
        "gate/lamp_off": True,  # DIO3 is low
    }
    assert [m.unit for m in got] == ["Cel", None, None]


def test_other_frame_types_are_counted_and_logged_once(
    loop: serial.SerialBase, caplog: pytest.LogCaptureFixture
) -> None:
    driver = make_driver(loop)
    with caplog.at_level(logging.INFO, logger="drivers.xbee"):
        loop.write(encode_frame(b"\x8a\x06") * 3)
        assert driver.read() == []
    assert driver.stats["ignored_frames"] == 3
    assert len([r for r in caplog.records if "0x8a" in r.getMessage()]) == 1


def test_malformed_io_sample_is_counted(loop: serial.SerialBase) -> None:
    driver = make_driver(loop)
    loop.write(encode_frame(io_data(0x10, 0x02, [0x10])))  # analog word missing
    assert driver.read() == []
    assert driver.stats["malformed_frames"] == 1


def test_unknown_node_dropped_by_default_and_logged_once(
    loop: serial.SerialBase, caplog: pytest.LogCaptureFixture
) -> None:
    driver = make_driver(loop)
    stranger = "0013A200DEADBEEF"
    with caplog.at_level(logging.WARNING):
        for _ in range(3):
            loop.write(encode_frame(rx_data(stranger, b"t=1")))
        assert driver.read() == []
    assert driver.stats["unknown_nodes"] == 3
    assert len([r for r in caplog.records if stranger in r.getMessage()]) == 1


def test_unknown_node_published_under_a_generated_name(loop: serial.SerialBase) -> None:
    driver = make_driver(loop, unknown_nodes="publish")
    loop.write(encode_frame(rx_data("0013A200DEADBEEF", b"t=1")))
    assert by_quantity(driver.read()) == {"xbee-0013A200DEADBEEF/temperature": 1.0}


def test_missing_node_reported_once_and_back_once(
    loop: serial.SerialBase, caplog: pytest.LogCaptureFixture
) -> None:
    clock = FakeClock()
    driver = make_driver(loop, clock)
    with caplog.at_level(logging.INFO, logger="drivers"):
        loop.write(encode_frame(io_data(0x10, 0, [0x10])))
        driver.read()
        clock.now += 61  # gate: missing_after 60
        driver.read()
        driver.read()
        clock.now += 100
        driver.read()
        loop.write(encode_frame(io_data(0x10, 0, [0x10])))
        driver.read()
        driver.read()
    missing = [
        r for r in caplog.records if "gate" in r.getMessage() and "missing" in r.getMessage()
    ]
    back = [r for r in caplog.records if "gate" in r.getMessage() and "is back" in r.getMessage()]
    assert len(missing) == 1 and missing[0].levelno == logging.WARNING
    assert "silent for 61 s" in missing[0].getMessage()
    assert len(back) == 1 and back[0].levelno == logging.INFO
    assert "after 161 s" in back[0].getMessage()


def test_first_read_waits_for_the_first_frame(loop: serial.SerialBase) -> None:
    driver = make_driver(loop, first_wait=0.5)
    started = time.monotonic()
    assert driver.read() == []
    assert 0.45 <= time.monotonic() - started < 1.5
    started = time.monotonic()
    assert driver.read() == []  # later reads only drain
    assert time.monotonic() - started < 0.2


def test_first_read_is_not_satisfied_by_the_coordinators_own_frames(
    loop: serial.SerialBase,
) -> None:
    driver = make_driver(loop, first_wait=0.3)
    loop.write(encode_frame(b"\x8a\x06"))  # Modem Status: coordinator started
    started = time.monotonic()
    assert driver.read() == []
    assert time.monotonic() - started >= 0.25
    assert driver.stats["node_frames"] == 0 and driver.stats["frames_ok"] == 1


# --- end to end: the simulator behind a real pseudo-terminal --------------------------------


def example_options(**overrides: object) -> XBeeOptions:
    return sensor_options(XBeeOptions, EXAMPLE, **overrides)


def test_simulated_nodes_are_those_of_the_example_config() -> None:
    configured = {(n.address, n.name) for n in example_options().nodes}
    assert configured == {(n.address, n.label) for n in EXAMPLE_NODES}


@pytest.mark.parametrize("api_mode", [1, 2])
def test_end_to_end_through_a_pty(api_mode: int) -> None:
    sim = SimXBeeCoordinator(seed=4, api_mode=api_mode, period=0.2)
    device = PtyDevice(sim, tick=0.01)
    driver = XBee(
        DriverContext("wsn", port=device.path, baudrate=9600),
        example_options(api_mode=api_mode, first_wait=1.0),
    )
    try:
        driver.setup()
        got = read_until(driver, lambda g: nodes_of(g) == {n.label for n in EXAMPLE_NODES})
    finally:
        driver.close()
        device.close()
    assert nodes_of(got) == {"greenhouse", "barn", "orchard", "cellar", "gate"}
    quantities = {m.quantity for m in got}
    assert {"greenhouse/temperature", "orchard/humidity", "cellar/battery"} <= quantities
    assert {"gate/air_temperature", "gate/door_open"} <= quantities
    for m in got:
        assert m.time is not None and abs(m.time - time.time()) < 10
        if m.quantity.endswith("temperature"):
            assert 4.0 <= float(m.value) <= 36.0
    assert driver.stats["bad_checksum"] == 0
    assert driver.stats["frames_ok"] >= 5


def test_end_to_end_with_noise_and_corruption() -> None:
    sim = SimXBeeCoordinator(seed=7, period=0.1, garbage=0.3, corrupt=0.2)
    device = PtyDevice(sim, tick=0.01)
    driver = XBee(
        DriverContext("wsn", port=device.path, baudrate=9600),
        example_options(first_wait=1.0),
    )
    try:
        got = read_until(
            driver,
            lambda g: driver.stats["bad_checksum"] >= 3 and len(nodes_of(g)) == 5,
        )
    finally:
        driver.close()
        device.close()
    assert sim.corrupted >= 3
    assert driver.stats["bad_checksum"] >= 3 and driver.stats["garbage_bytes"] > 0
    assert nodes_of(got) <= {n.label for n in EXAMPLE_NODES}
    for m in got:  # nothing corrupt got through: every value is one the nodes can send
        name = m.quantity.split("/")[1]
        if name in ("temperature", "air_temperature"):
            assert 4.0 <= float(m.value) <= 36.0
        elif name == "humidity":
            assert 20.0 <= float(m.value) <= 95.0
        elif name == "battery":
            assert 3.3 <= float(m.value) <= 4.1


def test_silenced_node_goes_missing_and_comes_back(caplog: pytest.LogCaptureFixture) -> None:
    def open_driver(path: str, clock: FakeClock) -> XBee:
        context = DriverContext("wsn", port=path, baudrate=9600)
        return XBee(context, example_options(first_wait=1.0), clock=clock)

    sim = SimXBeeCoordinator(seed=5, period=0.1)
    check_silenced_node_goes_missing_and_comes_back(sim, open_driver, "gate", "gate", caplog)


def test_reopening_after_the_port_vanished() -> None:
    device = PtyDevice(SimXBeeCoordinator(seed=1, period=0.1), tick=0.01)
    driver = XBee(DriverContext("wsn", port=device.path), example_options(first_wait=1.0))
    try:
        assert read_until(driver, bool)
    finally:
        device.close()
    with pytest.raises(OSError, match="opened again"):
        for _ in range(20):
            driver.read()
    driver.close()


def test_cli_read_prints_node_quantities(capsys: pytest.CaptureFixture[str]) -> None:
    check_cli_read(
        EXAMPLE,
        capsys,
        sensor="wsn",
        nodes={n.label for n in EXAMPLE_NODES},
        quantities={"temperature", "humidity", "battery", "air_temperature", "door_open"},
    )


def test_cli_check_config_accepts_the_example(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-config", "--config", str(EXAMPLE)]) == 0
    assert "wsn (xbee)" in capsys.readouterr().out


def test_sim_is_seeded_and_silence_stops_a_node() -> None:
    def run(seed: int) -> bytes:
        sim = SimXBeeCoordinator(seed=seed, period=1.0)
        return b"".join(sim.transmit(t / 10) for t in range(50))

    assert run(3) == run(3) != run(4)
    sim = SimXBeeCoordinator(seed=1, period=1.0, nodes=[SimNode(GATE, "gate", "io")])
    sim.transmit(0.0)
    sim.silence("gate")
    assert b"".join(sim.transmit(t / 10) for t in range(1, 50)) == b""
    sim.resume(GATE)
    assert sim.transmit(5.0) != b""
    with pytest.raises(KeyError):
        sim.silence("nobody")
