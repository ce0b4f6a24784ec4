"""Token buckets and the per-connection rate limiter.

The real-time tests run for about a second each and only ask that the limit is
not exceeded by more than 10 % and that at least 70 % of it is used: the machine
may be busy. The exact arithmetic is checked on a fake clock with hypothesis.
"""

from __future__ import annotations

import asyncio
import time
import types

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway import ratelimit
from gateway.ratelimit import RateLimiter, TokenBucket

UPPER, LOWER = 1.10, 0.70


async def pump(limiter: RateLimiter, size: int, seconds: float) -> tuple[int, float]:
    """Send ``size``-byte messages through ``limiter`` for ``seconds``: (count, elapsed)."""
    count = 0
    start = time.monotonic()
    while time.monotonic() - start < seconds:
        await limiter.acquire(size)
        count += 1
    return count, time.monotonic() - start


def assert_rate(amount: float, burst: float, elapsed: float, rate: float) -> None:
    """What was granted beyond the initial burst came at ``rate``, give or take."""
    measured = (amount - burst) / elapsed
    assert measured <= rate * UPPER, f"{measured:.1f}/s exceeds the limit of {rate}/s"
    assert measured >= rate * LOWER, f"{measured:.1f}/s is far below the limit of {rate}/s"


async def test_rate_zero_never_waits() -> None:
    bucket = TokenBucket(0, 0)
    limiter = RateLimiter(0, 0)
    start = time.monotonic()
    for _ in range(2000):
        await bucket.acquire(10**9)
        await limiter.acquire(128_000)
    assert time.monotonic() - start < 0.5


async def test_sustained_message_rate() -> None:
    rate = 200.0
    limiter = RateLimiter(messages_per_second=rate, bytes_per_second=0)
    count, elapsed = await pump(limiter, 100, 1.0)
    assert_rate(count, limiter.messages.burst, elapsed, rate)


async def test_sustained_byte_rate() -> None:
    rate, size = 100_000.0, 2_000
    limiter = RateLimiter(messages_per_second=0, bytes_per_second=rate)
    count, elapsed = await pump(limiter, size, 1.0)
    assert_rate(count * size, limiter.bytes.burst, elapsed, rate)


async def test_the_tighter_of_both_limits_holds() -> None:
    # 1000 messages/s would allow far more than 40 kB/s lets through in 800-byte messages.
    limiter = RateLimiter(messages_per_second=1000, bytes_per_second=40_000)
    count, elapsed = await pump(limiter, 800, 1.0)
    assert_rate(count * 800, limiter.bytes.burst, elapsed, 40_000)


async def test_request_larger_than_the_burst_goes_through_and_its_debt_is_paid() -> None:
    bucket = TokenBucket(rate=1000, burst=100)
    start = time.monotonic()
    await bucket.acquire(500)  # five bursts' worth: allowed at once on a full bucket
    granted = time.monotonic()
    assert granted - start < 0.05
    await bucket.acquire(1)  # waits for the 400-token debt plus the token itself
    waited = time.monotonic() - granted
    assert 0.401 / UPPER <= waited <= 0.401 / LOWER


async def test_concurrent_acquirers_are_served_in_order_within_the_rate() -> None:
    rate, n = 100.0, 40
    bucket = TokenBucket(rate=rate, burst=5)
    served: list[tuple[int, float]] = []

    async def client(i: int) -> None:
        await bucket.acquire(1)
        served.append((i, time.monotonic()))

    start = time.monotonic()
    await asyncio.gather(*(client(i) for i in range(n)))
    elapsed = time.monotonic() - start

    assert [i for i, _ in served] == list(range(n))
    assert_rate(n, bucket.burst, elapsed, rate)
    # No window of the run saw more than its share: the k-th grant beyond the burst
    # is never earlier than k/rate (less a little timer slack).
    for k, (_, at) in enumerate(served[5:], start=1):
        assert at - start >= k / rate - 0.005


def test_burst_is_a_tenth_of_a_second_and_at_least_one() -> None:
    limiter = RateLimiter(messages_per_second=100, bytes_per_second=512 * 1024)
    assert limiter.messages.burst == 10
    assert limiter.bytes.burst == pytest.approx(52428.8)
    assert RateLimiter(messages_per_second=2, bytes_per_second=5).messages.burst == 1


class FakeClock:
    """A monotonic clock that only moves when the code under test sleeps."""

    def __init__(self) -> None:
        self.now = 0.0

    def monotonic(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += max(seconds, 0.0)


@settings(max_examples=150, deadline=None)
@given(
    rate=st.floats(min_value=0.5, max_value=1e6),
    burst=st.floats(min_value=0.0, max_value=1e5),
    amounts=st.lists(st.floats(min_value=0.0, max_value=2e5), min_size=1, max_size=30),
)
def test_grants_follow_the_bucket_arithmetic_exactly(
    rate: float, burst: float, amounts: list[float]
) -> None:
    clock = FakeClock()
    fake_time = types.SimpleNamespace(monotonic=clock.monotonic)
    fake_asyncio = types.SimpleNamespace(sleep=clock.sleep, Lock=asyncio.Lock)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ratelimit, "time", fake_time)
        mp.setattr(ratelimit, "asyncio", fake_asyncio)
        bucket = TokenBucket(rate, burst)

        async def run() -> list[float]:
            grants = []
            for amount in amounts:
                await bucket.acquire(amount)
                grants.append(clock.now)
            return grants

        grants = asyncio.run(run())

    # Back-to-back requests on a bucket that starts full: request k is granted as soon
    # as the tokens earned cover everything before it plus min(its size, the burst).
    size = bucket.burst
    expected, consumed, at = [], 0.0, 0.0
    for amount in amounts:
        at = max(at, (consumed + min(amount, size) - size) / rate)
        expected.append(at)
        consumed += amount
    assert grants == pytest.approx(expected, rel=1e-9, abs=1e-9)
