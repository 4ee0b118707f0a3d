"""How mail text becomes SMS text, end to end: normalisation, length policy, text source,
aliases in the subject, and duplicate suppression."""

from __future__ import annotations

import pytest
from conftest import ALLOWED, DOMAIN, GATEWAY, poll, read_outbox
from test_smtp import make_mail, transaction

pytestmark = pytest.mark.anyio

OUTLOOK = "Server \u201cweb1\u201d is down \u2013 we\u2019re on it\u2026"


async def sent_texts(settings) -> list[str]:
    entries = await poll(lambda: read_outbox(settings.provider.path) or None)
    return [e["text"] for e in entries]


async def test_curly_quotes_and_dashes_become_gsm7(make_settings, start_app):
    settings = make_settings()
    app = await start_app(settings)
    replies = await transaction(app.smtp_port, ALLOWED, [GATEWAY], make_mail(body=OUTLOOK))
    assert replies[-1][0] == 250
    assert await sent_texts(settings) == ['Server "web1" is down - we\'re on it...']


async def test_normalisation_can_be_switched_off(make_settings, start_app):
    settings = make_settings(content={"normalize": False})
    app = await start_app(settings)
    await transaction(app.smtp_port, ALLOWED, [GATEWAY], make_mail(body=OUTLOOK))
    assert await sent_texts(settings) == [OUTLOOK]


async def test_too_long_is_refused_by_default_and_truncated_when_asked(make_settings, start_app):
    long_text = "word " * 200  # 1000 characters: 7 parts, the tests allow 3
    refusing = await start_app(make_settings())
    replies = await transaction(refusing.smtp_port, ALLOWED, [GATEWAY], make_mail(body=long_text))
    assert replies[-1][0] == 552


async def test_truncate_keeps_what_fits(make_settings, start_app):
    settings = make_settings(content={"on_too_long": "truncate"})
    app = await start_app(settings)
    replies = await transaction(app.smtp_port, ALLOWED, [GATEWAY], make_mail(body="word " * 200))
    assert replies[-1][0] == 250
    (text,) = await sent_texts(settings)
    assert text.endswith("...")
    assert len(text) <= 3 * 153
    assert text.removesuffix("...").rstrip().endswith("word")


async def test_a_subject_source_address_sends_the_subject(make_settings, start_app):
    settings = make_settings(
        gateway={
            "aliases": {"ups": ["+61412345678"]},
            "options": {f"ups@{DOMAIN}": {"text": "subject", "max_parts": 1}},
        }
    )
    app = await start_app(settings)
    mail = make_mail(to=f"ups@{DOMAIN}", subject="UPS on battery", body="Model X serial 123")
    replies = await transaction(app.smtp_port, ALLOWED, [f"ups@{DOMAIN}"], mail)
    assert replies[-1][0] == 250
    assert await sent_texts(settings) == ["UPS on battery"]


async def test_subject_and_body_together(make_settings, start_app):
    settings = make_settings(
        gateway={
            "aliases": {"ops": ["+61412345678"]},
            "options": {f"ops@{DOMAIN}": {"text": "subject+body"}},
        }
    )
    app = await start_app(settings)
    mail = make_mail(to=f"ops@{DOMAIN}", subject="Disk full", body="on fs02")
    await transaction(app.smtp_port, ALLOWED, [f"ops@{DOMAIN}"], mail)
    assert await sent_texts(settings) == ["Disk full\non fs02"]


async def test_an_alias_among_the_subject_numbers(make_settings, start_app):
    settings = make_settings(gateway={"aliases": {"oncall": ["+61498765432", "+61411111111"]}})
    app = await start_app(settings)
    mail = make_mail(subject="+61412345678, oncall", body="Fire drill at 10")
    await transaction(app.smtp_port, ALLOWED, [GATEWAY], mail)
    await poll(lambda: len(read_outbox(settings.provider.path)) == 3)
    entries = read_outbox(settings.provider.path)
    assert [e["to"] for e in entries] == ["+61412345678", "+61498765432", "+61411111111"]


async def test_a_resent_message_is_acknowledged_but_not_sent_twice(make_settings, start_app):
    settings = make_settings()
    app = await start_app(settings)
    mail = make_mail(body="Generator started")  # fixed Message-ID <test-1@example.com>
    first = await transaction(app.smtp_port, ALLOWED, [GATEWAY], mail)
    second = await transaction(app.smtp_port, ALLOWED, [GATEWAY], mail)
    assert first[-1][0] == second[-1][0] == 250
    assert first[-1][1] == second[-1][1]  # the same queue id
    other = await transaction(
        app.smtp_port,
        "bob@example.org",
        [GATEWAY],
        make_mail(sender="bob@example.org", body="Generator started"),
    )
    assert other[-1][1] != first[-1][1]  # another sender's same Message-ID is another message
    assert len(await app.queue.entries(include_finished=True)) == 2


async def test_duplicate_suppression_can_be_switched_off(make_settings, start_app):
    app = await start_app(make_settings(smtp={"duplicate_window": 0}))
    mail = make_mail(body="Generator started")
    first = await transaction(app.smtp_port, ALLOWED, [GATEWAY], mail)
    second = await transaction(app.smtp_port, ALLOWED, [GATEWAY], mail)
    assert first[-1][1] != second[-1][1]


async def test_the_same_message_id_with_other_numbers_or_text_is_a_new_message(
    make_settings, start_app
):
    settings = make_settings()
    app = await start_app(settings)
    door = make_mail(subject="+61412345678", body="Door 1 open")  # fixed Message-ID
    fire = make_mail(subject="+61498765432", body="FIRE zone 3")  # the same Message-ID
    first = await transaction(app.smtp_port, ALLOWED, [GATEWAY], door)
    second = await transaction(app.smtp_port, ALLOWED, [GATEWAY], fire)
    assert first[-1][1] != second[-1][1]
    await poll(lambda: len(read_outbox(settings.provider.path)) == 2)
    assert sorted(e["text"] for e in read_outbox(settings.provider.path)) == [
        "Door 1 open",
        "FIRE zone 3",
    ]


async def test_a_recipient_deferred_with_452_and_resent_alone_is_delivered(
    make_settings, start_app
):
    settings = make_settings(
        gateway={
            "aliases": {"ups": ["+61498765432"]},
            "options": {f"ups@{DOMAIN}": {"max_parts": 1}},
        }
    )
    app = await start_app(settings)
    mail = make_mail(to=f"+61412345678@{DOMAIN}", subject="UPS on battery", body="Site 4")
    first = await transaction(
        app.smtp_port, ALLOWED, [f"+61412345678@{DOMAIN}", f"ups@{DOMAIN}"], mail
    )
    assert [code for code, _ in first[1:]] == [250, 452, 250]
    resent = await transaction(app.smtp_port, ALLOWED, [f"ups@{DOMAIN}"], mail)  # as an MTA does
    assert resent[-1][0] == 250
    assert resent[-1][1] != first[-1][1]
    await poll(lambda: len(read_outbox(settings.provider.path)) == 2)
    assert sorted(e["to"] for e in read_outbox(settings.provider.path)) == [
        "+61412345678",
        "+61498765432",
    ]


async def test_a_body_of_invisible_characters_falls_back_to_the_subject(make_settings, start_app):
    settings = make_settings()
    app = await start_app(settings)
    mail = make_mail(to=f"+61412345678@{DOMAIN}", subject="Mains restored", body="\u200b\u00ad")
    replies = await transaction(app.smtp_port, ALLOWED, [f"+61412345678@{DOMAIN}"], mail)
    assert replies[-1][0] == 250
    assert await sent_texts(settings) == ["Mains restored"]


async def test_nothing_left_after_normalising_is_refused_not_sent_empty(make_settings, start_app):
    app = await start_app(make_settings())
    replies = await transaction(app.smtp_port, ALLOWED, [GATEWAY], make_mail(body="\u200b\ufeff"))
    assert replies[-1][0] == 550
    assert replies[-1][1].startswith("5.6.0 ")


async def test_reload_swaps_the_provider_and_names_what_needs_a_restart(
    make_settings, start_app, tmp_path
):
    app = await start_app(make_settings())
    other = tmp_path / "other" / "outbox.jsonl"
    new = make_settings(
        provider={"kind": "outbox", "path": str(other)}, smtp={"listen": "127.0.0.1:2"}
    )
    notes = app.reload(new)
    assert notes == ["smtp.listen changed: restart mail2sms to apply it"]
    replies = await transaction(app.smtp_port, ALLOWED, [GATEWAY], make_mail(body="After reload"))
    assert replies[-1][0] == 250
    await poll(lambda: read_outbox(other))
    assert [e["text"] for e in read_outbox(other)] == ["After reload"]
