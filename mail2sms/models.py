"""Frozen records passed between the stages of one message's path.

SMTP → ``MailContent`` + ``RcptTarget`` → ``NewMessage`` (queued) → ``ClaimedJob`` (a worker
holds a lease) → ``SmsBatch`` (one provider request) → ``RecipientResult`` per number.
Phone numbers are always E.164 with a leading ``+`` inside mail2sms; providers reformat.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

LIST_PREFIX = "list:"
"""A queued recipient that is a provider's contact list (``list:<uid>``), not a number."""


def is_contact_list(recipient: str) -> bool:
    """The recipient names a provider contact list rather than a phone number."""
    return recipient.startswith(LIST_PREFIX)


@dataclass(frozen=True, slots=True)
class RcptTarget:
    """What one accepted RCPT TO address means.

    ``number`` is set for ``<number>@<gateway domain>``; ``None`` for a gateway address,
    whose recipients are listed in the Subject.
    """

    address: str
    number: str | None = None
    numbers: tuple[str, ...] = ()
    """An alias's numbers (``oncall@<gateway domain>``); empty otherwise."""

    @property
    def direct(self) -> bool:
        """The address itself names the recipients (a number or an alias), not the Subject."""
        return self.number is not None or bool(self.numbers)


@dataclass(frozen=True, slots=True)
class MailContent:
    """What mail_parse reads out of a raw RFC 5322 message."""

    subject: str
    from_addresses: tuple[str, ...]
    message_id: str | None
    date: str | None
    body: str
    content_type: str = "text/plain"
    auto_submitted: str = ""
    """The Auto-Submitted keyword, lower case (``auto-replied``); empty when absent."""
    received: int = 0
    """How many Received: headers the mail carries (hops it has passed)."""


class SmsEncoding(StrEnum):
    """The two SMS alphabets that decide how many characters fit in a part."""

    GSM7 = "GSM-7"
    UCS2 = "UCS-2"


@dataclass(frozen=True, slots=True)
class SmsLength:
    """The cost of a text: its alphabet, length in that alphabet's units, and parts."""

    encoding: SmsEncoding
    units: int
    parts: int


@dataclass(frozen=True, slots=True)
class NewMessage:
    """A message accepted at SMTP time, ready to be committed to the queue."""

    envelope_from: str
    from_header: str
    subject: str
    message_id: str | None
    recipients: tuple[str, ...]
    text: str
    sender_id: str
    received_at: float
    size: int
    headers: str
    sms_type: str = "plain"
    """``plain``, or ``otp`` for a gateway address that uses the provider's priority route."""


class RecipientState(StrEnum):
    """Where one recipient of a queued message stands."""

    PENDING = "pending"
    INFLIGHT = "inflight"
    SENT = "sent"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class ClaimedJob:
    """Recipients of one message that a worker has leased for one delivery attempt.

    ``possible_duplicates`` are those that were in flight when a daemon died or a lease ran
    out: the provider may already have sent them, so a resend is logged as such.
    """

    queue_id: str
    recipients: tuple[str, ...]
    text: str
    sender_id: str
    envelope_from: str
    subject: str
    received_at: float
    attempts: int
    possible_duplicates: tuple[str, ...] = ()
    sms_type: str = "plain"
    lease_until: float = 0.0
    """When the lease taken with this job runs out (0: unknown, renew it before sending)."""


@dataclass(frozen=True, slots=True)
class SmsBatch:
    """One provider request: the same text to one or more numbers."""

    queue_id: str
    recipients: tuple[str, ...]
    text: str
    sender_id: str
    sms_type: str = "plain"


class Outcome(StrEnum):
    """How a provider answered for one recipient."""

    SENT = "sent"
    TRANSIENT = "transient"
    PERMANENT = "permanent"
    HELD = "held"
    """Not sent because of the operator's account (funds, permission): kept, never given up."""


@dataclass(frozen=True, slots=True)
class RecipientResult:
    """The provider's answer for one number; ``detail`` keeps the provider's own words."""

    recipient: str
    outcome: Outcome
    detail: str = ""
    provider_ref: str | None = None


CANCELLED_BY_ADMIN = "delivery was cancelled by the gateway's administrator"
"""The reason ``queue bounce`` records; a bounce words it for the sender on its own."""


@dataclass(frozen=True, slots=True)
class FailedRecipient:
    """One number a bounce reports: RFC 3463 ``status`` and the reason in plain words."""

    number: str
    status: str
    reason: str
    attempts: int
    last_attempt_at: float


@dataclass(frozen=True, slots=True)
class BounceJob:
    """Everything a delivery status notification needs, read from the queue in one go.

    ``headers`` is the original header block as stored at acceptance; it is untrusted text.
    """

    queue_id: str
    envelope_from: str
    from_header: str
    subject: str
    message_id: str | None
    received_at: float
    text: str
    headers: str
    failed: tuple[FailedRecipient, ...]
    delivered: tuple[str, ...]
    attempts: int
    owed_since: float = 0.0
    """When the message finished and the bounce became due (retries give up from here)."""


@dataclass(frozen=True, slots=True)
class AccountStatus:
    """What ``check-config --online`` learned from the provider about the account.

    ``balance`` is the provider's own words for what is left (e.g. ``"1,234 units"``),
    or None when it does not say; ``detail`` names what was checked.
    """

    balance: str | None
    detail: str
