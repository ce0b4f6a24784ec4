"""What the cloud functions share: settings from the environment, lazy AWS clients,
JSON log lines and CloudWatch Embedded Metric Format (EMF) lines on stdout.

Lambda sends stdout to CloudWatch Logs, which turns EMF lines into metrics: no
PutMetricData call (and no permission for it) is needed by the ingest function.
"""

from __future__ import annotations

import functools
import json
import os
import sys
import time
from collections.abc import Mapping
from typing import Any, Final

import boto3

DEFAULT_NAMESPACE: Final = "WsnCloud"


class SettingsError(RuntimeError):
    """A required environment variable is missing: the deployment is incomplete."""


def env(name: str, default: str | None = None) -> str:
    """The environment variable ``name``; without a default it must be set and non-empty."""
    value = os.environ.get(name, "")
    if value:
        return value
    if default is None:
        raise SettingsError(f"environment variable {name} is not set (see cloud/template.yaml)")
    return default


def env_number(name: str, default: float) -> float:
    """A positive number from the environment, ``default`` when unset."""
    text = os.environ.get(name, "")
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        raise SettingsError(f"environment variable {name} must be a number, got {text!r}") from None
    if value <= 0:
        raise SettingsError(f"environment variable {name} must be > 0, got {text!r}")
    return value


@functools.cache
def client(service: str) -> Any:
    """One boto3 client per service and container, made on first use.

    Made lazily so that nothing talks to AWS at import time, and so that tests can
    point every client at a local server with ``AWS_ENDPOINT_URL`` (then call
    ``client.cache_clear()``).
    """
    return boto3.client(service)


def log(level: str, msg: str, **fields: Any) -> None:
    """One JSON log line on stdout: ``{"level": ..., "msg": ..., **fields}``."""
    print(json.dumps({"level": level, "msg": msg, **fields}, default=str), flush=True)


def emit_metrics(
    namespace: str,
    metrics: Mapping[str, float],
    *,
    dimensions: Mapping[str, str],
    properties: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Print one EMF line with ``metrics`` (all Count), per ``dimensions`` and in total.

    Two dimension sets are declared: the given dimensions (e.g. per Thing) and none
    (the fleet total), so an alarm can watch the total without a metric math
    expression. ``properties`` are extra searchable members of the log line.
    Returns the printed object.
    """
    line: dict[str, Any] = {
        "_aws": {
            "Timestamp": int(time.time() * 1000),
            "CloudWatchMetrics": [
                {
                    "Namespace": namespace,
                    "Dimensions": [sorted(dimensions), []],
                    "Metrics": [{"Name": name, "Unit": "Count"} for name in metrics],
                }
            ],
        },
        **(properties or {}),
        **dimensions,
        **metrics,
    }
    sys.stdout.write(json.dumps(line, default=str) + "\n")
    sys.stdout.flush()
    return line
