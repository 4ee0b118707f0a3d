"""The ``[limits]`` over real sockets: an SMTP client, the daemon, the fake DataFlows API.

The point is that a pumping burst never reaches the provider: every refused message is
refused at SMTP time, so the fake API sees requests for the allowed SMS only.
"""

from __future__ import annotations

import asyncio

import pytest
from aiosmtpd.smtp import Envelope, Session
from conftest import ALLOWED, DOMAIN, GATEWAY, TOKEN, poll
from structlog.testing import capture_logs
from test_smtp import make_mail, transaction

from mail2sms.passwords import hash_password
from mail2sms.queue import AsyncQueue
from mail2sms.smtp import GatewayHandler, Policy

pytestmark = pytest.mark.anyio

FOREIGN = ["+447400123456", "+12015550123", "+6421123456", "+33612345678"]
PREMIUM = ["+611900123456", "+611300123456"]
ALLOWED_NUMBERS = [f"+6141200{n:04d}" for n in range(10)]


def settings_with_limits(make_settings, fake, **limits):
    return make_settings(
        provider={"kind": "dataflows", "base_url": fake.url, "token": TOKEN, "timeout": 5},
        limits=limits,
    )


def posted_numbers(fake) -> list[str]:
    return [
        number
        for request in fake.requests
        if request.method == "POST"
        for number in request.body["recipient"].split(",")
    ]


async def test_a_pumping_burst_is_stopped_before_any_provider_call(
    make_settings, start_app, fake_dataflows
):
    settings = settings_with_limits(make_settings, fake_dataflows, per_sender_per_hour=5)
    app = await start_app(settings)
    port = app.smtp_port
    with capture_logs() as events:
        await _burst(port)
    sent = await fake_dataflows.until_sent(5)
    assert sorted(s.number for s in sent) == sorted(n[1:] for n in ALLOWED_NUMBERS[:5])
    await poll(lambda: _nothing_due(app))
    assert sorted(posted_numbers(fake_dataflows)) == sorted(n[1:] for n in ALLOWED_NUMBERS[:5])
    refused = [e for e in events if e["event"] == "limit_refused"]
    assert len(refused) == len(FOREIGN + PREMIUM) + 2 + 2
    assert {e["rule"] for e in refused} == {
        "limits.countries",
        "premium-rate number",
        "shared-cost number",
        "limits.per_sender_per_hour",
    }
    assert all(e["log_level"] == "warning" and e["sender"] == ALLOWED for e in refused)
    assert [e["count"] for e in refused if e["rule"] == "limits.per_sender_per_hour"] == [5, 5]

    # a restart on the same queue file: the hour's count is still there
    await app.stop()
    app = await start_app(settings)
    replies = await transaction(
        app.smtp_port, ALLOWED, [GATEWAY], make_mail(subject=ALLOWED_NUMBERS[8], body="again")
    )
    assert replies[-1][0] == 451, replies
    assert "has sent 5 SMS in the last hour" in replies[-1][1]
    # another sender is not held back by alice's count
    replies = await transaction(
        app.smtp_port,
        "bob@example.org",
        [GATEWAY],
        make_mail(sender="bob@example.org", subject=ALLOWED_NUMBERS[9], body="bob"),
    )
    assert replies[-1][0] == 250, replies
    await fake_dataflows.until_sent(6)
    await poll(lambda: _nothing_due(app))
    assert len(posted_numbers(fake_dataflows)) == 6


async def _burst(port: int) -> None:
    """Foreign and premium numbers, then more SMS than alice may send in an hour."""
    for number in FOREIGN + PREMIUM:  # <number>@domain: refused at RCPT
        replies = await transaction(port, ALLOWED, [f"{number}@{DOMAIN}"], make_mail(body="x"))
        assert replies[-1][0] == 550, replies
        assert replies[-1][1].startswith(f"5.7.1 {number} is ")
    replies = await transaction(
        port, ALLOWED, [GATEWAY], make_mail(subject=f"{ALLOWED_NUMBERS[0]}, {FOREIGN[0]}")
    )
    assert replies[-1] == (
        550,
        "5.7.1 +447400123456 is in GB; this gateway sends only to AU (limits.countries)",
    )
    replies = await transaction(port, ALLOWED, [GATEWAY], make_mail(subject="1900 123 456"))
    assert replies[-1] == (
        550,
        "5.7.1 +611900123456 is a premium-rate number; premium-rate numbers are not allowed",
    )
    # then more SMS than the sender may send in an hour, one number per mail
    codes = []
    for i, number in enumerate(ALLOWED_NUMBERS[:7]):
        mail = make_mail(subject=number, body=f"Alert {i}")
        codes.append((await transaction(port, ALLOWED, [GATEWAY], mail))[-1])
    assert [code for code, _ in codes] == [250] * 5 + [451] * 2
    assert codes[-1][1] == (
        "4.7.1 alice@example.com has sent 5 SMS in the last hour; the limit is 5 "
        "(limits.per_sender_per_hour): try again later"
    )


async def _nothing_due(app) -> bool:
    return await app.queue.next_due() is None and (await app.queue.counts())["inflight"] == 0


async def test_recipients_over_max_recipients_get_452_and_the_rest_is_sent(
    make_settings, start_app, fake_dataflows
):
    settings = settings_with_limits(make_settings, fake_dataflows, max_recipients=2)
    app = await start_app(settings)
    rcpts = [f"{n}@{DOMAIN}" for n in ALLOWED_NUMBERS[:3]]
    replies = await transaction(app.smtp_port, ALLOWED, rcpts, make_mail(body="Door open"))
    assert [code for code, _ in replies] == [250, 250, 250, 452, 250]
    assert replies[3][1] == (
        f"4.5.3 Too many recipients: send to <{rcpts[2]}> in another message "
        "(the limit is 2 numbers per message)"
    )
    sent = await fake_dataflows.until_sent(2)
    assert sorted(s.number for s in sent) == sorted(n[1:] for n in ALLOWED_NUMBERS[:2])


async def test_an_alias_counts_its_numbers_at_rcpt(make_settings, start_app, fake_dataflows):
    settings = make_settings(
        provider={"kind": "dataflows", "base_url": fake_dataflows.url, "token": TOKEN},
        gateway={"aliases": {"oncall": ALLOWED_NUMBERS[:2]}},
        limits={"max_recipients": 2},
    )
    app = await start_app(settings)
    rcpts = [f"{ALLOWED_NUMBERS[5]}@{DOMAIN}", f"oncall@{DOMAIN}"]
    replies = await transaction(app.smtp_port, ALLOWED, rcpts, make_mail(body="Door open"))
    assert [code for code, _ in replies] == [250, 250, 452, 250]


async def test_too_many_numbers_in_the_subject_are_refused_at_data(
    make_settings, start_app, fake_dataflows
):
    settings = settings_with_limits(make_settings, fake_dataflows, max_recipients=3)
    app = await start_app(settings)
    subject = ", ".join(ALLOWED_NUMBERS[:4])
    replies = await transaction(app.smtp_port, ALLOWED, [GATEWAY], make_mail(subject=subject))
    assert replies[-1] == (
        550,
        (
            "5.7.1 The message goes to 4 numbers; the limit is 3 per message "
            "(limits.max_recipients): send it in several messages"
        ),
    )
    assert await app.queue.entries(include_finished=True) == []
    assert fake_dataflows.requests == []


async def test_the_per_day_rate_counts_every_sender(make_settings, start_app, fake_dataflows):
    settings = settings_with_limits(make_settings, fake_dataflows, per_day=3)
    app = await start_app(settings)
    port = app.smtp_port
    mail = make_mail(subject=", ".join(ALLOWED_NUMBERS[:2]), body="first")
    assert (await transaction(port, ALLOWED, [GATEWAY], mail))[-1][0] == 250
    other = make_mail(sender="bob@example.org", subject=", ".join(ALLOWED_NUMBERS[2:4]))
    replies = await transaction(port, "bob@example.org", [GATEWAY], other)
    assert replies[-1] == (
        451,
        (
            "4.7.1 this gateway has sent 2 SMS in the last 24 hours and this message adds 2; "
            "the limit is 3 (limits.per_day): try again later"
        ),
    )
    await fake_dataflows.until_sent(2)


async def _data(handler, *, sender: str, user: str | None, number: str) -> str:
    """One DATA through the handler's hook, with an aiosmtpd session as AUTH leaves it."""
    session = Session(asyncio.get_running_loop())
    session.peer = ("127.0.0.1", 40000)
    session.authenticated = user is not None
    session.auth_data = user
    session.login_hash = handler.policy.user_hashes.get(user)  # as GatewaySMTP records it
    envelope = Envelope()
    envelope.mail_from = sender
    envelope.rcpt_tos = [GATEWAY]
    envelope.content = make_mail(sender=ALLOWED, subject=number, body=f"to {number}")
    return str(await handler.handle_DATA(None, session, envelope))


async def test_the_sender_key_is_the_auth_user_else_the_envelope_sender(make_settings, tmp_path):
    carol = {"name": "carol", "password_hash": hash_password("secret", n=1024)}
    settings = make_settings(limits={"per_sender_per_hour": 1}, smtp={"users": [carol]})
    queue = await AsyncQueue.open(tmp_path / "handler.sqlite3")
    try:
        handler = GatewayHandler(Policy.from_settings(settings), queue)
        first, second, third, fourth = ALLOWED_NUMBERS[:4]
        assert (await _data(handler, sender=ALLOWED, user="carol", number=first)).startswith("250 ")
        # the same AUTH user with another envelope sender: one count
        reply = await _data(handler, sender="bob@example.org", user="carol", number=second)
        assert reply.startswith("451 4.7.1 user carol has sent 1 SMS in the last hour")
        # without AUTH, the envelope sender in lower case
        assert (await _data(handler, sender=ALLOWED, user=None, number=third)).startswith("250 ")
        reply = await _data(handler, sender=ALLOWED.upper(), user=None, number=fourth)
        assert reply.startswith("451 4.7.1 alice@example.com has sent 1 SMS")
    finally:
        await queue.close()
