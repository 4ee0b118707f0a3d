r"""What a text costs as SMS: alphabet (GSM-7 or UCS-2), length in units, and parts; pure.

Providers bill per part and the sender is refused at SMTP time when a text needs more than
``max_parts``, so the count must match what the network does. Two details make simple
division wrong, so parts are counted by packing the text the way an SMSC splits it:

* GSM-7 extension characters (``€ [ ] { } \ ^ ~ |`` and form feed) cost two septets, an
  escape and the character, and the pair is never split across parts;
* in UCS-2 (really UTF-16) a character outside the Basic Multilingual Plane, such as an
  emoji, is a surrogate pair of two code units, also never split across parts.

A multipart SMS loses room in each part to the User Data Header that numbers the parts,
hence 153 instead of 160 septets and 67 instead of 70 code units.

Mail clients turn plain ASCII into typographic characters (Outlook's curly quotes, en dashes
and ellipsis, non-breaking spaces), and a single one of them switches the whole text to
UCS-2, which fits less than half as much per part. :func:`normalize` maps such characters
to their GSM-7 equivalents and keeps real non-GSM text; :func:`truncate` cuts a text to a
number of parts for ``content.on_too_long = "truncate"``.
"""

from __future__ import annotations

import unicodedata

from mail2sms.errors import TooLongError
from mail2sms.models import SmsEncoding, SmsLength

__all__ = [
    "GSM7_BASIC",
    "GSM7_EXTENSION",
    "GSM7_MULTI_PART",
    "GSM7_SINGLE_PART",
    "UCS2_MULTI_PART",
    "UCS2_SINGLE_PART",
    "check_length",
    "measure",
    "normalize",
    "truncate",
]

# The GSM 03.38 (3GPP TS 23.038) default alphabet in code order 0x00-0x7F, without 0x1B:
# that position is the escape to the extension table, not a character a text can contain.
GSM7_BASIC = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ"
    " !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§"
    "¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
# The default extension table: each of these is sent as escape + character (two septets).
GSM7_EXTENSION = frozenset("\f^{}\\[~]|€")
_GSM7_ALL = GSM7_BASIC | GSM7_EXTENSION

GSM7_SINGLE_PART = 160
GSM7_MULTI_PART = 153
UCS2_SINGLE_PART = 70
UCS2_MULTI_PART = 67

_BMP_LAST = 0xFFFF


def measure(text: str) -> SmsLength:
    """Return the alphabet, length in that alphabet's units, and number of parts of ``text``.

    Empty text is 0 parts. GSM-7 is chosen when every character is in the basic or the
    extension table, because it fits more than twice as much per part as UCS-2.
    """
    if not text:
        return SmsLength(encoding=SmsEncoding.GSM7, units=0, parts=0)
    chars = set(text)  # a text has few distinct characters: test those, not every one
    if chars <= _GSM7_ALL:
        wide = chars & GSM7_EXTENSION
        encoding, single, multi = SmsEncoding.GSM7, GSM7_SINGLE_PART, GSM7_MULTI_PART
    else:
        wide = {char for char in chars if ord(char) > _BMP_LAST}
        encoding, single, multi = SmsEncoding.UCS2, UCS2_SINGLE_PART, UCS2_MULTI_PART
    units = len(text) + sum(text.count(char) for char in wide)
    if units <= single:
        return SmsLength(encoding=encoding, units=units, parts=1)
    if not wide:
        return SmsLength(encoding=encoding, units=units, parts=-(-units // multi))
    costs = [2 if char in wide else 1 for char in text]
    return SmsLength(encoding=encoding, units=units, parts=_pack(costs, units, single, multi))


def check_length(text: str, max_parts: int) -> SmsLength:
    """Measure ``text`` and refuse it (552 5.3.4) when it needs more than ``max_parts`` parts.

    The refusal says how long the text is and how long it may be, in the units that
    decide it, so the sender knows how much to cut.
    """
    length = measure(text)
    if length.parts <= max_parts:
        return length
    single, multi = (
        (GSM7_SINGLE_PART, GSM7_MULTI_PART)
        if length.encoding is SmsEncoding.GSM7
        else (UCS2_SINGLE_PART, UCS2_MULTI_PART)
    )
    limit_units = single if max_parts == 1 else max(max_parts, 0) * multi
    raise TooLongError(
        f"The text is {length.units:,} characters, {_plural(length.parts, 'SMS part')} "
        f"({length.encoding.value}); the limit is {_plural(max_parts, 'part')} "
        f"({limit_units:,} characters). Shorten the message."
    )


def _pack(costs: list[int], units: int, single: int, multi: int) -> int:
    """Count parts by filling them in order, never splitting a two-unit character."""
    if units <= single:
        return 1
    if all(cost == 1 for cost in costs):
        return -(-units // multi)
    parts, used = 1, 0
    for cost in costs:
        if used + cost > multi:
            parts += 1
            used = 0
        used += cost
    return parts


def _plural(count: int, noun: str) -> str:
    return f"{count:,} {noun}" if count == 1 else f"{count:,} {noun}s"


# --- normalize ---------------------------------------------------------------------------
#
# Each entry maps a character that has a GSM-7 equivalent to that equivalent, one character
# (or nothing) for one character, so in either alphabet the text never grows. Decisions:
#
# * curly, low-9 and reversed quotes and primes become ' or "; guillemets become " (double,
#   U+00AB U+00BB) and ' (single, U+2039 U+203A): they are quotation marks, and one
#   character for one keeps the count (<< >> would cost a unit more in UCS-2);
# * the grave accent and the acute accent (U+00B4) typed as apostrophes become ';
# * hyphen, non-breaking hyphen, figure/en/em dashes, horizontal bar, minus, small dash
#   forms and the bullets (U+2022 U+2023 U+25E6 U+2043 U+2219) become -, which reads as a
#   list item in plain text;
# * every Unicode space separator (category Zs: no-break, thin, narrow no-break, em,
#   ideographic, ...) and tab become a space; vertical tab, NEL and the line and paragraph
#   separators become a newline;
# * soft hyphen, zero-width space, word joiner, BOM (zero-width no-break space) and the
#   Mongolian vowel separator are removed: they are invisible;
# * fraction and division slash become /, one-dot leader ., modifier circumflex and small
#   tilde (windows-1252 0x88, 0x98) ^ and ~, ohm and angstrom signs Ω and Å, full-width ASCII
#   (U+FF01-FF5E), pound and yen their ASCII-width forms;
# * GSM-7 letters stay as they are. A letter whose only GSM-7 form is in the other case
#   (ç: GSM-7 has only Ç; À È Ì Ò Ù: GSM-7 has only the lower case) is kept, not recased or
#   stripped of its accent: changing a letter changes the word, so such a text is UCS-2.
_SAFE: dict[int, str | None] = {
    **dict.fromkeys(map(ord, "\u2018\u2019\u201a\u201b\u2032\u2035\u2039\u203a`\u00b4"), "'"),
    **dict.fromkeys(map(ord, "\u201c\u201d\u201e\u201f\u2033\u2036\u00ab\u00bb"), '"'),
    **dict.fromkeys(map(ord, "\u2010\u2011\u2012\u2013\u2014\u2015\u2212\ufe58\ufe63"), "-"),
    **dict.fromkeys(map(ord, "\u2022\u2023\u25e6\u2043\u2219"), "-"),
    **dict.fromkeys(
        map(
            ord,
            "\t\u00a0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009"
            "\u200a\u202f\u205f\u3000",
        ),
        " ",
    ),
    **dict.fromkeys(map(ord, "\r\v\x85\u2028\u2029"), "\n"),
    **dict.fromkeys(map(ord, "\u00ad\u200b\u2060\ufeff\u180e"), None),
    **{ord(wide): chr(ord(wide) - 0xFEE0) for wide in map(chr, range(0xFF01, 0xFF5F))},
    0xFF40: "'",  # full-width grave accent: like the ASCII one, an apostrophe
    0x2044: "/",
    0x2215: "/",
    0x2024: ".",
    0x02C6: "^",
    0x02DC: "~",
    0x2126: "\u03a9",
    0x212B: "\u00c5",
    0xFFE1: "\u00a3",
    0xFFE5: "\u00a5",
}

# Mappings that only pay when they make the whole text GSM-7: the ellipsis grows from one
# UCS-2 unit to three septets, and the joiners and direction marks matter in the scripts and
# emoji sequences that keep a text UCS-2 anyway (Persian, Hebrew, family emoji).
_IF_GSM7: dict[int, str | None] = {
    0x2026: "...",
    0x2025: "..",
    **dict.fromkeys(map(ord, "\u200c\u200d\u200e\u200f"), None),
}


def normalize(text: str) -> str:
    """Map characters that have a GSM-7 equivalent to it, so mostly-ASCII mail stays GSM-7.

    Line ends become newlines. Real non-GSM text (Cyrillic, CJK, emoji, accents that GSM-7
    lacks) is kept and is counted as UCS-2. The result never needs more parts than
    ``text`` and normalising it again changes nothing. One table lookup per character,
    plus, only when the ellipsis or joiners occur, a second pass that is kept only when it
    brings the text to GSM-7 without costing a part.
    """
    safe = text.replace("\r\n", "\n").translate(_SAFE)
    full = safe.translate(_IF_GSM7)
    if full == safe or not _is_gsm7(full) or measure(full).parts > measure(safe).parts:
        return safe
    return full


def _is_gsm7(text: str) -> bool:
    return all(char in GSM7_BASIC or char in GSM7_EXTENSION for char in text)


# --- truncate ----------------------------------------------------------------------------

_GSM7_ELLIPSIS = "..."
_UCS2_ELLIPSIS = "\u2026"
_ZWJ = "\u200d"
_EXTENDER_RANGES = (
    (0xFE00, 0xFE0F),  # variation selectors (text or emoji presentation)
    (0x1F3FB, 0x1F3FF),  # emoji skin tone modifiers
    (0xE0020, 0xE007F),  # tags (subdivision flags such as Scotland's)
)


def truncate(text: str, max_parts: int) -> str:
    """Cut ``text`` to fit ``max_parts`` parts, at a word boundary, ending with an ellipsis.

    For ``content.on_too_long = "truncate"``: the reader gets as much as is paid for and
    sees that more was written. The ellipsis is "..." when the kept text is GSM-7 (so it
    stays GSM-7) and "…" otherwise. The cut falls at the last space when that keeps at
    least half of what fits (a long URL or token is cut hard instead), never inside a
    surrogate pair, and not before a combining mark, joiner or variation selector. Text
    that fits is returned unchanged.
    """
    if max_parts < 1:
        raise ValueError(f"max_parts must be at least 1, not {max_parts}")
    # Every character costs at least one unit, so a longer text cannot fit: skip measuring it.
    if len(text) <= max_parts * GSM7_SINGLE_PART and measure(text).parts <= max_parts:
        return text
    keep = _longest_fitting_prefix(text, max_parts)
    keep = _back_off_to_word(text, keep)
    while True:
        # A trailing comma or colon before the ellipsis reads as a typo.
        head = text[:keep].rstrip().rstrip(",;:")
        result = head + (_GSM7_ELLIPSIS if _is_gsm7(head) else _UCS2_ELLIPSIS)
        if measure(result).parts <= max_parts:
            return result
        keep -= 1  # pragma: no cover - the prefix search already leaves room


def _longest_fitting_prefix(text: str, max_parts: int) -> int:
    """Length of the longest prefix that fits with its ellipsis.

    Parts grow with the prefix within one alphabet, and the prefix is GSM-7 up to the first
    other character, so each range is searched by bisection; the UCS-2 range holds the
    longer prefixes and wins when anything in it fits.
    """
    # No part holds more than 160 characters, so nothing beyond that can be kept.
    limit = min(len(text), max_parts * GSM7_SINGLE_PART)
    first_other = next(
        (index for index, char in enumerate(text[:limit]) if not _is_gsm7(char)), limit
    )

    def fits(length: int) -> bool:
        head = text[:length]
        ellipsis = _GSM7_ELLIPSIS if length <= first_other else _UCS2_ELLIPSIS
        return measure(head + ellipsis).parts <= max_parts

    if first_other < limit and fits(first_other + 1):
        low, high = first_other + 1, limit
    else:
        low, high = 0, first_other
    while low < high:
        middle = (low + high + 1) // 2
        if fits(middle):
            low = middle
        else:
            high = middle - 1
    return low


def _back_off_to_word(text: str, keep: int) -> int:
    """Move the cut back to a word boundary, or at least out of a character sequence."""
    if keep < len(text) and text[keep].isspace():
        return keep
    space = next((i for i in range(keep - 1, keep // 2 - 1, -1) if text[i].isspace()), None)
    if space is not None and space > 0:
        return space
    hard = keep
    while 0 < hard < len(text) and (_extends(text[hard]) or text[hard - 1] == _ZWJ):
        hard -= 1
    return hard or keep


def _extends(char: str) -> bool:
    """Whether ``char`` belongs to the character before it (accent, joiner, emoji modifier)."""
    code = ord(char)
    return (
        unicodedata.category(char) in {"Mn", "Mc", "Me"}
        or char == _ZWJ
        or any(low <= code <= high for low, high in _EXTENDER_RANGES)
    )
