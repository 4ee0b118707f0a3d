"""The provider interface, and the one place where HTTP and transport failures become errors.

A provider turns one ``SmsBatch`` into one ``RecipientResult`` per number, or raises for the
whole batch: ``TransientProviderError`` (retry; ``ProviderAccountError`` when the operator's
account is at fault) or ``PermanentProviderError`` (bounce). Callers decide by type, so a
provider never returns a bool and never swallows an error it cannot classify.

``HttpProvider`` owns the token. Every message it builds goes through ``_redact`` and no
exception keeps an httpx exception as its cause or context, because httpx requests carry
the ``Authorization`` header and tracebacks end up in logs and bounce mails.
"""

from __future__ import annotations

import abc
import html
import json
import math
import re
import time
from dataclasses import dataclass
from datetime import UTC
from email.utils import parsedate_to_datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Any, ClassVar, Self

import httpx

from mail2sms.errors import (
    ConfigError,
    PermanentProviderError,
    ProviderAccountError,
    ProviderError,
    TransientProviderError,
)
from mail2sms.models import AccountStatus

if TYPE_CHECKING:
    from collections.abc import Sequence

    from mail2sms.config import ProviderConfig
    from mail2sms.models import RecipientResult, SmsBatch

RETRY_AFTER_MAX = 3600.0
"""Longest ``Retry-After`` honoured, in seconds: a bigger hint (or a clock far off) must not
park mail for days; the delivery backoff takes over from there."""

EXCERPT_LENGTH = 200
"""How much of an unexpected body goes into an error message: enough to recognise an error
page, short enough for one log line."""

_RETRY_STATUSES = frozenset({408, 429})
_MIN_SECRET = 8  # shorter fragments of a token are not worth mangling messages for
_HTML_NOISE = re.compile(r"<(script|style)\b.*?</\1\s*>", re.IGNORECASE | re.DOTALL)
_HTML_TITLE = re.compile(r"<title[^>]*>(.*?)</title\s*>", re.IGNORECASE | re.DOTALL)
_HTML_TAG = re.compile(r"<[^>]*>")
_SPACE = re.compile(r"\s+")


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Read a ``Retry-After`` header (delta-seconds or HTTP-date) as seconds from ``now``.

    ``now`` is a Unix time, passed in so tests need no clock. Unreadable values give
    ``None`` (the caller's backoff applies); dates in the past give 0; everything is
    clamped to ``RETRY_AFTER_MAX``.
    """
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    if re.fullmatch(r"\d+(?:\.\d+)?", text):
        seconds = float(text)
    else:
        try:
            when = parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
        if when.tzinfo is None:  # "-0000" parses as naive; RFC 9110 dates are UTC
            when = when.replace(tzinfo=UTC)
        seconds = when.timestamp() - now
    if not math.isfinite(seconds):
        return None
    return min(max(seconds, 0.0), RETRY_AFTER_MAX)


def body_excerpt(response: httpx.Response, limit: int = EXCERPT_LENGTH) -> str:
    """Show a body as one truncated line an operator can recognise (HTML: title, then text).

    JSON bodies are shown with their ``message`` when they have one, since that is what
    most APIs put their explanation in.
    """
    try:
        text = response.text
    except (UnicodeDecodeError, LookupError):
        text = response.content.decode("utf-8", "replace")
    stripped = text.strip()
    if stripped.startswith(("{", "[")):
        try:
            parsed = json.loads(stripped)
        except ValueError:
            parsed = None
        if isinstance(parsed, dict) and isinstance(parsed.get("message"), str):
            stripped = parsed["message"]
    elif "<" in stripped and ">" in stripped:
        match = _HTML_TITLE.search(stripped)
        title = _SPACE.sub(" ", html.unescape(match.group(1))).strip() if match else ""
        page = _HTML_TITLE.sub(" ", _HTML_NOISE.sub(" ", stripped))
        body = _SPACE.sub(" ", html.unescape(_HTML_TAG.sub(" ", page))).strip()
        stripped = f"{title}: {body}" if title and not body.startswith(title) else body
    one_line = _SPACE.sub(" ", stripped).strip()
    if not one_line:
        return "(empty body)"
    if len(one_line) > limit:
        return one_line[: limit - 1].rstrip() + "…"
    return one_line


class Verdict(StrEnum):
    """What an error answer means for mail2sms."""

    ACCOUNT = "account"
    """The operator's credentials, permission, balance or plan: keep mail queued, log loudly."""
    RETRY = "retry"
    """The provider is busy or failed internally: retry later."""
    RECIPIENT = "recipient"
    """The number is bad: that recipient fails for good, the others are unaffected."""
    REFUSED = "refused"
    """The message (sender ID, text, type) is refused: bounce the whole batch."""


@dataclass(frozen=True, slots=True)
class ErrorRule:
    """One row of the classification: a ``message`` regex and/or an HTTP status."""

    pattern: str | None
    http_status: int | None
    verdict: Verdict
    hint: str

    def matches(self, message: str, status: int) -> bool:
        """Both given parts must match; the regex is searched, case-insensitively."""
        if self.http_status is not None and self.http_status != status:
            return False
        return self.pattern is None or re.search(self.pattern, message, re.IGNORECASE) is not None


MIN_SUFFIX = 6  # national-form matching needs enough digits to be unambiguous


def suffix_match(digits: str, numbers: Sequence[str]) -> str | None:
    """Match a number a provider echoed in another form (national ``0412…``) to one of ours.

    ``numbers`` are digits without ``+``; the echoed digits, without a trunk ``0``, must
    end exactly one of them and be long enough to mean something.
    """
    national = digits.lstrip("0")
    if len(national) < MIN_SUFFIX:
        return None
    found = [n for n in numbers if n.endswith(national)]
    return found[0] if len(found) == 1 else None


class Provider(abc.ABC):
    """An SMS provider: class attributes state its facts, ``send`` does one request.

    ``max_recipients`` is per request; the delivery workers split batches to it, so
    ``send`` may assume ``len(batch.recipients) <= max_recipients``.
    ``requests_per_second`` is the provider's published rate limit (``None``: none).
    """

    name: ClassVar[str]
    max_recipients: ClassVar[int]
    supports_unicode: ClassVar[bool]
    requests_per_second: ClassVar[float | None]
    docs_url: ClassVar[str]
    supports_contact_lists: ClassVar[bool] = False
    """``send`` takes a batch of one ``list:<uid>`` recipient: the provider's contact list."""
    combines_messages: ClassVar[bool] = False
    """Queued messages with the same text may share one request. Only where nothing in the
    request names a queue id (MessageFlow's ``externalId`` and the outbox's lines do) and a
    tight rate limit makes it worth it."""

    @classmethod
    @abc.abstractmethod
    def from_config(cls, config: ProviderConfig, client: httpx.AsyncClient) -> Self:
        """Build the provider from the ``[provider]`` section and the shared HTTP client."""

    @abc.abstractmethod
    async def send(self, batch: SmsBatch) -> list[RecipientResult]:
        """Send ``batch.text`` to every number; one result per number, in order.

        Raises ``TransientProviderError`` / ``ProviderAccountError`` / ``PermanentProviderError``
        when the provider answered for the whole batch at once.
        """

    async def check_account(self) -> AccountStatus:
        """Prove the credentials work, cheaply and without sending (``check-config --online``).

        Raises ``ProviderAccountError`` when the provider refuses the credentials (its own
        words in the message) and ``TransientProviderError`` when it cannot be asked now.
        """
        return AccountStatus(balance=None, detail=f"{self.name} has no account check")


class HttpProvider(Provider):
    """A provider behind an HTTP API, reached through the daemon's shared ``httpx.AsyncClient``.

    ``_request`` is the single place that turns timeouts, connection failures and
    408/429/5xx answers into ``TransientProviderError``; every other answer goes back to the
    concrete provider, which knows how to read its own envelope.
    """

    default_base_url: ClassVar[str]

    def __init__(
        self,
        *,
        client: httpx.AsyncClient,
        token: str,
        base_url: str | None = None,
        timeout: float = 30.0,
        extra_secrets: Sequence[str] = (),
    ) -> None:
        self.client = client
        self.base_url = (base_url or self.default_base_url).rstrip("/")
        self.timeout = timeout
        self._token = token
        # A Sanctum token is "<id>|<secret>"; an error page may echo either form.
        secret = token.partition("|")[2]
        self._secrets = [token] + ([secret] if len(secret) >= _MIN_SECRET else [])
        self._secrets += [s for s in extra_secrets if len(s) >= _MIN_SECRET]

    @classmethod
    def from_config(cls, config: ProviderConfig, client: httpx.AsyncClient) -> Self:
        """Read base URL, token and timeout; a missing token is a config error, not a crash."""
        token = config.token.get_secret_value().strip() if config.token is not None else ""
        if not token:
            raise ConfigError([f"provider.token: required for kind '{cls.name}'"])
        return cls(client=client, token=token, base_url=config.base_url, timeout=config.timeout)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(base_url={self.base_url!r})"

    def _redact(self, text: str) -> str:
        """Remove the token from text that came from outside (bodies, httpx messages)."""
        for secret in self._secrets:
            text = text.replace(secret, "[token]")
        return text

    def _auth_headers(self) -> dict[str, str]:
        """Headers every request carries; built per call so the token lives in one attribute."""
        return {"Authorization": f"Bearer {self._token}", "Accept": "application/json"}

    def transient(
        self, text: str, *, retry_after: float | None = None, account: bool = False
    ) -> TransientProviderError:
        """Make a redacted retryable error; ``account=True``: the operator's token/balance/plan."""
        kind = ProviderAccountError if account else TransientProviderError
        return kind(self._redact(f"{self.name}: {text}"), retry_after=retry_after)

    def permanent(self, text: str, *, status: str = "5.0.0") -> PermanentProviderError:
        """Make a redacted error that bounces the whole batch (``status`` for the DSN)."""
        return PermanentProviderError(self._redact(f"{self.name}: {text}"), status=status)

    def verdict_error(self, verdict: Verdict, said: str, response: httpx.Response) -> ProviderError:
        """The error for a batch-wide verdict, in the provider's own words (``said``).

        ACCOUNT keeps mail queued, RETRY honours the answer's Retry-After, anything else
        bounces the whole batch with 5.7.1 (delivery not authorised, message refused).
        """
        if verdict is Verdict.ACCOUNT:
            return self.transient(f"the account was refused: {said}", account=True)
        if verdict is Verdict.RETRY:
            retry_after = parse_retry_after(response.headers.get("Retry-After"), time.time())
            return self.transient(f"try again later: {said}", retry_after=retry_after)
        return self.permanent(f"the message was refused: {said}", status="5.7.1")

    def excerpt(self, response: httpx.Response) -> str:
        """``body_excerpt`` with the token removed."""
        return self._redact(body_excerpt(response))

    async def _request(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,  # noqa: ANN401  any JSON-serialisable value
    ) -> httpx.Response:
        """Send one request; raise for what no provider could read as an answer.

        A timeout after the request was written may mean the provider did send the SMS:
        retrying is the at-least-once choice, accepted knowingly.
        """
        url = f"{self.base_url}{path}"
        try:
            response = await self.client.request(
                method,
                url,
                json=json_body,
                headers=self._auth_headers(),
                timeout=self.timeout,
                follow_redirects=False,
            )
        except httpx.TimeoutException as exc:
            error = self.transient(
                f"no answer from {self.base_url} within {self.timeout:g}s ({type(exc).__name__})"
            )
        except httpx.RequestError as exc:  # connection refused/reset, DNS, TLS, protocol
            detail = str(exc).strip() or "no details"
            error = self.transient(f"cannot reach {self.base_url} ({type(exc).__name__}: {detail})")
        else:
            status = response.status_code
            if status in _RETRY_STATUSES or httpx.codes.is_server_error(status):
                retry_after = parse_retry_after(response.headers.get("Retry-After"), time.time())
                wait = f"; retry after {retry_after:g}s" if retry_after is not None else ""
                raise self.transient(
                    f"HTTP {status} {response.reason_phrase} from {path}: "
                    f"{self.excerpt(response)}{wait}",
                    retry_after=retry_after,
                )
            return response
        # Raised outside the except block: no __context__ pointing at the httpx exception
        # (whose request holds the Authorization header).
        raise error
