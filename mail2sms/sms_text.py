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
"""

from __future__ import annotations

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
    if all(char in GSM7_BASIC or char in GSM7_EXTENSION for char in text):
        costs = [2 if char in GSM7_EXTENSION else 1 for char in text]
        encoding, single, multi = SmsEncoding.GSM7, GSM7_SINGLE_PART, GSM7_MULTI_PART
    else:
        costs = [2 if ord(char) > _BMP_LAST else 1 for char in text]
        encoding, single, multi = SmsEncoding.UCS2, UCS2_SINGLE_PART, UCS2_MULTI_PART
    units = sum(costs)
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
