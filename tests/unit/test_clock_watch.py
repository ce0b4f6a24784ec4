"""Readings taken before the clock synchronised are corrected once it does."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

import gateway.daemon as daemon_module
from gateway.buffer import Buffer
from gateway.clock import ClockWatch
from gateway.config import load_settings
from gateway.daemon import Daemon
from gateway.readings import Reading


def test_watch_reports_the_offset_change_at_synchronisation() -> None:
    watch = ClockWatch()
    assert watch.observe(synced=False, wall=1000.0, mono=10.0, first_id=1) is None
    assert watch.observe(synced=False, wall=1005.0, mono=15.0, first_id=4) is None
    # NTP steps the clock forward by an hour and the kernel reports it synchronised.
    assert watch.observe(synced=True, wall=4610.0, mono=20.0, first_id=9) == (1, 3600.0)
    assert watch.observe(synced=True, wall=4611.0, mono=21.0, first_id=12) is None


def test_a_jump_while_unsynchronised_leaves_earlier_readings_uncorrected() -> None:
    watch = ClockWatch()
    watch.observe(synced=False, wall=1000.0, mono=10.0, first_id=1)
    watch.observe(synced=False, wall=50_000.0, mono=11.0, first_id=5)  # fake-hwclock restore
    assert watch.observe(synced=True, wall=50_002.5, mono=12.0, first_id=8) == (5, 1.5)


def test_synced_all_along_needs_no_correction() -> None:
    watch = ClockWatch()
    assert watch.observe(synced=True, wall=1000.0, mono=10.0, first_id=1) is None


async def test_daemon_corrects_buffered_unsynced_readings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "gw.yaml"
    config.write_text(
        "thing: gw\n"
        f"state_dir: {tmp_path}\n"
        "mqtt: {endpoint: localhost, ca: ca.pem, cert: c.pem, key: k.pem}\n"
        "sensors: [{name: c, driver: counter}]\n"
    )
    daemon = Daemon(load_settings(config))
    daemon.buffer = buffer = Buffer(tmp_path / "b.sqlite3", max_bytes=1 << 24)
    synced = False
    step = 0.0
    monkeypatch.setattr(daemon_module, "clock_synchronised", lambda policy: synced)
    monkeypatch.setattr(daemon_module.time, "time", lambda: time.monotonic() + 1e9 + step)
    wrong = daemon_module.time.time()
    daemon._take([Reading("c", "count", "count", 1.0, round(wrong, 3), synced=False)])
    await daemon._commit()
    # NTP answers: the clock steps forward 2 hours and is synchronised from now on.
    step, synced = 7200.0, True
    daemon._take([Reading("c", "count", "count", 2.0, round(daemon_module.time.time(), 3))])
    await daemon._commit()
    first, second = (b.reading for b in buffer.oldest(10))
    assert first.synced and second.synced
    assert first.time == pytest.approx(wrong + 7200.0, abs=0.05)
    assert second.time - first.time == pytest.approx(0.0, abs=0.5)
