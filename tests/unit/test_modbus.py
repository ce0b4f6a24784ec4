"""Modbus RTU: decoding by hand and against pymodbus, request planning, option checks, the
simulated server byte for byte, and the driver end to end through a pseudo-terminal."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError
from pymodbus.client import ModbusSerialClient

from drivers.base import DriverContext, load_driver
from drivers.modbus import (
    MAX_REGISTERS,
    Block,
    ModbusOptions,
    ModbusRTU,
    Register,
    block_values,
    decode,
    encode,
    exception_name,
    plan_blocks,
    shortest_float32,
)
from drivers.sim.modbus import INPUTS, SimModbus, crc16
from drivers.sim.pty import PtyDevice
from gateway.cli import main
from gateway.config import load_settings
from gateway.errors import SensorError

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "config" / "examples" / "modbus.yaml"


def reg(name: str, address: int, **fields: object) -> Register:
    return Register.model_validate({"name": name, "address": address, **fields})


# --- CRC ---------------------------------------------------------------------------------


def _crc_reference(data: bytes) -> bytes:
    """CRC-16/MODBUS bit by bit (SL 6.2.2): init 0xFFFF, reflected polynomial 0xA001."""
    crc = 0xFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
    return crc.to_bytes(2, "little")  # low byte first on the wire


@pytest.mark.parametrize(
    ("frame", "crc"),
    [
        ("010300000001", "840a"),  # read 1 holding register at 0 from unit 1
        ("0103020001", "7984"),  # ... and its answer: one register holding 1
        ("018302", "c0f1"),  # exception answer: illegal data address
        (b"123456789".hex(), "374b"),  # the CRC catalogue's check value 0x4B37
    ],
)
def test_crc_of_known_frames(frame: str, crc: str) -> None:
    assert crc16(bytes.fromhex(frame)).hex() == crc
    assert _crc_reference(bytes.fromhex(frame)).hex() == crc


@given(st.binary(max_size=64))
def test_crc_matches_the_bitwise_reference(data: bytes) -> None:
    assert crc16(data) == _crc_reference(data)


# --- decoding ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("words", "kind", "order", "value"),
    [
        ([0x0000], "int16", "big", 0),
        ([0x7FFF], "int16", "big", 32767),
        ([0x8000], "int16", "big", -32768),
        ([0xFFFE], "int16", "big", -2),
        ([0xFFFE], "uint16", "big", 65534),
        ([0x0001, 0x0000], "int32", "big", 65536),  # high word first
        ([0x0001, 0x0000], "int32", "little", 1),  # low word first
        ([0xFFFF, 0xFFFE], "int32", "big", -2),
        ([0xFFFE, 0xFFFF], "int32", "little", -2),
        ([0x8000, 0x0000], "int32", "big", -(2**31)),
        ([0x1234, 0x5678], "uint32", "big", 0x12345678),  # 305419896
        ([0x5678, 0x1234], "uint32", "little", 0x12345678),
        ([0xFFFF, 0xFFFF], "uint32", "big", 4294967295),
        ([0x4048, 0xF5C3], "float32", "big", 3.14),  # 0x4048F5C3
        ([0xF5C3, 0x4048], "float32", "little", 3.14),
        ([0x4366, 0x0000], "float32", "big", 230.0),  # 0x43660000
        ([0xC2F6, 0xE979], "float32", "big", -123.456),  # 0xC2F6E979
        ([0x3F80, 0x0000], "float32", "big", 1.0),
    ],
)
def test_decode_by_hand(words: list[int], kind: str, order: str, value: float) -> None:
    assert decode(words, kind, order) == value  # type: ignore[arg-type]
    assert encode(value, kind, order) == words  # type: ignore[arg-type]


_TYPES = {
    "int16": ModbusSerialClient.DATATYPE.INT16,
    "uint16": ModbusSerialClient.DATATYPE.UINT16,
    "int32": ModbusSerialClient.DATATYPE.INT32,
    "uint32": ModbusSerialClient.DATATYPE.UINT32,
    "float32": ModbusSerialClient.DATATYPE.FLOAT32,
}


@given(
    st.sampled_from(sorted(_TYPES)),
    st.sampled_from(["big", "little"]),
    st.lists(st.integers(0, 0xFFFF), min_size=2, max_size=2),
)
def test_decode_agrees_with_pymodbus(kind: str, order: str, pair: list[int]) -> None:
    words = pair[: 1 if kind.endswith("16") else 2]
    ours = decode(words, kind, order)  # type: ignore[arg-type]
    theirs = ModbusSerialClient.convert_from_registers(words, _TYPES[kind], word_order=order)  # type: ignore[arg-type]
    assert isinstance(theirs, int | float)
    if kind == "float32":  # ours is the shortest decimal of the same float32
        assert struct.pack(">f", ours) == struct.pack(">f", theirs) or ours != ours
    else:
        assert ours == theirs


def test_shortest_float32_keeps_the_same_bits() -> None:
    assert shortest_float32(3.140000104904175) == 3.14
    assert shortest_float32(0.10000000149011612) == 0.1  # float32 0x3DCCCCCD
    assert shortest_float32(16777216.0) == 16777216.0  # 2**24 needs all 8 digits
    assert shortest_float32(1.401298464324817e-45) == 1e-45  # the smallest subnormal
    assert shortest_float32(float("inf")) == float("inf")


def test_decode_refuses_wrong_sizes() -> None:
    with pytest.raises(ValueError, match="needs 2"):
        decode([1], "float32")
    with pytest.raises(ValueError, match="16-bit"):
        decode([0x10000], "uint16")


def test_scale_and_offset() -> None:
    assert reg("t", 0, type="int16", scale=0.1).value([222]) == 22.2  # not 22.200000000000003
    assert reg("t", 0, type="int16", scale=0.1).value([0xFF9C]) == -10.0  # -100
    assert reg("t", 0, scale=0.01, offset=-40).value([1000]) == -30.0
    assert reg("e", 0, type="uint32", scale=0.001).value([0xFFFF, 0xFFFF]) == 4294967.295
    assert reg("f", 0, type="float32", scale=1000).value([0x4048, 0xF5C3]) == 3140.0


# --- request planning -------------------------------------------------------------------


def test_adjacent_registers_share_a_read_gaps_do_not() -> None:
    registers = [
        reg("v", 0, function="input", type="float32"),
        reg("i", 2, function="input", type="float32"),
        reg("t", 10, function="input", type="int16"),  # gap at 4..9: its own read
        reg("id", 0),  # same addresses, other function: its own read
        reg("sn", 1, type="uint32"),
    ]
    blocks = plan_blocks(registers)
    assert [(b.function, b.start, b.count) for b in blocks] == [
        ("holding", 0, 3),
        ("input", 0, 4),
        ("input", 10, 1),
    ]
    assert [r.name for r in blocks[1].registers] == ["v", "i"]


def test_overlapping_registers_share_a_read() -> None:
    # The same two registers as one uint32 and as its two uint16 halves.
    blocks = plan_blocks([reg("both", 4, type="uint32"), reg("hi", 4), reg("lo", 5)])
    assert [(b.start, b.count) for b in blocks] == [(4, 2)]
    assert block_values(blocks[0], [0x0001, 0x0002]) == {"both": 65538.0, "hi": 1.0, "lo": 2.0}


def test_reads_are_at_most_125_registers() -> None:
    singles = [reg(f"r{i}", i) for i in range(MAX_REGISTERS + 1)]
    assert [(b.start, b.count) for b in plan_blocks(singles)] == [(0, 125), (125, 1)]
    # A 32-bit value that would straddle the limit starts the next read.
    straddle = [reg(f"r{i}", i) for i in range(124)] + [reg("f", 124, type="float32")]
    assert [(b.start, b.count) for b in plan_blocks(straddle)] == [(0, 124), (124, 2)]
    assert plan_blocks(straddle, max_count=200)[0].count == 126


def test_block_values_refuses_a_short_answer() -> None:
    block = Block("holding", 0, 2, (reg("a", 0), reg("b", 1)))
    with pytest.raises(ValueError, match="asked for 2"):
        block_values(block, [1])


def test_block_description_names_registers() -> None:
    (block,) = plan_blocks([reg("voltage", 0, function="input", type="float32")])
    assert block.describe() == "input registers 0x0000..0x0001 (voltage)"
    assert exception_name(2) == "0x02 (illegal data address)"
    assert exception_name(0x7F) == "0x7f (unknown exception)"


# --- options -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({}, "registers"),
        ({"registers": []}, "at least 1"),
        ({"unit": 0, "registers": [{"name": "a", "address": 0}]}, "greater than or equal to 1"),
        ({"unit": 248, "registers": [{"name": "a", "address": 0}]}, "less than or equal to 247"),
        ({"registers": [{"name": "a", "address": 0}, {"name": "a", "address": 1}]}, "used twice"),
        ({"registers": [{"name": "a b", "address": 0}]}, "SenML name"),
        ({"registers": [{"name": "a", "address": 65535, "type": "int32"}]}, "runs past"),
        ({"registers": [{"name": "a", "address": 65536}]}, "less than or equal to 65535"),
        ({"registers": [{"name": "a", "address": 0, "word_order": "little"}]}, "32-bit"),
        ({"registers": [{"name": "a", "address": 0, "function": "coil"}]}, "holding"),
        ({"registers": [{"name": "a", "address": 0, "type": "float64"}]}, "float32"),
        ({"registers": [{"name": "a", "address": 0, "scale": "nan"}]}, "finite"),
        ({"registers": [{"name": "a", "address": 0}], "parity": "M"}, "'N', 'E' or 'O'"),
        ({"registers": [{"name": "a", "address": 0}], "baud": 9600}, "baud"),
        ({"registers": [{"name": "a", "address": 0}], "max_registers": 126}, "125"),
    ],
)
def test_bad_options_are_refused(options: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        ModbusOptions.model_validate(options)


def test_option_defaults() -> None:
    opts = ModbusOptions.model_validate({"registers": [{"name": "a", "address": 7}]})
    assert (opts.unit, opts.parity, opts.stopbits, opts.bytesize, opts.timeout) == (
        1, "N", 1, 8, 1.0,
    )  # fmt: skip
    assert opts.max_registers == 125
    (register,) = opts.registers
    assert (register.function, register.type, register.word_order) == ("holding", "uint16", "big")
    assert (register.scale, register.offset, register.unit) == (1.0, 0.0, None)


def test_registry_and_lazy_import() -> None:
    assert load_driver("modbus") is ModbusRTU
    assert ModbusRTU.bus_kind == "serial"
    assert isinstance(ModbusRTU.simulator(0, 1), SimModbus)
    # Loading the driver (as config validation does) must not import pymodbus.
    code = "import sys, drivers.modbus; print('pymodbus' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "False"


# --- the simulated server on its own -------------------------------------------------------


def request(unit: int, function: int, start: int, count: int) -> bytes:
    frame = bytes([unit, function]) + start.to_bytes(2, "big") + count.to_bytes(2, "big")
    return frame + crc16(frame)


def answer_of(sim: SimModbus, data: bytes) -> bytes:
    sim.receive(data)
    return sim.transmit(0.0)


def test_sim_answers_byte_for_byte() -> None:
    sim = SimModbus(drift=False)
    # Holding register 0 holds the unit id, 1: 01 03 02 00 01 79 84.
    assert answer_of(sim, bytes.fromhex("010300000001840a")).hex() == "0103020001" + "7984"
    # Nothing at 0x0100: exception 0x02, 01 83 02 C0 F1.
    assert answer_of(sim, request(1, 0x03, 0x0100, 1)).hex() == "018302c0f1"


def test_sim_answers_only_its_own_unit_and_valid_frames() -> None:
    sim = SimModbus(unit=7, drift=False)
    assert answer_of(sim, request(1, 0x03, 0, 1)) == b""  # someone else's
    assert answer_of(sim, request(0, 0x03, 0, 1)) == b""  # broadcast: reads never answer
    bad = bytearray(request(7, 0x03, 0, 1))
    bad[-1] ^= 0x01
    assert answer_of(sim, bytes(bad)) == b""  # CRC error: silence, as on a real line
    # Noise before a request: skipped byte by byte until the CRC checks out.
    answer = answer_of(sim, b"\xff\x00\x07" + request(7, 0x03, 0, 1))
    assert answer == bytes([7, 3, 2, 0, 7]) + crc16(bytes([7, 3, 2, 0, 7]))


def test_sim_exceptions_for_bad_counts_and_functions() -> None:
    sim = SimModbus(drift=False)
    assert answer_of(sim, request(1, 0x04, 0, 126))[1:3] == b"\x84\x03"  # > 125: illegal value
    assert answer_of(sim, request(1, 0x04, 0, 0))[1:3] == b"\x84\x03"
    write = bytes.fromhex("010600010003")  # write single register: not supported
    assert answer_of(sim, write + crc16(write))[1:3] == b"\x86\x01"


def test_sim_register_map_encodes_its_values() -> None:
    sim = SimModbus(seed=4, drift=False)
    sim.voltage, sim.current, sim.temperature = 231.5, 2.0, -4.5
    registers = [
        reg("v", 0, function="input", type="float32"),
        reg("p", 4, function="input", type="float32"),
        reg("t", 10, function="input", type="int16", scale=0.1),
        reg("e", 8, function="input", type="uint32"),
        reg("ekwh", 12, function="input", type="float32", word_order="little"),
        reg("pw", 14, function="input", type="int32", word_order="little"),
    ]
    got: dict[str, float] = {}
    for block in plan_blocks(registers):
        answer = answer_of(sim, request(1, 0x04, block.start, block.count))
        words = [int.from_bytes(answer[3 + 2 * i : 5 + 2 * i], "big") for i in range(block.count)]
        got |= block_values(block, words)
    assert got["v"] == 231.5
    assert got["p"] == pytest.approx(231.5 * 2.0 * 0.95, abs=1e-3)
    assert got["t"] == -4.5
    assert got["ekwh"] == pytest.approx(got["e"] / 1000, abs=1e-3)
    assert got["pw"] == round(231.5 * 2.0 * 0.95)
    assert {spec.address for spec in INPUTS} <= set(sim.input_registers)


# --- end to end through a pseudo-terminal -----------------------------------------------------

# Hand-made words at addresses the meter does not use, one per type and word order.
EXTRA = {
    0x0100: 0xFFFE,  # int16 -2, uint16 65534
    0x0101: 0x4048, 0x0102: 0xF5C3,  # float32 3.14, high word first
    0x0103: 0xF5C3, 0x0104: 0x4048,  # float32 3.14, low word first
    0x0105: 0xFFFF, 0x0106: 0xFFFE,  # int32 -2, high word first
    0x0107: 0x5678, 0x0108: 0x1234,  # uint32 0x12345678, low word first
}  # fmt: skip
EXTRA_REGISTERS = [
    {"name": "i16", "address": 0x100, "type": "int16", "unit": "Cel", "scale": 0.5},
    {"name": "u16", "address": 0x100, "type": "uint16"},
    {"name": "f32b", "address": 0x101, "type": "float32"},
    {"name": "f32l", "address": 0x103, "type": "float32", "word_order": "little"},
    {"name": "i32b", "address": 0x105, "type": "int32", "offset": 10},
    {"name": "u32l", "address": 0x107, "type": "uint32", "word_order": "little"},
    {"name": "voltage", "address": 0, "function": "input", "type": "float32", "unit": "V"},
]


@pytest.fixture
def meter() -> Iterator[tuple[SimModbus, PtyDevice]]:
    sim = SimModbus(seed=2, drift=False)
    sim.holding_registers.update(EXTRA)
    device = PtyDevice(sim, tick=0.005)
    yield sim, device
    device.close()


def driver_for(device: PtyDevice, **options: object) -> ModbusRTU:
    opts = ModbusOptions.model_validate({"timeout": 0.2, **options})
    return ModbusRTU(DriverContext("meter", port=device.path, baudrate=9600), opts)


def test_max_registers_splits_requests(meter: tuple[SimModbus, PtyDevice]) -> None:
    sim, device = meter
    driver = driver_for(device, registers=EXTRA_REGISTERS, max_registers=4)
    assert [(b.start, b.count) for b in driver.blocks] == [
        (0x100, 3), (0x103, 4), (0x107, 2), (0, 2),
    ]  # fmt: skip
    assert [m.value for m in driver.read()][:6] == [-1.0, 65534.0, 3.14, 3.14, 8.0, 305419896.0]
    assert sim.requests == 4
    driver.close()


def test_every_type_through_pymodbus_and_a_pty(meter: tuple[SimModbus, PtyDevice]) -> None:
    sim, device = meter
    driver = driver_for(device, registers=EXTRA_REGISTERS)
    assert len(driver.blocks) == 2  # holding 0x100..0x108 in one read, input 0..1
    driver.setup()
    for round_ in range(3):
        sim.voltage = 229.0 + round_
        got = driver.read()
        assert [(m.quantity, m.value, m.unit) for m in got] == [
            ("i16", -1.0, "Cel"),
            ("u16", 65534.0, None),
            ("f32b", 3.14, None),
            ("f32l", 3.14, None),
            ("i32b", 8.0, None),
            ("u32l", 305419896.0, None),
            ("voltage", 229.0 + round_, "V"),
        ]
    assert sim.requests == 3 * 2
    driver.close()


def test_exception_answer_names_code_and_register(meter: tuple[SimModbus, PtyDevice]) -> None:
    _, device = meter
    driver = driver_for(device, registers=[{"name": "missing", "address": 0x0040}])
    with pytest.raises(SensorError) as caught:
        driver.read()  # sets up by itself
    message = str(caught.value)
    assert "exception 0x02 (illegal data address)" in message
    assert "holding registers 0x0040..0x0040 (missing)" in message
    assert isinstance(caught.value, OSError)
    driver.close()


@pytest.mark.parametrize("fault", ["corrupt_answers", "drop_answers"])
def test_crc_errors_and_timeouts_fail_the_read_then_recover(
    meter: tuple[SimModbus, PtyDevice], fault: str
) -> None:
    sim, device = meter
    driver = driver_for(device, registers=EXTRA_REGISTERS[:1])
    driver.setup()
    setattr(sim, fault, 1)
    with pytest.raises(SensorError, match="no valid answer reading holding registers"):
        driver.read()
    assert driver.read()[0].value == -1.0  # the next request is answered again


def test_wrong_unit_times_out(meter: tuple[SimModbus, PtyDevice]) -> None:
    _, device = meter
    driver = driver_for(device, unit=9, registers=EXTRA_REGISTERS[:1])
    with pytest.raises(SensorError, match=r"modbus unit 9 .* no valid answer"):
        driver.read()
    driver.close()


def test_setup_reopens_and_close_releases_the_lock(meter: tuple[SimModbus, PtyDevice]) -> None:
    _, device = meter
    first = driver_for(device, registers=EXTRA_REGISTERS[:1])
    first.setup()
    second = driver_for(device, registers=EXTRA_REGISTERS[:1])
    with pytest.raises(SensorError, match="cannot open the port"):
        second.setup()  # pymodbus locks the port exclusively
    first.setup()  # idempotent: closes and reopens its own
    first.close()
    second.setup()
    assert second.read()[0].value == -1.0
    del second  # dropped without close(), as the daemon does on reload ...
    third = driver_for(device, registers=EXTRA_REGISTERS[:1])
    third.setup()  # ... and the port is free at once
    third.close()


def test_missing_port_is_a_sensor_error() -> None:
    opts = ModbusOptions.model_validate({"registers": [{"name": "a", "address": 0}]})
    with pytest.raises(SensorError, match="needs a port"):
        ModbusRTU(DriverContext("meter"), opts).setup()
    gone = ModbusRTU(DriverContext("meter", port="/dev/ttyNOWHERE"), opts)
    with pytest.raises(SensorError, match="cannot open the port"):
        gone.setup()


def test_example_config_is_valid() -> None:
    settings = load_settings(EXAMPLE)
    (sensor,) = settings.sensors
    assert (sensor.driver, sensor.port, sensor.baudrate) == ("modbus", "sim", 9600)
    assert isinstance(sensor.options, ModbusOptions)
    assert len(plan_blocks(sensor.options.registers)) == 1  # 0x0000..0x000D in one read, no gaps


def test_cli_read_prints_readings(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["read", "--config", str(EXAMPLE)]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    by_name = {line["quantity"]: line for line in lines}
    assert list(by_name) == [
        "voltage", "current", "power", "frequency", "energy", "temperature",
        "power_factor", "energy_kwh",
    ]  # fmt: skip
    assert by_name["power_factor"] == {**by_name["power_factor"], "value": 0.95, "unit": None}
    assert 215 <= by_name["voltage"]["value"] <= 245
    assert by_name["voltage"]["unit"] == "V"
    assert by_name["frequency"]["value"] == pytest.approx(50, abs=0.2)
    assert by_name["energy_kwh"]["value"] == pytest.approx(by_name["energy"]["value"], abs=1)
