"""The configuration file ``wsn-gateway provision`` writes or updates.

A new file gets the provisioned keys and one sensor that every board has (its
own SoC temperature), so data flows before anything is wired. An existing file
keeps everything the user wrote, comments included (ruamel.yaml round trip):
only the keys provisioning owns change, and the old file is kept as ``.bak``.
Either way the result is validated before it replaces anything.
"""

from __future__ import annotations

import io
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.config import load_settings
from gateway.errors import ConfigError, GatewayError
from gateway.files import write_atomically


@dataclass(frozen=True)
class ProvisionedConfig:
    """The values provisioning decides."""

    thing: str
    state_dir: Path
    endpoint: str
    ca: Path
    cert: Path
    key: Path
    topic: str | None  # None: the default topic
    shadow: bool
    shadow_name: str | None
    signing: str
    region: str
    role_alias: str | None
    credentials_endpoint: str | None
    log_group: str


_NEW_CONFIG = """\
# wsn-gateway configuration, written by `wsn-gateway provision`.
# Every key is explained in config/gateway.example.yaml; `wsn-gateway check-config`
# validates this file. Running provision again only updates the keys it owns
# (thing, mqtt endpoint/ca/cert/key/topic, shadow, signing, cloudwatch).

thing: {thing}
state_dir: {state_dir}

mqtt:
  endpoint: {endpoint}
  ca: {ca}
  cert: {cert}
  key: {key}
{topic}
# Remote configuration through the thing's device shadow (docs/shadow.md).
shadow:
  enabled: {shadow}
{shadow_name}
signing:
  key: {signing}
{cloudwatch}
sensors:
  # The board's own SoC temperature: works with nothing wired. Add your sensors
  # below (`wsn-gateway scan` lists what answers on the I2C bus).
  - name: board
    driver: thermal
    interval: 60
"""


def _q(value: object) -> str:
    """A YAML scalar for a value that may contain '$', ':' or '/'."""
    text = str(value)
    return "'" + text.replace("'", "''") + "'" if any(c in text for c in "$:#{}") else text


def render_new(values: ProvisionedConfig) -> str:
    """The text of a fresh configuration file."""
    cloudwatch = ""
    if values.role_alias is not None:
        cloudwatch = (
            "\n# Logs and metrics to CloudWatch Logs, with credentials from the AWS IoT\n"
            "# credentials provider (the stack's role alias).\n"
            "cloudwatch:\n"
            "  enabled: true\n"
            f"  region: {values.region}\n"
            f"  log_group: {_q(values.log_group)}\n"
            f"  role_alias: {values.role_alias}\n"
            f"  credentials_endpoint: {values.credentials_endpoint}\n"
        )
    return _NEW_CONFIG.format(
        thing=values.thing,
        state_dir=values.state_dir,
        endpoint=values.endpoint,
        ca=values.ca,
        cert=values.cert,
        key=values.key,
        topic=f"  # Basic Ingest: straight to the rule, no messaging charge.\n"
        f"  topic: {_q(values.topic)}\n"
        if values.topic
        else "",
        shadow="true" if values.shadow else "false",
        shadow_name=f"  name: {values.shadow_name}\n" if values.shadow_name else "",
        signing=values.signing,
        cloudwatch=cloudwatch,
    )


def _set(mapping: Any, key: str, value: object) -> bool:
    """Set ``mapping[key]`` (None removes it); True when something changed."""
    if value is None:
        if key in mapping:
            del mapping[key]
            return True
        return False
    if mapping.get(key) == value:
        return False
    mapping[key] = value
    return True


def _section(document: Any, key: str) -> Any:
    from ruamel.yaml.comments import CommentedMap  # noqa: PLC0415

    if not isinstance(document.get(key), dict):
        document[key] = CommentedMap()
    return document[key]


def update_existing(text: str, values: ProvisionedConfig) -> str | None:
    """``text`` with the provisioned keys set, comments kept; None if nothing changes."""
    try:
        from ruamel.yaml import YAML  # noqa: PLC0415 - optional: the aws extra
        from ruamel.yaml.error import YAMLError  # noqa: PLC0415
    except ImportError as err:
        raise GatewayError(
            "updating an existing configuration needs ruamel.yaml: pip install 'wsn-gateway[aws]'"
        ) from err
    yaml = YAML()
    yaml.preserve_quotes = True
    try:
        document = yaml.load(text)
    except YAMLError as err:
        raise GatewayError(f"the existing configuration is not valid YAML: {err}") from err
    if not isinstance(document, dict):
        raise GatewayError("the existing configuration is not a YAML mapping")
    changed = _set(document, "thing", values.thing)
    if "state_dir" not in document:
        changed |= _set(document, "state_dir", str(values.state_dir))
    mqtt = _section(document, "mqtt")
    mqtt_values: tuple[tuple[str, str | None], ...] = (
        ("endpoint", values.endpoint),
        ("ca", str(values.ca)),
        ("cert", str(values.cert)),
        ("key", str(values.key)),
        ("topic", values.topic),
    )
    for key, value in mqtt_values:
        changed |= _set(mqtt, key, value)
    shadow = _section(document, "shadow")
    changed |= _set(shadow, "enabled", values.shadow)
    changed |= _set(shadow, "name", values.shadow_name)
    signing = _section(document, "signing")
    changed |= _set(signing, "key", values.signing)
    if values.role_alias is not None:
        cloudwatch = _section(document, "cloudwatch")
        cloudwatch_values: tuple[tuple[str, object], ...] = (
            ("enabled", True),
            ("region", values.region),
            ("log_group", values.log_group),
            ("role_alias", values.role_alias),
            ("credentials_endpoint", values.credentials_endpoint),
        )
        for key, cw_value in cloudwatch_values:
            changed |= _set(cloudwatch, key, cw_value)
    if not changed:
        return None
    out = io.StringIO()
    yaml.dump(document, out)
    return out.getvalue()


@dataclass(frozen=True)
class ConfigPlan:
    """A validated configuration text, ready to be put in place."""

    path: Path
    text: str
    change: str


def plan_config(path: Path, values: ProvisionedConfig) -> ConfigPlan | None:
    """The configuration to write, validated; None when the file is already right.

    Called before anything is created in AWS, so that a configuration that could
    not be written stops provisioning before it changes anything.
    """
    if path.exists():
        text = update_existing(path.read_text(encoding="utf-8"), values)
        if text is None:
            return None
        change = f"update the provisioned keys in {path} (the old file kept as {path.name}.bak)"
    else:
        text = render_new(values)
        change = f"write the configuration {path}"
    _validate(path, text)
    return ConfigPlan(path, text, change)


def _validate(path: Path, text: str) -> None:
    """Raise with the validator's own lines when ``text`` is not a valid configuration."""
    directory = path.parent if path.parent.is_dir() else Path(tempfile.gettempdir())
    fd, name = tempfile.mkstemp(dir=directory, prefix=f".{path.name}.", suffix=".yaml")
    temporary = Path(name)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        load_settings(temporary)
    except ConfigError as err:
        problems = "\n".join(line.replace(str(temporary), str(path)) for line in err.problems)
        raise GatewayError(
            f"the provisioned configuration would not be valid; {path} is unchanged:\n{problems}"
        ) from err
    finally:
        temporary.unlink(missing_ok=True)


def apply_config(plan: ConfigPlan, *, owner: tuple[int, int] | None = None) -> None:
    """Put the planned text in place, whole; an existing file is kept as ``.bak`` and
    its mode and owner carry over. A new file is 0640, readable by ``owner``'s group
    (the service user's) when given."""
    path = plan.path
    mode, ids = 0o640, None if owner is None else (0, owner[1])
    if path.exists():
        write_atomically(path.with_name(path.name + ".bak"), path.read_bytes())
        stat = path.stat()
        mode = stat.st_mode & 0o777
        ids = (stat.st_uid, stat.st_gid) if os.geteuid() == 0 else None
    write_atomically(path, plan.text.encode("utf-8"), mode=mode, owner=ids)
