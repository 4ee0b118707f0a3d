"""Fuzzing the whole mail → SMS path (``smtp.build_message``) with generated hostile mail.

The property: every input either becomes a message whose text is non-empty and fits the
parts limit, or is refused with a ``MailRefusedError`` (which carries the SMTP reply). Any
other exception is a crash the SMTP client would see as a temporary error forever.

Two Hypothesis profiles: ``ci`` (the default, a few hundred examples, seconds) and
``long`` for a deliberate hunt::

    HYPOTHESIS_PROFILE=long .venv/bin/python -m pytest tests/test_fuzz.py

The profile applies to this file only. Failing examples are kept in ``.hypothesis/`` and
replayed first on the next run.
"""

from __future__ import annotations

import base64
import binascii
import os
import quopri
import re
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from mail2sms.addressing import parse_rcpt
from mail2sms.config import AddressOptions
from mail2sms.errors import MailRefusedError
from mail2sms.mail_parse import Cleanup
from mail2sms.models import NewMessage
from mail2sms.sms_text import measure
from mail2sms.smtp import Client, Policy, build_message

GATEWAY = "sms@sms.example.com"
DOMAIN = "sms.example.com"
ALLOWED = "alice@example.com"
CORPUS = sorted((Path(__file__).parent / "data" / "mail").glob("*.eml"))

_HEALTH = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much]
settings.register_profile(
    "ci", max_examples=250, deadline=None, suppress_health_check=_HEALTH, print_blob=True
)
settings.register_profile(
    "long", max_examples=10_000, deadline=None, suppress_health_check=_HEALTH, print_blob=True
)
FUZZ = settings.get_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

# --- building blocks -------------------------------------------------------------------

CHARSETS = [
    "utf-8", "us-ascii", "iso-8859-1", "windows-1252", "utf-16", "utf-16-le", "utf-7",
    "koi8-r", "shift_jis", "gb2312", "iso-2022-jp", "x-unknown", "base64", "rot13", "idna",
    "", 'utf-8"', "\u00e9", "utf-8; x=1",
]  # fmt: skip
ENCODINGS = ["7bit", "8bit", "binary", "base64", "quoted-printable", "x-uuencode", "bogus", ""]
LINE_ENDS = [b"\r\n", b"\n", b"\r"]

# Any text, including control characters, NUL, bare CR/LF and astral characters.
any_text = st.text(max_size=300)
short_text = st.text(max_size=40)
ascii_word = st.text(
    alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters="?"),
    min_size=1,
    max_size=20,
)


@st.composite
def encoded_word(draw: st.DrawFn) -> str:
    """An RFC 2047 encoded word, sometimes broken (bad base64, unknown charset)."""
    charset = draw(st.sampled_from([c for c in CHARSETS if c and "?" not in c] or ["utf-8"]))
    data = draw(any_text).encode("utf-8", "surrogatepass")
    if draw(st.booleans()):
        payload = base64.b64encode(data).decode()
        if draw(st.booleans()):
            payload = payload.rstrip("=")[: draw(st.integers(0, len(payload)))]
        kind = "B"
    else:
        payload = quopri.encodestring(data, header=True).decode("ascii", "replace")
        kind = "Q"
    payload = payload.replace("?", "=3F").replace(" ", "_").replace("\n", "")
    return f"=?{charset}?{kind}?{payload}?="


header_text = st.lists(st.one_of(short_text, encoded_word(), ascii_word), max_size=6).map(" ".join)


@st.composite
def subject(draw: st.DrawFn) -> str:
    numbers = draw(
        st.lists(st.sampled_from(["+61412345678", "0412 345 678", "+44 7700 900123"]), max_size=3)
    )
    if draw(st.integers(0, 4)):  # mostly a number first, so more mail gets to the text
        numbers.insert(0, "+61412345678")
    return ", ".join([*numbers, draw(header_text)])


@st.composite
def from_header(draw: st.DrawFn) -> str:
    return draw(
        st.one_of(
            st.just(ALLOWED),
            st.just(f"Alice <{ALLOWED}>"),
            encoded_word().map(lambda w: f"{w} <{ALLOWED}>"),
            header_text,
            st.just(f'"a\\" <b@c>" <{ALLOWED}>, (comment {ALLOWED}) bob@example.org'),
        )
    )


def transfer_encode(data: bytes, encoding: str, *, broken: bool) -> bytes:
    """Encode a payload as declared; ``broken`` damages it the way real mail does."""
    if encoding == "base64":
        out = base64.encodebytes(data)
        return out.replace(b"=", b"")[:-3] + b"!*" if broken else out
    if encoding == "quoted-printable":
        out = quopri.encodestring(data)
        return out + b"=\r\n=Z" if broken else out
    if encoding == "x-uuencode" and data:
        return b"begin 644 x\n" + binascii.b2a_uu(data[:45]) + b"end\n"
    return data


@st.composite
def leaf(draw: st.DrawFn) -> bytes:
    content_type = draw(
        st.sampled_from(
            ["text/plain", "text/html", "text/plain; format=flowed; delsp=yes",
             "application/octet-stream", "text/calendar", "message/rfc822", "text/enriched"]
        )
    )  # fmt: skip
    charset = draw(st.sampled_from(CHARSETS))
    encoding = draw(st.sampled_from(ENCODINGS))
    text = draw(any_text)
    if content_type == "text/html":
        markup = draw(
            st.lists(
                st.sampled_from(
                    ["<p>", "</p>", "<br>", "<div class=gmail_quote>", "</div>", "<!--",
                     "-->", "<![if mso]>", "<script>", "</script>", "<blockquote type=cite>",
                     "<pre>", "&nbsp;", "&#0;", "&#x110000;", "<a href='", "<", "<table><tr><td>"]
                ),
                max_size=8,
            )
        )  # fmt: skip
        text = "".join(markup) + text
    codec = charset if charset in {"utf-16", "utf-16-le", "koi8-r", "shift_jis"} else "utf-8"
    data = text.encode(codec, "replace")
    body = transfer_encode(data, encoding, broken=draw(st.booleans()))
    headers = f'Content-Type: {content_type}; charset="{charset}"\r\n'
    if encoding:
        headers += f"Content-Transfer-Encoding: {encoding}\r\n"
    if draw(st.booleans()):
        headers += (
            f"Content-Disposition: {draw(st.sampled_from(['attachment', 'inline', 'x']))}\r\n"
        )
    return headers.encode("utf-8", "replace") + b"\r\n" + body


@st.composite
def container(draw: st.DrawFn, children: st.SearchStrategy[bytes]) -> bytes:
    subtype = draw(st.sampled_from(["mixed", "alternative", "related", "report", "digest", "x"]))
    boundary = draw(st.sampled_from(["b1", "=_part", "b1-", "", "a b", "b1--x"]))
    parts = draw(st.lists(children, max_size=4))
    out = [f'Content-Type: multipart/{subtype}; boundary="{boundary}"\r\n\r\npreamble\r\n'.encode()]
    out.extend(b"--" + boundary.encode() + b"\r\n" + part + b"\r\n" for part in parts)
    if draw(st.booleans()):  # a missing close delimiter is common in broken mail
        out.append(b"--" + boundary.encode() + b"--\r\n")
    return b"".join(out)


mime_tree = st.recursive(leaf(), container, max_leaves=8)


@st.composite
def structure_stress(draw: st.DrawFn) -> bytes:
    """Deep or wide MIME around the limits (20 levels, 200 parts), multipart or rfc822."""
    if draw(st.booleans()):
        depth = draw(st.integers(0, 60))
        kind = draw(st.sampled_from(["multipart", "message"]))
        if kind == "message":
            opening = b"Content-Type: message/rfc822\r\n\r\n" * depth
            closing = b""
        else:
            opening = b"".join(
                b'Content-Type: multipart/mixed; boundary="n%d"\r\n\r\n--n%d\r\n' % (i, i)
                for i in range(depth)
            )
            closing = b"".join(b"\r\n--n%d--" % i for i in reversed(range(depth)))
        return opening + b"Content-Type: text/plain\r\n\r\ndeep text" + closing + b"\r\n"
    count = draw(st.integers(0, 400))
    boundary = draw(st.sampled_from([b"w", b"=_w", b"w w"]))
    parts = b"".join(
        b"--" + boundary + b"\r\nContent-Type: text/plain\r\n\r\npart %d\r\n" % i
        for i in range(count)
    )
    return (
        b'Content-Type: multipart/mixed; boundary="' + boundary + b'"\r\n\r\n'
        + parts + b"--" + boundary + b"--\r\n"
    )  # fmt: skip


@st.composite
def mail(draw: st.DrawFn) -> bytes:
    headers = [f"From: {draw(from_header())}", f"Subject: {draw(subject())}"]
    extra = draw(
        st.lists(
            st.one_of(
                st.sampled_from(
                    ["Auto-Submitted: auto-generated", "Auto-Submitted: auto-replied (x)",
                     "Received: from a by b", "Message-ID: <x@y>", "MIME-Version: 1.0",
                     "Date: Mon, 1 Jan 2024 00:00:00 +0000", "Subject: FW: again"]
                ),
                st.tuples(ascii_word, header_text).map(lambda nv: f"{nv[0]}: {nv[1]}"),
            ),
            max_size=5,
        )
    )  # fmt: skip
    head = "\r\n".join(headers + extra).encode("utf-8", "surrogateescape") + b"\r\n"
    body = draw(st.one_of(mime_tree, structure_stress()))
    raw = head + body
    line_end = draw(st.sampled_from(LINE_ENDS))
    if line_end != b"\r\n":
        raw = raw.replace(b"\r\n", line_end)
    if draw(st.booleans()):  # splice in random bytes somewhere
        at = draw(st.integers(0, len(raw)))
        raw = raw[:at] + draw(st.binary(max_size=40)) + raw[at:]
    if draw(st.integers(0, 9)) == 0:  # a huge line
        raw += b"x" * 20_000 + b"\r\n"
    return raw


def policy(*, normalize: bool, truncate: bool, text_source: str) -> Policy:
    options = {GATEWAY: AddressOptions(text=text_source)} if text_source != "body" else {}  # type: ignore[arg-type]
    return Policy(
        hostname="sms.test",
        gateway_addresses=(GATEWAY,),
        gateway_domains=(DOMAIN,),
        default_region="AU",
        sender_id="TestBrand",
        max_parts=3,
        allow=(ALLOWED, "@example.org"),
        options=options,
        normalize=normalize,
        on_too_long="truncate" if truncate else "reject",
        cleanup=Cleanup(cut_after=("END",)),
    )


def check(raw: bytes, pol: Policy, rcpts: list[str]) -> None:
    """The property: a sendable message or a refusal, nothing else."""
    targets = [parse_rcpt(a, gateway_addresses=pol.gateway_addresses,
                          gateway_domains=pol.gateway_domains,
                          default_region=pol.default_region, aliases=pol.aliases)
               for a in rcpts]  # fmt: skip
    try:
        message = build_message(raw, ALLOWED, targets, pol, 1_700_000_000.0, client=Client())
    except MailRefusedError as refused:
        reply = refused.reply
        event(f"refused {reply[:9]} {type(refused).__name__}")
        assert reply[:1] in {"4", "5"}, reply
        assert reply[3:4] == " ", reply
        assert "\r" not in reply, reply
        assert "\n" not in reply, reply
        # parse_mail turns any exception into a refusal; a chained one other than the
        # stdlib's RecursionError is a bug hidden behind a 554.
        cause = refused.__cause__
        assert cause is None or isinstance(cause, RecursionError), repr(cause)
        return
    assert isinstance(message, NewMessage)
    event("accepted")
    assert message.text.strip()
    options = pol.options.get(rcpts[0])
    assert measure(message.text).parts <= (
        (options.max_parts if options else None) or pol.max_parts
    )


rcpt_lists = st.sampled_from(
    [[GATEWAY], [f"+61412345678@{DOMAIN}"], [GATEWAY, f"0412345678@{DOMAIN}"]]
)
policy_args: Any = st.fixed_dictionaries(
    {
        "normalize": st.booleans(),
        "truncate": st.booleans(),
        "text_source": st.sampled_from(["body", "subject", "subject+body"]),
    }
)


@FUZZ
@given(raw=mail(), args=policy_args, rcpts=rcpt_lists)
@example(
    raw=b"From: alice@example.com\r\nSubject: +61412345678\r\n\r\n\x00",
    args={"normalize": True, "truncate": False, "text_source": "body"},
    rcpts=[GATEWAY],
)
def test_generated_mail_becomes_an_sms_or_a_refusal(
    raw: bytes, args: dict[str, Any], rcpts: list[str]
) -> None:
    check(raw, policy(**args), rcpts)


@FUZZ
@given(
    head=st.sampled_from([b"", b"From: alice@example.com\r\nSubject: +61412345678\r\n"]),
    raw=st.binary(max_size=3000),
    args=policy_args,
    rcpts=rcpt_lists,
)
def test_random_bytes_become_an_sms_or_a_refusal(
    head: bytes, raw: bytes, args: dict[str, Any], rcpts: list[str]
) -> None:
    check(head + raw, policy(**args), rcpts)


@FUZZ
@given(
    head=st.binary(max_size=200),
    body=st.text(max_size=2000),
    args=policy_args,
    rcpts=rcpt_lists,
)
def test_text_after_valid_headers_becomes_an_sms_or_a_refusal(
    head: bytes, body: str, args: dict[str, Any], rcpts: list[str]
) -> None:
    raw = (
        b"From: alice@example.com\r\nSubject: +61412345678\r\n"
        + head
        + b"\r\n\r\n"
        + body.encode("utf-8", "surrogatepass")
    )
    check(raw, policy(**args), rcpts)


@st.composite
def mutated_corpus_mail(draw: st.DrawFn) -> bytes:
    """A real mail from tests/data/mail with bytes flipped, inserted, cut or line ends changed."""
    original = draw(st.sampled_from(CORPUS)).read_bytes()
    # an allowed sender, so most mutations reach the text
    raw = bytearray(re.sub(rb"(?im)^From:[^\r\n]*", f"From: {ALLOWED}".encode(), original, count=1))
    for _ in range(draw(st.integers(1, 8))):
        at = draw(st.integers(0, len(raw)))
        action = draw(st.sampled_from(["flip", "insert", "cut", "line-end", "dup"]))
        if action == "flip" and at < len(raw):
            raw[at] = draw(st.integers(0, 255))
        elif action == "insert":
            raw[at:at] = draw(
                st.one_of(
                    st.binary(max_size=20),
                    st.sampled_from([b"\r", b"\n", b"\r\n.\r\n", b"--", b"=?utf-8?B?", b"?=",
                                     b"\r\nContent-Type: multipart/mixed; boundary=x\r\n"]),
                )
            )  # fmt: skip
        elif action == "cut":
            del raw[at : at + draw(st.integers(1, 200))]
        elif action == "line-end":
            raw = bytearray(bytes(raw).replace(b"\r\n", draw(st.sampled_from(LINE_ENDS))))
        elif action == "dup":
            raw[at:at] = raw[max(0, at - 300) : at] * draw(st.integers(1, 5))
    return bytes(raw)


@FUZZ
@given(raw=mutated_corpus_mail(), args=policy_args, rcpts=st.just([f"+61412345678@{DOMAIN}"]))
def test_mutated_real_mail_becomes_an_sms_or_a_refusal(
    raw: bytes, args: dict[str, Any], rcpts: list[str]
) -> None:
    check(raw, policy(**args), rcpts)
