"""The durable queue: SQLite in WAL mode, every write committed and fsynced before it returns.

A message is only acknowledged to the SMTP client once ``enqueue`` has returned, so nothing
accepted is lost. Delivery leases recipients (``claim``) instead of removing them: a worker
that dies leaves its rows ``inflight`` until the lease expires, and ``recover`` at start-up
hands every leftover lease out again. That makes delivery at-least-once; rows that may have
been sent before are marked ``possible_duplicate`` so the duplicate can be logged, once:
the next claim reports it (``ClaimedJob.possible_duplicates``) and marks it reported.

One recipient row moves through these states::

    pending ──claim──► inflight ──mark_sent──► sent
       ▲  │               │  └────mark_failed──► failed
       │  └──give_up──────┼───────────────────► failed
       └──mark_retry──────┘
       └──recover / lease expiry (possible_duplicate)

When the last recipient of a message leaves pending/inflight, the same transaction stamps
the message ``finished_at`` and, if any recipient failed and the envelope sender is not
empty, adds one row to ``bounces``: a bounce is owed exactly when the final outcome is
recorded, so a crash can neither lose it nor create it twice. Bounce rows move
``pending ──claim_bounces──► inflight ──► sent | dropped`` (retry puts them back to
pending). Finished messages whose bounce is settled are pruned after the retention time.

Queue ids are 16 characters of Crockford base32 (``0-9 A-Z`` without ``I L O U``): 9 for
the acceptance time in milliseconds since the epoch, 7 (35 bits) of randomness. They sort
by time as plain strings, need no quoting in a shell and read well in a log line, like
Postfix queue ids, e.g. ``1JXT21Q00BYAZEBT``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import re
import secrets
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal, ParamSpec, Self, TypeVar

from mail2sms.errors import NotFoundError, QueueUnavailableError, RateLimitedError
from mail2sms.limits import DAY, HOUR, Quota
from mail2sms.models import (
    BounceJob,
    ClaimedJob,
    FailedRecipient,
    NewMessage,
    RecipientState,
    is_contact_list,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
    from types import TracebackType

__all__ = [
    "QUEUE_ID_PATTERN",
    "AsyncQueue",
    "EntryState",
    "Queue",
    "QueueEntry",
    "RecipientStatus",
    "new_queue_id",
]

SCHEMA_VERSION = 4
DEFAULT_BUSY_TIMEOUT = 5.0  # seconds a writer waits for another connection's lock

_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"  # Crockford base32: no I, L, O, U
_TIME_CHARS = 9  # 45 bits of milliseconds: sortable until the year 3084
_RANDOM_CHARS = 7  # 35 bits: collisions within one millisecond are retried anyway
_ALPHABET_PAIRS = tuple(a + b for a in _ALPHABET for b in _ALPHABET)
QUEUE_ID_PATTERN = re.compile(r"[0-9A-HJKMNP-TV-Z]{16}")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    id            TEXT PRIMARY KEY,
    received_at   REAL NOT NULL,
    envelope_from TEXT NOT NULL,
    from_header   TEXT NOT NULL,
    subject       TEXT NOT NULL,
    message_id    TEXT,
    text          TEXT NOT NULL,
    sender_id     TEXT NOT NULL,
    size          INTEGER NOT NULL,
    headers       TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS recipients (
    queue_id           TEXT NOT NULL REFERENCES messages (id) ON DELETE CASCADE,
    number             TEXT NOT NULL,
    position           INTEGER NOT NULL,
    state              TEXT NOT NULL
                       CHECK (state IN ('pending', 'inflight', 'sent', 'failed')),
    attempts           INTEGER NOT NULL DEFAULT 0,
    next_attempt_at    REAL NOT NULL,
    lease_until        REAL,
    last_error         TEXT,
    provider_ref       TEXT,
    possible_duplicate INTEGER NOT NULL DEFAULT 0,  -- 1 may have been sent, 2 and reported
    updated_at         REAL NOT NULL,
    PRIMARY KEY (queue_id, number)
);
CREATE INDEX IF NOT EXISTS recipients_due ON recipients (state, next_attempt_at);
"""

# Version 2: why a recipient failed (RFC 3463 status), when a message finished, and the
# bounces owed to senders. Applied to new files too, after the version 1 schema.
_SCHEMA_V2 = """
ALTER TABLE recipients ADD COLUMN dsn_status TEXT;
ALTER TABLE messages ADD COLUMN finished_at REAL;
CREATE TABLE IF NOT EXISTS bounces (
    queue_id        TEXT PRIMARY KEY REFERENCES messages (id) ON DELETE CASCADE,
    state           TEXT NOT NULL CHECK (state IN ('pending', 'inflight', 'sent', 'dropped')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL,
    lease_until     REAL,
    last_error      TEXT,
    created_at      REAL NOT NULL,
    updated_at      REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS bounces_due ON bounces (state, next_attempt_at);
CREATE INDEX IF NOT EXISTS messages_finished ON messages (finished_at);
"""
# Version 3: administrator cancellation, the OTP route, duplicate lookup. Its columns were
# briefly part of version 2 during development, so they are added only where missing.
_V3_COLUMNS = {"cancelled": "TEXT", "sms_type": "TEXT NOT NULL DEFAULT 'plain'"}
_SCHEMA_V3 = """
CREATE INDEX IF NOT EXISTS messages_message_id ON messages (message_id, envelope_from);
"""
# Version 4: SMS queued per minute, by sender, by recipient and in all, for [limits] rates.
# Stored here so the counts survive a restart and move in the transaction that queues.
_SCHEMA_V4 = """
CREATE TABLE IF NOT EXISTS usage (
    scope  TEXT NOT NULL CHECK (scope IN ('sender', 'recipient', 'all')),
    key    TEXT NOT NULL,
    minute INTEGER NOT NULL,
    count  INTEGER NOT NULL,
    PRIMARY KEY (scope, key, minute)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS usage_minute ON usage (minute);
"""
_MIGRATIONS = {1: _SCHEMA, 2: _SCHEMA_V2, 3: _SCHEMA_V3, 4: _SCHEMA_V4}
_USED = "SELECT COALESCE(SUM(count), 0) FROM usage WHERE scope = ? AND key = ? AND minute > ?"
_COUNT_USE = """
INSERT INTO usage (scope, key, minute, count) VALUES (?, ?, ?, ?)
ON CONFLICT (scope, key, minute) DO UPDATE SET count = count + excluded.count
"""

# Run after every change of recipient state: if nothing of the message is left to send,
# stamp it finished and owe its sender one bounce when a recipient failed. Idempotent.
_FINISH = """
UPDATE messages SET finished_at = :now
WHERE id = :queue_id AND finished_at IS NULL
  AND NOT EXISTS (SELECT 1 FROM recipients
                  WHERE queue_id = :queue_id AND state IN ('pending', 'inflight'))
"""
_OWE_BOUNCE = """
INSERT OR IGNORE INTO bounces (queue_id, state, next_attempt_at, created_at, updated_at)
SELECT id, 'pending', :now, :now, :now FROM messages
WHERE id = :queue_id AND finished_at IS NOT NULL AND envelope_from != ''
  AND EXISTS (SELECT 1 FROM recipients WHERE queue_id = :queue_id AND state = 'failed')
"""
# At start-up, after the leases are released: settle what a crash (or an upgrade from
# schema 1) left unsettled. A cancelled message's released rows fail as the administrator
# asked; a message with nothing left to send is stamped finished and owes its bounce.
_REPAIR = (
    """
    UPDATE recipients SET state = 'failed', dsn_status = '5.0.0', updated_at = :now,
        last_error = (SELECT cancelled FROM messages WHERE id = recipients.queue_id)
    WHERE state = 'pending'
      AND queue_id IN (SELECT id FROM messages WHERE cancelled IS NOT NULL)
    """,
    """
    INSERT OR IGNORE INTO bounces (queue_id, state, next_attempt_at, created_at, updated_at)
    SELECT id, 'pending', :now, :now, :now FROM messages
    WHERE finished_at IS NULL AND envelope_from != ''
      AND NOT EXISTS (SELECT 1 FROM recipients
                      WHERE queue_id = messages.id AND state IN ('pending', 'inflight'))
      AND EXISTS (SELECT 1 FROM recipients WHERE queue_id = messages.id AND state = 'failed')
    """,
    """
    UPDATE messages SET finished_at = :now
    WHERE finished_at IS NULL
      AND NOT EXISTS (SELECT 1 FROM recipients
                      WHERE queue_id = messages.id AND state IN ('pending', 'inflight'))
    """,
)
_DUE_BOUNCES = """
SELECT queue_id, attempts, created_at FROM bounces
WHERE (state = 'pending' AND next_attempt_at <= :now)
   OR (state = 'inflight' AND lease_until < :now)
ORDER BY next_attempt_at LIMIT :limit
"""
_PRUNE = """
DELETE FROM messages
WHERE finished_at IS NOT NULL AND finished_at < :before
  AND NOT EXISTS (SELECT 1 FROM bounces
                  WHERE queue_id = messages.id AND state IN ('pending', 'inflight'))
"""

# Every statement is a literal (values always go in as parameters). A recipient is due when
# it waits and its time has come, or when the worker that leased it did not answer before
# the lease ran out (it died, or hangs).
# Due work, oldest first, read off the recipients_due index: a claim costs the same with
# 10 or 100,000 messages waiting (it runs under the write lock, which enqueues wait for).
# Leases that ran out (a crashed or stuck send) come first; each message is taken once.
_DUE_MESSAGES = """
SELECT queue_id FROM (
    SELECT queue_id, lease_until AS due, 0 AS kind FROM recipients
    WHERE state = 'inflight' AND lease_until < :now
    UNION ALL
    SELECT * FROM (
        SELECT queue_id, next_attempt_at AS due, 1 AS kind FROM recipients
        WHERE state = 'pending' AND next_attempt_at <= :now
        ORDER BY next_attempt_at LIMIT :scan
    )
) ORDER BY kind, due, queue_id
"""
_DUE_RECIPIENTS = """
SELECT number, attempts, (possible_duplicate = 1 OR state = 'inflight') AS maybe_sent
FROM recipients
WHERE queue_id = :queue_id
  AND ((state = 'pending' AND next_attempt_at <= :now)
       OR (state = 'inflight' AND lease_until < :now))
ORDER BY position
"""
_LEASE = """
UPDATE recipients
SET state = 'inflight', lease_until = :lease_until, attempts = attempts + 1, updated_at = :now,
    possible_duplicate = CASE WHEN possible_duplicate = 1 OR state = 'inflight' THEN 2
                              ELSE possible_duplicate END
WHERE queue_id = :queue_id
  AND ((state = 'pending' AND next_attempt_at <= :now)
       OR (state = 'inflight' AND lease_until < :now))
"""
# Due messages like a given one (same text, sender ID and type), to share its request.
# Candidates to share a request: the first ``scan`` due recipients (as ``_DUE_MESSAGES``),
# of messages with the same text, sender ID and type. Bounded, so a long queue of other
# texts costs no more than a short one; a message not looked at goes in a later request.
_DUE_ALIKE = """
SELECT DISTINCT due.queue_id AS id FROM (
    SELECT queue_id, next_attempt_at AS at FROM recipients
    WHERE state = 'pending' AND next_attempt_at <= :now
    ORDER BY next_attempt_at LIMIT :scan
) AS due JOIN messages AS m ON m.id = due.queue_id
WHERE m.text = :text AND m.sender_id = :sender_id AND m.sms_type = :sms_type
  AND m.id != :id AND m.cancelled IS NULL
ORDER BY due.at, due.queue_id
"""
_MESSAGE_COLUMNS = """
SELECT m.id, m.received_at, m.envelope_from, m.from_header, m.subject, m.message_id, m.text,
       m.sender_id, m.size, m.headers, m.finished_at, m.sms_type, b.state AS bounce_state,
       b.last_error AS bounce_error
FROM messages AS m LEFT JOIN bounces AS b ON b.queue_id = m.id
"""
_GET_MESSAGE = _MESSAGE_COLUMNS + "WHERE m.id = ?"
_ALL_MESSAGES = _MESSAGE_COLUMNS + "ORDER BY m.received_at, m.id"
_UNFINISHED = "m.finished_at IS NULL OR b.state IN ('pending', 'inflight')"
_UNFINISHED_MESSAGES = _MESSAGE_COLUMNS + f"WHERE {_UNFINISHED} ORDER BY m.received_at, m.id"
_RECIPIENT_COLUMNS = """
SELECT queue_id, number, state, attempts, next_attempt_at, last_error, provider_ref,
       updated_at, possible_duplicate, dsn_status
FROM recipients
"""
_GET_RECIPIENTS = _RECIPIENT_COLUMNS + "WHERE queue_id = ? ORDER BY position"
_ALL_RECIPIENTS = _RECIPIENT_COLUMNS + "ORDER BY queue_id, position"
_UNFINISHED_RECIPIENTS = (
    _RECIPIENT_COLUMNS  # noqa: S608  built from the constants above only
    + "WHERE queue_id IN (SELECT m.id FROM messages AS m LEFT JOIN bounces AS b"
    + f" ON b.queue_id = m.id WHERE {_UNFINISHED}) ORDER BY queue_id, position"
)

EntryState = Literal["pending", "sent", "failed", "partial"]


def new_queue_id(at: float) -> str:
    """Make a fresh queue id for a message accepted at ``at`` (see the module docstring)."""
    millis = max(0, int(at * 1000)) & ((1 << (5 * _TIME_CHARS)) - 1)
    value = (millis << (5 * _RANDOM_CHARS)) | secrets.randbits(5 * _RANDOM_CHARS)
    # 16 characters as 8 pairs (10 bits each), written out: a third of the cost of a loop
    p = _ALPHABET_PAIRS
    return (
        p[value >> 70]
        + p[(value >> 60) & 1023]
        + p[(value >> 50) & 1023]
        + p[(value >> 40) & 1023]
        + p[(value >> 30) & 1023]
        + p[(value >> 20) & 1023]
        + p[(value >> 10) & 1023]
        + p[value & 1023]
    )


@dataclass(frozen=True, slots=True)
class RecipientStatus:
    """Where one recipient of a queued message stands, for ``queue show`` and logs.

    ``possible_duplicate`` is set once a lease on this row was lost (crash, dead worker):
    the provider may have been given the SMS before, so a later send may be a duplicate.
    """

    number: str
    state: RecipientState
    attempts: int
    next_attempt_at: float
    last_error: str | None
    provider_ref: str | None
    updated_at: float
    possible_duplicate: bool = False
    dsn_status: str | None = None


@dataclass(frozen=True, slots=True)
class QueueEntry:
    """One queued message and its recipients, as the administration commands show it.

    ``id`` is the queue id (the messages table's key, what ``queue list`` prints).
    """

    id: str
    received_at: float
    envelope_from: str
    from_header: str
    subject: str
    message_id: str | None
    text: str
    sender_id: str
    size: int
    headers: str
    recipients: tuple[RecipientStatus, ...]
    finished_at: float | None = None
    bounce_state: str | None = None
    """``pending``/``inflight``/``sent``/``dropped`` once a bounce is owed, else None."""
    bounce_error: str | None = None

    @property
    def state(self) -> EntryState:
        """``pending`` while any recipient still waits, else how the message ended."""
        states = {r.state for r in self.recipients}
        if states & {RecipientState.PENDING, RecipientState.INFLIGHT}:
            return "pending"
        if states <= {RecipientState.SENT}:
            return "sent"
        if states == {RecipientState.FAILED}:
            return "failed"
        return "partial"


def _recipient(row: sqlite3.Row) -> RecipientStatus:
    return RecipientStatus(
        number=str(row["number"]),
        state=RecipientState(row["state"]),
        attempts=int(row["attempts"]),
        next_attempt_at=float(row["next_attempt_at"]),
        last_error=row["last_error"],
        provider_ref=row["provider_ref"],
        updated_at=float(row["updated_at"]),
        possible_duplicate=bool(row["possible_duplicate"]),
        dsn_status=row["dsn_status"],
    )


def _entry(row: sqlite3.Row, recipients: Sequence[RecipientStatus]) -> QueueEntry:
    return QueueEntry(
        id=str(row["id"]),
        received_at=float(row["received_at"]),
        envelope_from=str(row["envelope_from"]),
        from_header=str(row["from_header"]),
        subject=str(row["subject"]),
        message_id=row["message_id"],
        text=str(row["text"]),
        sender_id=str(row["sender_id"]),
        size=int(row["size"]),
        headers=str(row["headers"]),
        recipients=tuple(recipients),
        finished_at=row["finished_at"],
        bounce_state=row["bounce_state"],
        bounce_error=row["bounce_error"],
    )


def _finish(conn: sqlite3.Connection, queue_id: str, now: float) -> None:
    """Stamp the message finished and owe a bounce, if this change finished it."""
    params = {"queue_id": queue_id, "now": now}
    if conn.execute(_FINISH, params).rowcount:
        conn.execute(_OWE_BOUNCE, params)


def _same_message(
    conn: sqlite3.Connection, message: NewMessage, numbers: Sequence[str], since: float
) -> str | None:
    """The id of an earlier copy of ``message`` (see ``enqueue_unless_duplicate``)."""
    candidates = conn.execute(
        "SELECT id FROM messages WHERE message_id = ? AND envelope_from = ? AND text = ?"
        " AND sender_id = ? AND received_at >= ? ORDER BY received_at DESC",
        (message.message_id, message.envelope_from, message.text, message.sender_id, since),
    ).fetchall()
    for row in candidates:
        rows = conn.execute("SELECT number FROM recipients WHERE queue_id = ?", (row["id"],))
        if {r["number"] for r in rows} == set(numbers):
            return str(row["id"])
    return None


class _Tally:
    """The ``[limits]`` usage one transaction adds, written once at its end (``write``).

    A burst from one sender to one number adds to the same three buckets with every
    message; tallied here, a group commit writes each bucket once instead.
    """

    def __init__(self) -> None:
        self._counts: dict[tuple[str, str], dict[int, int]] = {}
        self._latest: float | None = None

    def check(
        self, conn: sqlite3.Connection, quota: Quota, numbers: Sequence[str], now: float
    ) -> list[tuple[str, str, int, int]]:
        """Check ``quota`` against the SMS queued in the sliding windows; what to ``add``.

        Minute buckets: a window is the last 60 (or 1440) whole minutes, so it slides a
        minute at a time. The counts are those stored and those tallied so far. Raises
        ``RateLimitedError`` and writes nothing (``Queue._stage_together`` relies on it).
        """
        minute = int(now // 60)
        hour_ago, day_ago = minute - int(HOUR // 60), minute - int(DAY // 60)

        def used(scope: str, key: str, since: int, limit: int) -> int:
            if not limit:
                return 0
            stored = int(conn.execute(_USED, (scope, key, since)).fetchone()[0])
            tallied = self._counts.get((scope, key), {})
            return stored + sum(count for at, count in tallied.items() if at > since)

        quota.check(
            numbers,
            sender_sent=used("sender", quota.sender_key, hour_ago, quota.per_sender_per_hour),
            recipient_sent={
                n: used("recipient", n, hour_ago, quota.per_recipient_per_hour) for n in numbers
            },
            day_sent=used("all", "", day_ago, quota.per_day),
        )
        return [
            ("sender", quota.sender_key, minute, len(numbers)),
            ("all", "", minute, len(numbers)),
            *(("recipient", n, minute, 1) for n in numbers),
        ]

    def add(self, counts: list[tuple[str, str, int, int]], now: float) -> None:
        """Count a message that is written (what ``check`` returned for it)."""
        for scope, key, minute, count in counts:
            bucket = self._counts.setdefault((scope, key), {})
            bucket[minute] = bucket.get(minute, 0) + count
        self._latest = now if self._latest is None else max(self._latest, now)

    def write(self, conn: sqlite3.Connection) -> None:
        """Store the counts, and drop the buckets older than any window (a day)."""
        if self._latest is None:
            return
        day_ago = int(self._latest // 60) - int(DAY // 60)
        conn.execute("DELETE FROM usage WHERE minute <= ?", (day_ago,))
        conn.executemany(
            _COUNT_USE,
            [
                (scope, key, minute, count)
                for (scope, key), bucket in self._counts.items()
                for minute, count in bucket.items()
            ],
        )


Written = tuple[str, bool] | Exception
"""What became of one message of a group: (queue id, duplicate) or why it was not written."""


def _check_recipients(message: NewMessage) -> None:
    if not message.recipients:
        raise ValueError("a queued message needs at least one recipient")


def _lease_job(conn: sqlite3.Connection, queue_id: str, *, now: float, lease: float) -> ClaimedJob:
    """Lease one message's due recipients; the job a worker sends."""
    params = {"queue_id": queue_id, "now": now, "lease_until": now + lease}
    due = conn.execute(_DUE_RECIPIENTS, params).fetchall()
    conn.execute(_LEASE, params)
    message = conn.execute(_GET_MESSAGE, (queue_id,)).fetchone()
    return ClaimedJob(
        queue_id=queue_id,
        recipients=tuple(str(row["number"]) for row in due),
        text=str(message["text"]),
        sender_id=str(message["sender_id"]),
        envelope_from=str(message["envelope_from"]),
        subject=str(message["subject"]),
        received_at=float(message["received_at"]),
        attempts=max(int(row["attempts"]) for row in due) + 1,
        possible_duplicates=tuple(str(row["number"]) for row in due if row["maybe_sent"]),
        sms_type=str(message["sms_type"]),
        lease_until=now + lease,
    )


def _require(conn: sqlite3.Connection, queue_id: str) -> None:
    if conn.execute("SELECT 1 FROM messages WHERE id = ?", (queue_id,)).fetchone() is None:
        raise NotFoundError(f"no queued message with id {queue_id}")


def _bounce_job(
    message: sqlite3.Row, recipients: Sequence[sqlite3.Row], bounce: sqlite3.Row
) -> BounceJob:
    failed = tuple(
        FailedRecipient(
            number=str(r["number"]),
            status=str(r["dsn_status"] or "5.0.0"),
            reason=str(r["last_error"] or "refused"),
            attempts=int(r["attempts"]),
            last_attempt_at=float(r["updated_at"]),
        )
        for r in recipients
        if r["state"] == RecipientState.FAILED
    )
    return BounceJob(
        queue_id=str(message["id"]),
        envelope_from=str(message["envelope_from"]),
        from_header=str(message["from_header"]),
        subject=str(message["subject"]),
        message_id=message["message_id"],
        received_at=float(message["received_at"]),
        text=str(message["text"]),
        headers=str(message["headers"]),
        failed=failed,
        delivered=tuple(str(r["number"]) for r in recipients if r["state"] == "sent"),
        attempts=int(bounce["attempts"]) + 1,  # this claim's attempt
        owed_since=float(bounce["created_at"]),
    )


def _fsync_dir(directory: Path) -> None:
    """Make a newly created database file's directory entry survive a power cut."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_SCAN_PER_CLAIM = 4
"""Due recipients read per message wanted (messages with several due numbers use more)."""
MAX_ALIKE_SCAN = 256
"""Messages looked at (times ``_SCAN_PER_CLAIM`` recipients) to fill one shared request."""


def _first_distinct(rows: Iterable[sqlite3.Row], limit: int) -> list[str]:
    """The first ``limit`` different queue ids, in order."""
    ids: dict[str, None] = {}
    for row in rows:
        ids[str(row[0])] = None
        if len(ids) >= limit:
            break
    return list(ids)


class Queue:
    """The queue database, through one sqlite3 connection used from one thread.

    Several instances (the daemon and ``mail2sms queue …``) may use the same file at once:
    WAL lets readers run beside the writer, and writers wait up to ``busy_timeout`` for
    each other before giving up with ``QueueUnavailableError``.
    """

    def __init__(
        self,
        path: Path,
        *,
        busy_timeout: float = DEFAULT_BUSY_TIMEOUT,
        any_thread: bool = False,
        short_lock_waits: bool = False,
    ) -> None:
        """Open (and create or migrate) the queue file.

        ``any_thread``: the connection may be used from several threads, one at a time (the
        caller keeps them apart), as the reader process stages on one and commits on another.
        ``short_lock_waits``: a group waits for another process's write lock in steps of at
        most a millisecond (``_begin_group``), for a caller whose clients wait on each group.
        """
        self.path = Path(path)
        self.commits = 0
        """Write transactions committed (each one fsync): the benchmark and tests read it."""
        self.lock_waits = 0
        """Times a group found the write lock taken and waited (``short_lock_waits``)."""
        self._busy_timeout = busy_timeout
        self._short_lock_waits = short_lock_waits
        with self._guard("cannot be opened"):
            self.path.parent.mkdir(parents=True, exist_ok=True)
            created = not self.path.exists()
            self._conn = sqlite3.connect(
                self.path,
                timeout=busy_timeout,
                isolation_level=None,
                check_same_thread=not any_thread,
            )
        try:
            with self._guard("cannot be opened"):
                self._setup()
                if created:
                    _fsync_dir(self.path.parent)
                if short_lock_waits:  # _begin_group waits instead of SQLite
                    self._conn.execute("PRAGMA busy_timeout = 0")
        except BaseException:
            self._conn.close()
            raise

    def _setup(self) -> None:
        # sqlite3.connect(timeout=...) already set the busy timeout that lets the daemon
        # and the CLI wait for each other's locks.
        conn = self._conn
        conn.row_factory = sqlite3.Row
        # FULL fsyncs the WAL on every commit: a returned enqueue survives a power cut.
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute("PRAGMA foreign_keys = ON")
        conn.execute("PRAGMA journal_mode = WAL")
        # Only a new file takes the write lock: the CLI must open beside a busy daemon.
        if self._schema_version() == SCHEMA_VERSION:
            return
        with self._transaction():
            # another process may have migrated meanwhile: read the version again
            for version in range(self._schema_version() + 1, SCHEMA_VERSION + 1):
                if version == 3:  # noqa: PLR2004  the version that adds columns if missing
                    have = {row[1] for row in conn.execute("PRAGMA table_info(messages)")}
                    for column, kind in _V3_COLUMNS.items():
                        if column not in have:
                            conn.execute(f"ALTER TABLE messages ADD COLUMN {column} {kind}")
                for statement in _MIGRATIONS[version].split(";"):
                    if statement.strip():
                        conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {version}")

    def _schema_version(self) -> int:
        version = int(self._conn.execute("PRAGMA user_version").fetchone()[0])
        if version > SCHEMA_VERSION:
            raise QueueUnavailableError(
                f"queue {self.path} has schema version {version}; this mail2sms "
                f"understands up to {SCHEMA_VERSION} (was it written by a newer version?)"
            )
        return version

    def close(self) -> None:
        """Close the connection; the last one to close checkpoints the WAL."""
        with self._guard("cannot be closed"):
            self._conn.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @contextlib.contextmanager
    def _guard(self, what: str = "is unavailable") -> Iterator[None]:
        """Turn database and disk errors into the one error callers handle (451 at SMTP)."""
        try:
            yield
        except sqlite3.Error as exc:
            raise QueueUnavailableError(f"queue {self.path} {what}: {exc}") from exc
        except OSError as exc:
            reason = exc.strerror or str(exc)
            if exc.filename is not None and exc.filename != str(self.path):
                reason = f"{reason}: {exc.filename}"
            raise QueueUnavailableError(f"queue {self.path} {what}: {reason}") from exc

    @contextlib.contextmanager
    def _transaction(self, *, write: bool = True) -> Iterator[sqlite3.Connection]:
        """One transaction, committed on success and rolled back on any error.

        Writes take the write lock up front (IMMEDIATE), so what a claim reads is still
        true when it updates: two claimers never lease the same recipient. Reads get one
        consistent snapshot across their statements.
        """
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
        try:
            yield conn
            conn.execute("COMMIT")
            if write:
                self.commits += 1
        except BaseException:
            self._rollback()
            raise

    def _rollback(self) -> None:
        """End a failed transaction, if SQLite has not already rolled it back itself."""
        if self._conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                self._conn.execute("ROLLBACK")

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        with self._guard(), self._transaction() as conn:
            yield conn

    @contextlib.contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        with self._guard(), self._transaction(write=False) as conn:
            yield conn

    # ---- the message path -------------------------------------------------------------

    def enqueue(self, message: NewMessage) -> str:
        """Store a message and one pending recipient per number; durable once it returns."""
        return self.enqueue_unless_duplicate(message, since=None)[0]

    def enqueue_unless_duplicate(
        self, message: NewMessage, *, since: float | None, quota: Quota | None = None
    ) -> tuple[str, bool]:
        """Like ``enqueue``, unless the very same message came after ``since``.

        Mail servers send a message again when our 250 was lost; the second copy must not
        become a second SMS. "The same" is: same envelope sender and Message-ID, *and* the
        same text to the same numbers, because a Message-ID alone is reused by devices and
        shared by the transactions a server splits one mail into. Returns the queue id (the
        earlier one for a duplicate) and whether it was a duplicate; one transaction.

        With a ``quota``, the message is counted against the ``[limits]`` rates in the same
        transaction (``RateLimitedError`` when over one, and nothing is stored or counted);
        ``received_at`` is the time the sliding windows are measured from. A duplicate is
        not counted: nothing more is sent for it.
        """
        _check_recipients(message)
        with self._write() as conn:
            tally = _Tally()
            result = self._enqueue_in(conn, message, since, quota, tally)
            tally.write(conn)
            return result

    def enqueue_group(
        self, items: Sequence[tuple[NewMessage, float | None, Quota | None]]
    ) -> list[tuple[str, bool] | Exception]:
        """Enqueue several messages in ONE transaction: one commit, one fsync for all.

        This is the group commit behind ``AsyncQueue``: one message that fails (a refusal,
        a database error) is rolled back alone and its slot in the result holds the
        exception; the others keep their ids. Nothing is durable before the COMMIT, so if
        that fails this raises and no caller may say 250.
        """
        results = self._stage_group(items)
        self._commit_staged()
        return results

    def _stage_group(
        self, items: Sequence[tuple[NewMessage, float | None, Quota | None]]
    ) -> list[tuple[str, bool] | Exception]:
        """``enqueue_group`` up to its COMMIT (see ``StagedGroup``).

        Raises, rolled back, if SQLite gives up the whole transaction.
        """
        conn = self._conn
        try:
            with self._guard():
                self._begin_group()
                try:
                    return self._stage_together(conn, items)
                except Exception:
                    if not conn.in_transaction:
                        raise  # SQLite gave up the whole transaction: none of it is stored
                    conn.execute("ROLLBACK")  # and again, each message in a savepoint
                self._begin_group()
                return self._stage_apart(conn, items)
        except BaseException:
            self._rollback()
            raise

    def _begin_group(self) -> None:
        """BEGIN IMMEDIATE; with ``short_lock_waits``, waiting for the lock in short steps.

        SQLite's own wait sleeps 1, 2, 5, 10, 15, 20, 25 ms and on between tries: a reader
        process that finds the daemon's delivery in a write transaction (a millisecond or
        two) would hold its clients' 250 for 10 to 50 ms. Here it tries again every 0.1 ms
        at first, every 1 ms at most, and gives up after ``busy_timeout`` as SQLite would.
        """
        if not self._short_lock_waits:
            self._conn.execute("BEGIN IMMEDIATE")
            return
        deadline = time.monotonic() + self._busy_timeout
        pause = 0.0001
        while True:
            try:
                self._conn.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as exc:
                busy = exc.sqlite_errorcode & 0xFF == sqlite3.SQLITE_BUSY  # BUSY_RECOVERY too
                if not busy or time.monotonic() > deadline:
                    raise
            else:
                return
            self.lock_waits += 1
            time.sleep(pause)
            pause = min(pause * 2, 0.001)

    def _stage_together(
        self,
        conn: sqlite3.Connection,
        items: Sequence[tuple[NewMessage, float | None, Quota | None]],
    ) -> list[tuple[str, bool] | Exception]:
        """Write each message in the open transaction; raise at the first failure.

        The usual case, without a savepoint per message (two statements each). The
        refusals are not failures: both come before a message writes anything.
        """

        def write(message: NewMessage, since: float | None, quota: Quota | None) -> Written:
            try:
                return self._enqueue_in(conn, message, since, quota, tally)
            except RateLimitedError as exc:
                return exc

        tally = _Tally()
        return self._stage_each(conn, items, tally, write)

    def _stage_apart(
        self,
        conn: sqlite3.Connection,
        items: Sequence[tuple[NewMessage, float | None, Quota | None]],
    ) -> list[tuple[str, bool] | Exception]:
        """Write each message in a savepoint of its own: a failure takes only its message."""

        def write(message: NewMessage, since: float | None, quota: Quota | None) -> Written:
            conn.execute("SAVEPOINT enqueue")
            try:
                with self._guard():
                    return self._enqueue_in(conn, message, since, quota, tally)
            except Exception as exc:
                if not conn.in_transaction:
                    raise  # SQLite gave up the whole transaction: none of it is stored
                conn.execute("ROLLBACK TO enqueue")
                return exc
            finally:
                if conn.in_transaction:
                    conn.execute("RELEASE enqueue")

        tally = _Tally()
        return self._stage_each(conn, items, tally, write)

    @staticmethod
    def _stage_each(
        conn: sqlite3.Connection,
        items: Sequence[tuple[NewMessage, float | None, Quota | None]],
        tally: _Tally,
        write: Callable[[NewMessage, float | None, Quota | None], Written],
    ) -> list[Written]:
        """``write`` each message that has recipients, then the group's usage counts."""
        results: list[Written] = []
        for message, since, quota in items:
            try:
                _check_recipients(message)
            except ValueError as exc:
                results.append(exc)
                continue
            results.append(write(message, since, quota))
        tally.write(conn)
        return results

    def _commit_staged(self) -> None:
        """Commit what ``_stage_group`` staged: one fsync; rolled back and raised if it fails."""
        try:
            with self._guard():
                self._conn.execute("COMMIT")
        except BaseException:
            self._rollback()
            raise
        self.commits += 1

    def _enqueue_in(
        self,
        conn: sqlite3.Connection,
        message: NewMessage,
        since: float | None,
        quota: Quota | None,
        tally: _Tally,
    ) -> tuple[str, bool]:
        """The body of ``enqueue_unless_duplicate``, inside a transaction already open.

        Its usage goes to ``tally`` once the message is written, for the caller to write.
        """
        numbers = list(dict.fromkeys(message.recipients))
        now = message.received_at
        if since is not None and message.message_id:
            earlier = _same_message(conn, message, numbers, since)
            if earlier is not None:
                return earlier, True
        counts = None if quota is None else tally.check(conn, quota, numbers, now)
        for _ in range(5):
            queue_id = new_queue_id(now)
            try:
                conn.execute(
                    "INSERT INTO messages (id, received_at, envelope_from, from_header,"
                    " subject, message_id, text, sender_id, size, headers, sms_type)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        queue_id,
                        now,
                        message.envelope_from,
                        message.from_header,
                        message.subject,
                        message.message_id,
                        message.text,
                        message.sender_id,
                        message.size,
                        message.headers,
                        message.sms_type,
                    ),
                )
                break
            except sqlite3.IntegrityError:
                continue  # the same id in the same millisecond: draw again
        else:
            raise QueueUnavailableError(f"queue {self.path}: no unused queue id found")
        conn.executemany(
            "INSERT INTO recipients (queue_id, number, position, state, next_attempt_at,"
            " updated_at) VALUES (?, ?, ?, 'pending', ?, ?)",
            [(queue_id, number, i, now, now) for i, number in enumerate(numbers)],
        )
        if counts is not None:
            tally.add(counts, now)
        return queue_id, False

    def recover(self, now: float) -> int:
        """At start-up, release every lease the last run left behind (bounces too).

        Returns how many recipients were in flight.

        No worker of this process holds a lease yet, so every inflight row belonged to a
        run that stopped without recording an outcome; it may or may not have been sent.
        """
        with self._write() as conn:
            cursor = conn.execute(
                "UPDATE recipients SET state = 'pending', next_attempt_at = ?,"
                " lease_until = NULL, possible_duplicate = 1, updated_at = ?"
                " WHERE state = 'inflight'",
                (now, now),
            )
            conn.execute(
                "UPDATE bounces SET state = 'pending', next_attempt_at = ?, lease_until = NULL,"
                " updated_at = ? WHERE state = 'inflight'",
                (now, now),
            )
            for statement in _REPAIR:
                conn.execute(statement, {"now": now})
            return cursor.rowcount

    def claim(self, *, now: float, lease: float, limit: int) -> list[ClaimedJob]:
        """Lease due recipients until ``now + lease``: one job per message, oldest first."""
        if limit <= 0:
            return []
        with self._write() as conn:
            ids = _first_distinct(
                conn.execute(_DUE_MESSAGES, {"now": now, "scan": _SCAN_PER_CLAIM * limit}), limit
            )
            return [_lease_job(conn, queue_id, now=now, lease=lease) for queue_id in ids]

    def claim_alike(
        self, job: ClaimedJob, *, room: int, now: float, lease: float
    ) -> list[ClaimedJob]:
        """Lease other due messages with ``job``'s text, sender ID and type, to share its request.

        A provider that takes one text to many numbers in one request (DataFlows: 100) can
        then send an alarm storm (the same text, one mail per person) in a fraction of the
        requests its rate limit allows. Only whole messages are taken, whose due numbers
        fit in ``room`` and are not already in the request (a provider removes repeated
        numbers, which would lose an SMS); contact lists are never combined.
        """
        if room <= 0:
            return []
        taken = set(job.recipients)
        jobs: list[ClaimedJob] = []
        params = {
            "now": now,
            "text": job.text,
            "sender_id": job.sender_id,
            "sms_type": job.sms_type,
            "id": job.queue_id,
            "scan": _SCAN_PER_CLAIM * MAX_ALIKE_SCAN,
        }
        with self._write() as conn:
            for row in conn.execute(_DUE_ALIKE, params).fetchmany(room):
                queue_id = str(row["id"])
                due_params = {"queue_id": queue_id, "now": now}
                numbers = [str(r["number"]) for r in conn.execute(_DUE_RECIPIENTS, due_params)]
                if (
                    not numbers
                    or len(numbers) > room
                    or taken.intersection(numbers)
                    or any(is_contact_list(n) for n in numbers)
                ):
                    continue
                jobs.append(_lease_job(conn, queue_id, now=now, lease=lease))
                taken.update(numbers)
                room -= len(numbers)
                if room <= 0:
                    break
        return jobs

    def next_due(self) -> float | None:
        """When the earliest pending recipient is due, so workers can sleep until then."""
        return self._earliest("SELECT MIN(next_attempt_at) FROM recipients WHERE state = 'pending'")

    def _earliest(self, query: str) -> float | None:
        with self._read() as conn:
            row = conn.execute(query).fetchone()
        return None if row[0] is None else float(row[0])

    def mark_sent(
        self,
        queue_id: str,
        recipients: Sequence[str],
        *,
        now: float,
        provider_refs: Mapping[str, str | None] | None = None,
    ) -> None:
        """Record that the provider took these recipients; rows not inflight are left alone."""
        self.mark_sent_many([(queue_id, recipients, provider_refs or {})], now=now)

    def mark_sent_many(
        self, sent: Sequence[tuple[str, Sequence[str], Mapping[str, str | None]]], *, now: float
    ) -> None:
        """``mark_sent`` for several messages (queue id, numbers, provider refs) at once.

        One request may carry a hundred messages with the same text: recording them in one
        transaction is one fsync and one turn of the write lock, which the reader of new
        mail would otherwise wait for a hundred times.
        """
        with self._write() as conn:
            for queue_id, recipients, refs in sent:
                conn.executemany(
                    "UPDATE recipients SET state = 'sent', lease_until = NULL, provider_ref = ?,"
                    " updated_at = ? WHERE queue_id = ? AND number = ? AND state = 'inflight'",
                    [(refs.get(number), now, queue_id, number) for number in recipients],
                )
                _finish(conn, queue_id, now)

    def renew_lease(self, queue_id: str, recipients: Sequence[str], *, until: float) -> None:
        """Keep in-flight recipients leased while a long message is still being worked on."""
        self.renew_leases([(queue_id, recipients)], until=until)

    def renew_leases(self, leases: Sequence[tuple[str, Sequence[str]]], *, until: float) -> None:
        """``renew_lease`` for several messages (queue id, numbers) in one transaction."""
        with self._write() as conn:
            conn.executemany(
                "UPDATE recipients SET lease_until = MAX(lease_until, ?)"
                " WHERE queue_id = ? AND number = ? AND state = 'inflight'",
                [(until, queue_id, number) for queue_id, numbers in leases for number in numbers],
            )

    def mark_retry(
        self, queue_id: str, recipients: Sequence[str], *, now: float, at: float, error: str
    ) -> None:
        """Put inflight recipients back to wait until ``at``, keeping why they failed.

        If ``queue bounce`` cancelled the message while they were being sent, they fail
        instead, as the administrator asked.
        """
        with self._write() as conn:
            row = conn.execute("SELECT cancelled FROM messages WHERE id = ?", (queue_id,))
            cancelled = (row.fetchone() or [None])[0]
            if cancelled is not None:
                conn.executemany(
                    "UPDATE recipients SET state = 'failed', lease_until = NULL,"
                    " dsn_status = '5.0.0', last_error = ?, updated_at = ?"
                    " WHERE queue_id = ? AND number = ? AND state = 'inflight'",
                    [(f"{cancelled} (last error: {error})", now, queue_id, n) for n in recipients],
                )
                _finish(conn, queue_id, now)
                return
            conn.executemany(
                "UPDATE recipients SET state = 'pending', next_attempt_at = ?,"
                " lease_until = NULL, last_error = ?, updated_at = ?"
                " WHERE queue_id = ? AND number = ? AND state = 'inflight'",
                [(at, error, now, queue_id, number) for number in recipients],
            )

    def mark_failed(
        self,
        queue_id: str,
        recipients: Sequence[str],
        *,
        now: float,
        error: str,
        status: str = "5.0.0",
    ) -> None:
        """Give up on inflight recipients for good, with the RFC 3463 status for the bounce."""
        with self._write() as conn:
            conn.executemany(
                "UPDATE recipients SET state = 'failed', lease_until = NULL, last_error = ?,"
                " dsn_status = ?, updated_at = ?"
                " WHERE queue_id = ? AND number = ? AND state = 'inflight'",
                [(error, status, now, queue_id, number) for number in recipients],
            )
            _finish(conn, queue_id, now)

    def give_up(self, queue_id: str, *, now: float, reason: str, status: str = "5.0.0") -> int:
        """Fail every waiting recipient now (``queue bounce``); returns how many.

        Recipients a worker is sending right now are left to finish; the bounce follows
        when they do.
        """
        with self._write() as conn:
            _require(conn, queue_id)
            conn.execute("UPDATE messages SET cancelled = ? WHERE id = ?", (reason, queue_id))
            cursor = conn.execute(
                "UPDATE recipients SET state = 'failed', dsn_status = ?, updated_at = ?,"
                " last_error = CASE WHEN last_error IS NULL THEN ?"
                " ELSE ? || ' (last error: ' || last_error || ')' END"
                " WHERE queue_id = ? AND (state = 'pending'"
                " OR (state = 'inflight' AND lease_until < ?))",
                (status, now, reason, reason, queue_id, now),
            )
            _finish(conn, queue_id, now)
            return cursor.rowcount

    # ---- bounces ---------------------------------------------------------------------

    def claim_bounces(self, *, now: float, lease: float, limit: int) -> list[BounceJob]:
        """Lease due bounces until ``now + lease``, each with what its DSN must say."""
        jobs: list[BounceJob] = []
        with self._write() as conn:
            due = conn.execute(_DUE_BOUNCES, {"now": now, "limit": limit}).fetchall()
            for row in due:
                queue_id = str(row["queue_id"])
                conn.execute(
                    "UPDATE bounces SET state = 'inflight', lease_until = ?,"
                    " attempts = attempts + 1, updated_at = ? WHERE queue_id = ?",
                    (now + lease, now, queue_id),
                )
                message = conn.execute(_GET_MESSAGE, (queue_id,)).fetchone()
                recipients = conn.execute(
                    "SELECT number, state, attempts, last_error, dsn_status, updated_at"
                    " FROM recipients WHERE queue_id = ? ORDER BY position",
                    (queue_id,),
                ).fetchall()
                jobs.append(_bounce_job(message, recipients, row))
        return jobs

    def oldest_pending(self) -> float | None:
        """When the oldest message that still has recipients to send was accepted."""
        return self._earliest(
            "SELECT MIN(received_at) FROM messages WHERE id IN (SELECT queue_id FROM"
            " recipients WHERE state IN ('pending', 'inflight'))"
        )

    def next_bounce_due(self) -> float | None:
        """When the earliest waiting bounce is due."""
        return self._earliest("SELECT MIN(next_attempt_at) FROM bounces WHERE state = 'pending'")

    def mark_bounce_sent(self, queue_id: str, *, now: float) -> None:
        """The relay took the bounce: it is settled."""
        self._settle_bounce(queue_id, "sent", now=now, error=None)

    def mark_bounce_dropped(self, queue_id: str, *, now: float, error: str) -> None:
        """The relay refused the bounce for good, or there is no relay: settled, not sent."""
        self._settle_bounce(queue_id, "dropped", now=now, error=error)

    def _settle_bounce(self, queue_id: str, state: str, *, now: float, error: str | None) -> None:
        with self._write() as conn:
            conn.execute(
                "UPDATE bounces SET state = ?, lease_until = NULL, last_error = ?,"
                " updated_at = ? WHERE queue_id = ? AND state = 'inflight'",
                (state, error, now, queue_id),
            )

    def mark_bounce_retry(self, queue_id: str, *, now: float, at: float, error: str) -> None:
        """The relay could not take the bounce now: try again at ``at``."""
        with self._write() as conn:
            conn.execute(
                "UPDATE bounces SET state = 'pending', next_attempt_at = ?, lease_until = NULL,"
                " last_error = ?, updated_at = ? WHERE queue_id = ? AND state = 'inflight'",
                (at, error, now, queue_id),
            )

    def prune(self, *, before: float) -> int:
        """Delete messages finished before ``before`` whose bounce is settled; how many."""
        with self._write() as conn:
            return conn.execute(_PRUNE, {"before": before}).rowcount

    # ---- administration (runs beside the daemon) --------------------------------------

    def get(self, queue_id: str) -> QueueEntry:
        """One message with its recipients; ``NotFoundError`` if there is none."""
        with self._read() as conn:
            message = conn.execute(_GET_MESSAGE, (queue_id,)).fetchone()
            recipients = [_recipient(row) for row in conn.execute(_GET_RECIPIENTS, (queue_id,))]
        if message is None:
            raise NotFoundError(f"no queued message with id {queue_id}")
        return _entry(message, recipients)

    def entries(self, *, include_finished: bool = False) -> list[QueueEntry]:
        """Messages still waiting (or all of them), oldest first."""
        with self._read() as conn:
            if include_finished:
                messages = conn.execute(_ALL_MESSAGES).fetchall()
                rows = conn.execute(_ALL_RECIPIENTS).fetchall()
            else:
                messages = conn.execute(_UNFINISHED_MESSAGES).fetchall()
                rows = conn.execute(_UNFINISHED_RECIPIENTS).fetchall()
        by_message: dict[str, list[RecipientStatus]] = {}
        for row in rows:
            by_message.setdefault(row["queue_id"], []).append(_recipient(row))
        return [_entry(m, by_message.get(m["id"], [])) for m in messages]

    def retry_now(self, queue_id: str | None, *, now: float) -> int:
        """Make waiting recipients and bounces due now (all when ``queue_id`` is None).

        For one message, a dropped bounce is owed again (after the relay was fixed).

        Returns how many recipients and bounces were made due.
        """
        with self._write() as conn:
            if queue_id is not None:
                _require(conn, queue_id)
            where = "state = 'pending'" + ("" if queue_id is None else " AND queue_id = :id")
            params = {"now": now, "id": queue_id}
            count = 0
            for table in ("recipients", "bounces"):
                count += conn.execute(
                    f"UPDATE {table} SET next_attempt_at = :now, updated_at = :now"  # noqa: S608  constant names
                    f" WHERE {where}",
                    params,
                ).rowcount
            if queue_id is not None:  # one message: a dropped bounce gets another chance
                count += conn.execute(
                    "UPDATE bounces SET state = 'pending', next_attempt_at = :now,"
                    " updated_at = :now WHERE queue_id = :id AND state = 'dropped'",
                    params,
                ).rowcount
            return count

    def delete(self, queue_id: str) -> None:  # a cascade removes its bounce too
        """Remove a message and its recipients; a worker holding it just finds nothing."""
        with self._write() as conn:
            if conn.execute("DELETE FROM messages WHERE id = ?", (queue_id,)).rowcount == 0:
                raise NotFoundError(f"no queued message with id {queue_id}")

    def counts(self) -> dict[str, int]:
        """Recipients per state (every state present, zero included) for logs and metrics."""
        result = {state.value: 0 for state in RecipientState}
        with self._read() as conn:
            for row in conn.execute("SELECT state, COUNT(*) FROM recipients GROUP BY state"):
                result[row[0]] = int(row[1])
        return result


_P = ParamSpec("_P")
_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class _Enqueue:
    """One enqueue waiting for the next group commit."""

    message: NewMessage
    since: float | None
    quota: Quota | None
    future: asyncio.Future[tuple[str, bool]]


MAX_GROUP = 256  # messages per group commit: bounds one transaction's time and size


class StagedGroup:
    """``Queue.enqueue_group`` split at its COMMIT, for a caller that commits on another thread.

    Made, the group's messages are written in an open transaction and ``results`` says
    what became of each; nothing is durable, and no caller may say 250, before ``commit``
    returned. Between the two the queue must not be used for anything else. The reader
    process stages on its reading thread and commits (the fsync, which runs without the
    GIL) on another while the next messages are read (``Queue(any_thread=True)``).
    """

    def __init__(
        self, queue: Queue, items: Sequence[tuple[NewMessage, float | None, Quota | None]]
    ) -> None:
        self._queue = queue
        self.results = queue._stage_group(items)  # noqa: SLF001  this module's own class

    def commit(self) -> None:
        """One COMMIT, one fsync; rolled back and raised (``QueueUnavailableError``) if not."""
        self._queue._commit_staged()  # noqa: SLF001


class AsyncQueue:
    """Runs every Queue call on ONE dedicated worker thread (sqlite3 connections are per-thread).

    The event loop never waits on a disk: each call is handed to the thread and awaited.
    If the awaiting task is cancelled, the call still runs to its end on the thread (a
    transaction is never cut in half); an enqueue may then commit without a 250 reply, which
    at worst duplicates the message when the client sends it again.

    Enqueues are committed in groups: while one commit (and its fsync) runs, the enqueues
    that arrive wait, and the next commit takes them all (``Queue.enqueue_group``). No
    timer holds a lone message back, so a quiet gateway still answers at one fsync's
    latency, and a busy one pays one fsync per group instead of one per message. Each
    caller is answered only after the commit that holds its message returned.
    """

    def __init__(self, queue: Queue, executor: ThreadPoolExecutor) -> None:
        """Use ``open``; this only wraps a Queue already built on ``executor``'s thread."""
        self._queue = queue
        self._executor = executor
        self._closed = False
        self._waiting: list[_Enqueue] = []
        self._committer: asyncio.Task[None] | None = None

    @classmethod
    async def open(cls, path: Path, *, busy_timeout: float = DEFAULT_BUSY_TIMEOUT) -> AsyncQueue:
        """Open the queue on a new worker thread; raises ``QueueUnavailableError``."""
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mail2sms-queue")
        loop = asyncio.get_running_loop()
        try:
            queue = await loop.run_in_executor(
                executor, functools.partial(Queue, path, busy_timeout=busy_timeout)
            )
        except BaseException:
            executor.shutdown(wait=False)
            raise
        return cls(queue, executor)

    async def _run(self, fn: Callable[_P, _T], *args: _P.args, **kwargs: _P.kwargs) -> _T:
        if self._closed:
            raise QueueUnavailableError(f"queue {self._queue.path} is closed")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(fn, *args, **kwargs))

    @property
    def path(self) -> Path:
        """The database file."""
        return self._queue.path

    async def close(self) -> None:
        """Commit what is waiting, close the connection on its thread, let the thread end."""
        if self._closed:
            return
        committer = self._committer
        if committer is not None:
            # a commit task cancelled at loop teardown must not keep the file open
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(committer)
        try:
            await self._run(self._queue.close)
        finally:
            self._closed = True
            self._executor.shutdown(wait=False)

    async def enqueue(self, message: NewMessage) -> str:
        """See ``Queue.enqueue``; committed together with concurrent enqueues."""
        return (await self.enqueue_unless_duplicate(message, since=None))[0]

    async def enqueue_group(
        self, items: Sequence[tuple[NewMessage, float | None, Quota | None]]
    ) -> list[tuple[str, bool] | Exception]:
        """See ``Queue.enqueue_group``."""
        return await self._run(self._queue.enqueue_group, items)

    async def enqueue_unless_duplicate(
        self, message: NewMessage, *, since: float | None, quota: Quota | None = None
    ) -> tuple[str, bool]:
        """See ``Queue.enqueue_unless_duplicate``; committed together with concurrent ones."""
        if self._closed:
            raise QueueUnavailableError(f"queue {self._queue.path} is closed")
        future: asyncio.Future[tuple[str, bool]] = asyncio.get_running_loop().create_future()
        self._waiting.append(_Enqueue(message, since, quota, future))
        if self._committer is None:
            self._committer = asyncio.create_task(self._commit_groups(), name="queue-commit")
        return await future

    async def _commit_groups(self) -> None:
        """Commit the waiting enqueues, a group at a time, until none wait."""
        group: list[_Enqueue] = []
        try:
            while self._waiting:
                group, self._waiting = self._waiting[:MAX_GROUP], self._waiting[MAX_GROUP:]
                items = [(item.message, item.since, item.quota) for item in group]
                try:
                    results = await self._run(self._queue.enqueue_group, items)
                except asyncio.CancelledError:
                    for item in group + self._waiting:  # the loop is going away: no answers
                        item.future.cancel()
                    self._waiting = []
                    raise
                except Exception as exc:  # noqa: BLE001  the commit failed: nobody gets a 250
                    for item in group:
                        if not item.future.done():
                            item.future.set_exception(exc)
                    continue
                for item, result in zip(group, results, strict=True):
                    if item.future.done():  # the caller went away; its message is stored
                        continue
                    if isinstance(result, Exception):
                        item.future.set_exception(result)
                    else:
                        item.future.set_result(result)
        finally:
            self._committer = None

    async def recover(self, now: float) -> int:
        """See ``Queue.recover``."""
        return await self._run(self._queue.recover, now)

    async def claim(self, *, now: float, lease: float, limit: int) -> list[ClaimedJob]:
        """See ``Queue.claim``."""
        return await self._run(self._queue.claim, now=now, lease=lease, limit=limit)

    async def claim_alike(
        self, job: ClaimedJob, *, room: int, now: float, lease: float
    ) -> list[ClaimedJob]:
        """See ``Queue.claim_alike``."""
        return await self._run(self._queue.claim_alike, job, room=room, now=now, lease=lease)

    async def next_due(self) -> float | None:
        """See ``Queue.next_due``."""
        return await self._run(self._queue.next_due)

    async def mark_sent(
        self,
        queue_id: str,
        recipients: Sequence[str],
        *,
        now: float,
        provider_refs: Mapping[str, str | None] | None = None,
    ) -> None:
        """See ``Queue.mark_sent``."""
        await self._run(
            self._queue.mark_sent, queue_id, recipients, now=now, provider_refs=provider_refs
        )

    async def mark_sent_many(
        self, sent: Sequence[tuple[str, Sequence[str], Mapping[str, str | None]]], *, now: float
    ) -> None:
        """See ``Queue.mark_sent_many``."""
        await self._run(self._queue.mark_sent_many, sent, now=now)

    async def renew_lease(self, queue_id: str, recipients: Sequence[str], *, until: float) -> None:
        """See ``Queue.renew_lease``."""
        await self._run(self._queue.renew_lease, queue_id, recipients, until=until)

    async def renew_leases(
        self, leases: Sequence[tuple[str, Sequence[str]]], *, until: float
    ) -> None:
        """See ``Queue.renew_leases``."""
        await self._run(self._queue.renew_leases, leases, until=until)

    async def mark_retry(
        self, queue_id: str, recipients: Sequence[str], *, now: float, at: float, error: str
    ) -> None:
        """See ``Queue.mark_retry``."""
        await self._run(self._queue.mark_retry, queue_id, recipients, now=now, at=at, error=error)

    async def mark_failed(
        self,
        queue_id: str,
        recipients: Sequence[str],
        *,
        now: float,
        error: str,
        status: str = "5.0.0",
    ) -> None:
        """See ``Queue.mark_failed``."""
        await self._run(
            self._queue.mark_failed, queue_id, recipients, now=now, error=error, status=status
        )

    async def give_up(
        self, queue_id: str, *, now: float, reason: str, status: str = "5.0.0"
    ) -> int:
        """See ``Queue.give_up``."""
        return await self._run(self._queue.give_up, queue_id, now=now, reason=reason, status=status)

    async def claim_bounces(self, *, now: float, lease: float, limit: int) -> list[BounceJob]:
        """See ``Queue.claim_bounces``."""
        return await self._run(self._queue.claim_bounces, now=now, lease=lease, limit=limit)

    async def oldest_pending(self) -> float | None:
        """See ``Queue.oldest_pending``."""
        return await self._run(self._queue.oldest_pending)

    async def next_bounce_due(self) -> float | None:
        """See ``Queue.next_bounce_due``."""
        return await self._run(self._queue.next_bounce_due)

    async def mark_bounce_sent(self, queue_id: str, *, now: float) -> None:
        """See ``Queue.mark_bounce_sent``."""
        await self._run(self._queue.mark_bounce_sent, queue_id, now=now)

    async def mark_bounce_dropped(self, queue_id: str, *, now: float, error: str) -> None:
        """See ``Queue.mark_bounce_dropped``."""
        await self._run(self._queue.mark_bounce_dropped, queue_id, now=now, error=error)

    async def mark_bounce_retry(self, queue_id: str, *, now: float, at: float, error: str) -> None:
        """See ``Queue.mark_bounce_retry``."""
        await self._run(self._queue.mark_bounce_retry, queue_id, now=now, at=at, error=error)

    async def prune(self, *, before: float) -> int:
        """See ``Queue.prune``."""
        return await self._run(self._queue.prune, before=before)

    async def get(self, queue_id: str) -> QueueEntry:
        """See ``Queue.get``."""
        return await self._run(self._queue.get, queue_id)

    async def entries(self, *, include_finished: bool = False) -> list[QueueEntry]:
        """See ``Queue.entries``."""
        return await self._run(self._queue.entries, include_finished=include_finished)

    async def retry_now(self, queue_id: str | None, *, now: float) -> int:
        """See ``Queue.retry_now``."""
        return await self._run(self._queue.retry_now, queue_id, now=now)

    async def delete(self, queue_id: str) -> None:
        """See ``Queue.delete``."""
        await self._run(self._queue.delete, queue_id)

    async def counts(self) -> dict[str, int]:
        """See ``Queue.counts``."""
        return await self._run(self._queue.counts)
