"""The one exception tree of mail2sms.

Callers decide by type, never by a returned bool: an SMTP-time refusal carries the exact
reply to send, a provider error says whether to retry or bounce.

    Mail2SmsError
    ├── ConfigError                  config file missing, unreadable or invalid (exit 78)
    ├── MailRefusedError             refuse at SMTP time; carries code, enhanced status, text
    │   ├── RecipientRefusedError    550 5.1.1 not a gateway address, number or alias
    │   ├── SenderRefusedError       550 5.7.1 sender not allowed
    │   ├── SenderUnverifiedError    550 5.7.1 From domain not verified (DMARC alignment)
    │   ├── SenderCheckDeferredError 451 4.4.3 DNS failed while verifying the From domain
    │   ├── BadSenderAddressError    553 5.1.7 a sender address a bounce cannot go to
    │   ├── BadNumberError           550 5.1.3 no usable phone number
    │   ├── EmptyTextError           550 5.6.0 nothing to send
    │   ├── TooLongError             552 5.3.4 text or message too long
    │   ├── UnparseableMailError     554 5.6.0 the MIME structure could not be read
    │   │   └── BadMessageDataError  554 5.6.0 NUL bytes or an end-of-data look-alike
    │   ├── AutoReplyRefusedError    550 5.7.1 a bounce or automatic reply (no loops)
    │   ├── MailLoopError            554 5.4.6 too many Received headers
    │   ├── AuthRequiredError        530 5.7.0 senders.require_auth and the client has not logged in
    │   ├── BadCredentialsError      535 5.7.8 AUTH with a wrong user name or password
    │   ├── AuthLockedError          454 4.7.0 AUTH refused for a while after repeated failures
    │   └── LimitRefusedError        550 5.7.1 a [limits] rule: country, number type, count
    │       └── RateLimitedError     451 4.7.1 a [limits] rate is used up: try again later
    ├── QueueError                   the durable queue failed
    │   ├── QueueUnavailableError    cannot commit now (disk, lock): 451 at SMTP time
    │   └── NotFoundError            no queue entry with that id
    ├── ProviderError                an SMS provider call failed as a whole
    │   ├── TransientProviderError   try again later (timeouts, 429, 5xx, "try later")
    │   │   └── ProviderAccountError the operator's token, balance or plan: keep mail queued
    │   └── PermanentProviderError   the provider refused for good: bounce
    ├── RelayError                   sending a bounce through bounce.relay failed
    │   ├── RelayDeferredError       relay unreachable or 4xx: keep the bounce, retry later
    │   └── RelayRejectedError       relay refused for good (5xx): log and drop, never re-bounce
    └── InternalError                the daemon cannot go on (a background task ended): exit 70
"""

from __future__ import annotations


class Mail2SmsError(Exception):
    """Root of every error mail2sms raises on purpose."""


class ConfigError(Mail2SmsError):
    """The configuration cannot be used; ``problems`` lists each as ``key.path: what``."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("; ".join(self.problems))


class MailRefusedError(Mail2SmsError):
    """A message or recipient is refused during the SMTP session.

    ``reply`` is the full SMTP reply line, e.g. ``550 5.1.3 No phone number ...``. The text
    is written for the person who sent the mail, so it must say what to change.
    """

    code = 550
    status = "5.0.0"

    def __init__(self, text: str) -> None:
        self.text = text
        super().__init__(text)

    @property
    def reply(self) -> str:
        """The SMTP reply line for this refusal."""
        return f"{self.code} {self.status} {self.text}"


class RecipientRefusedError(MailRefusedError):
    """The recipient is not a gateway address, a number at a gateway domain or an alias."""

    status = "5.1.1"


class SenderRefusedError(MailRefusedError):
    """The envelope sender or the From header is not allowed to send."""

    status = "5.7.1"


class BadNumberError(MailRefusedError):
    """No usable phone number, or a token that is not one."""

    status = "5.1.3"


class EmptyTextError(MailRefusedError):
    """The mail carries no text to send."""

    status = "5.6.0"


class TooLongError(MailRefusedError):
    """The text needs more SMS parts than allowed, or the message is over the size limit."""

    code = 552
    status = "5.3.4"


class UnparseableMailError(MailRefusedError):
    """The message could not be read as MIME at all."""

    code = 554
    status = "5.6.0"


class BadMessageDataError(UnparseableMailError):
    """The DATA bytes break SMTP's rules in a way that can be an attack, so nothing is sent.

    NUL bytes, and a line holding only ``.`` with a bare CR or LF next to it: some servers
    take that for the end of the message, which lets a sender hide a second message inside
    the first (SMTP smuggling).
    """


class QueueError(Mail2SmsError):
    """The durable queue failed."""


class QueueUnavailableError(QueueError):
    """The queue cannot commit right now (disk full, locked); the client should retry."""


class NotFoundError(QueueError):
    """No queue entry has the given id."""


class ProviderError(Mail2SmsError):
    """A call to an SMS provider failed as a whole (not per recipient)."""


class TransientProviderError(ProviderError):
    """Worth retrying later; ``retry_after`` is the provider's hint in seconds, if any."""

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        self.retry_after = retry_after
        super().__init__(message)


class ProviderAccountError(TransientProviderError):
    """The provider refused because of the operator's account: bad token, no balance, no plan.

    The sender did nothing wrong, so the message stays queued (it is retried like any
    transient failure) and every attempt logs an operator error; a wrong token must not
    bounce every customer's mail.
    """


class PermanentProviderError(ProviderError):
    """The provider refused for good; the message bounces with RFC 3463 ``status``."""

    def __init__(self, message: str, *, status: str = "5.0.0") -> None:
        self.status = status
        super().__init__(message)


class AutoReplyRefusedError(MailRefusedError):
    """The mail is a bounce or an automatic reply: answering it could start a mail loop."""

    code = 550
    status = "5.7.1"


class MailLoopError(MailRefusedError):
    """The mail has passed through more hosts than ``smtp.max_received`` allows."""

    code = 554
    status = "5.4.6"


class RelayError(Mail2SmsError):
    """A bounce could not be handed to ``bounce.relay``."""


class RelayDeferredError(RelayError):
    """The relay could not be reached or answered 4xx: keep the bounce and retry it."""


class RelayRejectedError(RelayError):
    """The relay refused the bounce for good (5xx): log it and drop it, never bounce it."""


class InternalError(Mail2SmsError):
    """The daemon cannot go on; it exits non-zero so systemd restarts it."""


class BadSenderAddressError(MailRefusedError):
    """The envelope sender is not a plain address, so a bounce could never reach it."""

    code = 553
    status = "5.1.7"


class LimitRefusedError(MailRefusedError):
    """A ``[limits]`` rule refuses the message: a destination or too many numbers.

    ``rule`` names what refused (``limits.countries``, a number type), for the log line an
    administrator greps when a burst of refusals shows an SMS pumping attempt; ``count`` is
    the figure that broke it (numbers in the message, SMS in the window), 0 when none.
    """

    code = 550
    status = "5.7.1"

    def __init__(self, text: str, *, rule: str, count: int = 0) -> None:
        self.rule = rule
        self.count = count
        super().__init__(text)


class RateLimitedError(LimitRefusedError):
    """A ``[limits]`` rate (per sender, per recipient, per day) is used up for now.

    4xx, so a mail server keeps the message and tries again once the window has moved on.
    """

    code = 451
    status = "4.7.1"


class SenderUnverifiedError(MailRefusedError):
    """``senders.verify = "dmarc"``: no SPF or DKIM pass aligned with the From domain.

    The From line may be forged, so an unauthenticated client cannot spend SMS money with it.
    """

    status = "5.7.1"


class SenderCheckDeferredError(MailRefusedError):
    """A DNS lookup needed to verify the From domain failed (timeout, SERVFAIL): retry later.

    RFC 3463 X.4.3 is "directory server failure", the code for a DNS server that could not
    answer; the SPF/DKIM-specific codes of RFC 7372 (X.7.24 and others) name one method, and
    this may be any of the lookups. Never a silent pass.
    """

    code = 451
    status = "4.4.3"


class AuthRequiredError(MailRefusedError):
    """``senders.require_auth``: this client must log in (AUTH) before it may send."""

    code = 530
    status = "5.7.0"


class BadCredentialsError(MailRefusedError):
    """AUTH failed: unknown user or wrong password (the reply never says which)."""

    code = 535
    status = "5.7.8"


class AuthLockedError(MailRefusedError):
    """Too many failed AUTH attempts from this client's address: it must wait."""

    code = 454
    status = "4.7.0"
