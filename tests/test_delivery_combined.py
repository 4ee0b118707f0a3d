"""Messages combined into one DataFlows request: a refusal or a queue error hits no bystander.

DataFlows answers over httpx.MockTransport (table-driven provider cases); the queue is a real
SQLite file.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from conftest import poll
from structlog.testing import capture_logs

from mail2sms.config import DeliveryConfig
from mail2sms.delivery import Delivery
from mail2sms.errors import QueueUnavailableError
from mail2sms.models import NewMessage, RecipientState
from mail2sms.providers.dataflows import DataFlowsProvider
from mail2sms.providers.outbox import OutboxProvider
from mail2sms.queue import AsyncQueue

pytestmark = pytest.mark.anyio

BAD = "+61422222222"


def message(sender: str, *numbers: str) -> NewMessage:
    return NewMessage(
        envelope_from=sender,
        from_header=sender,
        subject="",
        message_id=None,
        recipients=numbers,
        text="Pump 3 stopped",
        sender_id="Plant",
        received_at=time.time() - 1,
        size=100,
        headers="",
    )


def dataflows_answer(requests: list[list[str]]) -> httpx.MockTransport:
    """Refuse, without naming the number, any request that holds BAD; else send each."""

    def handle(request: httpx.Request) -> httpx.Response:
        numbers = json.loads(request.content)["recipient"].split(",")
        requests.append(numbers)
        if BAD.lstrip("+") in numbers:
            return httpx.Response(
                200, json={"status": "error", "message": "The recipient is in blacklist"}
            )
        data = [{"to": n, "status": "Delivered", "uid": f"u{n}"} for n in numbers]
        return httpx.Response(200, json={"status": "success", "message": "ok", "data": data})

    return httpx.MockTransport(handle)


@contextlib.asynccontextmanager
async def dataflows(requests: list[list[str]]) -> AsyncIterator[DataFlowsProvider]:
    """DataFlows answering as ``dataflows_answer`` does, each request's numbers recorded."""
    async with httpx.AsyncClient(transport=dataflows_answer(requests)) as client:
        yield DataFlowsProvider(client=client, token="T", base_url="http://127.0.0.1:9", timeout=5)


async def states(queue: AsyncQueue, queue_id: str) -> dict[str, RecipientState]:
    return {r.number: r.state for r in (await queue.get(queue_id)).recipients}


async def deliver_once(queue: AsyncQueue, provider: object) -> None:
    delivery = Delivery(
        queue=queue,
        provider=provider,  # type: ignore[arg-type]
        config=DeliveryConfig(workers=1),
        request_timeout=5,
    )
    (job,) = await queue.claim(now=time.time(), lease=300, limit=1)
    await delivery._deliver(job, await delivery._alike(job))


async def test_a_refused_combined_request_is_resent_message_by_message(tmp_path: Path):
    queue = await AsyncQueue.open(tmp_path / "queue.sqlite3")
    requests: list[list[str]] = []
    try:
        ids = [
            await queue.enqueue(message("a@example.com", "+61411111111")),
            await queue.enqueue(message("b@example.com", BAD)),
            await queue.enqueue(message("c@example.com", "+61433333333", "+61444444444")),
        ]
        async with dataflows(requests) as provider:
            await deliver_once(queue, provider)
        assert len(requests[0]) == 4  # combined first
        assert len(requests) == 4  # then each message alone
        assert await states(queue, ids[0]) == {"+61411111111": RecipientState.SENT}
        assert await states(queue, ids[1]) == {BAD: RecipientState.FAILED}
        assert set((await states(queue, ids[2])).values()) == {RecipientState.SENT}
    finally:
        await queue.close()


async def test_a_queue_error_recording_one_message_still_records_the_others(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    queue = await AsyncQueue.open(tmp_path / "queue.sqlite3")
    requests: list[list[str]] = []
    try:
        ids = [
            await queue.enqueue(message(f"{name}@example.com", f"+6141111111{i}"))
            for i, name in enumerate(("a", "b", "c"))
        ]
        real_mark_sent = queue.mark_sent

        async def locked_for_the_first(queue_id: str, *args: object, **kwargs: object) -> None:
            if queue_id == ids[0]:
                raise QueueUnavailableError("database is locked")
            await real_mark_sent(queue_id, *args, **kwargs)  # type: ignore[arg-type]

        async def locked(*args: object, **kwargs: object) -> None:
            raise QueueUnavailableError("database is locked")

        # the request's one transaction fails; then each message is recorded alone
        monkeypatch.setattr(queue, "mark_sent_many", locked)
        monkeypatch.setattr(queue, "mark_sent", locked_for_the_first)
        async with dataflows(requests) as provider:
            await deliver_once(queue, provider)
        assert len(requests) == 1
        assert set((await states(queue, ids[0])).values()) == {RecipientState.INFLIGHT}
        for queue_id in ids[1:]:
            assert set((await states(queue, queue_id)).values()) == {RecipientState.SENT}
    finally:
        await queue.close()


async def test_providers_that_name_the_queue_id_never_combine(tmp_path: Path):
    """The outbox writes, and MessageFlow sends, the queue id: one message per request."""
    queue = await AsyncQueue.open(tmp_path / "queue.sqlite3")
    try:
        for i in range(3):
            await queue.enqueue(message("a@example.com", f"+6141111111{i}"))
        outbox = tmp_path / "outbox.jsonl"
        await deliver_once(queue, OutboxProvider(outbox))
        lines = [json.loads(line) for line in outbox.read_text().splitlines()]
        assert len(lines) == 1
    finally:
        await queue.close()


async def test_close_survives_a_cancelled_commit_task(tmp_path: Path):
    queue = await AsyncQueue.open(tmp_path / "queue.sqlite3")
    pending = asyncio.ensure_future(queue.enqueue(message("a@example.com", BAD)))
    await asyncio.sleep(0)  # let it reach the queue and start the commit task
    assert queue._committer is not None
    queue._committer.cancel()
    await queue.close()
    assert queue._closed
    pending.cancel()


async def test_a_combined_request_is_recorded_in_a_few_transactions(tmp_path: Path):
    """Not two per message: each write transaction is an fsync the mail reader waits behind."""
    queue = await AsyncQueue.open(tmp_path / "queue.sqlite3")
    requests: list[list[str]] = []
    try:
        ids = [
            await queue.enqueue(message(f"m{i}@example.com", f"+6141111111{i}")) for i in range(8)
        ]
        before = queue._queue.commits
        async with dataflows(requests) as provider:
            await deliver_once(queue, provider)
        assert len(requests) == 1
        for queue_id in ids:
            assert set((await states(queue, queue_id)).values()) == {RecipientState.SENT}
        assert queue._queue.commits - before <= 4  # claim, claim alike, lease, sent
    finally:
        await queue.close()


class GatedBucket:
    """A rate limit whose tokens come when the test says: ``open`` lets them all through."""

    def __init__(self) -> None:
        self.waiting = asyncio.Event()
        self.open = asyncio.Event()
        self.taken = 0

    async def acquire(self) -> float:
        self.waiting.set()
        await self.open.wait()
        self.taken += 1
        return 0.0

    def refund(self) -> None:
        self.taken -= 1


async def gated_delivery(
    queue: AsyncQueue, provider: DataFlowsProvider
) -> tuple[Delivery, GatedBucket, asyncio.Task[None]]:
    """Delivery running with 4 workers and a ``GatedBucket``, once it waits for a token."""
    delivery = Delivery(
        queue=queue, provider=provider, config=DeliveryConfig(workers=4), request_timeout=5
    )
    assert delivery.limiter is not None  # DataFlows publishes 10 requests a second
    bucket = GatedBucket()
    delivery.limiter = bucket  # type: ignore[assignment]
    running = asyncio.create_task(delivery.run())
    await asyncio.wait_for(bucket.waiting.wait(), 5)
    return delivery, bucket, running


async def test_mail_that_comes_while_waiting_for_the_rate_limit_joins_the_request(
    tmp_path: Path,
):
    """A burst faster than the provider's limit: each token carries all that is due by then.

    Gathering the same-text messages before the token is there would send the first one
    alone, and workers each holding a message while waiting would spend a token apiece.
    """
    queue = await AsyncQueue.open(tmp_path / "queue.sqlite3")
    requests: list[list[str]] = []
    try:
        first = await queue.enqueue(message("a@example.com", "+61411111110"))
        async with dataflows(requests) as provider:
            delivery, bucket, running = await gated_delivery(queue, provider)
            try:
                later = [
                    await queue.enqueue(message(f"m{i}@example.com", f"+6141111111{i}"))
                    for i in range(1, 4)
                ]
                delivery.wake()  # as the SMTP side does for new mail
                bucket.open.set()
                ids = [first, *later]

                async def all_sent() -> bool:
                    for queue_id in ids:
                        if set((await states(queue, queue_id)).values()) != {RecipientState.SENT}:
                            return False
                    return True

                await poll(all_sent)
            finally:
                await delivery.drain(1)
                await running
        assert len(requests) == 1
        assert sorted(requests[0]) == [f"6141111111{i}" for i in range(4)]
        assert bucket.taken == 1
    finally:
        await queue.close()


async def test_shutdown_while_waiting_for_the_rate_limit_leaves_nothing_leased(tmp_path: Path):
    """The token comes before the claim: a drain meanwhile sends nothing after it returned.

    A message claimed and then held through the wait would be sent by a worker nobody
    waits for, with the queue closing under it, and sent again at the next start.
    """
    queue = await AsyncQueue.open(tmp_path / "queue.sqlite3")
    requests: list[list[str]] = []
    try:
        queue_id = await queue.enqueue(message("a@example.com", "+61411111110"))
        async with dataflows(requests) as provider:
            delivery, bucket, running = await gated_delivery(queue, provider)
            await delivery.drain(0.05)  # the token has not come within the grace
            assert await states(queue, queue_id) == {"+61411111110": RecipientState.PENDING}
            bucket.open.set()  # it comes after all: the pass ends without claiming
            await asyncio.wait_for(running, 5)
        assert requests == []
        assert bucket.taken == 0  # given back
        assert await states(queue, queue_id) == {"+61411111110": RecipientState.PENDING}
    finally:
        await queue.close()


async def test_a_queue_error_gathering_companions_sends_the_message_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    queue = await AsyncQueue.open(tmp_path / "queue.sqlite3")
    requests: list[list[str]] = []
    try:
        ids = [
            await queue.enqueue(message(f"m{i}@example.com", f"+6141111111{i}")) for i in range(2)
        ]

        async def locked(*args: object, **kwargs: object) -> list[object]:
            raise QueueUnavailableError("database is locked")

        monkeypatch.setattr(queue, "claim_alike", locked)
        async with dataflows(requests) as provider:
            with capture_logs() as logs:
                await deliver_once(queue, provider)
        assert requests == [["61411111110"]]
        assert await states(queue, ids[0]) == {"+61411111110": RecipientState.SENT}
        assert await states(queue, ids[1]) == {"+61411111111": RecipientState.PENDING}
        assert any(e["event"] == "queue_error" and e["queue_id"] == ids[0] for e in logs)
    finally:
        await queue.close()
