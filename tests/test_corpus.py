"""The mail corpus and property tests: real client structures in, the intended SMS text out.

Each ``tests/data/mail/NAME.eml`` with a ``NAME.txt`` beside it is one case; the ``.txt``
holds the exact expected body (UTF-8; one final newline is the file's, not the body's).
"""

from __future__ import annotations

import time
from email.message import EmailMessage
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mail2sms.errors import UnparseableMailError
from mail2sms.mail_parse import parse_mail
from mail2sms.models import MailContent

MAIL_DIR = Path(__file__).parent / "data" / "mail"
CASES = sorted(path for path in MAIL_DIR.glob("*.eml") if path.with_suffix(".txt").exists())
# Generous: one example takes milliseconds; this only catches a stall (super-linear parsing).
QUICK_SECONDS = 2.0


def expected_body(eml: Path) -> str:
    return eml.with_suffix(".txt").read_text(encoding="utf-8").removesuffix("\n")


def test_the_corpus_is_there() -> None:
    assert len(CASES) >= 12


@pytest.mark.parametrize("eml", CASES, ids=[path.stem for path in CASES])
def test_corpus(eml: Path) -> None:
    raw = eml.read_bytes()
    assert parse_mail(raw).body == expected_body(eml)


@pytest.mark.parametrize("eml", CASES, ids=[path.stem for path in CASES])
def test_corpus_with_crlf(eml: Path) -> None:
    """Over SMTP every line ends in CRLF; the text must not depend on it."""
    raw = eml.read_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    assert parse_mail(raw).body == expected_body(eml)


# --- properties ---------------------------------------------------------------------------


def parse_or_refuse(raw: bytes) -> MailContent | None:
    """Parse ``raw`` quickly, allowing only content or UnparseableMailError."""
    started = time.perf_counter()
    content: MailContent | None = None
    reply = ""
    try:
        content = parse_mail(raw)
    except UnparseableMailError as refusal:
        reply = refusal.reply
    assert time.perf_counter() - started < QUICK_SECONDS
    assert content is not None or reply.startswith("554 5.6.0 ")
    return content


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=4000))
def test_arbitrary_bytes(raw: bytes) -> None:
    parse_or_refuse(raw)


# Lines that trigger every removal heuristic, mixed with ordinary text.
TRICKY_LINES = st.sampled_from(
    [
        "On Mon, 1 Jan 2024, A <a@b> wrote:",
        "On Mon,",
        "x> wrote:",
        "> quoted",
        ">",
        "-- ",
        "--",
        "-----Original Message-----",
        "________________________________",
        "From: A <a@b>",
        "Sent: Monday",
        "Subject: s",
        "CAUTION: This email originated from outside of the organization.",
        "[EXTERNAL]",
        "Sent from my iPhone",
        "Get Outlook for iOS",
        "CONFIDENTIALITY NOTICE:",
        "This email is confidential.",
        "Disclaimer:",
        "",
        "   ",
        "text  with\tspaces",
        "Hello",
    ]
)


@settings(max_examples=200, deadline=None)
@given(st.lists(TRICKY_LINES, max_size=40))
def test_removals_never_empty_a_body_with_text(lines: list[str]) -> None:
    body = "\r\n".join(lines)
    content = parse_or_refuse(b"Subject: s\r\n\r\n" + body.encode())
    assert content is not None
    if body.strip():
        assert content.body
    assert "\n\n" not in content.body
    assert content.body == content.body.strip()


CHARSETS = ["utf-8", "us-ascii", "iso-8859-1", "windows-1252", "koi8-r", "shift_jis", "utf-16"]


@st.composite
def leaf(draw: st.DrawFn) -> EmailMessage:
    """A text leaf in a random charset, subtype and transfer encoding."""
    charset = draw(st.sampled_from(CHARSETS))
    # Only text the charset can carry: set_content refuses anything else.
    text = draw(st.text(max_size=200)).encode(charset, "replace").decode(charset, "replace")
    subtype = draw(st.sampled_from(["plain", "html"]))
    cte = draw(st.sampled_from([None, "base64", "quoted-printable", "8bit"]))
    part = EmailMessage()
    try:
        part.set_content(text, subtype=subtype, charset=charset, cte=cte)
    except (ValueError, UnicodeError, LookupError):
        # A combination the stdlib will not write (e.g. utf-16 as 8bit): plain UTF-8 instead.
        part = EmailMessage()
        part.set_content(text, subtype=subtype)
    if draw(st.booleans()):
        part["Content-Disposition"] = draw(st.sampled_from(["attachment", "inline"]))
    return part


def multipart(children: list[EmailMessage], subtype: str) -> EmailMessage:
    message = EmailMessage()
    message["Content-Type"] = f"multipart/{subtype}"
    for child in children:
        message.attach(child)
    return message


MIME_TREES = st.recursive(
    leaf(),
    lambda inner: st.builds(
        multipart,
        st.lists(inner, min_size=1, max_size=4),
        st.sampled_from(["mixed", "alternative", "related", "signed"]),
    ),
    max_leaves=12,
)


# Subjects the stdlib can set (no line-breaking characters); the parser's own header
# handling is covered by test_arbitrary_bytes.
SUBJECTS = st.text(st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp")), max_size=60)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(MIME_TREES, SUBJECTS)
def test_generated_mime_trees(tree: EmailMessage, subject: str) -> None:
    tree["From"] = "sender@example.com"
    tree["Subject"] = subject
    try:
        raw = tree.as_bytes()
    except (ValueError, UnicodeError, LookupError):  # a tree the stdlib will not serialise
        return
    content = parse_or_refuse(raw)
    assert content is None or isinstance(content.body, str)


def test_large_hostile_body_stays_linear() -> None:
    """Every heuristic's trigger, repeated into about 2 MB of text, parses in time."""
    block = (
        "On " + "x" * 390 + "\n"
        "From: a\nFrom: a\n> q\n> q\n"
        "This email " + "confidential " * 30 + "\n"
        "CAUTION: " + "a" * 300 + "\n" + "word  " * 50 + "\n\n"
    )
    body = (block * (2_000_000 // len(block))).encode()
    started = time.perf_counter()
    content = parse_mail(b"Subject: s\r\n\r\n" + body + b"Real text at the end\r\n")
    assert time.perf_counter() - started < 10 * QUICK_SECONDS
    assert content.body
