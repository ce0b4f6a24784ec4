"""Per-sensor polling: a drift-free schedule, a timeout on every read, retries with
backoff, and a health state per sensor. Each sensor has its own task, so one
that hangs or fails never delays the others."""

from __future__ import annotations

import asyncio
import enum
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from drivers.base import Driver, rejection
from gateway.readings import Measurement, Reading
from gateway.workers import Worker

log = logging.getLogger(__name__)

#: Consecutive failed cycles after which a sensor counts as failed.
FAILED_AFTER = 3
#: First retry delay in seconds; doubled per attempt, capped by a quarter interval.
RETRY_BASE = 0.1


class Health(enum.StrEnum):
    """What the logs and status report per sensor."""

    OK = "ok"
    DEGRADED = "degraded"
    FAILED = "failed"


@dataclass
class SensorStatus:
    """A sensor's health and counters, as the status output shows them."""

    health: Health = Health.OK
    failed_cycles: int = 0
    errors: int = 0
    rejected: int = 0
    readings: int = 0
    last_error: str | None = None
    last_values: dict[str, object] = field(default_factory=dict)
    last_units: dict[str, str | None] = field(default_factory=dict)
    last_ok: float | None = None
    power_cycles: int = 0


class Poller:
    """Polls one sensor on its own schedule and hands readings to ``sink``."""

    def __init__(
        self,
        *,
        name: str,
        driver: Driver,
        worker: Worker,
        interval: float,
        timeout: float,
        retries: int,
        sink: Callable[[list[Reading]], None],
        synced: Callable[[], bool],
        power_cycle: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.name = name
        self.driver = driver
        self.worker = worker
        self.interval = interval
        self.timeout = timeout
        self.retries = retries
        self.sink = sink
        self.synced = synced
        self.power_cycle = power_cycle
        self.status = SensorStatus()
        self._needs_setup = True
        #: The wait between two polls, while one is in progress (see _nap).
        self._waiter: asyncio.Future[bool] | None = None

    def set_interval(self, interval: float) -> None:
        """Poll every ``interval`` seconds from now on, without a restart: the schedule
        starts again from the slot of the last poll, and a wait in progress is cut
        short (a sensor polled hourly does not wait out the old hour)."""
        self.interval = interval
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(True)

    async def run(self) -> None:
        """Poll forever on a monotonic schedule: slot k is at start + k·interval, so
        the period never drifts; slots missed by a slow read are skipped, not queued.
        A new interval (:meth:`set_interval`) starts a new schedule at the last slot."""
        loop = asyncio.get_running_loop()
        start, slot, interval = loop.time(), 0, self.interval
        while True:
            await self.poll_once()
            polled = start + slot * interval  # the slot just served
            while True:
                if self.interval != interval:
                    start, slot, interval = polled, 0, self.interval
                now = loop.time()
                due = max(slot + 1, math.ceil((now - start) / interval))
                if await self._nap(start + due * interval):
                    continue  # the interval changed: schedule again
                slot = due
                break

    async def _nap(self, when: float) -> bool:
        """Wait until loop time ``when``; True when :meth:`set_interval` cut it short.

        A future and a timer rather than ``asyncio.timeout`` around an event: the wait
        normally runs out, and a timeout that fires costs a task cancellation and two
        exceptions, every poll of every sensor."""
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[bool] = loop.create_future()
        self._waiter = waiter
        timer = loop.call_at(when, _resolve, waiter)
        try:
            return await waiter
        finally:
            timer.cancel()
            self._waiter = None

    async def _attempt(self) -> list[Measurement]:
        if self._needs_setup:
            async with asyncio.timeout(self.timeout):
                await self.worker.run(self.driver.setup)
            self._needs_setup = False
        # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a
        # cancellation that arrives as the read completes, and the poller never stops.
        async with asyncio.timeout(self.timeout):
            return await self.worker.run(self.driver.read)

    async def poll_once(self) -> list[Reading]:
        """One cycle: read with retries, check, stamp, hand on; returns what was kept."""
        errors: list[str] = []
        for attempt in range(self.retries + 1):
            try:
                measurements = await self._attempt()
            except Exception as err:
                # Any exception is a failed attempt, so that a driver bug cannot end this
                # sensor's task for good. Bus errors, timeouts and bad data are expected;
                # anything else is logged with its traceback, once while it repeats.
                description = _describe(err, self.timeout)
                if not isinstance(err, OSError | TimeoutError | ValueError) and (
                    description not in errors and description != self.status.last_error
                ):
                    log.error(
                        "driver raised an unexpected error",
                        exc_info=err,
                        extra={"sensor": self.name, "error": description},
                    )
                # A chip that failed may have reset or been swapped: set it up again.
                self._needs_setup = True
                errors.append(description)
                self.status.errors += 1
                if attempt < self.retries:
                    await asyncio.sleep(min(RETRY_BASE * 2**attempt, self.interval / 4))
                continue
            readings = self._accept(measurements)
            self._settle(healthy=not errors, error=errors[-1] if errors else None)
            return readings
        self._settle(healthy=False, error=errors[-1], failed_cycle=True)
        if self.power_cycle is not None and self.status.failed_cycles % FAILED_AFTER == 0:
            await self._power_cycle()
        return []

    async def _power_cycle(self) -> None:
        """Switch the sensor off and on: a hung chip (SDA held low, a latched-up
        SCD4x) often recovers only that way. Repeated every FAILED_AFTER failed cycles."""
        assert self.power_cycle is not None
        self.status.power_cycles += 1
        log.warning(
            f"power-cycling sensor {self.name} after {self.status.failed_cycles} failed cycles",
            extra={"sensor": self.name, "power_cycles": self.status.power_cycles},
        )
        await self.power_cycle()
        self._needs_setup = True

    def _accept(self, measurements: list[Measurement]) -> list[Reading]:
        now = round(time.time(), 3)
        synced = self.synced()
        readings = []
        for m in measurements:
            reason = rejection(type(self.driver), m)
            if reason is not None:
                self.status.rejected += 1
                log.warning(
                    f"reading rejected: {reason}",
                    extra={"sensor": self.name, "quantity": m.quantity, "value": repr(m.value)},
                )
                continue
            stamp = now if m.time is None else round(m.time, 3)
            readings.append(Reading(self.name, m.quantity, m.unit, m.value, stamp, synced))
            self.status.last_values[m.quantity] = m.value
            self.status.last_units[m.quantity] = m.unit
        if readings:
            self.status.readings += len(readings)
            self.status.last_ok = now
            self.sink(readings)
        return readings

    def _settle(self, *, healthy: bool, error: str | None, failed_cycle: bool = False) -> None:
        status = self.status
        status.failed_cycles = status.failed_cycles + 1 if failed_cycle else 0
        if status.failed_cycles >= FAILED_AFTER:
            health = Health.FAILED
        elif healthy:
            health = Health.OK
        else:
            health = Health.DEGRADED
        if error:
            status.last_error = error
        if health is not status.health:
            level = logging.INFO if health is Health.OK else logging.WARNING
            log.log(
                level,
                f"sensor {self.name} is {health.value}",
                extra={
                    "sensor": self.name,
                    "health": health.value,
                    "was": status.health.value,
                    "error": error,
                    "failed_cycles": status.failed_cycles,
                },
            )
            status.health = health


def _resolve(waiter: asyncio.Future[bool]) -> None:
    if not waiter.done():
        waiter.set_result(False)


def _describe(err: BaseException, timeout: float) -> str:
    # Errno first: the bus's own ETIMEDOUT is an OSError that Python makes a
    # TimeoutError, but it is not the poller's timeout (which has no errno).
    if isinstance(err, OSError) and err.errno is not None:
        return f"{err.strerror or err} (errno {err.errno})"
    if isinstance(err, TimeoutError):
        return f"no answer within {timeout:g} s"
    if isinstance(err, OSError | ValueError):
        return str(err) or type(err).__name__
    return f"{type(err).__name__}: {err}"
