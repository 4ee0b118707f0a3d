"""No backscatter, no loops: bounces, auto-replies and looping mail are refused at SMTP time."""

from __future__ import annotations

import pytest
from conftest import ALLOWED, GATEWAY
from test_smtp import make_mail, transaction

pytestmark = pytest.mark.anyio


def with_headers(raw: bytes, *lines: str) -> bytes:
    return "".join(f"{line}\r\n" for line in lines).encode() + raw


async def test_null_sender_is_refused_at_mail_from(make_settings, start_app):
    app = await start_app(make_settings())
    replies = await transaction(app.smtp_port, "", [GATEWAY], make_mail())
    assert len(replies) == 1
    code, text = replies[0]
    assert code == 550
    assert text.startswith("5.7.1 ")
    assert "empty sender" in text


@pytest.mark.parametrize("keyword", ["auto-replied", "auto-notified", "Auto-Replied; owner=x"])
async def test_automatic_replies_are_refused_550_571(make_settings, start_app, keyword):
    app = await start_app(make_settings())
    raw = with_headers(make_mail(), f"Auto-Submitted: {keyword}")
    replies = await transaction(app.smtp_port, ALLOWED, [GATEWAY], raw)
    assert replies[-1][0] == 550
    assert replies[-1][1].startswith("5.7.1 Automatic mail")


async def test_auto_generated_alerts_are_accepted_by_default(make_settings, start_app):
    app = await start_app(make_settings())
    raw = with_headers(make_mail(), "Auto-Submitted: auto-generated")
    replies = await transaction(app.smtp_port, ALLOWED, [GATEWAY], raw)
    assert replies[-1][0] == 250


async def test_auto_generated_can_be_refused_too(make_settings, start_app):
    app = await start_app(make_settings(smtp={"accept_auto_generated": False}))
    raw = with_headers(make_mail(), "Auto-Submitted: auto-generated")
    replies = await transaction(app.smtp_port, ALLOWED, [GATEWAY], raw)
    assert replies[-1][0] == 550


async def test_auto_submitted_no_is_a_person(make_settings, start_app):
    app = await start_app(make_settings())
    raw = with_headers(make_mail(), "Auto-Submitted: no")
    replies = await transaction(app.smtp_port, ALLOWED, [GATEWAY], raw)
    assert replies[-1][0] == 250


async def test_a_delivery_report_is_refused(make_settings, start_app):
    app = await start_app(make_settings())
    raw = (
        f"From: {ALLOWED}\r\nTo: {GATEWAY}\r\nSubject: +61412345678\r\nMIME-Version: 1.0\r\n"
        'Content-Type: multipart/report; report-type=delivery-status; boundary="b"\r\n\r\n'
        "--b\r\nContent-Type: text/plain\r\n\r\nUndelivered\r\n--b--\r\n"
    ).encode()
    replies = await transaction(app.smtp_port, ALLOWED, [GATEWAY], raw)
    assert replies[-1][0] == 550
    assert "Delivery reports" in replies[-1][1]


async def test_too_many_received_headers_is_a_loop_554_546(make_settings, start_app):
    app = await start_app(make_settings(smtp={"max_received": 5}))
    hops = [
        f"Received: from hop{i}.example.net by mx.example.net; Mon, 1 Jan 2024" for i in range(6)
    ]
    replies = await transaction(app.smtp_port, ALLOWED, [GATEWAY], with_headers(make_mail(), *hops))
    assert replies[-1][0] == 554
    assert replies[-1][1].startswith("5.4.6 Mail loop detected: the message passed 6")
    ok = await transaction(app.smtp_port, ALLOWED, [GATEWAY], with_headers(make_mail(), *hops[:5]))
    assert ok[-1][0] == 250


@pytest.mark.parametrize("sender", ['"john smith"@example.org', "a..b@example.org"])
async def test_a_sender_no_bounce_could_reach_is_refused_553_517(make_settings, start_app, sender):
    app = await start_app(make_settings())
    replies = await transaction(app.smtp_port, sender, [GATEWAY], make_mail())
    assert replies == [(553, replies[0][1])]
    assert replies[0][1].startswith("5.1.7 ")
    assert "plain address" in replies[0][1]


async def test_an_address_literal_sender_can_be_allowed(make_settings, start_app):
    app = await start_app(make_settings(senders={"allow": ["alarm@[192.0.2.7]"]}))
    raw = make_mail(sender="alarm@[192.0.2.7]")
    replies = await transaction(app.smtp_port, "alarm@[192.0.2.7]", [GATEWAY], raw)
    assert replies[-1][0] == 250


@pytest.mark.parametrize(
    ("header", "code"),
    [("Auto-Submitted: no (a person wrote this)", 250), ("Auto-Submitted: (x) Auto-Replied", 550)],
)
async def test_auto_submitted_comments_are_ignored(make_settings, start_app, header, code):
    app = await start_app(make_settings())
    replies = await transaction(
        app.smtp_port, ALLOWED, [GATEWAY], with_headers(make_mail(), header)
    )
    assert replies[-1][0] == code
