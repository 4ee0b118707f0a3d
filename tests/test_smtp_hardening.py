"""Hostile SMTP clients over raw sockets against the real server: each gets a clean refusal
while other sessions keep working.

Raw asyncio streams, not smtplib/aiosmtplib: those fix line ends and dot-stuffing, which is
exactly what the smuggling tests must not have fixed.
"""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import replace
from email.message import EmailMessage
from typing import Any
from unittest.mock import Mock

import pytest
from conftest import ALLOWED, DOMAIN, GATEWAY, poll, read_outbox

from mail2sms import smtp as smtp_module
from mail2sms.mail_parse import parse_mail

pytestmark = pytest.mark.anyio

NUMBER = "+61412345678"
SMUGGLED_NUMBER = "+61498765432"
# Every end-of-data look-alike with a bare CR or LF on one side or both (RFC 5321 only
# knows <CRLF>.<CRLF>).
LOOKALIKES = [
    b"\n.\n",
    b"\n.\r\n",
    b"\r.\r",
    b"\r\n.\r",
    b"\r.\r\n",
    b"\r\n.\n",
    b"\n.\r",
    b"\r.\n",
]


class Raw:
    """One SMTP session on a raw socket: bytes go out exactly as written."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def connect(cls, port: int, source: str = "127.0.0.1") -> Raw:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
        return cls(reader, writer)

    async def reply(self, timeout: float = 10.0) -> str:
        """One whole (possibly multi-line) reply as 'code text' of its last line; '' at EOF."""
        while True:
            line = await asyncio.wait_for(self.reader.readline(), timeout)
            if not line:
                return ""
            text = line.decode("ascii", "replace").rstrip("\r\n")
            if text[3:4] != "-":
                return text

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def command(self, line: str) -> str:
        await self.send(line.encode("ascii") + b"\r\n")
        return await self.reply()

    async def replies_until_eof(self, timeout: float = 10.0) -> list[str]:
        found = []
        while reply := await self.reply(timeout):
            found.append(reply)
        return found

    async def start_data(self, rcpt: str = GATEWAY) -> None:
        assert (await self.reply()).startswith("220 ")
        assert (await self.command("EHLO client.test")).startswith("250 ")
        assert (await self.command(f"MAIL FROM:<{ALLOWED}>")).startswith("250 ")
        assert (await self.command(f"RCPT TO:<{rcpt}>")).startswith("250 ")
        assert (await self.command("DATA")).startswith("354 ")

    def close(self) -> None:
        self.writer.close()


def mail(body: str = "Server room temperature is 31 C", subject: str = NUMBER) -> bytes:
    msg = EmailMessage()
    msg["From"] = ALLOWED
    msg["To"] = GATEWAY
    msg["Subject"] = subject
    msg.set_content(body)
    return msg.as_bytes().replace(b"\n", b"\r\n")


async def send_normal_mail(port: int, body: str = "still working") -> str:
    """A well-formed transaction on a new connection; returns the reply to DATA."""
    client = await Raw.connect(port)
    try:
        await client.start_data()
        await client.send(mail(body) + b".\r\n")
        return await client.reply()
    finally:
        client.close()


async def queued(app: Any) -> int:
    return sum((await app.queue.counts()).values())


# --- SMTP smuggling and line ends -------------------------------------------------------


@pytest.mark.parametrize("lookalike", LOOKALIKES, ids=repr)
async def test_a_smuggled_transaction_is_one_refused_message(
    make_settings, start_app, tmp_path, lookalike
):
    app = await start_app(make_settings())
    client = await Raw.connect(app.smtp_port)
    await client.start_data()
    smuggled = (
        f"MAIL FROM:<{ALLOWED}>\r\n"
        f"RCPT TO:<{SMUGGLED_NUMBER}@{DOMAIN}>\r\n"
        "DATA\r\n"
        f"From: {ALLOWED}\r\nSubject: smuggled\r\n\r\nSMUGGLED TEXT"
    ).encode()
    await client.send(mail("first message").rstrip(b"\r\n") + lookalike + smuggled + b"\r\n.\r\n")
    await client.send(b"QUIT\r\n")
    replies = await client.replies_until_eof()
    client.close()
    # One reply to DATA (no second transaction was started), then QUIT's.
    assert len(replies) == 2, replies
    assert replies[0].startswith("554 5.6.0 The message contains a bare CR or LF next to")
    assert "send lines ending in CRLF" in replies[0]
    assert replies[1].startswith("221 ")
    assert await queued(app) == 0
    assert (await send_normal_mail(app.smtp_port)).startswith("250 2.0.0 queued as ")
    lines = await poll(lambda: read_outbox(tmp_path / "outbox.jsonl"))
    assert [(line["to"], line["text"]) for line in lines] == [(NUMBER, "still working")]


@pytest.mark.parametrize(
    ("body", "text"),
    [
        (b"line1\nline2", "line1\nline2"),  # a legacy device's bare LF
        (b"line1\rline2", "line1\nline2"),  # bare CR alone: a line end too
        (b"a dot\n.5 volts\nok", "a dot\n.5 volts\nok"),  # a dot that is not a lone dot
    ],
    ids=["bare-LF", "bare-CR", "dot-text"],
)
async def test_bare_line_ends_are_normalised_into_the_sms(
    make_settings, start_app, tmp_path, body, text
):
    app = await start_app(make_settings())
    client = await Raw.connect(app.smtp_port)
    await client.start_data()
    header = f"From: {ALLOWED}\nTo: {GATEWAY}\nSubject: {NUMBER}\n\n".encode()
    await client.send(header + body + b"\r\n.\r\n")
    assert (await client.reply()).startswith("250 2.0.0 queued as ")
    client.close()
    lines = await poll(lambda: read_outbox(tmp_path / "outbox.jsonl"))
    assert lines[0]["text"] == text


async def test_nul_bytes_are_refused(make_settings, start_app):
    app = await start_app(make_settings())
    client = await Raw.connect(app.smtp_port)
    await client.start_data()
    await client.send(mail("before\x00after") + b".\r\n")
    reply = await client.reply()
    client.close()
    assert reply.startswith("554 5.6.0 The message contains NUL bytes")
    assert await queued(app) == 0


# --- connection caps --------------------------------------------------------------------


async def test_connections_over_the_total_cap_get_421_and_others_keep_working(
    make_settings, start_app
):
    app = await start_app(make_settings(smtp={"max_connections": 2}))
    first, second = await Raw.connect(app.smtp_port), await Raw.connect(app.smtp_port)
    assert (await first.reply()).startswith("220 ")
    assert (await second.reply()).startswith("220 ")
    third = await Raw.connect(app.smtp_port)
    assert await third.replies_until_eof() == [
        "421 4.7.0 Too many connections to this server; try again later"
    ]
    third.close()
    assert len(app.handler.sessions) == 2
    # the admitted sessions still work
    assert (await first.command("NOOP")).startswith("250 ")
    second.close()
    await poll(lambda: len(app.handler.sessions) == 1)
    assert (await send_normal_mail(app.smtp_port)).startswith("250 2.0.0 queued as ")
    first.close()


async def test_the_per_client_cap_counts_each_address_apart(make_settings, start_app):
    app = await start_app(make_settings(smtp={"max_connections_per_client": 1}))
    first = await Raw.connect(app.smtp_port)
    assert (await first.reply()).startswith("220 ")
    again = await Raw.connect(app.smtp_port)
    assert await again.replies_until_eof() == [
        "421 4.7.0 Too many connections from your address; try again later"
    ]
    again.close()
    other = await Raw.connect(app.smtp_port, source="127.0.0.2")  # another client
    assert (await other.reply()).startswith("220 ")
    other.close()
    first.close()


# --- command budget and timeouts --------------------------------------------------------


async def test_the_command_budget_closes_a_noop_loop_and_an_accepted_mail_refills_it(
    make_settings, start_app
):
    app = await start_app(make_settings(smtp={"max_commands": 3}))
    client = await Raw.connect(app.smtp_port)
    await client.start_data()
    await client.send(mail() + b".\r\n")
    assert (await client.reply()).startswith("250 2.0.0 queued as ")
    for command in ("NOOP", "RSET", "HELP"):
        assert (await client.command(command)).startswith(("250 ", "214 "))
    await client.send(b"\r\n")  # a syntax error spends the budget too
    assert await client.replies_until_eof() == [smtp_module.TOO_MANY_COMMANDS]
    client.close()
    assert (await send_normal_mail(app.smtp_port)).startswith("250 ")


@pytest.mark.parametrize(
    ("command", "spends"),
    [("NOOP", 1), ("RSET", 1), ("VRFY someone", 1), ("HELP", 1), ("EXPN staff", 2)],
)
async def test_each_command_that_sends_no_mail_spends_the_budget(
    make_settings, start_app, command, spends
):
    """EXPN is refused (502), and a refusal spends one more."""
    app = await start_app(make_settings(smtp={"max_commands": 4}))
    client = await Raw.connect(app.smtp_port)
    assert (await client.reply()).startswith("220 ")
    answered = 4 // spends
    for _ in range(answered):
        assert (await client.command(command)) != smtp_module.TOO_MANY_COMMANDS
    assert (await client.command(command)) == smtp_module.TOO_MANY_COMMANDS
    client.close()


async def test_aiosmtpd_finds_every_command_hook_and_auth_mechanism(make_settings, monkeypatch):
    """While aiosmtpd builds its tables, ``dir()`` names only what it looks for.

    The tables must be those it builds from every attribute, and ``dir()`` is whole again
    afterwards (debuggers, ``Mock(spec=...)``).
    """
    handler = smtp_module.GatewayHandler(smtp_module.Policy.from_settings(make_settings()), None)  # type: ignore[arg-type]

    def protocol() -> smtp_module.GatewaySMTP:
        return smtp_module.GatewaySMTP(
            handler, hostname="h", authenticator=smtp_module._pass_credentials
        )

    def tables(proto: smtp_module.GatewaySMTP) -> tuple[object, ...]:
        def function(method: object) -> object:
            return getattr(method, "__func__", method)

        return (
            {name: function(m) for name, m in proto._smtp_methods.items()},
            {name: (function(m.method), m.is_builtin) for name, m in proto._auth_methods.items()},
            {name: function(m) for name, m in proto._handle_hooks.items()},
            proto._ehlo_hook_ver,
        )

    proto = protocol()
    narrow = tables(proto)
    assert {"admit", "policy"} <= set(dir(handler))
    assert {"close_with", "session", "smtp_DATA"} <= set(dir(proto))
    assert Mock(spec=handler).admit is not None
    monkeypatch.setattr(smtp_module, "looked_up_names", object.__dir__)
    everything = tables(protocol())
    assert narrow == everything
    commands, mechanisms, hooks, _ehlo = narrow
    assert {"HELO", "EHLO", "MAIL", "RCPT", "DATA", "AUTH", "NOOP", "EXPN"} <= set(commands)  # type: ignore[arg-type]
    assert {"PLAIN", "LOGIN"} <= set(mechanisms)  # type: ignore[arg-type]
    assert {"MAIL", "RCPT", "DATA", "EHLO"} <= set(hooks)  # type: ignore[arg-type]


async def test_an_idle_client_is_told_421_before_the_connection_closes(make_settings, start_app):
    app = await start_app(make_settings(smtp={"timeout": 0.3}))
    client = await Raw.connect(app.smtp_port)
    assert (await client.reply()).startswith("220 ")
    assert await client.replies_until_eof() == [
        "421 4.4.2 No command for 0.3 seconds; closing the connection"
    ]
    client.close()


async def test_a_stalled_message_is_cut_at_the_data_timeout(make_settings, start_app):
    app = await start_app(make_settings(smtp={"data_timeout": 0.5}))
    client = await Raw.connect(app.smtp_port)
    await client.start_data()
    await client.send(b"Subject: half a message\r\n")
    assert await client.replies_until_eof() == [
        "421 4.4.2 The message was not received within 0.5 seconds; closing the connection"
    ]
    client.close()
    assert await queued(app) == 0


# --- parsing ----------------------------------------------------------------------------


async def test_a_slow_parse_does_not_hold_up_other_sessions(make_settings, start_app, monkeypatch):
    """A message whose parse spins the CPU (standing in for a pathological MIME tree)."""
    app = await start_app(make_settings())
    app.handler.policy = replace(app.handler.policy, parse_timeout=3.0)
    release = threading.Event()
    spinning = threading.Event()

    def slow_parse(raw: bytes, cleanup: Any) -> Any:
        if b"PATHOLOGICAL" in raw:
            spinning.set()
            deadline = time.monotonic() + 30
            while not release.is_set() and time.monotonic() < deadline:
                sum(range(1000))  # holds the GIL in slices, as the stdlib parser does
        return parse_mail(raw, cleanup)

    monkeypatch.setattr(smtp_module, "parse_mail", slow_parse)
    slow = await Raw.connect(app.smtp_port)
    try:
        await slow.start_data()
        await slow.send(mail("PATHOLOGICAL") + b".\r\n")
        await poll(spinning.is_set)
        slow_reply = asyncio.create_task(slow.reply())
        assert (await send_normal_mail(app.smtp_port)).startswith("250 2.0.0 queued as ")
        assert not slow_reply.done()  # answered while the slow one was still being read
        assert await slow_reply == smtp_module.PARSE_TOO_SLOW.format(seconds=3)
    finally:
        release.set()
        slow.close()


async def test_many_mime_parts_are_refused_quickly(make_settings, start_app):
    app = await start_app(make_settings(smtp={"max_message_size": 2_000_000}))
    parts = b"".join(
        b"--b\r\nContent-Type: text/plain\r\n\r\npart %d\r\n" % i for i in range(20_000)
    )
    raw = (
        f"From: {ALLOWED}\r\nSubject: {NUMBER}\r\nMIME-Version: 1.0\r\n".encode()
        + b'Content-Type: multipart/mixed; boundary="b"\r\n\r\n'
        + parts
        + b"--b--\r\n"
    )
    client = await Raw.connect(app.smtp_port)
    await client.start_data()
    await client.send(raw + b".\r\n")
    reply = await client.reply()
    client.close()
    assert reply.startswith("554 5.6.0 The message has more than 200 MIME parts")


# --- no internals in replies ------------------------------------------------------------


async def test_an_exception_in_a_hook_leaks_nothing(make_settings, start_app, monkeypatch):
    app = await start_app(make_settings())

    async def explode(*_args: Any) -> str:
        raise RuntimeError("internal detail: /opt/secret/path")

    monkeypatch.setattr(app.handler, "handle_MAIL", explode)
    client = await Raw.connect(app.smtp_port)
    assert (await client.reply()).startswith("220 ")
    await client.command("EHLO client.test")
    assert await client.command(f"MAIL FROM:<{ALLOWED}>") == smtp_module.TEMPORARY_ERROR

    def broken_log(*_args: Any, **_kwargs: Any) -> None:
        raise OSError("journal gone: /opt/secret/journal")

    # even when the handler's own handle_exception fails (aiosmtpd would quote the error)
    monkeypatch.setattr(smtp_module.log, "error", broken_log)
    assert await client.command(f"MAIL FROM:<{ALLOWED}>") == smtp_module.TEMPORARY_ERROR
    client.close()


async def test_a_reload_applies_new_connection_limits_to_new_connections(make_settings, start_app):
    app = await start_app(make_settings(smtp={"max_connections": 1}))
    first = await Raw.connect(app.smtp_port)
    assert (await first.reply()).startswith("220 ")
    refused = await Raw.connect(app.smtp_port)
    assert (await refused.reply()).startswith("421 4.7.0 ")
    refused.close()
    app.reload(make_settings(smtp={"max_connections": 2}))
    second = await Raw.connect(app.smtp_port)
    assert (await second.reply()).startswith("220 ")
    second.close()
    first.close()


async def test_a_long_bare_lf_message_is_accepted_and_an_endless_line_refused(
    make_settings, start_app, tmp_path
):
    """A bare-LF device sends its whole message as one CRLF "line"; 5 KB of it must pass."""
    app = await start_app(make_settings())
    client = await Raw.connect(app.smtp_port)
    await client.start_data()
    padding = "".join(f"X-Device-Field-{i}: {'v' * 40}\n" for i in range(100)).encode()
    header = f"From: {ALLOWED}\nTo: {GATEWAY}\nSubject: {NUMBER}\n".encode()
    await client.send(header + padding + b"\nZone 3 alarm\r\n.\r\n")
    assert (await client.reply()).startswith("250 2.0.0 queued as ")
    lines = await poll(lambda: read_outbox(tmp_path / "outbox.jsonl"))
    assert lines[0]["text"] == "Zone 3 alarm"
    client.close()
    endless = await Raw.connect(app.smtp_port)
    await endless.start_data()
    await endless.send(header + b"x" * (smtp_module.LINE_LIMIT + 10) + b"\r\n.\r\n")
    assert (await endless.reply()).startswith("500 5.5.2 Line too long")
    endless.close()
