"""The durable queue against a real SQLite file: explicit clocks, no sleeps."""

from __future__ import annotations

import asyncio
import inspect
import sqlite3
import subprocess
import sys
import threading
import time
from dataclasses import replace
from typing import TYPE_CHECKING

import pytest

from mail2sms.errors import NotFoundError, QueueUnavailableError
from mail2sms.models import NewMessage, RecipientState
from mail2sms.queue import (
    QUEUE_ID_PATTERN,
    SCHEMA_VERSION,
    AsyncQueue,
    Queue,
    new_queue_id,
)

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

T0 = 1_700_000_000.0
LEASE = 300.0
A, B, C = "+61412345678", "+61412345679", "+61412345670"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "var" / "queue.sqlite3"


@pytest.fixture
def queue(path: Path) -> Iterator[Queue]:
    q = Queue(path)
    yield q
    q.close()


def msg(*recipients: str, at: float = T0, text: str = "Server down") -> NewMessage:
    return NewMessage(
        envelope_from="alerts@example.com",
        from_header="Alerts <alerts@example.com>",
        subject=" ".join(recipients),
        message_id="<abc@example.com>",
        recipients=recipients or (A,),
        text=text,
        sender_id="MyBrand",
        received_at=at,
        size=1234,
        headers="From: Alerts <alerts@example.com>\r\nSubject: x\r\n",
    )


# ---- ids -------------------------------------------------------------------------------


def test_queue_ids_are_16_safe_chars_and_sort_by_time() -> None:
    ids = [new_queue_id(T0 + i / 1000) for i in range(0, 5000, 7)]
    assert all(QUEUE_ID_PATTERN.fullmatch(i) for i in ids)
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)
    same_ms = {new_queue_id(T0) for _ in range(200)}
    assert len(same_ms) == 200


# ---- opening ---------------------------------------------------------------------------


def test_open_creates_parent_and_sets_durable_pragmas(queue: Queue, path: Path) -> None:
    assert path.is_file()
    conn = queue._conn
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    assert conn.execute("PRAGMA busy_timeout").fetchone()[0] == 5000
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


def test_reopen_keeps_data_and_schema(path: Path) -> None:
    with Queue(path) as q:
        queue_id = q.enqueue(msg(A))
    with Queue(path) as q:
        assert q.get(queue_id).recipients[0].number == A


def test_path_under_a_regular_file_is_unavailable(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(QueueUnavailableError) as info:
        Queue(blocker / "queue.sqlite3")
    assert str(blocker / "queue.sqlite3") in str(info.value)


def test_a_file_that_is_not_a_database_is_unavailable(tmp_path: Path) -> None:
    bad = tmp_path / "queue.sqlite3"
    bad.write_bytes(b"this is not sqlite at all, just some bytes" * 100)
    with pytest.raises(QueueUnavailableError, match="not a database") as info:
        Queue(bad)
    assert str(bad) in str(info.value)
    assert "SELECT" not in str(info.value)


def test_a_newer_schema_is_refused(path: Path) -> None:
    Queue(path).close()
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(QueueUnavailableError, match="newer"):
        Queue(path)


# ---- enqueue ---------------------------------------------------------------------------


def test_enqueue_then_get_returns_every_field(queue: Queue) -> None:
    message = msg(A, B)
    queue_id = queue.enqueue(message)
    assert QUEUE_ID_PATTERN.fullmatch(queue_id)
    entry = queue.get(queue_id)
    assert entry.id == queue_id
    assert entry.received_at == message.received_at
    assert entry.envelope_from == message.envelope_from
    assert entry.from_header == message.from_header
    assert entry.subject == message.subject
    assert entry.message_id == message.message_id
    assert entry.text == message.text
    assert entry.sender_id == message.sender_id
    assert entry.size == message.size
    assert entry.headers == message.headers
    assert entry.state == "pending"
    assert [r.number for r in entry.recipients] == [A, B]
    for r in entry.recipients:
        assert r.state is RecipientState.PENDING
        assert r.attempts == 0
        assert r.next_attempt_at == T0
        assert r.last_error is None
        assert r.provider_ref is None
        assert r.updated_at == T0
        assert not r.possible_duplicate


def test_enqueue_keeps_none_message_id_unicode_and_drops_duplicate_numbers(queue: Queue) -> None:
    message = replace(msg(B, A, B), message_id=None, text="Grüße 🚨")
    entry = queue.get(queue.enqueue(message))
    assert entry.message_id is None
    assert entry.text == "Grüße 🚨"
    assert [r.number for r in entry.recipients] == [B, A]


def test_enqueue_without_recipients_is_a_bug(queue: Queue) -> None:
    with pytest.raises(ValueError, match="recipient"):
        queue.enqueue(replace(msg(A), recipients=()))


def test_enqueued_row_is_committed_and_seen_by_another_connection(queue: Queue, path: Path) -> None:
    queue_id = queue.enqueue(msg(A))
    assert not queue._conn.in_transaction
    other = sqlite3.connect(path)
    try:
        assert other.execute("SELECT id FROM messages").fetchall() == [(queue_id,)]
    finally:
        other.close()


def test_enqueue_survives_a_process_that_dies_without_closing(path: Path) -> None:
    code = (
        "import os, sys\n"
        "from pathlib import Path\n"
        "from mail2sms.models import NewMessage\n"
        "from mail2sms.queue import Queue\n"
        "q = Queue(Path(sys.argv[1]))\n"
        "m = NewMessage('a@example.com', 'a@example.com', 's', None, ('+61412345678',),"
        " 'text', 'Me', 1.0, 10, '')\n"
        "print(q.enqueue(m), flush=True)\n"
        "os._exit(0)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(path)], capture_output=True, text=True, check=True
    )
    with Queue(path) as q:
        assert q.get(done.stdout.strip()).text == "text"


def test_enqueue_while_another_writer_holds_the_lock_is_unavailable(path: Path) -> None:
    Queue(path).close()
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    try:
        with Queue(path, busy_timeout=0.0) as q:
            with pytest.raises(QueueUnavailableError, match="locked"):
                q.enqueue(msg(A))
            assert not q._conn.in_transaction
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    with Queue(path) as q:
        assert q.entries(include_finished=True) == []


# ---- claim -----------------------------------------------------------------------------


def test_claim_respects_due_time(queue: Queue) -> None:
    queue.enqueue(msg(A, at=T0 + 10))
    assert queue.claim(now=T0, lease=LEASE, limit=10) == []
    assert queue.next_due() == T0 + 10
    jobs = queue.claim(now=T0 + 10, lease=LEASE, limit=10)
    assert [j.recipients for j in jobs] == [(A,)]


def test_claim_groups_per_message_oldest_first_up_to_limit(queue: Queue) -> None:
    second = queue.enqueue(msg(C, at=T0 + 2, text="second"))
    first = queue.enqueue(msg(A, B, at=T0 + 1, text="first"))
    third = queue.enqueue(msg(A, at=T0 + 3, text="third"))
    jobs = queue.claim(now=T0 + 5, lease=LEASE, limit=2)
    assert [j.queue_id for j in jobs] == [first, second]
    job = jobs[0]
    assert job.recipients == (A, B)
    assert job.text == "first"
    assert job.sender_id == "MyBrand"
    assert job.envelope_from == "alerts@example.com"
    assert job.subject == f"{A} {B}"
    assert job.received_at == T0 + 1
    assert job.attempts == 1
    assert [j.queue_id for j in queue.claim(now=T0 + 5, lease=LEASE, limit=2)] == [third]
    assert queue.claim(now=T0 + 5, lease=LEASE, limit=2) == []
    assert queue.claim(now=T0 + 5, lease=LEASE, limit=0) == []


def test_claim_marks_inflight_with_lease_and_attempt(queue: Queue) -> None:
    queue_id = queue.enqueue(msg(A))
    queue.claim(now=T0 + 1, lease=LEASE, limit=1)
    (r,) = queue.get(queue_id).recipients
    assert r.state is RecipientState.INFLIGHT
    assert r.attempts == 1
    assert r.updated_at == T0 + 1
    lease_until = queue._conn.execute("SELECT lease_until FROM recipients").fetchone()[0]
    assert lease_until == T0 + 1 + LEASE
    assert queue.next_due() is None


def test_claimed_recipient_is_not_claimed_again_until_the_lease_expires(queue: Queue) -> None:
    queue_id = queue.enqueue(msg(A))
    assert len(queue.claim(now=T0, lease=LEASE, limit=5)) == 1
    assert queue.claim(now=T0 + LEASE, lease=LEASE, limit=5) == []  # lease_until is not < now
    (job,) = queue.claim(now=T0 + LEASE + 1, lease=LEASE, limit=5)  # the worker died
    assert job.queue_id == queue_id
    assert job.attempts == 2
    (r,) = queue.get(queue_id).recipients
    assert r.possible_duplicate


def test_claim_takes_only_the_due_recipients_of_a_message(queue: Queue) -> None:
    queue_id = queue.enqueue(msg(A, B, C))
    queue.claim(now=T0, lease=LEASE, limit=1)
    queue.mark_sent(queue_id, [A], now=T0 + 1)
    queue.mark_retry(queue_id, [B], now=T0 + 1, at=T0 + 100, error="busy")
    queue.mark_retry(queue_id, [C], now=T0 + 1, at=T0 + 50, error="busy")
    assert queue.next_due() == T0 + 50
    (job,) = queue.claim(now=T0 + 60, lease=LEASE, limit=1)
    assert job.recipients == (C,)
    assert job.attempts == 2


def test_attempts_is_the_highest_among_claimed_recipients(queue: Queue) -> None:
    queue_id = queue.enqueue(msg(A, B))
    queue.claim(now=T0, lease=LEASE, limit=1)
    queue.mark_retry(queue_id, [A], now=T0, at=T0 + 1, error="busy")
    queue.mark_retry(queue_id, [B], now=T0, at=T0 + 1, error="busy")
    queue.claim(now=T0 + 1, lease=LEASE, limit=1)
    queue.mark_retry(queue_id, [A], now=T0 + 1, at=T0 + 2, error="busy")
    queue.mark_retry(queue_id, [B], now=T0 + 1, at=T0 + 9, error="busy")
    queue.claim(now=T0 + 2, lease=LEASE, limit=1)  # A only: 3 attempts
    queue.mark_retry(queue_id, [A], now=T0 + 2, at=T0 + 9, error="busy")
    (job,) = queue.claim(now=T0 + 9, lease=LEASE, limit=1)
    assert job.recipients == (A, B)
    assert job.attempts == 4


def test_two_claimers_never_get_the_same_recipient(path: Path) -> None:
    with Queue(path) as q:
        for i in range(30):
            q.enqueue(msg(A, B, at=T0 + i))
    claimed: list[list[tuple[str, str]]] = [[], []]

    def worker(slot: int) -> None:
        with Queue(path) as q:
            while jobs := q.claim(now=T0 + 100, lease=LEASE, limit=3):
                claimed[slot].extend((j.queue_id, n) for j in jobs for n in j.recipients)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    together = claimed[0] + claimed[1]
    assert len(together) == 60
    assert len(set(together)) == 60


# ---- outcomes --------------------------------------------------------------------------


def test_mark_sent_records_provider_refs(queue: Queue) -> None:
    queue_id = queue.enqueue(msg(A, B))
    queue.claim(now=T0, lease=LEASE, limit=1)
    queue.mark_sent(queue_id, [A, B], now=T0 + 2, provider_refs={A: "ref-1", B: None})
    entry = queue.get(queue_id)
    assert entry.state == "sent"
    assert [(r.state, r.provider_ref, r.updated_at) for r in entry.recipients] == [
        (RecipientState.SENT, "ref-1", T0 + 2),
        (RecipientState.SENT, None, T0 + 2),
    ]
    assert queue.next_due() is None
    assert queue.claim(now=T0 + 1000, lease=LEASE, limit=5) == []


def test_mark_retry_waits_until_at_and_keeps_the_error(queue: Queue) -> None:
    queue_id = queue.enqueue(msg(A))
    queue.claim(now=T0, lease=LEASE, limit=1)
    queue.mark_retry(queue_id, [A], now=T0 + 1, at=T0 + 30, error="HTTP 503")
    (r,) = queue.get(queue_id).recipients
    assert (r.state, r.next_attempt_at, r.last_error, r.attempts) == (
        RecipientState.PENDING,
        T0 + 30,
        "HTTP 503",
        1,
    )
    assert queue.claim(now=T0 + 29, lease=LEASE, limit=1) == []
    assert len(queue.claim(now=T0 + 30, lease=LEASE, limit=1)) == 1


def test_mark_failed_ends_the_recipient(queue: Queue) -> None:
    queue_id = queue.enqueue(msg(A))
    queue.claim(now=T0, lease=LEASE, limit=1)
    queue.mark_failed(queue_id, [A], now=T0 + 1, error="invalid number")
    entry = queue.get(queue_id)
    assert entry.state == "failed"
    assert entry.recipients[0].last_error == "invalid number"
    assert queue.claim(now=T0 + 10_000, lease=LEASE, limit=1) == []


def test_some_sent_some_failed_is_partial(queue: Queue) -> None:
    queue_id = queue.enqueue(msg(A, B, C))
    queue.claim(now=T0, lease=LEASE, limit=1)
    queue.mark_sent(queue_id, [A], now=T0 + 1)
    queue.mark_failed(queue_id, [B], now=T0 + 1, error="blocked")
    assert queue.get(queue_id).state == "pending"  # C is still inflight
    queue.mark_retry(queue_id, [C], now=T0 + 1, at=T0 + 5, error="busy")
    assert queue.get(queue_id).state == "pending"
    queue.claim(now=T0 + 5, lease=LEASE, limit=1)
    queue.mark_sent(queue_id, [C], now=T0 + 6)
    assert queue.get(queue_id).state == "partial"


def test_marks_only_touch_recipients_inflight_for_that_message(queue: Queue) -> None:
    first = queue.enqueue(msg(A, B))
    other = queue.enqueue(msg(A, at=T0 + 1))
    queue.claim(now=T0, lease=LEASE, limit=1)  # only `first` is due
    queue.mark_sent(other, [A], now=T0 + 1)  # pending, not inflight: ignored
    queue.mark_failed(first, [C], now=T0 + 1, error="x")  # not a recipient: ignored
    queue.mark_sent(first, [A], now=T0 + 1)
    queue.mark_retry(first, [A], now=T0 + 2, at=T0 + 3, error="late")  # already sent: ignored
    assert queue.get(other).recipients[0].state is RecipientState.PENDING
    states = [r.state for r in queue.get(first).recipients]
    assert states == [RecipientState.SENT, RecipientState.INFLIGHT]


def test_marks_after_an_admin_deleted_the_message_are_no_ops(queue: Queue) -> None:
    queue_id = queue.enqueue(msg(A))
    queue.claim(now=T0, lease=LEASE, limit=1)
    queue.delete(queue_id)
    queue.mark_sent(queue_id, [A], now=T0 + 1, provider_refs={A: "r"})
    queue.mark_retry(queue_id, [A], now=T0 + 1, at=T0 + 2, error="x")
    queue.mark_failed(queue_id, [A], now=T0 + 1, error="x")
    assert queue.counts() == {"pending": 0, "inflight": 0, "sent": 0, "failed": 0}


# ---- restart ---------------------------------------------------------------------------


def test_recover_makes_inflight_pending_due_now(path: Path) -> None:
    with Queue(path) as crashed:
        first = crashed.enqueue(msg(A, B))
        second = crashed.enqueue(msg(C, at=T0 + 1))
        untouched = crashed.enqueue(msg(A, at=T0 + 50))
        crashed.claim(now=T0 + 2, lease=LEASE, limit=5)
        crashed.mark_sent(second, [C], now=T0 + 3)
    with Queue(path) as q:
        assert q.recover(now=T0 + 10) == 2
        assert q.recover(now=T0 + 10) == 0
        for r in q.get(first).recipients:
            assert (r.state, r.next_attempt_at, r.possible_duplicate, r.attempts) == (
                RecipientState.PENDING,
                T0 + 10,
                True,
                1,
            )
        assert not q.get(second).recipients[0].possible_duplicate
        assert not q.get(untouched).recipients[0].possible_duplicate
        (job,) = q.claim(now=T0 + 10, lease=LEASE, limit=5)
        assert (job.queue_id, job.recipients, job.attempts) == (first, (A, B), 2)


# ---- administration --------------------------------------------------------------------


def test_unknown_ids_raise_not_found(queue: Queue) -> None:
    with pytest.raises(NotFoundError, match="NOSUCHID"):
        queue.get("NOSUCHID")
    with pytest.raises(NotFoundError):
        queue.retry_now("NOSUCHID", now=T0)
    with pytest.raises(NotFoundError):
        queue.delete("NOSUCHID")


def test_retry_now_makes_pending_recipients_due(queue: Queue) -> None:
    queue_id = queue.enqueue(msg(A, B))
    queue.claim(now=T0, lease=LEASE, limit=1)
    queue.mark_retry(queue_id, [A], now=T0, at=T0 + 900, error="busy")
    queue.mark_sent(queue_id, [B], now=T0)
    assert queue.retry_now(queue_id, now=T0 + 5) == 1
    assert queue.next_due() == T0 + 5
    (job,) = queue.claim(now=T0 + 5, lease=LEASE, limit=1)
    assert job.recipients == (A,)
    queue.mark_sent(queue_id, [A], now=T0 + 6)
    assert queue.retry_now(queue_id, now=T0 + 7) == 0


def test_delete_removes_message_and_recipients(queue: Queue) -> None:
    queue_id = queue.enqueue(msg(A, B))
    kept = queue.enqueue(msg(C))
    queue.delete(queue_id)
    with pytest.raises(NotFoundError):
        queue.get(queue_id)
    assert queue.counts()["pending"] == 1
    assert queue.get(kept).recipients[0].number == C


def test_entries_lists_unfinished_unless_asked_for_all(queue: Queue) -> None:
    done = queue.enqueue(msg(A, at=T0))
    waiting = queue.enqueue(msg(A, B, at=T0 + 2))
    working = queue.enqueue(msg(C, at=T0 + 1))
    queue.claim(now=T0, lease=LEASE, limit=1)
    queue.mark_sent(done, [A], now=T0)
    queue.claim(now=T0 + 1, lease=LEASE, limit=1)  # `working` is inflight
    assert [e.id for e in queue.entries()] == [working, waiting]
    every = queue.entries(include_finished=True)
    assert [e.id for e in every] == [done, working, waiting]
    assert [e.state for e in every] == ["sent", "pending", "pending"]
    assert [len(e.recipients) for e in every] == [1, 1, 2]


def test_counts_per_state(queue: Queue) -> None:
    assert queue.counts() == {"pending": 0, "inflight": 0, "sent": 0, "failed": 0}
    queue_id = queue.enqueue(msg(A, B, C))
    queue.enqueue(msg(A, at=T0 + 1))
    queue.claim(now=T0, lease=LEASE, limit=1)
    queue.mark_sent(queue_id, [A], now=T0)
    queue.mark_failed(queue_id, [B], now=T0, error="x")
    assert queue.counts() == {"pending": 1, "inflight": 1, "sent": 1, "failed": 1}


def test_daemon_and_cli_use_the_same_file_at_once(path: Path) -> None:
    with Queue(path) as daemon, Queue(path) as cli:
        queue_id = daemon.enqueue(msg(A))
        assert [e.id for e in cli.entries()] == [queue_id]
        daemon.claim(now=T0, lease=LEASE, limit=1)
        assert cli.get(queue_id).recipients[0].state is RecipientState.INFLIGHT
        cli.delete(queue_id)
        daemon.mark_sent(queue_id, [A], now=T0 + 1)
        assert daemon.entries(include_finished=True) == []
        # a reader's open snapshot does not block the writer (WAL)
        cli._conn.execute("BEGIN")
        cli._conn.execute("SELECT COUNT(*) FROM messages").fetchone()
        second = daemon.enqueue(msg(B))
        cli._conn.execute("COMMIT")
        assert cli.get(second).recipients[0].number == B


def test_a_closed_queue_is_unavailable(path: Path) -> None:
    q = Queue(path)
    q.close()
    with pytest.raises(QueueUnavailableError, match="closed"):
        q.counts()


# ---- async facade ----------------------------------------------------------------------


def test_async_queue_mirrors_every_queue_method() -> None:
    public = [n for n, f in vars(Queue).items() if callable(f) and not n.startswith("_")]
    for name in public:
        sync, coro = getattr(Queue, name), getattr(AsyncQueue, name)
        assert inspect.iscoroutinefunction(coro), name
        if name != "close":
            assert inspect.signature(coro) == inspect.signature(sync), name


@pytest.mark.anyio
async def test_async_queue_round_trip(path: Path) -> None:
    aq = await AsyncQueue.open(path)
    try:
        queue_id = await aq.enqueue(msg(A, B))
        assert await aq.next_due() == T0
        (job,) = await aq.claim(now=T0, lease=LEASE, limit=5)
        assert job.queue_id == queue_id
        await aq.mark_sent(queue_id, [A], now=T0 + 1, provider_refs={A: "r1"})
        await aq.mark_retry(queue_id, [B], now=T0 + 1, at=T0 + 60, error="busy")
        assert await aq.counts() == {"pending": 1, "inflight": 0, "sent": 1, "failed": 0}
        assert await aq.retry_now(queue_id, now=T0 + 2) == 1
        await aq.claim(now=T0 + 2, lease=LEASE, limit=5)
        await aq.mark_failed(queue_id, [B], now=T0 + 3, error="refused")
        entry = await aq.get(queue_id)
        assert entry.state == "partial"
        assert entry.bounce_state == "pending"  # B failed: its sender is owed a bounce
        assert [e.id for e in await aq.entries()] == [queue_id]
        (bounce,) = await aq.claim_bounces(now=T0 + 3, lease=LEASE, limit=5)
        assert [f.number for f in bounce.failed] == [B]
        await aq.mark_bounce_sent(queue_id, now=T0 + 4)
        assert await aq.entries() == []
        assert [e.id for e in await aq.entries(include_finished=True)] == [queue_id]
        assert await aq.recover(T0 + 4) == 0
        await aq.delete(queue_id)
        with pytest.raises(NotFoundError):
            await aq.get(queue_id)
    finally:
        await aq.close()
    await aq.close()  # idempotent
    with pytest.raises(QueueUnavailableError, match="closed"):
        await aq.counts()


@pytest.mark.anyio
async def test_async_queue_open_failure_is_unavailable(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(QueueUnavailableError):
        await AsyncQueue.open(blocker / "queue.sqlite3")


# ---- finishing, bounces owed, retention --------------------------------------------------


def _lease_all(queue: Queue, now: float = T0) -> None:
    queue.claim(now=now, lease=LEASE, limit=100)


def test_a_bounce_is_owed_once_when_the_last_recipient_settles(queue: Queue) -> None:
    queue_id = queue.enqueue(msg(A, B, C))
    _lease_all(queue)
    queue.mark_failed(queue_id, [A], now=T0 + 1, error="is a invalid phone number", status="5.1.1")
    queue.mark_retry(queue_id, [B, C], now=T0 + 1, at=T0 + 60, error="busy")
    # B and C still wait: no bounce yet, the sender gets ONE bounce listing every failure
    assert queue.claim_bounces(now=T0 + 2, lease=LEASE, limit=5) == []
    _lease_all(queue, T0 + 60)
    queue.mark_sent(queue_id, [B], now=T0 + 61)
    queue.mark_failed(queue_id, [C], now=T0 + 61, error="gave up", status="4.4.7")
    (job,) = queue.claim_bounces(now=T0 + 62, lease=LEASE, limit=5)
    assert job.queue_id == queue_id
    assert job.envelope_from == "alerts@example.com"
    assert [(f.number, f.status, f.reason) for f in job.failed] == [
        (A, "5.1.1", "is a invalid phone number"),
        (C, "4.4.7", "gave up"),
    ]
    assert job.delivered == (B,)
    assert job.attempts == 1
    # leased: not handed out twice
    assert queue.claim_bounces(now=T0 + 63, lease=LEASE, limit=5) == []
    assert queue.get(queue_id).finished_at == T0 + 61


def test_all_sent_owes_no_bounce(queue: Queue) -> None:
    queue_id = queue.enqueue(msg(A, B))
    _lease_all(queue)
    queue.mark_sent(queue_id, [A, B], now=T0 + 1)
    assert queue.claim_bounces(now=T0 + 2, lease=LEASE, limit=5) == []
    entry = queue.get(queue_id)
    assert (entry.finished_at, entry.bounce_state) == (T0 + 1, None)


def test_no_bounce_is_ever_owed_to_the_null_sender(queue: Queue) -> None:
    queue_id = queue.enqueue(replace(msg(A), envelope_from=""))
    _lease_all(queue)
    queue.mark_failed(queue_id, [A], now=T0 + 1, error="refused")
    assert queue.claim_bounces(now=T0 + 2, lease=LEASE, limit=5) == []
    assert queue.get(queue_id).bounce_state is None


def test_bounce_retry_then_sent_and_an_expired_bounce_lease_is_claimed_again(
    queue: Queue,
) -> None:
    queue_id = queue.enqueue(msg(A))
    _lease_all(queue)
    queue.mark_failed(queue_id, [A], now=T0 + 1, error="refused")
    queue.claim_bounces(now=T0 + 2, lease=LEASE, limit=5)
    queue.mark_bounce_retry(queue_id, now=T0 + 3, at=T0 + 100, error="relay down")
    assert queue.next_bounce_due() == T0 + 100
    assert queue.claim_bounces(now=T0 + 99, lease=LEASE, limit=5) == []
    (job,) = queue.claim_bounces(now=T0 + 100, lease=LEASE, limit=5)
    assert job.attempts == 2
    # the bouncer died: after the lease the bounce is handed out again
    (again,) = queue.claim_bounces(now=T0 + 101 + LEASE, lease=LEASE, limit=5)
    assert again.attempts == 3
    queue.mark_bounce_sent(queue_id, now=T0 + 500)
    assert queue.get(queue_id).bounce_state == "sent"
    assert queue.next_bounce_due() is None


def test_give_up_fails_waiting_recipients_and_owes_the_bounce(queue: Queue) -> None:
    queue_id = queue.enqueue(msg(A, B))
    _lease_all(queue)
    queue.mark_retry(queue_id, [A, B], now=T0 + 1, at=T0 + 60, error="HTTP 503")
    assert queue.give_up(queue_id, now=T0 + 2, reason="cancelled by the administrator") == 2
    (job,) = queue.claim_bounces(now=T0 + 2, lease=LEASE, limit=5)
    assert {f.reason for f in job.failed} == {
        "cancelled by the administrator (last error: HTTP 503)"
    }
    assert queue.claim(now=T0 + 100, lease=LEASE, limit=5) == []
    with pytest.raises(NotFoundError):
        queue.give_up("0000000000000000", now=T0, reason="x")


def test_give_up_leaves_a_live_send_to_finish(queue: Queue) -> None:
    queue_id = queue.enqueue(msg(A))
    _lease_all(queue)  # a worker is sending right now
    assert queue.give_up(queue_id, now=T0 + 1, reason="cancelled") == 0
    queue.mark_sent(queue_id, [A], now=T0 + 2)
    assert queue.get(queue_id).state == "sent"


def test_give_up_during_a_send_that_then_fails_transiently_fails_it(queue: Queue) -> None:
    queue_id = queue.enqueue(msg(A))
    _lease_all(queue)
    assert queue.give_up(queue_id, now=T0 + 1, reason="cancelled") == 0
    queue.mark_retry(queue_id, [A], now=T0 + 2, at=T0 + 60, error="HTTP 503")
    (recipient,) = queue.get(queue_id).recipients
    assert recipient.state is RecipientState.FAILED
    assert recipient.last_error == "cancelled (last error: HTTP 503)"
    assert queue.get(queue_id).bounce_state == "pending"


def test_give_up_during_a_send_cut_by_a_crash_fails_it_at_recovery(queue: Queue) -> None:
    queue_id = queue.enqueue(msg(A))
    _lease_all(queue)
    queue.give_up(queue_id, now=T0 + 1, reason="cancelled")
    queue.recover(T0 + 2)
    assert queue.get(queue_id).recipients[0].state is RecipientState.FAILED
    assert queue.claim(now=T0 + 3, lease=LEASE, limit=5) == []
    (bounce,) = queue.claim_bounces(now=T0 + 3, lease=LEASE, limit=5)
    assert bounce.failed[0].reason == "cancelled"


def test_retry_now_all_makes_every_waiting_recipient_and_bounce_due(queue: Queue) -> None:
    first, second = queue.enqueue(msg(A)), queue.enqueue(msg(B))
    _lease_all(queue)
    queue.mark_retry(first, [A], now=T0 + 1, at=T0 + 900, error="busy")
    queue.mark_failed(second, [B], now=T0 + 1, error="refused")
    queue.claim_bounces(now=T0 + 1, lease=LEASE, limit=5)
    queue.mark_bounce_retry(second, now=T0 + 2, at=T0 + 900, error="relay down")
    assert queue.retry_now(None, now=T0 + 3) == 2
    assert queue.next_due() == T0 + 3
    assert queue.next_bounce_due() == T0 + 3


def test_prune_removes_only_old_settled_messages(queue: Queue) -> None:
    sent = queue.enqueue(msg(A))
    bouncing = queue.enqueue(msg(B))
    waiting = queue.enqueue(msg(C))
    _lease_all(queue)
    queue.mark_sent(sent, [A], now=T0 + 1)
    queue.mark_failed(bouncing, [B], now=T0 + 1, error="refused")
    queue.mark_retry(waiting, [C], now=T0 + 1, at=T0 + 5, error="busy")
    assert queue.prune(before=T0 + 1) == 0  # finished at T0+1, not before it
    assert queue.prune(before=T0 + 10) == 1  # the bounce is still owed: kept
    assert {e.id for e in queue.entries(include_finished=True)} == {bouncing, waiting}
    queue.claim_bounces(now=T0 + 11, lease=LEASE, limit=5)
    queue.mark_bounce_dropped(bouncing, now=T0 + 12, error="relay said 550")
    assert queue.prune(before=T0 + 20) == 1
    assert [e.id for e in queue.entries(include_finished=True)] == [waiting]


def test_a_version_1_queue_is_migrated_without_losing_rows(path: Path) -> None:
    path.parent.mkdir(parents=True)
    conn = sqlite3.connect(path)
    conn.executescript(
        """
        CREATE TABLE messages (id TEXT PRIMARY KEY, received_at REAL NOT NULL,
            envelope_from TEXT NOT NULL, from_header TEXT NOT NULL, subject TEXT NOT NULL,
            message_id TEXT, text TEXT NOT NULL, sender_id TEXT NOT NULL,
            size INTEGER NOT NULL, headers TEXT NOT NULL);
        CREATE TABLE recipients (queue_id TEXT NOT NULL REFERENCES messages (id)
            ON DELETE CASCADE, number TEXT NOT NULL, position INTEGER NOT NULL,
            state TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,
            next_attempt_at REAL NOT NULL, lease_until REAL, last_error TEXT,
            provider_ref TEXT, possible_duplicate INTEGER NOT NULL DEFAULT 0,
            updated_at REAL NOT NULL, PRIMARY KEY (queue_id, number));
        INSERT INTO messages VALUES ('1AAAAAAAAAAAAAAA', 1.0, 'a@example.com', 'a@example.com',
            's', NULL, 'old', 'Brand', 10, 'Subject: s');
        INSERT INTO messages VALUES ('1BBBBBBBBBBBBBBB', 2.0, 'a@example.com', 'a@example.com',
            's', NULL, 'done', 'Brand', 10, 'Subject: s');
        INSERT INTO recipients VALUES ('1AAAAAAAAAAAAAAA', '+61412345678', 0, 'pending', 0,
            1.0, NULL, NULL, NULL, 0, 1.0);
        INSERT INTO recipients VALUES ('1BBBBBBBBBBBBBBB', '+61412345678', 0, 'sent', 1,
            2.0, NULL, NULL, 'ref', 0, 2.0);
        PRAGMA user_version = 1;
        """
    )
    conn.close()
    with Queue(path) as queue:
        queue.recover(T0)  # the daemon's start settles what version 1 left unsettled
        (job,) = queue.claim(now=T0, lease=LEASE, limit=5)
        assert job.text == "old"
        assert queue.get("1BBBBBBBBBBBBBBB").finished_at == T0
        assert queue.prune(before=T0 + 1) == 1
    check = sqlite3.connect(path)
    try:
        assert check.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    finally:
        check.close()


def test_a_possible_duplicate_is_reported_by_one_claim_only(queue: Queue) -> None:
    queue_id = queue.enqueue(msg(A))
    _lease_all(queue)
    assert queue.recover(T0 + 1) == 1  # the daemon died mid-send
    (job,) = queue.claim(now=T0 + 1, lease=LEASE, limit=5)
    assert job.possible_duplicates == (A,)
    queue.mark_retry(queue_id, [A], now=T0 + 2, at=T0 + 3, error="busy")
    (again,) = queue.claim(now=T0 + 3, lease=LEASE, limit=5)
    assert again.possible_duplicates == ()
    assert queue.get(queue_id).recipients[0].possible_duplicate  # still shown to admins


def test_retrying_one_message_revives_its_dropped_bounce(queue: Queue) -> None:
    queue_id = queue.enqueue(msg(A))
    _lease_all(queue)
    queue.mark_failed(queue_id, [A], now=T0 + 1, error="refused")
    queue.claim_bounces(now=T0 + 1, lease=LEASE, limit=5)
    queue.mark_bounce_dropped(queue_id, now=T0 + 2, error="bounce.relay is empty")
    assert queue.retry_now(None, now=T0 + 3) == 0  # --all never revives dropped bounces
    assert queue.retry_now(queue_id, now=T0 + 3) == 1
    (job,) = queue.claim_bounces(now=T0 + 3, lease=LEASE, limit=5)
    assert job.queue_id == queue_id


def test_a_renewed_lease_is_not_claimed_again(queue: Queue) -> None:
    queue_id = queue.enqueue(msg(A, B))
    queue.claim(now=T0, lease=10, limit=5)
    queue.renew_lease(queue_id, [A, B], until=T0 + 100)
    assert queue.claim(now=T0 + 50, lease=10, limit=5) == []
    (again,) = queue.claim(now=T0 + 101, lease=10, limit=5)
    assert again.possible_duplicates == (A, B)


def test_a_development_version_2_queue_gets_the_version_3_columns(path: Path) -> None:
    with Queue(path) as queue:
        queue_id = queue.enqueue(msg(A))
    conn = sqlite3.connect(path)
    try:  # as a development build left it: version 2 with only one of the new columns
        conn.execute("DROP INDEX messages_message_id")
        conn.execute("ALTER TABLE messages DROP COLUMN sms_type")
        conn.execute("PRAGMA user_version = 2")
        conn.commit()
    finally:
        conn.close()
    with Queue(path) as queue:
        assert queue.get(queue_id).recipients[0].number == A
        second = queue.enqueue(replace(msg(B), sms_type="otp"))
        jobs = {job.queue_id: job for job in queue.claim(now=T0, lease=LEASE, limit=5)}
    assert jobs[second].sms_type == "otp"
    assert jobs[queue_id].sms_type == "plain"


# ---- group commit ----------------------------------------------------------------------


@pytest.mark.anyio
async def test_concurrent_enqueues_share_one_commit_and_get_their_own_ids(path: Path) -> None:
    aq = await AsyncQueue.open(path)
    try:
        before = aq._queue.commits
        n = 50
        results = await asyncio.gather(
            *(aq.enqueue_unless_duplicate(msg(A, text=f"alarm {i}"), since=None) for i in range(n))
        )
        # every enqueue was waiting before the first commit ran: one transaction, one fsync
        assert aq._queue.commits - before == 1
        ids = [queue_id for queue_id, duplicate in results if not duplicate]
        assert len(set(ids)) == n
        for i, queue_id in enumerate(ids):
            assert (await aq.get(queue_id)).text == f"alarm {i}"
    finally:
        await aq.close()
    with Queue(path) as q:  # committed: another connection sees every message
        assert len(q.entries()) == n


@pytest.mark.anyio
async def test_enqueues_arriving_during_a_commit_go_in_the_next_group(path: Path) -> None:
    aq = await AsyncQueue.open(path)
    try:
        before = aq._queue.commits
        first = asyncio.create_task(aq.enqueue(msg(A, text="first")))
        await asyncio.sleep(0)  # the first group (of one) is handed to the queue thread
        later = [asyncio.create_task(aq.enqueue(msg(A, text=f"later {i}"))) for i in range(20)]
        ids = await asyncio.gather(first, *later)
        assert len(set(ids)) == 21
        assert aq._queue.commits - before < 21
    finally:
        await aq.close()


@pytest.mark.anyio
async def test_a_failing_message_is_rolled_back_alone(path: Path) -> None:
    aq = await AsyncQueue.open(path)
    try:
        broken = replace(msg(A, text="broken"), recipients=(A, None))  # type: ignore[arg-type]
        outcomes = await asyncio.gather(
            aq.enqueue(msg(A, text="one")),
            aq.enqueue(broken),  # its message row is written, then its recipients fail
            aq.enqueue(replace(msg(A), recipients=())),
            aq.enqueue(msg(B, text="two")),
            return_exceptions=True,
        )
        one, failed, empty, two = outcomes
        assert isinstance(failed, QueueUnavailableError)
        assert "NOT NULL" in str(failed)
        assert isinstance(empty, ValueError)
        assert isinstance(one, str)
        assert isinstance(two, str)
        assert {e.text for e in await aq.entries()} == {"one", "two"}
    finally:
        await aq.close()
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT COUNT(*) FROM messages WHERE text = 'broken'").fetchone() == (0,)
    conn.close()


@pytest.mark.anyio
async def test_a_duplicate_in_the_same_group_is_found(path: Path) -> None:
    aq = await AsyncQueue.open(path)
    try:
        first, again = await asyncio.gather(
            aq.enqueue_unless_duplicate(msg(A, at=T0), since=T0 - 600),
            aq.enqueue_unless_duplicate(msg(A, at=T0 + 1), since=T0 - 599),
        )
        assert first == (first[0], False)
        assert again == (first[0], True)
    finally:
        await aq.close()


@pytest.mark.anyio
async def test_a_failed_commit_fails_every_caller_and_stores_nothing(path: Path) -> None:
    with Queue(path) as q:
        # A deferred foreign key is checked at COMMIT: one poisoned message fails the commit.
        q._conn.executescript(
            "CREATE TABLE parent (id INTEGER PRIMARY KEY);"
            "CREATE TABLE child (p INTEGER REFERENCES parent (id) DEFERRABLE INITIALLY DEFERRED);"
            "CREATE TRIGGER poison AFTER INSERT ON messages WHEN NEW.text = 'poison'"
            " BEGIN INSERT INTO child VALUES (42); END;"
        )
    aq = await AsyncQueue.open(path)
    try:
        outcomes = await asyncio.gather(
            aq.enqueue(msg(A, text="fine")),
            aq.enqueue(msg(A, text="poison")),
            aq.enqueue(msg(B, text="also fine")),
            return_exceptions=True,
        )
        assert all(isinstance(o, QueueUnavailableError) for o in outcomes), outcomes
        assert "FOREIGN KEY" in str(outcomes[0])
        assert await aq.entries() == []
        assert isinstance(await aq.enqueue(msg(A, text="after")), str)  # the queue still works
    finally:
        await aq.close()


def test_enqueue_group_commits_once_for_many(queue: Queue) -> None:
    before = queue.commits
    results = queue.enqueue_group([(msg(A, text=str(i)), None, None) for i in range(10)])
    assert queue.commits - before == 1
    assert all(isinstance(r, tuple) and r[1] is False for r in results)
    assert len(queue.entries()) == 10


def test_a_group_waits_in_short_steps_for_another_writer(path: Path) -> None:
    """With short_lock_waits a group keeps trying for the lock, and gets it once it is free."""
    with Queue(path) as other, Queue(path, short_lock_waits=True, any_thread=True) as q:
        other._conn.execute("BEGIN IMMEDIATE")  # another process's delivery, say
        results: list[object] = []
        stager = threading.Thread(
            target=lambda: results.extend(q.enqueue_group([(msg(A), None, None)]))
        )
        stager.start()
        deadline = time.monotonic() + 10
        while q.lock_waits < 3 and time.monotonic() < deadline:  # it is waiting, in steps
            time.sleep(0.001)
        assert q.lock_waits >= 3
        assert not results
        other._conn.execute("COMMIT")
        stager.join(10)
        assert [type(r) for r in results] == [tuple]
        assert len(q.entries()) == 1


def test_a_group_gives_up_on_a_lock_held_past_the_busy_timeout(path: Path) -> None:
    with Queue(path) as other, Queue(path, short_lock_waits=True, busy_timeout=0.05) as q:
        other._conn.execute("BEGIN IMMEDIATE")
        with pytest.raises(QueueUnavailableError, match="locked"):
            q.enqueue_group([(msg(A), None, None)])
        assert q.lock_waits > 1
        other._conn.execute("ROLLBACK")
        assert isinstance(q.enqueue_group([(msg(A), None, None)])[0], tuple)  # usable again
