"""Every row of DESIGN.md's SMTP reply table, over a real socket to the real server."""

from __future__ import annotations

import re
from email.message import EmailMessage
from pathlib import Path

import aiosmtplib
import pytest
from conftest import ALLOWED, DOMAIN, GATEWAY, poll, read_outbox

from mail2sms import smtp as smtp_module
from mail2sms.errors import QueueUnavailableError

pytestmark = pytest.mark.anyio


def make_mail(
    *,
    sender: str = ALLOWED,
    to: str = GATEWAY,
    subject: str = "+61412345678",
    body: str = "Server room temperature is 31 C",
) -> bytes:
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = to
    msg["Subject"] = subject
    msg["Message-ID"] = "<test-1@example.com>"
    msg.set_content(body)
    return msg.as_bytes()


async def transaction(
    port: int, mail_from: str, rcpts: list[str], data: bytes
) -> list[tuple[int, str]]:
    """Run MAIL/RCPT/DATA without the client library raising, returning every reply."""
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, timeout=10)
    await client.connect()
    replies = []
    try:
        await client.ehlo()
        reply = await client.execute_command(b"MAIL", f"FROM:<{mail_from}>".encode())
        replies.append((reply.code, reply.message))
        if reply.code != 250:
            return replies
        ok = 0
        for rcpt in rcpts:
            reply = await client.execute_command(b"RCPT", f"TO:<{rcpt}>".encode())
            replies.append((reply.code, reply.message))
            ok += reply.code == 250
        if not ok:
            return replies
        reply = await client.execute_command(b"DATA")
        if reply.code != 354:
            replies.append((reply.code, reply.message))
            return replies
        body = re.sub(rb"(?m)^\.", b"..", data.replace(b"\r\n", b"\n")).replace(b"\n", b"\r\n")
        client.transport.write(body + b"\r\n.\r\n")  # type: ignore[union-attr]
        reply = await client.protocol.read_response(timeout=10)  # type: ignore[union-attr]
        replies.append((reply.code, reply.message))
        return replies
    finally:
        await client.quit()


async def test_accepted_mail_is_queued_and_reaches_the_outbox(make_settings, start_app, tmp_path):
    app = await start_app(make_settings())
    replies = await transaction(
        app.smtp_port, ALLOWED, [GATEWAY], make_mail(subject="0412 345 678, +61498765432")
    )
    code, text = replies[-1]
    assert code == 250
    match = re.fullmatch(r"2\.0\.0 queued as (\S+)", text)
    assert match, text
    lines = await poll(
        lambda: (
            len(read_outbox(tmp_path / "outbox.jsonl")) == 2
            and read_outbox(tmp_path / "outbox.jsonl")
        )
    )
    assert {line["to"] for line in lines} == {"+61412345678", "+61498765432"}
    assert all(line["queue_id"] == match.group(1) for line in lines)
    assert all(line["text"] == "Server room temperature is 31 C" for line in lines)
    assert all(line["sender_id"] == "TestBrand" for line in lines)


async def test_number_at_gateway_domain_with_empty_body_sends_the_subject(
    make_settings, start_app, tmp_path
):
    app = await start_app(make_settings())
    mail = make_mail(to=f"61412345678@{DOMAIN}", subject="UPS on battery", body="")
    replies = await transaction(app.smtp_port, ALLOWED, [f"61412345678@{DOMAIN}"], mail)
    assert replies[-1][0] == 250
    lines = await poll(lambda: read_outbox(tmp_path / "outbox.jsonl"))
    assert lines[0]["to"] == "+61412345678"
    assert lines[0]["text"] == "UPS on battery"


@pytest.mark.parametrize(
    "rcpt",
    ["someone@elsewhere.com", "postmaster@sms.example.com.evil.org", "sms@example.com"],
)
async def test_recipient_that_is_not_a_gateway_is_refused_550_511(make_settings, start_app, rcpt):
    app = await start_app(make_settings())
    replies = await transaction(app.smtp_port, ALLOWED, [rcpt], make_mail(to=rcpt))
    assert replies[1][0] == 550
    assert replies[1][1].startswith("5.1.1 ")
    assert len(replies) == 2  # no DATA without an accepted recipient


async def test_sender_not_allowed_is_refused_at_mail_from_550_571(make_settings, start_app):
    app = await start_app(make_settings())
    replies = await transaction(app.smtp_port, "mallory@evil.example", [GATEWAY], make_mail())
    assert replies == [(550, replies[0][1])]
    assert replies[0][1].startswith("5.7.1 ")
    assert "mallory@evil.example" in replies[0][1]


async def test_from_header_not_allowed_is_refused_at_data_550_571(make_settings, start_app):
    app = await start_app(make_settings())
    replies = await transaction(
        app.smtp_port, ALLOWED, [GATEWAY], make_mail(sender="ceo@evil.example")
    )
    assert replies[-1][0] == 550
    assert replies[-1][1].startswith("5.7.1 ")
    assert "ceo@evil.example" in replies[-1][1]


async def test_whole_domain_in_allowlist_is_accepted(make_settings, start_app):
    app = await start_app(make_settings())
    replies = await transaction(
        app.smtp_port, "bob@example.org", [GATEWAY], make_mail(sender="Bob <bob@EXAMPLE.org>")
    )
    assert replies[-1][0] == 250


@pytest.mark.parametrize(
    ("subject", "named"),
    [("", "No phone number"), ("hello", "'hello'"), ("+61412345678, 12", "'12'")],
)
async def test_no_usable_number_is_refused_550_513_naming_the_problem(
    make_settings, start_app, subject, named
):
    app = await start_app(make_settings())
    replies = await transaction(app.smtp_port, ALLOWED, [GATEWAY], make_mail(subject=subject))
    code, text = replies[-1]
    assert code == 550
    assert text.startswith("5.1.3 ")
    assert named in text
    assert "+61412345678" in text  # shows the expected format


async def test_bad_number_at_gateway_domain_is_refused_550_513(make_settings, start_app):
    app = await start_app(make_settings())
    replies = await transaction(app.smtp_port, ALLOWED, [f"12@{DOMAIN}"], make_mail())
    assert replies[1][0] == 550
    assert replies[1][1].startswith("5.1.3 ")


async def test_empty_text_is_refused_550_560(make_settings, start_app):
    app = await start_app(make_settings())
    replies = await transaction(app.smtp_port, ALLOWED, [GATEWAY], make_mail(body="\n\n  \n"))
    assert replies[-1][0] == 550
    assert replies[-1][1].startswith("5.6.0 ")


async def test_text_over_max_parts_is_refused_552_534_stating_length_and_limit(
    make_settings, start_app
):
    app = await start_app(make_settings())  # max_parts = 3 → 459 GSM-7 characters
    replies = await transaction(app.smtp_port, ALLOWED, [GATEWAY], make_mail(body="word " * 120))
    code, text = replies[-1]
    assert code == 552
    assert text.startswith("5.3.4 ")
    assert "3" in text
    assert re.search(r"\b599\b|\b600\b", text), text  # the length of the text


async def test_message_over_max_message_size_is_refused_552_534(make_settings, start_app):
    app = await start_app(make_settings())  # max_message_size = 65536
    replies = await transaction(
        app.smtp_port, ALLOWED, [GATEWAY], make_mail(body="x" * 70 + ("\n" + "y" * 70) * 1000)
    )
    assert replies[-1][0] == 552
    assert replies[-1][1].startswith("5.3.4 ")


async def test_declared_size_over_limit_is_refused_at_mail_from_552_534(make_settings, start_app):
    app = await start_app(make_settings())
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=app.smtp_port, timeout=10)
    await client.connect()
    await client.ehlo()
    reply = await client.execute_command(b"MAIL", f"FROM:<{ALLOWED}> SIZE=999999999".encode())
    await client.quit()
    assert reply.code == 552
    assert reply.message.startswith("5.3.4 ")


async def test_queue_unavailable_is_a_temporary_failure_451(make_settings, start_app, monkeypatch):
    app = await start_app(make_settings())

    async def broken(_message, **_kwargs):
        raise QueueUnavailableError("disk I/O error at /var/lib/mail2sms/queue.sqlite3")

    monkeypatch.setattr(app.queue, "enqueue_unless_duplicate", broken)
    replies = await transaction(app.smtp_port, ALLOWED, [GATEWAY], make_mail())
    code, text = replies[-1]
    assert code == 451
    assert text.startswith("4.3.0 ")
    assert "sqlite" not in text


async def test_a_parser_crash_is_554_560_without_internals(make_settings, start_app, monkeypatch):
    app = await start_app(make_settings())

    def explode(_raw, _cleanup):
        raise RuntimeError("internal detail: /opt/secret/path")

    monkeypatch.setattr(smtp_module, "parse_mail", explode)
    replies = await transaction(app.smtp_port, ALLOWED, [GATEWAY], make_mail())
    code, text = replies[-1]
    assert (code, f"{code} {text}") == (554, smtp_module.UNREADABLE)
    assert "secret" not in text
    assert "RuntimeError" not in text
    # the session survives: a later transaction on a new connection works
    monkeypatch.undo()
    replies = await transaction(app.smtp_port, ALLOWED, [GATEWAY], make_mail())
    assert replies[-1][0] == 250


async def test_banner_and_ehlo_name_the_configured_hostname(make_settings, start_app):
    app = await start_app(make_settings())
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=app.smtp_port, timeout=10)
    banner = await client.connect()
    ehlo = await client.ehlo()
    await client.quit()
    assert banner.code == 220
    assert "sms.test" in banner.message
    assert "mail2sms" in banner.message
    assert "SIZE 65536" in ehlo.message


async def test_plain_smtplib_client_gets_250_and_the_queue_id(make_settings, start_app, tmp_path):
    """Python's smtplib, as an administrator would use it from a script."""
    import smtplib  # noqa: PLC0415

    import anyio  # noqa: PLC0415

    app = await start_app(make_settings())
    port = app.smtp_port

    def send() -> tuple[int, bytes]:
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
            client.sendmail(ALLOWED, [GATEWAY], make_mail())
            return client.noop()

    code, _ = await anyio.to_thread.run_sync(send)
    assert code == 250
    lines = await poll(lambda: read_outbox(Path(tmp_path / "outbox.jsonl")))
    assert lines[0]["to"] == "+61412345678"
