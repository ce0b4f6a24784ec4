"""Remote configuration through the device shadow, without a broker.

- the ``shadow`` section of the configuration (file:line errors, the example);
- topics of the classic and of a named shadow;
- :func:`evaluate`, table-driven: good, bad and mixed desired documents, nulls, wrong
  types, unknown keys and sensors, every message as the YAML check would say it;
- the reported document, with nulls for what went away; JSON merge patch round trips;
- :class:`RemoteConfig`: versions (older documents ignored, a recreated shadow
  followed) and persistence in state_dir;
- :class:`ShadowAgent`: the protocol on every kind of message, with a fake link;
- :meth:`Poller.set_interval`: a new interval takes effect at once, without a restart.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest
from hypothesis import given
from hypothesis import strategies as st

from drivers.base import Driver, DriverContext, DriverOptions
from gateway.config import Settings, ShadowSettings, load_settings
from gateway.errors import ConfigError, PublishError
from gateway.polling import Poller
from gateway.readings import Measurement, Reading
from gateway.shadow import (
    REPORTED_SECTIONS,
    STATE_FILE,
    RemoteConfig,
    ShadowAgent,
    ShadowTopics,
    diff_patch,
    evaluate,
    merge_patch,
    report_patch,
    reported_view,
    state_path,
    write_json_atomically,
)
from gateway.workers import Worker

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "config" / "gateway.example.yaml"

CONFIG = """\
thing: gw-1
state_dir: {state_dir}
mqtt:
  endpoint: abc123-ats.iot.eu-west-1.amazonaws.com
  ca: ca.pem
  cert: cert.pem
  key: key.pem
batch:
  max_age: 5
sensors:
  - name: fan
    driver: counter
    interval: 10
  - name: probe
    driver: counter
    interval: 1
  - name: air
    driver: bme280
    bus: sim
    interval: 30
    options:
      iir_filter: 4
{extra}"""


def write(tmp_path: Path, extra: str = "") -> Path:
    path = tmp_path / "gateway.yaml"
    path.write_text(CONFIG.format(state_dir=tmp_path / "state", extra=extra))
    return path


@pytest.fixture
def base(tmp_path: Path) -> Settings:
    return load_settings(write(tmp_path, "shadow:\n  enabled: true\n"))


# --------------------------------------------------------------------------- configuration


def test_the_shadow_is_off_unless_enabled(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path))
    assert settings.shadow == ShadowSettings(enabled=False, name=None)
    named = load_settings(write(tmp_path, "shadow:\n  enabled: true\n  name: gw-config_1\n"))
    assert named.shadow == ShadowSettings(enabled=True, name="gw-config_1")
    assert load_settings(write(tmp_path, "shadow:\n")).shadow == ShadowSettings()


@pytest.mark.parametrize(
    ("extra", "line", "message"),
    [
        (
            "shadow:\n  name: 'my shadow'\n",
            24,
            "shadow.name: must be a named shadow's name: 1 to 64 letters, digits, ':', '_' "
            "or '-' (null for the thing's classic shadow; got 'my shadow')",
        ),
        ("shadow:\n  name: ''\n", 24, "shadow.name: must be a named shadow's name"),
        (f"shadow:\n  name: {'x' * 65}\n", 24, "shadow.name: must be a named shadow's name"),
        ("shadow:\n  enabled: maybe\n", 24, "shadow.enabled: must be true or false (got 'maybe')"),
        (
            "shadow:\n  nmae: config\n",
            24,
            "shadow.nmae: unknown key 'nmae' (accepted: enabled, name); did you mean 'name'?",
        ),
        ("shadow: on\n", 23, "shadow: must be a mapping of keys (got true)"),
    ],
)
def test_shadow_settings_errors_name_file_and_line(
    tmp_path: Path, extra: str, line: int, message: str
) -> None:
    path = write(tmp_path, extra)
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    assert any(p.startswith(f"{path}:{line}: {message}") for p in caught.value.problems), (
        caught.value.problems
    )


def test_the_example_documents_the_shadow_section_with_its_defaults() -> None:
    text = EXAMPLE.read_text()
    section = text[text.index("\nshadow:\n") :]
    section = section[: section.index("\n\n# ")]
    for key, field in ShadowSettings.model_fields.items():
        match = re.search(rf"^  # {key}: (.*)$", section, re.MULTILINE)
        assert match, key
        default = field.default
        shown = "null" if default is None else str(default).lower()
        assert match.group(1).strip() == shown, key
    assert "docs/shadow.md" in text[text.index("# Remote configuration through") :]
    assert load_settings(EXAMPLE).shadow == ShadowSettings()


# --------------------------------------------------------------------------- topics


def test_topics_of_the_classic_and_of_a_named_shadow() -> None:
    classic = ShadowTopics.of("gw-1")
    assert classic.get == "$aws/things/gw-1/shadow/get"
    assert classic.update == "$aws/things/gw-1/shadow/update"
    assert classic.responses == (
        "$aws/things/gw-1/shadow/get/accepted",
        "$aws/things/gw-1/shadow/get/rejected",
        "$aws/things/gw-1/shadow/update/accepted",
        "$aws/things/gw-1/shadow/update/rejected",
        "$aws/things/gw-1/shadow/update/delta",
    )
    assert classic.requests == ("$aws/things/gw-1/shadow/get", "$aws/things/gw-1/shadow/update")
    named = ShadowTopics.of("gw-1", "config")
    assert named.update_delta == "$aws/things/gw-1/shadow/name/config/update/delta"
    assert named.requests == (
        "$aws/things/gw-1/shadow/name/config/get",
        "$aws/things/gw-1/shadow/name/config/update",
    )
    # AWS IoT Core: at most 7 slashes in a topic; the named shadow's longest has 7.
    assert max(t.count("/") for t in named.responses) == 7


# --------------------------------------------------------------------------- evaluation

RANGE_INTERVAL = "must be between 0.05 and 86400"
CASES: list[tuple[str, Any, dict[str, Any], dict[str, str]]] = [
    # (id, desired, applied, refused: path -> the message, or its start when it ends in ...)
    ("empty", {}, {}, {}),
    ("interval", {"sensors": {"fan": {"interval": 30}}}, {"sensors.fan.interval": 30}, {}),
    (
        "interval-float",
        {"sensors": {"probe": {"interval": 0.5}}},
        {"sensors.probe.interval": 0.5},
        {},
    ),
    (
        "interval-of-a-driver-with-options",
        {"sensors": {"air": {"interval": 60}}},
        {"sensors.air.interval": 60},
        {},
    ),
    (
        "batch",
        {"batch": {"max_records": 100, "max_bytes": 2048, "max_age": 2.5}},
        {"batch.max_records": 100, "batch.max_bytes": 2048, "batch.max_age": 2.5},
        {},
    ),
    ("whole-float-as-int", {"batch": {"max_records": 7.0}}, {"batch.max_records": 7}, {}),
    ("level", {"logging": {"level": "DEBUG"}}, {"logging.level": "debug"}, {}),
    (
        "interval-negative",
        {"sensors": {"fan": {"interval": -1}}},
        {},
        {"sensors.fan.interval": f"{RANGE_INTERVAL} (got -1)"},
    ),
    (
        "interval-zero",
        {"sensors": {"fan": {"interval": 0}}},
        {},
        {"sensors.fan.interval": f"{RANGE_INTERVAL} (got 0)"},
    ),
    (
        "interval-text",
        {"sensors": {"fan": {"interval": "fast"}}},
        {},
        {"sensors.fan.interval": "must be a number (got 'fast')"},
    ),
    (
        "interval-bool",
        {"sensors": {"fan": {"interval": True}}},
        {},
        {"sensors.fan.interval": "must be a number (got true)"},
    ),
    (
        "interval-list",
        {"sensors": {"fan": {"interval": [1]}}},
        {},
        {"sensors.fan.interval": "must be a number (got a list)"},
    ),
    (
        "max-age-negative",
        {"batch": {"max_age": -1}},
        {},
        {"batch.max_age": "must be greater than 0 (got -1)"},
    ),
    (
        "max-age-infinite",
        {"batch": {"max_age": float("inf")}},
        {},
        {"batch.max_age": "must be a finite number (got inf)"},
    ),
    (
        "max-bytes-too-big",
        {"batch": {"max_bytes": 200000}},
        {},
        {
            "batch.max_bytes": (
                "must be between 1024 and 131072 (got 200000); AWS IoT Core rejects messages over "
                "128 KB"
            )
        },
    ),
    (
        "max-records-fraction",
        {"batch": {"max_records": 2.5}},
        {},
        {"batch.max_records": "must be a whole number (got 2.5)"},
    ),
    (
        "max-records-bool",
        {"batch": {"max_records": False}},
        {},
        {"batch.max_records": "must be a whole number (got false)"},
    ),
    (
        "max-records-zero",
        {"batch": {"max_records": 0}},
        {},
        {"batch.max_records": "must be at least 1 (got 0)"},
    ),
    (
        "level-unknown",
        {"logging": {"level": "verbose"}},
        {},
        {"logging.level": "must be one of debug, info, warning, error (got 'verbose')"},
    ),
    (
        "level-number",
        {"logging": {"level": 10}},
        {},
        {"logging.level": "must be one of debug, info, warning, error (got 10)"},
    ),
    (
        "unknown-batch-key",
        {"batch": {"max_recs": 5}},
        {},
        {
            "batch.max_recs": (
                "unknown key 'max_recs' (accepted: max_records, max_bytes, max_age); did you mean "
                "'max_records'?"
            )
        },
    ),
    (
        "batch-key-not-remote",
        {"batch": {"interleave": False}},
        {},
        {
            "batch.interleave": (
                "cannot be changed remotely (only max_records, max_bytes, max_age); "
                "change it in the configuration file"
            )
        },
    ),
    (
        "sensor-key-not-remote",
        {"sensors": {"fan": {"timeout": 2}}},
        {},
        {
            "sensors.fan.timeout": (
                "cannot be changed remotely (only interval); change it in the configuration file"
            )
        },
    ),
    (
        "sensor-key-unknown",
        {"sensors": {"fan": {"intervall": 2}}},
        {},
        {
            "sensors.fan.intervall": (
                "unknown key 'intervall' (accepted: interval); did you mean 'interval'?"
            )
        },
    ),
    (
        "unknown-sensor",
        {"sensors": {"fna": {"interval": 5}}},
        {},
        {"sensors.fna": "unknown sensor 'fna' (configured: fan, probe, air); did you mean 'fan'?"},
    ),
    (
        "sensor-not-a-mapping",
        {"sensors": {"fan": 30}},
        {},
        {"sensors.fan": "must be a mapping of keys (got 30)"},
    ),
    (
        "sensors-not-a-mapping",
        {"sensors": [30]},
        {},
        {"sensors": "must be a mapping of sensor names to settings (got a list)"},
    ),
    ("section-not-a-mapping", {"batch": 5}, {}, {"batch": "must be a mapping of keys (got 5)"}),
    (
        "top-level-not-remote",
        {"mqtt": {"port": 1883}},
        {},
        {
            "mqtt": (
                "cannot be changed remotely (only sensors, batch, logging); change it in the "
                "configuration file"
            )
        },
    ),
    (
        "top-level-unknown",
        {"sensor": {"fan": {"interval": 5}}},
        {},
        {
            "sensor": (
                "unknown key 'sensor' (accepted: sensors, batch, logging); did you mean 'sensors'?"
            )
        },
    ),
    ("desired-not-a-mapping", [1, 2], {}, {"desired": "must be a mapping of keys (got a list)"}),
    (
        "mixed",
        {
            "sensors": {
                "fan": {"interval": 30, "timeout": 2},
                "probe": {"interval": 0},
                "ghost": {"interval": 1},
            },
            "batch": {"max_records": 10, "max_age": "soon"},
            "logging": {"level": "warning"},
            "colour": "blue",
        },
        {"sensors.fan.interval": 30, "batch.max_records": 10, "logging.level": "warning"},
        {
            "sensors.fan.timeout": "cannot be changed remotely ...",
            "sensors.probe.interval": f"{RANGE_INTERVAL} (got 0)",
            "sensors.ghost": "unknown sensor 'ghost' ...",
            "batch.max_age": "must be a number (got 'soon')",
            "colour": "unknown key 'colour' ...",
        },
    ),
    (
        "nulls-are-nothing",
        {
            "sensors": {"fan": None, "probe": {"interval": None}},
            "batch": None,
            "logging": {"level": None},
        },
        {},
        {},
    ),
]


@pytest.mark.parametrize(
    ("desired", "applied", "refused"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_evaluate(
    base: Settings, desired: Any, applied: dict[str, Any], refused: dict[str, str]
) -> None:
    evaluation = evaluate(desired, base)
    assert evaluation.applied == applied
    assert set(evaluation.refused) == set(refused)
    for path, message in refused.items():
        if message.endswith("..."):
            assert evaluation.refused[path].startswith(message[:-3].rstrip()), path
        else:
            assert evaluation.refused[path] == message, path
    # The settings in effect: the file's, with exactly the applied values in place.
    s = evaluation.settings
    for path, value in applied.items():
        section, *rest = path.split(".")
        if section == "sensors":
            sensor = next(x for x in s.sensors if x.name == rest[0])
            assert getattr(sensor, rest[1]) == value
        else:
            assert getattr(getattr(s, section), rest[0]) == value
    untouched = {p.split(".")[0] for p in applied}
    for section in ("batch", "logging"):
        if section not in untouched:
            assert getattr(s, section) == getattr(base, section)
    if not applied:
        assert s == base
    assert s.mqtt == base.mqtt and s.source == base.source and s.state_dir == base.state_dir


def test_one_bad_value_never_blocks_the_good_ones_of_the_same_section(base: Settings) -> None:
    evaluation = evaluate({"batch": {"max_records": -5, "max_bytes": 4096, "max_age": 0}}, base)
    assert evaluation.applied == {"batch.max_bytes": 4096}
    assert set(evaluation.refused) == {"batch.max_records", "batch.max_age"}
    assert evaluation.settings.batch.max_bytes == 4096
    assert evaluation.settings.batch.max_records == base.batch.max_records
    assert evaluation.settings.batch.max_age == base.batch.max_age


def test_the_options_of_a_sensor_survive_a_remote_interval(base: Settings) -> None:
    air = evaluate({"sensors": {"air": {"interval": 2}}}, base).settings.sensors[2]
    assert air.interval == 2
    assert air.options == base.sensors[2].options
    assert air.options.model_dump()["iir_filter"] == 4
    assert (air.bus, air.address) == ("sim", 0x76)


# --------------------------------------------------------------------------- reporting


def test_the_reported_view_holds_what_is_in_effect_and_what_was_refused(base: Settings) -> None:
    evaluation = evaluate(
        {
            "sensors": {"fan": {"interval": 30}},
            "batch": {"max_age": -1},
            "logging": {"level": "error"},
        },
        base,
    )
    assert reported_view(evaluation) == {
        "sensors": {"fan": {"interval": 30}, "probe": {"interval": 1}, "air": {"interval": 30}},
        "batch": {"max_records": 5000, "max_bytes": 128000, "max_age": 5},
        "logging": {"level": "error"},
        "refused": {"batch.max_age": "must be greater than 0 (got -1)"},
    }
    assert "refused" not in reported_view(evaluate({}, base))
    assert set(reported_view(evaluation)) <= set(REPORTED_SECTIONS)


def test_report_patch_sends_the_differences_and_nulls_for_what_went_away(base: Settings) -> None:
    wanted = reported_view(evaluate({"batch": {"max_age": 2}}, base))
    assert report_patch(wanted, None) == wanted  # the shadow's state is not known: all
    assert report_patch(wanted, wanted) is None  # nothing to say: no loop of reports
    held = json.loads(json.dumps(wanted))
    held["refused"] = {"sensors.fan.interval": "must be ...", "batch.max_age": "must ..."}
    held["sensors"]["gone"] = {"interval": 5}
    held["batch"]["max_age"] = 5.0
    held["logging"] = {"level": "debug"}
    assert report_patch(wanted, held) == {
        "refused": None,
        "sensors": {"gone": None},
        "batch": {"max_age": 2},
        "logging": {"level": "info"},
    }
    # 2 and 2.0 are the same JSON number; true is not 1.
    assert report_patch({"batch": {"max_age": 2}}, {"batch": {"max_age": 2.0}}) is None
    assert report_patch({"x": True}, {"x": 1}) == {"x": True}


JSON_LEAF = st.one_of(st.booleans(), st.integers(), st.text(max_size=5), st.floats(allow_nan=False))
JSON_DOC = st.recursive(
    st.dictionaries(st.text(max_size=4), JSON_LEAF, max_size=4),
    lambda inner: st.dictionaries(st.text(max_size=4), st.one_of(JSON_LEAF, inner), max_size=4),
    max_leaves=20,
)


@given(JSON_DOC, JSON_DOC)
def test_a_diff_applied_as_a_merge_patch_gives_the_new_document(old: Any, new: Any) -> None:
    # A merge patch cannot make an empty object: such a member disappears, as in a shadow.
    assert merge_patch(old, diff_patch(old, new)) == merge_patch({}, new)


def test_merge_patch_follows_rfc_7396() -> None:
    # The examples of RFC 7396, appendix A (those on objects).
    assert merge_patch({"a": "b"}, {"a": "c"}) == {"a": "c"}
    assert merge_patch({"a": "b"}, {"b": "c"}) == {"a": "b", "b": "c"}
    assert merge_patch({"a": "b"}, {"a": None}) == {}
    assert merge_patch({"a": "b", "b": "c"}, {"a": None}) == {"b": "c"}
    assert merge_patch({"a": ["b"]}, {"a": "c"}) == {"a": "c"}
    assert merge_patch({"a": {"b": "c"}}, {"a": {"b": "d", "c": None}}) == {"a": {"b": "d"}}
    assert merge_patch({"e": None}, {"a": 1}) == {"e": None, "a": 1}
    assert merge_patch({}, {"a": {"bb": {"ccc": None}}}) == {"a": {"bb": {}}}
    original = {"a": {"b": 1}}
    merge_patch(original, {"a": {"b": None}})
    assert original == {"a": {"b": 1}}  # not changed in place


# --------------------------------------------------------------------------- versions


def remote(
    tmp_path: Path, version: int | None = None, desired: dict[str, Any] | None = None
) -> RemoteConfig:
    config = RemoteConfig(tmp_path / STATE_FILE, ShadowTopics.of("gw-1"))
    config.version = version
    config.desired = desired or {}
    return config


VERSION_CASES = [
    # (id, saved version, steps: (kind, version, accepted?))
    ("fresh-takes-anything", None, [("patch", 3, True), ("patch", 2, False), ("patch", 3, True)]),
    ("older-patch-than-saved", 10, [("patch", 9, False), ("patch", 10, True), ("patch", 11, True)]),
    (
        "get-answer-is-the-truth",
        10,
        [("document", 4, True), ("patch", 4, True), ("patch", 3, False)],
    ),
    (
        "newer-patch-before-get",
        10,
        [("patch", 12, True), ("document", 11, False), ("document", 12, True)],
    ),
    (
        "after-a-document-older-ignored",
        None,
        [("document", 7, True), ("document", 6, False), ("patch", 6, False)],
    ),
    ("no-version-is-taken", 10, [("patch", None, True), ("document", None, True)]),
]


@pytest.mark.parametrize(
    ("saved", "steps"), [c[1:] for c in VERSION_CASES], ids=[c[0] for c in VERSION_CASES]
)
def test_documents_older_than_the_last_applied_are_ignored(
    tmp_path: Path, saved: int | None, steps: list[tuple[str, int | None, bool]]
) -> None:
    config = remote(tmp_path, saved)
    config.begin_session()
    for number, (kind, version, accepted) in enumerate(steps):
        desired = {"batch": {"max_records": number + 1}}
        if kind == "patch":
            taken = config.take_patch(desired, version)
        else:
            taken = config.take_document(desired, version)
        assert taken is accepted, (number, kind, version)
        if accepted:
            assert config.desired == desired
            if version is not None:
                assert config.version == version


def test_a_new_connection_takes_its_get_answer_even_if_older(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = remote(tmp_path, 57, {"batch": {"max_records": 9}})
    config.begin_session()
    with caplog.at_level(logging.INFO, logger="gateway.shadow"):
        # A shadow deleted and made again: its versions start anew.
        assert config.take_document({"logging": {"level": "debug"}}, 2)
    assert config.desired == {"logging": {"level": "debug"}}
    assert config.version == 2
    assert "deleted and made again" in caplog.text


def test_patches_merge_and_nulls_delete(tmp_path: Path) -> None:
    config = remote(tmp_path, 1, {"sensors": {"fan": {"interval": 5}}, "batch": {"max_age": 3}})
    assert config.take_patch({"sensors": {"fan": {"interval": 7}}, "batch": {"max_age": None}}, 2)
    assert config.desired == {"sensors": {"fan": {"interval": 7}}}
    assert config.dirty
    assert config.take_patch(None, 3)  # {"desired": null}: all of it deleted
    assert config.desired == {}
    assert not config.take_patch([1, 2], 4)  # not a desired state
    assert config.version == 3


def test_a_missing_shadow_forgets_the_version(tmp_path: Path) -> None:
    config = remote(tmp_path, 40)
    config.begin_session()
    config.forget_version()
    assert config.version is None
    assert config.take_patch({"batch": {"max_age": 2}}, 1)


def test_once_is_once(tmp_path: Path) -> None:
    config = remote(tmp_path)
    assert config.once("no-answer")
    assert not config.once("no-answer")
    assert config.once("no-shadow")


# --------------------------------------------------------------------------- persistence


def test_the_applied_state_is_saved_and_read_back(tmp_path: Path, base: Settings) -> None:
    path = state_path(base)
    assert path == base.state_dir / "shadow.json"
    path.parent.mkdir(parents=True)
    topics = ShadowTopics.of(base.thing, base.shadow.name)
    config = RemoteConfig(path, topics)
    config.take_patch({"sensors": {"fan": {"interval": 20}}, "batch": {"max_age": -1}}, 12)
    evaluation = evaluate(config.desired, base)
    write_json_atomically(path, config.snapshot(evaluation))
    assert [p.name for p in path.parent.iterdir()] == ["shadow.json"]  # no temporary left
    saved = json.loads(path.read_text())
    assert saved["applied"] == {"sensors.fan.interval": 20}
    assert saved["refused"] == {"batch.max_age": "must be greater than 0 (got -1)"}
    loaded = RemoteConfig.load(path, topics)
    assert loaded.desired == config.desired
    assert loaded.version == 12
    assert not loaded.dirty
    assert evaluate(loaded.desired, base).settings.sensors[0].interval == 20
    # Written again: replaced whole.
    config.take_patch({"sensors": None}, 13)
    write_json_atomically(path, config.snapshot(evaluate(config.desired, base)))
    assert RemoteConfig.load(path, topics).desired == {"batch": {"max_age": -1}}


@pytest.mark.parametrize(
    ("content", "logged"),
    [
        (None, None),
        ("{not json", "cannot read the saved remote settings"),
        ('{"format": 99}', "not in a known format"),
        ("[1, 2]", "not in a known format"),
        (
            '{"format": 1, "shadow": "$aws/things/other/shadow", "version": 3,'
            ' "desired": {"batch": {"max_age": 2}}}',
            "belong to another shadow",
        ),
    ],
    ids=["missing", "corrupt", "format", "not-an-object", "other-shadow"],
)
def test_saved_state_that_cannot_be_used_is_not_applied(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, content: str | None, logged: str | None
) -> None:
    path = tmp_path / STATE_FILE
    if content is not None:
        path.write_text(content)
    with caplog.at_level(logging.INFO, logger="gateway.shadow"):
        loaded = RemoteConfig.load(path, ShadowTopics.of("gw-1"))
    assert loaded.desired == {}
    assert loaded.version is None
    if logged is None:
        assert not caplog.records
    else:
        assert logged in caplog.text


# --------------------------------------------------------------------------- the agent


class Link:
    """What the agent sends, and what it applies and saves."""

    def __init__(self, base: Settings) -> None:
        self.sent: list[tuple[str, bytes]] = []
        self.applied: list[Settings] = []
        self.saved: list[dict[str, Any]] = []
        self.fail = False
        self.base = base

    async def send(self, topic: str, payload: bytes) -> None:
        if self.fail:
            raise PublishError("not connected")
        self.sent.append((topic, payload))

    def apply(self, settings: Settings) -> None:
        self.applied.append(settings)

    async def persist(self, path: Path, data: dict[str, Any]) -> None:
        self.saved.append(data)

    def reports(self) -> list[dict[str, Any]]:
        return [json.loads(p) for t, p in self.sent if t.endswith("/update")]


@pytest.fixture
def link(base: Settings) -> Link:
    return Link(base)


def make_agent(
    base: Settings, link: Link, remote_config: RemoteConfig | None = None, **kw: Any
) -> ShadowAgent:
    config = remote_config or RemoteConfig(state_path(base), ShadowTopics.of(base.thing))
    return ShadowAgent(config, base, send=link.send, apply=link.apply, persist=link.persist, **kw)


def doc(**members: Any) -> bytes:
    return json.dumps(members).encode()


async def test_on_connect_a_get_then_the_document_is_applied_saved_and_reported(
    base: Settings, link: Link
) -> None:
    agent = make_agent(base, link)
    t = agent.topics
    assert agent.subscriptions == t.responses
    await agent._request(new_session=True)
    assert link.sent == [("$aws/things/gw-1/shadow/get", b"")]
    desired = {"sensors": {"fan": {"interval": 30}}, "batch": {"max_age": -1}}
    reported = {"sensors": {"gone": {"interval": 1}}, "refused": {"old.key": "why"}, "other": 1}
    await agent._handle(
        t.get_accepted, doc(state={"desired": desired, "reported": reported}, version=4)
    )
    (settings,) = link.applied
    assert settings.sensors[0].interval == 30
    (saved,) = link.saved
    assert saved["version"] == 4 and saved["desired"] == desired
    (report,) = link.reports()
    assert report["clientToken"].startswith("wsn-gateway:")
    assert report["state"]["reported"] == {
        "sensors": {
            "gone": None,
            "fan": {"interval": 30},
            "probe": {"interval": 1},
            "air": {"interval": 30},
        },
        "batch": {"max_records": 5000, "max_bytes": 128000, "max_age": 5},
        "logging": {"level": "info"},
        "refused": {"old.key": None, "batch.max_age": "must be greater than 0 (got -1)"},
    }  # "other" is not the gateway's: left alone

    # The delta the report causes (max_age still differs) changes nothing: no new report.
    await agent._handle(t.update_delta, doc(state={"batch": {"max_age": -1}}, version=5))
    assert len(link.reports()) == 1 and len(link.applied) == 1 and len(link.saved) == 2
    # A new delta applies and reports only what changed.
    await agent._handle(t.update_delta, doc(state={"batch": {"max_age": 2}}, version=6))
    assert link.applied[-1].batch.max_age == 2
    assert link.reports()[-1]["state"]["reported"] == {"batch": {"max_age": 2}, "refused": None}
    # An older delta is dropped.
    await agent._handle(t.update_delta, doc(state={"batch": {"max_age": 9}}, version=5))
    assert link.applied[-1].batch.max_age == 2
    # update/accepted with nulls: back to the file's value.
    await agent._handle(
        t.update_accepted,
        doc(state={"desired": {"sensors": {"fan": None}, "batch": None}}, version=7),
    )
    assert link.applied[-1].sensors[0].interval == 10
    assert link.applied[-1].batch == base.batch
    assert link.reports()[-1]["state"]["reported"] == {
        "sensors": {"fan": {"interval": 10}},
        "batch": {"max_age": 5},
    }
    assert agent.remote.desired == {}
    # Its echo (our own report accepted) changes nothing.
    await agent._handle(
        t.update_accepted, doc(state={"reported": {"batch": {"max_age": 5}}}, version=8)
    )
    assert len(link.reports()) == 3


async def test_a_thing_without_a_shadow_gets_one_with_the_file_settings(
    base: Settings, link: Link, caplog: pytest.LogCaptureFixture
) -> None:
    config = RemoteConfig(state_path(base), ShadowTopics.of(base.thing))
    config.take_patch({"logging": {"level": "debug"}}, 30)  # saved from an earlier life
    agent = make_agent(base, link, config)
    with caplog.at_level(logging.INFO, logger="gateway.shadow"):
        for _ in range(2):  # two connections
            await agent._request(new_session=True)
            await agent._handle(agent.topics.get_rejected, doc(code=404, message="No shadow"))
    assert caplog.text.count("has no shadow document yet") == 1
    # No document desires anything: the file's settings, reported whole (which creates
    # the document), and saved so.
    assert link.applied[-1].logging.level == "info"
    for report in link.reports():  # one a connection: each found no document
        assert report["state"]["reported"] == reported_view(evaluate({}, base))
    assert len(link.reports()) == 2
    assert link.saved[-1]["desired"] == {} and link.saved[-1]["version"] is None
    assert config.version is None  # a new shadow's versions start anew
    assert config.take_patch({"batch": {"max_age": 1}}, 1)


async def test_no_answer_is_said_once_and_everything_goes_on(
    base: Settings, link: Link, caplog: pytest.LogCaptureFixture
) -> None:
    agent = make_agent(base, link, answer_timeout=0.05)
    task = asyncio.create_task(agent.run())
    try:
        with caplog.at_level(logging.INFO, logger="gateway.shadow"):
            for _ in range(2):
                agent.subscribed()
                await asyncio.sleep(0.2)
        assert caplog.text.count("no answer from the device shadow service within 0.05 s") == 1
        assert [t for t, _ in link.sent] == [agent.topics.get] * 2
        assert link.applied == [] and link.reports() == []
        # An answer that comes late is still applied.
        agent.message(
            agent.topics.get_accepted,
            doc(state={"desired": {"batch": {"max_records": 3}}}, version=1),
        )
        await asyncio.sleep(0.05)
        assert link.applied[-1].batch.max_records == 3
    finally:
        task.cancel()


def broken(settings: Settings) -> None:
    raise RuntimeError("bug")


async def test_what_cannot_be_handled_is_logged_and_the_agent_goes_on(
    base: Settings, link: Link, caplog: pytest.LogCaptureFixture
) -> None:
    agent = make_agent(base, link)
    task = asyncio.create_task(agent.run())
    t = agent.topics
    try:
        with caplog.at_level(logging.DEBUG, logger="gateway.shadow"):
            agent.message(t.update_delta, b"{not json")
            agent.message(t.update_delta, b"[1]")
            agent._apply = broken  # a bug on the daemon's side
            agent.message(t.update_delta, doc(state={"batch": {"max_age": 2}}, version=1))
            await asyncio.sleep(0.05)
            agent._apply = link.apply
            agent.message(t.update_delta, doc(state={"batch": {"max_age": 2}}, version=2))
            await asyncio.sleep(0.05)
        assert caplog.text.count("not a JSON object") == 2
        assert "a message could not be handled" in caplog.text
        assert link.applied[-1].batch.max_age == 2  # the same document: applied this time
        assert not task.done()
    finally:
        task.cancel()


async def test_rejections_of_our_reports_are_warned_about_and_others_are_not(
    base: Settings, link: Link, caplog: pytest.LogCaptureFixture
) -> None:
    agent = make_agent(base, link)
    t = agent.topics
    await agent._handle(t.get_rejected, doc(code=404, message="No shadow"))
    token = link.reports()[0]["clientToken"]
    caplog.clear()  # the 404's note above is INFO; another test may have left INFO on
    with caplog.at_level(logging.WARNING, logger="gateway.shadow"):
        await agent._handle(
            t.update_rejected, doc(code=400, message="other", clientToken="console-1")
        )
        assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
        await agent._handle(
            t.update_rejected, doc(code=413, message="too large", clientToken=token)
        )
    (record,) = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert record.getMessage() == "shadow: the shadow service refused the reported state"
    assert record.code == 413  # type: ignore[attr-defined]
    with caplog.at_level(logging.WARNING, logger="gateway.shadow"):
        await agent._handle(t.get_rejected, doc(code=403, message="Forbidden"))
        await agent._handle(t.get_rejected, doc(code=403, message="Forbidden"))
    assert caplog.text.count("refused to send the document") == 1


async def test_a_report_that_cannot_be_sent_goes_out_with_the_next_change(
    base: Settings, link: Link
) -> None:
    agent = make_agent(base, link)
    t = agent.topics
    link.fail = True
    await agent._handle(
        t.get_accepted, doc(state={"desired": {"batch": {"max_age": 2}}}, version=1)
    )
    assert link.applied[-1].batch.max_age == 2  # applied even so
    assert agent.remote.known == {}
    link.fail = False
    await agent._handle(t.update_delta, doc(state={"batch": {"max_age": 2}}, version=2))
    (report,) = link.reports()
    assert report["state"]["reported"]["batch"]["max_age"] == 2


async def test_an_ignored_older_document_asks_again(base: Settings, link: Link) -> None:
    agent = make_agent(base, link)
    t = agent.topics
    await agent._handle(t.update_delta, doc(state={"batch": {"max_age": 2}}, version=9))
    sent = len(link.sent)
    await agent._handle(t.update_accepted, doc(state={"desired": {"batch": None}}, version=8))
    assert link.sent[sent:] == [(t.get, b"")]
    assert agent.remote.desired == {"batch": {"max_age": 2}}


async def test_a_document_deleted_whole_goes_back_to_the_file(base: Settings, link: Link) -> None:
    agent = make_agent(base, link)
    t = agent.topics
    await agent._handle(
        t.get_accepted, doc(state={"desired": {"batch": {"max_age": 2}}}, version=1)
    )
    await agent._handle(t.update_accepted, doc(state=None, version=2))
    assert link.applied[-1].batch == base.batch
    assert agent.remote.desired == {}
    assert link.reports()[-1]["state"]["reported"] == {
        **reported_view(evaluate({}, base)),
    }  # the shadow was emptied: reported whole again


# --------------------------------------------------------------------------- polling


class Ticks(Driver):
    """Records when it is read."""

    ranges: ClassVar[dict[str, tuple[float, float]]] = {}

    def __init__(self) -> None:
        super().__init__(DriverContext("ticks"), DriverOptions())
        self.times: list[float] = []
        self._lock = threading.Lock()

    def read(self) -> list[Measurement]:
        with self._lock:
            self.times.append(time.monotonic())
        return [Measurement("count", None, len(self.times))]


@pytest.fixture
def poller() -> Iterator[tuple[Poller, Ticks]]:
    worker = Worker("test-ticks")
    driver = Ticks()
    readings: list[Reading] = []
    yield (
        Poller(
            name="ticks",
            driver=driver,
            worker=worker,
            interval=3600,
            timeout=1.0,
            retries=0,
            sink=readings.extend,
            synced=lambda: True,
        ),
        driver,
    )
    worker.shutdown()


async def test_a_new_interval_takes_effect_at_once(poller: tuple[Poller, Ticks]) -> None:
    p, driver = poller
    task = asyncio.create_task(p.run())
    try:
        await asyncio.sleep(0.1)
        assert len(driver.times) == 1  # then an hour to wait
        changed = time.monotonic()
        p.set_interval(0.05)  # the hour's wait is cut short
        await asyncio.sleep(0.55)
        times = [t for t in driver.times if t > changed]
        assert 6 <= len(times) <= 13, times
        assert times[0] - changed < 0.1
        gaps = [b - a for a, b in itertools.pairwise(times)]
        assert 0.03 < sorted(gaps)[len(gaps) // 2] < 0.08
        # Slower again: no burst, the next read a whole new interval after the last.
        p.set_interval(0.3)
        count = len(driver.times)
        await asyncio.sleep(0.2)
        assert len(driver.times) <= count + 1
        await asyncio.sleep(0.35)
        assert len(driver.times) >= count + 1
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def test_remote_settings_of_one_run_do_not_leak_into_the_models(base: Settings) -> None:
    evaluate({"batch": {"max_age": 1}}, base)
    assert base.batch.max_age == 5  # frozen models: nothing changed in place
