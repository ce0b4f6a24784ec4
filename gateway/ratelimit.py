"""A token bucket for messages/s and bytes/s: AWS IoT Core discards what exceeds
its per-connection limits instead of queueing it, so the gateway must pace itself."""

from __future__ import annotations

import asyncio
import time


class TokenBucket:
    """Tokens refill at ``rate`` per second up to ``burst``; a rate of 0 means no limit.

    A request larger than the bucket is allowed to drive it negative, so a single
    large message still goes out, and the debt is paid by waiting afterwards.
    """

    def __init__(self, rate: float, burst: float) -> None:
        self.rate = rate
        self.burst = max(burst, 1.0)
        self._tokens = self.burst
        self._stamp = time.monotonic()
        self._lock = asyncio.Lock()

    def _refill(self) -> None:
        now = time.monotonic()
        self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now

    async def acquire(self, amount: float = 1.0) -> None:
        """Wait until ``amount`` tokens may be spent, then spend them."""
        if self.rate <= 0:
            return
        async with self._lock:  # first come, first served
            self._refill()
            if self._tokens < min(amount, self.burst):
                await asyncio.sleep((min(amount, self.burst) - self._tokens) / self.rate)
                self._refill()
            self._tokens -= amount


class RateLimiter:
    """Both of AWS IoT's per-connection limits at once."""

    def __init__(self, messages_per_second: float, bytes_per_second: float) -> None:
        # Bursts of a tenth of a second keep the pace even within each second.
        self.messages = TokenBucket(messages_per_second, messages_per_second / 10)
        self.bytes = TokenBucket(bytes_per_second, bytes_per_second / 10)

    async def acquire(self, size: int) -> None:
        """Wait until one message of ``size`` bytes may be sent."""
        await self.messages.acquire(1)
        await self.bytes.acquire(size)
