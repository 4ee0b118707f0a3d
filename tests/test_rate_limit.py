"""The token bucket against a virtual clock: no real time passes."""

from __future__ import annotations

import asyncio

import pytest

from mail2sms.rate_limit import TokenBucket

pytestmark = pytest.mark.anyio


class VirtualTime:
    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds
        await asyncio.sleep(0)  # let other waiters queue up, as a real sleep would


async def test_a_burst_up_to_capacity_passes_then_requests_are_paced():
    time = VirtualTime()
    bucket = TokenBucket(10, clock=time.clock, sleep=time.sleep)
    starts = []
    for _ in range(30):
        await bucket.acquire()
        starts.append(time.now)
    assert starts[:10] == [1000.0] * 10
    assert starts[10:] == pytest.approx([1000.0 + 0.1 * i for i in range(1, 21)])


async def test_no_minute_holds_more_than_sixty_times_the_limit_even_with_many_waiters():
    time = VirtualTime()
    bucket = TokenBucket.for_limit(10, clock=time.clock, sleep=time.sleep)  # DataFlows: 600/min
    starts: list[float] = []

    async def worker() -> None:
        for _ in range(200):
            await bucket.acquire()
            starts.append(time.now)

    await asyncio.gather(*(worker() for _ in range(8)))
    assert len(starts) == 1600
    for i, start in enumerate(starts):
        in_window = [s for s in starts[i:] if s < start + 60]
        assert len(in_window) <= 600
    assert starts[-1] - starts[0] < 1600 / 9.5  # and it is not much slower than allowed


async def test_idle_time_refills_only_up_to_capacity():
    time = VirtualTime()
    bucket = TokenBucket(2, capacity=2, clock=time.clock, sleep=time.sleep)
    for _ in range(2):
        assert await bucket.acquire() == 0
    time.now += 3600  # an hour idle
    assert [await bucket.acquire() for _ in range(3)] == [0, 0, pytest.approx(0.5)]


async def test_a_refunded_token_can_be_taken_again_but_never_beyond_capacity():
    time = VirtualTime()
    bucket = TokenBucket(2, capacity=2, clock=time.clock, sleep=time.sleep)
    assert [await bucket.acquire() for _ in range(2)] == [0, 0]
    bucket.refund()  # taken for a request that was not made
    assert await bucket.acquire() == 0
    assert await bucket.acquire() == pytest.approx(0.5)
    bucket.refund()
    bucket.refund()  # more than was taken since: still at most a full bucket
    assert [await bucket.acquire() for _ in range(3)] == [0, 0, pytest.approx(0.5)]


def test_rate_must_be_positive():
    with pytest.raises(ValueError, match="positive"):
        TokenBucket(0)
