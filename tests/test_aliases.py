"""Gateway aliases (oncall@…) and per-address options (OTP route, sender ID), end to end."""

from __future__ import annotations

import pytest
from conftest import ALLOWED, DOMAIN, GATEWAY, TOKEN, poll
from test_smtp import make_mail, transaction

from mail2sms.config import load_config
from mail2sms.errors import ConfigError

pytestmark = pytest.mark.anyio

ALIASES = {"oncall": ["0412 345 678", "+61498765432"], "night-shift": ["+61411111111"]}


def settings_for(make_settings, fake, **gateway):
    return make_settings(
        provider={"kind": "dataflows", "base_url": fake.url, "token": TOKEN, "timeout": 5},
        gateway={"aliases": ALIASES, **gateway},
    )


async def test_mail_to_an_alias_goes_to_its_numbers(make_settings, start_app, fake_dataflows):
    app = await start_app(settings_for(make_settings, fake_dataflows))
    replies = await transaction(
        app.smtp_port,
        ALLOWED,
        [f"OnCall@{DOMAIN}", f"night-shift@{DOMAIN}"],
        make_mail(to=f"oncall@{DOMAIN}", subject="Generator failed", body=""),
    )
    assert replies[-1][0] == 250, replies
    sent = await fake_dataflows.until_sent(3)
    assert sorted(s.number for s in sent) == ["61411111111", "61412345678", "61498765432"]
    assert {s.message for s in sent} == {"Generator failed"}  # empty body: the subject is the text


async def test_an_unknown_name_at_the_gateway_domain_is_still_refused(
    make_settings, start_app, fake_dataflows
):
    app = await start_app(settings_for(make_settings, fake_dataflows))
    replies = await transaction(app.smtp_port, ALLOWED, [f"dayshift@{DOMAIN}"], make_mail())
    assert replies[1][0] == 550
    assert replies[1][1].startswith("5.1.3 ")


async def test_an_otp_address_uses_the_priority_route_and_its_sender_id(
    make_settings, start_app, fake_dataflows
):
    options = {GATEWAY: {"otp": True, "sender_id": "Codes"}}
    app = await start_app(settings_for(make_settings, fake_dataflows, options=options))
    replies = await transaction(
        app.smtp_port, ALLOWED, [GATEWAY], make_mail(subject="+61412345678", body="Code 482913")
    )
    assert replies[-1][0] == 250
    (sent,) = await fake_dataflows.until_sent(1)
    (post,) = [r for r in fake_dataflows.requests if r.method == "POST"]
    assert post.body["type"] == "otp"
    assert post.body["sender_id"] == "Codes"
    assert sent.sender_id == "Codes"


async def test_other_addresses_keep_the_plain_route(make_settings, start_app, fake_dataflows):
    options = {f"oncall@{DOMAIN}": {"otp": True}}
    app = await start_app(settings_for(make_settings, fake_dataflows, options=options))
    await transaction(app.smtp_port, ALLOWED, [GATEWAY], make_mail(subject="+61412345678"))
    await fake_dataflows.until_sent(1)
    (post,) = [r for r in fake_dataflows.requests if r.method == "POST"]
    assert post.body["type"] == "plain"
    assert post.body["sender_id"] == "TestBrand"


BASE = f'[gateway]\naddresses = ["{GATEWAY}"]\ndomains = ["{DOMAIN}"]\n'


@pytest.mark.parametrize(
    ("toml", "problem"),
    [
        ('[gateway.aliases]\n"0412345678" = ["+61412345678"]\n', "not an alias name"),
        ('[gateway.aliases]\noncall = ["hello"]\n', "'hello'"),
        ('[gateway.options."nobody@sms.example.com"]\notp = true\n', "not a gateway or alias"),
        (f'[gateway.options."{GATEWAY}"]\nsender_id = "Far too long id"\n', "not a sender ID"),
    ],
)
def test_alias_and_option_mistakes_are_config_errors(tmp_path, toml, problem):
    path = tmp_path / "config.toml"
    path.write_text(BASE + toml, encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert any(p.startswith("gateway.") and problem in p for p in caught.value.problems), (
        caught.value.problems
    )


async def test_mail_to_a_contact_list_is_one_dataflows_campaign(
    make_settings, start_app, fake_dataflows
):
    fake_dataflows.contact_lists["6065ac2f1a2b3"] = ["61411111111", "61422222222"]
    settings = settings_for(
        make_settings, fake_dataflows, contact_lists={"managers": "6065ac2f1a2b3"}
    )
    app = await start_app(settings)
    replies = await transaction(
        app.smtp_port,
        ALLOWED,
        [f"managers@{DOMAIN}", f"oncall@{DOMAIN}"],
        make_mail(to=f"managers@{DOMAIN}", subject="", body="Board meeting moved to 3pm"),
    )
    assert replies[-1][0] == 250, replies
    sent = await fake_dataflows.until_sent(4)
    assert sorted(s.number for s in sent) == [
        "61411111111",
        "61412345678",
        "61422222222",
        "61498765432",
    ]
    posts = {r.path: r.body for r in fake_dataflows.requests if r.method == "POST"}
    assert posts["/api/v3/sms/campaign"] == {
        "contact_list_id": "6065ac2f1a2b3",
        "sender_id": "TestBrand",
        "type": "plain",
        "message": "Board meeting moved to 3pm",
    }
    assert posts["/api/v3/sms/send"]["recipient"] == "61412345678,61498765432"


async def test_an_empty_contact_list_bounces_that_list_only(
    make_settings, start_app, fake_dataflows
):
    fake_dataflows.contact_lists["65f1c0a2b3e00"] = []
    settings = settings_for(make_settings, fake_dataflows, contact_lists={"board": "65f1c0a2b3e00"})
    app = await start_app(settings)
    replies = await transaction(
        app.smtp_port, ALLOWED, [f"board@{DOMAIN}"], make_mail(to=f"board@{DOMAIN}")
    )
    queue_id = replies[-1][1].rsplit(" ", 1)[1]

    async def failed():
        entry = await app.queue.get(queue_id)
        return entry if entry.state == "failed" else None

    entry = await poll(failed)
    (recipient,) = entry.recipients
    assert recipient.number == "list:65f1c0a2b3e00"
    assert "Valid phone number not found" in (recipient.last_error or "")


def test_contact_lists_need_the_dataflows_provider(tmp_path):
    path = tmp_path / "config.toml"
    path.write_text(
        BASE + '[gateway.contact_lists]\nmanagers = "6065ac2f1a2b3"\n', encoding="utf-8"
    )
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert any("provider.kind = 'dataflows'" in p for p in caught.value.problems)


async def test_recipients_with_other_options_are_deferred_to_their_own_message(
    make_settings, start_app, fake_dataflows
):
    options = {f"oncall@{DOMAIN}": {"otp": True, "sender_id": "Bank"}}
    app = await start_app(settings_for(make_settings, fake_dataflows, options=options))
    replies = await transaction(
        app.smtp_port,
        ALLOWED,
        [GATEWAY, f"oncall@{DOMAIN}", f"night-shift@{DOMAIN}"],
        make_mail(subject="+61400000001", body="Vault opened"),
    )
    assert replies[2][0] == 452
    assert replies[2][1].startswith(f"4.5.3 Send to <oncall@{DOMAIN}> in a separate message")
    assert replies[3][0] == 250  # same (default) options as the first
    assert replies[-1][0] == 250
    await fake_dataflows.until_sent(2)
    (post,) = [r for r in fake_dataflows.requests if r.method == "POST"]
    assert post.body["sender_id"] == "TestBrand"
    assert post.body["type"] == "plain"


def test_an_alias_may_not_shadow_a_gateway_address(tmp_path):
    path = tmp_path / "config.toml"
    path.write_text(BASE + '[gateway.aliases]\nsms = ["+61412345678"]\n', encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert any("already a gateway address" in p for p in caught.value.problems)
