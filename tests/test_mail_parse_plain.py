"""Plain text mail is read without the stdlib parser: it must read exactly as the parser would.

``mail_parse._plain_message`` takes the common shape (headers, a blank line, text, no MIME
structure) apart itself, because the parser is a large share of the CPU each message
costs under load. Every message here is read both ways and must give the same
``MailContent`` (or the same refusal); the cases that must not take the short way are
checked to go to the parser.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar
from unittest import mock

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from mail2sms import mail_parse
from mail2sms.errors import UnparseableMailError
from mail2sms.mail_parse import header_block, parse_mail
from mail2sms.smtp_guard import normalize_line_ends

if TYPE_CHECKING:
    from collections.abc import Iterator

    from mail2sms.models import MailContent

T = TypeVar("T")
CORPUS = sorted((Path(__file__).parent / "data" / "mail").glob("*.eml"))


@contextmanager
def parser_only() -> Iterator[None]:
    with mock.patch.object(mail_parse, "_plain_message", return_value=None):
        yield


def read(raw: bytes) -> MailContent | str:
    """What parse_mail makes of ``raw``, or the refusal's text."""
    try:
        return parse_mail(raw)
    except UnparseableMailError as exc:
        return f"refused: {exc}"


def assert_same(raw: bytes) -> None:
    ours = read(raw)
    with parser_only():
        theirs = read(raw)
    assert ours == theirs
    # the header block for bounces has a short way of its own
    assert header_block(raw) == mail_parse._header_lines(raw)


def takes_short_way(raw: bytes) -> bool:
    return mail_parse._plain_message(raw) is not None


def test_the_corpus_reads_the_same() -> None:
    short = headers = 0
    for eml in CORPUS:
        for raw in (eml.read_bytes(), normalize_line_ends(eml.read_bytes())):
            assert_same(raw)
            short += takes_short_way(raw)
            end = raw.find(b"\r\n\r\n")
            headers += end > 0 and bool(mail_parse._HEADER_SECTION.fullmatch(raw, 0, end))
    assert short >= 3  # some corpus mail is plain text: the short way is really tried
    assert headers >= len(CORPUS)  # as is the header block's


PLAIN = [
    b"From: a@example.com\r\nSubject: Hi\r\n\r\nHello\r\n",
    b"From: a@example.com\r\nSubject: two\r\n lines\r\n\tand a tab\r\n\r\nbody\r\n",
    b"From: a@example.com\r\nSubject:\r\n folded from empty\r\n\r\nbody",
    b"From: a@example.com\r\nSubject:   \r\n\r\nbody",
    b"From: a@example.com\r\nSubject: x\r\n \r\n\r\nwhitespace-only continuation",
    b"From: a@example.com\r\nContent-Type: text/plain\r\n\r\nno charset",
    b'From: a@example.com\r\nContent-Type: TEXT/Plain; CHARSET="ISO-8859-1"\r\n\r\ncaf\xe9',
    b"From: a@example.com\r\nContent-Type: text/plain;\r\n charset=utf-8\r\n\r\ncaf\xc3\xa9",
    b'From: a@example.com\r\nContent-Type: text/plain; charset=""\r\n\r\nempty charset',
    b"From: a@example.com\r\nContent-Type: text/plain; charset=x-bogus;\r\n\r\nunknown",
    b"From: a@example.com\r\nContent-Transfer-Encoding: 8BIT \r\n\r\ncaf\xc3\xa9",
    b"From: a@example.com\r\nSubject: =?utf-8?q?caf=C3=A9?= \xc3\xa9\r\n\r\nencoded words",
    b"From: \xc3\xa9 <a@example.com>\r\nX-A: 1\r\nX-A: 2\r\nReceived: x\r\nReceived: y\r\n\r\nb",
    b"From: a@example.com\r\nAuto-Submitted: auto-replied\r\n\r\nAway",
    b"Subject: FW: alert\r\nFrom: a@example.com\r\n\r\nforwarded\r\n-- \r\nsig",
    b"From: a@example.com\r\n\r\n",
    b"From: a@example.com\r\n\r\n\r\n\r\nblank lines first",
    b"From: a@example.com\r\n\r\nbare\nLF and bare\rCR in the body",
]
PARSER = [
    b"From a@example.com Mon Jan  1 00:00:00 2024\r\nFrom: a@example.com\r\n\r\nmbox line",
    b" continuation first\r\nFrom: a@example.com\r\n\r\nbody",
    b"From: a@example.com\r\nnot a header\r\n\r\nbody",
    b"From: a@example.com\r\n: no name\r\n\r\nbody",
    b"From: a@example.com\r\nSubject : space before the colon\r\n\r\nbody",
    b"From: a@example.com\nSubject: LF only\n\nbody",
    b"From: a@example.com\r\nSubject: bare\rCR\r\n\r\nbody",
    b"From: a@example.com\r\nSubject: bare\nLF\r\n\r\nbody",
    b"From: a@example.com\r\nContent-Type: text/html\r\n\r\n<p>html</p>",
    b"From: a@example.com\r\nContent-Type: text/plain; format=flowed\r\n\r\nflowed \r\ntext",
    b"From: a@example.com\r\nContent-Type: text/plain; charset*=utf-8''x\r\n\r\nrfc 2231",
    b"From: a@example.com\r\nContent-Type: text/plain\r\nContent-Type: text/html\r\n\r\nb",
    b"From: a@example.com\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n\r\nx",
    b"From: a@example.com\r\nContent-Transfer-Encoding: base64\r\n\r\naGVsbG8=",
    b"From: a@example.com\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\ncaf=C3=A9",
    b"From: a@example.com\r\nContent-Disposition: attachment\r\n\r\nfile",
    b"From: a@example.com\r\nX-\xc3\xa9: non-ASCII name\r\n\r\nbody",
    b"From: a@example.com\r\nSubject: no blank line",
    b"\r\nno headers at all",
    b"From: a@example.com\r\nSubject: a\rb\r\n\r\nbare CR in a header",
    b"From: a@example.com\r\nSubject: x\r\r\n\r\nCR CR LF",
]


@pytest.mark.parametrize("raw", PLAIN)
def test_plain_mail_takes_the_short_way_and_reads_the_same(raw: bytes) -> None:
    assert takes_short_way(raw)
    assert_same(raw)


@pytest.mark.parametrize("raw", PARSER)
def test_other_mail_goes_to_the_parser(raw: bytes) -> None:
    assert not takes_short_way(raw)
    assert_same(raw)


# --- generated mail: header lines from pieces, the tricky ones included ------------------

_NAMES = ["From", "Subject", "To", "Date", "Message-ID", "Received", "Auto-Submitted", "X"]
_ODD_NAMES = ["From ", "Subject ", "", "X-\xe9", "MIME-Version", "Content-Disposition"]
_VALUES = [
    "alice@example.com", "Alice <alice@example.com>", "", "  padded  ", "FW: alarm",
    "auto-generated", "=?utf-8?b?Y2Fmw6k=?=", "caf\xe9", "a:b:c", "inline", "attachment",
]  # fmt: skip
_TYPES = [
    "text/plain", "text/plain; charset=utf-8", 'text/plain; charset="windows-1252"',
    " TEXT/PLAIN ;charset = KOI8-R ;", "text/plain; charset=utf-8; format=flowed",
    "text/html", "multipart/alternative", "text/plain charset=utf-8", "text/plain; charset=",
]  # fmt: skip
_ENCODINGS = ["7bit", "8bit", "binary", " 8Bit ", "base64", "quoted-printable", "x-uue", ""]
_FOLDS = ["", "\r\n more", "\r\n\tmore", "\r\n ", "\n bare", "\r bare"]
_BODIES = [b"", b"Hello", b"caf\xc3\xa9 \xe9", b"line\r\n-- \r\nsig", b"> quote\r\n\r\ntext"]


def mostly(common: list[T], rare: list[T]) -> st.SearchStrategy[T]:
    """Mostly one of ``common``, sometimes one of ``rare``."""
    return st.sampled_from(common * 10 + rare)


@st.composite
def header_line(draw: st.DrawFn) -> str:
    name, values = draw(
        mostly(
            [(n, _VALUES) for n in _NAMES],
            [(n, _VALUES) for n in _ODD_NAMES]
            + [("Content-Type", _TYPES), ("content-transfer-encoding", _ENCODINGS)] * 2,
        )
    )
    return (
        name
        + draw(mostly([":", ": ", ":\t"], [" "]))
        + draw(st.sampled_from(values))
        + draw(mostly(_FOLDS[:4], _FOLDS[4:]))
    )


@st.composite
def plain_ish_mail(draw: st.DrawFn) -> bytes:
    lines = draw(st.lists(header_line(), max_size=6))
    end = draw(mostly(["\r\n"], ["\n"]))
    head = end.join(lines) + end
    start = draw(mostly([""], ["From x@y Mon\r\n", " lead\r\n"]))
    body = draw(st.one_of(st.sampled_from(_BODIES), st.binary(max_size=60)))
    return (start + head).encode("utf-8", "surrogateescape") + end.encode() + body


@settings(
    max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None
)
@given(plain_ish_mail())
@example(b"Content-Type: text/plain; charset=utf-8\r\n\r\ncaf\xc3\xa9")
def test_generated_mail_reads_the_same_either_way(raw: bytes) -> None:
    assert_same(raw)


def test_a_banner_wrapped_between_its_words_is_still_removed():
    """The quick test for banners must not miss one a mailer wrapped mid-phrase."""
    raw = (
        b"From: a@example.com\r\n\r\n"
        b"Warning: external\r\nsender. Do not click links.\r\nDoor 3 open\r\n"
    )
    assert parse_mail(raw).body == "Door 3 open"
    assert_same(raw)
