"""``smtp.reader``: mail read and committed in a second process, over real sockets.

A real SMTP client talks to the daemon, which hands each message to a real reader process
(``python -m mail2sms.reader_process``) on the same SQLite file.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import pickle
import re
import signal
import socket
import struct
import sys
import threading
import time

import pytest
from conftest import ALLOWED, GATEWAY, poll, read_outbox
from test_smtp import make_mail, transaction

from mail2sms import reader_process
from mail2sms.errors import QueueUnavailableError
from mail2sms.queue import Queue
from mail2sms.reader_process import SpillReader
from mail2sms.smtp import Built, Client, Outcome, Policy, Submission, read_submission

pytestmark = pytest.mark.anyio


def spill(app) -> SpillReader:
    assert isinstance(app.reader, SpillReader)
    return app.reader


async def ready_process(app):
    """Wait for the reader process to be running; return its handle."""
    reader = spill(app)
    return await poll(lambda: reader.process if reader.process and reader.process.ready else None)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def test_the_process_reads_stores_and_answers(make_settings, start_app, tmp_path):
    app = await start_app(make_settings(smtp={"reader": "process"}))
    process = await ready_process(app)
    replies = await transaction(app.smtp_port, ALLOWED, [GATEWAY], make_mail())
    code, text = replies[-1]
    assert code == 250
    assert re.fullmatch(r"2\.0\.0 queued as \S+", text)
    assert process.answered == 1  # read there, not in a thread
    sms = await poll(lambda: read_outbox(tmp_path / "outbox.jsonl"))
    assert sms[0]["to"] == "+61412345678"
    assert sms[0]["text"] == "Server room temperature is 31 C"
    assert app.metrics.accepted._value.get() == 1  # counted by the daemon


async def test_a_refusal_in_the_process_reaches_the_client(make_settings, start_app):
    app = await start_app(make_settings(smtp={"reader": "process"}))
    process = await ready_process(app)
    replies = await transaction(app.smtp_port, ALLOWED, [GATEWAY], make_mail(body="   "))
    code, text = replies[-1]
    assert code == 550
    assert "no text to send" in text
    assert process.answered == 1


async def test_a_reload_reaches_the_process(make_settings, start_app):
    # The From line is checked only at DATA, so only the process can refuse it.
    app = await start_app(make_settings(smtp={"reader": "process"}))
    process = await ready_process(app)
    mail = make_mail(sender="bob@example.org")
    assert (await transaction(app.smtp_port, ALLOWED, [GATEWAY], mail))[-1][0] == 250
    app.reload(make_settings(smtp={"reader": "process"}, senders={"allow": [ALLOWED]}))
    code, text = (await transaction(app.smtp_port, ALLOWED, [GATEWAY], mail))[-1]
    assert code == 550
    assert "bob@example.org" in text
    assert process.answered == 2


async def test_when_the_process_dies_mail_is_read_in_threads(make_settings, start_app):
    app = await start_app(make_settings(smtp={"reader": "process"}))
    process = await ready_process(app)
    os.kill(process.pid, signal.SIGKILL)
    await poll(process.gone.is_set)
    for n in range(3):
        mail = make_mail(body=f"still here {n}")
        assert (await transaction(app.smtp_port, ALLOWED, [GATEWAY], mail))[-1][0] == 250
    assert spill(app).process is None  # not restarted at once: it may die again
    assert process.answered == 0


async def test_a_stuck_process_is_stopped_and_its_clients_get_451(make_settings, monkeypatch):
    """One watchdog, not a timer per message: silence while mail waits stops the process."""
    monkeypatch.setattr(reader_process, "DEFAULT_BUSY_TIMEOUT", 0.0)
    monkeypatch.setattr(reader_process, "STUCK_MARGIN", 0.3)
    settings = make_settings()
    process = reader_process.ReaderProcess(settings)
    await process.start()
    try:
        policy = dataclasses.replace(Policy.from_settings(settings), parse_timeout=0.2)
        assert (await process.read(submission_from(1), policy)).reply.startswith("250")
        await asyncio.sleep(0.6)  # longer than the silence, with nothing waiting: not stuck
        assert not process.gone.is_set()
        os.kill(process.pid, signal.SIGSTOP)  # it still runs, and answers nothing
        outcome = await process.read(submission_from(2), policy)
        assert outcome.reply.startswith("451")
        await poll(process.gone.is_set)
        assert not alive(process.pid)
    finally:
        await process.close(5)


async def test_auto_starts_it_when_busy_and_stops_it_when_idle(make_settings, start_app):
    app = await start_app(make_settings(smtp={"reader": "auto"}))
    reader = spill(app)
    assert reader.process is None  # an idle gateway is one process
    reader.busy, reader.idle_stop = 1, 0.5  # busy at the first message, idle after 0.5 s
    assert (await transaction(app.smtp_port, ALLOWED, [GATEWAY], make_mail()))[-1][0] == 250
    process = await ready_process(app)
    pid = process.pid
    await poll(lambda: reader.process is None)
    await poll(lambda: not alive(pid))
    assert (await transaction(app.smtp_port, ALLOWED, [GATEWAY], make_mail()))[-1][0] == 250


async def test_stopping_the_daemon_ends_the_process(make_settings, start_app):
    from mail2sms.app import App  # noqa: PLC0415

    app = App(make_settings(smtp={"reader": "process"}))
    await app.start()
    try:
        process = await ready_process(app)
        assert (await transaction(app.smtp_port, ALLOWED, [GATEWAY], make_mail()))[-1][0] == 250
    finally:
        await app.stop()
    assert process.gone.is_set()
    assert not alive(process.pid)


def submission_from(port: int) -> Submission:
    """A test mail at the end of DATA, as the daemon hands it to a reader."""
    return Submission(
        raw=make_mail(),
        mail_from=ALLOWED,
        rcpt_tos=(GATEWAY,),
        client=Client(ip="127.0.0.1"),
        sender=ALLOWED,
        peer=f"127.0.0.1:{port}",
        received_at=time.time(),
    )


def answers_in(data: bytes) -> list[tuple[int, Outcome]]:
    """The (number, outcome) frames the reader sends the daemon ("ready" is skipped)."""
    answers = []
    while data:
        (size,) = struct.unpack("!I", data[:4])
        kind, number, outcome = reader_process._unframe(data[4 : 4 + size])
        data = data[4 + size :]
        if kind == "ready":
            continue
        assert kind == "done"
        assert isinstance(outcome, Outcome)
        answers.append((number, outcome))
    return answers


def read_group(policy: Policy, ports: tuple[int, ...]) -> list[reader_process.Read]:
    submissions = [  # different texts: none is a duplicate of another
        dataclasses.replace(submission_from(port), raw=make_mail(body=f"Alarm {port}"))
        for port in ports
    ]
    built = [read_submission(s, policy) for s in submissions]
    assert all(isinstance(b, Built) for b in built)
    return [(n, s, b) for n, (s, b) in enumerate(zip(submissions, built, strict=True))]  # type: ignore[misc]


def staged_pair(settings, queue: Queue) -> reader_process._Group:
    """Two different messages read and staged on ``queue``, not committed."""
    group = reader_process._stage(queue, read_group(Policy.from_settings(settings), (1, 2)))
    assert isinstance(group, reader_process._Group)
    return group


def test_a_group_is_answered_only_by_its_commit(make_settings):
    """Staged, the group is not durable: its 250s are sent after the commit, its log lines too."""
    settings = make_settings()
    with Queue(settings.queue.path, any_thread=True) as queue:
        group = staged_pair(settings, queue)
        with Queue(settings.queue.path) as other:  # another connection sees nothing yet
            assert other.counts()["pending"] == 0
        answers = answers_in(reader_process._commit(group))
        assert [n for n, _ in answers] == [0, 1]
        assert all(o.reply.startswith("250") and o.queue_id for _, o in answers)
        assert not group.failed
        assert len(group.notes) == 2
        assert queue.counts()["pending"] == 2


@pytest.mark.parametrize(
    ("error", "reply"),
    [
        (QueueUnavailableError("queue q is unavailable: disk I/O error"), "451 4.3.0"),
        (RuntimeError("a bug in the commit"), "451"),
    ],
)
def test_a_commit_that_fails_answers_451_for_the_whole_group(make_settings, error, reply):
    """Nothing of a failed group is stored, so each of its clients is told to send again."""
    settings = make_settings()
    with Queue(settings.queue.path, any_thread=True) as queue:
        group = staged_pair(settings, queue)

        def broken() -> None:  # as a COMMIT that fails: SQLite rolls the transaction back
            queue._rollback()
            raise error

        group.commit = broken
        answers = answers_in(reader_process._commit(group))
        assert queue.counts()["pending"] == 0
    assert [n for n, _ in answers] == [0, 1]
    assert all(outcome.reply.startswith(reply) for _, outcome in answers)
    assert group.failed  # so its message_accepted lines are not written


@pytest.mark.parametrize("max_group", [reader_process.MAX_GROUP, 3])
def test_the_reader_answers_every_message_of_a_burst(make_settings, monkeypatch, max_group):
    """The reading thread and the commit thread, over a real socket: all answered, all stored.

    With groups of at most 3, the burst is committed in many groups, none left behind.
    """
    monkeypatch.setattr(reader_process, "MAX_GROUP", max_group)
    settings = make_settings()
    daemon_end, reader_end = socket.socketpair()
    received = bytearray()

    def daemon() -> None:  # sends a burst, then closes its sending side as the daemon does
        daemon_end.sendall(reader_process._frame(("settings", 0, settings)))
        for number in range(1, 41):
            mail = make_mail(body=f"Alarm {number}")
            submission = dataclasses.replace(submission_from(number), raw=mail)
            daemon_end.sendall(reader_process._frame(("read", number, submission)))
        daemon_end.shutdown(socket.SHUT_WR)
        while chunk := daemon_end.recv(1 << 16):
            received.extend(chunk)

    thread = threading.Thread(target=daemon)
    thread.start()
    previous = signal.getsignal(signal.SIGALRM)
    try:
        with reader_end:
            reader_process._serve(reader_end)  # the main thread: SIGALRM is for it
    finally:
        signal.signal(signal.SIGALRM, previous)
        sys.setswitchinterval(0.005)
    thread.join(30)
    daemon_end.close()
    assert received.startswith(reader_process._frame(("ready", 0, None)))
    replies = dict(answers_in(bytes(received)))
    assert sorted(replies) == list(range(1, 41))
    assert all(o.reply.startswith("250") for o in replies.values())
    assert len({o.queue_id for o in replies.values()}) == 40
    with Queue(settings.queue.path) as queue:
        assert queue.counts()["pending"] == 40


def test_a_slow_read_does_not_hold_back_the_group_before_it(make_settings, monkeypatch):
    """Messages already received join the next group only for GROUP_FILL_TIME."""
    settings = make_settings()
    read_within = reader_process._read_within
    stage = reader_process._stage
    groups: list[list[int]] = []

    def slow(submission, policy):
        time.sleep(0.02)  # each read takes ten times the fill time
        return read_within(submission, policy)

    def staged(queue, reads):
        groups.append([n for n, _, _ in reads])
        return stage(queue, reads)

    monkeypatch.setattr(reader_process, "_read_within", slow)
    monkeypatch.setattr(reader_process, "_stage", staged)
    daemon_end, reader_end = socket.socketpair()
    frames = [reader_process._frame(("settings", 0, settings))]
    for number in range(1, 5):
        submission = dataclasses.replace(
            submission_from(number), raw=make_mail(body=f"Alarm {number}")
        )
        frames.append(reader_process._frame(("read", number, submission)))
    daemon_end.sendall(b"".join(frames))  # all four are there before the first is read
    daemon_end.shutdown(socket.SHUT_WR)
    previous = signal.getsignal(signal.SIGALRM)
    try:
        with reader_end:
            reader_process._serve(reader_end)
    finally:
        signal.signal(signal.SIGALRM, previous)
        sys.setswitchinterval(0.005)
    received = b""
    while chunk := daemon_end.recv(1 << 16):
        received += chunk
    daemon_end.close()
    assert groups[0] == [1]  # written after its own read, not after all four
    assert sorted(n for group in groups for n in group) == [1, 2, 3, 4]
    assert sorted(dict(answers_in(received))) == [1, 2, 3, 4]


def test_what_crosses_to_the_process_arrives_unchanged():
    """Submissions, their clients and outcomes pickle field for field (their own __reduce__)."""
    client = Client(ip="192.0.2.7", helo="pbx.example", user="pbx", trusted_network=True)
    submission = dataclasses.replace(submission_from(1001), client=client, rcpt_tos=("a", "b"))
    outcome = Outcome("250 2.0.0 queued as X", queue_id="X", refused=True)
    for item in (submission, client, outcome):
        data = pickle.dumps(item, protocol=pickle.HIGHEST_PROTOCOL)
        assert pickle.loads(data) == item  # noqa: S301  our own bytes
