"""Fault: the broker takes the connection but stops acknowledging.

Mosquitto is frozen with SIGSTOP while the daemon is connected and publishing: TCP
stays up (the kernel keeps accepting bytes), but no PUBACK comes. The outbox is read
every 0.1 s while the broker is frozen: no row may go, since a row goes only on its
PUBACK -- except a batch the broker took in just before it froze, whose PUBACK may
still have been on its way; Mosquitto passes a message on to its subscribers before it
acknowledges it, so such a batch has reached the consumer. Two ways out are taken:

1. ``mqtt.publish_timeout`` (2 s) expires: the daemon ends the session itself, saying
   which batch had no PUBACK, and cannot reconnect to the frozen broker; then the
   broker is woken up.
2. The frozen broker is killed (SIGKILL): the connection is reset under the daemon;
   then a new broker starts on the same port and state.

After each, everything arrives exactly once (after dedup on seq; resent copies are
byte-identical) and the stream is unbroken.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import pytest
from daemon_harness import GatewayProcess, wait_until

from gateway import verify

from .fault_harness import RUN, FaultRig, arrival, audit_drops, sensors, single_stream

if TYPE_CHECKING:
    from conftest import Collector

pytestmark = [pytest.mark.integration, pytest.mark.faults]

FEED = sensors(4, 0.05)
INFLIGHT = 4
PUBLISH_TIMEOUT = 2.0


def kept(held: dict[int, bytes], now: dict[int, bytes], telemetry: Collector) -> dict[int, bytes]:
    """The rows of ``held`` (outbox rows seen while the broker was frozen) that ``now`` (a
    later look) still has, each checked to be the same bytes.

    A row of ``held`` may be gone only if the broker took its batch in before it froze:
    the PUBACK may then have been on its way (no fixed settling time can say when it
    lands on a busy machine), and Mosquitto passes a message on to its subscribers
    before it acknowledges it, so the consumer has that batch. Any other row that went,
    went without a PUBACK."""
    for seq in sorted(set(held) - set(now)):
        payload = held[seq]
        wait_until(
            lambda payload=payload: payload in telemetry.payloads(),
            timeout=5,
            what=f"outbox row {seq} deleted while no PUBACK could come",
        )
    for seq in set(held) & set(now):
        assert now[seq] == held[seq], f"outbox row {seq} changed"
    return {seq: payload for seq, payload in held.items() if seq in now}


def watch_outbox_while_frozen(
    rig: FaultRig,
    telemetry: Collector,
    seconds: float,
    *,
    until: Callable[[], bool] | None = None,
) -> tuple[dict[int, bytes], int]:
    """Read the outbox every 0.1 s for ``seconds`` (or until ``until()``) while the broker
    is frozen; fail if a row present at the start goes (see :func:`kept`). Returns the
    rows of the first look still held at the end, and how many looks were taken."""
    first: dict[int, bytes] = wait_until(
        lambda: rig.snapshot().outbox, timeout=5, what="a sealed batch waits for its PUBACK"
    )
    held = dict(first)
    looks = 1
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not (until is not None and until()):
        held = kept(held, rig.snapshot().outbox, telemetry)
        looks += 1
        time.sleep(0.1)
    return held, looks


def wait_subscription_saved(rig: FaultRig, telemetry: Collector) -> None:
    """Until Mosquitto has saved its database (autosave) since it confirmed the
    consumer's subscription: then the subscription survives a SIGKILL of the broker."""

    def saved() -> bool:
        text = rig.broker.log_text()
        at = text.rfind(f"Sending SUBACK to {telemetry.client_id}")
        return at >= 0 and "Saving in-memory database" in text[at:]

    wait_until(saved, timeout=30, what="the broker saves the consumer's subscription")


def wait_delivered_so_far(rig: FaultRig, telemetry: Collector) -> None:
    """Every batch that left the outbox (acknowledged) has reached the collector: Mosquitto
    writes a message to its subscribers as it acknowledges it, so this holds at once
    (the wait covers the collector's thread), and killing the broker cannot take an
    acknowledged, undelivered batch with it."""

    def delivered() -> bool:
        snapshot = rig.snapshot()
        got = {b.seq for b in arrival(telemetry.payloads(), rig.keys()).batches}
        acked = set(range(1, snapshot.seq + 1)) - set(snapshot.outbox)
        return acked <= got

    wait_until(delivered, timeout=10, what="the collector has every acknowledged batch")


def test_no_outbox_row_goes_before_its_puback_and_everything_arrives_once(
    make_rig: Callable[..., FaultRig], collector: Callable[..., Collector]
) -> None:
    # autosave: the collector's subscription survives the broker's SIGKILL in phase 2.
    rig = make_rig(autosave_interval=1)
    telemetry = collector(rig.broker)
    wait_subscription_saved(rig, telemetry)
    gateway = rig.launch(
        rig.config(
            sensors=FEED,
            start=RUN,
            buffer={"commit_interval": 0.2},
            batch={"max_age": 0.3},
            mqtt={
                "max_inflight": INFLIGHT,
                "publish_timeout": PUBLISH_TIMEOUT,
                "connect_timeout": 2.0,
                "reconnect_min": 0.2,
                "reconnect_max": 1.0,
            },
        )
    )
    gateway.wait_log("connected", timeout=30)
    telemetry.wait_for(lambda messages: len(messages) >= 3, timeout=30)

    # 1. Frozen until the daemon gives up on the PUBACK, then some more.
    rig.pause_broker()
    first, looks = watch_outbox_while_frozen(
        rig, telemetry, 15, until=lambda: len(gateway.find("connection lost")) >= 1
    )
    lost = gateway.wait_log("connection lost", timeout=5)
    assert "no PUBACK for batch" in lost["error"], lost
    assert f"within {PUBLISH_TIMEOUT:g} s" in lost["error"], lost
    # The frozen broker still accepts TCP, but the TLS handshake never completes.
    more, _ = watch_outbox_while_frozen(rig, telemetry, 2.5)
    first = kept(first, more, telemetry)
    assert len(more) <= INFLIGHT, "more unacknowledged batches than max_inflight"
    assert looks >= 5
    rig.resume_broker()
    gateway.wait_log("connected", count=2, timeout=30)
    wait_until(
        lambda: set(more.values()) <= set(telemetry.payloads()),
        timeout=20,
        what="the batches held while frozen arrive, as the same bytes",
    )

    # 2. Frozen again, and then the broker dies: the connection is reset under the daemon.
    telemetry.wait_for(lambda messages: len(messages) >= len(more) + 6, timeout=30)
    rig.pause_broker()
    before, _ = watch_outbox_while_frozen(rig, telemetry, 1.0)
    # What the broker acknowledged it had already passed on: the kill cannot lose it.
    wait_delivered_so_far(rig, telemetry)
    connects = len(gateway.find("connected"))
    rig.broker.kill()
    rig.paused = False
    gateway.wait_log("connection lost", count=2, timeout=10)
    before = kept(before, rig.snapshot().outbox, telemetry)
    rig.broker.start()
    gateway.wait_log("connected", count=connects + 1, timeout=30)
    check_everything_arrives_once(rig, gateway, telemetry, {**first, **more, **before})


def check_everything_arrives_once(
    rig: FaultRig, gateway: GatewayProcess, telemetry: Collector, held: dict[int, bytes]
) -> None:
    telemetry.wait_for(lambda messages: len(messages) >= max(held) + 2, timeout=30)
    assert gateway.terminate() == 0, gateway.describe()
    taken = gateway.counters()["readings_taken"]
    wait_until(
        lambda: len(arrival(telemetry.payloads(), rig.keys()).readings) >= taken,
        timeout=30,
        what="every reading arrives",
    )
    payloads = telemetry.payloads()
    stream = single_stream(verify.verify_stream(payloads, rig.keys()))
    assert stream.dropped == 0
    assert set(held.values()) <= set(payloads), "a held batch arrived as other bytes"
    got = arrival(payloads, rig.keys())
    assert len(got.readings) == taken
    assert not audit_drops(got, FEED).missing
    for sensor in FEED:
        values = got.values(sensor)
        assert values == list(range(RUN, RUN + len(values))), sensor
    rig.assert_healthy(gateway)
