"""A token bucket, so a bulk send never trips a provider's published rate limit.

Providers state ``requests_per_second``; DataFlows allows 600 requests a minute, and a
burst of 150 messages on 8 workers would otherwise reach it and turn into "Too Many
Attempts." answers and backoff. Waiting a fraction of a second before a request is cheaper
than a retry minutes later. The clock and the sleep are injected, so tests need no time.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

_EPSILON = 1e-9
HEADROOM = 0.98


class TokenBucket:
    """``rate`` requests per second on average, at most ``capacity`` back to back.

    No window of ``t`` seconds holds more than ``capacity + rate * t`` requests, so a
    caller keeps some headroom below a provider's limit (see ``for_limit``). Waiters are
    served in arrival order.
    """

    def __init__(
        self,
        rate: float,
        *,
        capacity: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.rate = rate
        self.capacity = capacity if capacity is not None else max(1.0, rate)
        self._clock = clock
        self._sleep = sleep
        self._tokens = self.capacity
        self._updated = clock()
        self._lock = asyncio.Lock()

    @classmethod
    def for_limit(
        cls,
        requests_per_second: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> TokenBucket:
        """A bucket that stays under a per-second *and* per-minute limit (2% headroom).

        Providers enforce limits per minute (Laravel's throttle: 600 a minute for 10/s);
        at 98% of the rate with a burst of one second's worth, a minute holds at most
        ``0.98 * (60 + 1) * rate`` < ``60 * rate`` requests.
        """
        rate = requests_per_second * HEADROOM
        return cls(rate, capacity=max(1.0, rate), clock=clock, sleep=sleep)

    def refund(self) -> None:
        """Give back a token that was taken for a request not made after all."""
        self._tokens = min(self.capacity, self._tokens + 1.0)

    async def acquire(self) -> float:
        """Take one token, waiting for it if need be; returns the seconds waited."""
        waited = 0.0
        async with self._lock:  # one waiter at a time: FIFO, and no thundering herd
            while True:
                now = self._clock()
                elapsed = max(0.0, now - self._updated)
                self._tokens = min(self.capacity, self._tokens + elapsed * self.rate)
                self._updated = now
                if self._tokens >= 1.0 - _EPSILON:  # float dust must not cause a 0 s sleep loop
                    self._tokens = max(0.0, self._tokens - 1.0)
                    return waited
                pause = (1.0 - self._tokens) / self.rate
                waited += pause
                await self._sleep(pause)
