"""SMTP in → queue → DataFlows out, over real sockets: an SMTP client, the daemon, a fake API."""

from __future__ import annotations

import time

import pytest
from conftest import ALLOWED, DOMAIN, GATEWAY, TOKEN, poll
from test_smtp import make_mail, transaction

from mail2sms.models import NewMessage, RecipientState
from mail2sms.queue import Queue

pytestmark = pytest.mark.anyio


def dataflows(fake, **delivery):
    return {
        "provider": {"kind": "dataflows", "base_url": fake.url, "token": TOKEN, "timeout": 5},
        "delivery": delivery,
    }


async def test_mail_becomes_one_dataflows_request_with_every_field(
    make_settings, start_app, fake_dataflows
):
    app = await start_app(make_settings(**dataflows(fake_dataflows)))
    replies = await transaction(
        app.smtp_port,
        ALLOWED,
        [GATEWAY],
        make_mail(subject="+61412345678; 0498 765 432", body="Backup finished: 3 errors"),
    )
    assert replies[-1][0] == 250
    queue_id = replies[-1][1].rsplit(" ", 1)[1]
    await fake_dataflows.until_sent(2)
    posts = [r for r in fake_dataflows.requests if r.method == "POST"]
    assert len(posts) == 1
    request = posts[0]
    assert request.path == "/api/v3/sms/send"
    assert request.headers["authorization"] == f"Bearer {TOKEN}"
    assert request.headers["accept"] == "application/json"
    assert request.headers["content-type"].startswith("application/json")
    assert request.body == {
        "recipient": "61412345678,61498765432",
        "sender_id": "TestBrand",
        "type": "plain",
        "message": "Backup finished: 3 errors",
    }
    entry = await poll(lambda: _all_sent(app, queue_id))
    refs = {r.provider_ref for r in entry.recipients}
    assert None not in refs
    assert all(len(ref) == 13 for ref in refs)


async def _all_sent(app, queue_id):
    entry = await app.queue.get(queue_id)
    return entry if all(r.state is RecipientState.SENT for r in entry.recipients) else None


async def _all_failed(app, queue_id):
    entry = await app.queue.get(queue_id)
    return entry if all(r.state is RecipientState.FAILED for r in entry.recipients) else None


async def test_transient_failures_then_success_delivers_exactly_once(
    make_settings, start_app, fake_dataflows
):
    fake_dataflows.fail_next(2, status=503, body="<html><body>Bad gateway</body></html>")
    app = await start_app(make_settings(**dataflows(fake_dataflows)))
    replies = await transaction(
        app.smtp_port, ALLOWED, [f"+61412345678@{DOMAIN}"], make_mail(body="Door open")
    )
    assert replies[-1][0] == 250
    sent = await fake_dataflows.until_sent(1)
    assert [s[0] for s in sent] == ["61412345678"]
    assert len([r for r in fake_dataflows.requests if r.method == "POST"]) == 3
    queue_id = replies[-1][1].rsplit(" ", 1)[1]
    entry = await poll(lambda: _all_sent(app, queue_id))
    assert entry.recipients[0].attempts == 3
    # nothing else is due: no second SMS however long we look
    assert await app.queue.next_due() is None
    assert len(fake_dataflows.sent) == 1


async def test_stock_unauthenticated_keeps_the_message_queued(
    make_settings, start_app, fake_dataflows
):
    settings = make_settings(**dataflows(fake_dataflows))
    settings = settings.model_copy(
        update={"provider": settings.provider.model_copy(update={"token": _secret("22|wrong")})}
    )
    app = await start_app(settings)
    replies = await transaction(app.smtp_port, ALLOWED, [GATEWAY], make_mail())
    queue_id = replies[-1][1].rsplit(" ", 1)[1]
    await poll(lambda: len(fake_dataflows.requests) >= 2)
    entry = await app.queue.get(queue_id)
    assert entry.recipients[0].state in {RecipientState.PENDING, RecipientState.INFLIGHT}
    assert "Unauthenticated" in (entry.recipients[0].last_error or "")
    assert fake_dataflows.sent == []


async def test_invalid_number_fails_without_retrying(make_settings, start_app, fake_dataflows):
    fake_dataflows.invalid_numbers.add("61412345678")
    app = await start_app(make_settings(**dataflows(fake_dataflows)))
    replies = await transaction(app.smtp_port, ALLOWED, [GATEWAY], make_mail())
    queue_id = replies[-1][1].rsplit(" ", 1)[1]

    entry = await poll(lambda: _all_failed(app, queue_id))
    assert "invalid phone number" in (entry.recipients[0].last_error or "")
    assert len([r for r in fake_dataflows.requests if r.method == "POST"]) == 1


async def test_150_recipients_go_in_requests_of_at_most_100(
    make_settings, start_app, fake_dataflows
):
    numbers = [f"+614{n:08d}" for n in range(12_000_000, 12_000_150)]
    app = await start_app(
        make_settings(
            **dataflows(fake_dataflows),
            gateway={"max_parts": 3},
            limits={"max_recipients": 150},  # above the default 100 per message
        )
    )
    replies = await transaction(
        app.smtp_port, ALLOWED, [GATEWAY], make_mail(subject=",".join(numbers))
    )
    assert replies[-1][0] == 250, replies
    await fake_dataflows.until_sent(150)
    posts = [r for r in fake_dataflows.requests if r.method == "POST"]
    assert [len(p.body["recipient"].split(",")) for p in posts] == [100, 50]


def _secret(value):
    from pydantic import SecretStr  # noqa: PLC0415

    return SecretStr(value)


async def test_a_150_number_message_reaches_dataflows_in_2_requests(
    make_settings, start_app, fake_dataflows
):
    app = await start_app(
        make_settings(**dataflows(fake_dataflows), limits={"max_recipients": 150})
    )
    rcpts = [f"+614{i:08d}@{DOMAIN}" for i in range(10_000_000, 10_000_150)]
    replies = await transaction(app.smtp_port, ALLOWED, rcpts, make_mail(body="Evacuate"))
    assert replies[-1][0] == 250
    await fake_dataflows.until_sent(150)
    posts = [r for r in fake_dataflows.requests if r.method == "POST"]
    assert [len(p.body["recipient"].split(",")) for p in posts] == [100, 50]


async def test_queued_mail_with_one_text_shares_requests_without_losing_a_number(
    make_settings, start_app, fake_dataflows, tmp_path
):
    settings = make_settings(**dataflows(fake_dataflows, workers=1))
    now = time.time()
    numbers = [f"+614{i:08d}" for i in range(10_000_000, 10_000_030)]
    with Queue(settings.queue.path) as queue:  # an alarm storm queued while the API was down
        for i, number in enumerate(numbers):
            queue.enqueue(_message(number, "Site 7 down", at=now - 60 + i))
        queue.enqueue(_message(numbers[0], "Site 7 down", at=now - 20))  # the same number again
        queue.enqueue(_message(numbers[1], "Site 8 down", at=now - 10))  # another text
    await start_app(settings)
    sent = await fake_dataflows.until_sent(32)
    posts = [r.body for r in fake_dataflows.requests if r.method == "POST"]
    # workers = 1: the oldest message takes every alike one along; a repeated number cannot
    # share a request (DataFlows removes repeats), another text never does.
    assert [(len(p["recipient"].split(",")), p["message"]) for p in posts] == [
        (30, "Site 7 down"),
        (1, "Site 7 down"),
        (1, "Site 8 down"),
    ]
    assert sorted(s.number for s in sent) == sorted(
        [n.lstrip("+") for n in numbers] + [numbers[0].lstrip("+"), numbers[1].lstrip("+")]
    )


def _message(number: str, text: str, *, at: float) -> NewMessage:
    return NewMessage(
        envelope_from=ALLOWED,
        from_header=ALLOWED,
        subject="",
        message_id=None,
        recipients=(number,),
        text=text,
        sender_id="TestBrand",
        received_at=at,
        size=100,
        headers="",
    )
