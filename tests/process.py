"""The daemon as a child process: start it, read its JSON log events, send it mail."""

from __future__ import annotations

import contextlib
import json
import os
import smtplib
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO, Any

from conftest import ALLOWED, GATEWAY, TOKEN
from test_smtp import make_mail

CONFIG = """
[smtp]
listen = "127.0.0.1:0"
hostname = "sms.test"

[gateway]
addresses = ["{gateway}"]
domains = ["sms.example.com"]
default_region = "AU"
sender_id = "TestBrand"

[senders]
allow = ["{allowed}"]

[provider]
kind = "dataflows"
base_url = "{url}"
timeout = "5s"

[queue]
path = "{queue}"

[delivery]
workers = 2
retry_initial = "0.2s"
retry_max = "0.5s"
shutdown_grace = "3s"
"""


class Daemon:
    """``python -m mail2sms serve`` with its JSON log lines collected as they arrive."""

    def __init__(self, config: Path) -> None:
        env = {**os.environ, "MAIL2SMS_PROVIDER__TOKEN": TOKEN, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mail2sms", "serve", "-c", str(config)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            text=True,
        )
        self.events: list[dict[str, Any]] = []
        self.raw: list[str] = []
        self._cond = threading.Condition()
        assert self.proc.stdout is not None
        self._reader = threading.Thread(target=self._read, args=(self.proc.stdout,), daemon=True)
        self._reader.start()

    def close(self) -> None:
        """Kill if still running, then release the pipes."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)
        self._reader.join(timeout=10)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            with self._cond:
                self.raw.append(line)
                with contextlib.suppress(json.JSONDecodeError):
                    self.events.append(json.loads(line))
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def wait_event(self, name: str, timeout: float = 20.0) -> dict[str, Any]:
        return self.wait_events(name, 1, timeout)[0]

    def wait_events(self, name: str, count: int, timeout: float = 20.0) -> list[dict[str, Any]]:
        """The first ``count`` events called ``name``, waiting for them up to ``timeout``."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                found = [event for event in self.events if event.get("event") == name]
                if len(found) >= count:
                    return found[:count]
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self.proc.poll() is not None:
                    err = self.proc.stderr.read() if self.proc.poll() is not None else ""
                    raise AssertionError(
                        f"{len(found)} of {count} {name!r} events; output so far:\n"
                        f"{''.join(self.raw)}\n{err}"
                    )
                self._cond.wait(min(remaining, 0.5))

    @property
    def port(self) -> int:
        return int(self.wait_event("smtp_listening")["port"])


def send(
    port: int,
    subject: str = "+61412345678",
    body: str = "Alarm: zone 3",
    *,
    sender: str = ALLOWED,
) -> str:
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        client.ehlo()
        code, reply = client.mail(sender)
        if code != 250:
            raise smtplib.SMTPSenderRefused(code, reply, sender)
        client.rcpt(GATEWAY)
        code, reply = client.data(make_mail(sender=sender, subject=subject, body=body))
    assert code == 250, reply
    return reply.decode().rsplit(" ", 1)[1]
