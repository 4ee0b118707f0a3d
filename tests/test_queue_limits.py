"""The ``[limits]`` rates as the queue keeps them: a real SQLite file, explicit clocks."""

from __future__ import annotations

import sqlite3
import threading
from dataclasses import replace
from typing import TYPE_CHECKING
from unittest import mock

import pytest
from test_queue import T0, A, B, C, msg

from mail2sms.errors import LimitRefusedError, RateLimitedError
from mail2sms.limits import Quota
from mail2sms.queue import SCHEMA_VERSION, AsyncQueue, Queue

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

ALICE = Quota(sender_key="alice@example.com", per_sender_per_hour=3)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "queue.sqlite3"


@pytest.fixture
def queue(path: Path) -> Iterator[Queue]:
    q = Queue(path)
    yield q
    q.close()


def send(queue: Queue, *numbers: str, at: float = T0, quota: Quota = ALICE) -> str:
    # a fresh Message-ID each time, so duplicate suppression never applies by accident
    message = replace(msg(*numbers, at=at), message_id=f"<{at}-{numbers}@example.com>")
    return queue.enqueue_unless_duplicate(message, since=at - 600, quota=quota)[0]


def test_over_the_sender_rate_raises_and_stores_and_counts_nothing(queue: Queue) -> None:
    send(queue, A, B)
    with pytest.raises(RateLimitedError) as caught:
        send(queue, A, B, at=T0 + 1)  # 2 + 2 > 3
    assert caught.value.reply.startswith("451 4.7.1 alice@example.com has sent 2 SMS")
    assert len(queue.entries()) == 1  # the refused message was rolled back
    send(queue, C, at=T0 + 2)  # the refusal counted nothing: 2 + 1 fits
    with pytest.raises(RateLimitedError, match="has sent 3 SMS"):
        send(queue, C, at=T0 + 3)


def test_each_sender_has_its_own_count(queue: Queue) -> None:
    send(queue, A, B, C)
    send(queue, A, quota=replace(ALICE, sender_key="bob@example.com"), at=T0 + 1)
    with pytest.raises(RateLimitedError):
        send(queue, A, at=T0 + 2)


def test_counts_survive_closing_and_reopening_the_queue(path: Path) -> None:
    with Queue(path) as queue:
        send(queue, A, B, C)
    with Queue(path) as queue, pytest.raises(RateLimitedError, match="has sent 3 SMS"):
        send(queue, A, at=T0 + 60)


def test_the_hour_slides_by_the_minute(queue: Queue) -> None:
    send(queue, A, at=T0)
    send(queue, B, C, at=T0 + 1800)
    with pytest.raises(RateLimitedError):
        send(queue, A, at=T0 + 3600 - 60)  # the first SMS is still within the hour
    send(queue, A, at=T0 + 3600 + 60)  # now it is not
    with pytest.raises(RateLimitedError, match="has sent 3 SMS"):
        send(queue, B, at=T0 + 3600 + 120)


def test_recipient_and_day_rates_and_pruning(queue: Queue, path: Path) -> None:
    quota = Quota(sender_key="alice@example.com", per_recipient_per_hour=2, per_day=4)
    send(queue, A, quota=quota)
    send(queue, A, quota=quota, at=T0 + 60)
    with pytest.raises(RateLimitedError, match=r"\+61412345678 has been sent 2 SMS"):
        send(queue, A, B, quota=quota, at=T0 + 120)
    send(queue, B, C, quota=quota, at=T0 + 3 * 3600)  # A's hour is over; 4 today
    with pytest.raises(RateLimitedError, match="this gateway has sent 4 SMS in the last 24"):
        send(queue, A, quota=quota, at=T0 + 4 * 3600)
    send(queue, A, quota=quota, at=T0 + 86400 + 60)  # the first two SMS are a day old
    conn = sqlite3.connect(path)
    try:  # buckets older than a day were deleted on the way
        minutes = [row[0] for row in conn.execute("SELECT minute FROM usage")]
    finally:
        conn.close()
    assert min(minutes) > int(T0 // 60)


def test_a_suppressed_duplicate_is_not_counted(queue: Queue) -> None:
    first = queue.enqueue_unless_duplicate(msg(A, B), since=T0 - 600, quota=ALICE)
    again = queue.enqueue_unless_duplicate(msg(A, B, at=T0 + 5), since=T0 - 595, quota=ALICE)
    assert again == (first[0], True)
    send(queue, C, at=T0 + 10)  # 2 + 1: the duplicate added nothing


def test_a_message_larger_than_the_window_is_refused_for_good(queue: Queue) -> None:
    with pytest.raises(LimitRefusedError) as caught:
        send(queue, A, B, C, "+61412345671")
    assert not isinstance(caught.value, RateLimitedError)
    assert queue.entries() == []


def test_without_a_quota_nothing_is_checked_or_counted(queue: Queue, path: Path) -> None:
    for i in range(5):
        queue.enqueue(msg(A, B, at=T0 + i))
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("SELECT COUNT(*) FROM usage").fetchone()[0] == 0
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 4
    finally:
        conn.close()


def test_a_version_3_queue_gets_the_usage_table(path: Path) -> None:
    with Queue(path) as queue:
        queue_id = queue.enqueue(msg(A))
    conn = sqlite3.connect(path)
    try:
        conn.execute("DROP TABLE usage")
        conn.execute("PRAGMA user_version = 3")
        conn.commit()
    finally:
        conn.close()
    with Queue(path) as queue:
        assert queue.get(queue_id).recipients[0].number == A
        send(queue, A, B, C)
        with pytest.raises(RateLimitedError):
            send(queue, A)


@pytest.mark.anyio
async def test_the_async_queue_passes_the_quota(path: Path) -> None:
    queue = await AsyncQueue.open(path)
    try:
        await queue.enqueue_unless_duplicate(msg(A, B, C), since=None, quota=ALICE)
        with pytest.raises(RateLimitedError):
            await queue.enqueue_unless_duplicate(msg(A, at=T0 + 1), since=None, quota=ALICE)
    finally:
        await queue.close()


def test_two_connections_at_once_never_pass_more_than_the_limit(path: Path) -> None:
    quota = Quota(sender_key="alice@example.com", per_sender_per_hour=10)
    Queue(path).close()  # create the file and schema once
    accepted: list[str] = []
    refused: list[RateLimitedError] = []

    def writer(offset: int) -> None:
        with Queue(path, busy_timeout=30) as queue:
            for i in range(10):
                number = f"+614120{offset + i:05d}"
                try:
                    accepted.append(send(queue, number, at=T0 + i, quota=quota))
                except RateLimitedError as error:
                    refused.append(error)

    threads = [threading.Thread(target=writer, args=(n * 100,)) for n in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert (len(accepted), len(refused)) == (10, 10)


def test_a_group_counts_in_order_and_refuses_without_redoing_the_group(queue: Queue) -> None:
    """A rate refusal inside a group is that message's result; the others are written once."""
    items = [
        (replace(msg(*numbers, at=T0 + i), message_id=f"<g{i}@example.com>"), None, ALICE)
        for i, numbers in enumerate([(A, B), (C,), (A,), (B,)])
    ]
    with mock.patch.object(Queue, "_stage_apart", wraps=queue._stage_apart) as apart:
        results = queue.enqueue_group(items)
    assert apart.call_count == 0  # a refusal is no failure: no savepoint per message needed
    assert [type(r).__name__ for r in results] == [
        "tuple", "tuple", "RateLimitedError", "RateLimitedError"
    ]  # fmt: skip
    assert len(queue.entries()) == 2
    conn = sqlite3.connect(queue.path)
    try:  # the refused ones counted nothing: 2 + 1 for alice
        used = conn.execute("SELECT SUM(count) FROM usage WHERE scope = 'sender'").fetchone()
    finally:
        conn.close()
    assert used == (3,)


def test_a_group_with_a_failing_message_is_written_again_apart(queue: Queue) -> None:
    """A database error inside a group rolls it back and writes each message on its own."""
    broken = replace(msg(A, text="broken"), recipients=(A, None))  # type: ignore[arg-type]
    items = [
        (replace(msg(B, text="one"), message_id="<one@example.com>"), None, ALICE),
        (broken, None, ALICE),
        (replace(msg(C, text="two"), message_id="<two@example.com>"), None, ALICE),
    ]
    with mock.patch.object(Queue, "_stage_apart", wraps=queue._stage_apart) as apart:
        one, failed, two = queue.enqueue_group(items)
    assert apart.call_count == 1
    assert isinstance(one, tuple)
    assert isinstance(two, tuple)
    assert "NOT NULL" in str(failed)
    assert {e.text for e in queue.entries()} == {"one", "two"}
    conn = sqlite3.connect(queue.path)
    try:  # counted once each, the failed one not at all
        used = conn.execute("SELECT SUM(count) FROM usage WHERE scope = 'sender'").fetchone()
    finally:
        conn.close()
    assert used == (2,)


def test_a_group_tallies_each_bucket_once_across_minutes(queue: Queue) -> None:
    """Counts of one group are checked against each other and stored one row per bucket."""
    quota = Quota(sender_key="alice@example.com", per_recipient_per_hour=2)
    items = [
        (replace(msg(A, at=T0 + 50 * i), message_id=f"<m{i}@example.com>"), None, quota)
        for i in range(3)
    ]  # T0, T0 + 50 s, T0 + 100 s: two or three minutes
    first, second, third = queue.enqueue_group(items)
    assert isinstance(first, tuple)
    assert isinstance(second, tuple)
    assert isinstance(third, RateLimitedError)
    assert "has been sent 2 SMS" in str(third)
    conn = sqlite3.connect(queue.path)
    try:
        rows = conn.execute(
            "SELECT scope, minute, count FROM usage ORDER BY scope, minute"
        ).fetchall()
    finally:
        conn.close()
    minutes = sorted({int((T0 + 50 * i) // 60) for i in range(2)})
    by_scope: dict[str, int] = {}
    for scope, minute, count in rows:
        assert minute in minutes
        by_scope[scope] = by_scope.get(scope, 0) + count
    assert by_scope == {"all": 2, "recipient": 2, "sender": 2}
    assert len(rows) == 3 * len(minutes)  # one row per bucket, however many messages
