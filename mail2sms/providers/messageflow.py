"""MessageFlow (messageflow.com, Vercom S.A.; formerly Redlink) transactional SMS API v2.1.

What is known of the API is in ``provider-apis.md`` §2, where [?] marks what is not; the
client is tolerant exactly there, and each such place says so. One ``POST /v2.1/sms``
carries the text and up to ``max_recipients`` numbers. Its answer lists the SMS MessageFlow
accepted in ``data[]`` (matched back to our numbers by ``phoneNumber``) and what it refused
in ``errors[]``. Errors are classified through ``ERROR_RULES``: one ordered table, so the
operator docs and the tests come from the same list as the code.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, ClassVar, Self

import httpx

from mail2sms.errors import ConfigError
from mail2sms.models import AccountStatus, Outcome, RecipientResult
from mail2sms.providers.base import HttpProvider, Verdict, parse_retry_after, suffix_match

if TYPE_CHECKING:
    from collections.abc import Sequence

    from mail2sms.config import ProviderConfig
    from mail2sms.errors import ProviderError
    from mail2sms.models import SmsBatch

SEND_PATH = "/v2.1/sms"
SENDERS_PATH = "/v2.1/sms/senders"
STATUSES_PATH = "/v2.1/sms/statuses?limit=1"
EXTERNAL_ID_PREFIX = "mail2sms-"
EXTERNAL_ID_MAX = 64
"""[?] No documented limit or alphabet for ``externalId``; a short ASCII id is safe anywhere."""

_FIRST_ERROR_STATUS = 400
_MIN_DIGITS = 6  # a run of digits in an error text shorter than this is not a phone number
_INDEXED_PARAMETER = re.compile(r"phoneNumbers?\s*(?:\[(\d+)\]|\.(\d+))", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class ApiError:
    """One item of ``errors[]``; every field may be missing, so each defaults to empty [?]."""

    title: str = ""
    message: str = ""
    code: str = ""
    parameter: str = ""
    value: str = ""

    @property
    def text(self) -> str:
        """The provider's own words, as one line: ``title: message (code)``."""
        said = self.message or self.title or "no message"
        if self.title and self.message and self.title.lower() not in self.message.lower():
            said = f"{self.title}: {self.message}"
        return f"{said} ({self.code})" if self.code else said


@dataclass(frozen=True, slots=True)
class ErrorRule:
    """One row of the classification; every given part must match one ``errors[]`` item.

    ``parameter`` is searched in the item's ``meta.parameter``, ``pattern`` in its title
    and message (both case-insensitive regexes); ``http_status`` is the answer's status.
    """

    http_status: int | None
    parameter: str | None
    pattern: str | None
    verdict: Verdict
    hint: str

    def matches(self, error: ApiError, status: int) -> bool:
        """True when every part this rule names matches."""
        if self.http_status is not None and self.http_status != status:
            return False
        if self.parameter is not None and not re.search(
            self.parameter, error.parameter, re.IGNORECASE
        ):
            return False
        words = f"{error.title} {error.message}"
        return self.pattern is None or re.search(self.pattern, words, re.IGNORECASE) is not None


_KEYS_HINT = (
    "check provider.token and provider.application_key "
    "(MessageFlow panel: Account → Settings → API)"
)
_SENDER_HINT = (
    "register gateway.sender_id in MessageFlow (SMS → Common settings → Sender IDs) or change it"
)
_FUNDS_HINT = "top up the MessageFlow account"
_PERMISSION_HINT = "give the API key the Transactional SMS permission"

ERROR_RULES: tuple[ErrorRule, ...] = (
    # [C] 401 "Authorization data is invalid": the operator's keys (mail stays queued).
    ErrorRule(401, None, None, Verdict.ACCOUNT, _KEYS_HINT),
    # [C] errors name the field in meta.parameter (the documented 422 names phoneNumbers).
    ErrorRule(None, r"^sender", None, Verdict.REFUSED, _SENDER_HINT),
    ErrorRule(None, r"^phoneNumbers?\b", None, Verdict.RECIPIENT, ""),
    # [?] Texts for missing funds or permission, or an unregistered sender, were not found:
    # these words are the likely ones, checked before the status-only rows below. The
    # account rows come first: when a text is ambiguous, mail stays queued, not bounced.
    ErrorRule(None, None, r"fund|balance|credit|top[ -]?up", Verdict.ACCOUNT, _FUNDS_HINT),
    ErrorRule(
        None, None, r"permission|not permitted|transactional", Verdict.ACCOUNT, _PERMISSION_HINT
    ),
    ErrorRule(None, None, r"\bsender", Verdict.REFUSED, _SENDER_HINT),
    ErrorRule(None, None, r"phone ?numbers?|blacklist", Verdict.RECIPIENT, ""),
    # By HTTP status alone, for texts not listed above.
    ErrorRule(402, None, None, Verdict.ACCOUNT, _FUNDS_HINT),
    ErrorRule(403, None, None, Verdict.ACCOUNT, f"{_PERMISSION_HINT}; {_FUNDS_HINT}"),
    ErrorRule(404, None, None, Verdict.RETRY, "check provider.base_url"),
    ErrorRule(408, None, None, Verdict.RETRY, ""),
    ErrorRule(429, None, None, Verdict.RETRY, "rate limited; slow down"),
    ErrorRule(422, None, None, Verdict.REFUSED, "request validation"),
)
"""Ordered: the first matching row decides. Unmatched: 5xx retries, anything else bounces.

408, 429 and 5xx never reach this table from ``send`` (``HttpProvider`` retries them
first); their rows are here so the table documents every answer. Inside an HTTP 200 answer
(some numbers refused) only the parameter and text rows can match.
"""


def classify(error: ApiError, status: int) -> ErrorRule | None:
    """Find the first rule matching one error; ``None``: 5xx retries, else bounce."""
    return next((rule for rule in ERROR_RULES if rule.matches(error, status)), None)


def verdict_of(error: ApiError, status: int) -> Verdict:
    """The verdict for one error, unmatched ones included."""
    rule = classify(error, status)
    if rule is not None:
        return rule.verdict
    return Verdict.RETRY if httpx.codes.is_server_error(status) else Verdict.REFUSED


def external_id(queue_id: str) -> str:
    """``mail2sms-<queue id>``: the same for every attempt and every chunk of one message.

    One request has one ``externalId`` (MessageFlow echoes it on each ``data[]`` item), so
    it names the queued message and ``phoneNumber`` names the recipient. Being stable, a
    repeated request (after a timeout or a 202) is the same request, and delivery reports
    for either attempt lead back to the same queue row.
    """
    safe = re.sub(r"[^A-Za-z0-9_-]", "-", queue_id)
    return f"{EXTERNAL_ID_PREFIX}{safe}"[:EXTERNAL_ID_MAX]


def _digits(number: object) -> str:
    return re.sub(r"\D", "", str(number))


def _str(value: object) -> str:
    return "" if value is None or isinstance(value, dict | list) else str(value).strip()


def _int(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    return None


def _dict(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _items(value: object) -> list[dict[str, Any]]:
    """``data``/``errors`` as a list of objects; a single object counts as one item [?]."""
    if isinstance(value, dict):
        return [value]
    if isinstance(value, list):
        return [item for item in value if isinstance(item, dict)]
    return []


def parse_errors(envelope: dict[str, Any]) -> list[ApiError]:
    """Read ``errors[]`` without trusting its shape (plain strings are taken as messages)."""
    raw = envelope.get("errors")
    texts = raw if isinstance(raw, list) else []
    errors = [ApiError(message=_str(item)) for item in texts if isinstance(item, str)]
    for item in _items(raw):
        meta = _dict(item.get("meta"))
        errors.append(
            ApiError(
                title=_str(item.get("title")),
                message=_str(item.get("message")),
                code=_str(item.get("code")),
                parameter=_str(meta.get("parameter")),
                value=_str(meta.get("value")),
            )
        )
    return [e for e in errors if e.message or e.title or e.code]


def _named_number(error: ApiError, numbers: Sequence[str]) -> str | None:
    """Which of our numbers (digits) an error is about: its value, index, or digits in text."""
    value = _digits(error.value)
    if value in numbers:
        return value
    indexed = _INDEXED_PARAMETER.search(error.parameter)
    if indexed:
        index = int(indexed.group(1) or indexed.group(2))
        if index < len(numbers):
            return numbers[index]
    text = f"{error.value} {error.message}"
    return next((n for n in re.findall(rf"\d{{{_MIN_DIGITS},}}", text) if n in numbers), None)


def _result(outcome: Outcome, detail: str, ref: str | None = None) -> RecipientResult:
    """Make a result keyed by digits; ``send`` puts the caller's own spelling back."""
    return RecipientResult(recipient="", outcome=outcome, detail=detail, provider_ref=ref)


class MessageFlowProvider(HttpProvider):
    """MessageFlow's ``POST /v2.1/sms``: one text, several numbers, per-number results.

    Authenticated by two raw headers (no ``Bearer``): ``Authorization`` (the API key,
    ``provider.token``) and ``Application-Key`` (``provider.application_key``); both are
    secrets, kept out of every error text and ``repr``.
    """

    name: ClassVar[str] = "messageflow"
    # [?] No documented limit on phoneNumbers. 100, as for DataFlows: a short request that
    # finishes within the timeout, and a 422 caused by one bad number holds back few others.
    max_recipients: ClassVar[int] = 100
    supports_unicode: ClassVar[bool] = True  # [C] billing has a UCS-2 (non-GSM) table
    requests_per_second: ClassVar[float | None] = None  # [?] no published rate limit
    docs_url: ClassVar[str] = "https://dev.messageflow.com/sms"
    default_base_url: ClassVar[str] = "https://api.messageflow.com"

    def __init__(
        self,
        *,
        client: httpx.AsyncClient,
        token: str,
        application_key: str,
        base_url: str | None = None,
        timeout: float = 30.0,
    ) -> None:
        super().__init__(
            client=client,
            token=token,
            base_url=base_url,
            timeout=timeout,
            extra_secrets=[application_key],
        )
        self._application_key = application_key

    @classmethod
    def from_config(cls, config: ProviderConfig, client: httpx.AsyncClient) -> Self:
        """Read both keys; each missing one is a config error naming its key."""
        token = config.token.get_secret_value().strip() if config.token is not None else ""
        key = config.application_key
        application_key = key.get_secret_value().strip() if key is not None else ""
        problems = []
        if not token:
            problems.append(f"provider.token: required for kind '{cls.name}'")
        if not application_key:
            problems.append(
                f"provider.application_key: required for kind '{cls.name}' "
                "(the ApplicationKey from MessageFlow's panel)"
            )
        if problems:
            raise ConfigError(problems)
        return cls(
            client=client,
            token=token,
            application_key=application_key,
            base_url=config.base_url,
            timeout=config.timeout,
        )

    def _auth_headers(self) -> dict[str, str]:
        """[C] The raw key in ``Authorization`` (no scheme) and the ``Application-Key``."""
        return {
            "Authorization": self._token,
            "Application-Key": self._application_key,
            "Accept": "application/json",
        }

    # ---- send ------------------------------------------------------------------------

    async def send(self, batch: SmsBatch) -> list[RecipientResult]:
        """Send one request; read ``data[]``/``errors[]`` for per-number outcomes.

        HTTP 202 means MessageFlow is still working on the request [C: long-running
        actions]: it becomes a ``TransientProviderError`` with the ``Retry-After`` delay,
        and the delivery workers repeat the same request then. Should the first one
        complete after all, the SMS goes out twice: at-least-once, as for a timeout.
        """
        numbers = list(dict.fromkeys(_digits(r) for r in batch.recipients))
        if not numbers:
            return []
        ext_id = external_id(batch.queue_id)
        body = {
            "sender": batch.sender_id,
            "message": batch.text,
            "phoneNumbers": [f"+{n}" for n in numbers],
            "externalId": ext_id,
        }
        response = await self._request("POST", SEND_PATH, json_body=body)
        if response.status_code == httpx.codes.ACCEPTED:
            raise self._still_processing(response)
        envelope = self._envelope(response)
        meta = _dict(envelope.get("meta"))
        status = response.status_code
        items = _items(envelope.get("data"))
        meta_status = _int(meta.get("status"))
        if (
            httpx.codes.is_success(status)
            and meta_status is not None
            and meta_status >= _FIRST_ERROR_STATUS
            and not items
        ):
            # [I] meta.status mirrors the HTTP status. An error status in a 2xx body is
            # believed unless data[] lists SMS, which are evidence that they were sent.
            status = meta_status
        if httpx.codes.is_success(status):
            by_number = self._success(numbers, envelope, ext_id)
        else:
            by_number = self._failure(numbers, envelope, status, response)
        return [replace(by_number[_digits(r)], recipient=r) for r in batch.recipients]

    def _still_processing(self, response: httpx.Response) -> ProviderError:
        retry_after = parse_retry_after(response.headers.get("Retry-After"), time.time())
        wait = f"; retry after {retry_after:g}s" if retry_after is not None else ""
        return self.transient(
            f"HTTP 202: MessageFlow is still processing the request; it will be repeated{wait}",
            retry_after=retry_after,
        )

    def _envelope(self, response: httpx.Response) -> dict[str, Any]:
        """Read the JSON object answer; redirects and non-JSON bodies are not answers."""
        status = response.status_code
        if response.is_redirect:
            location = self._redact(response.headers.get("Location", "(no Location)"))
            raise self.transient(f"HTTP {status} redirect to {location}: check provider.base_url")
        parsed = _json(response)
        if parsed is not None:
            return parsed
        said = (
            f"HTTP {status} {response.reason_phrase}, not a JSON answer: {self.excerpt(response)}"
        )
        if status in {httpx.codes.UNAUTHORIZED, httpx.codes.FORBIDDEN}:
            raise self.transient(f"{said} ({_KEYS_HINT})", account=True)
        if httpx.codes.is_success(status) or status in {
            httpx.codes.NOT_FOUND,
            httpx.codes.METHOD_NOT_ALLOWED,
        }:
            # An error page or a proxy, not MessageFlow (which answers JSON) [C]: retrying
            # costs nothing, and after a 2xx the SMS may have been sent.
            raise self.transient(f"{said} (is provider.base_url right?)")
        raise self.permanent(f"the request was refused: {said}", status="5.7.1")

    def _success(
        self, numbers: list[str], envelope: dict[str, Any], ext_id: str
    ) -> dict[str, RecipientResult]:
        """Per-number outcomes of a 2xx answer: listed in ``data[]`` means accepted."""
        meta = _dict(envelope.get("meta"))
        uniq = _str(meta.get("uniqId"))
        tag = uniq or ext_id

        def sent(number: str, item: dict[str, Any]) -> RecipientResult:
            parts = _int(item.get("numberOfParts"))
            detail = "accepted by MessageFlow" + (f" ({parts} parts)" if parts else "")
            return _result(Outcome.SENT, detail, f"{tag}:{number}")

        items = _items(envelope.get("data"))
        results: dict[str, RecipientResult] = {}
        for item in items:
            echoed = _digits(item.get("phoneNumber", ""))
            number = echoed if echoed in numbers else suffix_match(echoed, numbers)
            if number is not None and number not in results:
                results[number] = sent(number, item)
        named_any = any(_digits(item.get("phoneNumber", "")) for item in items)
        sent_count = _int(meta.get("sentSms"))
        if (
            not results
            and not named_any
            and (
                len(items) == len(numbers)
                or (sent_count == len(numbers) and not _int(meta.get("notSentSms")))
            )
        ):
            # [?] Items without phoneNumber (or no data at all) while the counts say
            # everything went out: believe the counts rather than resend every number.
            return {n: sent(n, {}) for n in numbers}
        if sent_count == len(numbers) and not _int(meta.get("notSentSms")):
            # every number went out, whatever spelling data[] used: never resend them
            return {n: results.get(n) or sent(n, {}) for n in numbers}

        missing = [n for n in numbers if n not in results]
        if missing:
            results.update(self._unsent(missing, numbers, parse_errors(envelope), uniq))
        return results

    def _unsent(
        self, missing: list[str], numbers: list[str], errors: list[ApiError], uniq: str
    ) -> dict[str, RecipientResult]:
        """Numbers absent from ``data[]``: their own error decides, else they are retried.

        [I] ``notSentSms`` > 0 with ``errors[]`` beside ``data[]`` is the natural reading of
        a partial success. An error about the number itself makes it fail for good; any
        other error, or none naming it, means "not sent this time".
        """
        named: dict[str, ApiError] = {}
        unnamed: list[ApiError] = []
        for error in errors:
            number = _named_number(error, numbers)
            if number in missing and number not in named:
                named[number] = error
            else:
                unnamed.append(error)
        if len(missing) == 1 and not named and len(unnamed) == 1:
            named[missing[0]] = unnamed.pop()
        ref = f" (MessageFlow request {uniq})" if uniq else ""
        account = [e for e in errors if verdict_of(e, httpx.codes.OK) is Verdict.ACCOUNT]
        if account and len(missing) == len(numbers):  # nothing went out: the account's fault
            raise self.transient(f"the account was refused: {account[0].text}{ref}", account=True)
        results = {}
        for number in missing:
            own = named.get(number)
            if own is None:
                others = "; ".join(e.text for e in unnamed)
                detail = "MessageFlow gave no result for this number" + (
                    f": {others}" if others else ""
                )
                results[number] = _result(Outcome.TRANSIENT, self._redact(detail + ref))
            elif verdict_of(own, httpx.codes.OK) is Verdict.RECIPIENT:
                results[number] = _result(Outcome.PERMANENT, self._redact(own.text))
            elif verdict_of(own, httpx.codes.OK) is Verdict.ACCOUNT:
                results[number] = _result(Outcome.HELD, self._redact(f"not sent: {own.text}{ref}"))
            else:
                results[number] = _result(
                    Outcome.TRANSIENT, self._redact(f"not sent: {own.text}{ref}")
                )
        return results

    def _failure(
        self, numbers: list[str], envelope: dict[str, Any], status: int, response: httpx.Response
    ) -> dict[str, RecipientResult]:
        """Classify an error answer; per-number results only when every error is a number's.

        The most cautious verdict wins: the account (keep queued) over "later" over
        "refused" (bounce) over a bad number.
        """
        errors = parse_errors(envelope) or [ApiError(message=self.excerpt(response))]
        verdicts = [(e, verdict_of(e, status), classify(e, status)) for e in errors]
        uniq = _str(_dict(envelope.get("meta")).get("uniqId"))
        ref = f" (MessageFlow request {uniq})" if uniq else ""
        for verdict in (Verdict.ACCOUNT, Verdict.RETRY, Verdict.REFUSED):
            chosen = [(e, rule) for e, v, rule in verdicts if v is verdict]
            if chosen:
                hints = list(dict.fromkeys(rule.hint for _, rule in chosen if rule and rule.hint))
                hint = f" ({'; '.join(hints)})" if hints else ""
                said = f"HTTP {status}: {'; '.join(e.text for e, _ in chosen)}{hint}{ref}"
                raise self.verdict_error(verdict, said, response)
        # Every error is about a number.
        if len(numbers) == 1:
            text = "; ".join(e.text for e in errors)
            return {numbers[0]: _result(Outcome.PERMANENT, self._redact(text))}
        named: dict[str, list[str]] = {}
        for error in errors:
            number = _named_number(error, numbers)
            if number is not None:
                named.setdefault(number, []).append(error.text)
        if not named:
            said = f"HTTP {status}: {'; '.join(e.text for e in errors)}{ref}"
            raise self.verdict_error(Verdict.REFUSED, f"{said} (no number named)", response)
        # Nothing was sent; the numbers not named are retried without the bad ones.
        return {
            n: _result(Outcome.PERMANENT, self._redact("; ".join(named[n])))
            if n in named
            else _result(
                Outcome.TRANSIENT,
                self._redact(f"not sent: MessageFlow refused other numbers of the request{ref}"),
            )
            for n in numbers
        }

    # ---- account check ---------------------------------------------------------------

    async def check_account(self) -> AccountStatus:
        """List the key's sender IDs (``OPTIONS /v2.1/sms/senders``); it sends nothing.

        [?] The senders answer's shape was not found: names are taken from strings or from
        ``sender``/``name`` fields of ``data[]``. If that endpoint is missing (404 or 405
        that is not MessageFlow JSON, or a 200 that is not JSON, as a proxy may answer
        OPTIONS itself), the documented ``GET /v2.1/sms/statuses?limit=1`` proves the keys
        instead (its 404 means "no SMS yet", so the keys were accepted).
        """
        response = await self._request("OPTIONS", SENDERS_PATH)
        envelope = _json(response)
        status = response.status_code
        self._refused(response, envelope)
        if envelope is not None and (
            status == httpx.codes.OK or (status == httpx.codes.NOT_FOUND and _is_api(envelope))
        ):
            senders = _sender_names(envelope.get("data"))
            listed = ", ".join(senders) if senders else "none listed for this key"
            return AccountStatus(
                balance=_balance(envelope), detail=f"credentials accepted; senders: {listed}"
            )
        if status not in {httpx.codes.OK, httpx.codes.NOT_FOUND, httpx.codes.METHOD_NOT_ALLOWED}:
            raise self._unexpected(response, SENDERS_PATH)
        response = await self._request("GET", STATUSES_PATH)
        envelope = _json(response)
        self._refused(response, envelope)
        if envelope is not None and response.status_code in {
            httpx.codes.OK,
            httpx.codes.NOT_FOUND,
        }:
            return AccountStatus(
                balance=_balance(envelope), detail="credentials accepted (SMS statuses read)"
            )
        raise self._unexpected(response, STATUSES_PATH)

    def _refused(self, response: httpx.Response, envelope: dict[str, Any] | None) -> None:
        """401/403: the keys or their permission, in MessageFlow's words."""
        if response.status_code not in {httpx.codes.UNAUTHORIZED, httpx.codes.FORBIDDEN}:
            return
        errors = parse_errors(envelope or {})
        said = "; ".join(e.text for e in errors) or self.excerpt(response)
        hint = _KEYS_HINT if response.status_code == httpx.codes.UNAUTHORIZED else _PERMISSION_HINT
        raise self.transient(
            f"provider rejected the credentials: HTTP {response.status_code}: {said} ({hint})",
            account=True,
        )

    def _unexpected(self, response: httpx.Response, path: str) -> ProviderError:
        return self.transient(
            f"unexpected answer HTTP {response.status_code} {response.reason_phrase} from "
            f"{path}: {self.excerpt(response)} (is provider.base_url right?)"
        )


def _json(response: httpx.Response) -> dict[str, Any] | None:
    """The body as a JSON object, or None (parse errors are not kept: no ``__context__``)."""
    try:
        parsed = response.json()
    except ValueError:
        return None
    return parsed if isinstance(parsed, dict) else None


def _is_api(envelope: dict[str, Any]) -> bool:
    """MessageFlow's envelope (``meta`` or ``errors``), not some other server's JSON."""
    return isinstance(envelope.get("meta"), dict) or isinstance(envelope.get("errors"), list)


def _balance(envelope: dict[str, Any]) -> str | None:
    """[C] ``meta.accountBalance`` on send answers; on other answers only if present [?]."""
    value = _str(_dict(envelope.get("meta")).get("accountBalance"))
    return value or None


def _sender_names(data: object) -> list[str]:
    """Sender IDs in ``data``, in order: plain strings, or objects naming one [?]."""
    names = []
    for entry in data if isinstance(data, list) else _items(data):
        if isinstance(entry, dict):
            keys = ("sender", "name", "senderId", "value")
            name = next((n for n in (_str(entry.get(k)) for k in keys) if n), "")
        else:
            name = _str(entry)
        if name:
            names.append(name)
    return list(dict.fromkeys(names))
