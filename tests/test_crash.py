"""Crash safety, proven: SIGKILL the daemon at each point of a message's life, restart it.

Every accepted message must end delivered or bounced. A duplicate SMS is allowed only in
the documented window (the provider took the SMS, the daemon died before recording it),
and the restarted daemon then logs ``possible_duplicate`` for it.
"""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path
from typing import Any

import pytest
from conftest import ALLOWED
from fakes.relay import RecordingRelay
from process import Daemon, send

from mail2sms.models import RecipientState
from mail2sms.queue import Queue

pytestmark = pytest.mark.slow


def kill_once(daemon_pid: list[int]) -> Any:
    """A fake-server hook that SIGKILLs the daemon the first time it runs.

    It returns True then, so a hook that may drop the request (``on_request``) does.
    """

    def hook(_request: object) -> bool:
        if not daemon_pid:
            return False
        os.kill(daemon_pid.pop(), signal.SIGKILL)
        return True

    return hook


def queue_path(config_file: Path) -> Path:
    return config_file.parent / "q.sqlite3"


def finish(daemon: Daemon) -> None:
    daemon.proc.send_signal(signal.SIGTERM)
    assert daemon.proc.wait(timeout=15) == 0


def test_killed_while_the_provider_call_is_in_flight(config_file, fake_dataflows, daemons):
    """The request reached the provider but was never processed: sent once, after restart."""
    victim: list[int] = []
    fake_dataflows.on_request = kill_once(victim)
    first = Daemon(config_file)
    daemons.append(first)
    victim.append(first.proc.pid)
    queue_id = send(first.port, body="UPS on battery")
    assert first.proc.wait(timeout=20) == -signal.SIGKILL
    assert fake_dataflows.sent == []

    second = Daemon(config_file)
    daemons.append(second)
    assert second.wait_event("sms_sent")["queue_id"] == queue_id
    assert second.wait_event("recovered_in_flight")["recipients"] == 1
    finish(second)
    assert [s.message for s in fake_dataflows.sent] == ["UPS on battery"]
    with Queue(queue_path(config_file)) as queue:
        (recipient,) = queue.get(queue_id).recipients
    assert recipient.state is RecipientState.SENT
    assert recipient.possible_duplicate


def test_killed_after_provider_success_before_it_is_recorded(config_file, fake_dataflows, daemons):
    """The documented duplicate window: the SMS went out twice, and the log says so."""
    victim: list[int] = []
    fake_dataflows.before_reply = kill_once(victim)
    first = Daemon(config_file)
    daemons.append(first)
    victim.append(first.proc.pid)
    queue_id = send(first.port, body="Fire alarm zone 2")
    assert first.proc.wait(timeout=20) == -signal.SIGKILL
    assert [s.message for s in fake_dataflows.sent] == ["Fire alarm zone 2"]

    second = Daemon(config_file)
    daemons.append(second)
    duplicate = second.wait_event("possible_duplicate")
    assert duplicate["queue_id"] == queue_id
    assert second.wait_event("sms_sent")["queue_id"] == queue_id
    finish(second)
    assert [s.message for s in fake_dataflows.sent] == ["Fire alarm zone 2"] * 2
    with Queue(queue_path(config_file)) as queue:
        assert queue.get(queue_id).state == "sent"


BOUNCE_CONFIG = """
[bounce]
relay = "{relay}"
from = "MAILER-DAEMON@sms.test"
starttls = "never"
"""


def with_relay(config_file: Path, relay: RecordingRelay) -> Path:
    with config_file.open("a", encoding="utf-8") as handle:
        handle.write(BOUNCE_CONFIG.format(relay=relay.address))
    return config_file


@pytest.mark.anyio
@pytest.mark.parametrize("accepted", [False, True], ids=["during-data", "after-relay-accepted"])
async def test_killed_while_sending_the_bounce(config_file, fake_dataflows, daemons, accepted):
    """The bounce survives a crash: sent after restart, twice only if the relay had it."""
    fake_dataflows.invalid_numbers.add("61412345678")
    victim: list[int] = []
    kill = kill_once(victim)
    async with RecordingRelay() as relay:

        def on_data(_data: bytes) -> bool:
            killed = kill(None)
            return killed and not accepted  # drop it (the daemon died mid-DATA) or take it

        relay.on_data = on_data
        config = with_relay(config_file, relay)
        first = Daemon(config)
        daemons.append(first)
        victim.append(first.proc.pid)
        port = await asyncio.to_thread(lambda: first.port)
        queue_id = await asyncio.to_thread(send, port, "+61412345678", "Door forced")
        assert await asyncio.to_thread(first.proc.wait, 20) == -signal.SIGKILL
        assert len(relay.transactions) == int(accepted)

        second = Daemon(config)
        daemons.append(second)
        sent = await asyncio.to_thread(second.wait_event, "bounce_sent")
        assert sent["queue_id"] == queue_id
        await asyncio.to_thread(finish, second)
        bounces = relay.transactions
        assert len(bounces) == 1 + int(accepted)  # the second only in the documented window
        assert all(b.mail_from == "" and b.rcpt_tos == (ALLOWED,) for b in bounces)
        assert all(b"+61412345678" in b.data for b in bounces)
        with Queue(queue_path(config_file)) as queue:
            entry = queue.get(queue_id)
        assert (entry.state, entry.bounce_state) == ("failed", "sent")
        assert len(fake_dataflows.requests) == 1  # the SMS itself was refused once, not retried
