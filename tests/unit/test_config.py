"""Configuration loading: table-driven bad configs in ``config_cases/``, and the good paths.

Each ``config_cases/*.yaml`` starts with one or more ``# expect: <text>`` lines. The
text is a substring that must appear in the ConfigError (line number included), or
``valid`` when the file must load. Add a case by adding a file.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from drivers.base import DriverOptions
from drivers.counter import CounterOptions
from gateway.config import (
    DEFAULT_CONFIG_PATH,
    BatchSettings,
    BufferSettings,
    CloudWatchSettings,
    LoggingSettings,
    MqttSettings,
    SensorSettings,
    Settings,
    SigningSettings,
    default_config_path,
    load_settings,
    parse_size,
)
from gateway.errors import ConfigError

CASES = Path(__file__).parent / "config_cases"
REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "config" / "gateway.example.yaml"
DEMO = REPO / "config" / "demo.yaml"
JARGON = ("validation error for", "input_value", "input_type", "type=", "errors.pydantic.dev")

MINIMAL = """\
thing: gw-1
mqtt:
  endpoint: abc123-ats.iot.eu-west-1.amazonaws.com
  ca: certs/ca.pem
  cert: certs/cert.pem
  key: /abs/key.pem
sensors:
  - name: heartbeat
    driver: counter
"""


def expectations(path: Path) -> list[str]:
    """The ``# expect:`` lines at the top of a case file."""
    found = []
    for line in path.read_text().splitlines():
        if not line.startswith("# expect:"):
            break
        found.append(line.removeprefix("# expect:").lstrip())
    assert found, f"{path.name} must start with '# expect: <substring>'"
    return found


def problems_of(path: Path, **kwargs: Any) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_settings(path, **kwargs)
    return caught.value.problems


def assert_plain(problems: list[str], path: Path) -> None:
    """Every problem is ``FILE:LINE: ...`` and free of pydantic's jargon."""
    assert problems
    shape = re.compile(rf"^{re.escape(str(path))}:\d+: \S")
    for problem in problems:
        assert shape.match(problem), problem
        assert "Traceback" not in problem
        for word in JARGON:
            assert word not in problem, problem


def write(tmp_path: Path, text: str, name: str = "gateway.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# --------------------------------------------------------------------------- the table

CASE_FILES = sorted(CASES.glob("*.yaml"))


def test_there_are_enough_cases() -> None:
    assert len(CASE_FILES) >= 20


@pytest.mark.parametrize("path", CASE_FILES, ids=[p.stem for p in CASE_FILES])
def test_case(path: Path) -> None:
    expected = expectations(path)
    if expected == ["valid"]:
        assert isinstance(load_settings(path), Settings)
        return
    problems = problems_of(path)
    assert_plain(problems, path)
    text = str(ConfigError(problems))
    for substring in expected:
        assert substring in text, f"{substring!r} not in:\n{text}"
    lines = [int(p[len(str(path)) + 1 :].split(":", 1)[0]) for p in problems]
    assert lines == sorted(lines), "problems are reported in file order"


# --------------------------------------------------------------------------- shipped configs


def test_example_config_loads() -> None:
    settings = load_settings(EXAMPLE)
    assert settings.thing == "greenhouse-gw-01"
    assert settings.mqtt.endpoint == "xxxxxxxxxxxxxx-ats.iot.eu-west-1.amazonaws.com"
    assert settings.mqtt.cert == Path("/etc/wsn-gateway/device.pem.crt")
    board, bme = settings.sensors[0], settings.sensors[1]
    assert (board.name, board.driver, board.bus) == ("board", "thermal", None)
    assert (bme.driver, bme.bus, bme.address) == ("bme280", 1, 0x76)
    assert type(bme.options).__name__ == "BME280Options"
    assert settings.source == EXAMPLE


def test_example_config_shows_every_key() -> None:
    """Every settings key appears in the example, set or as a commented default."""
    text = EXAMPLE.read_text()
    models: list[type[Any]] = [
        Settings,
        MqttSettings,
        BatchSettings,
        BufferSettings,
        SigningSettings,
        LoggingSettings,
        SensorSettings,
        CloudWatchSettings,
    ]
    for model in models:
        for key in model.model_fields:
            if key != "source":
                assert re.search(rf"^\s*(# )?-? ?{key}:", text, re.MULTILINE), key
    for key in ("oversampling_temperature", "oversampling_pressure", "iir_filter", "start"):
        assert f"{key}:" in text


def test_example_defaults_match_the_models() -> None:
    """The commented defaults in the example are the models' defaults."""
    text = EXAMPLE.read_text()
    for model in (
        MqttSettings,
        BatchSettings,
        SigningSettings,
        LoggingSettings,
        CloudWatchSettings,
    ):
        for key, field in model.model_fields.items():
            if field.is_required() or key == "key_file":  # key_file's default is derived
                continue
            match = re.search(rf"^\s*# {key}: (.*)$", text, re.MULTILINE)
            assert match, key
            shown = match.group(1).strip()
            default = field.default
            expected = (
                "null"
                if default is None
                else str(default).lower()
                if isinstance(default, bool)
                else str(default)
            )
            if isinstance(default, float):
                assert float(shown) == default, key
            else:
                assert shown == expected, key


def test_demo_config_loads() -> None:
    settings = load_settings(DEMO)
    assert settings.thing == "demo-gw"
    assert settings.state_dir == DEMO.parent / "demo-state"
    assert settings.mqtt.endpoint == "localhost"
    assert settings.mqtt.port == 8883
    assert settings.mqtt.messages_per_second == 100
    assert settings.batch.max_age == 2.0
    assert settings.buffer.commit_interval == 0.5
    by_name = {s.name: s for s in settings.sensors}
    assert set(by_name) == {"greenhouse", "barn", "light", "dust", "field", "heartbeat"}
    assert by_name["greenhouse"].interval == 1
    assert by_name["barn"].driver == "sht3x"
    assert by_name["dust"].port == "sim" and by_name["field"].port == "sim"
    assert by_name["heartbeat"].driver == "counter"
    places = [(s.bus, s.address) for s in settings.sensors if s.bus is not None]
    assert all(bus == "sim" for bus, _ in places)
    assert len(set(places)) == 3


def test_demo_overrides(tmp_path: Path) -> None:
    """What the demo does: its own broker, PKI and state directory."""
    settings = load_settings(
        DEMO,
        overrides={
            "state_dir": tmp_path / "state",
            "mqtt": {
                "port": 18883,
                "ca": tmp_path / "ca.pem",
                "cert": tmp_path / "c.pem",
                "key": tmp_path / "k.pem",
            },
        },
    )
    assert settings.state_dir == tmp_path / "state"
    assert settings.mqtt.port == 18883
    assert settings.mqtt.ca == tmp_path / "ca.pem"
    # Keys not overridden keep the file's values.
    assert settings.mqtt.endpoint == "localhost"
    assert settings.mqtt.messages_per_second == 100
    assert settings.buffer_path == tmp_path / "state" / "buffer.sqlite3"


# --------------------------------------------------------------------------- behaviour


def test_overrides_deep_merge(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL)
    settings = load_settings(path, overrides={"mqtt": {"keepalive": 300}, "batch": {"max_age": 5}})
    assert settings.mqtt.keepalive == 300
    assert settings.mqtt.endpoint == "abc123-ats.iot.eu-west-1.amazonaws.com"
    assert settings.batch.max_age == 5
    assert settings.batch.max_bytes == 128000
    assert len(settings.sensors) == 1


def test_overrides_replace_lists(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL)
    sensors = [{"name": "a", "driver": "counter"}, {"name": "b", "driver": "counter"}]
    settings = load_settings(path, overrides={"sensors": sensors})
    assert [s.name for s in settings.sensors] == ["a", "b"]


def test_bad_override_is_reported_as_such(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL)
    problems = problems_of(path, overrides={"mqtt": {"keepalive": 1}})
    assert_plain(problems, path)
    assert problems == [
        f"{path}:2: mqtt.keepalive: must be between 30 and 1200 (got 1); "
        "AWS IoT Core refuses other keep-alives (set by an override)"
    ]


def test_overrides_do_not_change_the_caller_mapping(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL)
    overrides = {"mqtt": {"port": 443}}
    load_settings(path, overrides=overrides)
    assert overrides == {"mqtt": {"port": 443}}


def test_relative_paths_resolve_against_the_config_directory(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + "state_dir: ./state\nsigning:\n  key_file: keys/sign.pem\n")
    settings = load_settings(path)
    assert settings.mqtt.ca == tmp_path / "certs" / "ca.pem"
    assert settings.mqtt.cert == tmp_path / "certs" / "cert.pem"
    assert settings.mqtt.key == Path("/abs/key.pem")
    assert settings.state_dir == tmp_path / "state"
    assert settings.signing_key_path == tmp_path / "keys" / "sign.pem"


def test_relative_config_path_gives_absolute_settings_paths(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(tmp_path, MINIMAL)
    monkeypatch.chdir(tmp_path)
    settings = load_settings(Path("gateway.yaml"))
    assert settings.mqtt.ca == tmp_path / "certs" / "ca.pem"
    assert settings.mqtt.ca.is_absolute()


def test_defaults_and_helpers(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, MINIMAL))
    assert settings.state_dir == Path("/var/lib/wsn-gateway")
    assert settings.telemetry_topic == "dt/wsn/gw-1/telemetry"
    assert settings.status_topic == "dt/wsn/gw-1/status"
    assert settings.signing_key_path == Path("/var/lib/wsn-gateway/signing-ed25519.pem")
    assert settings.buffer_path == Path("/var/lib/wsn-gateway/buffer.sqlite3")
    assert settings.mqtt.port == 8883
    assert settings.mqtt.alpn is None
    assert settings.mqtt.alpn_enabled is False
    assert settings.buffer.max_bytes == 256 * 1024 * 1024
    assert settings.logging.level == "info"
    assert settings.signing.key == "ed25519"
    assert settings.clock == "kernel"
    sensor = settings.sensors[0]
    assert (sensor.interval, sensor.timeout, sensor.retries) == (10.0, 5.0, 2)
    assert (sensor.bus, sensor.address) == (None, None)
    assert isinstance(sensor.options, CounterOptions)
    assert sensor.options.start == 1


def test_formatted_topics(tmp_path: Path) -> None:
    text = MINIMAL.replace(
        "  key: /abs/key.pem\n",
        "  key: /abs/key.pem\n"
        "  topic: $aws/rules/ingest/site-7/{thing}\n"
        "  status_topic: fleet/{thing}/status/{thing}\n",
    )
    settings = load_settings(write(tmp_path, text))
    assert settings.telemetry_topic == "$aws/rules/ingest/site-7/gw-1"
    assert settings.status_topic == "fleet/gw-1/status/gw-1"
    assert settings.mqtt.topic == "$aws/rules/ingest/site-7/{thing}"


def test_topic_limits_count_the_thing_name(tmp_path: Path) -> None:
    """A topic that fits with a short thing name can overflow 256 bytes with a long one."""
    topic = "dt/" + "t" * 150 + "/{thing}"
    text = MINIMAL.replace("key: /abs/key.pem\n", f"key: /abs/key.pem\n  topic: {topic}\n")
    load_settings(write(tmp_path, text))
    long_thing = text.replace("thing: gw-1", "thing: " + "g" * 110)
    path = write(tmp_path, long_thing, "long.yaml")
    problems = problems_of(path)
    assert_plain(problems, path)
    assert len(problems) == 1
    assert problems[0].startswith(
        f"{path}:7: mqtt.topic: is 264 bytes long; AWS IoT Core allows at most 256 bytes (got "
    )


def test_thing_of_128_bytes_is_accepted(tmp_path: Path) -> None:
    text = MINIMAL.replace("thing: gw-1", "thing: " + "g" * 128)
    assert load_settings(write(tmp_path, text)).thing == "g" * 128


def test_port_443_turns_alpn_on(tmp_path: Path) -> None:
    text = MINIMAL.replace("  ca:", "  port: 443\n  ca:")
    assert load_settings(write(tmp_path, text)).mqtt.alpn_enabled is True
    text = MINIMAL.replace("  ca:", "  port: 443\n  alpn: false\n  ca:")
    path = write(tmp_path, text, "no-alpn.yaml")
    problems = problems_of(path)
    assert_plain(problems, path)
    assert "mqtt.alpn: AWS IoT Core on port 443 needs ALPN x-amzn-mqtt-ca" in problems[0]


def test_local_broker_may_use_any_port_and_unlimited_rates(tmp_path: Path) -> None:
    text = MINIMAL.replace("abc123-ats.iot.eu-west-1.amazonaws.com", "127.0.0.1").replace(
        "  ca:", "  port: 1883\n  messages_per_second: 0\n  bytes_per_second: 0\n  ca:"
    )
    mqtt = load_settings(write(tmp_path, text)).mqtt
    assert (mqtt.port, mqtt.messages_per_second, mqtt.bytes_per_second) == (1883, 0, 0)


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("256MiB", 256 * 1024**2),
        ("100MB", 100 * 1000**2),
        ("1GiB", 1024**3),
        ("512KiB", 512 * 1024),
        ("2 mib", 2 * 1024**2),
        ("1048576", 1048576),
        (1048576, 1048576),
    ],
)
def test_sizes(text: object, size: int) -> None:
    assert parse_size(text) == size


def test_buffer_size_string(tmp_path: Path) -> None:
    text = MINIMAL + "buffer:\n  max_bytes: 1GiB\n"
    assert load_settings(write(tmp_path, text)).buffer.max_bytes == 1024**3


def test_empty_sections_mean_defaults(tmp_path: Path) -> None:
    """``batch:`` with every child commented out is the defaults, not an error."""
    text = MINIMAL + "batch:\n  # max_age: 30\nbuffer:\nsigning:\nlogging:\n"
    settings = load_settings(write(tmp_path, text))
    assert settings.batch == BatchSettings()
    assert settings.logging.level == "info"


def test_level_is_case_insensitive(tmp_path: Path) -> None:
    text = MINIMAL + "logging:\n  level: DEBUG\n"
    assert load_settings(write(tmp_path, text)).logging.level == "debug"


def test_i2c_address_defaults_to_the_chip_address(tmp_path: Path) -> None:
    text = MINIMAL + "  - name: greenhouse\n    driver: bme280\n    bus: sim\n"
    sensor = load_settings(write(tmp_path, text)).sensors[1]
    assert (sensor.bus, sensor.address) == ("sim", 0x76)
    assert type(sensor.options).__name__ == "BME280Options"
    assert sensor.options.oversampling_humidity == 1  # type: ignore[attr-defined]


def test_driver_options_are_the_driver_model(tmp_path: Path) -> None:
    text = MINIMAL + "    options:\n      start: 41\n      quantity: beats\n"
    options = load_settings(write(tmp_path, text)).sensors[0].options
    assert options == CounterOptions(start=41, quantity="beats")


def test_settings_are_frozen(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, MINIMAL))
    with pytest.raises(ValidationError):
        settings.thing = "other"
    with pytest.raises(ValidationError):
        settings.mqtt.port = 1


def test_settings_round_trip(tmp_path: Path) -> None:
    """Dumped settings validate again to the same value (the options keep their model)."""
    settings = load_settings(EXAMPLE)
    again = Settings.model_validate(settings.model_dump())
    assert again == settings.model_copy(update={"source": None})


def test_source_key_is_not_accepted_from_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + "source: /elsewhere.yaml\n")
    problems = problems_of(path)
    assert_plain(problems, path)
    assert problems[0].startswith(f"{path}:10: source: unknown key 'source'")


def test_direct_construction_checks_too() -> None:
    """Settings built in code get the same checks and readable messages."""
    with pytest.raises(ValidationError) as caught:
        Settings.model_validate(
            {
                "thing": "gw",
                "mqtt": {"endpoint": "h", "ca": "a", "cert": "b", "key": "c"},
                "sensors": [{"name": "x", "driver": "counter", "options": {"star": 1}}],
            }
        )
    assert "star: unknown key 'star' (accepted: start, quantity)" in str(caught.value)
    assert isinstance(
        SensorSettings(name="x", driver="counter", options=CounterOptions(start=3)).options,
        CounterOptions,
    )
    assert SensorSettings(name="x", driver="counter").options == CounterOptions()
    assert type(SensorSettings(name="x", driver="counter").options) is not DriverOptions


# --------------------------------------------------------------------------- file problems


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    problems = problems_of(path)
    assert problems == [
        f"{path}: file not found (give another with --config or WSN_GATEWAY_CONFIG)"
    ]


def test_directory_instead_of_file(tmp_path: Path) -> None:
    problems = problems_of(tmp_path)
    assert problems == [f"{tmp_path}: is a directory, not a config file"]


def test_unreadable_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, MINIMAL)

    def refuse(self: Path) -> bytes:
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "read_bytes", refuse)  # chmod 0 does not stop root
    problems = problems_of(path)
    assert problems == [f"{path}: cannot read: Permission denied"]


def test_binary_file(tmp_path: Path) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_bytes(b"thing: \xff\xfe\x00gw\n")
    problems = problems_of(path)
    assert len(problems) == 1
    assert problems[0].startswith(f"{path}")
    assert "not a readable YAML text file" in problems[0]


def test_recursive_alias_does_not_hang(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + "extra: &loop [*loop]\n")
    problems = problems_of(path)
    assert_plain(problems, path)
    assert "extra: unknown key 'extra'" in problems[0]


def test_yaml_merge_keys_work(tmp_path: Path) -> None:
    text = MINIMAL + "  - <<: &common {driver: counter, interval: 2}\n    name: second\n"
    settings = load_settings(write(tmp_path, text))
    assert settings.sensors[1].interval == 2


# --------------------------------------------------------------------------- default path


def test_default_config_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("WSN_GATEWAY_CONFIG", raising=False)
    assert default_config_path() == DEFAULT_CONFIG_PATH == Path("/etc/wsn-gateway/gateway.yaml")
    monkeypatch.setenv("WSN_GATEWAY_CONFIG", "")
    assert default_config_path() == DEFAULT_CONFIG_PATH
    path = write(tmp_path, MINIMAL)
    monkeypatch.setenv("WSN_GATEWAY_CONFIG", str(path))
    assert default_config_path() == path
    assert load_settings(default_config_path()).source == path
