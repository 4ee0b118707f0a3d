"""Raw RFC 5322 bytes → subject, senders and a plain-text body for an SMS; pure.

Mail reaches the gateway from everything that can send mail: Outlook (HTML with
conditional comments, windows-1252), phones, monitoring systems, and alarm panels that
send bare-LF 8-bit text without a single MIME header. So this module degrades gracefully
(unknown charsets, broken base64, odd headers) and raises only ``UnparseableMailError``,
which the SMTP handler turns into a 554 the sender can read.

The body is produced in two stages kept apart on purpose: *decoding* (MIME part choice,
transfer encoding, charset, format=flowed, HTML → text) and *shaping* (a list of text →
text steps in ``_SHAPING_STEPS``): quoted replies, signatures, phone footers, external-sender
banners and confidentiality disclaimers are removed there, because on a phone they cost
parts and hide what the person wrote. Every removal is conservative: it never leaves a
body empty that had text, and each pattern is a line scan or an anchored, bounded regex so
a hostile message stays linear.
"""

from __future__ import annotations

import base64
import binascii
import codecs
import functools
import html
import io
import re
from dataclasses import dataclass
from email import errors as email_errors
from email import policy
from email.parser import BytesParser
from email.utils import collapse_rfc2231_value, getaddresses
from html.parser import HTMLParser
from typing import TYPE_CHECKING

from mail2sms.errors import UnparseableMailError
from mail2sms.models import MailContent

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from email.message import Message

__all__ = ["Cleanup", "header_block", "html_to_text", "parse_mail"]

# Deeper MIME nesting than this is not mail a person or a device wrote (a forward of a
# forward of a reply is a handful of levels); the stdlib parser itself gives up
# (RecursionError) somewhere near a thousand levels.
_MAX_DEPTH = 20
# More MIME parts (containers and leaves) than this is not a message meant for an SMS, and
# the stdlib parser's cost grows with them (20,000 parts take about a second): counted
# cheaply in the raw bytes before the parse, and exactly after it.
_MAX_PARTS = 200
# A MIME container's Content-Type, and a boundary parameter, as the pre-scan finds them
# (anywhere, so text that merely mentions them only makes the count safer, never smaller).
_CONTAINER_TYPE = re.compile(rb"content-type[ \t]*:[ \t\r\n]*(?:multipart|message)/", re.IGNORECASE)
_BOUNDARY_PARAM = re.compile(
    rb'boundary[ \t]*=[ \t]*(?:"([^"\r\n]{1,200})"|([^\s;"]{1,200}))', re.IGNORECASE
)
# policy.default's address parser is slower than linear (a 100 kB From header takes
# seconds); longer values go to the older, more forgiving getaddresses.
_RICH_HEADER_LIMIT = 8192
# The registry builds a new header class on every lookup (a metaclass call each time):
# looked up once here instead.
_FROM_HEADER = policy.default.header_factory["from"]  # type: ignore[index]  # a HeaderRegistry

_LINE_BREAK = re.compile(r"\r\n|\r")
# Characters that must not survive into a header value handed on (CR/LF and Unicode's
# other line separators), since header values end up in logs, queue rows and DSNs.
_HEADER_LINE_BREAKS = re.compile(r"[\r\n\x0b\x0c\x1c-\x1e\x85\u2028\u2029]+")
_FOLD = re.compile(r"\r\n|\r|\n")
_COMMENT = re.compile(r"\([^()]*\)")
_BLANK_RUN = re.compile(r"\n{2,}")
_BLANK_RUNS = re.compile(r"\n{3,}")
# Two or more spaces/tabs, or a tab, after a visible character (indentation is kept).
_SPACE_RUN = re.compile(r"(?<=\S)(?:[ \t]{2,}|\t)")
_ENCODED_WORD = re.compile(r"=\?([^?\s]+)\?([bBqQ])\?([^?\s]*)\?=")
_ANGLE_ID = re.compile(r"<([^<>]*)>")
_SURROGATE = re.compile(r"[\udc80-\udcff]")
# HTML collapses only ASCII whitespace; a no-break space is content (see _HtmlText).
_HTML_SPACE = re.compile(r"[ \t\n\r\f]+")
_TAG = re.compile(r"<[^>]*>")
# A header field's first line (RFC 5322 field name: printable ASCII except ":").
_HEADER_FIELD = re.compile(rb"[\x21-\x39\x3b-\x7e]+[ \t]*:")
# Lines that each are a field or its continuation, CRLF between them and in no other place.
_HEADER_SECTION = re.compile(
    rb"[\x21-\x39\x3b-\x7e]+[ \t]*:[^\r\n]*(?:\r\n(?:[\x21-\x39\x3b-\x7e]+[ \t]*:|[ \t])[^\r\n]*)*"
)

_UNREADABLE = (
    "The message could not be read as MIME: send it as plain text (Content-Type: text/plain)"
)
_TOO_DEEP = (
    f"The message's MIME parts are nested more than {_MAX_DEPTH} levels deep: "
    "send it as plain text (Content-Type: text/plain)"
)
_TOO_MANY_PARTS = (
    f"The message has more than {_MAX_PARTS} MIME parts (nested ones included): "
    "send it as plain text (Content-Type: text/plain)"
)


@dataclass(frozen=True)
class Cleanup:
    """Operator-configured removals (``content.strip_patterns`` / ``content.cut_after``).

    Applied to the decoded body before the built-in removals, so a marker or pattern the
    operator knows about wins over the heuristics.
    """

    strip_patterns: tuple[re.Pattern[str], ...] = ()
    """Removed wherever they match (e.g. a ticket system's footer)."""
    cut_after: tuple[str, ...] = ()
    """Marker lines (compared after stripping whitespace, e.g. ``$$`` or ``END``): the
    first such line and everything after it is dropped, as commercial gateways offer."""


_NO_CLEANUP = Cleanup()


def parse_mail(raw: bytes, cleanup: Cleanup | None = None) -> MailContent:
    """Read subject, From addresses, Message-ID, Date and the body text out of ``raw``.

    Never raises anything but ``UnparseableMailError``: whatever bytes a client sends,
    the handler gets either content or a refusal it can reply with. ``cleanup`` adds the
    operator's own removals to the built-in ones.
    """
    try:
        return _parse(raw, cleanup or _NO_CLEANUP)
    except UnparseableMailError:
        raise
    except RecursionError as exc:
        raise UnparseableMailError(_TOO_DEEP) from exc
    except Exception as exc:
        # The contract is that only UnparseableMailError escapes; the cause stays chained
        # so the handler's log shows what the stdlib tripped over.
        raise UnparseableMailError(_UNREADABLE) from exc


def header_block(raw: bytes) -> str:
    """Return the header section of ``raw`` as text, for a bounce's text/rfc822-headers.

    Lines are taken as the parser reads them: header fields and their folded
    continuations, up to the blank line or the first line that is no header. Line ends
    become plain newlines; bytes that are not UTF-8 become U+FFFD, as the text is only shown.
    """
    end = raw.find(b"\r\n\r\n")
    if end > 0 and _HEADER_SECTION.fullmatch(raw, 0, end):  # the usual case, in one step
        return raw[:end].replace(b"\r\n", b"\n").decode("utf-8", "replace")
    return _header_lines(raw)


def _header_lines(raw: bytes) -> str:
    """``header_block`` line by line: any line ends, and a section that ends otherwise."""
    lines: list[bytes] = []
    for line in io.BytesIO(raw):
        if _HEADER_FIELD.match(line) or (lines and line[:1] in {b" ", b"\t"}):
            lines.append(line.rstrip(b"\r\n"))
        else:
            break
    return "\n".join(line.decode("utf-8", "replace") for line in lines)


def html_to_text(markup: str, *, drop_replies: bool = False) -> str:
    """Render HTML as the plain text a person would read in a mail client.

    Tags, comments (including Outlook's ``<!--[if mso]>`` blocks) and the contents of
    script, style, head and title are dropped; entities are decoded, ``&nbsp;`` becomes a
    space; ``<br>`` and block elements end lines; other whitespace collapses as in a browser.
    With ``drop_replies``, the quoted history clients mark up as such (Gmail's
    ``gmail_quote``, ``<blockquote type="cite">``, Outlook's ``divRplyFwdMsg``, …) is left
    out, since the markup says more reliably than the rendered text what was quoted.
    """
    collector = _HtmlText(drop_replies=drop_replies)
    try:
        collector.feed(_escape_unterminated_tail(markup))
        collector.close()
    except AssertionError:
        # html.parser signals some malformed markup with AssertionError; strip tags crudely
        # rather than lose the text.
        return _tidy(html.unescape(_TAG.sub("\n", markup)).replace("\xa0", " "))
    return _tidy(collector.text())


def _escape_unterminated_tail(markup: str) -> str:
    """Escape each ``<`` after the last ``>``: none of them can start a complete tag.

    html.parser rescans the rest of the input for every such ``<`` (quadratic: 30 kB of
    ``<a `` took 11 s), and a mail body must not stall the SMTP session.
    """
    last = markup.rfind(">")
    tail = markup[last + 1 :]
    if "<" not in tail:
        return markup
    return markup[: last + 1] + tail.replace("<", "&lt;")


# --- the message ---------------------------------------------------------------------------


def _parse(raw: bytes, cleanup: Cleanup) -> MailContent:
    _check_part_count(raw)
    plain = _plain_message(raw)
    message: Message | None = None
    if plain is None:
        # compat32 is the most lenient structure parser and leaves header values raw; they
        # are decoded below, each step unable to fail.
        message = BytesParser(policy=policy.compat32).parsebytes(raw)
        headers: dict[str, list[str]] = {}
        for name, value in message.raw_items():
            headers.setdefault(name.lower(), []).append(value if isinstance(value, str) else "")
    else:
        headers = plain.headers

    subject = _decoded_header(_first(headers, "subject"))
    forwarded = _FORWARDED_MAIL.match(subject) is not None
    from_addresses = tuple(
        address for value in headers.get("from", []) for address in _addresses(value)
    )
    date = _plain_header(_first(headers, "date")) or None
    if message is None:
        assert plain is not None  # noqa: S101  for mypy: one of the two is set
        body = _shape(_decode_charset(plain.body, plain.charset), cleanup, forwarded=forwarded)
        content_type = "text/plain"
    else:
        body = _body(message, cleanup, forwarded=forwarded)
        content_type = message.get_content_type()
    return MailContent(
        subject=subject,
        from_addresses=from_addresses,
        message_id=_message_id(_first(headers, "message-id")),
        date=date,
        body=body,
        content_type=content_type,
        auto_submitted=_keyword(_first(headers, "auto-submitted")),
        received=len(headers.get("received", [])),
    )


@dataclass(frozen=True, slots=True)
class _PlainMessage:
    """A message with one text/plain body and no transfer encoding, read without the parser."""

    headers: dict[str, list[str]]
    """Lower-case name → raw values, as the parser's ``raw_items`` gives them."""
    body: bytes
    charset: str | None


# The one Content-Type a plain message may have: text/plain with at most a charset.
_PLAIN_TYPE = re.compile(
    r'\s*text/plain\s*(?:;\s*charset\s*=\s*(?:"([\w.:+-]*)"|([\w.:+-]+))\s*)?;?\s*',
    re.IGNORECASE | re.ASCII,
)
# Transfer encodings that leave the body as it is (the parser decodes the others).
_IDENTITY_ENCODINGS = frozenset({"7bit", "8bit", "binary"})
# Headers that may need the parser: anything MIME beyond the two handled here.
_STRUCTURE_HEADERS = ("content-type", "content-transfer-encoding")


def _plain_message(raw: bytes) -> _PlainMessage | None:
    """``raw`` read the way the stdlib parser would, if it is plain text; else None.

    Most mail from devices and scripts is headers, a blank line and text: no MIME parts,
    no transfer encoding. For those this gives the same headers, body and charset as the
    parser (compat32) at a fraction of its cost; anything else (CRLF not used throughout
    the header section, a line the parser would have to repair, an mbox "From " line,
    Content-Disposition, another content type or encoding) is left to the parser.
    """
    end = raw.find(b"\r\n\r\n")
    if end <= 0 or raw.startswith(b"From "):
        return None
    headers = _plain_headers(raw[: end + 2])
    if headers is None:
        return None
    plain, charset = _plain_charset(headers)
    return _PlainMessage(headers, raw[end + 4 :], charset) if plain else None


def _plain_headers(section: bytes) -> dict[str, list[str]] | None:
    """The header section's fields, or None where the parser would read it otherwise."""
    newlines = section.count(b"\n")
    if section.count(b"\r") != newlines or section.count(b"\r\n") != newlines:
        return None  # a bare CR or LF: the parser's lines differ from a split on CRLF
    headers: dict[str, list[str]] = {}
    name = ""
    lines: list[str] = []
    for line in section.decode("ascii", "surrogateescape").split("\r\n")[:-1]:
        if line[:1] in {" ", "\t"} and name:
            lines.append(line)
            continue
        if name:
            headers.setdefault(name.lower(), []).append(_raw_value(lines))
        colon = line.find(":")
        if colon <= 0 or not _FIELD_NAME.fullmatch(line, 0, colon):
            return None  # a continuation first, or no field: the parser repairs those
        name, lines = line[:colon], [line]
    if name:
        headers.setdefault(name.lower(), []).append(_raw_value(lines))
    return headers


def _plain_charset(headers: dict[str, list[str]]) -> tuple[bool, str | None]:
    """Whether these headers make a plain text message, and its charset (as the parser's)."""
    if "content-disposition" in headers or any(
        len(headers.get(h, ())) > 1 for h in _STRUCTURE_HEADERS
    ):
        return False, None
    encoding = _first(headers, "content-transfer-encoding")
    if encoding is not None and encoding.strip().lower() not in _IDENTITY_ENCODINGS:
        return False, None
    content_type = _first(headers, "content-type")
    if content_type is None:
        return True, None
    match = _PLAIN_TYPE.fullmatch(content_type)
    if match is None:
        return False, None
    charset = match.group(1) if match.start(1) >= 0 else match.group(2)
    return True, None if charset is None else charset.lower()


# A header field name as the stdlib parser takes it (printable ASCII but ":").
_FIELD_NAME = re.compile(r"[\x21-\x39\x3b-\x7e]+")


def _raw_value(lines: list[str]) -> str:
    """A header's value from its lines, as compat32's ``header_source_parse`` makes it."""
    value = lines[0].split(":", 1)[1].lstrip(" \t")
    if len(lines) > 1:
        value += "\r\n" + "\r\n".join(lines[1:])
    return value


def _check_part_count(raw: bytes) -> None:
    """Refuse a message with too many MIME parts before the (slow) stdlib parse.

    Counts the containers declared anywhere (multipart/*, message/*) and the delimiter
    lines of the boundaries declared anywhere, in C-speed regex scans that stop at the
    limit. An exotic boundary this misses (RFC 2231 encoded) is still counted after the
    parse, in ``_text_parts``.
    """
    containers = 0
    for _ in _CONTAINER_TYPE.finditer(raw):
        containers += 1
        if containers > _MAX_PARTS:
            raise UnparseableMailError(_TOO_MANY_PARTS)
    # Each "--" can start at most one delimiter line: most mail stops here.
    if containers + raw.count(b"--") <= _MAX_PARTS:
        return
    boundaries = {a or b for a, b in _BOUNDARY_PARAM.findall(raw)}
    if len(boundaries) > _MAX_PARTS:  # each would be a container; also keeps the regex small
        raise UnparseableMailError(_TOO_MANY_PARTS)
    if not boundaries:
        return
    # A delimiter line: at the start of a line, "--" and a declared boundary, not its close.
    choices = b"|".join(re.escape(b) for b in sorted(boundaries, key=len, reverse=True))
    delimiter = re.compile(rb"(?<![^\r\n])--(?:" + choices + rb")(?!--)")
    parts = containers
    for _ in delimiter.finditer(raw):
        parts += 1
        if parts > _MAX_PARTS:
            raise UnparseableMailError(_TOO_MANY_PARTS)


def _keyword(value: str | None) -> str:
    """A structured header's keyword, without parameters or RFC 5322 comments.

    ``Auto-Replied (vacation); owner=x`` gives ``auto-replied``.
    """
    text = _plain_header(value)
    for _ in range(3):  # comments nest; three levels is more than any mailer writes
        text = _COMMENT.sub(" ", text)
    return text.split(";")[0].strip().lower()


def _first(headers: dict[str, list[str]], name: str) -> str | None:
    values = headers.get(name)
    return values[0] if values else None


def _plain_header(value: str | None) -> str:
    """Unfold a raw header value into one clean line, without RFC 2047 decoding."""
    if value is None:
        return ""
    return _one_line(_unescape_8bit(_FOLD.sub("", value))).strip()


def _decoded_header(value: str | None) -> str:
    """Unfold a header and decode its RFC 2047 encoded words into one clean line."""
    return _one_line(_decode_encoded_words(_plain_header(value))).strip()


def _decode_encoded_words(text: str) -> str:
    """Decode ``=?charset?B|Q?...?=`` words in linear time, never failing.

    Written here rather than taken from the stdlib because both of its decoders are slower
    than linear on long headers, and this one also joins adjacent words of one charset
    before decoding, so a UTF-8 character split across two words (common) survives.
    """
    pieces: list[str] = []
    pending: list[bytes] = []
    pending_charset = ""
    position = 0
    for match in _ENCODED_WORD.finditer(text):
        between = text[position : match.start()]
        position = match.end()
        data = _encoded_word_bytes(match.group(2), match.group(3))
        charset = match.group(1).partition("*")[0].lower()  # RFC 2231 adds *language
        # Whitespace between two encoded words is folding, not text (RFC 2047 section 6.2).
        adjacent = bool(pending) and not between.strip()
        if pending and not (data is not None and adjacent and charset == pending_charset):
            pieces.append(_decode_charset(b"".join(pending), pending_charset))
            pending = []
        if not adjacent or data is None:
            pieces.append(between)
        if data is None:
            pieces.append(match.group(0))  # not decodable: show it as it was written
        else:
            pending.append(data)
            pending_charset = charset
    if pending:
        pieces.append(_decode_charset(b"".join(pending), pending_charset))
    pieces.append(text[position:])
    return "".join(pieces)


def _encoded_word_bytes(encoding: str, payload: str) -> bytes | None:
    """Return the bytes an encoded word carries, or ``None`` if its base64 is invalid."""
    data = payload.encode("ascii", "replace")
    if encoding in "qQ":
        return binascii.a2b_qp(data, header=True)
    try:
        return base64.b64decode(data + b"=" * (-len(data) % 4), validate=True)
    except binascii.Error:
        return None


def _addresses(value: str) -> list[str]:
    """Return the addr-specs in one From header value, as written.

    A value the strict parser finds invalid (``alice@example.com <mallory@evil.example>``)
    yields every address either parser sees, so each one must pass the sender checks: a
    forged address cannot hide behind an unquoted display name.
    """
    return list(_cached_addresses(value))


@functools.lru_cache(maxsize=1024)
def _cached_addresses(value: str) -> tuple[str, ...]:
    """``_addresses``, remembered: alerting systems send the same From line all day."""
    text = _plain_header(value)
    found: list[str] | None = None
    if len(text) <= _RICH_HEADER_LIMIT:
        try:
            header = _FROM_HEADER("from", text)
            found = [str(address.addr_spec) for address in header.addresses]
            if any(isinstance(d, email_errors.InvalidHeaderDefect) for d in header.defects):
                legacy = [address for _, address in getaddresses([text])]
                found += [address for address in legacy if address not in found]
        except Exception:  # noqa: BLE001 - the legacy parser below copes with what this one rejects
            found = None
    if found is None:
        found = [address for _, address in getaddresses([text])]
    return tuple(_one_line(address).strip() for address in found if address.strip("<> "))


def _message_id(value: str | None) -> str | None:
    text = _plain_header(value)
    match = _ANGLE_ID.search(text)
    identifier = match.group(1).strip() if match else text.strip("<> ")
    return identifier or None


def _one_line(text: str) -> str:
    return _HEADER_LINE_BREAKS.sub(" ", text)


def _unescape_8bit(text: str) -> str:
    """Turn raw 8-bit bytes (kept by the parser as surrogate escapes) into characters.

    Such headers come from clients that ignore RFC 2047; UTF-8 is the likeliest charset,
    then windows-1252.
    """
    if not _SURROGATE.search(text):
        return text
    data = text.encode("utf-8", "surrogateescape")
    return _guess_decode(data)


# --- the body: decoding ---------------------------------------------------------------------


def _body(message: Message, cleanup: Cleanup, *, forwarded: bool = False) -> str:
    """Choose the part to read and turn it into shaped plain text.

    The first non-attachment text/plain part with any text wins (that is what a person
    typed, even in multipart/alternative where RFC 2046 prefers the last part); otherwise
    the first text/html part, converted; attachments and other types are ignored. In a
    ``forwarded`` mail the "history" is the alert being passed on, so it all stays.
    """
    plain_parts, html_parts, too_deep = _text_parts(message)
    for part in plain_parts:
        text = _shape(_plain_text(part), cleanup, forwarded=forwarded)
        if text:
            return text
    for part in html_parts:
        markup = _part_text(part)
        # A mail that is nothing but quoted markup (a bare forward) keeps its text.
        text = _shape(
            html_to_text(markup, drop_replies=not forwarded), cleanup, forwarded=forwarded
        ) or _shape(html_to_text(markup), cleanup, forwarded=forwarded)
        if text:
            return text
    if too_deep:
        raise UnparseableMailError(_TOO_DEEP)
    return ""


def _text_parts(message: Message) -> tuple[list[Message], list[Message], bool]:
    """Return the readable text/plain and text/html parts, and whether some were too deep."""
    plain_parts: list[Message] = []
    html_parts: list[Message] = []
    too_deep = False
    for count, (part, depth) in enumerate(_leaves(message), start=1):
        if count > _MAX_PARTS:
            raise UnparseableMailError(_TOO_MANY_PARTS)
        if depth > _MAX_DEPTH:
            too_deep = True
        elif part.get_content_disposition() != "attachment":
            content_type = part.get_content_type()
            if content_type == "text/plain":
                plain_parts.append(part)
            elif content_type == "text/html":
                html_parts.append(part)
    return plain_parts, html_parts, too_deep


def _leaves(message: Message) -> Iterator[tuple[Message, int]]:
    """Yield non-multipart parts in document order with their depth, without recursion."""
    stack: list[tuple[Message, int]] = [(message, 0)]
    while stack:
        part, depth = stack.pop()
        if part.get_content_maintype() != "multipart":
            yield part, depth
            continue
        if depth > _MAX_DEPTH:
            yield part, depth
            continue
        children = part.get_payload()
        if isinstance(children, list):
            stack.extend(
                (child, depth + 1) for child in reversed(children) if not isinstance(child, str)
            )


def _plain_text(part: Message) -> str:
    """Decode a text/plain part, undoing RFC 3676 format=flowed soft line breaks."""
    text = _part_text(part)
    if _param(part, "format").lower() == "flowed":
        text = _unflow(text, delsp=_param(part, "delsp").lower() == "yes")
    return text


def _part_text(part: Message) -> str:
    """Undo the transfer encoding, then the charset, of one leaf part."""
    payload = part.get_payload(decode=True)
    if not isinstance(payload, bytes):
        return ""
    return _decode_charset(payload, part.get_content_charset())


def _param(part: Message, name: str) -> str:
    value = part.get_param(name)
    if value is None:
        return ""
    return str(collapse_rfc2231_value(value))


def _decode_charset(data: bytes, charset: str | None) -> str:
    """Decode with the declared charset, guessing when it is missing, unknown or wrong.

    ``iso-8859-1`` is read as windows-1252, as browsers do, because Outlook labels
    windows-1252 text (curly quotes, en dashes) that way.
    """
    if not charset:
        return _guess_decode(data)
    try:
        name = codecs.lookup(charset).name
    except LookupError:
        return _guess_decode(data)
    if name == "ascii":
        return _guess_decode(data)
    if name == "iso8859-1":
        return _windows_1252(data)
    try:
        return data.decode(name, errors="replace")
    except (LookupError, ValueError, TypeError):
        # Codecs that are not text encodings (base64, rot13, idna with errors=replace, …).
        return _guess_decode(data)


def _guess_decode(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return _windows_1252(data)


def _windows_1252(data: bytes) -> str:
    try:
        return data.decode("cp1252")
    except UnicodeDecodeError:
        # The five bytes windows-1252 leaves undefined: latin-1 maps every byte.
        return data.decode("latin-1")


def _unflow(text: str, *, delsp: bool) -> str:
    """Join RFC 3676 flowed lines (a trailing space means "continues on the next line")."""
    lines: list[str] = []
    paragraph: str | None = None
    paragraph_depth = 0
    for line in _normalize_newlines(text).split("\n"):
        stripped = line.lstrip(">")
        depth = len(line) - len(stripped)
        content = stripped.removeprefix(" ")  # space-stuffing
        flowed = content.endswith(" ") and content != "-- "
        if flowed and delsp:
            content = content[:-1]
        if paragraph is not None and depth == paragraph_depth:
            paragraph += content
        else:
            if paragraph is not None:
                lines.append(_quoted(paragraph, paragraph_depth))
            paragraph, paragraph_depth = content, depth
        if not flowed:
            lines.append(_quoted(paragraph, paragraph_depth))
            paragraph = None
    if paragraph is not None:
        lines.append(_quoted(paragraph, paragraph_depth))
    return "\n".join(lines)


def _quoted(text: str, depth: int) -> str:
    if not depth:
        return text
    return ">" * depth + (" " + text if text else "")


# --- the body: shaping ----------------------------------------------------------------------
#
# Every step takes and returns the whole text. The removal steps work on lines and never
# turn a body with text into an empty one (_unless_empty): a mail that is *only* a quote,
# a footer or a disclaimer-looking sentence is still what its sender wanted sent.


def _normalize_newlines(text: str) -> str:
    return _LINE_BREAK.sub("\n", text)


def _strip_trailing_spaces(text: str) -> str:
    return "\n".join(line.rstrip() for line in text.split("\n"))


def _collapse_blank_lines(text: str) -> str:
    """Drop blank lines: an SMS has no room for them, so a paragraph break is one newline."""
    if "\n\n" not in text:  # the usual case, found far faster than by the regex
        return text
    return _BLANK_RUN.sub("\n", text)


def _collapse_spaces(text: str) -> str:
    """Turn runs of spaces and tabs inside a line into one space; indentation stays."""
    if "\t" not in text and "  " not in text:  # each run has one or the other
        return text
    return _SPACE_RUN.sub(" ", text)


def _strip_blank_edges(text: str) -> str:
    # Lines are already right-stripped, so blank lines are empty and indentation survives.
    return text.strip("\n")


def _unless_empty(original: str, lines: list[str]) -> str:
    """Return ``lines`` joined, or ``original`` if nothing but blank lines is left."""
    if any(line.strip() for line in lines):
        return "\n".join(lines)
    return original


def _apply_cleanup(text: str, cleanup: Cleanup) -> str:
    """Apply the operator's ``strip_patterns``, then cut at the first ``cut_after`` marker.

    Unlike the built-in heuristics this may leave nothing: the operator asked for it.
    """
    for pattern in cleanup.strip_patterns:
        text = pattern.sub("", text)
    markers = {marker.strip() for marker in cleanup.cut_after}
    if not markers:
        return text
    lines = text.split("\n")
    for index, line in enumerate(lines):
        if line.strip() in markers:
            return "\n".join(lines[:index])
    return text


# Reply attributions, tried only on lines of at most _ATTRIBUTION_MAX characters so the
# bounded gaps keep each test constant-time. Gmail and Apple Mail wrap the line, so a line
# is also tried joined with the next one.
_ATTRIBUTION_MAX = 400
_ATTRIBUTION = re.compile(
    r"\s*(?:"
    r"On\s.{0,300}\swrote"  # Gmail, Apple Mail, Thunderbird: "On <date>, <name> wrote:"
    r"|Am\s.{0,300}\sschrieb\b.{0,300}"  # German: "Am <date> schrieb <name>:"
    r"|Le\s.{0,300}\sa\s[ée]crit"  # French: "Le <date>, <name> a écrit :"
    r"|El\s.{0,300}\sescribi[óo]"  # Spanish: "El <date>, <name> escribió:"
    r"|Op\s.{0,300}\sschreef\b.{0,300}"  # Dutch: "Op <date> schreef <name>:"
    r")\s*:",
    re.IGNORECASE,
)
# What tells a client's attribution from a sentence that happens to fit the pattern ("On
# node 4 the watchdog wrote:"): a date or time (a digit) and a comma or the word for "at".
_ATTRIBUTION_DATE = re.compile(r"\d")
_ATTRIBUTION_JOINT = re.compile(r",|\s(?:at|um|à|om)\s", re.IGNORECASE)


def _is_attribution(line: str) -> bool:
    """Whether ``line`` is a client's "On <date>, <name> wrote:" (or a translation)."""
    return (
        _ATTRIBUTION.fullmatch(line) is not None
        and _ATTRIBUTION_DATE.search(line) is not None
        and _ATTRIBUTION_JOINT.search(line) is not None
    )


# The "Original Message" line between dashes: Outlook and Lotus write five dashes each side,
# Samsung and Android eight; also its German, French, Spanish and Dutch translations.
_ORIGINAL_MESSAGE = re.compile(
    r"\s*-{2,}\s*(?:Original Message|Ursprüngliche Nachricht|Message d'origine"
    r"|Mensaje original|Oorspronkelijk bericht)\s*-{2,}",
    re.IGNORECASE,
)
# Outlook's reply header block: "From: …", then within a few lines "Sent: …" and
# "Subject: …"; "*From:*" when a client rendered Outlook's bold labels as text. "Date:"
# instead of "Sent:" is what alarm panels and monitoring mails write in their own text, so
# it only counts right below an underscore rule (see _starts_reply_history).
_REPLY_FROM = re.compile(r"\s*\*?(?:From|De|Von|Van|Da)\*?\s?:\s*\S")
_REPLY_SENT = re.compile(r"\s*\*?(?:Sent|Envoyé|Gesendet|Enviado|Verzonden|Inviato)\*?\s?:")
_REPLY_DATE = re.compile(
    r"\s*\*?(?:Sent|Date|Envoyé|Gesendet|Datum|Enviado|Fecha|Verzonden"
    r"|Inviato)\*?\s?:"
)
_REPLY_SUBJECT = re.compile(r"\s*\*?(?:Subject|Objet|Betreff|Asunto|Onderwerp|Oggetto)\*?\s?:")
_REPLY_HEADER_SPAN = 6
# A header block of a *forwarded* message is what the sender wants sent (an alert passed
# on), not history: its Subject says FW:/Fwd: (or WG:, TR:, RV:), or a line above it says
# "---------- Forwarded message ---------" / "Begin forwarded message:".
_FORWARD_SUBJECT = re.compile(r"[^:]*:\s*(?:FWD?|WG|TR|RV)\s*:", re.IGNORECASE)
_FORWARD_LINE = re.compile(r"[\s-]*(?:Forwarded message|Begin forwarded message)", re.IGNORECASE)
_FORWARD_LOOKBACK = 3
# Outlook's separator above the reply header block: a line of underscores.
_UNDERSCORE_RULE = re.compile(r"\s*_{10,}\s*$")


# What each marker cannot do without, in ASCII text (see _mentions): a word of an
# attribution, of an "Original Message" line or a "Sent:" line, or an underscore rule.
def _words(*words: str) -> re.Pattern[str]:
    return re.compile("|".join(re.escape(word) for word in words))


_ATTRIBUTION_WORDS = ("wrote", "schrieb", "crit", "escribi", "schreef")
_ATTRIBUTION_HINT = _words(*_ATTRIBUTION_WORDS)
_REPLY_HINT = _words(
    *_ATTRIBUTION_WORDS,
    *("original message", "message d'origine", "mensaje original", "oorspronkelijk bericht"),
    *("sent", "gesendet", "enviado", "verzonden", "inviato", "_" * 10),
)


def _mentions(text: str, words: re.Pattern[str]) -> bool:
    """Whether ``text`` may hold one of ``words`` (lower-case ASCII ``_words``), in any case.

    A cheap test before the line-by-line patterns, which most mail never matches: for
    ASCII text, a search of its lower-case form for the plain words, far faster than a
    case-insensitive pattern. Other text always "may": ``re`` folds case in ways
    ``str.lower`` does not show (the long s is an s to it, the Kelvin sign a k).
    """
    return not text.isascii() or words.search(text.lower()) is not None


_SHORT_RULE = re.compile(r"\s*_{3,}\s*$")


def _cut_reply_history(text: str) -> str:
    """Drop the quoted thread, from its first marker on: the newest text is on top.

    Markers: an attribution, an Outlook header block, an "Original Message" line, an
    underscore rule above a header block.
    """
    if not _mentions(text, _REPLY_HINT):
        return text
    lines = text.split("\n")
    for index in range(len(lines)):
        if _starts_reply_history(lines, index):
            end = index
            while end and (not lines[end - 1].strip() or _SHORT_RULE.match(lines[end - 1])):
                end -= 1  # a shorter rule above the header block goes with it
            return _unless_empty(text, lines[:end])
    return text


def _starts_reply_history(lines: list[str], index: int) -> bool:
    line = lines[index]
    if _ORIGINAL_MESSAGE.match(line) or _starts_reply_header(lines, index, _REPLY_SENT):
        return True
    if _UNDERSCORE_RULE.match(line):
        following = _next_nonblank(lines, index + 1)
        return following is not None and _starts_reply_header(lines, following, _REPLY_DATE)
    if len(line) > _ATTRIBUTION_MAX:
        return False
    attribution = _is_attribution(line)
    if (
        not attribution
        and index + 1 < len(lines)
        and len(lines[index + 1]) <= _ATTRIBUTION_MAX
        and not _is_attribution(lines[index + 1])  # else that line starts it alone
    ):
        attribution = _is_attribution(line + " " + lines[index + 1])
        index += attribution
    if not attribution:
        return False
    # Only an attribution that introduces a quote (or ends the text) starts the history:
    # "On call tonight, Sam wrote: …" in running text stays.
    following = _next_nonblank(lines, index + 1)
    return following is None or lines[following].startswith(">")


def _starts_reply_header(lines: list[str], index: int, sent: re.Pattern[str]) -> bool:
    if not _REPLY_FROM.match(lines[index]):
        return False
    window = lines[index + 1 : index + 1 + _REPLY_HEADER_SPAN]
    subject = next((line for line in window if _REPLY_SUBJECT.match(line)), None)
    if subject is None or not any(sent.match(line) for line in window):
        return False
    above = lines[max(0, index - _FORWARD_LOOKBACK) : index]
    return not _FORWARD_SUBJECT.match(subject) and not any(
        _FORWARD_LINE.match(line) for line in above
    )


def _next_nonblank(lines: list[str], start: int) -> int | None:
    for index in range(start, len(lines)):
        if lines[index].strip():
            return index
    return None


def _drop_trailing_quote(text: str) -> str:
    """Drop the ``>`` quoted lines at the end when they quote a reply (iPhone's style).

    iPhone quotes its own attribution line too ("> On 22 May 2024, at 08:30, Ann wrote:"),
    so the trailing quote goes only when its first line is such an attribution. Any other
    quote (an alarm quoting a reading, an inline reply) is text the sender chose.
    """
    if ">" not in text or not _mentions(text, _ATTRIBUTION_HINT):
        return text  # no quote, or none that an attribution could head
    lines = text.split("\n")
    end = len(lines)
    while end and (not lines[end - 1].strip() or lines[end - 1].lstrip().startswith(">")):
        end -= 1
    first = _next_nonblank(lines, end)
    if first is None or not _is_attribution(lines[first].lstrip().lstrip(">").lstrip()):
        return text
    return _unless_empty(text, lines[:end])


def _cut_signature(text: str) -> str:
    """Drop the signature: the first ``-- `` line and everything after it.

    Only the RFC 3676 delimiter counts, dash dash space, so this runs before trailing spaces
    are stripped: a bare ``--`` is a separator in alarm and report mails, and only dropped
    when nothing but blank lines follows it.
    """
    if "--" not in text:
        return text
    lines = text.split("\n")
    for index, line in enumerate(lines):
        if line.startswith("-- ") and not line[3:].strip(" \t"):
            if any(_FORWARD_LINE.match(later) for later in lines[index + 1 :]):
                return text  # what follows the signature is a message passed on
            return _unless_empty(text, lines[:index])
    last = _next_nonblank(lines[::-1], 0)
    if last is not None and lines[len(lines) - 1 - last] == "--":
        return _unless_empty(text, lines[: len(lines) - 1 - last])
    return text


# Banners mail systems put at the TOP of a message. Only their own wording counts, never a
# label: "WARNING:" or "ATTENTION: external power lost" is how alarms start.
_BANNERS = (
    # Exchange/M365 transport rules: "CAUTION: This email originated from outside of the
    # organization. Do not click links …".
    re.compile(r"originated from outside (?:of )?(?:the|your|our) organi[sz]ation", re.IGNORECASE),
    # Such as "EXTERNAL EMAIL: This message came from outside the company."
    re.compile(
        r"\b(?:This|The) (?:e-?mail|message) (?:came|comes|is|was sent) from outside"
        r" (?:of )?(?:the|your|our) (?:organi[sz]ation|company)",
        re.IGNORECASE,
    ),
    # Such as "[External Sender] Use caution when clicking links or opening attachments.",
    # the phrase on either side of the advice.
    re.compile(r"external sender\b.{0,200}?\b(?:click|links|attachments)", re.IGNORECASE),
    re.compile(r"\b(?:click|links|attachments)\b.{0,200}?external sender", re.IGNORECASE),
)
# What every one of _BANNERS contains (same flags): one search instead of four for a line
# that is no banner, as nearly every first line is.
_BANNER_HINT = re.compile(r"outside|external sender", re.IGNORECASE)
# Their words (a banner may wrap between "external" and "sender"; _banner_end joins the
# lines), and those of _FIRST_CONTACT_TIP: a text without any has no banner or tip.
_TOP_HINT = _words("outside", "external", "often get")
# Words that a wrapped banner's continuation line is made of ("links or open attachments
# unless you recognize the sender and know the content is safe.").
_BANNER_CONTINUATION = re.compile(
    r"\b(?:click|links?|attachments?|sender|content is safe|recogni[sz]e|caution|phishing"
    r"|organi[sz]ation|company)\b",
    re.IGNORECASE,
)
# M365 first-contact safety tip: "You don't often get email from x@y. Learn why this is
# important", also the group variant "Some people who received this message don't …". Always
# one line.
_FIRST_CONTACT_TIP = re.compile(
    r"\s*(?:You|Some people who received this message) don['\u2019]t often get e-?mail from",
    re.IGNORECASE,
)
# "[EXTERNAL]" (and similar) tags that gateways prefix to the first line, like the subject.
_EXTERNAL_TAG = re.compile(
    r"\s*\[(?:EXTERNAL|EXT|EXTERNAL SENDER|EXTERNAL E-?MAIL)\]\s*[:-]?\s*", re.IGNORECASE
)
_SENTENCE_END = (".", "!", "?", ")", ">")
_BANNER_MAX_LINES = 4
_BANNER_MAX_COUNT = 5
# Banner lines are tried only up to this length, so each regex search stays bounded.
_BANNER_LINE_MAX = 1000


def _strip_top_banners(text: str) -> str:
    """Drop external-sender banners and ``[EXTERNAL]`` tags from the top of the text."""
    if "[" not in text and not _mentions(text, _TOP_HINT):
        return text  # no tag, and no banner or tip phrase anywhere
    lines = text.split("\n")
    start = 0
    for _ in range(_BANNER_MAX_COUNT):
        first = _next_nonblank(lines, start)
        if first is None:
            break
        end = _banner_end(lines, first)  # before the tag goes: "[External Sender] …"
        if end is not None:
            start = end
            continue
        tag = _EXTERNAL_TAG.match(lines[first])
        if tag:
            lines[first] = lines[first][tag.end() :]
            if not lines[first].strip():
                start = first + 1
                continue
        if _FIRST_CONTACT_TIP.match(lines[first]):
            start = first + 1
            continue
        end = _banner_end(lines, first) if tag else None  # else the same lines as above
        if end is None:
            break
        start = end
    return _unless_empty(text, lines[start:])


def _may_hold_banner(lines: list[str], first: int) -> bool:
    """Whether a banner phrase can be in what ``_banner_end`` searches from ``first``.

    Each text it searches is part of this one, joined the same way, and every phrase holds
    ``_BANNER_HINT``: one search here instead of four patterns on every line.
    """
    text = ""
    for line in lines[first : first + _BANNER_MAX_LINES]:
        if not line.strip() or len(line) > _BANNER_LINE_MAX:
            break
        text = (text + " " + line).strip() if text else line
    return _BANNER_HINT.search(text) is not None


def _banner_end(lines: list[str], first: int) -> int | None:
    """Return the line after the banner starting at ``first``, or ``None`` if none does.

    A banner phrase must start on the first line; it may be wrapped over the next lines
    (then the banner ends with them). Past the phrase, a line that does not end a sentence
    continues onto the next only if that line ends one and talks like a banner.
    """
    if not _may_hold_banner(lines, first):
        return None
    joined = ""
    end = first
    found = False
    while end < len(lines) and end - first < _BANNER_MAX_LINES and lines[end].strip():
        if len(lines[end]) > _BANNER_LINE_MAX:
            break
        following = (joined + " " + lines[end]).strip() if joined else lines[end]
        if found:
            if joined.rstrip().endswith(_SENTENCE_END):
                break
            line = lines[end].rstrip()
            if not (line.endswith(_SENTENCE_END) and _BANNER_CONTINUATION.search(line)):
                break
        else:
            match = next((m for b in _BANNERS if (m := b.search(following))), None)
            if match is not None:
                if match.start() >= len(lines[first]):
                    return None  # the phrase is in a later line: the first one is text
                found = True
            elif following.rstrip().endswith(_SENTENCE_END):
                return None
        joined = following
        end += 1
    return end if found else None


# Footers clients add as the last line(s) of what the person typed.
_FOOTERS = (
    # "Sent from my iPhone", "Sent from my Samsung Galaxy smartphone.", "Sent from my Android"
    re.compile(
        r"\s*Sent from my (?:iPhone|iPad|iPod|Apple Watch|Android|Samsung|Galaxy|Huawei|Honor"
        r"|Xiaomi|Redmi|Pixel|OnePlus|Oppo|Motorola|moto|Nokia|Sony|LG|HTC|BlackBerry|mobile"
        r"|smartphone|phone|tablet)\b[^\n]{0,80}",
        re.IGNORECASE,
    ),
    # "Sent from Mail for Windows", "Sent from Yahoo Mail for iPhone", "Sent from Outlook",
    # "Sent with Proton Mail secure email.", "Sent via the Samsung Galaxy …"
    re.compile(
        r"\s*Sent (?:from|with|via|using) (?:Mail for Windows|Yahoo Mail|Outlook|AOL|Proton ?Mail"
        r"|BlueMail|Spark|the Samsung|Samsung|Gmail|the Gmail app)\b[^\n]{0,80}",
        re.IGNORECASE,
    ),
    # Outlook mobile: Get Outlook for iOS (or Android, Mac), often with its link after it.
    re.compile(r"\s*Get Outlook for (?:iOS|Android|Mac|Windows)\b[^\n]{0,80}", re.IGNORECASE),
    # German, French and Spanish phone footers.
    re.compile(r"\s*Von meinem [^\n]{1,60} gesendet\.?", re.IGNORECASE),
    re.compile(r"\s*Envoy[ée] de mon [^\n]{1,60}", re.IGNORECASE),
    re.compile(r"\s*Enviado desde mi [^\n]{1,60}", re.IGNORECASE),
    # "Please consider the environment before printing this email."
    re.compile(
        r"\s*(?:Please )?(?:consider|think of) the environment before printing[^\n]*",
        re.IGNORECASE,
    ),
    # Gateway scanner stamps: "This email has been scanned for viruses by …"
    re.compile(r"\s*This (?:e-?mail|message) has been (?:scanned|checked)\b[^\n]*", re.IGNORECASE),
)
# All of them in one pattern (the same flags): one test of the last line instead of eight.
_FOOTER = re.compile("|".join(f"(?:{footer.pattern})" for footer in _FOOTERS), re.IGNORECASE)
# The first line of a confidentiality disclaimer. Not "IMPORTANT:", "LEGAL" or "This
# message …" on their own: alarms are written like that.
_DISCLAIMER_START = re.compile(
    r"\s*\**(?:"
    r"(?:CONFIDENTIALITY|PRIVACY)(?: NOTICE| NOTE| STATEMENT| DISCLAIMER)?\s*[:-]"
    r"|(?:E-?MAIL )?DISCLAIMER\s*[:-]"  # "Disclaimer: …"
    r"|(?:PRIVILEGED|PRIVATE) (?:AND|&) CONFIDENTIAL"
    r"|This (?:e-?mail|message|communication|transmission)\b"  # "This email and any …"
    r"|The (?:information|content)s? (?:contained )?in (?:this|the) (?:e-?mail|message"
    r"|communication|transmission)"  # "The information contained in this e-mail …"
    r"|If you (?:have )?received this (?:e-?mail|message|communication|transmission)"
    r"|If you are not the (?:intended|named) (?:recipient|addressee)"
    r")",
    re.IGNORECASE,
)
# A block only counts as a disclaimer if it uses the legal phrases, which alarms do not:
# "entry prohibited" or "the job ended in error" are not enough.
_DISCLAIMER_PHRASES = re.compile(
    r"intended recipient|named (?:addressee|recipient)"
    r"|intended (?:only|solely|exclusively) for"
    r"|received (?:this|it|the) (?:(?:e-?mail|message|communication|transmission) )?in error",
    re.IGNORECASE,
)
_CONFIDENTIAL = re.compile(r"confidential", re.IGNORECASE)
_CONFIDENTIAL_COMPANION = re.compile(
    r"privileged|prohibited|unauthori[sz]ed|disclos", re.IGNORECASE
)
# Real disclaimers are long; a short line that merely sounds legal is kept.
_DISCLAIMER_MIN_CHARS = 120
# A heading left on its own once its text is gone: "CONFIDENTIALITY NOTICE:", "Disclaimer".
_DISCLAIMER_HEADING = re.compile(
    r"\s*\**(?:CONFIDENTIALITY(?: NOTICE| NOTE| STATEMENT)?|(?:E-?MAIL )?DISCLAIMER)\**\s*:?\s*",
    re.IGNORECASE,
)


def _strip_bottom_boilerplate(text: str) -> str:
    """Drop footers and confidentiality disclaimers from the end, repeatedly.

    A disclaimer block starts at a line matching ``_DISCLAIMER_START`` and runs to the end
    (HTML mail often has no blank line before it); it is removed only when it is at least
    ``_DISCLAIMER_MIN_CHARS`` long, uses a legal phrase (``_DISCLAIMER_PHRASES``, or
    "confidential" with "privileged"/"prohibited"/…) and text remains above it. Each
    round removes lines, so the whole scan is linear.
    """
    lines = text.split("\n")
    end = len(lines)
    while True:
        while end and not lines[end - 1].strip():
            end -= 1
        if not end:
            break
        if _FOOTER.fullmatch(lines[end - 1]):
            end -= 1
            continue
        start = _disclaimer_start(lines, end)
        if start is None or not any(line.strip() for line in lines[:start]):
            break
        end = start
    return _unless_empty(text, lines[:end])


def _disclaimer_start(lines: list[str], end: int) -> int | None:
    """Return where the disclaimer block ending at ``end`` starts, if the last one is one."""
    start = end - 1
    # Walk up the last paragraph to its nearest line that can start a disclaimer.
    while start > 0 and lines[start - 1].strip() and not _DISCLAIMER_START.match(lines[start]):
        start -= 1
    if not _DISCLAIMER_START.match(lines[start]):
        return None
    block = " ".join(line.strip() for line in lines[start:end])
    if end - start == 1 and _DISCLAIMER_HEADING.fullmatch(block):
        return start
    if len(block) < _DISCLAIMER_MIN_CHARS:
        return None
    legal = _DISCLAIMER_PHRASES.search(block) is not None or (
        _CONFIDENTIAL.search(block) is not None
        and _CONFIDENTIAL_COMPANION.search(block) is not None
    )
    return start if legal else None


# Applied in order to the decoded body, after the operator's Cleanup (see _shape). The
# removals run on right-stripped lines and before the collapsing, so blank lines still
# separate paragraphs while they look for blocks. GSM normalisation belongs to sms_text.
_SHAPING_STEPS: tuple[Callable[[str], str], ...] = (
    _normalize_newlines,
    _cut_signature,  # before _strip_trailing_spaces: the delimiter's space is what counts
    _strip_trailing_spaces,
    _cut_reply_history,
    _drop_trailing_quote,
    _strip_top_banners,
    _strip_bottom_boilerplate,
    _collapse_spaces,
    _collapse_blank_lines,
    _strip_blank_edges,
)


# Steps a forwarded mail skips: below the forwarder's note (and signature) is the message
# being passed on, which is what the mail is for.
_HISTORY_STEPS = frozenset({_cut_signature, _cut_reply_history, _drop_trailing_quote})
_FORWARD_STEPS = tuple(step for step in _SHAPING_STEPS if step not in _HISTORY_STEPS)
# The mail's own Subject marks a forward: "FW:", "Fwd:", German "WG:", French "TR:", Spanish
# "RV:", after any "[EXTERNAL]"-style tags.
_FORWARDED_MAIL = re.compile(r"\s*(?:\[[^\]\n]{0,40}\]\s*)*(?:FWD?|WG|TR|RV)\s*:", re.IGNORECASE)


def _shape(text: str, cleanup: Cleanup = _NO_CLEANUP, *, forwarded: bool = False) -> str:
    """Run the operator's Cleanup first (their markers beat the heuristics), then the steps."""
    if cleanup != _NO_CLEANUP:
        text = _apply_cleanup(_normalize_newlines(text), cleanup)
    for step in _FORWARD_STEPS if forwarded else _SHAPING_STEPS:
        text = step(text)
    return text


def _tidy(text: str) -> str:
    """html_to_text's own tidying: blank lines stay (at most one), as a mail client shows."""
    return _strip_blank_edges(_BLANK_RUNS.sub("\n\n", _strip_trailing_spaces(text)))


# --- HTML -----------------------------------------------------------------------------------

_SKIPPED = frozenset({"script", "style", "head", "title", "template"})
# Tags that can end an unclosed <head>/<title>, as the HTML parsing algorithm would.
_HEAD_ENDERS = frozenset({"body", "br"})
_BLOCKS = frozenset(
    {
        "address", "article", "aside", "blockquote", "caption", "center", "dd", "details",
        "dialog", "div", "dl", "dt", "fieldset", "figcaption", "figure", "footer", "form",
        "h1", "h2", "h3", "h4", "h5", "h6", "header", "hr", "li", "main", "nav", "ol", "p",
        "pre", "section", "summary", "table", "tr", "ul",
    }
)  # fmt: skip
_CELLS = frozenset({"td", "th"})
# Elements that hold quoted history, skipped with everything inside them.
_REPLY_CLASSES = frozenset(
    {
        "gmail_quote",  # Gmail: attribution plus the quoted message
        "gmail_quote_container",  # Gmail's newer wrapper of the same
        "gmail_attr",  # Gmail: "On <date>, <name> wrote:"
        "gmail_signature",  # Gmail: the signature below "-- "
        "moz-cite-prefix",  # Thunderbird: the attribution line
        "yahoo_quoted",  # Yahoo Mail: the quoted message
    }
)
# Elements after which everything is quoted history (Outlook puts the reply header block
# and the old message after these, not inside them).
_REPLY_IDS = frozenset(
    {
        "appendonsend",  # Outlook: empty marker right above the reply header block
        "divRplyFwdMsg",  # Outlook on the web / mobile: the reply header block
        "mail-editor-reference-message-container",  # new Outlook: the referenced message
    }
)


class _HtmlText(HTMLParser):
    """Collect the visible text of an HTML document line by line."""

    def __init__(self, *, drop_replies: bool = False) -> None:
        super().__init__(convert_charrefs=True)
        self._drop_replies = drop_replies
        # The quoted element being skipped and how deeply its tag is nested in itself.
        self._reply_tag = ""
        self._reply_depth = 0
        self._done = False  # everything after an Outlook reply marker is history
        self._lines: list[str] = []
        self._line: list[str] = []
        # The line holds something visible, even if only a no-break space: Outlook writes
        # blank lines as <p>&nbsp;</p>, which must stay a (blank) line.
        self._has_content = False
        self._pending_space = False
        self._skipping: list[str] = []
        self._pre = 0

    def text(self) -> str:
        """Return the collected text; call after ``close``."""
        self._end_line()
        return "\n".join(self._lines)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if self._skips_reply_start(tag, attrs):
            return
        if tag in _SKIPPED:
            self._skipping.append(tag)
            return
        if tag in _HEAD_ENDERS or tag in _BLOCKS or tag in _CELLS:
            self._leave_unclosed_head()
        if self._skipping:
            return
        if tag == "br":
            self._end_line(force=True)
        elif tag in _BLOCKS:
            self._end_line()
            self._pre += tag == "pre"
        elif tag in _CELLS:
            self._pending_space = True

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        # HTML ignores the "/" of <p/> or <script/>; a skipped element opened this way
        # would hide the rest of the document, so only non-skipped tags count.
        if tag not in _SKIPPED:
            self.handle_starttag(tag, attrs)

    def handle_endtag(self, tag: str) -> None:
        if self._skips_reply_end(tag):
            return
        if tag in _SKIPPED:
            if tag in self._skipping:
                del self._skipping[len(self._skipping) - 1 - self._skipping[::-1].index(tag) :]
            return
        if self._skipping:
            return
        if tag == "br":  # </br> is read as <br> by browsers
            self._end_line(force=True)
        elif tag in _BLOCKS:
            self._end_line()
            self._pre = max(0, self._pre - (tag == "pre"))
        elif tag in _CELLS:
            self._pending_space = True

    def handle_data(self, data: str) -> None:
        if self._skipping or self._reply_tag or self._done:
            return
        if self._pre:
            for index, piece in enumerate(_normalize_newlines(data).split("\n")):
                if index:
                    self._end_line(force=True)
                self._append(piece.replace("\xa0", " "))
            return
        collapsed = _HTML_SPACE.sub(" ", data)
        if collapsed.startswith(" "):
            self._pending_space = True
        words = collapsed.strip(" ")
        if not words:
            return
        if self._pending_space and self._line:
            self._line.append(" ")
        self._append(words.replace("\xa0", " "))
        self._pending_space = collapsed.endswith(" ")

    def parse_marked_section(self, i: int, report: bool = True) -> int:  # noqa: FBT001, FBT002 - the base class's signature
        """Drop ``<![...]>`` of any kind (Word writes ``<![if !supportLists]>``) up to ``>``.

        The stdlib raises AssertionError on keywords it does not know, and rescans to the
        end for each unterminated one; browsers read all of these as a bogus comment.
        """
        end = self.rawdata.find(">", i + 3)
        if end < 0:
            return -1
        if report:
            self.unknown_decl(self.rawdata[i + 3 : end].removesuffix("]"))
        return end + 1

    def _skips_reply_start(self, tag: str, attrs: list[tuple[str, str | None]]) -> bool:
        """Track quoted-history elements; true if this start tag is part of one."""
        if self._done:
            return True
        if self._reply_tag:
            self._reply_depth += tag == self._reply_tag
            return True
        if not self._drop_replies or self._skipping:
            return False
        reply = _reply_marker(tag, attrs)
        if reply:
            self._end_line()
            self._done = reply == "rest"
            if reply == "element":
                self._reply_tag, self._reply_depth = tag, 1
        return bool(reply)

    def _skips_reply_end(self, tag: str) -> bool:
        """Track quoted-history elements; true if this end tag is part of one."""
        if self._done:
            return True
        if not self._reply_tag:
            return False
        if tag == self._reply_tag:
            self._reply_depth -= 1
            if not self._reply_depth:
                self._reply_tag = ""
        return True

    def _append(self, text: str) -> None:
        if text:
            self._line.append(text)
            self._has_content = True
            self._pending_space = False

    def _end_line(self, *, force: bool = False) -> None:
        if force or self._line or self._has_content:
            self._lines.append("".join(self._line))
        self._line = []
        self._has_content = False
        self._pending_space = False

    def _leave_unclosed_head(self) -> None:
        if self._skipping and all(tag in {"head", "title"} for tag in self._skipping):
            self._skipping.clear()


def _reply_marker(tag: str, attrs: list[tuple[str, str | None]]) -> str:
    """Say whether an element is quoted history.

    ``element`` skips the element, ``rest`` it and all after it, ``""`` neither.
    """
    classes: set[str] = set()
    for name, value in attrs:
        if not value:
            continue
        if name == "id" and value in _REPLY_IDS:
            return "rest"
        if name == "class":
            classes.update(value.split())
        elif name == "type" and tag == "blockquote" and value.lower() == "cite":
            return "element"  # Apple Mail and Thunderbird quote with <blockquote type=cite>
    return "element" if classes & _REPLY_CLASSES else ""
