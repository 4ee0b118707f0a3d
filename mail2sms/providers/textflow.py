"""TextFlow (textflow.me): SMS sent through the account owner's phones, one number per request.

What is known of the API is in ``provider-apis.md`` §3. Every answer is a JSON envelope
``{ok, status, message, data}`` and ``ok`` is the success flag, so the body decides, never
the HTTP status alone (that it mirrors ``status`` is only inferred from the PHP client).

Why ``POST /api/send-sms`` per number and not ``/api/bulk-sms``: bulk only *starts* an
asynchronous job, its answer's shape is undocumented, and nothing says what it does with
one bad number among good ones; so it cannot tell a sender which numbers got the SMS.
``send-sms`` answers for exactly one number (``ok``, or the reason it was refused), which
is the per-number result a bounce needs. ``max_recipients = 1`` makes the delivery workers
split every batch and record each number's outcome as soon as its request returns, so a
crash resends at most the one number in flight (the at-least-once window stays one SMS).
``send`` still takes several numbers, sent in turn, for callers that do not split.

Refusals are classified by ``ERROR_RULES`` (message text first, then status), with the
same verdicts as DataFlows. Only "Invalid API key", "API key not found" and "Phone number
is invalid" are documented; the other rows are tolerant guesses for wordings the notes
mark [?] (credits, sending phones, throttling, other number errors), erring toward
keeping mail queued.
"""

from __future__ import annotations

import re
from dataclasses import replace
from typing import TYPE_CHECKING, Any, ClassVar

import httpx

from mail2sms.errors import PermanentProviderError, ProviderError
from mail2sms.models import AccountStatus, Outcome, RecipientResult
from mail2sms.providers.base import ErrorRule, HttpProvider, Verdict

if TYPE_CHECKING:
    from collections.abc import Iterable

    from mail2sms.models import SmsBatch

SEND_PATH = "/api/send-sms"
BALANCE_PATH = "/api/balance"

_KEY_HINT = "check provider.token"
_TOP_UP_HINT = "top up the TextFlow credits"

ERROR_RULES: tuple[ErrorRule, ...] = (
    # The operator's API key (ProviderAccountError: mail stays queued). Documented texts.
    ErrorRule(r"Invalid API key|API key not found", None, Verdict.ACCOUNT, _KEY_HINT),
    # [?] Other wordings about the key or the login.
    ErrorRule(r"API[ _-]?key|unauthenticated|unauthori[sz]ed", None, Verdict.ACCOUNT, _KEY_HINT),
    # [?] Out of credits: no text documented; the notes propose "Insufficient balance" (402).
    ErrorRule(
        r"insufficient|enough (balance|credit|funds)|out of credit|no (more )?(credit|balance)",
        None,
        Verdict.ACCOUNT,
        _TOP_UP_HINT,
    ),
    # [?] TextFlow sends through the account's own phones ("SMS senders"); none online is
    # the operator's to fix, not a reason to bounce.
    ErrorRule(
        r"no (active |available |connected )?(senders?|devices?|phones?)\b(?! number)"
        r"|(sender|device|phone) .*(offline|not connected)",
        None,
        Verdict.ACCOUNT,
        "check the TextFlow sending phones",
    ),
    # [?] Throttling said in the body (a real 429 is retried before this table).
    ErrorRule(
        r"too many (requests|attempts)|rate limit|slow down",
        None,
        Verdict.RETRY,
        "rate limited; slow down",
    ),
    # The number (that recipient fails for good). Documented text.
    ErrorRule(r"Phone number is invalid", None, Verdict.RECIPIENT, ""),
    # [?] Other wordings about the number or its country.
    ErrorRule(
        r"invalid (phone )?number|number .*(not valid|not supported|unsupported)"
        r"|(unsupported|not supported) country|country .*not supported",
        None,
        Verdict.RECIPIENT,
        "",
    ),
    # By status alone, for texts not listed above.
    ErrorRule(None, 401, Verdict.ACCOUNT, _KEY_HINT),
    ErrorRule(None, 402, Verdict.ACCOUNT, _TOP_UP_HINT),
    ErrorRule(None, 403, Verdict.ACCOUNT, "the TextFlow account may not use the API"),
    ErrorRule(None, 408, Verdict.RETRY, ""),
    ErrorRule(None, 429, Verdict.RETRY, "rate limited; slow down"),
)
"""Ordered: the first matching row decides; a status row matches the HTTP or the body status.

Unmatched: a 5xx status, or a JSON body without ``ok`` (not a TextFlow envelope, e.g. a
proxy's), retries; any other ``ok: false`` bounces with the provider's words.
"""


def classify(message: str, statuses: Iterable[int]) -> ErrorRule | None:
    """Find the first rule matching an error answer under any of its statuses."""
    codes = list(dict.fromkeys(statuses))
    return next(
        (rule for rule in ERROR_RULES if any(rule.matches(message, code) for code in codes)),
        None,
    )


def _e164(number: str) -> str:
    """``+`` and digits, as TextFlow documents its numbers (mail2sms already uses E.164)."""
    return "+" + re.sub(r"\D", "", number)


def _is_ok(value: object) -> bool:
    """The ``ok`` flag; a string or 1 is accepted too, since only ``true`` is documented."""
    return str(value).strip().lower() in {"true", "1"}


def _status_of(value: object) -> int | None:
    """The envelope's ``status`` as an int, whatever JSON type it came in."""
    try:
        return int(str(value).strip())
    except ValueError:
        return None


def _text(value: object) -> str:
    return "" if value is None else " ".join(str(value).split())


class TextFlowProvider(HttpProvider):
    """TextFlow's ``POST /api/send-sms``: one number per request, read from the ``ok`` flag."""

    name: ClassVar[str] = "textflow"
    max_recipients: ClassVar[int] = 1  # per-number answers; see the module docstring
    # [?] Undocumented either way; the text goes as a JSON string to a phone that picks the
    # SMS alphabet itself, and refusing non-GSM text on a guess would lose real mail.
    supports_unicode: ClassVar[bool] = True
    requests_per_second: ClassVar[float | None] = None  # [?] no limit is published
    docs_url: ClassVar[str] = "https://docs.textflow.me/"
    default_base_url: ClassVar[str] = "https://textflow.me"

    async def send(self, batch: SmsBatch) -> list[RecipientResult]:
        """Send to each number in turn; once one was answered, never raise for the batch.

        A failure before any answer raises (nothing happened). A failure after some
        answers keeps them: that number gets the error's words (PERMANENT when the
        message was refused, else TRANSIENT) and the numbers not yet tried are TRANSIENT.
        """
        numbers = list(dict.fromkeys(_e164(r) for r in batch.recipients))
        results: dict[str, RecipientResult] = {}
        failed: ProviderError | None = None
        for number in numbers:
            try:
                results[number] = await self._send_one(number, batch.text)
            except ProviderError as exc:
                if not results:
                    raise
                failed = exc
                break
        if failed is not None:
            outcome = (
                Outcome.PERMANENT
                if isinstance(failed, PermanentProviderError)
                else Outcome.TRANSIENT
            )
            untried = [n for n in numbers if n not in results]
            results[untried[0]] = RecipientResult(untried[0], outcome, str(failed))
            for number in untried[1:]:
                detail = f"not tried after an earlier failure: {failed}"
                results[number] = RecipientResult(number, Outcome.TRANSIENT, detail)
        return [replace(results[_e164(r)], recipient=r) for r in batch.recipients]

    async def _send_one(self, number: str, text: str) -> RecipientResult:
        body = {"phone_number": number, "text": text}
        response = await self._request("POST", SEND_PATH, json_body=body)
        envelope = self._envelope(response)
        if _is_ok(envelope.get("ok")):
            detail = self._redact(_text(envelope.get("message"))) or "sent"
            # No message id comes back [C]: the queue row is the only reference.
            return RecipientResult(number, Outcome.SENT, detail)
        verdict, message, said = self._refusal(envelope, response)
        if verdict is Verdict.RECIPIENT:
            return RecipientResult(number, Outcome.PERMANENT, message)
        raise self.verdict_error(verdict, said, response)

    async def check_account(self) -> AccountStatus:
        """``GET /api/balance``: the credits and per-region packages left, in TextFlow's words.

        Its failure answer is a bare ``{"ok": false}`` [C], so any refusal here that is not
        a retry is the key's fault.
        """
        response = await self._request("GET", BALANCE_PATH)
        envelope = self._envelope(response)
        if not _is_ok(envelope.get("ok")):
            verdict, _message, said = self._refusal(envelope, response, unmatched=Verdict.ACCOUNT)
            if verdict is not Verdict.RETRY:
                verdict = Verdict.ACCOUNT
            raise self.verdict_error(verdict, said, response)
        return AccountStatus(
            balance=self._balance_words(envelope),
            detail=f"GET {BALANCE_PATH} accepted the API key",
        )

    def _balance_words(self, envelope: dict[str, Any]) -> str | None:
        """``credits`` (a string [C]) and ``packages`` (messages left per region) as one line."""
        parts = []
        left_credits = _text(envelope.get("credits"))
        if left_credits:
            parts.append(f"{left_credits} credits")
        packages = envelope.get("packages")
        if isinstance(packages, dict) and packages:
            left = ", ".join(f"{region} {count}" for region, count in packages.items())
            parts.append(f"packages: {left}")
        return self._redact("; ".join(parts)) if parts else None

    def _envelope(self, response: httpx.Response) -> dict[str, Any]:
        """Read the JSON object answer; redirects and non-JSON bodies are not answers."""
        status = response.status_code
        if response.is_redirect:
            location = self._redact(response.headers.get("Location", "(no Location)"))
            raise self.transient(f"HTTP {status} redirect to {location}: check provider.base_url")
        try:
            parsed = response.json()
        except ValueError:
            parsed = None
        if not isinstance(parsed, dict):
            if status in {httpx.codes.UNAUTHORIZED, httpx.codes.FORBIDDEN}:
                raise self.transient(
                    f"HTTP {status}: {self.excerpt(response)}; {_KEY_HINT}", account=True
                )
            raise self.transient(
                f"HTTP {status} {response.reason_phrase}, not a JSON answer "
                f"(is provider.base_url right?): {self.excerpt(response)}"
            )
        return parsed

    def _refusal(
        self,
        envelope: dict[str, Any],
        response: httpx.Response,
        *,
        unmatched: Verdict = Verdict.REFUSED,
    ) -> tuple[Verdict, str, str]:
        """Classify an ``ok: false`` answer: (verdict, provider's words, words for an error).

        ``unmatched`` decides a TextFlow refusal that no rule names: a bounce when sending,
        the key's fault when only the balance was asked for.
        """
        http_status = response.status_code
        body_status = _status_of(envelope.get("status"))
        statuses = [http_status] if body_status is None else [http_status, body_status]
        message = self._redact(_text(envelope.get("message"))) or self.excerpt(response)
        rule = classify(message, statuses)
        hint = rule.hint if rule is not None else ""
        if rule is not None:
            verdict = rule.verdict
        elif any(httpx.codes.is_server_error(s) for s in statuses):
            verdict = Verdict.RETRY
        elif "ok" not in envelope:
            verdict, hint = Verdict.RETRY, "not a TextFlow answer; is provider.base_url right?"
        else:
            verdict = unmatched
            hint = _KEY_HINT if unmatched is Verdict.ACCOUNT else ""
        where = f"HTTP {http_status}"
        if body_status is not None and body_status != http_status:
            where += f" (status {body_status})"
        said = f"{where}: {message}" + (f" ({hint})" if hint else "")
        return verdict, message, said
