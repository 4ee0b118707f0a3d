"""The SMTP side: an aiosmtpd handler that refuses early, accepts durably, and always answers.

Every check that can be made during the session is made there, so the sending client tells
the person at once (a bounce is only for what fails later). ``250`` is sent only after the
message is committed to the queue. Nothing slow happens here: delivery is the workers' job.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import re
import ssl
import time
from collections.abc import Callable, Coroutine, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from aiosmtpd.smtp import (
    SMTP,
    AuthResult,
    Envelope,
    LoginPassword,
    Session,
    TLSSetupException,
    syntax,
)

from mail2sms import __version__
from mail2sms.addressing import parse_numbers, parse_rcpt
from mail2sms.auth import Lockout, authenticate
from mail2sms.config import AddressOptions, LimitsConfig, Settings, TextSource
from mail2sms.errors import (
    AuthRequiredError,
    AutoReplyRefusedError,
    BadSenderAddressError,
    EmptyTextError,
    LimitRefusedError,
    MailLoopError,
    MailRefusedError,
    QueueError,
    SenderRefusedError,
)
from mail2sms.limits import Destinations, Quota
from mail2sms.log import get_logger
from mail2sms.mail_address import ascii_domain, plain_address, simple_path
from mail2sms.mail_parse import Cleanup, header_block, parse_mail
from mail2sms.metrics import Metrics
from mail2sms.models import LIST_PREFIX, MailContent, NewMessage, RcptTarget, SmsLength
from mail2sms.passwords import PasswordHash, parse_hash
from mail2sms.queue import AsyncQueue
from mail2sms.sender_verify import Resolver, SenderVerifier
from mail2sms.sms_text import check_length, normalize, truncate
from mail2sms.smtp_guard import (
    LogThrottle,
    check_no_nul,
    end_of_data_lookalike_error,
    is_end_of_data_lookalike,
    normalize_line_ends,
)

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
TOO_MANY_RECIPIENTS = (
    "452 4.5.3 Too many recipients: send to {address} in another message "
    "(the limit is {limit} numbers per message)"
)
AUTH_OK = "235 2.7.0 Authentication successful"
AUTH_IN_TRANSACTION = "503 5.5.1 AUTH is not allowed during a mail transaction; send RSET first"
TOO_MANY_CONNECTIONS = "421 4.7.0 Too many connections {scope}; try again later"
TOO_MANY_COMMANDS = (
    "421 4.7.0 Too many commands that send no mail (NOOP, RSET, VRFY, HELP, errors); "
    "closing the connection"
)
IDLE_TIMEOUT = "421 4.4.2 No command for {seconds} seconds; closing the connection"
DATA_TIMEOUT = (
    "421 4.4.2 The message was not received within {seconds} seconds; closing the connection"
)
UNREADABLE = "554 5.6.0 The message could not be read (the parser failed): send it as plain text"
PARSE_TOO_SLOW = (
    "554 5.6.0 The message could not be read (it took more than {seconds} seconds): "
    "send it as plain text"
)

# How long build_message may take before the client gets PARSE_TOO_SLOW. The thread it runs
# in cannot be stopped and finishes in the background; the MIME part limits in mail_parse
# keep that short.
PARSE_TIMEOUT = 8.0
# NOOP, RSET, VRFY, HELP and EXPN (``_budgeted``) spend the session's command budget, as do
# aiosmtpd's syntax and sequence errors. Counted here rather than with aiosmtpd's
# command_call_limit, which limits each command name apart, never refills (a long session
# sending many messages would run out of MAIL) and does not see syntax errors.
_ERROR_REPLIES = (b"500 ", b"501 ", b"502 ", b"503 ", b"504 ")
# One smtp_connection_refused line per this many seconds; the others are counted in it.
_REFUSAL_LOG_INTERVAL = 10.0

RCPT_CACHE_SIZE = 4096  # addresses remembered per Policy (cleared, not evicted, when full)
# Longest line read (command or DATA). RFC 5321 asks for 1,000; legacy devices that end
# lines with a bare LF send their whole message as one CRLF "line", so allow far more.
LINE_LIMIT = 64 * 1024
LINE_TOO_LONG = (
    "500 5.5.2 Line too long: the limit is {limit} bytes between CRLF line ends; "
    "send shorter lines ending in CRLF"
)

# aiosmtpd writes these itself, without enhanced codes; they are rewritten on the way out.
_AIOSMTPD_LINE_TOO_LONG = (
    b"500 Line too long (see RFC5321 4.5.3.1.6)",
    b"500 Command line too long",
)
_AIOSMTPD_TOO_BIG = (
    b"552 Error: Too much mail data",
    b"552 Error: message size exceeds fixed maximum message size",
)


class _GatewaySession(Session):
    """aiosmtpd's session without its deprecated ``login_data``.

    aiosmtpd sets ``login_data`` after every good AUTH and logs a deprecation warning each
    time; the user name is in ``auth_data`` (see ``Client.of``).
    """

    login_hash: PasswordHash | None = None
    """The user's password hash when it logged in: a reload that changes it logs it out."""

    @property
    def login_data(self) -> None:
        return None

    @login_data.setter
    def login_data(self, _value: object) -> None:
        pass


_LOOKED_UP = ("smtp_", "auth_", "handle_")
_NAMES_BY_CLASS: dict[type, tuple[str, ...]] = {}


def looked_up_names(obj: object) -> list[str]:
    """The attribute names of ``obj`` that aiosmtpd looks for (see ``_ScannedByAiosmtpd``).

    The class's are found once per class; a name taken off the class since (a test's
    patch undone) is left out, and the instance's own are added.
    """
    cls = type(obj)
    names = _NAMES_BY_CLASS.get(cls)
    if names is None:
        names = _NAMES_BY_CLASS[cls] = tuple(n for n in dir(cls) if n.startswith(_LOOKED_UP))
    found = [n for n in names if hasattr(obj, n)]
    found += [n for n in vars(obj) if n.startswith(_LOOKED_UP) and n not in names]
    return found


class _ScannedByAiosmtpd:
    """Answers ``dir()`` with only the names aiosmtpd looks for, while it looks.

    aiosmtpd's ``SMTP()`` builds its command, AUTH and hook tables from ``dir()`` and
    ``inspect.getmembers()`` of the protocol and the handler (a getattr of every
    attribute) on every connection: 135 us of the daemon's thread, the largest single
    cost of a message sent the way most clients send (Postfix, swaks, smtplib, devices:
    a connection per message). ``GatewaySMTP`` sets ``scanning`` on itself and its handler
    for the length of aiosmtpd's ``__init__``: 50 us. Otherwise ``dir()`` is as usual.
    """

    scanning = False

    def __dir__(self) -> Iterable[str]:
        if self.scanning:
            return looked_up_names(self)
        return super().__dir__()


_Command = Callable[[Any, str], Coroutine[Any, Any, None]]


def _budgeted(method: _Command) -> _Command:
    """An aiosmtpd command method that spends the session's command budget first.

    Made once, on the class: a subclass that overrides one must call it to keep the budget.
    """

    @functools.wraps(method)  # keeps aiosmtpd's HELP syntax attributes
    async def spend(self: GatewaySMTP, arg: str) -> None:
        if self._spend_command():
            await method(self, arg)

    return spend


class GatewaySMTP(_ScannedByAiosmtpd, SMTP):
    """aiosmtpd's protocol with our size replies, live sessions and protocol limits.

    The limits: connection caps, a command budget, timeouts that say 421, and the DATA
    framing check against SMTP smuggling.
    """

    line_length_limit = LINE_LIMIT
    # Commands that move no mail forward spend the command budget (see ``_spend_command``).
    smtp_NOOP = _budgeted(SMTP.smtp_NOOP)  # noqa: N815  aiosmtpd's command name
    smtp_RSET = _budgeted(SMTP.smtp_RSET)  # noqa: N815  aiosmtpd's command name
    smtp_VRFY = _budgeted(SMTP.smtp_VRFY)  # noqa: N815  aiosmtpd's command name
    smtp_HELP = _budgeted(SMTP.smtp_HELP)  # noqa: N815  aiosmtpd's command name

    def __init__(self, handler: GatewayHandler, **kwargs: Any) -> None:  # noqa: ANN401
        policy = handler.policy  # the limits at connect time; a reload applies to new ones
        self.scanning = handler.scanning = True  # see _ScannedByAiosmtpd
        try:
            super().__init__(handler, timeout=policy.timeout, **kwargs)
        finally:
            self.scanning = handler.scanning = False
        self._gateway = handler
        self._policy = policy
        self.client_ip: str | None = None
        self._turned_away = False
        self._commands_left = policy.max_commands
        self._receiving_data = False
        self._data_lines: _WatchedReader | None = None

    async def smtp_EXPN(self, arg: str) -> None:  # noqa: N802  aiosmtpd's command name
        """As the four above (aiosmtpd leaves it undecorated: its type is not ``_Command``)."""
        if self._spend_command():
            await super().smtp_EXPN(arg)

    def _create_session(self) -> Session:
        return _GatewaySession(self.loop)

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        """The path as aiosmtpd parses it, without that cost for a plain ``<local@host>``."""
        simple = simple_path(arg)
        if simple is None:
            return super()._getaddr(arg)
        local_part = simple[0].rpartition("@")[0]
        if self.local_part_limit and len(local_part) > self.local_part_limit:
            return None, None
        return simple

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Admit the client within the connection caps and register the session.

        Over a cap the client gets 421 and the handler never hears of it. aiosmtpd calls
        this again after STARTTLS; that session is already counted.
        """
        if self not in self._gateway.sessions:
            self.client_ip = _ip(transport.get_extra_info("peername"))
            reply = self._gateway.admit(self.client_ip)
            if reply is not None:
                self._turned_away = True
                if isinstance(transport, asyncio.WriteTransport):
                    transport.write(reply.encode("ascii") + b"\r\n")
                transport.close()
                return
            self._gateway.sessions.add(self)
        super().connection_made(transport)

    def connection_lost(self, error: Exception | None) -> None:
        """Forget the session."""
        if self._turned_away:  # aiosmtpd never started on it
            return
        self._gateway.sessions.discard(self)
        super().connection_lost(error)

    def eof_received(self) -> bool | None:
        """Ignore the end of a connection that was turned away."""
        if self._turned_away:
            return False
        return super().eof_received()

    async def push(self, status: bytes | str) -> None:
        """Send a reply, giving aiosmtpd's own size refusals their enhanced status code.

        aiosmtpd's syntax and sequence errors (500-504) spend the command budget; ``354``
        starts the DATA timer.
        """
        raw = status.encode("ascii", "replace") if isinstance(status, str) else status
        if raw in _AIOSMTPD_TOO_BIG:
            raw = TOO_BIG.format(limit=self.data_size_limit).encode("ascii")
        elif raw in _AIOSMTPD_LINE_TOO_LONG:
            raw = LINE_TOO_LONG.format(limit=self.line_length_limit).encode("ascii")
        if raw[:4] in _ERROR_REPLIES and not self._spend_command():
            return
        if raw.startswith(b"354"):
            self._receiving_data = True
            self._reset_timeout(self._policy.data_timeout)
        await super().push(raw)

    @syntax("AUTH <mechanism>")
    async def smtp_AUTH(self, arg: str) -> None:  # noqa: N802  aiosmtpd's command name
        """RFC 4954 §4: no AUTH after MAIL, where it would change who the sender is."""
        if self.envelope is not None and self.envelope.mail_from is not None:
            await self.push(AUTH_IN_TRANSACTION)
            return
        await super().smtp_AUTH(arg)

    async def auth_PLAIN(self, _: object, args: list[str]) -> AuthResult:  # noqa: N802
        """The credentials are read by aiosmtpd, the check is awaited (see ``_verify``)."""
        return await self._verify(await super().auth_PLAIN(_, args))

    async def auth_LOGIN(self, _: object, args: list[str]) -> AuthResult:  # noqa: N802
        """As ``auth_PLAIN``, with the user name and password asked for one by one."""
        return await self._verify(await super().auth_LOGIN(_, args))

    async def _verify(self, parsed: AuthResult) -> AuthResult:
        """Check what ``_pass_credentials`` handed back, off the event loop."""
        credentials = parsed.auth_data
        if not isinstance(credentials, LoginPassword) or self.session is None:
            return parsed  # aiosmtpd has already answered (bad base64, aborted)
        try:
            user = await self._gateway.authenticate(self.session, credentials)
        except MailRefusedError as refused:
            return AuthResult(success=False, handled=False, message=refused.reply)
        if isinstance(self.session, _GatewaySession):  # a changed password logs it out
            self.session.login_hash = self._gateway.policy.user_hashes.get(user)
        return AuthResult(success=True, auth_data=user, message=AUTH_OK)

    @syntax("DATA")
    async def smtp_DATA(self, arg: str) -> None:  # noqa: N802  aiosmtpd's command method
        """Read the message through a reader that notes end-of-data look-alikes."""
        reader = self._reader
        self._data_lines = _WatchedReader(reader)
        self._reader = self._data_lines  # type: ignore[assignment]  # duck-typed reader
        try:
            await super().smtp_DATA(arg)
        finally:
            self._reader = reader
            self._data_lines = None
            if self._receiving_data and self.transport is not None:
                self._receiving_data = False
                self._reset_timeout()

    async def _call_handler_hook(self, command: str, *args: Any) -> Any:  # noqa: ANN401
        """Refuse a smuggling attempt before the handler sees it; refill the budget on 250."""
        if command != "DATA":
            return await super()._call_handler_hook(command, *args)
        self._receiving_data = False
        self._reset_timeout()  # the message is in: the idle timeout covers the handler
        if self._data_lines is not None and self._data_lines.lookalike:
            reply = end_of_data_lookalike_error().reply
            return self._gateway._refused("DATA", reply, self.session)  # noqa: SLF001
        status = await super()._call_handler_hook(command, *args)
        if isinstance(status, str) and status.startswith("250"):
            self._commands_left = self._policy.max_commands
        return status

    async def handle_exception(self, error: Exception) -> str:
        """The handler's 451; never aiosmtpd's fallback, which quotes the exception text."""
        try:
            return await self._gateway.handle_exception(error)
        except Exception:  # noqa: BLE001  the reply must not depend on logging working
            return TEMPORARY_ERROR

    def _timeout_cb(self) -> None:
        """Say why before hanging up on an idle client (aiosmtpd closes silently)."""
        if self._receiving_data:
            stage, reply = "DATA", DATA_TIMEOUT.format(seconds=_seconds(self._policy.data_timeout))
        else:
            stage, reply = "command", IDLE_TIMEOUT.format(seconds=_seconds(self._policy.timeout))
        log.info("smtp_timeout", stage=stage, peer=_peer(self.session))
        self.close_with(reply)

    def _spend_command(self) -> bool:
        """Spend one command of the budget; past it, say 421 and hang up (False)."""
        self._commands_left -= 1
        if self._commands_left >= 0:
            return True
        if self._commands_left == -1:
            log.info("smtp_command_budget_spent", peer=_peer(self.session))
            self.close_with(TOO_MANY_COMMANDS)
        return False

    def close_with(self, reply: str) -> None:
        """Say goodbye (e.g. 421 at shutdown) and close the connection."""
        transport = getattr(self, "transport", None)
        if transport is not None and not transport.is_closing():
            transport.write(reply.encode("ascii") + b"\r\n")
            transport.close()


class _WatchedReader:
    """aiosmtpd's stream reader during DATA, noting any line with an end-of-data look-alike.

    It sees each line before aiosmtpd removes the dot-stuffing, which would hide the dot.
    """

    def __init__(self, reader: asyncio.StreamReader) -> None:
        self._reader = reader
        self.lookalike = False

    async def readuntil(self, separator: bytes = b"\n") -> bytes:
        line = await self._reader.readuntil(separator)
        if not self.lookalike and is_end_of_data_lookalike(line):
            self.lookalike = True
        return line

    async def read(self, n: int = -1) -> bytes:
        return await self._reader.read(n)


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
    destinations: Destinations = field(default_factory=lambda: Destinations(countries=("AU",)))
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    verifier: SenderVerifier | None = None
    """Set when senders.verify = "dmarc": the From domain of unauthenticated mail is checked."""
    require_auth: bool = False
    networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    user_allow: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    """Per ``[[smtp.users]]`` name: the senders it may use (empty: any)."""
    user_hashes: Mapping[str, PasswordHash] = field(default_factory=dict, repr=False)
    max_connections: int = 200
    max_connections_per_client: int = 20
    timeout: float = 300.0
    data_timeout: float = 600.0
    max_commands: int = 100
    parse_timeout: float = PARSE_TIMEOUT
    _rcpt_cache: dict[str, RcptTarget] = field(default_factory=dict, compare=False, repr=False)
    """Addresses already classified: phone number parsing is the costliest part of RCPT,
    and alerting systems write to the same few addresses all day. A reload makes a new
    Policy, so the cache never outlives the settings it was computed with."""

    @classmethod
    def from_settings(cls, settings: Settings, *, resolver: Resolver | None = None) -> Policy:
        """Copy what the handler needs out of the validated settings.

        ``resolver`` answers the sender checks' DNS lookups instead of DNS (tests).
        """
        verify = settings.senders.verify == "dmarc"
        return cls(
            verifier=SenderVerifier.from_config(settings.senders, resolver) if verify else None,
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
            destinations=settings.limits.destinations(settings.gateway.default_region),
            limits=settings.limits,
            require_auth=settings.senders.require_auth,
            networks=tuple(ipaddress.ip_network(n) for n in settings.senders.networks),
            user_allow={user.name: tuple(user.allow) for user in settings.smtp.users},
            user_hashes={
                user.name: parse_hash(user.password_hash.get_secret_value())
                for user in settings.smtp.users
            },
            max_connections=settings.smtp.max_connections,
            max_connections_per_client=settings.smtp.max_connections_per_client,
            timeout=settings.smtp.timeout,
            data_timeout=settings.smtp.data_timeout,
            max_commands=settings.smtp.max_commands,
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
        """An exact address (case-insensitive) or ``@domain`` in senders.allow."""
        return address_listed(address, self.allow)

    def in_networks(self, ip: str | None) -> bool:
        """Whether a client address is in ``senders.networks`` (IPv4-mapped IPv6 too)."""
        if ip is None or not self.networks:
            return False
        try:
            address = ipaddress.ip_address(ip.partition("%")[0])
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return any(address in network for network in self.networks)


def address_listed(address: str, allow: Sequence[str]) -> bool:
    """An exact address (case-insensitive) or its ``@domain`` is in ``allow``.

    The domain is compared in its ASCII form, as the config stores it.
    """
    local, at, domain = address.strip().rpartition("@")
    if not at:
        return False
    try:
        domain = "@" + ascii_domain(domain).lower()
    except ValueError:
        return False
    return f"{local.lower()}{domain}" in allow or domain in allow


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

    @property
    def trusted(self) -> bool:
        """Logged in, or in ``senders.networks``: not subject to ``senders.allow``."""
        return self.user is not None or self.trusted_network

    @classmethod
    def of(cls, session: Session, policy: Policy | None = None) -> Client:
        """Read the peer address, HELO name and AUTH identity off an aiosmtpd session.

        ``auth_data`` is the user name ``GatewaySMTP`` stores after a good AUTH; a user a
        reload has removed since counts as not logged in.
        """
        ip = _ip(getattr(session, "peer", None))
        user = (
            getattr(session, "auth_data", None)
            if getattr(session, "authenticated", False)
            else None
        )
        if not isinstance(user, str) or (
            policy is not None
            and (
                user not in policy.user_allow
                or getattr(session, "login_hash", None) != policy.user_hashes.get(user)
            )
        ):
            user = None  # removed, or its password changed, by a reload since it logged in
        return cls(
            ip=ip,
            helo=str(getattr(session, "host_name", "") or ""),
            user=user,
            trusted_network=policy is not None and policy.in_networks(ip),
        )

    def __reduce__(self) -> tuple[type[Client], tuple[str | None, str, str | None, bool]]:
        # Pickled with every submission to the reader process: the slots dataclass's own
        # pickling calls fields() each time (a third of the cost, bench: 14.5 -> 8.6 us).
        return (Client, (self.ip, self.helo, self.user, self.trusted_network))


@dataclass(frozen=True, slots=True)
class Submission:
    """One message at the end of DATA, as a reader needs it.

    Plain data only: it may be pickled to the reader process (``reader_process.py``).
    """

    raw: bytes
    mail_from: str
    rcpt_tos: tuple[str, ...]
    client: Client
    sender: str
    """Whose ``[limits]`` rates the message counts against (``user <name>`` or the address)."""
    peer: str
    """The client's address and port, for the log."""
    received_at: float

    def __reduce__(self) -> tuple[type[Submission], tuple[object, ...]]:
        # once per message to the reader process: see Client.__reduce__
        fields = (self.raw, self.mail_from, self.rcpt_tos, self.client, self.sender, self.peer)
        return (Submission, (*fields, self.received_at))


@dataclass(frozen=True, slots=True)
class Outcome:
    """What became of a submission: the reply, and what the SMTP side must count or wake."""

    reply: str
    queue_id: str | None = None
    """Set when a new message was queued (not for a suppressed duplicate): delivery wakes."""
    refused: bool = False
    """A refusal, counted by reply code in the metrics."""

    def __reduce__(self) -> tuple[type[Outcome], tuple[str, str | None, bool]]:
        # once per message from the reader process: see Client.__reduce__
        return (Outcome, (self.reply, self.queue_id, self.refused))


class Reader(Protocol):
    """Reads, checks and stores a submission; the reply says how it went."""

    async def read(self, submission: Submission, policy: Policy) -> Outcome:
        """Parse and check ``submission`` under ``policy``; commit it before saying 250."""
        ...


def check_sender(policy: Policy, address: str, *, where: str, client: Client | None = None) -> None:
    """Refuse a sender this client may not use, saying which address and why.

    A logged-in user may use any address, or only those on its own ``allow``; a client in
    ``senders.networks`` any address; everyone else must log in (``require_auth``) or
    use an address on ``senders.allow``.
    """
    client = client or Client()
    if address in {"", "<>"}:  # aiosmtpd passes the null reverse-path as "<>"
        raise AutoReplyRefusedError(
            "Mail with an empty sender (a bounce or automatic reply) is not accepted: "
            "this gateway sends SMS only for people and systems that write to it"
        )
    if client.user is not None:
        allow = policy.user_allow.get(client.user, ())
        if allow and not address_listed(address, allow):
            raise SenderRefusedError(
                f"{where} <{address}> is not an address user {client.user} may send as; "
                "send from one of that user's addresses or ask the administrator to add it"
            )
        return
    if client.trusted_network:
        return
    if policy.require_auth:
        raise AuthRequiredError(
            "Authentication required: log in (AUTH, after STARTTLS) to send through this gateway"
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
    targets: Sequence[RcptTarget], subject: str, body: str, source: TextSource = "body"
) -> str:
    """The body is the text; a ``<number>@domain`` mail with an empty body sends its subject.

    A gateway or alias address may take its text from the subject, or subject and body.
    """
    stripped_subject, stripped_body = subject.strip(), body.strip()
    if source == "subject" and stripped_subject:
        return stripped_subject
    if source == "subject+body" and (stripped_subject or stripped_body):
        return "\n".join(part for part in (stripped_subject, stripped_body) if part)
    if source != "body":
        raise EmptyTextError(f"The message has no text to send: write the SMS in the {source}")
    if stripped_body:
        return body
    if all(t.direct for t in targets) and stripped_subject:
        return stripped_subject
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
    return _build_message(raw, envelope_from, targets, policy, received_at, client=client)[0]


def _build_message(
    raw: bytes,
    envelope_from: str,
    targets: Sequence[RcptTarget],
    policy: Policy,
    received_at: float,
    *,
    client: Client | None = None,
) -> tuple[NewMessage, SmsLength]:
    """``build_message``, and the text's length it measured on the way."""
    client = client or Client()
    size = len(raw)
    check_no_nul(raw)
    raw = normalize_line_ends(raw)
    content = parse_mail(raw, policy.cleanup)
    check_not_automatic(content, policy)
    if not content.from_addresses:
        raise SenderRefusedError("The message has no From address; add a From header")
    for address in content.from_addresses:
        check_sender(policy, address, where="From address", client=client)
    if policy.verifier is not None and not client.trusted:
        policy.verifier.verify(
            raw,
            content.from_addresses,
            envelope_from=envelope_from,
            client_ip=client.ip,
            helo=client.helo,
        )
    recipients = resolve_recipients(targets, content, policy)
    policy.destinations.check_message(recipients)
    options = next(
        (policy.options[t.address] for t in targets if t.address in policy.options), None
    )
    subject = content.subject  # as written, for the queue and a bounce
    chosen_subject, body = subject, content.body
    if policy.normalize:  # before choosing, so a body of invisible characters counts as empty
        chosen_subject, body = normalize(subject), normalize(body)
    text = choose_text(targets, chosen_subject, body, options.text if options else "body")
    max_parts = (options.max_parts if options else None) or policy.max_parts
    if policy.on_too_long == "truncate":
        text = truncate(text, max_parts)
    if not text.strip():
        raise EmptyTextError("The message has no text to send: write the SMS in the body")
    length = check_length(text, max_parts)
    return NewMessage(
        envelope_from=envelope_from,
        from_header=", ".join(content.from_addresses),
        subject=subject,
        message_id=content.message_id,
        recipients=recipients,
        text=text,
        sender_id=(options.sender_id if options else None) or policy.sender_id,
        received_at=received_at,
        size=size,
        headers=header_block(raw),
        sms_type="otp" if options is not None and options.otp else "plain",
    ), length


def read_submission(submission: Submission, policy: Policy) -> Built | Outcome:
    """``build_message`` for a submission, or the refusal (logged) if it is refused.

    Synchronous: ``LocalReader`` runs it in a thread with a time limit, the reader process
    in its own loop.
    """
    try:
        message, length = _build_message(
            submission.raw,
            submission.mail_from,
            [policy.rcpt(a) for a in submission.rcpt_tos],
            policy,
            submission.received_at,
            client=submission.client,
        )
    except MailRefusedError as refused:
        return refusal("DATA", refused, submission.peer, sender=submission.sender)
    except Exception:
        log.exception("smtp_parse_error", peer=submission.peer)
        return refused_outcome("DATA", UNREADABLE, submission.peer)
    window = policy.duplicate_window
    return Built(
        message=message,
        length=length,
        since=message.received_at - window if window > 0 else None,
        quota=policy.limits.quota(submission.sender),
    )


@dataclass(frozen=True, slots=True)
class Built:
    """A message ready for the queue, with what its enqueue needs."""

    message: NewMessage
    length: SmsLength
    since: float | None
    """Look for a duplicate received after this (None: ``duplicate_window`` is 0)."""
    quota: Quota


def stored(built: Built, result: tuple[str, bool] | Exception, submission: Submission) -> Outcome:
    """The reply for an enqueue's result (queue id and duplicate flag, or its error); logged."""
    outcome, note = judged(built, result, submission)
    note()
    return outcome


def judged(
    built: Built, result: tuple[str, bool] | Exception, submission: Submission
) -> tuple[Outcome, Callable[[], object]]:
    """``stored`` with its log line apart: the reader process logs once the group is on disk.

    A ``message_accepted`` line is only true once its commit returned; a failed commit
    logs ``queue_unavailable`` instead.
    """
    peer, message = submission.peer, built.message
    if isinstance(result, LimitRefusedError):  # a rate is used up: nothing was queued
        return Outcome(result.reply, refused=True), functools.partial(
            refusal, "DATA", result, peer, sender=submission.sender
        )
    if isinstance(result, QueueError):
        return Outcome(QUEUE_UNAVAILABLE), lambda: log.error(
            "queue_unavailable", peer=peer, error=str(result)
        )
    if isinstance(result, Exception):
        return Outcome(TEMPORARY_ERROR), lambda: log.error(
            "smtp_data_error", peer=peer, exc_info=result
        )
    queue_id, duplicate = result
    if duplicate:  # a resend after a lost 250: acknowledge it, send nothing again
        return Outcome(QUEUED.format(queue_id=queue_id)), lambda: log.info(
            "duplicate_suppressed",
            queue_id=queue_id,
            message_id=message.message_id,
            sender=message.envelope_from,
            peer=peer,
        )
    return Outcome(QUEUED.format(queue_id=queue_id), queue_id=queue_id), lambda: log.info(
        "message_accepted",
        queue_id=queue_id,
        sender=message.envelope_from,
        recipients=list(message.recipients),
        parts=built.length.parts,
        encoding=str(built.length.encoding),
        size=message.size,
        peer=peer,
    )


class LocalReader:
    """Reads each message in a worker thread of this process, then commits it to the queue.

    The commit is a group commit (``AsyncQueue``): the reply is ready once the message is
    on disk. ``reader_process.py`` does the same in a process of its own.
    """

    def __init__(self, queue: AsyncQueue) -> None:
        self.queue = queue
        self.reading = 0
        """Submissions being read or committed now (how busy this reader is)."""

    async def read(self, submission: Submission, policy: Policy) -> Outcome:
        """Parse and check off the loop, commit to the queue, then (only then) say 250."""
        self.reading += 1
        try:
            return await self._read(submission, policy)
        finally:
            self.reading -= 1

    async def _read(self, submission: Submission, policy: Policy) -> Outcome:
        # Always in a thread, with a time limit: reading mail on the loop would let one
        # pathological message stall every session (60 KB of nested HTML takes ~90 ms).
        try:
            async with asyncio.timeout(policy.parse_timeout):
                built = await asyncio.get_running_loop().run_in_executor(
                    None, read_submission, submission, policy
                )
        except TimeoutError:
            # The thread cannot be stopped; it finishes in the background.
            log.warning("smtp_parse_timeout", size=len(submission.raw), peer=submission.peer)
            reply = PARSE_TOO_SLOW.format(seconds=_seconds(policy.parse_timeout))
            return refused_outcome("DATA", reply, submission.peer)
        if isinstance(built, Outcome):  # refused
            return built
        result: tuple[str, bool] | Exception
        try:
            result = await self.queue.enqueue_unless_duplicate(
                built.message, since=built.since, quota=built.quota
            )
        except (MailRefusedError, QueueError) as exc:
            result = exc
        return stored(built, result, submission)


def refusal(stage: str, refused: MailRefusedError, peer: str, *, sender: str) -> Outcome:
    """A refusal from the exception tree; a ``[limits]`` one is logged as a warning.

    A burst of ``limit_refused`` lines is what an SMS pumping attempt looks like.
    """
    if isinstance(refused, LimitRefusedError):
        log.warning(
            "limit_refused",
            stage=stage,
            rule=refused.rule,
            sender=sender,
            count=refused.count,
            peer=peer,
        )
    return refused_outcome(stage, refused.reply, peer)


def refused_outcome(stage: str, reply: str, peer: str) -> Outcome:
    """Log a refusal; the SMTP side counts it and sends the reply."""
    log.info("smtp_refused", stage=stage, reply=reply, peer=peer)
    return Outcome(reply, refused=True)


class GatewayHandler(_ScannedByAiosmtpd):
    """aiosmtpd hooks: MAIL and RCPT checks, then parse, validate and commit on DATA."""

    def __init__(
        self,
        policy: Policy,
        queue: AsyncQueue,
        *,
        on_queued: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.time,
        metrics: Metrics | None = None,
        tls_context: ssl.SSLContext | None = None,
        lockout: Lockout | None = None,
        reader: Reader | None = None,
    ) -> None:
        self.policy = policy
        self.reader: Reader = reader or LocalReader(queue)
        """Reads and stores each message (``reader_process.py``: maybe in another process)."""
        self.tls_context = tls_context
        """Offered for STARTTLS to connections made from now on (a reload may replace it)."""
        self.lockout = lockout or Lockout()
        self.queue = queue
        self.on_queued = on_queued
        self.metrics = metrics
        self.clock = clock
        self.sessions: set[GatewaySMTP] = set()
        self.transactions = 0
        self.idle = asyncio.Event()
        self.idle.set()
        self._refusal_log = LogThrottle(_REFUSAL_LOG_INTERVAL)

    def admit(self, ip: str | None) -> str | None:
        """None to let a new connection in, else the 421 for it (over a connection cap)."""
        policy = self.policy
        if len(self.sessions) >= policy.max_connections:
            scope, reason = "to this server", "max_connections"
        elif (
            ip is not None
            and sum(1 for s in self.sessions if s.client_ip == ip)
            >= policy.max_connections_per_client
        ):
            scope, reason = "from your address", "max_connections_per_client"
        else:
            return None
        reply = TOO_MANY_CONNECTIONS.format(scope=scope)
        if self.metrics is not None:
            self.metrics.refusal(reply)
        held = self._refusal_log.allow()
        if held is not None:
            log.warning("smtp_connection_refused", peer=ip, reason=reason, also_refused=held)
        return reply

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
            client = Client.of(session, self.policy)
            check_sender(self.policy, address, where="Sender", client=client)
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
        client send it again in a transaction of its own; so does one that would take the
        transaction over ``limits.max_recipients`` numbers (RFC 5321 4.5.3.1.10).
        """
        try:
            target = self.policy.rcpt(address)
            for number in (target.number,) if target.number else target.numbers:
                self.policy.destinations.check_number(number)
        except MailRefusedError as refused:
            return self._refusal("RCPT", refused, session, sender=envelope.mail_from or "")
        # counted from the accepted addresses (classified once, then cached by the Policy)
        numbers = sum(_numbers_in(self.policy.rcpt(a)) for a in envelope.rcpt_tos)
        numbers += _numbers_in(target)
        limit = self.policy.destinations.max_recipients
        if envelope.rcpt_tos and numbers > limit:
            return self._refused(
                "RCPT", TOO_MANY_RECIPIENTS.format(address=f"<{address}>", limit=limit), session
            )
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
        client = Client.of(session, policy)
        # "user <name>" cannot collide with an address: a user named like one has its own count
        sender = f"user {client.user}" if client.user else (envelope.mail_from or "").lower()
        submission = Submission(
            raw=raw,
            mail_from=envelope.mail_from or "",
            rcpt_tos=tuple(envelope.rcpt_tos),
            client=client,
            sender=sender,
            peer=_peer(session),
            received_at=self.clock(),
        )
        outcome = await self.reader.read(submission, policy)
        if self.metrics is not None:
            if outcome.refused:
                self.metrics.refusal(outcome.reply)
            elif outcome.queue_id is not None:
                self.metrics.accepted.inc()
        if outcome.queue_id is not None and self.on_queued is not None:
            self.on_queued(outcome.queue_id)
        return outcome.reply

    def _refusal(
        self, stage: str, refused: MailRefusedError, session: Session, *, sender: str
    ) -> str:
        """Log and count a refusal from the exception tree; the reply for aiosmtpd."""
        return self._counted(refusal(stage, refused, _peer(session), sender=sender))

    def _refused(self, stage: str, reply: str, session: Session | None) -> str:
        """Log and count a refusal; return the reply for aiosmtpd to send."""
        return self._counted(refused_outcome(stage, reply, _peer(session)))

    def _counted(self, outcome: Outcome) -> str:
        if self.metrics is not None:
            self.metrics.refusal(outcome.reply)
        return outcome.reply

    async def handle_EHLO(  # noqa: N802  aiosmtpd's hook name
        self,
        _server: SMTP,
        session: Session,
        _envelope: Envelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        """Offer AUTH only when there are users to log in as."""
        session.host_name = hostname
        if self.policy.user_hashes:
            return responses
        return [line for line in responses if not line.startswith("250-AUTH")]

    async def authenticate(self, session: Session, credentials: LoginPassword) -> str:
        """The user name for good credentials; BadCredentialsError or AuthLockedError."""
        ip = _ip(getattr(session, "peer", None)) or "unknown"
        try:
            return await authenticate(
                credentials.login,
                credentials.password,
                users=self.policy.user_hashes,
                lockout=self.lockout,
                client=ip,
                peer=_peer(session),
            )
        except MailRefusedError as refused:
            self._refused("AUTH", refused.reply, session)
            raise

    async def handle_exception(self, error: Exception) -> str:
        """Anything unexpected is a temporary failure with no internals in the reply."""
        if isinstance(error, TLSSetupException):  # not TLS after STARTTLS: that session ends
            cause = error.__cause__ or error
            log.info("smtp_tls_failed", error=f"{type(cause).__name__}: {cause}"[:200])
            return TEMPORARY_ERROR
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


def _pass_credentials(
    _server: SMTP, _session: Session, _envelope: Envelope, _mechanism: str, data: object
) -> AuthResult:
    """The authenticator aiosmtpd calls synchronously: it only hands the credentials on.

    The check runs in ``GatewaySMTP._verify``, where it can be awaited in a thread.
    """
    return AuthResult(success=False, handled=False, auth_data=data)


def _numbers_in(target: RcptTarget) -> int:
    """How many numbers a recipient adds: an alias its list, anything else one."""
    return max(1, len(target.numbers))


def _ip(peer: object) -> str | None:
    """The IP address of a transport's peername, or None (e.g. a Unix socket)."""
    return str(peer[0]) if isinstance(peer, tuple) and peer else None


def _seconds(value: float) -> str:
    """A duration for a reply: whole seconds without ".0"."""
    return f"{value:g}"


def _peer(session: Session | None) -> str:
    peer = getattr(session, "peer", None)
    if isinstance(peer, tuple) and len(peer) >= 2:  # noqa: PLR2004  (host, port, ...)
        return f"{peer[0]}:{peer[1]}"
    return str(peer)


async def start_server(
    handler: GatewayHandler,
    host: str,
    port: int,
    *,
    max_message_size: int,
    implicit_tls: ssl.SSLContext | None = None,
) -> asyncio.Server:
    """Listen inside the running event loop (not aiosmtpd's threaded Controller).

    With ``implicit_tls`` every connection starts with a TLS handshake (port 465 style).
    Each connection reads the handler's current certificate and policy when it is made.
    """
    loop = asyncio.get_running_loop()

    def factory() -> GatewaySMTP:
        # GatewaySMTP reads the connection limits and timeouts from handler.policy.
        return GatewaySMTP(
            handler,
            hostname=handler.policy.hostname,
            ident=f"ESMTP mail2sms {__version__}",
            data_size_limit=max_message_size,
            enable_SMTPUTF8=True,
            decode_data=False,
            tls_context=None if implicit_tls else handler.tls_context,
            auth_require_tls=not implicit_tls,
            authenticator=_pass_credentials,
            loop=loop,
        )

    return await loop.create_server(factory, host=host, port=port, ssl=implicit_tls)
