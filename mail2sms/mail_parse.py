"""Raw RFC 5322 bytes → subject, senders and a plain-text body for an SMS; pure.

Mail reaches the gateway from everything that can send mail: Outlook (HTML with
conditional comments, windows-1252), phones, monitoring systems, and alarm panels that
send bare-LF 8-bit text without a single MIME header. So this module degrades gracefully
(unknown charsets, broken base64, odd headers) and raises only ``UnparseableMailError``,
which the SMTP handler turns into a 554 the sender can read.

The body is produced in two stages kept apart on purpose: *decoding* (MIME part choice,
transfer encoding, charset, format=flowed, HTML → text) and *shaping* (a list of text →
text steps in ``_SHAPING_STEPS``), so later issues can add signature, quote or disclaimer
removal and GSM normalisation as further shaping steps.
"""

from __future__ import annotations

import base64
import binascii
import codecs
import html
import io
import re
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

__all__ = ["header_block", "html_to_text", "parse_mail"]

# Deeper MIME nesting than this is not mail a person or a device wrote; the stdlib parser
# itself gives up (RecursionError) somewhere near a thousand levels.
_MAX_DEPTH = 100
# policy.default's address parser is slower than linear (a 100 kB From header takes
# seconds); longer values go to the older, more forgiving getaddresses.
_RICH_HEADER_LIMIT = 8192

_LINE_BREAK = re.compile(r"\r\n|\r")
# Characters that must not survive into a header value handed on (CR/LF and Unicode's
# other line separators), since header values end up in logs, queue rows and DSNs.
_HEADER_LINE_BREAKS = re.compile(r"[\r\n\x0b\x0c\x1c-\x1e\x85\u2028\u2029]+")
_FOLD = re.compile(r"\r\n|\r|\n")
_COMMENT = re.compile(r"\([^()]*\)")
_BLANK_RUN = re.compile(r"\n{3,}")
_ENCODED_WORD = re.compile(r"=\?([^?\s]+)\?([bBqQ])\?([^?\s]*)\?=")
_ANGLE_ID = re.compile(r"<([^<>]*)>")
_SURROGATE = re.compile(r"[\udc80-\udcff]")
# HTML collapses only ASCII whitespace; a no-break space is content (see _HtmlText).
_HTML_SPACE = re.compile(r"[ \t\n\r\f]+")
_TAG = re.compile(r"<[^>]*>")
# A header field's first line (RFC 5322 field name: printable ASCII except ":").
_HEADER_FIELD = re.compile(rb"[\x21-\x39\x3b-\x7e]+[ \t]*:")

_UNREADABLE = (
    "The message could not be read as MIME: send it as plain text (Content-Type: text/plain)"
)
_TOO_DEEP = (
    f"The message's MIME parts are nested more than {_MAX_DEPTH} levels deep: "
    "send it as plain text (Content-Type: text/plain)"
)


def parse_mail(raw: bytes) -> MailContent:
    """Read subject, From addresses, Message-ID, Date and the body text out of ``raw``.

    Never raises anything but ``UnparseableMailError``: whatever bytes a client sends,
    the handler gets either content or a refusal it can reply with.
    """
    try:
        return _parse(raw)
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
    lines: list[bytes] = []
    for line in io.BytesIO(raw):
        if _HEADER_FIELD.match(line) or (lines and line[:1] in {b" ", b"\t"}):
            lines.append(line.rstrip(b"\r\n"))
        else:
            break
    return "\n".join(line.decode("utf-8", "replace") for line in lines)


def html_to_text(markup: str) -> str:
    """Render HTML as the plain text a person would read in a mail client.

    Tags, comments (including Outlook's ``<!--[if mso]>`` blocks) and the contents of
    script, style, head and title are dropped; entities are decoded, ``&nbsp;`` becomes a
    space; ``<br>`` and block elements end lines; other whitespace collapses as in a browser.
    """
    collector = _HtmlText()
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


def _parse(raw: bytes) -> MailContent:
    # compat32 is the most lenient structure parser and leaves header values raw; they are
    # decoded below, each step unable to fail.
    message = BytesParser(policy=policy.compat32).parsebytes(raw)
    headers: dict[str, list[str]] = {}
    for name, value in message.raw_items():
        headers.setdefault(name.lower(), []).append(value if isinstance(value, str) else "")

    subject = _decoded_header(_first(headers, "subject"))
    from_addresses = tuple(
        address for value in headers.get("from", []) for address in _addresses(value)
    )
    date = _plain_header(_first(headers, "date")) or None
    return MailContent(
        subject=subject,
        from_addresses=from_addresses,
        message_id=_message_id(_first(headers, "message-id")),
        date=date,
        body=_body(message),
        content_type=message.get_content_type(),
        auto_submitted=_keyword(_first(headers, "auto-submitted")),
        received=len(headers.get("received", [])),
    )


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
    """Return the addr-specs in one From header value, as written."""
    text = _plain_header(value)
    found: list[str] | None = None
    if len(text) <= _RICH_HEADER_LIMIT:
        try:
            header = policy.default.header_factory("from", text)
            found = [str(address.addr_spec) for address in header.addresses]
        except Exception:  # noqa: BLE001 - the legacy parser below copes with what this one rejects
            found = None
    if found is None:
        found = [address for _, address in getaddresses([text])]
    return [_one_line(address).strip() for address in found if address.strip("<> ")]


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


def _body(message: Message) -> str:
    """Choose the part to read and turn it into shaped plain text.

    The first non-attachment text/plain part with any text wins (that is what a person
    typed, even in multipart/alternative where RFC 2046 prefers the last part); otherwise
    the first text/html part, converted; attachments and other types are ignored.
    """
    plain_parts, html_parts, too_deep = _text_parts(message)
    for part in plain_parts:
        text = _shape(_plain_text(part))
        if text:
            return text
    for part in html_parts:
        text = _shape(html_to_text(_part_text(part)))
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
    for part, depth in _leaves(message):
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


def _normalize_newlines(text: str) -> str:
    return _LINE_BREAK.sub("\n", text)


def _strip_trailing_spaces(text: str) -> str:
    return "\n".join(line.rstrip() for line in text.split("\n"))


def _collapse_blank_lines(text: str) -> str:
    return _BLANK_RUN.sub("\n\n", text)


def _strip_blank_edges(text: str) -> str:
    # Lines are already right-stripped, so blank lines are empty and indentation survives.
    return text.strip("\n")


# Applied in order to the decoded body. Quote, signature and disclaimer removal and GSM
# normalisation are later issues: they slot in between the tidying steps.
_SHAPING_STEPS: tuple[Callable[[str], str], ...] = (
    _normalize_newlines,
    _strip_trailing_spaces,
    _collapse_blank_lines,
    _strip_blank_edges,
)


def _shape(text: str) -> str:
    for step in _SHAPING_STEPS:
        text = step(text)
    return text


def _tidy(text: str) -> str:
    return _strip_blank_edges(_collapse_blank_lines(_strip_trailing_spaces(text)))


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


class _HtmlText(HTMLParser):
    """Collect the visible text of an HTML document line by line."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
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

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:  # noqa: ARG002 - attributes do not change the text
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
        if self._skipping:
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
