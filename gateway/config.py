"""YAML -> validated, frozen settings; every error names ``file:line: key.path``.

The file is composed with PyYAML first, so that the line of every mapping key
and sequence item is known by its path (and duplicate keys, which PyYAML would
silently collapse, are caught). pydantic then validates the plain data, and its
errors are mapped back to the nearest recorded path and rewritten as plain
sentences. Each sensor's ``options:`` are validated by its driver's own
``options_model``. Nothing here touches the files the settings name: start-up
checks for certificates and directories live elsewhere.
"""

from __future__ import annotations

import difflib
import enum
import ipaddress
import os
import re
import string
import types
import typing
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SerializeAsAny,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_core import PydanticCustomError

from drivers.base import Driver, DriverOptions, available_drivers, load_driver
from gateway.errors import ConfigError

__all__ = [
    "DEFAULT_CONFIG_PATH",
    "BatchSettings",
    "BufferSettings",
    "CloudWatchSettings",
    "GpioSettings",
    "LoggingSettings",
    "MqttSettings",
    "SensorSettings",
    "Settings",
    "ShadowSettings",
    "SigningSettings",
    "default_config_path",
    "load_settings",
    "parse_size",
]

DEFAULT_CONFIG_PATH = Path("/etc/wsn-gateway/gateway.yaml")
CONFIG_ENV = "WSN_GATEWAY_CONFIG"

Loc = tuple[str | int, ...]

# pydantic error types of our own: one message, or a list of (path, message) problems
# found by a cross-field check, or the errors of a nested model (a driver's options).
_MESSAGE = "wsn_message"
_PROBLEMS = "wsn_problems"
_NESTED = "wsn_nested"

_MIB = 1024 * 1024
_AWS_MAX_TOPIC_BYTES = 256
_AWS_MAX_TOPIC_SLASHES = 7
_AWS_MAX_CLIENT_ID_BYTES = 128
_THING_RE = re.compile(r"^[a-zA-Z0-9:_-]+$")
_SENSOR_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$")
_SHADOW_NAME_RE = re.compile(r"^[A-Za-z0-9:_-]{1,64}$")
_HOSTNAME_RE = re.compile(r"^[A-Za-z0-9_]([A-Za-z0-9_.-]*[A-Za-z0-9_])?$")
_BASIC_INGEST_RE = re.compile(r"^\$aws/rules/([A-Za-z0-9_]+)/")
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]i?b|b)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "tb": 1000**4,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
}
_I2C_ADDRESS_MIN = 0x03
_I2C_ADDRESS_MAX = 0x77

# Why a limit exists, added to the message when a value falls outside it.
_HINTS: dict[tuple[str, str], str] = {
    ("MqttSettings", "keepalive"): "AWS IoT Core refuses other keep-alives",
    ("MqttSettings", "max_inflight"): "AWS IoT Core allows 100 unacknowledged QoS 1 publishes",
    ("BatchSettings", "max_bytes"): "AWS IoT Core rejects messages over 128 KB",
}


def _invalid(message: str) -> PydanticCustomError:
    """A validation error whose text is exactly ``message``."""
    return PydanticCustomError(_MESSAGE, "{message}", {"message": message})


def _problems(problems: list[tuple[Loc, str]]) -> PydanticCustomError:
    """One error carrying several problems, each at its own path below the raising model."""
    summary = "; ".join(f"{_format_loc(loc)}: {message}" for loc, message in problems)
    return PydanticCustomError(_PROBLEMS, "{summary}", {"summary": summary, "problems": problems})


def _show(value: object) -> str:  # noqa: PLR0911 - one return per kind of value
    """A short rendering of a configured value for an error message."""
    if value is None:
        return "nothing"
    if isinstance(value, bool | _YamlBool):
        return str(value).lower()
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, str):
        return repr(value if len(value) <= 60 else value[:57] + "...")
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, Path):
        return repr(str(value))
    return type(value).__name__


def _format_loc(loc: Iterable[str | int]) -> str:
    """``("sensors", 0, "options", "x")`` -> ``sensors[0].options.x``."""
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text


# --------------------------------------------------------------------------- field types


def _resolve_path(value: Path, info: ValidationInfo) -> Path:
    """Expand ``~`` and make a relative path relative to the config file's directory."""
    value = value.expanduser()
    base = info.context.get("base_dir") if isinstance(info.context, dict) else None
    if base is not None and not value.is_absolute():
        value = Path(base) / value
    return value


def _non_empty_path(value: object) -> object:
    if isinstance(value, str) and not value.strip():
        raise _invalid("must be a file path, not empty")
    return value


#: A file-system path; relative ones resolve against the config file's directory.
ConfigPath = Annotated[Path, BeforeValidator(_non_empty_path), AfterValidator(_resolve_path)]


def _lower(value: object) -> object:
    return value.lower() if isinstance(value, str) else value


def parse_size(value: object) -> int:
    """Bytes from an int or a string such as ``"256MiB"``, ``"100MB"`` or ``"1048576"``."""
    if isinstance(value, bool):
        raise _invalid(f"must be a size in bytes (got {_show(value)})")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        match = _SIZE_RE.match(value)
        if match:
            number, unit = match.groups()
            return int(float(number) * _SIZE_UNITS[(unit or "b").lower()])
    raise _invalid(
        "must be a size in bytes: a whole number or a string such as "
        f"'256MiB', '100MB', '1GiB', '512KiB' (got {_show(value)})"
    )


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _refuse_bools_as_numbers(cls, data: object) -> object:
        """``port: yes`` is YAML for True, which pydantic would take as 1: make it fail."""
        if not isinstance(data, Mapping):
            return data
        changed = dict(data)
        for key, value in data.items():
            field = cls.model_fields.get(key) if isinstance(key, str) else None
            if (
                isinstance(value, bool)
                and field is not None
                and _unwrap(field.annotation) in (int, float)
            ):
                changed[key] = _YamlBool(value)
        return changed


class _YamlBool(str):
    """A YAML boolean where a number belongs: fails number parsing, shown as true/false."""

    __slots__ = ()

    def __new__(cls, value: bool) -> _YamlBool:
        return super().__new__(cls, "true" if value else "false")


def _none_to_empty(value: object) -> object:
    """A section written as ``batch:`` with all children commented out means defaults."""
    return {} if value is None else value


# --------------------------------------------------------------------------- sections


def _topic_template_problem(template: str) -> str | None:
    """What is wrong with a topic template regardless of the thing name, if anything."""
    if not template:
        return "must not be empty"
    if "+" in template or "#" in template:
        return "must not contain the MQTT wildcards + or # (a publish names one topic)"
    if "\x00" in template:
        return "must not contain a NUL character"
    try:
        fields = [
            (name, spec, conversion)
            for _, name, spec, conversion in string.Formatter().parse(template)
            if name is not None
        ]
    except ValueError:
        return "has an unmatched { or } (the only placeholder is {thing}; write {{ for a brace)"
    for name, spec, conversion in fields:
        if name != "thing" or spec or conversion:
            shown = "{" + name + (f"!{conversion}" if conversion else "")
            shown += (f":{spec}" if spec else "") + "}"
            return f"only the {{thing}} placeholder is allowed (got {shown})"
    return None


def _topic_problem(topic: str) -> str | None:
    """What AWS IoT Core would refuse about a formatted topic, if anything."""
    body = topic
    if topic.startswith("$aws/rules/"):
        match = _BASIC_INGEST_RE.match(topic)
        if match is None:
            return (
                "a Basic Ingest topic must start with $aws/rules/<rule name>/, "
                "the rule name made of letters, digits and _"
            )
        body = topic[match.end() :]
    size = len(body.encode("utf-8"))
    note = " after the $aws/rules/<rule>/ prefix" if body is not topic else ""
    if size > _AWS_MAX_TOPIC_BYTES:
        return (
            f"is {size} bytes long{note}; AWS IoT Core allows at most "
            f"{_AWS_MAX_TOPIC_BYTES} bytes (got {_show(topic)})"
        )
    slashes = body.count("/")
    if slashes > _AWS_MAX_TOPIC_SLASHES:
        return (
            f"has {slashes} slashes{note}; AWS IoT Core allows at most "
            f"{_AWS_MAX_TOPIC_SLASHES} (got {_show(topic)})"
        )
    return None


class MqttSettings(_Model):
    """The broker connection: AWS IoT Core over mutual TLS, or any MQTT 3.1.1 broker."""

    endpoint: str
    port: int = Field(default=8883, ge=1, le=65535)
    alpn: bool | None = None
    ca: ConfigPath
    cert: ConfigPath
    key: ConfigPath
    keepalive: int = Field(default=60, ge=30, le=1200)
    topic: str = "dt/wsn/{thing}/telemetry"
    status_topic: str = "dt/wsn/{thing}/status"
    max_inflight: int = Field(default=100, ge=1, le=100)
    messages_per_second: float = Field(default=100.0, ge=0)
    bytes_per_second: float = Field(default=524288.0, ge=0)
    reconnect_min: float = Field(default=1.0, gt=0)
    reconnect_max: float = Field(default=120.0, gt=0)
    connect_timeout: float = Field(default=30.0, gt=0)
    publish_timeout: float = Field(default=60.0, gt=0)

    @field_validator("endpoint")
    @classmethod
    def _check_endpoint(cls, value: str) -> str:
        if "://" in value or "/" in value:
            raise _invalid(
                "give the host name only, without scheme, port or path "
                f"(e.g. xxxxxxxxxxxxxx-ats.iot.eu-west-1.amazonaws.com; got {_show(value)})"
            )
        try:
            ipaddress.ip_address(value)
        except ValueError:
            if not _HOSTNAME_RE.match(value):
                raise _invalid(f"must be a host name or IP address (got {_show(value)})") from None
        return value

    @field_validator("topic", "status_topic")
    @classmethod
    def _check_topic_template(cls, value: str) -> str:
        problem = _topic_template_problem(value)
        if problem is not None:
            raise _invalid(problem)
        return value

    @model_validator(mode="after")
    def _check_combinations(self) -> MqttSettings:
        problems: list[tuple[Loc, str]] = []
        if self.reconnect_max < self.reconnect_min:
            problems.append(
                (
                    ("reconnect_max",),
                    f"must be at least reconnect_min ({_show(self.reconnect_min)}) "
                    f"(got {_show(self.reconnect_max)})",
                )
            )
        if self.endpoint.lower().endswith(".amazonaws.com"):
            if self.port not in (8883, 443):
                problems.append(
                    (
                        ("port",),
                        "AWS IoT Core takes MQTT with client certificates only on 8883, "
                        f"or on 443 with ALPN (got {self.port})",
                    )
                )
            elif self.port == 443 and self.alpn is False:
                problems.append(
                    (
                        ("alpn",),
                        "AWS IoT Core on port 443 needs ALPN x-amzn-mqtt-ca: "
                        "remove alpn: false or use port 8883",
                    )
                )
        if self.topic == self.status_topic:
            problems.append((("status_topic",), "must differ from topic"))
        if problems:
            raise _problems(problems)
        return self

    @property
    def alpn_enabled(self) -> bool:
        """Whether to offer ALPN ``x-amzn-mqtt-ca``: as configured, else on for port 443."""
        return self.port == 443 if self.alpn is None else self.alpn


class BatchSettings(_Model):
    """How readings are packed into one signed message."""

    max_records: int = Field(default=5000, ge=1)
    max_bytes: int = Field(default=128000, ge=1024, le=131072)
    max_age: float = Field(default=30.0, gt=0)
    interleave: bool = True


class BufferSettings(_Model):
    """The durable SQLite buffer: its cap on disk and how often writes are grouped."""

    max_bytes: Annotated[int, BeforeValidator(parse_size)] = Field(default=268435456, ge=_MIB)
    commit_interval: float = Field(default=1.0, gt=0, le=10)


class SigningSettings(_Model):
    """Which key signs batches: a dedicated Ed25519 key, or the TLS certificate's key."""

    key: Annotated[Literal["ed25519", "certificate"], BeforeValidator(_lower)] = "ed25519"
    key_file: ConfigPath | None = None

    @model_validator(mode="after")
    def _check_key_file(self) -> SigningSettings:
        if self.key == "certificate" and self.key_file is not None:
            raise _problems(
                [
                    (
                        ("key_file",),
                        "is only used with key: ed25519 (key: certificate signs with mqtt.key)",
                    )
                ]
            )
        return self


class LoggingSettings(_Model):
    """Log verbosity."""

    level: Annotated[Literal["debug", "info", "warning", "error"], BeforeValidator(_lower)] = "info"


class StatusLedSettings(_Model):
    """A status LED: steady when online, slow blink while buffering offline, fast on error."""

    pin: int = Field(ge=0, le=53)
    active_low: bool = False


class GpioSettings(_Model):
    """Pins the daemon drives: a status LED and the sensors' power-enable pins."""

    backend: Annotated[Literal["auto", "rpi", "sim"], BeforeValidator(_lower)] = "auto"
    status_led: StatusLedSettings | None = None


_LOG_GROUP_RE = re.compile(r"^[A-Za-z0-9._/#-]{1,512}$")
#: An AWS region name (eu-west-1, cn-north-1, us-gov-west-1).
AWS_REGION_RE = re.compile(r"^[a-z]{2}(-[a-z]+)+-\d+$")
#: The region inside an AWS IoT endpoint host name.
IOT_ENDPOINT_REGION_RE = re.compile(r"\.iot\.([a-z]{2}(?:-[a-z]+)+-\d+)\.amazonaws\.com(?:\.cn)?$")


class CloudWatchSettings(_Model):
    """Logs and EMF metrics shipped to CloudWatch Logs (off unless enabled)."""

    enabled: bool = False
    region: str | None = None
    log_group: str = "/wsn-gateway"
    log_stream: str = "{thing}"
    endpoint_url: str | None = None
    spool_bytes: Annotated[int, BeforeValidator(parse_size)] = Field(default=16777216, ge=65536)
    role_alias: str | None = None
    credentials_endpoint: str | None = None
    metrics_namespace: str = "WsnGateway"
    metrics_interval: float = Field(default=60.0, ge=1)
    flush_interval: float = Field(default=5.0, gt=0, le=300)

    @field_validator("region")
    @classmethod
    def _check_region(cls, value: str | None) -> str | None:
        if value is not None and not AWS_REGION_RE.match(value):
            raise _invalid(f"must be an AWS region such as eu-west-1 (got {_show(value)})")
        return value

    @field_validator("log_group")
    @classmethod
    def _check_log_group(cls, value: str) -> str:
        if not _LOG_GROUP_RE.match(value):
            raise _invalid(
                "must be 1 to 512 characters: letters, digits, '_', '-', '/', '.' and '#' "
                f"(got {_show(value)})"
            )
        return value

    @field_validator("log_stream")
    @classmethod
    def _check_log_stream(cls, value: str) -> str:
        try:
            names = [name for _, name, _, _ in string.Formatter().parse(value) if name is not None]
        except ValueError:
            names = ["?"]
        if any(name != "thing" for name in names):
            raise _invalid(f"{{thing}} is the only placeholder (got {_show(value)})")
        if not value or ":" in value or "*" in value or len(value) > 400:
            raise _invalid(f"must be 1 to 400 characters without ':' or '*' (got {_show(value)})")
        return value

    @field_validator("endpoint_url")
    @classmethod
    def _check_endpoint_url(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^https?://[^/\s]+", value):
            raise _invalid(f"must be an http:// or https:// URL (got {_show(value)})")
        return value

    @field_validator("credentials_endpoint")
    @classmethod
    def _check_credentials_endpoint(cls, value: str | None) -> str | None:
        if value is not None and ("://" in value or "/" in value):
            raise _invalid(
                "give the host name only (optionally host:port), without scheme or path "
                "(aws iot describe-endpoint --endpoint-type iot:CredentialProvider; "
                f"got {_show(value)})"
            )
        return value

    @field_validator("metrics_namespace")
    @classmethod
    def _check_namespace(cls, value: str) -> str:
        if not 1 <= len(value) <= 255 or value.startswith("AWS/"):
            raise _invalid(
                f"must be 1 to 255 characters and not start with 'AWS/' (got {_show(value)})"
            )
        return value

    @model_validator(mode="after")
    def _check_credentials(self) -> CloudWatchSettings:
        if (self.role_alias is None) != (self.credentials_endpoint is None):
            missing = "credentials_endpoint" if self.credentials_endpoint is None else "role_alias"
            raise _problems(
                [
                    (
                        (missing,),
                        "role_alias and credentials_endpoint go together: set both to get "
                        "credentials from the AWS IoT credentials provider, or neither",
                    )
                ]
            )
        return self

    def region_name(self, settings: Settings) -> str | None:
        """``region``, else the region of an AWS IoT endpoint in the settings."""
        if self.region is not None:
            return self.region
        for host in (self.credentials_endpoint or "", settings.mqtt.endpoint):
            match = IOT_ENDPOINT_REGION_RE.search(host.split(":")[0])
            if match:
                return match.group(1)
        return None


class ShadowSettings(_Model):
    """Remote configuration through the AWS IoT device shadow (off unless enabled)."""

    enabled: bool = False
    name: str | None = None

    @field_validator("name")
    @classmethod
    def _check_name(cls, value: str | None) -> str | None:
        if value is not None and not _SHADOW_NAME_RE.match(value):
            raise _invalid(
                "must be a named shadow's name: 1 to 64 letters, digits, ':', '_' or '-' "
                f"(null for the thing's classic shadow; got {_show(value)})"
            )
        return value


def _driver_class(info: ValidationInfo) -> type[Driver] | None:
    """The driver of the sensor being validated, once its ``driver`` key has passed."""
    name = info.data.get("driver")
    return load_driver(name) if isinstance(name, str) else None


class SensorSettings(_Model):
    """One polled sensor: which driver, how often, where on which bus, and its options."""

    name: str
    driver: str
    interval: float = Field(default=10.0, ge=0.05, le=86400)
    timeout: float = Field(default=5.0, gt=0)
    retries: int = Field(default=2, ge=0, le=10)
    bus: int | Literal["sim"] | None = Field(default=None, validate_default=True)
    address: int | None = Field(default=None, validate_default=True)
    port: str | None = Field(default=None, validate_default=True)
    baudrate: int | None = Field(default=None, validate_default=True)
    power_pin: int | None = Field(default=None, ge=0, le=53)
    power_off_seconds: float = Field(default=2.0, gt=0, le=60)
    options: SerializeAsAny[DriverOptions] = Field(default=None, validate_default=True)

    @field_validator("name", mode="before")
    @classmethod
    def _check_name(cls, value: object) -> object:
        if isinstance(value, str) and not _SENSOR_NAME_RE.match(value):
            raise _invalid(
                "must be 1 to 64 letters, digits, '_', '.', ':' or '-', starting with "
                f"a letter or digit (it becomes part of the SenML name; got {_show(value)})"
            )
        return value

    @field_validator("driver")
    @classmethod
    def _check_driver(cls, value: str) -> str:
        known = sorted(available_drivers())
        if value not in known:
            close = difflib.get_close_matches(value, known, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise _invalid(f"unknown driver {value!r} (known: {', '.join(known)}){hint}")
        try:
            load_driver(value)
        except (ImportError, AttributeError, TypeError) as err:
            raise _invalid(f"driver {value!r} could not be loaded: {err}") from err
        return value

    @field_validator("bus", mode="before")
    @classmethod
    def _check_bus(cls, value: object, info: ValidationInfo) -> object:
        driver = _driver_class(info)
        if value is None:
            if driver is not None and driver.bus_kind == "i2c":
                raise _invalid("I2C sensors need bus: 1 (or sim)")
            return None
        if driver is not None and driver.bus_kind == "w1":
            if isinstance(value, str) and value.strip().lower() == "sim":
                return "sim"
            raise _invalid(
                "sysfs sensors (1-Wire probes, thermal zones) are found in sysfs: leave bus out, "
                "or bus: sim for the simulator"
            )
        if driver is not None and driver.bus_kind != "i2c":
            raise _invalid(f"driver {info.data['driver']!r} is not on an I2C bus: remove bus")
        if isinstance(value, str) and value.strip().lower() == "sim":
            return "sim"
        if isinstance(value, str) and value.strip().isdigit():
            return int(value)
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return value
        raise _invalid(
            "must be an I2C bus number such as 1 (for /dev/i2c-1) or sim for the "
            f"simulated bus (got {_show(value)})"
        )

    @field_validator("address", mode="before")
    @classmethod
    def _check_address(cls, value: object, info: ValidationInfo) -> object:
        driver = _driver_class(info)
        if driver is not None and driver.bus_kind != "i2c":
            if value is not None:
                raise _invalid(
                    f"driver {info.data['driver']!r} is not on an I2C bus: remove address"
                )
            return None
        if value is None:
            return driver.addresses[0] if driver is not None and driver.addresses else None
        if isinstance(value, str):
            try:
                value = int(value, 0)
            except ValueError:
                raise _invalid(
                    f"must be an I2C address such as 0x76 (got {_show(value)})"
                ) from None
        if not isinstance(value, int) or isinstance(value, bool):
            raise _invalid(f"must be an I2C address such as 0x76 (got {_show(value)})")
        if not _I2C_ADDRESS_MIN <= value <= _I2C_ADDRESS_MAX:
            raise _invalid(
                f"must be a 7-bit I2C address between 0x{_I2C_ADDRESS_MIN:02x} and "
                f"0x{_I2C_ADDRESS_MAX:02x} (got 0x{value:02x})"
            )
        # A real chip answers only where its pins put it; the simulated bus takes any address.
        real_bus = isinstance(info.data.get("bus"), int)
        if driver is not None and driver.addresses and real_bus and value not in driver.addresses:
            choices = " or ".join(f"0x{a:02x}" for a in driver.addresses)
            raise _invalid(f"a {info.data['driver']} answers only on {choices} (got 0x{value:02x})")
        return value

    @field_validator("port", mode="before")
    @classmethod
    def _check_port(cls, value: object, info: ValidationInfo) -> object:
        driver = _driver_class(info)
        serial = driver is not None and driver.bus_kind == "serial"
        if value is None:
            if serial:
                raise _invalid(
                    "serial sensors need port: a device such as /dev/ttyUSB0 or "
                    "/dev/serial0, any pyserial URL (socket://host:port), or sim"
                )
            return None
        if driver is not None and not serial:
            raise _invalid(f"driver {info.data['driver']!r} is not on a serial line: remove port")
        if not isinstance(value, str) or not value.strip():
            raise _invalid(f"must be a serial device path or pyserial URL (got {_show(value)})")
        return value.strip()

    @field_validator("baudrate", mode="before")
    @classmethod
    def _check_baudrate(cls, value: object, info: ValidationInfo) -> object:
        driver = _driver_class(info)
        serial = driver is not None and driver.bus_kind == "serial"
        if value is None:
            return driver.default_baudrate if serial and driver is not None else None
        if driver is not None and not serial:
            raise _invalid(
                f"driver {info.data['driver']!r} is not on a serial line: remove baudrate"
            )
        if isinstance(value, bool) or not isinstance(value, int) or not 50 <= value <= 4_000_000:
            raise _invalid(f"must be a baud rate such as 9600 or 115200 (got {_show(value)})")
        return value

    @field_validator("options", mode="plain")
    @classmethod
    def _check_options(cls, value: object, info: ValidationInfo) -> DriverOptions:
        driver = _driver_class(info)
        if driver is None:
            # The driver itself is wrong and reported; its options cannot be checked.
            return DriverOptions()
        model = driver.options_model
        if isinstance(value, model):
            return value
        if isinstance(value, DriverOptions):
            value = value.model_dump(exclude_unset=True)
        try:
            return model.model_validate({} if value is None else value, context=info.context)
        except ValidationError as err:
            errors = err.errors(include_url=False)
            summary = "; ".join(
                f"{_format_loc(loc)}: {message}" for loc, message in _explain(errors, model)
            )
            raise PydanticCustomError(
                _NESTED, "{summary}", {"summary": summary, "errors": errors, "model": model}
            ) from err


class Settings(_Model):
    """Everything the daemon needs, validated; build it with :func:`load_settings`."""

    thing: str
    state_dir: ConfigPath = Path("/var/lib/wsn-gateway")
    mqtt: Annotated[MqttSettings, BeforeValidator(_none_to_empty)]
    batch: Annotated[BatchSettings, BeforeValidator(_none_to_empty)] = BatchSettings()
    buffer: Annotated[BufferSettings, BeforeValidator(_none_to_empty)] = BufferSettings()
    signing: Annotated[SigningSettings, BeforeValidator(_none_to_empty)] = SigningSettings()
    logging: Annotated[LoggingSettings, BeforeValidator(_none_to_empty)] = LoggingSettings()
    gpio: Annotated[GpioSettings, BeforeValidator(_none_to_empty)] = GpioSettings()
    cloudwatch: Annotated[CloudWatchSettings, BeforeValidator(_none_to_empty)] = (
        CloudWatchSettings()
    )
    shadow: Annotated[ShadowSettings, BeforeValidator(_none_to_empty)] = ShadowSettings()
    sensors: list[SensorSettings] = Field(min_length=1)
    clock: Annotated[Literal["kernel", "assume-synced"], BeforeValidator(_lower)] = "kernel"
    source: Path | None = Field(default=None, exclude=True)

    @field_validator("thing")
    @classmethod
    def _check_thing(cls, value: str) -> str:
        size = len(value.encode("utf-8"))
        if not 1 <= size <= _AWS_MAX_CLIENT_ID_BYTES:
            raise _invalid(
                f"must be 1 to {_AWS_MAX_CLIENT_ID_BYTES} bytes long: it is also the MQTT "
                f"client id, which AWS IoT Core limits to {_AWS_MAX_CLIENT_ID_BYTES} bytes "
                f"(got {size} bytes)"
            )
        if not _THING_RE.match(value):
            bad = sorted({c for c in value if not _THING_RE.match(c)})
            raise _invalid(
                "may contain only letters, digits, ':', '_' and '-' "
                f"(got {_show(value)}, with {', '.join(repr(c) for c in bad)})"
            )
        return value

    @model_validator(mode="after")
    def _check_across_sections(self) -> Settings:
        problems: list[tuple[Loc, str]] = []
        for key, template in (("topic", self.mqtt.topic), ("status_topic", self.mqtt.status_topic)):
            problem = _topic_problem(template.format(thing=self.thing))
            if problem is not None:
                problems.append((("mqtt", key), problem))
        problems.extend(_sensor_conflicts(self))
        cw = self.cloudwatch
        if cw.enabled and cw.region_name(self) is None:
            problems.append(
                (
                    ("cloudwatch", "region"),
                    "is needed: the region cannot be told from mqtt.endpoint "
                    "(set region, e.g. eu-west-1)",
                )
            )
        if problems:
            raise _problems(problems)
        return self

    @property
    def telemetry_topic(self) -> str:
        """The topic batches are published on, ``{thing}`` filled in."""
        return self.mqtt.topic.format(thing=self.thing)

    @property
    def status_topic(self) -> str:
        """The topic status messages are published on, ``{thing}`` filled in."""
        return self.mqtt.status_topic.format(thing=self.thing)

    @property
    def signing_key_path(self) -> Path:
        """The Ed25519 signing key: ``signing.key_file``, else in the state directory."""
        return self.signing.key_file or self.state_dir / "signing-ed25519.pem"

    @property
    def buffer_path(self) -> Path:
        """The SQLite file holding buffered readings and the outbox."""
        return self.state_dir / "buffer.sqlite3"


def _sensor_conflicts(settings: Settings) -> list[tuple[Loc, str]]:
    """Names, I2C places, serial ports and pins that two parts of the file both claim."""
    problems: list[tuple[Loc, str]] = []
    names: dict[str, int] = {}
    places: dict[tuple[int | str, int], int] = {}
    ports: dict[str, int] = {}
    for index, sensor in enumerate(settings.sensors):
        if sensor.name in names:
            problems.append(
                (
                    ("sensors", index, "name"),
                    f"duplicate sensor name {sensor.name!r} "
                    f"(already used by sensors[{names[sensor.name]}])",
                )
            )
        else:
            names[sensor.name] = index
        if sensor.bus is not None and sensor.address is not None:
            place = (sensor.bus, sensor.address)
            if place in places:
                other = settings.sensors[places[place]]
                problems.append(
                    (
                        ("sensors", index, "address"),
                        f"bus {sensor.bus} address 0x{sensor.address:02x} is already used "
                        f"by sensor {other.name!r}; each I2C sensor needs its own "
                        "(bus, address)",
                    )
                )
            else:
                places[place] = index
        if sensor.port is not None and sensor.port != "sim":
            if sensor.port in ports:
                problems.append(
                    (
                        ("sensors", index, "port"),
                        f"port {sensor.port} is already used by sensor "
                        f"{settings.sensors[ports[sensor.port]].name!r}; one serial device "
                        "per port",
                    )
                )
            else:
                ports[sensor.port] = index
        led = settings.gpio.status_led
        if sensor.power_pin is not None and led is not None and sensor.power_pin == led.pin:
            problems.append(
                (
                    ("sensors", index, "power_pin"),
                    f"GPIO {sensor.power_pin} is the status LED's pin (gpio.status_led.pin)",
                )
            )
    return problems


# --------------------------------------------------------------------------- messages


def _unwrap(annotation: Any) -> Any:
    """Strip ``Annotated`` and ``X | None`` down to ``X``."""
    while True:
        origin = typing.get_origin(annotation)
        if origin is Annotated:
            annotation = typing.get_args(annotation)[0]
        elif origin in (Union, types.UnionType):
            args = [a for a in typing.get_args(annotation) if a is not type(None)]
            if len(args) != 1:
                return annotation
            annotation = args[0]
        else:
            return annotation


def _resolve(model: type[BaseModel], loc: Loc) -> tuple[type[BaseModel] | None, FieldInfo | None]:
    """The model that holds the last key of ``loc``, and that key's field (None if unknown)."""
    current: Any = model
    parent: type[BaseModel] | None = None
    field: FieldInfo | None = None
    for part in loc:
        if isinstance(part, int):
            args = typing.get_args(current)
            if typing.get_origin(current) not in (list, tuple) or not args:
                return None, None
            current = _unwrap(args[0])
            continue
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return None, None
        parent = current
        field = current.model_fields.get(part)
        if field is None:
            return parent, None
        current = _unwrap(field.annotation)
    return parent, field


def _accepted_values(field: FieldInfo | None, ctx: Mapping[str, Any]) -> str:
    """The values a literal or enum field accepts, as ``a, b, c``."""
    annotation = _unwrap(field.annotation) if field is not None else None
    origin = typing.get_origin(annotation)
    values: Sequence[object] = ()
    if origin is Literal:
        values = typing.get_args(annotation)
    elif isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        values = [member.value for member in annotation]
    if values:
        return ", ".join(str(v) for v in values)
    expected = str(ctx.get("expected", ""))
    return expected.replace("'", "").replace(" or ", ", ")


def _number(value: object) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _bounds_message(field: FieldInfo | None, ctx: Mapping[str, Any], got: str) -> str:
    """``must be between 30 and 1200 (got 5)`` and its one-sided relatives."""
    bounds: dict[str, object] = {}
    for meta in field.metadata if field is not None else ():
        for name in ("ge", "gt", "le", "lt"):
            limit = getattr(meta, name, None)
            if limit is not None:
                bounds[name] = limit
    bounds = bounds or dict(ctx)
    low = ("ge", bounds["ge"]) if "ge" in bounds else ("gt", bounds.get("gt"))
    high = ("le", bounds["le"]) if "le" in bounds else ("lt", bounds.get("lt"))
    if low[1] is not None and high[1] is not None:
        if low[0] == "ge" and high[0] == "le":
            text = f"must be between {_number(low[1])} and {_number(high[1])}"
        else:
            text = (
                f"must be {'at least' if low[0] == 'ge' else 'greater than'} {_number(low[1])} "
                f"and {'at most' if high[0] == 'le' else 'less than'} {_number(high[1])}"
            )
    elif low[1] is not None:
        text = f"must be {'at least' if low[0] == 'ge' else 'greater than'} {_number(low[1])}"
    elif high[1] is not None:
        text = f"must be {'at most' if high[0] == 'le' else 'less than'} {_number(high[1])}"
    else:
        text = "is out of range"
    return f"{text} (got {got})"


_TYPE_MESSAGES = {
    "int_parsing": "must be a whole number",
    "int_type": "must be a whole number",
    "int_from_float": "must be a whole number",
    "float_parsing": "must be a number",
    "float_type": "must be a number",
    "finite_number": "must be a finite number",
    "bool_parsing": "must be true or false",
    "bool_type": "must be true or false",
    "string_type": "must be text (put it in quotes)",
    "model_type": "must be a mapping of keys",
    "model_attributes_type": "must be a mapping of keys",
    "dict_type": "must be a mapping of keys",
    "list_type": "must be a list",
    "path_type": "must be a file path",
}


def _unknown_key(key: str, model: type[BaseModel] | None) -> str:
    """``unknown key 'intervall' (accepted: name, driver, interval, ...)``."""
    accepted = [name for name in (model.model_fields if model else {}) if name != "source"]
    close = difflib.get_close_matches(key, accepted, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"unknown key {key!r} (accepted: {', '.join(accepted)}){hint}"


def _message(error: Mapping[str, Any], model: type[BaseModel]) -> str:  # noqa: PLR0911
    """A plain sentence for one pydantic error of ``model``."""
    kind = error["type"]
    ctx: Mapping[str, Any] = error.get("ctx") or {}
    loc: Loc = tuple(error["loc"])
    got = _show(error.get("input"))
    parent, field = _resolve(model, loc)
    if kind == _MESSAGE:
        return str(ctx["message"])
    if kind == "missing":
        return "required key missing"
    if kind == "extra_forbidden":
        return _unknown_key(str(loc[-1]) if loc else "?", parent)
    if kind in ("literal_error", "enum"):
        return f"must be one of {_accepted_values(field, ctx)} (got {got})"
    if kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        text = _bounds_message(field, ctx, got)
        hint = _HINTS.get((parent.__name__, str(loc[-1]))) if parent and loc else None
        return f"{text}; {hint}" if hint else text
    if kind == "too_short":
        count = ctx.get("min_length", 1)
        return f"must have at least {count} entr{'y' if count == 1 else 'ies'}"
    if kind in _TYPE_MESSAGES:
        return f"{_TYPE_MESSAGES[kind]} (got {got})"
    text = str(error.get("msg", "is not valid"))
    text = text.removeprefix("Value error, ").removeprefix("Input should be ")
    return f"{text[:1].lower()}{text[1:]} (got {got})"


def _explain(
    errors: Iterable[Mapping[str, Any]], model: type[BaseModel], prefix: Loc = ()
) -> list[tuple[Loc, str]]:
    """(path, message) for each pydantic error, nested and grouped errors expanded."""
    explained: list[tuple[Loc, str]] = []
    for error in errors:
        loc: Loc = prefix + tuple(error["loc"])
        ctx: Mapping[str, Any] = error.get("ctx") or {}
        if error["type"] == _PROBLEMS:
            explained.extend((loc + tuple(sub), message) for sub, message in ctx["problems"])
        elif error["type"] == _NESTED:
            explained.extend(_explain(ctx["errors"], ctx["model"], loc))
        else:
            explained.append((loc, _message(error, model)))
    return explained


# --------------------------------------------------------------------------- YAML


class _Document:
    """Parsed YAML plus the line of every key and item, by path."""

    def __init__(self) -> None:
        self.data: Any = None
        self.lines: dict[Loc, int] = {}
        self.duplicates: list[tuple[Loc, int, int]] = []  # path, line, first line

    def line_of(self, loc: Loc) -> int:
        """The line of ``loc`` or of its nearest recorded ancestor."""
        for end in range(len(loc), -1, -1):
            line = self.lines.get(loc[:end])
            if line is not None:
                return line
        return 1


def _record(node: yaml.Node, path: Loc, doc: _Document, seen: set[int]) -> None:
    """Walk the composed node tree: record lines, detect duplicate keys."""
    if id(node) in seen:  # an alias: already walked (also stops recursive anchors)
        return
    seen.add(id(node))
    if isinstance(node, yaml.MappingNode):
        first: dict[str, int] = {}
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge" or not isinstance(
                key_node, yaml.ScalarNode
            ):
                continue
            key = str(key_node.value)
            line = key_node.start_mark.line + 1
            if key in first:
                doc.duplicates.append(((*path, key), line, first[key]))
            else:
                first[key] = line
            doc.lines[(*path, key)] = line
            _record(value_node, (*path, key), doc, seen)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            doc.lines[(*path, index)] = item.start_mark.line + 1
            _record(item, (*path, index), doc, seen)


class _Loader(yaml.SafeLoader):
    """SafeLoader that keeps mapping keys as written: ``yes:`` or ``1:`` stay text.

    Every key in the schema is a name, so a key YAML 1.1 would turn into a bool or a
    number is still reported as the unknown key the user wrote.
    """

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        self.flatten_mapping(node)
        mapping: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping",
                    node.start_mark,
                    "found a key that is not a plain name",
                    key_node.start_mark,
                )
            mapping[key_node.value] = self.construct_object(value_node, deep=deep)
        return mapping


def _compose(loader: yaml.SafeLoader, name: str) -> _Document:
    """Compose, record lines, construct; the top level must be a mapping."""
    doc = _Document()
    node = loader.get_single_node()
    if node is None:
        raise ConfigError(
            [f"{name}:1: the file is empty; it needs at least thing, mqtt and sensors"]
        )
    doc.lines[()] = node.start_mark.line + 1
    if not isinstance(node, yaml.MappingNode):
        kind = "a list" if isinstance(node, yaml.SequenceNode) else "a single value"
        raise ConfigError(
            [
                f"{name}:{doc.lines[()]}: the top level must be a mapping of keys "
                f"(thing:, mqtt:, sensors:, ...), not {kind}"
            ]
        )
    _record(node, (), doc, set())
    doc.data = loader.construct_document(node)
    return doc


def _syntax_problem(err: yaml.MarkedYAMLError, name: str) -> str:
    """``FILE:LINE: YAML syntax error: ...`` from PyYAML's marks."""
    mark = err.problem_mark or err.context_mark
    line = mark.line + 1 if mark is not None else 1
    text = err.problem or "invalid YAML"
    if err.context and err.problem:
        context = err.context
        if err.context_mark is not None and err.context_mark.line + 1 != line:
            context += f" (line {err.context_mark.line + 1})"
        text = f"{context}: {text}"
    elif err.context:
        text = err.context
    if mark is not None:
        text += f" (column {mark.column + 1})"
    if "'\\t'" in text:
        text += "; indent with spaces, not tabs"
    return f"{name}:{line}: YAML syntax error: {text}"


def _reader_problem(err: yaml.reader.ReaderError, raw: bytes, name: str) -> str:
    """``FILE:LINE: ...`` for bytes that are not text YAML accepts."""
    code = err.character if isinstance(err.character, int) else ord(err.character[:1] or "?")
    if err.encoding == "unicode":  # decoded, but a control character YAML forbids
        line = raw.decode("utf-8", errors="replace")[: err.position].count("\n") + 1
        what = f"character U+{code:04X} is not allowed in YAML"
    else:  # not decodable
        line = raw[: err.position].count(b"\n") + 1
        what = f"byte 0x{code:02x} is not valid {err.encoding} ({err.reason})"
    return f"{name}:{line}: not a readable YAML text file: {what}"


def _parse(raw: bytes, name: str) -> _Document:
    """YAML bytes to data and line map; every YAML problem becomes a ConfigError."""
    loader: yaml.SafeLoader | None = None
    try:
        loader = _Loader(raw)
        return _compose(loader, name)
    except yaml.MarkedYAMLError as err:
        raise ConfigError([_syntax_problem(err, name)]) from err
    except yaml.reader.ReaderError as err:
        raise ConfigError([_reader_problem(err, raw, name)]) from err
    except yaml.YAMLError as err:
        raise ConfigError([f"{name}: not a readable YAML file: {err}"]) from err
    except RecursionError as err:
        raise ConfigError([f"{name}: the YAML nests too deeply"]) from err
    finally:
        if loader is not None:
            loader.dispose()


# --------------------------------------------------------------------------- loading


def default_config_path() -> Path:
    """``$WSN_GATEWAY_CONFIG`` if set, else ``/etc/wsn-gateway/gateway.yaml``."""
    value = os.environ.get(CONFIG_ENV, "").strip()
    return Path(value).expanduser() if value else DEFAULT_CONFIG_PATH


def _merge(
    base: Mapping[str, Any], overrides: Mapping[str, Any], at: Loc, changed: set[Loc]
) -> dict[str, Any]:
    """``base`` with ``overrides`` deep-merged in (mappings merged, anything else replaced)."""
    merged = dict(base)
    for key, value in overrides.items():
        current = merged.get(key)
        if isinstance(value, Mapping) and isinstance(current, Mapping):
            merged[key] = _merge(current, value, (*at, key), changed)
        else:
            merged[key] = value
            changed.add((*at, key))
    return merged


def load_settings(path: Path, overrides: Mapping[str, Any] | None = None) -> Settings:
    """Read, parse and validate one config file; ``overrides`` are deep-merged first.

    Raises :class:`ConfigError` with one ``FILE:LINE: KEY.PATH: message`` per problem.
    """
    path = Path(path)
    name = str(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError as err:
        raise ConfigError(
            [f"{name}: file not found (give another with --config or {CONFIG_ENV})"]
        ) from err
    except IsADirectoryError as err:
        raise ConfigError([f"{name}: is a directory, not a config file"]) from err
    except OSError as err:
        raise ConfigError([f"{name}: cannot read: {err.strerror or err}"]) from err

    doc = _parse(raw, name)
    problems: list[tuple[int, str]] = [
        (
            line,
            f"{_format_loc(loc)}: duplicate key (first on line {first}; YAML keeps only the last)",
        )
        for loc, line, first in doc.duplicates
    ]
    data: dict[str, Any] = dict(doc.data)
    if "source" in data:  # set by the loader, never by the file
        problems.append((doc.line_of(("source",)), f"source: {_unknown_key('source', Settings)}"))
        del data["source"]
    changed: set[Loc] = set()
    if overrides:
        data = _merge(data, overrides, (), changed)
    data["source"] = path
    try:
        settings = Settings.model_validate(data, context={"base_dir": path.parent.absolute()})
    except ValidationError as err:
        for loc, message in _explain(err.errors(include_url=False), Settings):
            note = " (set by an override)" if any(loc[: len(c)] == c for c in changed) else ""
            text = f"{_format_loc(loc)}: {message}" if loc else message
            problems.append((doc.line_of(loc), text + note))
    else:
        if not problems:
            return settings
    problems.sort(key=lambda item: item[0])  # stable: same-line problems keep their order
    raise ConfigError([f"{name}:{line}: {text}" for line, text in problems])
