"""Fault: the broker refuses messages -- by ACL, or because they are too large.

What Mosquitto 2.0 does with a QoS 1 PUBLISH from an MQTT 3.1.1 client (what the
gateway speaks) that its ACL denies, or that exceeds ``message_size_limit``: it logs
"Denied PUBLISH" / "Dropped too large PUBLISH", sends a PUBACK (its reason code,
135 or 149, cannot be expressed in 3.1.1, so the client sees success), drops the
message, and closes the connection. So the gateway deletes the batch from its
outbox as delivered and logs only "connection lost" ("Disconnected during message
iteration"), reconnects, and goes on with the next batch: one refused batch costs
one reconnect, and nothing in the gateway's log names the batch, its size or the
limit. (AWS IoT Core instead closes the connection without a PUBACK; then the same
batch would be sent again after every reconnect. Not testable here.)

What the gateway does guarantee, and these tests assert:

- it keeps running, taking, sealing and publishing readings, and its reconnects stay
  within the configured backoff; the status topic keeps working;
- nothing is lost inside the gateway: every reading taken is sealed into exactly one
  batch of one unbroken chain and acknowledged;
- the loss is not silent end to end: the consumer sees each refused batch as a
  missing seq (``verify_stream`` reports it), and exactly those are missing;
- with ``batch.max_bytes`` at or below the broker's limit no batch is ever too large,
  even when a backlog is packed into full batches.

Not detectable through MQTT 3.1.1, hence not asserted: a log line of the gateway
naming the refused batch, its size and the broker's limit.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING

import pytest
from daemon_harness import STATUS_TOPIC, TELEMETRY_TOPIC, GatewayProcess, wait_until

from gateway import verify

from .fault_harness import RUN, FaultRig, arrival, audit_drops, sensors, single_stream

if TYPE_CHECKING:
    from conftest import Collector

pytestmark = [pytest.mark.integration, pytest.mark.faults]

FEED = sensors(4, 0.05)  # 80 readings a second: a live batch of 0.3-0.6 s is 1.5-3 KB
RECONNECT_MIN = 0.2
MQTT = {"reconnect_min": RECONNECT_MIN, "reconnect_max": 1.0, "publish_timeout": 5.0}
#: Buffered readings that count as "nothing left to send": one or two group commits of
#: FEED. Sealed at the stop with what is polled until then, they make a batch of about
#: 3 KB at most, under the 4 KB broker limit of the size tests.
FEW = 25
DENY_TELEMETRY = (
    f"topic read {TELEMETRY_TOPIC}\n"  # the consumer may read it, the gateway not write it
    f"topic readwrite {STATUS_TOPIC}\n"
)


def seqs_of(payloads: list[bytes], rig: FaultRig) -> set[int]:
    return {batch.seq for batch in arrival(payloads, rig.keys()).batches}


def missing_seqs(report: verify.Report) -> set[int]:
    (stream,) = report.streams
    return {seq for low, high in stream.missing for seq in range(low, high + 1)}


def stop_after_a_clean_drain(rig: FaultRig, gateway: GatewayProcess) -> dict[str, int]:
    """Wait until the gateway is connected with nothing left to send, then SIGTERM.

    Nothing left to send: the outbox is empty (every sealed batch acknowledged) and the
    buffer holds fewer than FEW readings. A "connected" line alone does not say so: after
    an outage the outbox may still hold backlog batches over the broker's limit, and the
    first of them ends that connection milliseconds later. A SIGTERM in that window finds
    the gateway disconnected while it drains, and the drain then rightly leaves the rest
    in the buffer for the next start (gateway.daemon.Daemon._drain).
    """

    def drained() -> bool:
        snapshot = rig.snapshot()
        last = gateway.find(lambda e: e["msg"] in ("connected", "connection lost"))
        return (
            not snapshot.outbox and len(snapshot.readings) < FEW and last[-1]["msg"] == "connected"
        )

    wait_until(drained, timeout=30, what="connected, with the backlog sent")
    assert gateway.terminate() == 0, gateway.describe()
    left = gateway.find("left in the buffer for the next start")[-1]
    assert (left["readings"], left["batches"]) == (0, 0), left
    return gateway.counters()


def reconnect_gaps(gateway: GatewayProcess) -> list[float]:
    """Seconds from each "connection lost" to the next "connected"."""
    gaps, lost = [], None
    for entry in gateway.find(lambda e: e["msg"] in ("connected", "connection lost")):
        stamp = datetime.fromisoformat(entry["time"].replace("Z", "+00:00")).timestamp()
        if entry["msg"] == "connection lost":
            lost = stamp
        elif lost is not None:
            gaps.append(stamp - lost)
            lost = None
    return gaps


def test_publishes_denied_by_the_acl_show_as_missing_seqs_and_the_gateway_carries_on(
    make_rig: Callable[..., FaultRig], collector: Callable[..., Collector]
) -> None:
    rig = make_rig()
    telemetry = collector(rig.broker)
    status = collector(rig.broker, STATUS_TOPIC)
    gateway = rig.launch(rig.config(sensors=FEED, start=RUN, batch={"max_age": 0.3}, mqtt=MQTT))
    gateway.wait_log("connected", timeout=30)
    telemetry.wait_for(lambda messages: len(messages) >= 3, timeout=30)

    # The broker comes back with an ACL that forbids the gateway the telemetry topic.
    reconnecting = len(gateway.find("reconnecting"))
    rig.broker.stop()
    # The gateway records the PUBACKs it got before it logs "reconnecting": from then on
    # the outbox tells which batches the old broker took (and passed on to the consumer).
    gateway.wait_log("reconnecting", count=reconnecting + 1, timeout=30)
    snapshot = rig.snapshot()
    acked_before = set(range(1, snapshot.seq + 1)) - set(snapshot.outbox)
    rig.broker.acl_text = DENY_TELEMETRY
    reconnects = telemetry.connects
    rig.broker.start()
    denied_from = time.time()
    gateway.wait_log("connected", count=2, timeout=30)
    wait_until(lambda: telemetry.connects > reconnects, timeout=30, what="the consumer is back")
    # What the broker queued for the consumer before the restart.
    wait_until(
        lambda: acked_before <= seqs_of(telemetry.payloads(), rig),
        timeout=30,
        what="every batch the broker acknowledged before the restart reaches the consumer",
    )
    arrived_before = seqs_of(telemetry.payloads(), rig)
    denied = re.compile(rf"Denied PUBLISH from test-gw .*'{re.escape(TELEMETRY_TOPIC)}'")
    wait_until(
        lambda: len(denied.findall(rig.broker.log_text())) >= 8,
        timeout=30,
        what="the broker denies telemetry publishes",
    )
    # The gateway runs on; each refused batch costs it a reconnect, within the backoff.
    assert gateway.running
    assert min(reconnect_gaps(gateway)) >= RECONNECT_MIN
    # The status topic still works: each new connection's "online" goes through.
    online = [
        json.loads(payload)
        for _, payload in status.snapshot()
        if json.loads(payload)["state"] == "online"
    ]
    assert [m for m in online if m["time"] >= denied_from], online
    # Nothing new reached the consumer.
    assert seqs_of(telemetry.payloads(), rig) == arrived_before

    # The ACL is lifted again: batches arrive, and the refused ones are missing seqs.
    # (New seqs can only come through the new broker: no "connected" count to race with
    # a reconnect that happens while the broker starts.)
    rig.broker.acl_text = None
    rig.broker.restart()
    wait_until(
        lambda: len(seqs_of(telemetry.payloads(), rig) - arrived_before) >= 3,
        timeout=30,
        what="batches arrive again",
    )
    counters = stop_after_a_clean_drain(rig, gateway)
    wait_until(
        lambda: max(seqs_of(telemetry.payloads(), rig)) >= counters["batches_sealed"],
        timeout=20,
        what="the last batch arrives",
    )

    payloads = telemetry.payloads()
    report = verify.verify_stream(payloads, rig.keys())
    refused = missing_seqs(report)
    assert refused, verify.format_report(report)
    assert all("missing seq" in problem for problem in report.problems), report.problems
    (stream,) = report.streams
    assert stream.conflicts == 0
    assert not stream.broken_links
    assert stream.first_seq == 1
    assert stream.last_seq == counters["batches_sealed"]
    # The missing seqs are those the broker denied, one PUBLISH each.
    assert len(refused) == len(denied.findall(rig.broker.log_text()))
    assert min(refused) == max(arrived_before) + 1
    # Inside the gateway nothing was lost: every reading was sealed and acknowledged.
    assert counters["readings_acked"] == counters["readings_sealed"] == counters["readings_taken"]
    assert counters["readings_dropped"] == 0
    rig.assert_healthy(gateway)


def test_batches_never_exceed_max_bytes_when_it_is_at_most_the_broker_limit(
    make_rig: Callable[..., FaultRig], collector: Callable[..., Collector]
) -> None:
    limit = 4096
    rig = make_rig(message_size_limit=limit)
    telemetry = collector(rig.broker)
    gateway = rig.launch(
        rig.config(sensors=FEED, start=RUN, batch={"max_bytes": limit, "max_age": 0.3}, mqtt=MQTT)
    )
    gateway.wait_log("connected", timeout=30)
    telemetry.wait_for(lambda messages: len(messages) >= 2, timeout=30)
    # A short outage: the backlog drains in batches packed up to max_bytes.
    rig.broker.stop()
    time.sleep(4)
    rig.broker.start()
    gateway.wait_log("connected", count=2, timeout=30)
    taken = stop_after_a_clean_drain(rig, gateway)["readings_taken"]
    wait_until(
        lambda: len(arrival(telemetry.payloads(), rig.keys()).readings) >= taken,
        timeout=20,
        what="every reading arrives",
    )

    payloads = telemetry.payloads()
    single_stream(verify.verify_stream(payloads, rig.keys()))
    sizes = [len(payload) for payload in payloads]
    assert max(sizes) <= limit, sizes
    assert sum(size > limit - 200 for size in sizes) >= 3, f"no full backlog batches: {sizes}"
    got = arrival(payloads, rig.keys())
    assert len(got.readings) == taken
    assert not audit_drops(got, FEED).missing
    assert "too large" not in rig.broker.log_text()
    assert len(gateway.find("connected")) == 2
    rig.assert_healthy(gateway)


def test_batches_over_the_broker_limit_are_dropped_by_it_and_show_as_missing_seqs(
    make_rig: Callable[..., FaultRig], collector: Callable[..., Collector]
) -> None:
    limit, max_bytes = 4096, 16384
    rig = make_rig(message_size_limit=limit)
    telemetry = collector(rig.broker)
    gateway = rig.launch(
        rig.config(
            sensors=FEED, start=RUN, batch={"max_bytes": max_bytes, "max_age": 0.3}, mqtt=MQTT
        )
    )
    gateway.wait_log("connected", timeout=30)
    telemetry.wait_for(lambda messages: len(messages) >= 2, timeout=30)
    # Live batches fit under the limit; the backlog of an outage is packed into 16 KB.
    rig.broker.stop()
    time.sleep(6)
    rig.broker.start()
    gateway.wait_log("connected", count=2, timeout=30)
    too_large = re.compile(r"Dropped too large PUBLISH from test-gw .*\((\d+) bytes\)")
    wait_until(
        lambda: too_large.findall(rig.broker.log_text()),
        timeout=30,
        what="the broker drops the oversize backlog batches",
    )
    counters = stop_after_a_clean_drain(rig, gateway)
    wait_until(
        lambda: max(seqs_of(telemetry.payloads(), rig)) >= counters["batches_sealed"],
        timeout=20,
        what="the last batch arrives",
    )

    # The broker's side: each oversize batch was dropped once (and acknowledged).
    dropped_sizes = [int(size) for size in too_large.findall(rig.broker.log_text())]
    assert all(limit < size <= max_bytes for size in dropped_sizes), dropped_sizes
    # The gateway's side: it carried on, every reading acknowledged, within the backoff.
    assert counters["readings_acked"] == counters["readings_taken"]
    assert counters["batches_acked"] == counters["batches_sealed"]
    assert min(reconnect_gaps(gateway)) >= RECONNECT_MIN
    # The consumer's side: exactly the oversize batches are missing seqs.
    payloads = telemetry.payloads()
    report = verify.verify_stream(payloads, rig.keys())
    assert len(missing_seqs(report)) == len(dropped_sizes), verify.format_report(report)
    (stream,) = report.streams
    assert stream.conflicts == 0
    assert not stream.broken_links
    assert stream.last_seq == counters["batches_sealed"]
    assert max(len(payload) for payload in payloads) <= limit
    rig.assert_healthy(gateway)
