"""Fault: a broker outage longer than the buffer cap can hold.

100 counter sensors polled every 0.05 s (the shortest interval the configuration
allows) feed 2,000 readings a second into a buffer capped at 1 MiB, the smallest cap
allowed: at ROW_BYTES = 40 per reading it holds about 26,000 readings, so it is full
about 13 s into the outage. The outage goes on until at least 8,000 readings were
dropped. Then the broker comes back, the backlog drains, the daemon stops cleanly,
and the consumer's view is audited: one unbroken stream, every reading taken either
arrived exactly once or is counted in a batch's ``dropped``, the counts are exact,
and the dropped readings are the oldest.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import pytest
from daemon_harness import wait_until

from gateway.buffer import ROW_BYTES

from .fault_harness import RUN, FaultRig, recover_and_audit, sensors

if TYPE_CHECKING:
    from conftest import Collector

pytestmark = [pytest.mark.integration, pytest.mark.faults]

MIB = 1 << 20
FEED = sensors(100, 0.05)  # 2,000 readings a second
DROPS = 8_000  # the outage lasts until at least this many readings were dropped
FULL = "buffer full: dropped oldest readings"


def test_an_outage_beyond_the_cap_drops_the_oldest_readings_and_announces_them_exactly(
    make_rig: Callable[..., FaultRig], collector: Callable[..., Collector]
) -> None:
    rig = make_rig()
    telemetry = collector(rig.broker)
    gateway = rig.launch(
        rig.config(
            sensors=FEED,
            start=RUN,
            buffer={"max_bytes": MIB, "commit_interval": 0.2},
            batch={"max_age": 0.5},
        )
    )
    gateway.wait_log("connected", timeout=30)
    telemetry.wait_for(lambda messages: len(messages) >= 2, timeout=30)

    rig.broker.stop()
    gateway.wait_log("connection lost", timeout=30)

    def dropped_so_far() -> int:
        return sum(int(entry["dropped"]) for entry in gateway.find(FULL))

    wait_until(
        lambda: dropped_so_far() >= DROPS,
        timeout=120,
        what=f"the buffer is full and {DROPS} readings were dropped",
    )
    during = rig.snapshot()
    dropped_during = dropped_so_far()
    # The cap holds: what is buffered costs no more than max_bytes in the accounting.
    assert len(during.readings) * ROW_BYTES <= MIB
    assert len(during.readings) * ROW_BYTES > MIB * 0.9, "the buffer should be full"
    assert during.outbox == {}, "nothing is sealed while the broker is down"
    sealed_before = during.seq

    recovery = recover_and_audit(rig, gateway, telemetry, FEED)
    taken, got, audit = recovery.taken, recovery.got, recovery.audit

    assert audit.dropped == dropped_so_far() >= DROPS
    assert len(audit.missing) == audit.dropped
    # The newest reading of every sensor arrived: nothing after it was taken unseen.
    highest = {sensor: max(got.values(sensor)) for sensor in FEED}
    assert sum(top - RUN + 1 for top in highest.values()) == taken
    # The drops are announced in the very next batch after the outage, not later.
    assert min(audit.announced) == sealed_before + 1, audit.announced
    assert audit.announced[sealed_before + 1] >= dropped_during
    # Per sensor, the loss begins right after the last reading sealed before the outage.
    for sensor in FEED:
        lost = sorted(v for _, s, v in audit.missing if s == sensor)
        assert lost, f"{sensor} lost nothing although the buffer overflowed"
        before = [v for (s, v), a in got.readings.items() if s == sensor and a.seq <= sealed_before]
        assert lost[0] == max(before, default=RUN - 1) + 1, (sensor, lost[:5])
    rig.assert_healthy(gateway)
