"""Polling: the drift-free schedule, timeouts, retries, health, value checks; and the
buses and workers the pollers run on.

Scripted drivers run on real worker threads, so the timing tests measure the real
thing; intervals are tens of milliseconds and tolerances are wide enough for a busy
machine while still catching drift (lateness that grows cycle by cycle).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import itertools
import logging
import math
import os
import statistics
import threading
import time
import types
from collections.abc import AsyncIterator, Callable, Iterator
from typing import ClassVar

import pytest
import smbus2

from drivers.base import Driver, DriverContext, DriverOptions
from drivers.bme280 import BME280, BME280Options
from drivers.sim.bme280 import SimBME280
from drivers.sim.bus import SimBus
from gateway import polling
from gateway.buses import BusError, Buses
from gateway.config import SensorSettings
from gateway.polling import FAILED_AFTER, Health, Poller
from gateway.readings import Measurement, Reading
from gateway.sensors import open_sensor
from gateway.workers import Worker

ADDRESS = 0x76

Step = list[Measurement] | BaseException | Callable[[], list[Measurement]]


def _ok() -> list[Measurement]:
    return [Measurement("temperature", "Cel", 21.5)]


class Scripted(Driver):
    """Plays ``script`` one step per read (then repeats ``default``) and records every call.

    A step is the measurements to return, an exception to raise, or a callable that
    produces them (it may block, as a hung bus would).
    """

    ranges: ClassVar[dict[str, tuple[float, float]]] = {"temperature": (-40.0, 85.0)}

    def __init__(self, *script: Step, default: Step = _ok) -> None:
        super().__init__(DriverContext("scripted"), DriverOptions())
        self.script = list(script)
        self.default = default
        self.calls: list[str] = []
        self.read_times: list[float] = []
        self._lock = threading.Lock()

    def setup(self) -> None:
        with self._lock:
            self.calls.append("setup")

    def read(self) -> list[Measurement]:
        with self._lock:
            self.read_times.append(time.monotonic())
            self.calls.append("read")
            step = self.script.pop(0) if self.script else self.default
        if isinstance(step, BaseException):
            raise step
        if callable(step):
            return step()
        return step


class Sink:
    """Collects what a poller hands on."""

    def __init__(self) -> None:
        self.batches: list[list[Reading]] = []

    def __call__(self, readings: list[Reading]) -> None:
        self.batches.append(readings)

    @property
    def readings(self) -> list[Reading]:
        return [r for batch in self.batches for r in batch]


@pytest.fixture
def workers() -> Iterator[list[Worker]]:
    """Workers made by a test; shut down afterwards."""
    made: list[Worker] = []
    yield made
    for worker in made:
        worker.shutdown()


@pytest.fixture
def make_poller(workers: list[Worker]) -> Callable[..., tuple[Poller, Sink]]:
    def make(
        driver: Driver,
        *,
        interval: float = 0.05,
        timeout: float = 1.0,
        retries: int = 0,
        synced: Callable[[], bool] = lambda: True,
        name: str = "s1",
    ) -> tuple[Poller, Sink]:
        worker = Worker(f"test-{name}")
        workers.append(worker)
        sink = Sink()
        poller = Poller(
            name=name,
            driver=driver,
            worker=worker,
            interval=interval,
            timeout=timeout,
            retries=retries,
            sink=sink,
            synced=synced,
        )
        return poller, sink

    return make


@pytest.fixture
def fast_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep retry back-off short so the tests stay fast."""
    monkeypatch.setattr(polling, "RETRY_BASE", 0.001)


@contextlib.asynccontextmanager
async def running(*pollers: Poller) -> AsyncIterator[float]:
    """Run the pollers' schedules; yields the monotonic time they start at (their slot 0)."""
    start = asyncio.get_running_loop().time()  # the loop's clock is time.monotonic
    tasks = [asyncio.create_task(p.run()) for p in pollers]
    try:
        yield start
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def wait_until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.005)


def health(poller: Poller) -> Health:
    """The poller's health now (a call, so that type checkers do not carry it over)."""
    return poller.status.health


def slots_of(times: list[float], interval: float, start: float) -> tuple[list[int], list[float]]:
    """The schedule slot of each time and how late it came: a poll counts for the
    slot it follows by less than 3/4 of an interval (or precedes by a quarter)."""
    slots = [math.floor((t - start) / interval + 0.25) for t in times]
    late = [t - (start + s * interval) for t, s in zip(times, slots, strict=True)]
    return slots, late


# --------------------------------------------------------------------------- schedule


async def test_schedule_stays_on_its_slots_without_drift(
    make_poller: Callable[..., tuple[Poller, Sink]],
) -> None:
    interval, cycles = 0.02, 50
    driver = Scripted()
    poller, _ = make_poller(driver, interval=interval)
    async with running(poller) as start:
        await wait_until(lambda: len(driver.read_times) >= cycles)
    slots, late = slots_of(driver.read_times[:cycles], interval, start)

    assert all(b > a for a, b in itertools.pairwise(slots)), "slots must advance"
    assert slots[-1] <= cycles - 1 + 3, f"too many slots skipped: {slots}"
    # Most polls sit within a few ms of their slot ...
    assert sum(abs(x) < 0.005 for x in late) >= 0.9 * cycles, late
    # ... and lateness does not accumulate: the end is as close to its slot as the start.
    drift = statistics.median(late[-10:]) - statistics.median(late[:10])
    assert abs(drift) < 0.003, f"schedule drifted by {drift * 1000:.1f} ms over {cycles} cycles"


async def test_slow_read_skips_missed_slots_instead_of_bursting(
    make_poller: Callable[..., tuple[Poller, Sink]],
) -> None:
    interval = 0.04

    def slow() -> list[Measurement]:
        time.sleep(2.5 * interval)  # runs over slots 3 and 4
        return _ok()

    driver = Scripted(_ok, _ok, slow)
    poller, _ = make_poller(driver, interval=interval)
    async with running(poller) as start:
        await wait_until(lambda: len(driver.read_times) >= 6)
    slots, late = slots_of(driver.read_times[:6], interval, start)

    assert slots == [0, 1, 2, 5, 6, 7], (slots, late)
    gaps = [b - a for a, b in zip(driver.read_times, driver.read_times[1:6], strict=False)]
    assert min(gaps) > interval / 2, f"polls bunched up after the slow read: {gaps}"


# --------------------------------------------------------------------------- timeouts


async def test_hung_read_is_abandoned_counted_and_the_poller_goes_on(
    make_poller: Callable[..., tuple[Poller, Sink]],
) -> None:
    release = threading.Event()

    def hang() -> list[Measurement]:
        release.wait(10)
        return _ok()

    driver = Scripted(hang)
    poller, sink = make_poller(driver, interval=0.05, timeout=0.05)
    try:
        started = time.monotonic()
        assert await poller.poll_once() == []
        assert time.monotonic() - started < 0.5, "the hung read was waited for"
        assert poller.status.errors == 1
        assert poller.status.last_error == "no answer within 0.05 s"
        assert health(poller) is Health.DEGRADED

        # Still hung: the schedule keeps going, and every cycle counts its timeout.
        async with running(poller):
            await asyncio.sleep(0.3)
            assert poller.status.errors >= 3
            assert sink.readings == []
            release.set()
            await wait_until(lambda: len(sink.readings) >= 2)
        assert health(poller) is Health.OK
    finally:
        release.set()


async def test_hanging_sensor_never_delays_another_sensors_schedule(
    make_poller: Callable[..., tuple[Poller, Sink]],
) -> None:
    release = threading.Event()
    interval = 0.02

    def hang() -> list[Measurement]:
        release.wait(10)
        return _ok()

    stuck, _ = make_poller(Scripted(default=hang), name="stuck", interval=0.05, timeout=0.1)
    healthy_driver = Scripted()
    healthy, healthy_sink = make_poller(healthy_driver, name="healthy", interval=interval)
    try:
        async with running(stuck, healthy) as start:
            await wait_until(lambda: len(healthy_driver.read_times) >= 25)
    finally:
        release.set()
    slots, late = slots_of(healthy_driver.read_times[:25], interval, start)
    assert slots[-1] <= 24 + 2, f"the healthy sensor lost its slots: {slots}"
    assert sum(abs(x) < 0.005 for x in late) >= 22, late
    assert len(healthy_sink.readings) >= 25
    assert health(healthy) is Health.OK
    assert stuck.status.errors >= 2


# --------------------------------------------------------------------------- retries


async def test_retries_with_backoff_then_degraded_then_ok(
    make_poller: Callable[..., tuple[Poller, Sink]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(polling, "RETRY_BASE", 0.02)
    eio = OSError(errno.EIO, os.strerror(errno.EIO))
    driver = Scripted(eio, eio)
    poller, sink = make_poller(driver, interval=1.0, retries=3)

    readings = await poller.poll_once()

    assert [r.value for r in readings] == [21.5]
    assert sink.readings == readings
    assert poller.status.errors == 2
    assert health(poller) is Health.DEGRADED
    assert poller.status.failed_cycles == 0
    assert poller.status.last_error == f"{os.strerror(errno.EIO)} (errno {errno.EIO})"
    # Back-off doubles: 0.02 s, then 0.04 s.
    first, second, third = driver.read_times
    assert second - first >= 0.02
    assert third - second >= 0.04
    # Setup runs first, and again after each failed attempt.
    assert driver.calls == ["setup", "read", "setup", "read", "setup", "read"]

    await poller.poll_once()
    assert health(poller) is Health.OK
    assert driver.calls[-1] == "read" and driver.calls.count("setup") == 3


async def test_backoff_is_capped_by_a_quarter_interval(
    make_poller: Callable[..., tuple[Poller, Sink]],
) -> None:
    eio = OSError(errno.EIO, "I/O error")
    driver = Scripted(eio, eio, eio)
    poller, _ = make_poller(driver, interval=0.08, retries=3)
    started = time.monotonic()
    await poller.poll_once()
    assert time.monotonic() - started < 0.2  # 3 × 0.02 s, not 0.1 + 0.2 + 0.4 s
    assert poller.status.errors == 3


@pytest.mark.parametrize("code", [errno.EREMOTEIO, errno.EIO, errno.ETIMEDOUT])
async def test_bus_faults_through_the_real_driver_are_retried_and_counted(
    code: int, make_poller: Callable[..., tuple[Poller, Sink]], fast_retries: None
) -> None:
    bus = SimBus()
    bus.attach(ADDRESS, SimBME280(seed=1))
    driver = BME280(DriverContext("bme", bus, ADDRESS), BME280Options())
    poller, _ = make_poller(driver, retries=2)
    bus.inject_faults(code)

    readings = await poller.poll_once()

    assert {r.quantity for r in readings} == {"temperature", "pressure", "humidity"}
    assert poller.status.errors == 1
    assert health(poller) is Health.DEGRADED
    # The bus's own errno is reported, even for ETIMEDOUT (an OSError that Python
    # maps to TimeoutError), not mistaken for the poller's timeout.
    assert poller.status.last_error == f"{os.strerror(code)} (errno {code})"


async def test_a_burst_of_bus_faults_longer_than_the_retries_fails_the_cycle(
    make_poller: Callable[..., tuple[Poller, Sink]], fast_retries: None
) -> None:
    bus = SimBus()
    bus.attach(ADDRESS, SimBME280(seed=2))
    driver = BME280(DriverContext("bme", bus, ADDRESS), BME280Options())
    poller, sink = make_poller(driver, retries=2)
    bus.inject_faults(errno.EREMOTEIO, errno.EIO, errno.ETIMEDOUT)

    assert await poller.poll_once() == []
    assert poller.status.errors == 3
    assert poller.status.failed_cycles == 1
    assert sink.readings == []

    assert len(await poller.poll_once()) == 3  # the bus is quiet again
    assert health(poller) is Health.OK


async def test_unexpected_driver_exception_counts_as_a_failed_read(
    make_poller: Callable[..., tuple[Poller, Sink]],
    caplog: pytest.LogCaptureFixture,
    fast_retries: None,
) -> None:
    # A driver bug must not end the sensor's task: it is one failed attempt like any other,
    # and its traceback is logged once while the same error repeats.
    caplog.set_level(logging.ERROR, logger="gateway.polling")
    bug = RuntimeError("driver bug")
    driver = Scripted(bug, bug, bug, KeyError("x"))
    poller, _ = make_poller(driver, retries=1, interval=0.02)

    assert await poller.poll_once() == []
    assert poller.status.errors == 2
    assert poller.status.last_error == "RuntimeError: driver bug"
    async with running(poller):
        await wait_until(lambda: poller.status.readings >= 2)
    assert poller.status.errors == 4
    assert health(poller) is Health.OK

    logged = [r for r in caplog.records if r.getMessage() == "driver raised an unexpected error"]
    assert [r.error for r in logged] == ["RuntimeError: driver bug", "KeyError: 'x'"]  # type: ignore[attr-defined]
    assert all(r.exc_info is not None for r in logged)


# --------------------------------------------------------------------------- health


async def test_failed_after_consecutive_failed_cycles_logged_once_and_recovers(
    make_poller: Callable[..., tuple[Poller, Sink]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="gateway.polling")
    driver = Scripted(default=OSError(errno.EREMOTEIO, "Remote I/O error"))
    poller, _ = make_poller(driver, retries=0)

    healths = []
    for _ in range(FAILED_AFTER + 3):
        await poller.poll_once()
        healths.append(poller.status.health)
    assert healths == [Health.DEGRADED] * (FAILED_AFTER - 1) + [Health.FAILED] * 4
    assert poller.status.failed_cycles == FAILED_AFTER + 3

    driver.default = _ok
    await poller.poll_once()
    assert health(poller) is Health.OK
    assert poller.status.failed_cycles == 0

    transitions = [
        (r.levelno, r.health, r.was)  # type: ignore[attr-defined]
        for r in caplog.records
        if r.name == "gateway.polling" and hasattr(r, "health")
    ]
    assert transitions == [
        (logging.WARNING, "degraded", "ok"),
        (logging.WARNING, "failed", "degraded"),
        (logging.INFO, "ok", "failed"),
    ]
    failed = next(r for r in caplog.records if getattr(r, "health", None) == "failed")
    assert failed.getMessage() == "sensor s1 is failed"
    assert failed.error == "Remote I/O error (errno 121)"  # type: ignore[attr-defined]
    # Setup ran before the first read and again before every read after a failure.
    assert driver.calls.count("setup") == FAILED_AFTER + 4


async def test_setup_failure_is_retried_on_the_next_attempt(
    make_poller: Callable[..., tuple[Poller, Sink]], fast_retries: None
) -> None:
    class FlakySetup(Scripted):
        setups = 0

        def setup(self) -> None:
            super().setup()
            self.setups += 1
            if self.setups == 1:
                raise OSError(errno.ENXIO, "no such device")

    driver = FlakySetup()
    poller, _ = make_poller(driver, retries=1)
    assert len(await poller.poll_once()) == 1
    assert driver.calls == ["setup", "setup", "read"]
    assert poller.status.errors == 1


# --------------------------------------------------------------------------- values


async def test_bad_values_are_rejected_counted_and_never_reach_the_sink(
    make_poller: Callable[..., tuple[Poller, Sink]],
) -> None:
    measurements = [
        Measurement("temperature", "Cel", 21.0),
        Measurement("temperature", "Cel", 85.1),  # above the datasheet range
        Measurement("temperature", "Cel", -40.5),  # below it
        Measurement("temperature", "Cel", math.nan),
        Measurement("other", None, math.inf),
        Measurement("other", None, -math.inf),
        Measurement("other", None, 2.0**60),  # beyond what JSON consumers carry exactly
        Measurement("state", None, "open"),
        Measurement("flag", None, True),
        Measurement("temperature", "Cel", 85.0),  # the range is inclusive
    ]
    poller, sink = make_poller(Scripted(measurements))

    kept = await poller.poll_once()

    assert [(r.quantity, r.value) for r in kept] == [
        ("temperature", 21.0),
        ("state", "open"),
        ("flag", True),
        ("temperature", 85.0),
    ]
    assert sink.readings == kept
    assert poller.status.rejected == 6
    assert poller.status.readings == 4
    assert health(poller) is Health.OK


async def test_all_values_rejected_hands_nothing_on(
    make_poller: Callable[..., tuple[Poller, Sink]],
) -> None:
    poller, sink = make_poller(Scripted([Measurement("temperature", "Cel", math.nan)]))
    assert await poller.poll_once() == []
    assert sink.batches == []
    assert poller.status.rejected == 1


async def test_readings_carry_the_synced_flag_and_a_millisecond_time(
    make_poller: Callable[..., tuple[Poller, Sink]], monkeypatch: pytest.MonkeyPatch
) -> None:
    flags = iter([True, False])
    poller, sink = make_poller(Scripted(), synced=lambda: next(flags))
    monkeypatch.setattr(polling, "time", types.SimpleNamespace(time=lambda: 1700000000.1236789))

    first = await poller.poll_once()
    second = await poller.poll_once()

    assert [r.synced for r in first + second] == [True, False]
    assert all(r.time == 1700000000.124 for r in sink.readings)
    assert poller.status.last_ok == 1700000000.124
    assert first[0] == Reading("s1", "temperature", "Cel", 21.5, 1700000000.124, True)


async def test_reading_time_is_now_rounded_to_ms(
    make_poller: Callable[..., tuple[Poller, Sink]],
) -> None:
    poller, _ = make_poller(Scripted())
    before = time.time()
    (reading,) = await poller.poll_once()
    assert before - 0.001 <= reading.time <= time.time() + 0.001
    assert reading.time == round(reading.time, 3)


# --------------------------------------------------------------------------- buses


def test_sim_bus_comes_with_a_worker() -> None:
    buses = Buses()
    try:
        bus = buses.get("sim")
        assert isinstance(bus.device, SimBus)
        assert isinstance(bus.worker, Worker)
        assert bus.simulated
        assert buses.get("sim") is bus  # one bus, one worker: transfers are serialised
    finally:
        buses.close()


@pytest.mark.parametrize(
    ("error", "code", "needles"),
    [
        (
            FileNotFoundError(errno.ENOENT, "No such file or directory"),
            errno.ENOENT,
            ["/dev/i2c-1", "enable I2C", "raspi-config nonint do_i2c 0", "dtparam=i2c_arm=on"],
        ),
        (
            PermissionError(errno.EACCES, "Permission denied"),
            errno.EACCES,
            ["/dev/i2c-1", "permission denied", "i2c group"],
        ),
    ],
)
def test_missing_or_forbidden_i2c_device_says_what_to_do(
    monkeypatch: pytest.MonkeyPatch, error: OSError, code: int, needles: list[str]
) -> None:
    def refuse(bus: int) -> None:
        assert bus == 1
        raise error

    monkeypatch.setattr(smbus2, "SMBus", refuse)
    buses = Buses()
    with pytest.raises(BusError) as caught:
        buses.get(1)
    assert isinstance(caught.value, OSError)
    assert caught.value.errno == code
    assert caught.value.__cause__ is error
    for needle in needles:
        assert needle in str(caught.value)
    buses.close()


async def test_sensors_on_the_sim_bus_share_its_worker_and_read_the_simulator() -> None:
    buses = Buses()
    try:
        a = SensorSettings.model_validate({"name": "a", "driver": "bme280", "bus": "sim"})
        b = SensorSettings.model_validate(
            {"name": "b", "driver": "bme280", "bus": "sim", "address": 0x77}
        )
        driver_a, worker_a = open_sensor(a, buses)
        driver_b, worker_b = open_sensor(b, buses)
        assert worker_a is worker_b is buses.get("sim").worker
        await worker_a.run(driver_a.setup)
        values = await worker_a.run(driver_a.read)
        assert {m.quantity for m in values} == {"temperature", "pressure", "humidity"}
        assert driver_b.context.address == 0x77
    finally:
        buses.close()


async def test_a_sensor_on_no_bus_gets_a_worker_of_its_own() -> None:
    buses = Buses()
    try:
        counter = SensorSettings.model_validate({"name": "c", "driver": "counter"})
        driver, worker = open_sensor(counter, buses)
        assert worker is not buses.get("sim").worker
        assert [m.value for m in await worker.run(driver.read)] == [1.0]
        assert [m.value for m in await worker.run(driver.read)] == [2.0]
    finally:
        buses.close()
