"""The silence Lambda: SilentGateways to CloudWatch (moto), names in the log."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import ingest
import pytest
import silence
from daemon_harness import THING

from .conftest import Aws, DaemonRun, Stack, log_lines, rule_event


def silent_gateways_metric(aws: Aws, namespace: str) -> dict[str, float]:
    """Minimum, maximum and count of the SilentGateways values put in the last hour."""
    now = dt.datetime.now(dt.UTC)
    response = aws.client("cloudwatch").get_metric_statistics(
        Namespace=namespace,
        MetricName="SilentGateways",
        StartTime=now - dt.timedelta(hours=1),
        EndTime=now + dt.timedelta(minutes=5),
        Period=7200,
        Statistics=["Minimum", "Maximum", "SampleCount"],
    )
    (point,) = response["Datapoints"]
    return {name: point[name] for name in ("Minimum", "Maximum", "SampleCount")}


def test_silent_gateways_are_counted_and_named(
    aws: Aws, stack: Stack, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    now = time.time()
    minutes_ago = {"fresh": 1, "almost": 29, "quiet": 31, "gone": 600}
    for thing, minutes in minutes_ago.items():
        stack.gateways.put_item(
            Item={"thing": thing, "last_seen": Decimal(str(round(now - minutes * 60, 3)))}
        )

    result = silence.handler({}, None)
    assert result == {"silent": ["gone", "quiet"], "count": 2, "checked": 4}
    assert silent_gateways_metric(aws, "WsnCloudTest") == {
        "Minimum": 2,
        "Maximum": 2,
        "SampleCount": 1,
    }
    (logged,) = log_lines(capsys.readouterr().out, "silent gateways")
    assert logged["things"] == ["gone", "quiet"]
    assert logged["minutes_silent"]["quiet"] == pytest.approx(31, abs=0.2)

    monkeypatch.setenv("SILENCE_MINUTES", "700")
    assert silence.handler({}, None)["count"] == 0


@pytest.mark.integration
def test_a_gateway_heard_from_through_the_ingest_function_is_not_silent(
    aws: Aws, stack: Stack, daemon_run: Callable[[str], DaemonRun]
) -> None:
    run = daemon_run("ed25519")
    stack.register_ed25519(THING, run.signing_key_file)
    long_ago = int((time.time() - 3600) * 1000)
    first, second = run.unique()[:2]
    result: dict[str, Any] = ingest.handler(rule_event(first.payload, received=long_ago), None)
    assert result["status"] == "stored"
    assert silence.handler({}, None)["silent"] == [THING]

    # A later batch moves last_seen; an older replay would not move it back.
    ingest.handler(rule_event(second.payload), None)
    ingest.handler(rule_event(first.payload, received=long_ago), None)
    assert silence.handler({}, None) == {"silent": [], "count": 0, "checked": 1}
    # Two runs put 1, the last one 0.
    assert silent_gateways_metric(aws, "WsnCloudTest") == {
        "Minimum": 0,
        "Maximum": 1,
        "SampleCount": 2,
    }
