"""Recipient addresses and subject lines → E.164 phone numbers; pure, no I/O.

Two ways to name a recipient exist (see DESIGN.md): mail to a gateway address lists the
numbers in the Subject, and mail to ``<number>@<gateway domain>`` goes to that number.
Everything else is refused here, so the SMTP handler can never become an open relay.

How digits are read (the same rule for RCPT local parts and subject tokens):

1. A leading ``+`` means the number is international: ``+61412345678``.
2. A leading ``0`` means a number written the national way of ``default_region``
   (``0412 345 678``, ``07400 123456``, ``(02) 9876 5432``), or dialled with the region's
   own international prefix (``0011 61 412 345 678`` in AU). If that gives no valid
   number and the digits start with ``00``, the rest is read as international, because
   ``00`` is the prefix most of the world writes (``0061412345678``).
3. Other digits are read both ways, international (as if a ``+`` came first) and national
   in ``default_region``. If only one reading is a valid number it is taken; if both are
   valid and differ, the national reading wins only when formatting it nationally gives
   back exactly the digits written (US ``4155550123``, where people never write a
   trunk prefix); otherwise the international reading wins (``61412345678`` as stored by
   many systems), since in AU, GB or NZ a national number is written with its ``0``.

Separators ``.`` and ``-`` are accepted inside a RCPT local part (``0412-345-678@...``)
because some address books insert them; spaces and brackets only occur in subjects.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import phonenumbers

from mail2sms.errors import BadNumberError, RecipientRefusedError
from mail2sms.models import RcptTarget

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

__all__ = ["mask_number", "parse_numbers", "parse_rcpt", "validate_region"]

# E.164 allows 15 digits; an international prefix such as 0011 adds up to 4 more.
_MAX_DIGITS = 19
_MIN_DIGITS = 3
# Longest run of whitespace-separated tokens tried as one number ("+44 (0) 20 7946 0018").
_MAX_GROUP_TOKENS = 8
_FALLBACK_EXAMPLE = "+61412345678"
_MAX_SHOWN = 64

# A subject token that may be (part of) a number: ASCII digits, brackets, dots, dashes,
# slashes, and a '+' only at the very start.
_NUMBERISH = re.compile(r"\+?[0-9().\-/]*[0-9][0-9().\-/]*|\+?[().\-/]*")
# A whole subject chunk that may be one number written with spaces.
_NUMBER_CHUNK = re.compile(r"\+?[0-9().\-/ \t]*[0-9][0-9().\-/ \t]*")
# A RCPT local part that names a number.
_LOCAL_NUMBER = re.compile(r"\+?[0-9]+(?:[.\-][0-9]+)*")
_NON_DIGIT = re.compile(r"[^0-9]")
_CHUNK_SEPARATORS = re.compile(r"[,;]")
_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f]")


def validate_region(region: str) -> str:
    """Return ``region`` as an upper-case ISO 3166 code that phonenumbers knows.

    Config validation calls this once at start-up, so a typo fails there and not on the
    first national number a person sends.
    """
    upper = region.strip().upper()
    if upper not in phonenumbers.SUPPORTED_REGIONS:
        raise ValueError(f"'{region}' is not a known region")
    return upper


def mask_number(e164: str) -> str:
    """Hide the middle of a number for logs: ``+61412345678`` → ``+614****5678``.

    The country and the last digits are enough to match a log line to a complaint without
    the log holding a full personal number.
    """
    keep = 4
    if len(e164) > 2 * keep:
        return e164[:keep] + "*" * (len(e164) - 2 * keep) + e164[-keep:]
    # Too short to show both ends (not a real E.164 number): show only its start.
    shown = min(3, len(e164) // 2)
    return e164[:shown] + "*" * (len(e164) - shown)


def parse_rcpt(
    address: str,
    *,
    gateway_addresses: Sequence[str],
    gateway_domains: Sequence[str],
    default_region: str,
    aliases: Mapping[str, Sequence[str]] | None = None,
) -> RcptTarget:
    """Classify one RCPT TO address, or refuse it with a reply a person can act on.

    A gateway address (compared case-insensitively) gives a target without a number: the
    numbers come from the Subject. ``<number>@<gateway domain>`` gives that number in E.164.
    A non-number local part at a gateway domain is a 5.1.3 (bad number); any other address
    is a 5.1.1, whatever its domain, so the gateway never relays. An alias name at a
    gateway domain (``oncall@…``) gives its numbers.
    """
    cleaned = address.strip()
    if cleaned.startswith("<") and cleaned.endswith(">"):
        cleaned = cleaned[1:-1].strip()
    lowered = cleaned.lower()
    if lowered in {gateway.strip().lower() for gateway in gateway_addresses}:
        return RcptTarget(address=lowered)

    local, at, domain = cleaned.rpartition("@")
    domain = domain.lower().rstrip(".")
    domains = {gateway.strip().lower().rstrip(".") for gateway in gateway_domains}
    if not at or not local or domain not in domains:
        raise RecipientRefusedError(
            f"<{_shown(cleaned)}> is not a gateway address: "
            + _how_to_address(gateway_addresses, gateway_domains)
        )

    alias = (aliases or {}).get(local.lower())
    if alias is not None:
        return RcptTarget(address=f"{local.lower()}@{domain}", numbers=tuple(alias))
    number = _read_number(local, default_region) if _LOCAL_NUMBER.fullmatch(local) else None
    if number is None:
        example = _example_number(default_region)
        raise BadNumberError(
            f"'{_shown(local)}' is not a phone number: send to <number>@{domain} "
            f"with the number in international form, e.g. {example}@{domain}"
        )
    return RcptTarget(address=f"{local}@{domain}", number=number)


def parse_numbers(
    text: str, default_region: str, aliases: Mapping[str, Sequence[str]] | None = None
) -> tuple[str, ...]:
    """Read the recipients listed in a Subject as E.164 numbers, in order, without repeats.

    Numbers are separated by ``,``, ``;`` or whitespace, but people also write one number
    with spaces (``0412 345 678``, ``+61 412 345 678``, ``(02) 9876 5432``). So each
    comma/semicolon chunk is first tried as a single number; if that fails its whitespace
    tokens are grouped greedily, each group being the longest run that is a valid number.
    The first token that cannot be part of any number is named in the refusal. An alias
    name (``oncall``) between the separators stands for its numbers.
    """
    example = _example_number(default_region)
    numbers: list[str] = []
    for chunk in _CHUNK_SEPARATORS.split(text):
        stripped = chunk.strip()
        if not stripped:
            continue
        alias = (aliases or {}).get(stripped.lower())
        if alias is not None:
            numbers.extend(alias)
            continue
        whole = (
            _read_number(stripped, default_region) if _NUMBER_CHUNK.fullmatch(stripped) else None
        )
        if whole is not None:
            numbers.append(whole)
            continue
        numbers.extend(_group_tokens(stripped.split(), default_region, example))
    if not numbers:
        raise BadNumberError(
            "No phone number in the subject: list numbers with country code, "
            f"e.g. {example}, separated by commas"
        )
    return tuple(dict.fromkeys(numbers))


def _group_tokens(tokens: list[str], region: str, example: str) -> list[str]:
    """Split whitespace-separated tokens into numbers, longest valid group first."""
    found: list[str] = []
    start = 0
    while start < len(tokens):
        best: tuple[int, str] | None = None
        digits = 0
        end = start
        while end < len(tokens) and end - start < _MAX_GROUP_TOKENS:
            token = tokens[end]
            if not _NUMBERISH.fullmatch(token):
                break
            digits += len(_NON_DIGIT.sub("", token))
            if digits > _MAX_DIGITS:
                break
            end += 1
            number = _read_number(" ".join(tokens[start:end]), region)
            if number is not None:
                best = (end, number)
        if best is None:
            raise BadNumberError(
                f"'{_shown(_failed_run(tokens, start))}' in the subject is not a phone number: "
                f"list numbers with country code, e.g. {example}, separated by commas"
            )
        start, number = best
        found.append(number)
    return found


def _failed_run(tokens: list[str], start: int) -> str:
    """Name what failed: a word as written, or the whole run of a broken number."""
    if not _NUMBERISH.fullmatch(tokens[start]):
        return tokens[start]
    end = start
    while end < len(tokens) and _NUMBERISH.fullmatch(tokens[end]):
        end += 1
    return " ".join(tokens[start:end])


def _read_number(candidate: str, region: str) -> str | None:
    """Apply the module's digit-reading rule to one candidate; E.164 or ``None``."""
    digits = _NON_DIGIT.sub("", candidate)
    if not _MIN_DIGITS <= len(digits) <= _MAX_DIGITS:
        return None
    if candidate.lstrip().startswith("+"):
        # phonenumbers understands the "+44 (0) 20 ..." habit, so give it the text as written.
        parsed = _valid(candidate, None)
        return None if parsed is None else _e164(parsed)
    if digits.startswith("0"):
        parsed = _valid(digits, region)
        if parsed is None and digits.startswith("00"):
            parsed = _valid("+" + digits[2:], None)
        return None if parsed is None else _e164(parsed)

    national = _valid(digits, region)
    international = _valid("+" + digits, None)
    if national is None or international is None:
        chosen = national or international
        return None if chosen is None else _e164(chosen)
    if _e164(national) == _e164(international):
        return _e164(national)
    written_nationally = _NON_DIGIT.sub(
        "", phonenumbers.format_number(national, phonenumbers.PhoneNumberFormat.NATIONAL)
    )
    return _e164(national if written_nationally == digits else international)


def _valid(text: str, region: str | None) -> phonenumbers.PhoneNumber | None:
    """Parse with phonenumbers and keep the result only if it is a valid, dialable number."""
    try:
        parsed = phonenumbers.parse(text, region)
    except phonenumbers.NumberParseException:
        return None
    return parsed if phonenumbers.is_valid_number(parsed) else None


def _e164(number: phonenumbers.PhoneNumber) -> str:
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def _example_number(region: str) -> str:
    """Give a real-looking number of the operator's region for refusal texts."""
    example = phonenumbers.example_number_for_type(region, phonenumbers.PhoneNumberType.MOBILE)
    return _FALLBACK_EXAMPLE if example is None else _e164(example)


def _how_to_address(gateway_addresses: Sequence[str], gateway_domains: Sequence[str]) -> str:
    """Tell how this gateway can be addressed, for a 5.1.1 refusal."""
    ways: list[str] = []
    if gateway_addresses:
        ways.append(f"{gateway_addresses[0]} with numbers in the Subject")
    if gateway_domains:
        ways.append(f"<number>@{gateway_domains[0]}")
    if not ways:
        return "this gateway accepts no recipients"
    return "send to " + ", or to ".join(ways)


def _shown(text: str) -> str:
    """Make untrusted text safe to quote in an SMTP reply: ASCII, one line, not too long."""
    ascii_text = text.encode("ascii", "backslashreplace").decode("ascii")
    ascii_text = _UNPRINTABLE.sub("?", ascii_text)
    if len(ascii_text) > _MAX_SHOWN:
        return ascii_text[: _MAX_SHOWN - 3] + "..."
    return ascii_text
