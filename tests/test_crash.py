"""Crash safety, proven: SIGKILL the daemon at each point of a message's life, restart it.

Every accepted message must end delivered or bounced. A duplicate SMS is allowed only in
the documented window (the provider took the SMS, the daemon died before recording it),
and the restarted daemon then logs ``possible_duplicate`` for it.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import pytest
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
