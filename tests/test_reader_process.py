"""``smtp.reader``: mail read and committed in a second process, over real sockets.

A real SMTP client talks to the daemon, which hands each message to a real reader process
(``python -m mail2sms.reader_process``) on the same SQLite file.
"""

from __future__ import annotations

import dataclasses
import os
import re
import signal
import time

import pytest
from conftest import ALLOWED, GATEWAY, poll, read_outbox
from test_smtp import make_mail, transaction

from mail2sms import reader_process
from mail2sms.reader_process import SpillReader, _commit
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


class _BrokenQueue:
    def enqueue_group(self, items):
        del items
        raise RuntimeError("a bug in the commit")


def test_a_commit_that_fails_answers_451_for_the_whole_group(make_settings):
    """Nothing of a failed group is stored, so each of its clients is told to send again."""
    policy = Policy.from_settings(make_settings())
    submissions = [submission_from(port) for port in (1001, 1002)]
    built = [read_submission(s, policy) for s in submissions]
    assert all(isinstance(b, Built) for b in built)
    group = [(n, s, b) for n, (s, b) in enumerate(zip(submissions, built, strict=True))]
    outcomes = _commit(_BrokenQueue(), group)  # type: ignore[arg-type]
    assert [n for n, _ in outcomes] == [0, 1]
    assert all(outcome.reply.startswith("451") for _, outcome in outcomes)


def test_a_read_in_the_process_stops_at_the_time_limit(make_settings, monkeypatch):
    """There the read itself is interrupted (SIGALRM): a 554, and the reader goes on."""
    policy = dataclasses.replace(Policy.from_settings(make_settings()), parse_timeout=0.05)
    submission = submission_from(1001)

    def endless_read(_submission: Submission, _policy: Policy) -> Built:
        time.sleep(30)  # a read that would not end in time
        raise AssertionError

    monkeypatch.setattr(reader_process, "read_submission", endless_read)
    previous = signal.signal(signal.SIGALRM, reader_process._on_alarm)
    try:
        started = time.monotonic()
        outcome = reader_process._read_within(submission, policy)
        took = time.monotonic() - started
    finally:
        signal.signal(signal.SIGALRM, previous)
    assert isinstance(outcome, Outcome)
    assert outcome.reply.startswith("554")
    assert took < 5
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)  # no alarm left armed
