"""Every example configuration runs through the real daemon against its simulators.

Each file in config/examples/ is loaded as a user would load it, with the state
directory moved to a temporary one and the broker pointed at a closed port (the
gateway buffers while offline). The daemon runs until every sensor has produced
readings; those readings are then checked in the buffer file.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path

import pytest

from gateway.buffer import Buffer
from gateway.config import load_settings
from gateway.daemon import Daemon
from gateway.pki import write_pki

EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "config" / "examples").glob("*.yaml"))

# SenML units (IANA registry) the drivers may use.
SENML_UNITS = {
    "Cel",
    "%RH",
    "Pa",
    "lx",
    "V",
    "A",
    "W",
    "ppm",
    "ug/m3",
    "count",
    "%",
    "m/s",
    "Hz",
    "J",
    "K",
    "kg",
    "m",
    "l",
    "l/s",
    "W/m2",
    "dBm",
    "s",
    "mm",
    "mm/h",
    "m3",
    "Wh",
    "kWh",
    "VA",
    "var",
    "/",
    "1/s",
    "lat",
    "lon",
    "bar",
    "m3/s",
    "dB",
    "%EL",
    "EL",
    "rad",
    "kPa",
    "hPa",
    "beat/min",
    "beats",
    "S/m",
    "pH",
    None,
}


@pytest.mark.integration
@pytest.mark.parametrize("example", EXAMPLES, ids=[p.stem for p in EXAMPLES])
async def test_example_config_reads_its_simulators_through_the_daemon(
    example: Path, tmp_path: Path
) -> None:
    pki = write_pki(tmp_path / "pki", thing="example-gw")
    overrides = {
        "state_dir": str(tmp_path / "state"),
        "clock": "assume-synced",
        "mqtt": {
            "endpoint": "127.0.0.1",
            "port": 1,  # nothing listens: the gateway stays offline and buffers
            "ca": str(pki.ca_cert),
            "cert": str(pki.client_cert),
            "key": str(pki.client_key),
            "reconnect_min": 5.0,
        },
    }
    settings = load_settings(example, overrides)
    daemon = Daemon(settings, overrides=overrides)
    task = asyncio.create_task(daemon.run(handle_signals=False))
    deadline = time.monotonic() + 20
    try:
        await asyncio.wait_for(daemon.ready.wait(), 10)
        assert not daemon.unavailable, daemon.unavailable
        while time.monotonic() < deadline and not all(p.status.readings for p in daemon.pollers):
            assert not task.done()
            await asyncio.sleep(0.2)
    finally:
        daemon.request_stop()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, 30)
    silent = [p.name for p in daemon.pollers if not p.status.readings]
    assert not silent, f"no readings from {silent}: {[p.status for p in daemon.pollers]}"
    buffer = Buffer(settings.buffer_path, max_bytes=settings.buffer.max_bytes)
    try:
        stored = [b.reading for b in buffer.oldest(100_000)]
    finally:
        buffer.close()
    sensors = {s.name for s in settings.sensors}
    assert {r.sensor for r in stored} == sensors
    assert {r.unit for r in stored} <= SENML_UNITS
