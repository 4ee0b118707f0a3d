"""The corpus end to end: each sample mail over SMTP to <number>@<domain>, and the SMS
parts it costs with and without normalisation (the table in docs/content.md)."""

from __future__ import annotations

import re
from email.parser import BytesHeaderParser
from email.utils import getaddresses
from pathlib import Path

import pytest
from conftest import DOMAIN, poll, read_outbox
from test_smtp import transaction

from mail2sms.mail_parse import parse_mail
from mail2sms.sms_text import measure, normalize

MAIL = Path(__file__).parent / "data" / "mail"
DOCS = Path(__file__).parent.parent / "docs" / "content.md"
SAMPLES = sorted(p.stem for p in MAIL.glob("*.eml") if p.with_suffix(".txt").exists())
# one per client family, through the whole daemon
END_TO_END = [
    "outlook_desktop_reply",
    "outlook_html_banner",
    "gmail_reply",
    "iphone",
    "legacy_alarm_lf",
    "ups_subject_only",
]


def sms_text(name: str, *, normalise: bool = True) -> str:
    """What the gateway sends for a sample mailed to <number>@<domain>."""
    content = parse_mail((MAIL / f"{name}.eml").read_bytes())
    text = content.body if content.body.strip() else content.subject.strip()
    return normalize(text) if normalise else text


@pytest.mark.anyio
@pytest.mark.parametrize("name", END_TO_END)
async def test_sample_over_smtp_becomes_the_expected_sms(make_settings, start_app, name):
    raw = (MAIL / f"{name}.eml").read_bytes()
    headers = BytesHeaderParser().parsebytes(raw)
    sender = getaddresses(headers.get_all("From", []))[0][1].lower()
    settings = make_settings(senders={"allow": [sender]}, gateway={"max_parts": 10})
    app = await start_app(settings)
    replies = await transaction(app.smtp_port, sender, [f"+61412345678@{DOMAIN}"], raw)
    assert replies[-1][0] == 250, replies
    entries = await poll(lambda: read_outbox(settings.provider.path))
    expected = (MAIL / f"{name}.txt").read_text(encoding="utf-8").removesuffix("\n")
    text = normalize(expected if expected.strip() else str(headers["Subject"]).strip())
    assert [e["text"] for e in entries] == [text]


def parts_table() -> dict[str, tuple[int, int]]:
    table = {}
    for line in DOCS.read_text(encoding="utf-8").splitlines():
        match = re.fullmatch(r"\| `(\w+)` \| (\d+) \| (\d+) \|.*", line)
        if match:
            table[match.group(1)] = (int(match.group(2)), int(match.group(3)))
    return table


def test_the_parts_table_in_the_docs_is_what_the_code_computes():
    computed = {
        name: (
            measure(sms_text(name, normalise=False)).parts,
            measure(sms_text(name)).parts,
        )
        for name in SAMPLES
    }
    assert parts_table() == computed


@pytest.mark.parametrize("name", SAMPLES)
def test_normalising_never_costs_more_parts(name):
    assert measure(sms_text(name)).parts <= measure(sms_text(name, normalise=False)).parts
