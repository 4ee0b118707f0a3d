"""Bounces: an RFC 3464 delivery status notification, and the client that hands it to a relay.

A bounce goes to the envelope sender of a mail that was accepted with ``250`` but could not
be delivered as SMS. ``build_dsn`` is pure: a ``BounceJob`` in, the message's bytes out.
Every header it writes is made from constants and sanitised values, never from a header
object or raw header value of the incoming mail: on Python 3.11 a parsed header can carry
an encoded CR LF that the email package writes back out raw (CVE-2024-6923). So the
message is assembled here, line by line, and the incoming subject is re-encoded.

``RelayClient`` sends it to ``bounce.relay`` with ``MAIL FROM:<>``, so a bounce is never
bounced, and says by the error's type whether to keep it (``RelayDeferredError``) or drop
it (``RelayRejectedError``).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import re
import smtplib
import ssl
import unicodedata
from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo
from email.utils import format_datetime
from typing import TYPE_CHECKING

from pydantic import SecretStr

from mail2sms.config import BounceConfig, HostPort
from mail2sms.delivery import backoff
from mail2sms.errors import RelayDeferredError, RelayError, RelayRejectedError
from mail2sms.log import get_logger
from mail2sms.loop import QueueLoop
from mail2sms.mail_address import ascii_hostname, plain_address
from mail2sms.models import (
    CANCELLED_BY_ADMIN,
    LIST_PREFIX,
    BounceJob,
    FailedRecipient,
    is_contact_list,
)

if TYPE_CHECKING:
    from collections.abc import Callable

    from mail2sms.config import DeliveryConfig
    from mail2sms.metrics import Metrics
    from mail2sms.queue import AsyncQueue

log = get_logger(__name__)

SUBJECT_LIMIT = 200
"""Characters of the original subject kept in the bounce's Subject and text."""

REASON_LIMIT = 300
"""Characters of a failure reason kept in the text and in ``Diagnostic-Code``."""

TEXT_LIMIT = 1000
"""Characters of the SMS text quoted back to the sender; the rest is left out."""

HEADERS_LIMIT = 16 * 1024
"""Bytes of the original header block returned in the text/rfc822-headers part."""

REPLY_LIMIT = 300
"""Characters of a relay's reply kept in an error message."""

FROM_NAME = "Mail Delivery System"
DIAGNOSTIC_TYPE = "X-Mail2SMS"

_CRLF = "\r\n"
_FOLD_WIDTH = 78  # RFC 5322's recommended line length
_MAX_LINE = 998  # RFC 5322's hard line limit, without the CRLF
_AUTH_REQUIRED = 530
_WORD_BYTES = 45  # 45 bytes → 60 base64 characters → a 72-character encoded word

_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_DOT_ATOM = re.compile(rf"{_ATOM}(?:\.{_ATOM})*")  # a Message-ID's halves
_STATUS = re.compile(r"[45]\.\d{1,3}\.\d{1,3}")
_E164 = re.compile(r"\+\d{6,15}")
_SPACES = re.compile(r"\s+")
_LINE_BREAK = re.compile(r"\r\n|\r|\n")
# Characters that change how text is shown without being seen (bidi overrides and
# isolates, zero-width marks, the BOM): dropped, so a subject cannot disguise itself.
_INVISIBLE = frozenset(
    "\u200b\u200c\u200d\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\ufeff"
)


# --- sanitising -----------------------------------------------------------------------------


def _clean_char(char: str, *, multi_line: bool) -> str:
    if char in _INVISIBLE:
        return ""
    if multi_line and char in "\n\t":
        return char
    category = unicodedata.category(char)
    if category == "Cs":  # a lone surrogate (from surrogateescape) cannot be encoded
        return "\ufffd"
    if category in {"Cc", "Zl", "Zp"}:
        return " "
    return char


def _one_line(text: str, limit: int) -> str:
    """``text`` as one line of printable characters: controls gone, spaces collapsed, capped."""
    cleaned = "".join(_clean_char(c, multi_line=False) for c in text)
    return _cap(_SPACES.sub(" ", cleaned).strip(), limit)


def _multi_line(text: str) -> str:
    """``text`` with LF line ends and no other control characters (tabs stay)."""
    return "".join(_clean_char(c, multi_line=True) for c in _LINE_BREAK.sub("\n", text))


def _cap(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def _ascii(text: str) -> str:
    """An ASCII rendering for the machine-readable part: accents dropped, the rest ``?``."""
    decomposed = unicodedata.normalize("NFKD", text)
    stripped = "".join(c for c in decomposed if not unicodedata.combining(c))
    return stripped.encode("ascii", "replace").decode("ascii")


def _checked_address(address: str, what: str) -> str:
    """``local@domain`` in plain ASCII, or ValueError: it is written into a header as is."""
    try:
        return plain_address(address)
    except ValueError as exc:
        raise ValueError(f"{what}: {exc}") from None


def _checked_hostname(name: str, what: str) -> str:
    try:
        return ascii_hostname(name)
    except ValueError as exc:
        raise ValueError(f"{what}: {exc}") from None


def _message_id(value: str | None) -> str | None:
    """The original Message-ID as ``<left@right>`` when it is well-formed, else None."""
    inner = (value or "").strip()
    if inner.startswith("<") and inner.endswith(">"):
        inner = inner[1:-1]
    left, at, right = inner.partition("@")
    if (
        not at
        or len(inner) > 250  # noqa: PLR2004  keeps In-Reply-To on one line
        or not _DOT_ATOM.fullmatch(left)
        or not _DOT_ATOM.fullmatch(right)
        or "=?" in inner
    ):
        return None
    return f"<{inner}>"


def _number(value: str) -> str:
    """A number as stored (E.164), or only its ``+`` and ASCII digits if it is not one.

    A contact list (``list:<uid>``) reads ``list-<uid>``: a valid local part.
    """
    if _E164.fullmatch(value):
        return value
    if is_contact_list(value):
        uid = "".join(c for c in value.removeprefix(LIST_PREFIX) if c.isascii() and c.isalnum())
        return f"list-{uid[:32] or 'unknown'}"
    kept = "".join(c for c in value if c == "+" or (c.isascii() and c.isdigit()))
    return kept[:16] or "unknown"


def _status(value: str) -> str:
    return value if _STATUS.fullmatch(value) else "5.0.0"


def _queue_id(value: str) -> str:
    return re.sub(r"[^A-Za-z0-9]", "", value)[:64] or "unknown"


# --- dates ------------------------------------------------------------------------------------


def _rfc5322_date(timestamp: float) -> str:
    return format_datetime(datetime.fromtimestamp(timestamp, UTC))


def _readable_date(timestamp: float, tz: tzinfo) -> str:
    """E.g. ``Tue 04 Jun 2024 09:15:02 UTC`` or ``... 19:15:02 AEST (UTC+1000)``."""
    when = datetime.fromtimestamp(timestamp, tz)
    text = f"{when:%a %d %b %Y %H:%M:%S} {when.tzname() or ''}".rstrip()
    if when.utcoffset():
        text += f" (UTC{when:%z})"
    return text


def _duration(seconds: float) -> str:
    """A span in the words a person would use: minutes, hours or days."""
    minutes = max(1, round(seconds / 60))
    if minutes < 90:  # noqa: PLR2004  below an hour and a half, minutes read best
        return f"{minutes} minute{'s' * (minutes != 1)}"
    hours = round(seconds / 3600)
    if hours < 48:  # noqa: PLR2004  below two days, hours read best
        return f"{hours} hours"
    return f"{round(seconds / 86400)} days"


# --- header fields ----------------------------------------------------------------------------


def _encoded_words(text: str) -> list[str]:
    """RFC 2047 base64 encoded words, each holding whole characters, each under 75 long."""
    chunks: list[bytes] = [b""]
    for char in text:
        raw = char.encode("utf-8")
        if len(chunks[-1]) + len(raw) > _WORD_BYTES:
            chunks.append(b"")
        chunks[-1] += raw
    return [f"=?utf-8?b?{base64.b64encode(c).decode('ascii')}?=" for c in chunks if c]


def _field(name: str, ours: str, theirs: str = "") -> str:
    """One header field, folded at spaces, ending in CRLF.

    ``ours`` is ASCII we composed; ``theirs`` is sanitised text from the mail. It is written
    as is only when it is printable ASCII with nothing a reader could take for an encoded
    word; otherwise as base64 encoded words, so that what a reader decodes is exactly it.
    """
    tokens = ours.split()
    if theirs:
        plain = theirs.isascii() and theirs.isprintable() and "=?" not in theirs
        tokens += theirs.split() if plain else _encoded_words(theirs)
    lines: list[str] = []
    line = f"{name}:"
    for token in tokens:
        if len(line) + 1 + len(token) > _FOLD_WIDTH and line != f"{name}:":
            lines.append(line)
            line = ""
        line += " " + token
    lines.append(line)
    return _CRLF.join(lines) + _CRLF


# --- the three parts --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Part:
    headers: str
    body: bytes


def _quoted_printable(text: str) -> bytes:
    """UTF-8, quoted-printable, CRLF line ends: short lines whatever the text holds."""
    encoded = binascii.b2a_qp(text.encode("utf-8"), istext=True)
    return encoded.replace(b"\n", b"\r\n")


def _why(failed: FailedRecipient, received_at: float) -> list[str]:
    """What happened to one number and what to do, in plain words."""
    status = _status(failed.status)
    reason = _one_line(failed.reason, REASON_LIMIT) or "no reason was given"
    tries = f"{failed.attempts} attempt{'s' * (failed.attempts != 1)}"
    if failed.reason.startswith(CANCELLED_BY_ADMIN):  # the operator's own errors stay private
        return [
            "  Why: the administrator of the SMS gateway cancelled the delivery.",
            "  What to do: ask your IT administrator if it should still be sent.",
        ]
    if status.startswith("5.1."):
        return [
            "  Why: this number is not valid, or it cannot receive text messages.",
            f"  Reason given: {reason}",
            "  What to do: check the number, then send your email again.",
        ]
    if status.startswith("4."):
        waited = _duration(max(0.0, failed.last_attempt_at - received_at))
        return [
            f"  Why: the SMS service could not deliver it for {waited} ({tries}),",
            "  so delivery was abandoned.",
            f"  Last problem: {reason}",
            "  What to do: send your email again later, or tell your IT administrator.",
        ]
    return [
        f"  Why: the SMS provider refused the message: {reason}",
        "  What to do: contact your administrator.",
    ]


def _text_part(job: BounceJob, *, reporting_mta: str, subject: str, tz: tzinfo) -> _Part:
    count = len(job.failed)
    lines = [
        f"This is an automatic message from the email-to-SMS gateway {reporting_mta}.",
        "",
        "Your email could not be sent as a text message (SMS) to "
        + ("this number:" if count == 1 else f"these {count} numbers:"),
        "",
    ]
    for failed in job.failed:
        lines += [_number(failed.number), *_why(failed, job.received_at), ""]
    if job.delivered:
        lines += [
            "It WAS delivered to these numbers, so do not send it to them again:",
            *(f"  {_number(n)}" for n in job.delivered),
            "",
        ]
    lines += [
        "Your email",
        f"  Subject:  {subject or '(no subject)'}",
        f"  Received: {_readable_date(job.received_at, tz)}",
        f"  Queue ID: {_queue_id(job.queue_id)} (quote it if you ask your administrator)",
        "",
    ]
    text = _multi_line(job.text).strip("\n")
    if text:
        shown = text[:TEXT_LIMIT]
        lines += ["The text that was to be sent:", ""]
        lines += [f"> {line}".rstrip() for line in shown.split("\n")]
        if len(text) > len(shown):
            lines += ["", f"[{len(text) - len(shown)} more characters are not shown]"]
    body = "\n".join(lines) + "\n"
    headers = (
        'Content-Type: text/plain; charset="utf-8"\r\n'
        "Content-Transfer-Encoding: quoted-printable\r\n"
        "Content-Description: Notification\r\n"
    )
    return _Part(headers, _quoted_printable(body))


def _status_part(
    job: BounceJob, *, reporting_mta: str, recipient_domain: str, queue_id: str
) -> _Part:
    blocks = [
        [
            f"Reporting-MTA: dns; {reporting_mta}",
            f"X-Mail2SMS-Queue-ID: {queue_id}",
            f"Arrival-Date: {_rfc5322_date(job.received_at)}",
        ]
    ]
    for failed in job.failed:
        reason = _ascii(_one_line(failed.reason, REASON_LIMIT)) or "no reason given"
        blocks.append(
            [
                f"Final-Recipient: rfc822; {_number(failed.number)}@{recipient_domain}",
                "Action: failed",
                f"Status: {_status(failed.status)}",
                f"Diagnostic-Code: {DIAGNOSTIC_TYPE}; {reason}",
                f"Last-Attempt-Date: {_rfc5322_date(failed.last_attempt_at)}",
            ]
        )
    body = (_CRLF * 2).join(_CRLF.join(block) for block in blocks)
    headers = "Content-Type: message/delivery-status\r\nContent-Description: Delivery report\r\n"
    return _Part(headers, body.encode("ascii"))


def _headers_part(original: str) -> _Part:
    """The original header block, CRLF line ends, cut at a line boundary to HEADERS_LIMIT."""
    kept: list[str] = []
    size = 0
    for line in _multi_line(original).split("\n"):
        if not line.strip():  # a blank line would end the block early
            continue
        size += len(line.encode("utf-8")) + len(_CRLF)
        if size > HEADERS_LIMIT:
            break
        kept.append(line)
    text = _CRLF.join(kept)
    headers = "Content-Type: text/rfc822-headers\r\nContent-Description: Your email's headers\r\n"
    if text.isascii() and all(len(line) <= _MAX_LINE for line in kept):
        return _Part(headers, text.encode("ascii"))
    headers = (
        'Content-Type: text/rfc822-headers; charset="utf-8"\r\n'
        "Content-Transfer-Encoding: quoted-printable\r\n"
        "Content-Description: Your email's headers\r\n"
    )
    return _Part(headers, _quoted_printable(text.replace(_CRLF, "\n")))


def _boundary(parts: list[_Part], seed: str) -> str:
    """A boundary derived from the content (so the output is reproducible) and not in it."""
    digest = hashlib.sha256(seed.encode("utf-8"))
    for part in parts:
        digest.update(part.body)
    for counter in range(100):
        boundary = f"=_mail2sms_{digest.hexdigest()[:24]}_{counter}"
        if not any(boundary.encode("ascii") in part.body for part in parts):
            return boundary
    raise AssertionError("no free MIME boundary")  # pragma: no cover  sha256 collides first


# --- the message ------------------------------------------------------------------------------


def build_dsn(
    job: BounceJob,
    *,
    reporting_mta: str,
    from_address: str,
    recipient_domain: str,
    now: float,
    tz: tzinfo = UTC,
) -> bytes:
    """The whole bounce for ``job``: an RFC 3464 multipart/report, CRLF line ends, for DATA.

    Three parts: a plain-words explanation for the person who sent the mail (dates shown in
    ``tz``), the machine-readable message/delivery-status, and the original header block.
    ``now`` dates the bounce and makes its Message-ID; the output depends on its arguments
    only. Raises ValueError when there is nothing to report or nobody to report to: no
    failed recipient, or an envelope sender that is empty (a bounce is never sent to
    ``<>``) or not a plain address; and for a from_address, reporting_mta or
    recipient_domain that could not be written into a header.
    """
    if not job.failed:
        raise ValueError(f"message {job.queue_id}: no failed recipient to report")
    if not job.envelope_from:
        raise ValueError(f"message {job.queue_id}: no bounce goes to the null sender <>")
    to = _checked_address(job.envelope_from, "envelope sender")
    from_address = _checked_address(from_address, "bounce sender")
    reporting_mta = _checked_hostname(reporting_mta, "reporting MTA")
    recipient_domain = _checked_hostname(recipient_domain, "recipient domain")
    subject = _one_line(job.subject, SUBJECT_LIMIT)
    queue_id = _queue_id(job.queue_id)

    parts = [
        _text_part(job, reporting_mta=reporting_mta, subject=subject, tz=tz),
        _status_part(
            job, reporting_mta=reporting_mta, recipient_domain=recipient_domain, queue_id=queue_id
        ),
        _headers_part(job.headers),
    ]
    boundary = _boundary(parts, f"{queue_id} {now!r}")
    fields = [
        _field("From", f"{FROM_NAME} <{from_address}>"),
        _field("To", to),
        _field("Subject", "Undelivered SMS:", subject)
        if subject
        else _field("Subject", "Undelivered SMS (your email had no subject)"),
        _field("Date", _rfc5322_date(now)),
        _field("Message-ID", f"<bounce.{queue_id}.{int(now * 1000)}@{reporting_mta}>"),
    ]
    original_id = _message_id(job.message_id)
    if original_id is not None:
        fields += [_field("In-Reply-To", original_id), _field("References", original_id)]
    fields += [
        _field("Auto-Submitted", "auto-replied"),
        _field("MIME-Version", "1.0"),
        _field(
            "Content-Type",
            f'multipart/report; report-type=delivery-status; boundary="{boundary}"',
        ),
    ]
    message = "".join(fields).encode("ascii") + b"\r\nThis is a delivery status notification.\r\n"
    for part in parts:
        message += f"\r\n--{boundary}\r\n{part.headers}\r\n".encode("ascii")
        message += part.body.rstrip(b"\r\n")
    return message + f"\r\n--{boundary}--\r\n".encode("ascii")


# --- the relay --------------------------------------------------------------------------------


@dataclass(slots=True)
class _Progress:
    """How far one conversation got, for the error message."""

    stage: str = "connect"


class RelayClient:
    """Sends bounces through ``bounce.relay`` with smtplib, in a worker thread.

    Every failure becomes a ``RelayError`` naming the relay and its reply, never the
    password, and raised without the smtplib exception as cause or context (whose frames
    held the credentials). A send that is cancelled keeps running in its thread until it
    ends or ``bounce.timeout`` runs out, as smtplib cannot be interrupted.
    """

    def __init__(self, config: BounceConfig, *, helo: str) -> None:
        self._config = config
        self._helo = helo

    @property
    def timeout(self) -> float:
        """Seconds one conversation may take (``bounce.timeout``)."""
        return self._config.timeout

    async def send(self, *, to: str, message: bytes) -> None:
        """Hand ``message`` to the relay for ``to``, from the null sender ``<>``.

        Raises ``RelayDeferredError`` (keep it and retry: relay unreachable, 4xx, TLS or
        login failed) or ``RelayRejectedError`` (drop it: 5xx to MAIL, RCPT or DATA), and
        ValueError when no relay is configured or ``to`` is not a plain address.
        """
        if self._config.relay is None:
            raise ValueError("bounce.relay is not set: there is no relay to send bounces to")
        to = _checked_address(to, "bounce recipient")
        await asyncio.to_thread(self._send_sync, self._config.relay, to, message)

    @property
    def _relay(self) -> str:
        return f"bounce relay {self._config.relay}"

    async def check(self) -> None:
        """Connect, EHLO, STARTTLS and AUTH as a send would, then QUIT (``--online``).

        Raises the same ``RelayError`` a send would; sends nothing.
        """
        if self._config.relay is None:
            raise ValueError("bounce.relay is not set: there is no relay to check")
        await asyncio.to_thread(self._send_sync, self._config.relay, None, None)

    def _send_sync(self, relay: HostPort, to: str | None, message: bytes | None) -> None:
        progress = _Progress()
        try:
            self._conversation(progress, relay, to, message)
        except RelayError:
            raise
        except (OSError, UnicodeError) as exc:  # smtplib.SMTPException is an OSError
            error = self._translate(exc, progress.stage)
        else:
            return
        raise error  # outside the except block: no smtplib exception as its context

    def _conversation(
        self, progress: _Progress, relay: HostPort, to: str | None, message: bytes | None
    ) -> None:
        """One SMTP conversation; without ``to``/``message`` it ends after AUTH (a check)."""
        smtp = smtplib.SMTP(
            relay.host, relay.port, local_hostname=self._helo, timeout=self._config.timeout
        )
        try:
            progress.stage = "EHLO"
            smtp.ehlo_or_helo_if_needed()
            self._starttls(smtp, progress)
            if self._config.password is not None:
                progress.stage = "AUTH"
                self._login(smtp, self._config.password)
            if to is None or message is None:
                progress.stage = "QUIT"
                return
            progress.stage = "MAIL FROM:<>"
            self._expect(progress.stage, smtp.mail(""), {250})
            progress.stage = f"RCPT TO:<{to}>"
            self._expect(progress.stage, smtp.rcpt(to), {250, 251})
            progress.stage = "DATA"
            self._expect("end of DATA", smtp.data(message), {250})
            progress.stage = "QUIT"
        finally:
            if smtp.sock is not None:  # smtplib closes it itself after a socket error
                try:
                    smtp.quit()
                except OSError:
                    smtp.close()

    def _starttls(self, smtp: smtplib.SMTP, progress: _Progress) -> None:
        """STARTTLS as ``bounce.starttls`` says.

        ``always`` verifies the certificate and host name with the system's CAs. ``auto``
        is opportunistic as between MTAs (RFC 7435): it encrypts when offered but does not
        verify, because relays on a LAN or localhost often have self-signed certificates
        and a plain connection would be no safer; set ``always`` to be protected from an
        active attacker.
        """
        mode = self._config.starttls
        if mode == "never":
            return
        if not smtp.has_extn("starttls"):
            if mode == "auto":
                return
            raise RelayDeferredError(
                f"{self._relay} does not offer STARTTLS, which bounce.starttls = 'always' requires"
            )
        progress.stage = "STARTTLS"
        if mode == "always":
            context = ssl.create_default_context()
        else:
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        smtp.starttls(context=context)
        progress.stage = "EHLO after STARTTLS"
        smtp.ehlo_or_helo_if_needed()

    def _login(self, smtp: smtplib.SMTP, password: SecretStr) -> None:
        if not smtp.has_extn("auth"):
            raise RelayDeferredError(
                f"{self._relay} does not offer AUTH; check bounce.user/bounce.password"
            )
        try:
            smtp.login(self._config.user, password.get_secret_value())
        finally:
            smtp.user = smtp.password = ""  # smtplib keeps them on the connection object

    def _expect(self, stage: str, reply: tuple[int, bytes], ok: set[int]) -> None:
        code, text = reply
        if code in ok:
            return
        raise self._refusal(stage, code, text)

    def _refusal(self, stage: str, code: int, text: bytes | str) -> RelayError:
        """5xx to the transaction (MAIL, RCPT, DATA) is final; anything else is worth a retry.

        Except 530 (RFC 4954, authentication required): that is our configuration, not
        the bounce, and every bounce would be dropped until it is fixed.
        """
        message = f"{self._relay} answered {stage} with {code} {self._reply(text)}".rstrip()
        if code == _AUTH_REQUIRED:
            return RelayDeferredError(f"{message}; set bounce.user/bounce.password")
        final = stage.startswith(("MAIL", "RCPT", "DATA", "end of DATA"))
        if final and 500 <= code <= 599:  # noqa: PLR2004  the SMTP 5xx class
            return RelayRejectedError(message)
        return RelayDeferredError(message)

    def _translate(  # noqa: PLR0911  one return per kind of failure
        self, exc: OSError | UnicodeError, stage: str
    ) -> RelayError:
        if isinstance(exc, smtplib.SMTPAuthenticationError):
            return RelayDeferredError(
                f"{self._relay} refused the login of bounce.user {self._config.user!r}: "
                f"{exc.smtp_code} {self._reply(exc.smtp_error)}; "
                "check bounce.user/bounce.password"
            )
        if isinstance(exc, UnicodeError):  # smtplib sends credentials as ASCII only
            return RelayDeferredError(
                f"{self._relay}: bounce.user or bounce.password is not plain ASCII, which "
                "smtplib cannot send; check bounce.user/bounce.password"
            )
        if isinstance(exc, smtplib.SMTPDataError):  # DATA answered with something but 354
            return self._refusal("DATA", exc.smtp_code, exc.smtp_error)
        if isinstance(exc, smtplib.SMTPResponseException):
            return self._refusal(stage, exc.smtp_code, exc.smtp_error)
        if isinstance(exc, ssl.SSLError):
            return RelayDeferredError(
                f"{self._relay}: TLS failed during {stage}: {self._reply(str(exc))} "
                f"(bounce.starttls = '{self._config.starttls}')"
            )
        if isinstance(exc, smtplib.SMTPException):
            hint = "; check bounce.user/bounce.password" if stage == "AUTH" else ""
            return RelayDeferredError(
                f"{self._relay}: {stage} failed: {self._reply(str(exc))}{hint}"
            )
        detail = self._reply(str(exc)) or type(exc).__name__
        return RelayDeferredError(f"{self._relay}: cannot talk to it during {stage}: {detail}")

    def _reply(self, text: bytes | str) -> str:
        """A server's reply for an error message: one line, capped, the password masked."""
        if isinstance(text, bytes):
            text = text.decode("utf-8", "replace")
        reply = _one_line(text, REPLY_LIMIT)
        password = self._config.password
        if password is not None and password.get_secret_value():
            reply = reply.replace(password.get_secret_value(), "[redacted]")
        return reply


# --- the sender loop ----------------------------------------------------------------------

IDLE_POLL = 1.0  # seconds between looks for owed bounces (sees `queue bounce` / `retry`)
BATCH = 10  # bounces claimed per look; they are sent one after the other
MIN_LEASE = 300.0
NO_RELAY = "bounce.relay is empty: the failure is logged, no bounce mail is sent"


class Bouncer(QueueLoop):
    """Sends the bounces the queue owes, one at a time, retrying while the relay is down.

    Bounces are rare and a relay is better not hammered, so there is one sender. A bounce
    the relay defers is retried with the delivery backoff for ``delivery.give_up_after``
    (counted from when it became owed), then dropped with an error in the log; one the relay
    refuses is dropped at once. A dropped bounce is never bounced.
    """

    name = "bouncer"

    def __init__(
        self,
        *,
        queue: AsyncQueue,
        relay: RelayClient | None,
        reporting_mta: str,
        from_address: str,
        recipient_domain: str,
        retry: DeliveryConfig,
        clock: Callable[[], float],
        rng: Callable[[], float],
        metrics: Metrics | None = None,
    ) -> None:
        super().__init__()
        self.metrics = metrics
        self.queue = queue
        self.relay = relay
        self.reporting_mta = reporting_mta
        self.from_address = from_address
        self.recipient_domain = recipient_domain
        self.retry = retry
        self.clock = clock
        self.rng = rng
        self.lease = max(MIN_LEASE, 4 * relay.timeout) if relay is not None else MIN_LEASE

    def configure(self, other: Bouncer) -> None:
        """Take over a reloaded configuration's relay and addresses (``other`` is not run)."""
        self.relay = other.relay
        self.reporting_mta = other.reporting_mta
        self.from_address = other.from_address
        self.recipient_domain = other.recipient_domain
        self.retry = other.retry
        self.lease = other.lease

    async def _pass(self) -> None:
        """Send the bounces that are due, one after the other, then wait for more."""
        jobs = await self.queue.claim_bounces(now=self.clock(), lease=self.lease, limit=BATCH)
        for job in jobs:
            if self.stopping:  # a claimed bounce left unsent is sent again at the next start
                return
            await self._send(job)
        if len(jobs) == BATCH:
            return
        due = await self.queue.next_bounce_due()
        await self.nap(IDLE_POLL if due is None else min(IDLE_POLL, max(0.0, due - self.clock())))

    async def _send(self, job: BounceJob) -> None:
        context = {"queue_id": job.queue_id, "to": job.envelope_from, "attempt": job.attempts}
        if self.relay is None:
            await self.queue.mark_bounce_dropped(job.queue_id, now=self.clock(), error=NO_RELAY)
            log.warning("bounce_not_sent", **context, detail=NO_RELAY)
            return
        try:
            message = build_dsn(
                job,
                reporting_mta=self.reporting_mta,
                from_address=self.from_address,
                recipient_domain=self.recipient_domain,
                now=self.clock(),
            )
            await self.relay.send(to=job.envelope_from, message=message)
        except ValueError as exc:  # nobody to send it to (e.g. a malformed sender address)
            await self._drop(job, f"cannot bounce: {exc}", context)
        except RelayRejectedError as exc:
            await self._drop(job, str(exc), context)
        except RelayDeferredError as exc:
            await self._defer(job, str(exc), context)
        else:
            await self.queue.mark_bounce_sent(job.queue_id, now=self.clock())
            self._count("sent")
            log.info("bounce_sent", **context, recipients=[f.number for f in job.failed])

    async def _defer(self, job: BounceJob, error: str, context: dict[str, object]) -> None:
        now = self.clock()
        if now - job.owed_since >= self.retry.give_up_after:
            await self._drop(job, f"gave up after {job.attempts} attempts: {error}", context)
            return
        delay = backoff(
            job.attempts,
            initial=self.retry.retry_initial,
            maximum=self.retry.retry_max,
            retry_after=None,
            rng=self.rng,
        )
        await self.queue.mark_bounce_retry(job.queue_id, now=now, at=now + delay, error=error)
        self._count("deferred")
        log.warning("bounce_deferred", **context, retry_in_s=round(delay, 1), error=error)

    def _count(self, outcome: str) -> None:
        if self.metrics is not None:
            self.metrics.bounces.labels(outcome=outcome).inc()

    async def _drop(self, job: BounceJob, error: str, context: dict[str, object]) -> None:
        await self.queue.mark_bounce_dropped(job.queue_id, now=self.clock(), error=error)
        self._count("dropped")
        log.error("bounce_dropped", **context, error=error)
