"""config/gateway.example.yaml documents every option of every registered driver.

The example's active sensors are the board's own thermal zone, a BME280 and the
counter; every other driver has a commented-out sensor block after them, each under a
``# --- <title> ---`` header. These tests check that every option key (nested models
included) appears in its driver's part of the example, and that each commented block,
once uncommented, is a sensor entry that validates and sets every option, top-level ones
to their defaults: the documented snippets cannot rot when a driver gains, renames or
re-defaults an option.
"""

from __future__ import annotations

import re
import types
import typing
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel

from drivers.base import available_drivers, load_driver
from gateway.config import SensorSettings, load_settings
from gateway.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "config" / "gateway.example.yaml"
EXAMPLES_DIR = REPO / "config" / "examples"

HEADER = re.compile(r"^\s*# --- ")
ENTRY = re.compile(r"^ {2}(?:# )?- name:")
DRIVER = re.compile(r"^\s*#?\s*-?\s*driver:\s*([\w.-]+)", re.MULTILINE)

DRIVERS = sorted(available_drivers())


def nested_models(annotation: Any) -> list[type[BaseModel]]:
    """The BaseModel subclasses an annotation holds, through lists, tuples, dicts, unions."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    found: list[type[BaseModel]] = []
    for arg in typing.get_args(annotation):
        found.extend(nested_models(arg))
    return found


def option_keys(model: type[BaseModel]) -> dict[str, set[str]]:
    """Field names of ``model`` and of every model nested in it, by model name."""
    keys: dict[str, set[str]] = {}
    pending = [model]
    while pending:
        current = pending.pop()
        if current.__name__ in keys:
            continue
        keys[current.__name__] = set(current.model_fields)
        for field in current.model_fields.values():
            pending.extend(nested_models(field.annotation))
    return keys


def key_pattern(name: str) -> re.Pattern[str]:
    return re.compile(rf"^\s*#?\s*-?\s*{re.escape(name)}:", re.MULTILINE)


def sensors_part(text: str) -> list[str]:
    """The lines of the top-level ``sensors:`` section (the example's last section)."""
    lines = text.splitlines()
    start = lines.index("sensors:")
    return lines[start + 1 :]


def driver_sections(text: str) -> dict[str, str]:
    """Driver name to the text of its sensor entry, active or commented out.

    An entry runs from its ``- name:`` line (or ``# - name:``) to the next entry; the
    header of the next commented block is cut off.
    """
    entries: list[list[str]] = []
    for line in sensors_part(text):
        if ENTRY.match(line):
            entries.append([])
        if entries and not HEADER.match(line):
            entries[-1].append(line)
    sections: dict[str, str] = {}
    for entry in entries:
        body = "\n".join(entry)
        name = driver_of(body)
        assert name not in sections, f"driver {name} is shown twice"
        sections[name] = body
    return sections


def driver_of(text: str) -> str:
    match = DRIVER.search(text)
    assert match, f"no driver: line in:\n{text}"
    return match.group(1)


def commented_blocks(text: str) -> dict[str, list[str]]:
    """Header title to the lines of each commented block (up to the next header)."""
    blocks: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in text.splitlines():
        if HEADER.match(line):
            title = line.split("# --- ", 1)[1].rstrip("- ")
            current = blocks.setdefault(title, [])
        elif current is not None:
            current.append(line)
    return blocks


def uncomment(lines: list[str]) -> str:
    """Remove one ``# `` level from each line; blank lines stay blank."""
    for line in lines:
        assert not line.strip() or re.match(r"^\s*#( |$)", line), f"not commented: {line!r}"
    return "\n".join(re.sub(r"^(\s*)# ?", r"\1", line, count=1) for line in lines) + "\n"


def simulated(snippet: str, driver: str) -> str:
    """The snippet on the simulated bus or port, so that no hardware is named."""
    snippet = re.sub(r"^(\s*bus:)\s*\d+", r"\1 sim", snippet, flags=re.MULTILINE)
    snippet = re.sub(r"^(\s*port:)\s*/dev/\S+", r"\1 sim", snippet, flags=re.MULTILINE)
    if load_driver(driver).bus_kind == "w1" and not re.search(r"^\s*bus:", snippet, re.MULTILINE):
        snippet = re.sub(
            r"^(\s*)driver:.*$",
            lambda m: f"{m.group(0)}\n{m.group(1)}bus: sim",
            snippet,
            count=1,
            flags=re.MULTILINE,
        )
    return snippet


def minimal_config(sensors: str) -> str:
    """The example's thing and mqtt, and ``sensors`` as the only sensors."""
    data = yaml.safe_load(EXAMPLE.read_text())
    head = yaml.safe_dump({"thing": data["thing"], "mqtt": data["mqtt"]}, sort_keys=False)
    return f"{head}sensors:\n{sensors}"


def load_snippet(tmp_path: Path, snippet: str, name: str) -> SensorSettings:
    path = tmp_path / f"{name}.yaml"
    path.write_text(minimal_config(snippet))
    try:
        settings = load_settings(path)
    except ConfigError as err:
        pytest.fail(f"the uncommented block does not validate:\n{snippet}\n{err}")
    assert len(settings.sensors) == 1
    return settings.sensors[0]


def assert_every_key_set(value: object, where: str) -> None:
    """Every model in ``value`` (nested ones too) had all its fields given explicitly."""
    if isinstance(value, BaseModel):
        missing = set(type(value).model_fields) - value.model_fields_set
        assert not missing, f"{where}: the block does not show {sorted(missing)}"
        for key in type(value).model_fields:
            assert_every_key_set(getattr(value, key), f"{where}.{key}")
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            assert_every_key_set(item, f"{where}[{index}]")
    elif isinstance(value, dict):
        for key, item in value.items():
            assert_every_key_set(item, f"{where}.{key}")


TEXT = EXAMPLE.read_text()
SECTIONS = driver_sections(TEXT)
BLOCKS = {driver_of("\n".join(lines)): lines for lines in commented_blocks(TEXT).values()}


# --------------------------------------------------------------------------- every key


def test_every_registered_driver_is_shown() -> None:
    assert set(SECTIONS) == set(DRIVERS)
    for name in DRIVERS:
        assert re.search(rf"^\s*#?\s*-?\s*driver: {re.escape(name)}\b", TEXT, re.MULTILINE), name


def test_active_sensors_stay_thermal_bme280_and_counter() -> None:
    settings = load_settings(EXAMPLE)
    assert [s.driver for s in settings.sensors] == ["thermal", "bme280", "counter"]
    assert set(BLOCKS) == set(DRIVERS) - {"thermal", "bme280", "counter"}


@pytest.mark.parametrize("name", DRIVERS)
def test_every_option_key_appears(name: str) -> None:
    """Each field of the options model and of its nested models, in the driver's entry."""
    section = SECTIONS[name]
    for model, keys in option_keys(load_driver(name).options_model).items():
        for key in sorted(keys):
            assert key_pattern(key).search(TEXT), f"{name}: {model}.{key} not in the example"
            assert key_pattern(key).search(section), f"{name}: {model}.{key} not in its entry"


def test_nested_models_are_walked() -> None:
    """The walk reaches models inside lists, tuples, dicts and optionals."""
    xbee = option_keys(load_driver("xbee").options_model)
    assert {"XBeeNode", "FieldMapping", "AnalogInput", "DigitalInput"} <= set(xbee)
    assert "invert" in xbee["DigitalInput"]
    assert {"Probe"} <= set(option_keys(load_driver("ds18b20").options_model))

    class Inner(BaseModel):
        deep: int = 0

    class Outer(BaseModel):
        maybe: Inner | None = None
        many: tuple[list[Inner], ...] = ()

    assert option_keys(Outer) == {"Outer": {"maybe", "many"}, "Inner": {"deep"}}
    assert nested_models(types.NoneType) == []


def test_the_block_section_points_at_the_runnable_examples() -> None:
    intro = TEXT[: TEXT.index("  # --- ")]
    assert "config/examples/" in intro
    assert "wsn-gateway read --config config/examples/sht3x.yaml" in intro
    for name in BLOCKS:
        assert (EXAMPLES_DIR / f"{name}.yaml").is_file(), name


# --------------------------------------------------------------------------- blocks validate


@pytest.mark.parametrize("name", sorted(BLOCKS))
def test_uncommented_block_validates(name: str, tmp_path: Path) -> None:
    """The block, uncommented and on the simulator, is a valid sensor that sets every key."""
    snippet = simulated(uncomment(BLOCKS[name]), name)
    sensor = load_snippet(tmp_path, snippet, name)
    assert sensor.driver == name
    assert sensor.bus in (None, "sim")
    assert sensor.port in (None, "sim")
    model = load_driver(name).options_model
    assert type(sensor.options) is model
    assert_every_key_set(sensor.options, f"{name}.options")


@pytest.mark.parametrize("name", sorted(BLOCKS))
def test_uncommented_block_validates_as_written(name: str, tmp_path: Path) -> None:
    """On a real bus number the address must be one the chip answers on."""
    sensor = load_snippet(tmp_path, uncomment(BLOCKS[name]), name)
    driver = load_driver(name)
    if driver.bus_kind == "i2c":
        assert isinstance(sensor.bus, int)
        assert sensor.address in driver.addresses
    if driver.bus_kind == "serial":
        assert sensor.port is not None
        assert sensor.port.startswith("/dev/")


@pytest.mark.parametrize("name", sorted(BLOCKS))
def test_block_shows_the_defaults(name: str, tmp_path: Path) -> None:
    """Top-level options with a plain default are shown with that default."""
    sensor = load_snippet(tmp_path, simulated(uncomment(BLOCKS[name]), name), name)
    for key, field in type(sensor.options).model_fields.items():
        if field.is_required() or field.default_factory is not None:
            continue
        if isinstance(field.default, list | tuple | dict):
            continue  # an example entry is shown instead of the empty default
        assert getattr(sensor.options, key) == field.default, f"{name}.options.{key}"
    if load_driver(name).bus_kind == "serial":
        assert sensor.baudrate == load_driver(name).default_baudrate, name
