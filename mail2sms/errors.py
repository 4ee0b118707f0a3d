"""The one exception tree of mail2sms.

Callers decide by type, never by a returned bool: an SMTP-time refusal carries the exact
reply to send, a provider error says whether to retry or bounce.

    Mail2SmsError
    ├── ConfigError                  config file missing, unreadable or invalid (exit 78)
    ├── MailRefusedError             refuse at SMTP time; carries code, enhanced status, text
    │   ├── RecipientRefusedError    550 5.1.1 not a gateway address, number or alias
    │   ├── SenderRefusedError       550 5.7.1 sender not allowed
    │   ├── BadSenderAddressError    553 5.1.7 a sender address a bounce cannot go to
    │   ├── BadNumberError           550 5.1.3 no usable phone number
    │   ├── EmptyTextError           550 5.6.0 nothing to send
    │   ├── TooLongError             552 5.3.4 text or message too long
    │   ├── UnparseableMailError     554 5.6.0 the MIME structure could not be read
    │   │   └── BadMessageDataError  554 5.6.0 NUL bytes or an end-of-data look-alike
    │   ├── AutoReplyRefusedError    550 5.7.1 a bounce or automatic reply (no loops)
    │   └── MailLoopError            554 5.4.6 too many Received headers
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
