"""Delivery workers against a real SQLite queue and a scripted provider (no sockets)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any, ClassVar

import pytest
from conftest import poll
from structlog.testing import capture_logs

from mail2sms.config import DeliveryConfig
from mail2sms.delivery import Delivery, backoff, chunks
from mail2sms.errors import (
    PermanentProviderError,
    ProviderAccountError,
    QueueUnavailableError,
    TransientProviderError,
)
from mail2sms.models import NewMessage, Outcome, RecipientResult, RecipientState, SmsBatch
from mail2sms.providers.base import Provider
from mail2sms.queue import AsyncQueue


class ScriptedProvider(Provider):
    """Answers each send with the next scripted step: an exception, or an outcome per number."""

    name = "scripted"
    max_recipients = 2
    supports_unicode = True
    requests_per_second = None
    docs_url = ""

    steps: ClassVar[list[Any]] = []

    def __init__(self, steps: list[Any]) -> None:
        self.steps = list(steps)
        self.batches: list[SmsBatch] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.gate: asyncio.Event | None = None

    @classmethod
    def from_config(cls, config, client):  # pragma: no cover - not built from config
        raise NotImplementedError

    async def send(self, batch: SmsBatch) -> list[RecipientResult]:
        self.batches.append(batch)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.gate is not None:
                await self.gate.wait()
            step = self.steps.pop(0) if self.steps else Outcome.SENT
            if isinstance(step, Exception):
                raise step
            if callable(step):
                return step(batch)
            return [
                RecipientResult(n, step, detail=f"{step}", provider_ref=f"ref-{n}")
                for n in batch.recipients
            ]
        finally:
            self.in_flight -= 1


def message(*numbers: str, received_at: float | None = None) -> NewMessage:
    return NewMessage(
        envelope_from="alice@example.com",
        from_header="alice@example.com",
        subject=",".join(numbers),
        message_id="m@example.com",
        recipients=numbers,
        text="hello",
        sender_id="Brand",
        received_at=time.time() if received_at is None else received_at,
        size=10,
        headers="",
    )


@pytest.fixture
async def queue(tmp_path):
    q = await AsyncQueue.open(tmp_path / "q.sqlite3")
    yield q
    await q.close()


@pytest.fixture
async def run_delivery(queue):
    started: list[tuple[Delivery, asyncio.Task[None]]] = []

    def start(provider: Provider, **config: Any) -> Delivery:
        settings = {"workers": 4, "retry_initial": 0.01, "retry_max": 0.05, "give_up_after": 3600}
        delivery = Delivery(
            queue=queue,
            provider=provider,
            config=DeliveryConfig(**(settings | config)),
            request_timeout=5,
        )
        started.append((delivery, asyncio.create_task(delivery.run())))
        return delivery

    yield start
    for delivery, task in started:
        await delivery.drain(1)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def states(entry) -> dict[str, RecipientState]:
    return {r.number: r.state for r in entry.recipients}


async def wait_state(queue, queue_id: str, want: Callable[[dict[str, RecipientState]], bool]):
    async def check():
        entry = await queue.get(queue_id)
        return entry if want(states(entry)) else None

    return await poll(check)


pytestmark = pytest.mark.anyio


@pytest.mark.parametrize(
    ("attempts", "low", "high"),
    [(1, 15, 30), (2, 30, 60), (3, 60, 120), (10, 450, 900), (50, 450, 900)],
)
def test_backoff_doubles_with_jitter_up_to_the_maximum(attempts, low, high):
    assert backoff(attempts, initial=30, maximum=900, rng=lambda: 0.0) == low
    assert backoff(attempts, initial=30, maximum=900, rng=lambda: 1.0) == high


def test_backoff_honours_retry_after_as_a_floor():
    assert backoff(1, initial=30, maximum=900, retry_after=120, rng=lambda: 0.5) == 120
    assert backoff(5, initial=30, maximum=900, retry_after=1, rng=lambda: 0.0) == 240


def test_chunks():
    assert chunks(["a", "b", "c", "d", "e"], 2) == [("a", "b"), ("c", "d"), ("e",)]
    assert chunks([], 100) == []


async def test_sent_is_recorded_with_provider_refs(queue, run_delivery):
    provider = ScriptedProvider([])
    queue_id = await queue.enqueue(message("+61412345678", "+61498765432", "+61400000001"))
    run_delivery(provider).wake()
    entry = await wait_state(queue, queue_id, lambda s: set(s.values()) == {RecipientState.SENT})
    assert {r.provider_ref for r in entry.recipients} == {
        "ref-+61412345678",
        "ref-+61498765432",
        "ref-+61400000001",
    }
    # max_recipients = 2 → two requests
    assert [len(b.recipients) for b in provider.batches] == [2, 1]


async def test_transient_error_retries_then_sends_once(queue, run_delivery):
    provider = ScriptedProvider([TransientProviderError("503"), TransientProviderError("timeout")])
    queue_id = await queue.enqueue(message("+61412345678"))
    run_delivery(provider)
    entry = await wait_state(queue, queue_id, lambda s: s["+61412345678"] is RecipientState.SENT)
    assert entry.recipients[0].attempts == 3
    assert len(provider.batches) == 3


async def test_permanent_error_fails_without_retry(queue, run_delivery):
    provider = ScriptedProvider([PermanentProviderError("Originator X is not authorized")])
    queue_id = await queue.enqueue(message("+61412345678"))
    run_delivery(provider)
    entry = await wait_state(queue, queue_id, lambda s: s["+61412345678"] is RecipientState.FAILED)
    assert "not authorized" in (entry.recipients[0].last_error or "")
    assert len(provider.batches) == 1


async def test_account_error_keeps_the_message_queued(queue, run_delivery):
    provider = ScriptedProvider([ProviderAccountError("Unauthenticated.")] * 3)
    queue_id = await queue.enqueue(message("+61412345678"))
    run_delivery(provider)
    await poll(lambda: len(provider.batches) >= 3)
    entry = await queue.get(queue_id)
    assert entry.recipients[0].state in {
        RecipientState.PENDING,
        RecipientState.INFLIGHT,
        RecipientState.SENT,
    }
    assert entry.recipients[0].state is not RecipientState.FAILED


async def test_account_error_is_never_given_up_on(queue, run_delivery):
    provider = ScriptedProvider([ProviderAccountError("Unauthenticated.")] * 3 + [Outcome.SENT])
    queue_id = await queue.enqueue(message("+61412345678", received_at=time.time() - 7200))
    run_delivery(provider, give_up_after=3600)
    # long past give_up_after, yet kept until the operator fixes the account, then sent
    entry = await wait_state(queue, queue_id, lambda s: s["+61412345678"] is RecipientState.SENT)
    assert entry.recipients[0].attempts == 4
    assert entry.bounce_state is None


async def test_failure_statuses_for_the_bounce(queue, run_delivery):
    def by_number(batch: SmsBatch) -> list[RecipientResult]:
        number = batch.recipients[0]
        if number == "+61498765432":
            raise PermanentProviderError("Originator X is not authorized", status="5.7.1")
        if number == "+61400000000":
            raise TransientProviderError("HTTP 503")
        return [RecipientResult(number, Outcome.PERMANENT, detail="invalid")]

    provider = ScriptedProvider([by_number] * 3)
    bad_number = await queue.enqueue(message("+61412345678"))
    refused = await queue.enqueue(message("+61498765432"))
    expired = await queue.enqueue(message("+61400000000", received_at=time.time() - 7200))
    run_delivery(provider, give_up_after=3600)
    ids = (bad_number, refused, expired)
    for queue_id in ids:
        await wait_state(queue, queue_id, lambda s: RecipientState.FAILED in s.values())
    statuses = [(await queue.get(i)).recipients[0].dsn_status for i in ids]
    assert statuses == ["5.1.1", "5.7.1", "4.4.7"]


async def test_past_give_up_after_a_transient_failure_becomes_final(queue, run_delivery):
    provider = ScriptedProvider([TransientProviderError("connection refused")])
    queue_id = await queue.enqueue(message("+61412345678", received_at=time.time() - 7200))
    run_delivery(provider, give_up_after=3600)
    entry = await wait_state(queue, queue_id, lambda s: s["+61412345678"] is RecipientState.FAILED)
    error = entry.recipients[0].last_error or ""
    assert "gave up after 1 attempts" in error
    assert "connection refused" in error


async def test_partial_results_per_recipient(queue, run_delivery):
    def mixed(batch: SmsBatch) -> list[RecipientResult]:
        outcomes = [Outcome.SENT, Outcome.PERMANENT]
        return [
            RecipientResult(n, o, detail="blacklisted" if o is Outcome.PERMANENT else "")
            for n, o in zip(batch.recipients, outcomes, strict=False)
        ]

    provider = ScriptedProvider([mixed])
    queue_id = await queue.enqueue(message("+61412345678", "+61498765432"))
    run_delivery(provider)
    entry = await wait_state(
        queue,
        queue_id,
        lambda s: (
            RecipientState.PENDING not in s.values() and RecipientState.INFLIGHT not in s.values()
        ),
    )
    assert states(entry) == {
        "+61412345678": RecipientState.SENT,
        "+61498765432": RecipientState.FAILED,
    }
    assert len(provider.batches) == 1  # the sent one is never sent again


async def test_missing_result_for_a_number_is_retried_not_lost(queue, run_delivery):
    provider = ScriptedProvider([lambda _batch: [], Outcome.SENT])
    queue_id = await queue.enqueue(message("+61412345678"))
    run_delivery(provider)
    await wait_state(queue, queue_id, lambda s: s["+61412345678"] is RecipientState.SENT)
    assert len(provider.batches) == 2


async def test_a_crashing_provider_does_not_lose_the_message(queue, run_delivery):
    provider = ScriptedProvider([ZeroDivisionError("bug"), Outcome.SENT])
    queue_id = await queue.enqueue(message("+61412345678"))
    run_delivery(provider)
    await wait_state(queue, queue_id, lambda s: s["+61412345678"] is RecipientState.SENT)


async def test_no_more_than_workers_requests_at_once(queue, run_delivery):
    provider = ScriptedProvider([])
    provider.gate = asyncio.Event()
    ids = [await queue.enqueue(message(f"+614123456{n:02d}")) for n in range(10)]
    run_delivery(provider, workers=3)
    await poll(lambda: provider.in_flight == 3)
    provider.gate.set()
    for queue_id in ids:
        await wait_state(queue, queue_id, lambda s: set(s.values()) == {RecipientState.SENT})
    assert provider.max_in_flight == 3


async def test_stop_lets_a_send_in_flight_finish(queue, run_delivery):
    provider = ScriptedProvider([])
    provider.gate = asyncio.Event()
    queue_id = await queue.enqueue(message("+61412345678"))
    delivery = run_delivery(provider)
    await poll(lambda: provider.in_flight == 1)
    stopping = asyncio.create_task(delivery.drain(5))
    provider.gate.set()
    await stopping
    entry = await queue.get(queue_id)
    assert states(entry) == {"+61412345678": RecipientState.SENT}


async def test_a_queue_error_in_the_dispatcher_is_survived(queue, run_delivery, monkeypatch):
    monkeypatch.setattr("mail2sms.loop.ERROR_PAUSE", 0.01)
    real_claim = queue.claim
    failures = [QueueUnavailableError("queue q.sqlite3 is unavailable: database is locked")]

    async def flaky_claim(**kwargs):
        if failures:
            raise failures.pop()
        return await real_claim(**kwargs)

    monkeypatch.setattr(queue, "claim", flaky_claim)
    provider = ScriptedProvider([Outcome.SENT])
    queue_id = await queue.enqueue(message("+61412345678"))
    run_delivery(provider)
    await wait_state(queue, queue_id, lambda s: s["+61412345678"] is RecipientState.SENT)
    assert failures == []


async def test_drain_waits_for_a_claim_in_progress_and_sends_it(queue, run_delivery):
    provider = ScriptedProvider([Outcome.SENT])
    gate, claiming = asyncio.Event(), asyncio.Event()
    real_claim = queue.claim

    async def slow_claim(**kwargs):
        claiming.set()
        await gate.wait()
        return await real_claim(**kwargs)

    queue.claim = slow_claim
    queue_id = await queue.enqueue(message("+61412345678"))
    delivery = run_delivery(provider)
    await claiming.wait()
    draining = asyncio.create_task(delivery.drain(5))
    gate.set()
    await draining
    entry = await queue.get(queue_id)
    # the claimed message was sent and recorded before drain returned: nothing left leased
    assert entry.recipients[0].state is RecipientState.SENT


async def test_each_provider_request_takes_a_token_from_the_rate_limiter(queue, run_delivery):
    class RateLimitedProvider(ScriptedProvider):
        requests_per_second = 10.0

    class CountingBucket:
        taken = 0

        async def acquire(self) -> float:
            CountingBucket.taken += 1
            return 0.0

        def refund(self) -> None:  # a pass that found nothing due gives its token back
            CountingBucket.taken -= 1

    provider = RateLimitedProvider([Outcome.SENT] * 3)
    ids = [await queue.enqueue(message(f"+6141234567{i}", "+61498765432")) for i in range(3)]
    delivery = run_delivery(provider)
    assert delivery.limiter is not None
    assert delivery.limiter.rate == pytest.approx(9.8)  # 2% under the published limit
    delivery.limiter = CountingBucket()
    for queue_id in ids:
        await wait_state(queue, queue_id, lambda s: set(s.values()) == {RecipientState.SENT})
    assert CountingBucket.taken == len(provider.batches) == 3


async def test_providers_without_a_published_limit_are_not_throttled(queue, run_delivery):
    delivery = run_delivery(ScriptedProvider([]))
    assert delivery.limiter is None


async def test_a_contact_list_is_its_own_request_and_fails_where_unsupported(queue, run_delivery):
    class ListProvider(ScriptedProvider):
        supports_contact_lists = True

    listing = ListProvider([Outcome.SENT, Outcome.SENT])
    queue_id = await queue.enqueue(message("+61412345678", "list:6065ac2f1a2b3"))
    run_delivery(listing)
    await wait_state(queue, queue_id, lambda s: set(s.values()) == {RecipientState.SENT})
    assert [b.recipients for b in listing.batches] == [("+61412345678",), ("list:6065ac2f1a2b3",)]


async def test_a_provider_without_contact_lists_fails_the_list_for_good(queue, run_delivery):
    provider = ScriptedProvider([Outcome.SENT])
    queue_id = await queue.enqueue(message("+61412345678", "list:6065ac2f1a2b3"))
    run_delivery(provider)
    entry = await wait_state(
        queue, queue_id, lambda s: s["list:6065ac2f1a2b3"] is RecipientState.FAILED
    )
    failed = next(r for r in entry.recipients if r.number.startswith("list:"))
    assert failed.dsn_status == "5.3.3"
    assert "cannot send to contact lists" in (failed.last_error or "")
    assert [b.recipients for b in provider.batches] == [("+61412345678",)]


async def test_a_queue_error_failing_an_unsupported_list_does_not_hold_the_numbers_back(
    queue, run_delivery, monkeypatch
):
    provider = ScriptedProvider([Outcome.SENT])
    queue_id = await queue.enqueue(message("+61412345678", "list:6065ac2f1a2b3"))

    async def locked(*args: object, **kwargs: object) -> None:
        raise QueueUnavailableError("database is locked")

    monkeypatch.setattr(queue, "mark_failed", locked)
    run_delivery(provider)
    await wait_state(queue, queue_id, lambda s: s["+61412345678"] is RecipientState.SENT)
    assert [b.recipients for b in provider.batches] == [("+61412345678",)]


async def test_numbers_held_by_the_operators_account_are_never_given_up(queue, run_delivery):
    def held(batch: SmsBatch) -> list[RecipientResult]:
        first, second = batch.recipients
        return [
            RecipientResult(first, Outcome.SENT, provider_ref="r1"),
            RecipientResult(second, Outcome.HELD, detail="not sent: Insufficient funds"),
        ]

    provider = ScriptedProvider([held, Outcome.SENT])
    queue_id = await queue.enqueue(
        message("+61412345678", "+61498765432", received_at=time.time() - 7200)
    )
    run_delivery(provider, give_up_after=3600)  # long past: a transient failure would fail
    entry = await wait_state(queue, queue_id, lambda s: set(s.values()) == {RecipientState.SENT})
    assert [b.recipients for b in provider.batches] == [
        ("+61412345678", "+61498765432"),
        ("+61498765432",),
    ]
    assert entry.bounce_state is None


async def test_a_fresh_lease_is_not_renewed_but_an_old_one_is(queue, run_delivery):
    """The first request after a claim needs no renewal; one that comes much later does."""
    renewals: list[float] = []
    original = queue.renew_leases

    async def counted(leases, *, until):
        renewals.append(until)
        await original(leases, until=until)

    queue.renew_leases = counted
    base, offset = time.time() + 5, [0.0]  # after the message arrives: it is due

    def later(batch):  # the first request takes 200 s of the 300 s lease
        offset[0] = 200.0
        return [RecipientResult(n, Outcome.SENT, provider_ref="r") for n in batch.recipients]

    provider = ScriptedProvider([later, Outcome.SENT])
    delivery = run_delivery(provider)
    delivery.clock = lambda: base + offset[0]
    queue_id = await queue.enqueue(message("+61400000001", "+61400000002", "+61400000003"))
    delivery.wake()
    await wait_state(queue, queue_id, lambda s: all(v == RecipientState.SENT for v in s.values()))
    assert len(provider.batches) == 2  # two numbers a request
    assert renewals == [base + 200.0 + delivery.lease]  # only before the second request


async def test_an_answer_being_recorded_when_drain_cancels_is_recorded_and_logged(queue):
    """The provider has sent it: a worker cancelled at shutdown still records and logs it."""
    entered, gate = asyncio.Event(), asyncio.Event()
    original = queue.mark_sent_many

    async def slow(sent, *, now):
        entered.set()
        await gate.wait()
        await original(sent, now=now)

    queue.mark_sent_many = slow
    delivery = Delivery(
        queue=queue,
        provider=ScriptedProvider([]),
        config=DeliveryConfig(workers=4),
        request_timeout=5,
    )
    running = asyncio.create_task(delivery.run())
    queue_id = await queue.enqueue(message("+61400000001"))
    with capture_logs() as events:
        delivery.wake()
        await asyncio.wait_for(entered.wait(), 10)
        draining = asyncio.create_task(delivery.drain(0.05))
        await poll(lambda: not delivery._active)  # the worker itself is cancelled
        assert not draining.done()  # drain waits for what was being recorded
        gate.set()
        await asyncio.wait_for(draining, 10)
    await asyncio.gather(running, return_exceptions=True)
    assert states(await queue.get(queue_id)) == {"+61400000001": RecipientState.SENT}
    names = [e["event"] for e in events]
    assert "delivery_cancelled_at_shutdown" in names
    assert "sms_sent" in names
