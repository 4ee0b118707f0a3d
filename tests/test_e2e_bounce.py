"""Failures after 250 end as one RFC 3464 bounce, received by a recording relay on loopback."""

from __future__ import annotations

import asyncio
import email
import email.policy

import pytest
from conftest import ALLOWED, GATEWAY, TOKEN, poll
from fakes.relay import RecordingRelay
from test_smtp import make_mail, transaction

from mail2sms.cli import main
from mail2sms.models import RecipientState

pytestmark = pytest.mark.anyio


def settings_for(make_settings, fake, relay: RecordingRelay | None, **delivery):
    return make_settings(
        provider={"kind": "dataflows", "base_url": fake.url, "token": TOKEN, "timeout": 5},
        bounce={
            "relay": str(relay.address) if relay else "",
            "from": "MAILER-DAEMON@sms.test",
            "starttls": "never",
        },
        delivery={"retry_initial": 0.05, "retry_max": 0.1, **delivery},
    )


async def send(app, subject: str, body: str = "Pump 2 failed") -> str:
    replies = await transaction(
        app.smtp_port, ALLOWED, [GATEWAY], make_mail(subject=subject, body=body)
    )
    assert replies[-1][0] == 250, replies
    return replies[-1][1].rsplit(" ", 1)[1]


def parts(message):
    return [p.get_content_type() for p in message.iter_parts()]


async def test_partial_failure_sends_the_good_number_once_and_bounces_the_bad_one(
    make_settings, start_app, fake_dataflows
):
    fake_dataflows.invalid_numbers.add("61498765432")
    async with RecordingRelay() as relay:
        app = await start_app(settings_for(make_settings, fake_dataflows, relay))
        queue_id = await send(app, "+61412345678, +61498765432")
        (bounce,) = await relay.wait_for(1)

        assert bounce.mail_from == ""  # MAIL FROM:<>: a bounce is never bounced
        assert bounce.rcpt_tos == (ALLOWED,)
        message = email.message_from_bytes(bounce.data, policy=email.policy.default)
        assert message.get_content_type() == "multipart/report"
        assert message.get_param("report-type") == "delivery-status"
        assert parts(message) == ["text/plain", "message/delivery-status", "text/rfc822-headers"]
        assert message["Auto-Submitted"] == "auto-replied"
        assert str(message["To"]) == ALLOWED
        text = message.get_body(("plain",)).get_content()
        assert "+61498765432" in text
        assert "+61412345678" in text  # "it was delivered to"
        assert queue_id in text
        status = bounce.data.decode("ascii", "replace")
        assert "Final-Recipient: rfc822; +61498765432@" in status
        assert "Status: 5.1.1" in status
        assert "Reporting-MTA: dns; sms.test" in status

        assert [s.number for s in fake_dataflows.sent] == ["61412345678"]
        entry = await poll(lambda: _bounce_state(app, queue_id, "sent"))
        assert {r.number: r.state for r in entry.recipients} == {
            "+61412345678": RecipientState.SENT,
            "+61498765432": RecipientState.FAILED,
        }
        assert len(relay.transactions) == 1


async def test_relay_down_then_up_delivers_the_bounce_once(
    make_settings, start_app, fake_dataflows
):
    fake_dataflows.invalid_numbers.add("61412345678")
    async with RecordingRelay() as relay:
        await relay.stop()
        app = await start_app(settings_for(make_settings, fake_dataflows, relay))
        queue_id = await send(app, "+61412345678")
        entry = await poll(lambda: _bounce_error(app, queue_id))
        assert entry.bounce_state == "pending"
        assert str(relay.address) in (entry.bounce_error or "")
        await relay.start()
        await relay.wait_for(1)
        await poll(lambda: _bounce_state(app, queue_id, "sent"))
        assert len(relay.transactions) == 1
        assert relay.transactions[0].rcpt_tos == (ALLOWED,)


async def test_relay_refusal_drops_the_bounce_without_retrying(
    make_settings, start_app, fake_dataflows
):
    fake_dataflows.invalid_numbers.add("61412345678")
    async with RecordingRelay() as relay:
        relay.refuse_next(5, code=550, text="5.1.1 No such user", at="RCPT")
        app = await start_app(settings_for(make_settings, fake_dataflows, relay))
        queue_id = await send(app, "+61412345678")
        entry = await poll(lambda: _bounce_state(app, queue_id, "dropped"))
        assert "No such user" in (entry.bounce_error or "")
        assert relay.transactions == []


async def test_without_a_relay_the_failure_is_logged_only(make_settings, start_app, fake_dataflows):
    fake_dataflows.invalid_numbers.add("61412345678")
    app = await start_app(settings_for(make_settings, fake_dataflows, None))
    queue_id = await send(app, "+61412345678")
    entry = await poll(lambda: _bounce_state(app, queue_id, "dropped"))
    assert "bounce.relay is empty" in (entry.bounce_error or "")


async def test_a_wrong_token_never_bounces(make_settings, start_app, fake_dataflows):
    fake_dataflows.token = "22|somethingElse"
    async with RecordingRelay() as relay:
        app = await start_app(settings_for(make_settings, fake_dataflows, relay, give_up_after=0.2))
        queue_id = await send(app, "+61412345678")
        await poll(lambda: len(fake_dataflows.requests) >= 3)
        entry = await app.queue.get(queue_id)
        assert entry.recipients[0].state is not RecipientState.FAILED
        assert entry.bounce_state is None
        assert relay.transactions == []


async def _bounce_state(app, queue_id: str, state: str):
    entry = await app.queue.get(queue_id)
    return entry if entry.bounce_state == state else None


async def _bounce_error(app, queue_id: str):
    entry = await app.queue.get(queue_id)
    return entry if entry.bounce_error else None


def cli_config(tmp_path, app) -> str:
    path = tmp_path / "cli.toml"
    path.write_text(
        f'[gateway]\naddresses = ["{GATEWAY}"]\n[queue]\npath = "{app.queue.path}"\n',
        encoding="utf-8",
    )
    return str(path)


async def test_queue_bounce_on_the_running_daemon_sends_the_bounce(
    make_settings, start_app, fake_dataflows, tmp_path
):
    fake_dataflows.down = True
    async with RecordingRelay() as relay:
        app = await start_app(
            settings_for(make_settings, fake_dataflows, relay, retry_initial=3600, retry_max=3600)
        )
        queue_id = await send(app, "+61412345678")
        await poll(lambda: _last_error(app, queue_id))
        code = await asyncio.to_thread(
            main, ["queue", "bounce", queue_id, "-c", cli_config(tmp_path, app)]
        )
        assert code == 0
        (bounce,) = await relay.wait_for(1)
        message = email.message_from_bytes(bounce.data, policy=email.policy.default)
        text = message.get_body(("plain",)).get_content()
        assert "administrator" in text
        assert fake_dataflows.sent == []


async def test_queue_retry_on_the_running_daemon_sends_now(
    make_settings, start_app, fake_dataflows, tmp_path
):
    fake_dataflows.down = True
    app = await start_app(
        settings_for(make_settings, fake_dataflows, None, retry_initial=3600, retry_max=3600)
    )
    queue_id = await send(app, "+61412345678")
    await poll(lambda: _last_error(app, queue_id))
    fake_dataflows.down = False
    code = await asyncio.to_thread(
        main, ["queue", "retry", queue_id, "-c", cli_config(tmp_path, app)]
    )
    assert code == 0
    sent = await fake_dataflows.until_sent(1, timeout=3)  # IDLE_POLL is 1 s
    assert [s.message for s in sent] == ["Pump 2 failed"]


async def _last_error(app, queue_id: str):
    entry = await app.queue.get(queue_id)
    return entry if entry.recipients[0].last_error else None


def online_config(tmp_path, relay_address: str, **bounce: str) -> str:
    path = tmp_path / "online.toml"
    extra = "".join(f'{k} = "{v}"\n' for k, v in bounce.items())
    path.write_text(
        f'[gateway]\naddresses = ["{GATEWAY}"]\n'
        f'[provider]\nkind = "outbox"\npath = "{tmp_path / "outbox.jsonl"}"\n'
        f'[bounce]\nrelay = "{relay_address}"\nstarttls = "never"\n{extra}',
        encoding="utf-8",
    )
    return str(path)


async def test_check_config_online_checks_the_bounce_relay_up_to_auth(tmp_path, capsys):
    async with RecordingRelay(auth={"bounces@example.com": "relay-pass-123"}) as relay:
        config = online_config(
            tmp_path, str(relay.address), user="bounces@example.com", password="relay-pass-123"
        )
        code = await asyncio.to_thread(main, ["check-config", "--online", "-c", config])
        assert code == 0
        assert [login.user for login in relay.logins] == ["bounces@example.com"]
        assert relay.transactions == []  # nothing was sent
    out = capsys.readouterr().out
    assert "bounces:" in out
    assert "relay-pass-123" not in out


async def test_check_config_online_with_the_relay_down_exits_75(tmp_path, capsys):
    async with RecordingRelay() as relay:
        address = str(relay.address)
    code = await asyncio.to_thread(
        main, ["check-config", "--online", "-c", online_config(tmp_path, address)]
    )
    assert code == 75
    assert "bounces cannot be sent now" in capsys.readouterr().err
