"""Silence Lambda: count the gateways not heard from for SILENCE_MINUTES.

Run every 5 minutes by an EventBridge schedule (cloud/template.yaml). It scans the
gateways table (one item per thing, ``last_seen`` in UNIX seconds, written by the
ingest function for every verified batch), puts the count as the CloudWatch metric
``SilentGateways`` (an alarm on it notifies the SNS topic) and logs the names.
A thing is watched from its first verified batch on.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Final

import lambda_support as support

DEFAULT_SILENCE_MINUTES: Final = 30.0
METRIC_NAME: Final = "SilentGateways"
#: Names logged at most per run (the count is always exact).
MAX_NAMES_LOGGED: Final = 500


@dataclass(frozen=True)
class Settings:
    """Configuration from the environment (set by cloud/template.yaml)."""

    gateways_table: str
    namespace: str
    silence_minutes: float

    @classmethod
    def from_env(cls) -> Settings:
        return cls(
            gateways_table=support.env("GATEWAYS_TABLE"),
            namespace=support.env("METRIC_NAMESPACE", support.DEFAULT_NAMESPACE),
            silence_minutes=support.env_number("SILENCE_MINUTES", DEFAULT_SILENCE_MINUTES),
        )


def silent_gateways(settings: Settings, now: float) -> tuple[dict[str, float | None], int]:
    """Things silent longer than the limit -> seconds since last seen (None: never), and
    how many things the table holds."""
    limit = settings.silence_minutes * 60
    silent: dict[str, float | None] = {}
    checked = 0
    paginator = support.client("dynamodb").get_paginator("scan")
    pages = paginator.paginate(
        TableName=settings.gateways_table,
        ProjectionExpression="thing, last_seen",
        ConsistentRead=True,
    )
    for page in pages:
        for item in page.get("Items", []):
            checked += 1
            thing = item.get("thing", {}).get("S", "")
            last_seen = item.get("last_seen", {}).get("N")
            age = now - float(Decimal(last_seen)) if last_seen is not None else None
            if age is None or age > limit:
                silent[thing] = age
    return silent, checked


def _minutes(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds / 60, 1)


def handler(event: object, context: object = None) -> dict[str, Any]:
    """Lambda entry point (``silence.handler``)."""
    settings = Settings.from_env()
    now = time.time()
    silent, checked = silent_gateways(settings, now)
    support.client("cloudwatch").put_metric_data(
        Namespace=settings.namespace,
        MetricData=[
            {
                "MetricName": METRIC_NAME,
                "Value": len(silent),
                "Unit": "Count",
                "Timestamp": now,
            }
        ],
    )
    names = sorted(silent)
    if silent:
        support.log(
            "WARNING",
            "silent gateways",
            count=len(silent),
            silence_minutes=settings.silence_minutes,
            things=names[:MAX_NAMES_LOGGED],
            minutes_silent={name: _minutes(silent[name]) for name in names[:MAX_NAMES_LOGGED]},
        )
    else:
        support.log("INFO", "no silent gateways", checked=checked)
    return {"silent": names, "count": len(silent), "checked": checked}
