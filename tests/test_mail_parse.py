from __future__ import annotations

import base64
import contextlib
import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from mail2sms import mail_parse
from mail2sms.errors import UnparseableMailError
from mail2sms.mail_parse import Cleanup, header_block, html_to_text, parse_mail
from mail2sms.models import MailContent

MAIL_DIR = Path(__file__).parent / "data" / "mail"
HEAD = b"From: alice@example.com\r\nTo: sms@sms.example.com\r\nSubject: 0412345678\r\n"


def mime(content_type: bytes, body: bytes, *, cte: bytes = b"7bit", extra: bytes = b"") -> bytes:
    """Build a single-part message around ``body``."""
    return (
        HEAD
        + b"MIME-Version: 1.0\r\nContent-Type: "
        + content_type
        + b"\r\nContent-Transfer-Encoding: "
        + cte
        + b"\r\n"
        + extra
        + b"\r\n"
        + body
    )


def multipart(subtype: bytes, *parts: bytes) -> bytes:
    """Build a multipart message; each part is its own headers, blank line and body."""
    boundary = b"==b0undary=="
    chunks = [
        HEAD,
        b"MIME-Version: 1.0\r\nContent-Type: multipart/" + subtype,
        b'; boundary="' + boundary + b'"\r\n\r\npreamble\r\n',
    ]
    chunks.extend(b"--" + boundary + b"\r\n" + part + b"\r\n" for part in parts)
    chunks.append(b"--" + boundary + b"--\r\n")
    return b"".join(chunks)


def nested(depth: int) -> bytes:
    """``depth`` multiparts inside each other around one text/plain part."""
    opening = b"".join(
        b'Content-Type: multipart/mixed; boundary="b%d"\r\n\r\n--b%d\r\n' % (i, i)
        for i in range(depth)
    )
    closing = b"".join(b"\r\n--b%d--" % i for i in reversed(range(depth)))
    return HEAD + opening + b"Content-Type: text/plain\r\n\r\ndeep text" + closing + b"\r\n"


OUTLOOK_HTML = b"""<html xmlns:o="urn:schemas-microsoft-com:office:office">
<head><meta http-equiv=Content-Type content="text/html; charset=windows-1252">
<!--[if !mso]><style>v\\:* {behavior:url(#default#VML);}</style><![endif]-->
<style><!--
p.MsoNormal {margin:0cm; font-family:"Calibri",sans-serif;}
--></style>
<!--[if gte mso 9]><xml><o:shapedefaults v:ext="edit" spidmax="1026" /></xml><![endif]-->
<title>ignored title</title></head>
<body lang=EN-AU><div class=WordSection1>
<p class=MsoNormal>Generator&nbsp;2 is&nbsp;<b>offline</b>.<o:p></o:p></p>
<p class=MsoNormal><o:p>&nbsp;</o:p></p>
<p class=MsoListParagraph><![if !supportLists]><span>1.<span>&nbsp;</span></span><![endif]>Start
   the   backup<o:p></o:p></p>
<p class=MsoNormal>Fuel &amp; oil: 40&#37; &lt;low&gt;<o:p></o:p></p>
</div></body></html>"""


# --- the body ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "body"),
    [
        pytest.param(HEAD + b"\r\nHello there\r\n", "Hello there", id="no-mime-crlf"),
        pytest.param(
            b"From: panel@alarm.example\nSubject: 0412345678\n\nZONE 3 ALARM\nEntr\xe9e\n",
            "ZONE 3 ALARM\nEntrée",
            id="no-mime-bare-lf-8bit-latin1",
        ),
        pytest.param(
            b"Subject: x\n\nTemp\xc3\xa9rature 41\xc2\xb0C\n",
            "Température 41°C",
            id="no-mime-8bit-utf8",
        ),
        pytest.param(mime(b"text/plain", b"Just text\r\n"), "Just text", id="text-plain"),
        pytest.param(
            mime(
                b"text/plain; charset=windows-1252",
                b"=93Quoted=94 =96 it=92s =8020",
                cte=b"quoted-printable",
            ),
            "\u201cQuoted\u201d \u2013 it\u2019s \u20ac20",
            id="windows-1252-qp",
        ),
        pytest.param(
            mime(b'text/plain; charset="iso-8859-1"', b"Caf\xe9 cr\xe8me", cte=b"8bit"),
            "Café crème",
            id="iso-8859-1-8bit",
        ),
        pytest.param(
            mime(b"text/plain; charset=iso-8859-1", b"=93mislabelled=94", cte=b"quoted-printable"),
            "\u201cmislabelled\u201d",
            id="iso-8859-1-read-as-windows-1252",
        ),
        pytest.param(
            mime(
                b"text/plain; charset=utf-8",
                base64.encodebytes("Grüße aus Zürich ✓\n".encode()),
                cte=b"base64",
            ),
            "Grüße aus Zürich ✓",
            id="base64-utf8",
        ),
        pytest.param(
            mime(b"text/plain; charset=koi8-r", "Привет".encode("koi8-r"), cte=b"8bit"),
            "Привет",
            id="koi8-r",
        ),
        pytest.param(
            mime(b"text/plain; charset=x-made-up", "naïve ✓".encode(), cte=b"8bit"),
            "naïve ✓",
            id="unknown-charset-utf8-bytes",
        ),
        pytest.param(
            mime(b"text/plain; charset=x-made-up", b"na\xefve", cte=b"8bit"),
            "naïve",
            id="unknown-charset-latin1-bytes",
        ),
        pytest.param(
            mime(b"text/plain; charset=base64", b"aGVsbG8=", cte=b"8bit"),
            "aGVsbG8=",
            id="charset-names-a-non-text-codec",
        ),
        pytest.param(
            mime(b"text/plain; charset=us-ascii", b"caf\xc3\xa9", cte=b"8bit"),
            "café",
            id="ascii-label-with-8bit-utf8",
        ),
        pytest.param(
            mime(b"text/plain; charset=utf-8", b"SGVsbG8gd29ybGQ=!!!", cte=b"base64"),
            "Hello world",
            id="broken-base64",
        ),
        pytest.param(
            mime(b"text/plain; charset=utf-8", b"SGVsbG8", cte=b"base64"),
            "Hello",
            id="base64-missing-padding",
        ),
        pytest.param(mime(b"text/plain", b""), "", id="empty-body"),
        pytest.param(HEAD + b"\r\n", "", id="empty-no-mime"),
        pytest.param(HEAD, "", id="headers-only"),
        pytest.param(mime(b"text/plain", b"\r\n  \r\n\t\r\n"), "", id="blank-body"),
    ],
)
def test_body_decoding(raw: bytes, body: str) -> None:
    assert parse_mail(raw).body == body


@pytest.mark.parametrize(
    ("raw", "body"),
    [
        pytest.param(
            multipart(
                b"alternative",
                b"Content-Type: text/plain; charset=utf-8\r\n\r\nPlain wins",
                b"Content-Type: text/html; charset=utf-8\r\n\r\n<p>HTML loses</p>",
            ),
            "Plain wins",
            id="alternative-plain-first",
        ),
        pytest.param(
            multipart(
                b"alternative",
                b"Content-Type: text/html\r\n\r\n<p>HTML loses</p>",
                b"Content-Type: text/plain\r\n\r\nPlain wins",
            ),
            "Plain wins",
            id="alternative-plain-last",
        ),
        pytest.param(
            multipart(
                b"alternative",
                b"Content-Type: text/plain\r\n\r\n \r\n",
                b"Content-Type: text/html\r\n\r\n<p>Only the HTML has text</p>",
            ),
            "Only the HTML has text",
            id="alternative-empty-plain",
        ),
        pytest.param(
            multipart(
                b"mixed",
                b"Content-Type: text/plain\r\nContent-Disposition: attachment; "
                b'filename="notes.txt"\r\n\r\nATTACHMENT',
                b"Content-Type: text/plain\r\n\r\nThe body",
                b"Content-Type: application/pdf\r\nContent-Transfer-Encoding: base64\r\n"
                b"Content-Disposition: attachment\r\n\r\nJVBERi0xLjQK",
            ),
            "The body",
            id="attachment-ignored",
        ),
        pytest.param(
            multipart(
                b"mixed",
                b"Content-Type: text/html\r\nContent-Disposition: attachment\r\n\r\n<p>NO</p>",
                b"Content-Type: image/png\r\n\r\nnot text",
            ),
            "",
            id="only-attachments",
        ),
        pytest.param(
            multipart(
                b"mixed",
                b"Content-Type: message/rfc822\r\n\r\nSubject: inner\r\n\r\nFORWARDED",
                b"Content-Type: text/plain\r\n\r\nOuter text",
            ),
            "Outer text",
            id="attached-message-ignored",
        ),
        pytest.param(
            multipart(
                b"mixed",
                b'Content-Type: multipart/alternative; boundary="inner"\r\n\r\n'
                b"--inner\r\nContent-Type: text/html\r\n\r\n<b>Nested</b> html\r\n--inner--",
            ),
            "Nested html",
            id="nested-html-only",
        ),
        pytest.param(
            mime(b"text/html; charset=windows-1252", OUTLOOK_HTML, cte=b"8bit"),
            # The <p>&nbsp;</p> blank line goes: an SMS has no room for blank lines.
            "Generator 2 is offline.\n1. Start the backup\nFuel & oil: 40% <low>",
            id="outlook-html-only",
        ),
    ],
)
def test_part_choice(raw: bytes, body: str) -> None:
    assert parse_mail(raw).body == body


@pytest.mark.parametrize(
    ("text", "body"),
    [
        (b"line one   \r\nline two\t\r\n", "line one\nline two"),
        (b"\r\n\r\n\r\ntext\r\n\r\n\r\n", "text"),
        (b"a\r\n\r\n\r\n\r\n\r\nb", "a\nb"),
        (b"a\r\n\r\nb", "a\nb"),
        (b"a   b\t\tc\td", "a b c d"),
        (b"  \tindented  text", "  \tindented text"),
        (b"a\rb\nc\r\nd", "a\nb\nc\nd"),
        (b"   indented first line\r\n", "   indented first line"),
    ],
)
def test_text_shaping(text: bytes, body: str) -> None:
    assert parse_mail(mime(b"text/plain", text)).body == body


@pytest.mark.parametrize(
    ("params", "text", "body"),
    [
        (b"format=flowed", b"one two \r\nthree\r\nfour", "one two three\nfour"),
        (b"format=flowed; delsp=yes", b"long-wor \r\nd end", "long-word end"),
        (b"format=flowed", b" >not a quote\r\n", ">not a quote"),
        (b"format=flowed", b"> quoted \r\n> more\r\nreply", "> quoted more\nreply"),
        (b"format=flowed", b"text\r\n-- \r\nSig", "text"),  # the signature goes
        (b"", b"fixed \r\nlines", "fixed\nlines"),
    ],
)
def test_format_flowed(params: bytes, text: bytes, body: str) -> None:
    raw = mime(b"text/plain; charset=utf-8; " + params, text)
    assert parse_mail(raw).body == body


# --- removal: quotes, signatures, footers, banners, disclaimers ---------------------------


def body_of(text: str) -> str:
    return parse_mail(mime(b"text/plain; charset=utf-8", text.encode())).body


@pytest.mark.parametrize(
    ("text", "body"),
    [
        pytest.param(
            "Yes.\n\nOn Mon, 20 May 2024 at 10:00, Ann <ann@example.com> wrote:\n\n"
            "> Can you?\n> ok",
            "Yes.",
            id="gmail-attribution",
        ),
        pytest.param(
            "Yes.\n\nOn Mon, 20 May 2024 at 10:00, Ann Example <\nann@example.com> wrote:\n"
            "> Can you?",
            "Yes.",
            id="gmail-attribution-wrapped",
        ),
        pytest.param(
            "Ja.\n\nAm Mo., 20. Mai 2024 um 10:00 Uhr schrieb Ann <ann@example.de>:\n> Kannst du?",
            "Ja.",
            id="german-attribution",
        ),
        pytest.param(
            "Oui.\n\nLe lun. 20 mai 2024 à 10:00, Ann <ann@example.fr> a écrit :\n> Tu peux ?",
            "Oui.",
            id="french-attribution",
        ),
        pytest.param(
            "On my way\nOn Mon, 20 May 2024, Ann <a@b> wrote:\n> where are you",
            "On my way",
            id="reply-line-starting-with-on-is-kept",
        ),
        pytest.param(
            "On call tonight, Sam wrote:\nthe pump is fine",
            "On call tonight, Sam wrote:\nthe pump is fine",
            id="attribution-without-quote-is-text",
        ),
        pytest.param(
            "Done.\n\nFrom: Ann <ann@example.com>\nSent: Monday, 20 May 2024 10:00\n"
            "To: Bob\nSubject: RE: job\n\nOld text",
            "Done.",
            id="outlook-header-block",
        ),
        pytest.param(
            "Fait.\n\nDe : Ann <ann@example.fr>\nEnvoyé : lundi 20 mai 2024 10:00\n"
            "À : Bob\nObjet : job\n\nAncien",
            "Fait.",
            id="outlook-header-block-french",
        ),
        pytest.param(
            "Done.\n\n*From:* Ann\n*Sent:* Monday\n*To:* Bob\n*Subject:* job\nOld",
            "Done.",
            id="outlook-header-block-bold-labels",
        ),
        pytest.param(
            "Done.\n________________________________\nFrom: Ann\nSent: Mon\nTo: Bob\n"
            "Subject: job\nOld",
            "Done.",
            id="underscore-rule",
        ),
        pytest.param(
            "Done.\n\n-----Original Message-----\nFrom: Ann\nOld text",
            "Done.",
            id="original-message",
        ),
        pytest.param(
            "Fyi\n\nFrom: Monitor <m@example.com>\nSent: Monday\nTo: Bob\nSubject: FW: DISK FULL\n"
            "DISK FULL",
            "Fyi\nFrom: Monitor <m@example.com>\nSent: Monday\nTo: Bob\nSubject: FW: DISK FULL\n"
            "DISK FULL",
            id="forwarded-header-block-is-kept",
        ),
        pytest.param(
            "From: server1\nTo: ops\nLoad is high",
            "From: server1\nTo: ops\nLoad is high",
            id="header-like-text-without-subject-is-kept",
        ),
        pytest.param(
            "> earlier point\nmy answer\n> later point\nsecond answer",
            "> earlier point\nmy answer\n> later point\nsecond answer",
            id="inline-quotes-are-kept",
        ),
        pytest.param("Sure\n\n> old\n> older", "Sure\n> old\n> older", id="trailing-quote-kept"),
        pytest.param(
            "Sure\n\n> On 20 May 2024, at 10:00, Ann <a@b> wrote:\n>\n> old",
            "Sure",
            id="trailing-quote-with-attribution",
        ),
        pytest.param("> only a quote\n> still", "> only a quote\n> still", id="only-a-quote"),
        pytest.param("Call me\n-- \nAnn Example\nOps", "Call me", id="signature"),
        pytest.param("Call me\n--\nAnn", "Call me\n--\nAnn", id="bare-dashes-are-text"),
        pytest.param("Call me\n\n--\n", "Call me", id="bare-dashes-at-the-end"),
        pytest.param("-- \nonly a signature", "--\nonly a signature", id="only-a-signature"),
        pytest.param("Call me\n---\nAnn", "Call me\n---\nAnn", id="three-dashes-are-text"),
        pytest.param("Late\n\nSent from my iPhone", "Late", id="iphone"),
        pytest.param("Late\nSent from my iPad", "Late", id="ipad"),
        pytest.param(
            "Late\n\nSent from my Samsung Galaxy smartphone.", "Late", id="samsung-galaxy"
        ),
        pytest.param("Late\n\nSent from my Android device", "Late", id="android"),
        pytest.param(
            "Late\n\nGet Outlook for Android<https://aka.ms/ghei36>", "Late", id="outlook-android"
        ),
        pytest.param("Late\n\nSent from Mail for Windows", "Late", id="mail-for-windows"),
        pytest.param(
            "Late\n\nSent from Yahoo Mail for iPhone<https://overview.mail.yahoo.com>",
            "Late",
            id="yahoo",
        ),
        pytest.param("Late\n\nVon meinem iPhone gesendet", "Late", id="german-iphone"),
        pytest.param(
            "Sent from my iPhone, the gate code is 4471",
            "Sent from my iPhone, the gate code is 4471",
            id="footer-only-text-stays",
        ),
        pytest.param(
            "Sent from my iPhone\nthe gate code is 4471",
            "Sent from my iPhone\nthe gate code is 4471",
            id="footer-words-not-last-stay",
        ),
        pytest.param(
            "CAUTION: This email originated from outside of the organization. Do not click "
            "links or open attachments unless you recognize the sender.\n\nPump 3 failed",
            "Pump 3 failed",
            id="m365-caution-banner",
        ),
        pytest.param(
            "CAUTION: This email originated from outside of the organization. Do not click\n"
            "links or open attachments unless you recognize the sender.\nPump 3 failed",
            "Pump 3 failed",
            id="wrapped-banner",
        ),
        pytest.param("[EXTERNAL]\nPump 3 failed", "Pump 3 failed", id="external-tag-line"),
        pytest.param("[EXTERNAL] Pump 3 failed", "Pump 3 failed", id="external-tag-prefix"),
        pytest.param(
            "[External Sender] Use caution with links and attachments.\nPump 3 failed",
            "Pump 3 failed",
            id="external-sender-banner",
        ),
        pytest.param(
            "You don\u2019t often get email from a@example.com. Learn why this is important\n"
            "Pump 3 failed",
            "Pump 3 failed",
            id="first-contact-tip",
        ),
        pytest.param(
            "EXTERNAL EMAIL: This message came from outside the company.\nPump 3 failed",
            "Pump 3 failed",
            id="external-email-banner",
        ),
        pytest.param(
            "Pump 3 failed\nCAUTION: This email originated from outside of the organization.",
            "Pump 3 failed\nCAUTION: This email originated from outside of the organization.",
            id="banner-not-at-top-stays",
        ),
        pytest.param(
            "CAUTION: wet floor in hall 2", "CAUTION: wet floor in hall 2", id="caution-is-text"
        ),
        pytest.param(
            "Pump 3 failed\n\nThis email and any attachments are confidential and intended "
            "solely for the addressee. If you have received this email in error, delete it.",
            "Pump 3 failed",
            id="disclaimer-paragraph",
        ),
        pytest.param(
            "Pump 3 failed\nCONFIDENTIALITY NOTICE: The contents of this email are confidential"
            " and may be privileged. Any unauthorised use or disclosure is prohibited.",
            "Pump 3 failed",
            id="disclaimer-without-blank-line",
        ),
        pytest.param(
            "Pump 3 failed\nCONFIDENTIALITY NOTICE: The contents of this email are confidential.",
            "Pump 3 failed\nCONFIDENTIALITY NOTICE: The contents of this email are confidential.",
            id="short-disclaimer-stays",
        ),
        pytest.param(
            "Pump 3 failed\n\nDisclaimer:\n\nThe information contained in this e-mail is "
            "intended only for the named addressee and may be privileged.\nIf you have received "
            "it in error, delete it.",
            "Pump 3 failed",
            id="disclaimer-heading-and-paragraphs",
        ),
        pytest.param(
            "Pump 3 failed\n\nDisclaimer: readings are approximate",
            "Pump 3 failed\nDisclaimer: readings are approximate",
            id="disclaimer-word-without-legalese-stays",
        ),
        pytest.param(
            "This message is confidential: pump 3 failed, tell nobody.",
            "This message is confidential: pump 3 failed, tell nobody.",
            id="disclaimer-like-only-text-stays",
        ),
        pytest.param(
            "CONFIDENTIALITY NOTICE: confidential stuff\n\nPump 3 failed",
            "CONFIDENTIALITY NOTICE: confidential stuff\nPump 3 failed",
            id="disclaimer-not-at-end-stays",
        ),
        pytest.param(
            "Pump 3 failed\n\nSent from my iPhone\n\nThis email and any attachments are "
            "confidential and intended solely for the addressee. If you received this email in "
            "error, delete it.",
            "Pump 3 failed",
            id="footer-then-disclaimer",
        ),
        pytest.param(
            "Pump 3 failed\n\nPlease consider the environment before printing this email.",
            "Pump 3 failed",
            id="environment-footer",
        ),
    ],
)
def test_removals(text: str, body: str) -> None:
    assert body_of(text) == body


# Alarm and monitoring mails that look a little like banners, disclaimers, reply headers,
# signatures or quotes: an alarm must arrive whole, so each comes out as it went in.
ALARMS_THAT_MUST_ARRIVE_WHOLE = [
    pytest.param(
        "WARNING: Temperature outside limits\nRoom 3\nSensor 7\nValue 35C\nCall facilities now",
        id="warning-outside-is-no-banner",
    ),
    pytest.param(
        "ATTENTION: external power lost. Generator running.\nFuel 40%",
        id="attention-external-is-no-banner",
    ),
    pytest.param(
        "Fire in lab 2.\nIMPORTANT: entry to lab 2 prohibited until cleared by fire warden",
        id="important-prohibited-is-no-disclaimer",
    ),
    pytest.param(
        "Alarm zone 3\nIMPORTANT: evacuate, entry prohibited\nCall 000",
        id="important-in-the-middle-is-no-disclaimer",
    ),
    pytest.param(
        "Backup job nightly FAILED on db1\nThis message was sent because the job ended in error",
        id="this-message-in-error-is-no-disclaimer",
    ),
    pytest.param(
        "ALARM\nFrom: Panel 2\nDate: 2024-07-01 10:00\nSubject: Fire zone 3\n"
        "Evacuate building B now",
        id="date-header-lines-are-no-reply-history",
    ),
    pytest.param("ALARM zone 3\n--\nFire detected, evacuate", id="bare-dashes-are-no-signature"),
    pytest.param(
        "Reading from sensor:\n> 45C over limit\n> fan 2 stopped",
        id="quote-without-attribution-stays",
    ),
    pytest.param(
        "Status check complete.\nOn node 4 the watchdog wrote:\n> disk error on sda",
        id="wrote-without-date-is-no-attribution",
    ),
]


@pytest.mark.parametrize("text", ALARMS_THAT_MUST_ARRIVE_WHOLE)
def test_alarms_arrive_whole(text: str) -> None:
    assert body_of(text) == text


FORWARDED_ALERT = (
    "Please handle this asap\n\n____\nFrom: Monitoring\nSent: Monday\nTo: Ops\n"
    "Subject: ALERT disk full srv1\n\nDisk full on srv1"
)


def forwarded_mail(subject: bytes, content_type: bytes, body: bytes) -> bytes:
    return (
        b"From: alice@example.com\r\nTo: sms@sms.example.com\r\nSubject: "
        + subject
        + b"\r\nMIME-Version: 1.0\r\nContent-Type: "
        + content_type
        + b"\r\n\r\n"
        + body
    )


@pytest.mark.parametrize(
    "subject", [b"FW: ALERT disk full srv1", b"Fwd: ALERT", b"wg: ALERT", b"[EXTERNAL] TR: x"]
)
def test_forwarded_mail_keeps_what_it_forwards(subject: bytes) -> None:
    raw = forwarded_mail(subject, b"text/plain; charset=utf-8", FORWARDED_ALERT.encode())
    body = parse_mail(raw).body
    assert body.startswith("Please handle this asap\n")
    assert body.endswith("Subject: ALERT disk full srv1\nDisk full on srv1")


def test_reply_history_is_still_cut_without_a_forward_subject() -> None:
    raw = forwarded_mail(b"RE: FW: ALERT", b"text/plain; charset=utf-8", FORWARDED_ALERT.encode())
    assert parse_mail(raw).body == "Please handle this asap"


def test_forwarded_html_keeps_its_quoted_markup() -> None:
    markup = (
        b'<p>Please handle</p><div id="divRplyFwdMsg"><b>From:</b> Monitoring</div>'
        b'<p>Disk full on srv1</p><div class="gmail_quote">Pump 3 failed</div>'
    )
    forwarded = parse_mail(forwarded_mail(b"Fwd: ALERT", b"text/html", markup)).body
    assert forwarded == "Please handle\nFrom: Monitoring\nDisk full on srv1\nPump 3 failed"
    replied = parse_mail(forwarded_mail(b"Re: ALERT", b"text/html", markup)).body
    assert replied == "Please handle"


def test_a_message_forwarded_below_a_signature_stays() -> None:
    text = (
        "Please check\n-- \nAnn\n\n---------- Forwarded message ---------\nFrom: Monitor\n"
        "Date: Mon\nSubject: ALERT\nDisk full on srv1"
    )
    assert body_of(text) == text.replace("-- \n", "--\n").replace("\n\n", "\n")


def test_signature_delimiter_needs_its_space() -> None:
    """RFC 3676's "-- " is checked before trailing spaces are stripped."""
    assert body_of("Pump 3 failed\n-- \nAnn") == "Pump 3 failed"
    assert body_of("Pump 3 failed\n--\nAnn") == "Pump 3 failed\n--\nAnn"


@pytest.mark.parametrize(
    ("markup", "text"),
    [
        pytest.param(
            '<div dir="ltr">New</div><div class="gmail_quote"><div class="gmail_attr">On Mon, '
            'A wrote:</div><blockquote class="gmail_quote"><div>Old</div></blockquote></div>',
            "New",
            id="gmail-quote",
        ),
        pytest.param(
            '<div>New</div><div class="gmail_quote"><div><div>x</div></div>Old</div><p>After</p>',
            "New\nAfter",
            id="gmail-quote-nested-divs",
        ),
        pytest.param(
            '<p>New</p><blockquote type="cite"><p>Old</p><blockquote type="cite">Older'
            "</blockquote></blockquote>",
            "New",
            id="blockquote-cite",
        ),
        pytest.param("<p>New</p><blockquote>Kept</blockquote>", "New\nKept", id="plain-blockquote"),
        pytest.param(
            '<p>New</p><div id="appendonsend"></div><hr><div id="divRplyFwdMsg"><b>From:</b> A'
            "</div><div>Old</div>",
            "New",
            id="outlook-appendonsend",
        ),
        pytest.param(
            '<p>New</p><div id="divRplyFwdMsg">From: A</div><p>Old</p>',
            "New",
            id="outlook-divRplyFwdMsg",
        ),
        pytest.param(
            '<div class="gmail_quote">only quoted</div>', "only quoted", id="only-a-quote-stays"
        ),
    ],
)
def test_html_replies_are_dropped(markup: str, text: str) -> None:
    assert parse_mail(mime(b"text/html; charset=utf-8", markup.encode())).body == text


def test_html_to_text_keeps_replies_unless_asked() -> None:
    markup = '<p>New</p><div class="gmail_quote">Old</div>'
    assert html_to_text(markup) == "New\nOld"
    assert html_to_text(markup, drop_replies=True) == "New"


@pytest.mark.parametrize(
    ("cleanup", "text", "body"),
    [
        pytest.param(
            Cleanup(strip_patterns=(re.compile(r"\*\*\*SPAM\*\*\*\s*"),)),
            "***SPAM*** Pump 3 failed",
            "Pump 3 failed",
            id="strip-pattern",
        ),
        pytest.param(
            Cleanup(strip_patterns=(re.compile(r"(?m)^Ticket #\d+$"),)),
            "Ticket #123\nPump 3 failed\n\nTicket #123",
            "Pump 3 failed",
            id="strip-pattern-lines",
        ),
        pytest.param(
            Cleanup(cut_after=("$$",)),
            "Pump 3 failed\n  $$  \nsecret",
            "Pump 3 failed",
            id="cut-after",
        ),
        pytest.param(
            Cleanup(cut_after=("END", "$$")),
            "Pump END\nfailed\nEND\nx",
            "Pump END\nfailed",
            id="cut-after-whole-lines-only",
        ),
        pytest.param(Cleanup(cut_after=("$$",)), "$$\nall hidden", "", id="cut-after-at-top"),
        pytest.param(Cleanup(), "Same\n\n-- \nsig", "Same", id="empty-cleanup"),
    ],
)
def test_cleanup(cleanup: Cleanup, text: str, body: str) -> None:
    raw = mime(b"text/plain; charset=utf-8", text.encode())
    assert parse_mail(raw, cleanup).body == body


def test_cleanup_applies_to_html() -> None:
    raw = mime(b"text/html", b"<p>Pump 3 failed</p><p>$$</p><p>footer</p>")
    assert parse_mail(raw, Cleanup(cut_after=("$$",))).body == "Pump 3 failed"


# --- headers -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "subject"),
    [
        (b"Subject: plain", "plain"),
        (b"Subject:   padded  ", "padded"),
        (b"Subject: folded\r\n  over\r\n\tlines", "folded  over\tlines"),
        (b"Subject: =?UTF-8?Q?Caf=C3=A9_au_lait?=", "Café au lait"),
        (b"Subject: =?utf-8?B?KzYxIDQxMiAzNDUgNjc4?=", "+61 412 345 678"),
        (b"Subject: =?utf-8?q?one?= =?utf-8?q?_two?=", "one two"),
        (b"Subject: =?utf-8?q?=E2=82?=\r\n =?utf-8?q?=AC?=", "€"),
        (b"Subject: a =?iso-8859-1?q?=E9?= b", "a é b"),
        (b"Subject: =?windows-1252?Q?=93hi=94?=", "\u201chi\u201d"),
        (b"Subject: =?x-unknown?q?as_is?=", "as is"),
        (b"Subject: =?utf-8?q?line=0D=0Abreak?=", "line break"),
        (b"Subject: raw \xc3\xa9 utf8", "raw é utf8"),
        (b"Subject: raw \xe9 latin1", "raw é latin1"),
        (b"Subject: =?utf-8?b?!!!?= x", "=?utf-8?b?!!!?= x"),
        (b"Subject: =?utf-8?q?a?= =?utf-8?b?!?= =?utf-8?q?b?=", "a =?utf-8?b?!?= b"),
        (b"X-Other: 1", ""),
    ],
)
def test_subject(header: bytes, subject: str) -> None:
    raw = b"From: a@example.com\r\n" + header + b"\r\n\r\nbody\r\n"
    assert parse_mail(raw).subject == subject


@pytest.mark.parametrize(
    ("headers", "addresses"),
    [
        (b"From: alice@example.com", ("alice@example.com",)),
        (b'From: "Alice, Ops" <alice@example.com>', ("alice@example.com",)),
        (b"From: =?utf-8?q?J=C3=B6rg?= <jorg@example.de>", ("jorg@example.de",)),
        (b"From: a@example.com, b@example.org", ("a@example.com", "b@example.org")),
        (b"From: a@example.com\r\nFrom: B@Example.org", ("a@example.com", "B@Example.org")),
        (b"From: Team: a@example.com, b@example.org;", ("a@example.com", "b@example.org")),
        (b"From: alice@example.com (Alice)", ("alice@example.com",)),
        # an unquoted address as display name hides nothing: both are checked
        (
            b"From: alice@example.com <mallory@evil.test>",
            ("alice@example.com", "mallory@evil.test"),
        ),
        (b"From: <alice@example.com>mallory@evil.test", ("alice@example.com", "mallory@evil.test")),
        (b"From: Alice.Smith <alice@example.com>", ("alice@example.com",)),
        (b"From: <>", ()),
        (b"From:", ()),
        (b"To: x@example.com", ()),
    ],
)
def test_from_addresses(headers: bytes, addresses: tuple[str, ...]) -> None:
    raw = headers + b"\r\nSubject: s\r\n\r\nbody\r\n"
    assert parse_mail(raw).from_addresses == addresses


@pytest.mark.parametrize(
    ("header", "message_id"),
    [
        (b"Message-ID: <abc.123@host.example>", "abc.123@host.example"),
        (b"Message-Id:   <abc@host>  (comment)", "abc@host"),
        (b"Message-ID:\r\n <folded@host>", "folded@host"),
        (b"Message-ID: bare@host", "bare@host"),
        (b"Message-ID: <>", None),
        (b"X-Nothing: 1", None),
    ],
)
def test_message_id(header: bytes, message_id: str | None) -> None:
    raw = b"From: a@example.com\r\n" + header + b"\r\n\r\nbody\r\n"
    assert parse_mail(raw).message_id == message_id


@pytest.mark.parametrize(
    ("header", "date"),
    [
        (b"Date: Tue, 14 May 2024 08:02:10 +1000", "Tue, 14 May 2024 08:02:10 +1000"),
        (b"Date: not a date", "not a date"),
        (b"Date: Tue, 14 May 2024\r\n 08:02:10 +1000", "Tue, 14 May 2024 08:02:10 +1000"),
        (b"Date: ", None),
        (b"X-Nothing: 1", None),
    ],
)
def test_date_is_kept_raw(header: bytes, date: str | None) -> None:
    raw = b"From: a@example.com\r\n" + header + b"\r\n\r\nbody\r\n"
    assert parse_mail(raw).date == date


def test_header_values_are_single_lines() -> None:
    raw = (
        b"From: a@example.com\r\nSubject: =?utf-8?q?a=0Db=0Ac=E2=80=A8d?=\r\n"
        b"Message-ID:\r\n <x\xc2\x85foo@host>\r\nDate: one\r\n two\r\n\r\nbody"
    )
    content = parse_mail(raw)
    for value in (content.subject, content.message_id, content.date, *content.from_addresses):
        assert value is not None
        assert "\r" not in value
        assert "\n" not in value
        assert "\u2028" not in value
        assert "\x85" not in value
    assert content.message_id == "x foo@host"


# --- the whole record, on realistic samples ------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        (
            "outlook_html_only.eml",
            MailContent(
                subject="0412 345 678, 0412 345 679",
                from_addresses=("ops.desk@corp.example.com",),
                message_id="SY4PR01MB6123ABCDEF@SY4PR01MB6123.ausprd01.prod.outlook.example",
                date="Tue, 14 May 2024 08:02:10 +1000",
                body=(
                    "Hi team,\n"
                    "The \u201cnightly\u201d backup on FS02 failed at 02:00 \u2013 please check "
                    "the tape library & re-run it.\n"
                    "Thanks,\nOps"
                ),
                content_type="text/html",
                received=1,
            ),
        ),
        (
            "gmail_alternative.eml",
            MailContent(
                subject="+61 412 345 678; +64 21 123 4567",
                from_addresses=("jamie.example@gmail.example",),
                message_id="CAB1x2y3Z4-example-gmail-id@mail.gmail.example",
                date="Wed, 15 May 2024 19:45:03 +1000",
                body="Dinner at 7 \u2014 bring the crème brûlée! \N{FOUR LEAF CLOVER}\nJamie",
                content_type="multipart/alternative",
            ),
        ),
        (
            "with_attachment.eml",
            MailContent(
                subject="+447400123456",
                from_addresses=("reports@billing.example.org",),
                message_id="report-20240516-0600@billing.example.org",
                date="Thu, 16 May 2024 06:00:00 +0000",
                body="Invoice run finished: 1,204 invoices, 3 failures.",
                content_type="multipart/mixed",
            ),
        ),
        (
            "thunderbird_flowed.eml",
            MailContent(
                subject="Reminder",
                from_addresses=("sam@example.net",),
                message_id="5e1f2a3b-0c4d-4e5f-8a9b-0c1d2e3f4a5b@example.net",
                date="Fri, 17 May 2024 10:15:00 +1200",
                body=(  # the "-- " signature ("Sam") goes
                    "The plumber is coming tomorrow between 9 and 11, so please leave the side "
                    "gate unlocked and keep the dog inside.\nSee you tonight."
                ),
            ),
        ),
        (
            "legacy_panel_8bit.eml",
            MailContent(
                subject="0298765432",
                from_addresses=("panel7@alarm.example.com",),
                message_id=None,
                date=None,
                body="ALARM Zone 3 Entrée\nPanel 7 - Café Rue\nTime 03:12",
            ),
        ),
    ],
)
def test_samples(name: str, expected: MailContent) -> None:
    raw = (MAIL_DIR / name).read_bytes()
    assert parse_mail(raw) == expected
    # The same mail with CRLF line ends, as it arrives over SMTP, reads the same.
    crlf = raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    assert parse_mail(crlf) == expected


# --- structure that cannot be read ---------------------------------------------------------


def test_moderate_nesting_is_read() -> None:
    assert parse_mail(nested(mail_parse._MAX_DEPTH)).body == "deep text"


@pytest.mark.parametrize("depth", [150, 1500])
def test_deep_nesting_is_refused_cleanly(depth: int) -> None:
    with pytest.raises(UnparseableMailError) as caught:
        parse_mail(nested(depth))
    assert caught.value.reply.startswith("554 5.6.0 ")
    assert "nested" in caught.value.text


def test_text_before_a_too_deep_part_is_still_used() -> None:
    raw = multipart(
        b"mixed",
        b"Content-Type: text/plain\r\n\r\nShallow text",
        nested(mail_parse._MAX_DEPTH + 5)[len(HEAD) :],
    )
    assert parse_mail(raw).body == "Shallow text"


def test_unexpected_failures_become_unparseable(monkeypatch: pytest.MonkeyPatch) -> None:
    def explode(raw: bytes, cleanup: object) -> MailContent:
        raise ValueError(raw)

    monkeypatch.setattr(mail_parse, "_parse", explode)
    with pytest.raises(UnparseableMailError) as caught:
        parse_mail(b"x")
    assert caught.value.reply.startswith("554 5.6.0 The message could not be read as MIME")
    assert isinstance(caught.value.__cause__, ValueError)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=2000))
def test_arbitrary_bytes_never_raise_anything_else(raw: bytes) -> None:
    try:
        content = parse_mail(raw)
    except UnparseableMailError:
        return
    assert "\n" not in content.subject
    assert "\r" not in content.subject


MIME_ISH = st.lists(
    st.sampled_from(
        [
            b"Content-Type: multipart/mixed; boundary=x\r\n",
            b"Content-Type: text/html; charset=x-bogus\r\n",
            b"Content-Type: text/plain; charset*=utf-8''%E2\r\n",
            b"Content-Transfer-Encoding: base64\r\n",
            b"Content-Transfer-Encoding: quoted-printable\r\n",
            b"Content-Disposition: attachment\r\n",
            b"Subject: =?utf-8?q?=FF?=\r\n",
            b'From: <<@>>, "\r\n',
            b"\r\n",
            b"--x\r\n",
            b"--x--\r\n",
            b"<p>text<![x]><!--",
            b"=A\r\n",
            b"\xff\xfe\r\n",
        ]
    ),
    max_size=30,
).map(b"".join)


@settings(max_examples=150, deadline=None)
@given(MIME_ISH)
def test_mime_like_garbage_never_raises_anything_else(raw: bytes) -> None:
    with contextlib.suppress(UnparseableMailError):
        parse_mail(raw)


# --- html_to_text --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("markup", "text"),
    [
        ("<p>Hello <b>world</b></p>", "Hello world"),
        ("a<br>b<br/>c<BR >d", "a\nb\nc\nd"),
        ("a<br><br>b", "a\n\nb"),
        ("<div>one</div><div>two</div>", "one\ntwo"),
        ("<div>one</div><div><br></div><div>three</div>", "one\n\nthree"),
        ("<p>one</p><p>&nbsp;</p><p>three</p>", "one\n\nthree"),
        ("<ul><li>first</li><li>second</li></ul>after", "first\nsecond\nafter"),
        ("<h1>Title</h1><blockquote>quote</blockquote>", "Title\nquote"),
        ("<table><tr><td>Host</td><td>web01</td></tr><tr><th>CPU</th><td>99%</td></tr></table>",
         "Host web01\nCPU 99%"),
        ("  lots   of\n\n  space\t here  ", "lots of space here"),
        ("a&nbsp;&nbsp;b", "a  b"),
        ("&amp; &lt; &gt; &quot; &#39; &#8364; &euro; &copy;", "& < > \" ' € € ©"),
        ("<head><title>T</title><style>p{}</style></head><body>Body</body>", "Body"),
        ("<script>var x = '<p>no</p>';</script>yes", "yes"),
        ("<style>.a{}</style><template><p>no</p></template>yes", "yes"),
        ("a<!-- comment <p>hidden</p> -->b", "ab"),
        ("<!--[if mso]><table><tr><td>mso only</td></tr></table><![endif]-->shown", "shown"),
        ("<![if !supportLists]>1.<![endif]>Item", "1.Item"),
        ("<![CDATA[ hidden ]]>shown", "shown"),
        ("<title>unclosed<p>Body text", "Body text"),
        ("<head><meta charset=utf-8><body>After head", "After head"),
        ("<pre>keep   this\n  layout</pre>", "keep   this\n  layout"),
        ("text <script/>still shown", "text still shown"),
        ("<p>unterminated <a href='x", "unterminated <a href='x"),
        ("x < y and y > z", "x < y and y > z"),
        ("", ""),
    ],
)  # fmt: skip
def test_html_to_text(markup: str, text: str) -> None:
    assert html_to_text(markup) == text


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("<>!-[]/=\"' abpsctyle&;#x0\n")), max_size=300))
def test_html_to_text_never_raises(markup: str) -> None:
    assert isinstance(html_to_text(markup), str)


def test_html_to_text_falls_back_when_the_stdlib_parser_gives_up(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def give_up(self: object, data: str) -> None:
        raise AssertionError(data)

    monkeypatch.setattr(mail_parse._HtmlText, "feed", give_up)
    assert html_to_text("<p>Still&nbsp;<b>readable</b></p><p>text</p>") == "Still\nreadable\n\ntext"


def test_html_to_text_is_fast_on_unterminated_tags() -> None:
    # Linear, not quadratic: html.parser alone takes minutes on this.
    assert html_to_text("<a " * 100_000).startswith("<a <a")


# --- header_block --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "block"),
    [
        (b"From: a@b\r\nSubject: x\r\n y\r\n\r\nbody\r\nX: 1\r\n", "From: a@b\nSubject: x\n y"),
        (b"A: 1\nB: 2\n\nbody", "A: 1\nB: 2"),
        (b"A: \xe9\r\n\r\n", "A: \ufffd"),
        (b"ALARM zone 3\r\n", ""),
        (b"", ""),
    ],
)
def test_header_block(raw: bytes, block: str) -> None:
    assert header_block(raw) == block


_BANNER_WORDS = st.sampled_from(
    [
        "This", "message", "e-mail", "came", "from", "OUTSIDE", "out\u017fide", "of", "the",
        "organisation", "Organization", "company", "External", "SENDER", "\u017fender", "click",
        "links", "attachments", "originated", "caution", ".", ":", "[EXT]",
    ]
)  # fmt: skip


@given(st.lists(_BANNER_WORDS, max_size=14).map(" ".join))
@settings(max_examples=3000, deadline=None)
def test_the_banner_hint_is_in_every_banner(line):
    """The one search that lets a line skip the four banner patterns never skips a banner."""
    if any(banner.search(line) for banner in mail_parse._BANNERS):
        assert mail_parse._BANNER_HINT.search(line)


_BANNER_LINES = st.lists(
    st.lists(_BANNER_WORDS | st.sampled_from(["", " ", "  ", "\t", "Hi Bob,", "x" * 30])).map(
        " ".join
    ),
    max_size=8,
).map("\n".join)


@given(_BANNER_LINES)
@example("links\nExternal \nsender.\nHi Bob")  # the lines are joined as _banner_end joins them
@settings(max_examples=3000, deadline=None)
def test_the_banner_hint_changes_no_result(text):
    """Stripping banners with the one-search shortcut gives what the four patterns give."""
    fast = mail_parse._strip_top_banners(text)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(mail_parse, "_BANNER_HINT", re.compile(""))  # matches everything
        assert mail_parse._strip_top_banners(text) == fast
