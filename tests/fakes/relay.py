"""A recording SMTP server: the stand-in for ``bounce.relay`` in tests.

It is aiosmtpd on 127.0.0.1, any free port, inside the test's own event loop (as
``mail2sms.smtp`` runs it), so a client running smtplib in a worker thread talks to it over
a real socket. Every transaction is recorded, with the message parsed by
``email.policy.default``.

    async with RecordingRelay() as relay:
        client = RelayClient(BounceConfig(relay=relay.address), helo="sms.test")
        await client.send(to="alice@example.com", message=raw)
        [transaction] = await relay.wait_for(1)

Scripting: ``refuse_next(n, code=…, text=…, at="RCPT"|"DATA"|"MAIL")``; ``stop()`` and
``start()`` again on the same port (relay down, then up); ``auth={"user": "password"}``
offers AUTH without TLS and refuses MAIL until a login succeeded (every attempt is in
``logins``); ``tls_context`` offers STARTTLS.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import ssl
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from email.message import EmailMessage
from typing import Any, Literal, Self

from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from mail2sms.config import HostPort

Command = Literal["MAIL", "RCPT", "DATA"]


@dataclass(frozen=True)
class Transaction:
    """One message the relay accepted."""

    mail_from: str  # the reverse-path as given, but "" for the null sender <>
    rcpt_tos: tuple[str, ...]
    data: bytes
    message: EmailMessage
    login: str | None  # the user the session had logged in as, if any
    tls: bool  # whether the session had switched to TLS


@dataclass(frozen=True)
class Login:
    """One AUTH attempt, as the client sent it."""

    mechanism: str
    user: str
    password: str
    ok: bool


@dataclass(frozen=True)
class _Refusal:
    at: Command
    reply: str


class _RelaySMTP(SMTP):
    """aiosmtpd's protocol, registered with the relay so ``stop()`` can close and await it."""

    def __init__(self, handler: _Handler, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self._relay = handler.relay

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._relay._sessions.add(self)
        super().connection_made(transport)

    def connection_lost(self, error: Exception | None) -> None:
        self._relay._sessions.discard(self)
        self._relay._ended.append(self)
        super().connection_lost(error)


class _Handler:
    """aiosmtpd hooks: apply the scripted refusals, record what gets through."""

    def __init__(self, relay: RecordingRelay) -> None:
        self.relay = relay

    async def handle_MAIL(  # noqa: N802  aiosmtpd's hook name
        self,
        _server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        mail_options: list[str],
    ) -> str:
        if self.relay.auth is not None and not session.authenticated:
            return "530 5.7.0 Authentication required"
        refusal = self.relay._take_refusal("MAIL")
        if refusal is not None:
            return refusal
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 2.1.0 Ok"

    async def handle_RCPT(  # noqa: N802  aiosmtpd's hook name
        self,
        _server: SMTP,
        _session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        refusal = self.relay._take_refusal("RCPT")
        if refusal is not None:
            return refusal
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 2.1.5 Ok"

    async def handle_DATA(  # noqa: N802  aiosmtpd's hook name
        self, _server: SMTP, session: Session, envelope: Envelope
    ) -> str:
        refusal = self.relay._take_refusal("DATA")
        if refusal is not None:
            return refusal
        data = envelope.original_content or b""
        if self.relay.on_data is not None and self.relay.on_data(data):
            return "451 4.3.0 Dropped by the test"
        message = email.message_from_bytes(data, policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        self.relay._transactions.append(
            Transaction(
                mail_from=_path(envelope.mail_from),
                rcpt_tos=tuple(envelope.rcpt_tos),
                data=data,
                message=message,
                login=session.auth_data if session.authenticated else None,
                tls=session.ssl is not None,
            )
        )
        return f"250 2.0.0 Ok: queued as {len(self.relay._transactions)}"


class RecordingRelay:
    """The fake relay; ``transactions`` and ``logins`` are read as snapshots."""

    def __init__(
        self,
        *,
        auth: dict[str, str] | None = None,
        tls_context: ssl.SSLContext | None = None,
        hostname: str = "relay.test",
    ) -> None:
        self.host = "127.0.0.1"
        self.port = 0
        self.auth = auth
        self.tls_context = tls_context
        self.hostname = hostname
        self._server: asyncio.Server | None = None
        self._sessions: set[_RelaySMTP] = set()
        self._ended: list[_RelaySMTP] = []
        self._transactions: list[Transaction] = []
        self._logins: list[Login] = []
        self._refusals: deque[_Refusal] = deque()
        # Fault injection: called with the message at DATA; a true result drops it
        # unrecorded (451), e.g. after the test SIGKILLed the daemon that sent it.
        self.on_data: Callable[[bytes], bool] | None = None

    # ---- lifecycle -------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def start(self) -> None:
        """Listen (again): the first start picks a free port, later ones reuse it."""
        if self._server is not None:
            return
        loop = asyncio.get_running_loop()
        handler = _Handler(self)

        def factory() -> _RelaySMTP:
            return _RelaySMTP(
                handler,
                hostname=self.hostname,
                ident="ESMTP fake relay",
                decode_data=False,
                tls_context=self.tls_context,
                authenticator=self._authenticate if self.auth is not None else None,
                # AUTH over plain TCP on loopback: tests need no certificate for it.
                auth_require_tls=self.auth is None,
                loop=loop,
            )

        self._server = await loop.create_server(factory, host=self.host, port=self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self, timeout: float = 5.0) -> None:
        """Stop listening and drop every connection, as a relay that goes down would."""
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        await server.wait_closed()
        for session in list(self._sessions):
            if session.transport is not None:
                session.transport.abort()
        # Let aborted connections finish closing and their handler tasks end, so nothing
        # is left for the event loop's teardown to warn about.
        deadline = time.monotonic() + timeout
        while self._sessions or any(not _finished(s) for s in self._ended):
            if time.monotonic() > deadline:
                raise AssertionError("the fake relay's connections did not close")
            await asyncio.sleep(0.005)
        self._ended.clear()

    @property
    def address(self) -> HostPort:
        """Where the relay listens, as ``bounce.relay`` takes it."""
        return HostPort(self.host, self.port)

    @property
    def running(self) -> bool:
        """Whether the relay is listening."""
        return self._server is not None

    # ---- scripting -------------------------------------------------------------------

    def refuse_next(
        self,
        count: int = 1,
        *,
        code: int = 550,
        text: str = "5.7.1 Refused by the test",
        at: Command = "RCPT",
    ) -> None:
        """Answer the next ``count`` uses of command ``at`` with ``code text``."""
        self._refusals.extend(_Refusal(at, f"{code} {text}") for _ in range(count))

    def _take_refusal(self, command: Command) -> str | None:
        for refusal in self._refusals:
            if refusal.at == command:
                self._refusals.remove(refusal)
                return refusal.reply
        return None

    def _authenticate(
        self,
        _server: SMTP,
        _session: Session,
        _envelope: Envelope,
        mechanism: str,
        auth_data: LoginPassword,
    ) -> AuthResult:
        user = auth_data.login.decode("utf-8", "replace")
        password = auth_data.password.decode("utf-8", "replace")
        ok = self.auth is not None and self.auth.get(user) == password
        self._logins.append(Login(mechanism, user, password, ok))
        return AuthResult(success=ok, handled=False, auth_data=user if ok else None)

    # ---- what tests read -------------------------------------------------------------

    @property
    def transactions(self) -> list[Transaction]:
        """Every message accepted, oldest first (a copy)."""
        return list(self._transactions)

    @property
    def logins(self) -> list[Login]:
        """Every AUTH attempt, oldest first (a copy)."""
        return list(self._logins)

    async def wait_for(self, count: int, timeout: float = 5.0) -> list[Transaction]:
        """Wait until at least ``count`` messages were accepted; fail after ``timeout``."""
        deadline = time.monotonic() + timeout
        while len(self._transactions) < count:
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"the fake relay got {len(self._transactions)} of {count} messages "
                    f"within {timeout}s"
                )
            await asyncio.sleep(0.01)
        return self.transactions


def _path(address: str | None) -> str:
    """aiosmtpd hands the null reverse-path over as ``<>``; a transaction records ``""``."""
    return "" if address in {None, "<>"} else str(address)


def _finished(session: _RelaySMTP) -> bool:
    task = session._handler_coroutine
    return task is None or task.done()
