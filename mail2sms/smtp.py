"""The SMTP side: an aiosmtpd handler that refuses early, accepts durably, and always answers.

Every check that can be made during the session is made there, so the sending client tells
the person at once (a bounce is only for what fails later). ``250`` is sent only after the
message is committed to the queue. Nothing slow happens here: delivery is the workers' job.
"""

from __future__ import annotations

import asyncio
import functools
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from aiosmtpd.smtp import SMTP, Envelope, Session

from mail2sms import __version__
from mail2sms.addressing import parse_numbers, parse_rcpt
from mail2sms.config import AddressOptions, Settings, TextSource
from mail2sms.errors import (
    AutoReplyRefusedError,
    BadSenderAddressError,
    EmptyTextError,
    MailLoopError,
    MailRefusedError,
    QueueError,
    SenderRefusedError,
)
from mail2sms.log import get_logger
from mail2sms.mail_address import ascii_domain, plain_address
from mail2sms.mail_parse import Cleanup, header_block, parse_mail
from mail2sms.metrics import Metrics
from mail2sms.models import LIST_PREFIX, MailContent, NewMessage, RcptTarget
from mail2sms.queue import AsyncQueue
from mail2sms.sms_text import check_length, measure, normalize, truncate

log = get_logger(__name__)

# Named replies (RFC 3463 enhanced status codes); refusals come from the exception tree.
OK_SENDER = "250 2.1.0 Sender OK"
OK_RECIPIENT = "250 2.1.5 Recipient OK"
QUEUED = "250 2.0.0 queued as {queue_id}"
OTHER_OPTIONS = "452 4.5.3 Send to {address} in a separate message: it is sent with other options"
TEMPORARY_ERROR = "451 4.3.0 Temporary local problem, please try again later"
QUEUE_UNAVAILABLE = "451 4.3.0 The message could not be stored, please try again later"
SHUTTING_DOWN = "421 4.3.2 Service shutting down, please try again later"
TOO_BIG = "552 5.3.4 Message too big: the limit is {limit} bytes"

RCPT_CACHE_SIZE = 4096  # addresses remembered per Policy (cleared, not evicted, when full)
INLINE_PARSE = 64 * 1024
"""Mail up to this size (bytes) is parsed on the event loop: well under a millisecond."""

# aiosmtpd writes these itself, without enhanced codes; they are rewritten on the way out.
_AIOSMTPD_TOO_BIG = (
    b"552 Error: Too much mail data",
    b"552 Error: message size exceeds fixed maximum message size",
)


class GatewaySMTP(SMTP):
    """aiosmtpd's protocol with our size replies and a registry of live sessions."""

    def __init__(self, handler: GatewayHandler, **kwargs: Any) -> None:  # noqa: ANN401
        super().__init__(handler, **kwargs)
        self._gateway = handler

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Register the session so a shutdown can wait for or close it."""
        self._gateway.sessions.add(self)
        super().connection_made(transport)

    def connection_lost(self, error: Exception | None) -> None:
        """Forget the session."""
        self._gateway.sessions.discard(self)
        super().connection_lost(error)

    async def push(self, status: bytes | str) -> None:
        """Send a reply, giving aiosmtpd's own size refusals their enhanced status code."""
        raw = status.encode("ascii", "replace") if isinstance(status, str) else status
        if raw in _AIOSMTPD_TOO_BIG:
            raw = TOO_BIG.format(limit=self.data_size_limit).encode("ascii")
        await super().push(raw)

    def close_with(self, reply: str) -> None:
        """Say goodbye (e.g. 421 at shutdown) and close the connection."""
        transport = getattr(self, "transport", None)
        if transport is not None and not transport.is_closing():
            transport.write(reply.encode("ascii") + b"\r\n")
            transport.close()


@dataclass(frozen=True, slots=True)
class Policy:
    """The parts of the configuration the handler needs, read once per (re)load."""

    hostname: str
    gateway_addresses: tuple[str, ...]
    gateway_domains: tuple[str, ...]
    default_region: str
    sender_id: str
    max_parts: int
    allow: tuple[str, ...]
    max_received: int = 30
    accept_auto_generated: bool = True
    aliases: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    options: Mapping[str, AddressOptions] = field(default_factory=dict)
    normalize: bool = True
    on_too_long: str = "reject"
    cleanup: Cleanup | None = None
    duplicate_window: float = 600.0
    _rcpt_cache: dict[str, RcptTarget] = field(default_factory=dict, compare=False, repr=False)
    """Addresses already classified: phone number parsing is the costliest part of RCPT,
    and alerting systems write to the same few addresses all day. A reload makes a new
    Policy, so the cache never outlives the settings it was computed with."""

    @classmethod
    def from_settings(cls, settings: Settings) -> Policy:
        """Copy what the handler needs out of the validated settings."""
        return cls(
            hostname=settings.smtp.hostname,
            gateway_addresses=tuple(settings.gateway.addresses),
            gateway_domains=tuple(settings.gateway.domains),
            default_region=settings.gateway.default_region,
            sender_id=settings.gateway.sender_id,
            max_parts=settings.gateway.max_parts,
            allow=tuple(settings.senders.allow),
            max_received=settings.smtp.max_received,
            accept_auto_generated=settings.smtp.accept_auto_generated,
            aliases={name: tuple(numbers) for name, numbers in settings.gateway.aliases.items()}
            | {
                name: (f"{LIST_PREFIX}{uid}",)
                for name, uid in settings.gateway.contact_lists.items()
            },
            options=dict(settings.gateway.options),
            normalize=settings.content.normalize,
            on_too_long=settings.content.on_too_long,
            cleanup=Cleanup(
                strip_patterns=tuple(re.compile(p) for p in settings.content.strip_patterns),
                cut_after=tuple(settings.content.cut_after),
            ),
            duplicate_window=settings.smtp.duplicate_window,
        )

    def rcpt(self, address: str) -> RcptTarget:
        """Classify a RCPT address against the gateway addresses, domains and aliases."""
        target = self._rcpt_cache.get(address)
        if target is None:  # a refusal raises and is not cached: it is the rare case
            target = parse_rcpt(
                address,
                gateway_addresses=self.gateway_addresses,
                gateway_domains=self.gateway_domains,
                default_region=self.default_region,
                aliases=self.aliases,
            )
            if len(self._rcpt_cache) >= RCPT_CACHE_SIZE:
                self._rcpt_cache.clear()
            self._rcpt_cache[address] = target
        return target

    def sender_allowed(self, address: str) -> bool:
        """An exact address (case-insensitive) or ``@domain`` in senders.allow.

        The domain is compared in its ASCII form, as the allowlist stores it.
        """
        local, at, domain = address.strip().rpartition("@")
        if not at:
            return False
        try:
            domain = "@" + ascii_domain(domain).lower()
        except ValueError:
            return False
        return f"{local.lower()}{domain}" in self.allow or domain in self.allow


@dataclass(frozen=True, slots=True)
class Client:
    """What the session knows about the submitting client, for the checks made at DATA.

    Built once per transaction from aiosmtpd's ``Session`` so the pure ``build_message``
    never touches the protocol object.
    """

    ip: str | None = None
    """The peer's IP address (no port), or None when the transport has no address."""
    helo: str = ""
    """The name given in HELO/EHLO (for SPF's HELO identity)."""
    user: str | None = None
    """The SMTP AUTH user name, once the client has authenticated."""
    trusted_network: bool = False
    """The client's address is in ``senders.networks`` (may submit without AUTH)."""

    @classmethod
    def of(cls, session: Session) -> Client:
        """Read the peer address, HELO name and AUTH identity off an aiosmtpd session."""
        peer = getattr(session, "peer", None)
        ip = str(peer[0]) if isinstance(peer, tuple) and peer else None
        user = (
            getattr(session, "auth_data", None)
            if getattr(session, "authenticated", False)
            else None
        )
        return cls(
            ip=ip,
            helo=str(getattr(session, "host_name", "") or ""),
            user=str(user) if isinstance(user, str) else None,
        )


def check_sender(policy: Policy, address: str, *, where: str) -> None:
    """Refuse a sender that is not on the allowlist, saying which address and why."""
    if address in {"", "<>"}:  # aiosmtpd passes the null reverse-path as "<>"
        raise AutoReplyRefusedError(
            "Mail with an empty sender (a bounce or automatic reply) is not accepted: "
            "this gateway sends SMS only for people and systems that write to it"
        )
    if not policy.sender_allowed(address):
        raise SenderRefusedError(
            f"{where} <{address}> is not allowed to send SMS through this gateway; "
            "ask its administrator to add it"
        )


def check_reverse_path(address: str) -> None:
    """Refuse an envelope sender a bounce could not be sent to (quoted or non-ASCII names).

    Refusing now tells the sender at once; accepting would leave a failure unreportable.
    """
    try:
        plain_address(address)
    except ValueError:
        raise BadSenderAddressError(
            f"Sender <{address}> cannot receive delivery reports from this gateway: "
            "send from a plain address such as name@example.com"
        ) from None


def check_not_automatic(content: MailContent, policy: Policy) -> None:
    """Refuse bounces, automatic replies and looping mail: answering them feeds a loop.

    ``Auto-Submitted: auto-generated`` (monitoring, cron) is accepted by default: those
    systems are what the gateway is for, and they do not answer our bounces.
    """
    if content.received > policy.max_received:
        raise MailLoopError(
            f"Mail loop detected: the message passed {content.received} mail servers "
            f"(limit {policy.max_received}); check the forwarding rules that send it here"
        )
    if content.content_type == "multipart/report":
        raise AutoReplyRefusedError(
            "Delivery reports (bounces) are not accepted: this gateway only sends SMS"
        )
    keyword = content.auto_submitted
    if keyword in {"", "no"} or (keyword == "auto-generated" and policy.accept_auto_generated):
        return
    raise AutoReplyRefusedError(
        f"Automatic mail (Auto-Submitted: {keyword[:40]}) is not accepted, to avoid mail loops"
    )


def resolve_recipients(
    targets: Sequence[RcptTarget], content: MailContent, policy: Policy
) -> tuple[str, ...]:
    """The numbers this message goes to, in order, without duplicates."""
    numbers: dict[str, None] = {}
    for target in targets:
        if target.number is not None:
            numbers[target.number] = None
        elif target.numbers:
            numbers.update(dict.fromkeys(target.numbers))
        else:
            subject_numbers = parse_numbers(content.subject, policy.default_region, policy.aliases)
            numbers.update(dict.fromkeys(subject_numbers))
    return tuple(numbers)


def choose_text(
    targets: Sequence[RcptTarget], content: MailContent, source: TextSource = "body"
) -> str:
    """The body is the text; a ``<number>@domain`` mail with an empty body sends its subject.

    A gateway or alias address may take its text from the subject, or subject and body.
    """
    subject, body = content.subject.strip(), content.body.strip()
    if source == "subject" and subject:
        return subject
    if source == "subject+body" and (subject or body):
        return "\n".join(part for part in (subject, body) if part)
    if source != "body":
        raise EmptyTextError(f"The message has no text to send: write the SMS in the {source}")
    if content.body.strip():
        return content.body
    if all(t.direct for t in targets) and content.subject.strip():
        return content.subject.strip()
    where = "body" if not all(t.direct for t in targets) else "body or subject"
    raise EmptyTextError(f"The message has no text to send: write the SMS in the {where}")


def build_message(
    raw: bytes,
    envelope_from: str,
    targets: Sequence[RcptTarget],
    policy: Policy,
    received_at: float,
    *,
    client: Client | None = None,
) -> NewMessage:
    """Everything DATA decides, as one pure step (run off the event loop).

    ``client`` says who submitted it (peer address, HELO, AUTH user), for the checks that
    depend on the submitter rather than on the message.
    """
    client = client or Client()
    content = parse_mail(raw, policy.cleanup)
    check_not_automatic(content, policy)
    if not content.from_addresses:
        raise SenderRefusedError("The message has no From address; add a From header")
    for address in content.from_addresses:
        check_sender(policy, address, where="From address")
    recipients = resolve_recipients(targets, content, policy)
    options = next(
        (policy.options[t.address] for t in targets if t.address in policy.options), None
    )
    subject = content.subject  # as written, for the queue and a bounce
    if policy.normalize:  # before choosing, so a body of invisible characters counts as empty
        content = replace(content, body=normalize(content.body), subject=normalize(content.subject))
    text = choose_text(targets, content, options.text if options else "body")
    max_parts = (options.max_parts if options else None) or policy.max_parts
    if policy.on_too_long == "truncate":
        text = truncate(text, max_parts)
    if not text.strip():
        raise EmptyTextError("The message has no text to send: write the SMS in the body")
    check_length(text, max_parts)
    return NewMessage(
        envelope_from=envelope_from,
        from_header=", ".join(content.from_addresses),
        subject=subject,
        message_id=content.message_id,
        recipients=recipients,
        text=text,
        sender_id=(options.sender_id if options else None) or policy.sender_id,
        received_at=received_at,
        size=len(raw),
        headers=header_block(raw),
        sms_type="otp" if options is not None and options.otp else "plain",
    )


class GatewayHandler:
    """aiosmtpd hooks: MAIL and RCPT checks, then parse, validate and commit on DATA."""

    def __init__(
        self,
        policy: Policy,
        queue: AsyncQueue,
        *,
        on_queued: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.time,
        metrics: Metrics | None = None,
    ) -> None:
        self.policy = policy
        self.queue = queue
        self.on_queued = on_queued
        self.metrics = metrics
        self.clock = clock
        self.sessions: set[GatewaySMTP] = set()
        self.transactions = 0
        self.idle = asyncio.Event()
        self.idle.set()

    async def handle_MAIL(  # noqa: N802  aiosmtpd's hook name
        self,
        _server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        mail_options: list[str],
    ) -> str:
        """Refuse a sender that is not allowed before it sends anything else."""
        try:
            check_sender(self.policy, address, where="Sender")
            check_reverse_path(address)
        except MailRefusedError as refused:
            return self._refused("MAIL", refused.reply, session)
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return OK_SENDER

    async def handle_RCPT(  # noqa: N802  aiosmtpd's hook name
        self,
        _server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        """Accept only gateway addresses and numbers at gateway domains (never a relay).

        One message is sent one way: a recipient whose address options (route, sender ID,
        text source, length) differ from those already accepted gets 452, which makes the
        client send it again in a transaction of its own.
        """
        try:
            target = self.policy.rcpt(address)
        except MailRefusedError as refused:
            return self._refused("RCPT", refused.reply, session)
        if envelope.rcpt_tos:
            first = self.policy.rcpt(envelope.rcpt_tos[0])
            options = self.policy.options
            if options.get(target.address) != options.get(first.address):
                log.info("smtp_deferred_recipient", address=address, peer=_peer(session))
                if self.metrics is not None:
                    self.metrics.refusal(OTHER_OPTIONS)
                return OTHER_OPTIONS.format(address=f"<{address}>")
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return OK_RECIPIENT

    async def handle_DATA(  # noqa: N802  aiosmtpd's hook name
        self, _server: SMTP, session: Session, envelope: Envelope
    ) -> str:
        """Parse and validate off the loop, commit to the queue, then (only then) say 250."""
        self.transactions += 1
        self.idle.clear()
        try:
            return await self._accept(session, envelope)
        except Exception:
            log.exception("smtp_data_error", peer=_peer(session))
            return TEMPORARY_ERROR
        finally:
            self.transactions -= 1
            if self.transactions == 0:
                self.idle.set()

    async def _accept(self, session: Session, envelope: Envelope) -> str:
        policy = self.policy
        raw = envelope.original_content or envelope.content or b""
        if isinstance(raw, str):
            raw = raw.encode("utf-8", "surrogateescape")
        targets = [policy.rcpt(a) for a in envelope.rcpt_tos]
        build = functools.partial(
            build_message,
            raw,
            envelope.mail_from or "",
            targets,
            policy,
            self.clock(),
            client=Client.of(session),
        )
        try:
            # A thread only pays for big mail: the GIL keeps parsing serial either way, and
            # each hop to a thread and back costs a GIL hand-over that delays every session.
            message = build() if len(raw) <= INLINE_PARSE else await asyncio.to_thread(build)
        except MailRefusedError as refused:
            return self._refused("DATA", refused.reply, session)
        window = policy.duplicate_window
        since = message.received_at - window if window > 0 else None
        try:
            queue_id, duplicate = await self.queue.enqueue_unless_duplicate(message, since=since)
        except QueueError:
            log.exception("queue_unavailable", peer=_peer(session))
            return QUEUE_UNAVAILABLE
        if duplicate:  # a resend after a lost 250: acknowledge it, send nothing again
            log.info(
                "duplicate_suppressed",
                queue_id=queue_id,
                message_id=message.message_id,
                sender=message.envelope_from,
                peer=_peer(session),
            )
            return QUEUED.format(queue_id=queue_id)
        length = measure(message.text)
        if self.metrics is not None:
            self.metrics.accepted.inc()
        log.info(
            "message_accepted",
            queue_id=queue_id,
            sender=message.envelope_from,
            recipients=list(message.recipients),
            parts=length.parts,
            encoding=str(length.encoding),
            size=message.size,
            peer=_peer(session),
        )
        if self.on_queued is not None:
            self.on_queued(queue_id)
        return QUEUED.format(queue_id=queue_id)

    def _refused(self, stage: str, reply: str, session: Session) -> str:
        """Log and count a refusal; return the reply for aiosmtpd to send."""
        log.info("smtp_refused", stage=stage, reply=reply, peer=_peer(session))
        if self.metrics is not None:
            self.metrics.refusal(reply)
        return reply

    async def handle_exception(self, error: Exception) -> str:
        """Anything unexpected is a temporary failure with no internals in the reply."""
        log.error("smtp_exception", error_type=type(error).__name__, exc_info=error)
        return TEMPORARY_ERROR

    async def drain(self, grace: float) -> bool:
        """Wait for DATA transactions in progress to finish; False if the time ran out."""
        try:
            await asyncio.wait_for(self.idle.wait(), grace)
        except TimeoutError:
            return False
        return True

    def close_sessions(self, reply: str = SHUTTING_DOWN) -> None:
        """Tell every connected client we are going away, and hang up."""
        for session in list(self.sessions):
            session.close_with(reply)


def _peer(session: Session) -> str:
    peer = getattr(session, "peer", None)
    if isinstance(peer, tuple) and len(peer) >= 2:  # noqa: PLR2004  (host, port, ...)
        return f"{peer[0]}:{peer[1]}"
    return str(peer)


async def start_server(
    handler: GatewayHandler, host: str, port: int, *, max_message_size: int
) -> asyncio.Server:
    """Listen inside the running event loop (not aiosmtpd's threaded Controller)."""
    loop = asyncio.get_running_loop()

    def factory() -> GatewaySMTP:
        return GatewaySMTP(
            handler,
            hostname=handler.policy.hostname,
            ident=f"ESMTP mail2sms {__version__}",
            data_size_limit=max_message_size,
            enable_SMTPUTF8=True,
            decode_data=False,
            loop=loop,
        )

    return await loop.create_server(factory, host=host, port=port)
