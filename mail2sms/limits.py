"""Anti-pumping limits: where SMS may go, and how many, decided before anything is queued.

SMS pumping (toll fraud) uses a gateway to send many messages to premium-rate or foreign
numbers whose operator shares the termination fee with the attacker. Every check here runs
at SMTP time, so a refused message never reaches a provider and never costs anything.

``Destinations`` is the static policy (countries, number types, numbers per message);
``Quota`` is the rates, checked by the queue against its stored counts in the transaction
that stores the message, so a count survives a restart and a refused message counts nothing.
Counts are in SMS recipients: one per destination number, and one for a provider contact
list (``list:<uid>``), which is also exempt from the destination rules (the operator made it).
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

import phonenumbers
from phonenumbers import PhoneNumberType, shortnumberinfo

from mail2sms.errors import BadNumberError, LimitRefusedError, MailRefusedError, RateLimitedError
from mail2sms.models import is_contact_list

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

__all__ = ["Destinations", "Quota"]

HOUR = 3600.0
DAY = 86400.0

# Number types a pumping attack earns money on, with the words a reply uses for them.
_REFUSED_TYPES = {
    PhoneNumberType.PREMIUM_RATE: "premium-rate",
    PhoneNumberType.SHARED_COST: "shared-cost",
    PhoneNumberType.UAN: "universal access (UAN)",
    PhoneNumberType.VOICEMAIL: "voicemail access",
}
_NON_GEOGRAPHIC = "001"  # phonenumbers' region for +800, +808, +870, +881, +882, +883, +979
_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True, slots=True)
class Destinations:
    """Which numbers one message may go to: ``limits.countries``, number types, count."""

    countries: tuple[str, ...]
    """ISO 3166 alpha-2 codes, upper case; resolved from ``gateway.default_region`` if unset."""
    max_recipients: int = 100

    def check_message(self, recipients: Sequence[str]) -> None:
        """Refuse a message with too many recipients or any refused destination."""
        if len(recipients) > self.max_recipients:
            raise LimitRefusedError(
                f"The message goes to {len(recipients)} numbers; the limit is "
                f"{self.max_recipients} per message (limits.max_recipients): "
                "send it in several messages",
                rule="limits.max_recipients",
                count=len(recipients),
            )
        for recipient in recipients:
            self.check_number(recipient)

    def check_number(self, recipient: str) -> None:
        """Refuse a short code, a number outside the allowed countries, or a costly type.

        ``recipient`` is E.164 as addressing made it; a contact list passes unchecked.
        A number that passed is remembered: the checks cost more than the rest of RCPT,
        and alerting systems write to the same few numbers all day.
        """
        if is_contact_list(recipient) or _passes(recipient, self.countries):
            return
        _check_number(recipient, self.countries)


@functools.lru_cache(maxsize=4096)
def _passes(recipient: str, countries: tuple[str, ...]) -> bool:
    """Whether ``recipient`` passes ``_check_number`` (the refusal itself is not cached)."""
    try:
        _check_number(recipient, countries)
    except MailRefusedError:
        return False
    return True


def _check_number(recipient: str, countries: tuple[str, ...]) -> None:
    """The checks behind ``Destinations.check_number``."""
    try:
        number = phonenumbers.parse(recipient, None)
    except phonenumbers.NumberParseException:
        raise BadNumberError(f"'{_printable(recipient)}' is not a phone number") from None
    if _short_or_emergency(number):
        raise LimitRefusedError(
            f"{recipient} is a short code or emergency number; "
            "this gateway does not send to short codes",
            rule="short code",
        )
    region = phonenumbers.region_code_for_number(number)
    if region not in countries:
        where = (
            f"is in {region}" if region and region != _NON_GEOGRAPHIC else "is not in any country"
        )
        raise LimitRefusedError(
            f"{recipient} {where}; this gateway sends only to "
            f"{', '.join(countries)} (limits.countries)",
            rule="limits.countries",
        )
    kind = _REFUSED_TYPES.get(phonenumbers.number_type(number))
    if kind is not None:
        raise LimitRefusedError(
            f"{recipient} is a {kind} number; {kind} numbers are not allowed",
            rule=f"{kind} number",
        )


@dataclass(frozen=True, slots=True)
class Quota:
    """The rates one message is checked against (0 = no limit), and whose sender it is.

    ``sender_key`` is the SMTP AUTH user when there is one, else the envelope sender in
    lower case: the identity a pumping burst would come from.
    """

    sender_key: str
    per_sender_per_hour: int = 0
    per_recipient_per_hour: int = 0
    per_day: int = 0

    def check(
        self,
        recipients: Sequence[str],
        *,
        sender_sent: int,
        recipient_sent: Mapping[str, int],
        day_sent: int,
    ) -> None:
        """Refuse when sending ``recipients`` now would go over a rate.

        The counts are what was queued in the window before this message. A message larger
        than a whole window's allowance could never pass, so it is refused for good (5xx)
        rather than retried for days.
        """
        count = len(recipients)
        sender = _printable(self.sender_key)
        self._check(
            self.per_sender_per_hour,
            sent=sender_sent,
            count=count,
            rule="limits.per_sender_per_hour",
            who=f"{sender} has sent",
            window="the last hour",
        )
        for recipient in recipients:
            self._check(
                self.per_recipient_per_hour,
                sent=recipient_sent.get(recipient, 0),
                count=1,
                rule="limits.per_recipient_per_hour",
                who=f"{recipient} has been sent",
                window="the last hour",
            )
        self._check(
            self.per_day,
            sent=day_sent,
            count=count,
            rule="limits.per_day",
            who="this gateway has sent",
            window="the last 24 hours",
        )

    @staticmethod
    def _check(limit: int, *, sent: int, count: int, rule: str, who: str, window: str) -> None:
        if limit <= 0 or sent + count <= limit:
            return
        if count > limit:
            raise LimitRefusedError(
                f"The message goes to {count} numbers; the limit is {limit} SMS in "
                f"{window} ({rule}): send it in smaller messages",
                rule=rule,
                count=count,
            )
        more = f" and this message adds {count}" if count > 1 else ""
        raise RateLimitedError(
            f"{who} {sent} SMS in {window}{more}; the limit is {limit} ({rule}): try again later",
            rule=rule,
            count=sent,
        )


def _short_or_emergency(number: phonenumbers.PhoneNumber) -> bool:
    """A short code (premium SMS services live there) or an emergency number."""
    if shortnumberinfo.is_valid_short_number(number):
        return True
    region = phonenumbers.region_code_for_country_code(number.country_code or 0)
    national = phonenumbers.national_significant_number(number)
    return shortnumberinfo.is_emergency_number(national, region)


def _printable(text: str) -> str:
    """An identity as it may appear in a reply: ASCII, one line, not too long."""
    shown = _UNPRINTABLE.sub("?", text.encode("ascii", "backslashreplace").decode("ascii"))
    return shown if len(shown) <= 80 else shown[:77] + "..."  # noqa: PLR2004  reply width
