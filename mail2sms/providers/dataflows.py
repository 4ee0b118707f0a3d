"""DataFlows SMS (sms.dataflows.com.au), a deployment of Codeglen's "Ultimate SMS" v3 API.

What is known of the API is in ``provider-apis.md`` §1. The platform's HTTP status codes
are unreliable (the stock build answers HTTP 200 for a bad token), so success and failure
are read from the JSON envelope's ``status``, and failures are classified by their
``message`` text first and the HTTP status second, through ``ERROR_RULES``: one ordered
table, so the operator docs and the tests come from the same list as the code.
"""

from __future__ import annotations

import re
from dataclasses import replace
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import urlsplit

import httpx

from mail2sms.models import LIST_PREFIX, AccountStatus, Outcome, RecipientResult, is_contact_list
from mail2sms.providers.base import MIN_SUFFIX, ErrorRule, HttpProvider, Verdict, suffix_match

if TYPE_CHECKING:
    from mail2sms.models import SmsBatch

SEND_PATH = "/api/v3/sms/send"
CAMPAIGN_PATH = "/api/v3/sms/campaign"
_EMPTY_LIST = re.compile(r"valid phone number not found|invalid.*(group|list)", re.IGNORECASE)
BALANCE_PATHS = ("/api/v3/profile/balance", "/api/v3/balance")


ERROR_RULES: tuple[ErrorRule, ...] = (
    # The operator's account (ProviderAccountError: mail stays queued).
    ErrorRule(r"Unauthenticated", None, Verdict.ACCOUNT, "check provider.token"),
    ErrorRule(
        r"do not have permission to access API",
        None,
        Verdict.ACCOUNT,
        "enable API access for the DataFlows user",
    ),
    ErrorRule(
        r"This action is unauthorized",
        None,
        Verdict.ACCOUNT,
        "give the DataFlows user permission to send SMS",
    ),
    ErrorRule(
        r"not enough balance|insufficient (sms )?(balance|credit|unit)",
        None,
        Verdict.ACCOUNT,
        "top up the DataFlows balance",
    ),
    ErrorRule(
        r"exceeded your sending limit", None, Verdict.ACCOUNT, "top up the DataFlows balance"
    ),
    ErrorRule(
        r"No active subscription|plan is not active",
        None,
        Verdict.ACCOUNT,
        "renew the DataFlows plan",
    ),
    ErrorRule(
        r"No sending server available",
        None,
        Verdict.ACCOUNT,
        "ask DataFlows to attach a sending server to the plan",
    ),
    ErrorRule(
        r"not available in demo mode", None, Verdict.ACCOUNT, "the DataFlows account is a demo"
    ),
    # Busy or broken right now (TransientProviderError).
    ErrorRule(r"Too Many Attempts", None, Verdict.RETRY, "rate limited; slow down"),
    ErrorRule(r"Something went wrong", None, Verdict.RETRY, "DataFlows failed internally"),
    # The number (per-recipient PERMANENT when it can be attributed).
    ErrorRule(r"is a invalid phone number|invalid phone number", None, Verdict.RECIPIENT, ""),
    ErrorRule(r"to be a phone number", None, Verdict.RECIPIENT, ""),
    ErrorRule(r"Invalid country calling code", None, Verdict.RECIPIENT, ""),
    ErrorRule(
        r"Permission to send an SMS has not been enabled for the region",
        None,
        Verdict.RECIPIENT,
        "",
    ),
    ErrorRule(r"blacklist", None, Verdict.RECIPIENT, ""),
    # The message as a whole (PermanentProviderError: bounce).
    ErrorRule(
        r"Originator .* is not authorized",
        None,
        Verdict.REFUSED,
        "have the sender ID approved in DataFlows or change it",
    ),
    ErrorRule(r"not capable to send", None, Verdict.REFUSED, "the sender number cannot send SMS"),
    ErrorRule(r"sender_?id_blocked|sender id.* blocked", None, Verdict.REFUSED, ""),
    ErrorRule(r"spam words", None, Verdict.REFUSED, "DataFlows' spam filter refused the text"),
    ErrorRule(r"valid sms type", None, Verdict.REFUSED, ""),
    ErrorRule(r"cannot send more than \d+", None, Verdict.REFUSED, "too many recipients"),
    ErrorRule(
        r"^The [\w ]+ (field is required|must|may not|format is invalid|does not match)",
        None,
        Verdict.REFUSED,
        "request validation",
    ),
    # By HTTP status alone, for messages not listed above (patched builds use real codes).
    ErrorRule(None, 401, Verdict.ACCOUNT, "check provider.token"),
    ErrorRule(None, 408, Verdict.RETRY, ""),
    ErrorRule(None, 429, Verdict.RETRY, "rate limited; slow down"),
    ErrorRule(None, 422, Verdict.REFUSED, "request validation"),
)
"""Ordered: the first matching row decides. Unmatched: 5xx retries, anything else bounces.

408, 429 and 5xx never reach this table from ``send`` (``HttpProvider`` retries them
first); their rows are here so the table documents every answer.
"""


def classify(message: str, status: int) -> ErrorRule | None:
    """Find the first rule matching an error answer; ``None``: 5xx retries, else bounce."""
    return next((rule for rule in ERROR_RULES if rule.matches(message, status)), None)


_ACCEPTED = frozenset({"delivered", "enroute", "accepted"})
_NOT_DELIVERED = re.compile(r"\b(not|un)\s*delivered", re.IGNORECASE)
_STATUS_KEYS = ("customer_status", "status")
_SEGMENT_SPLIT = re.compile(r"\s*(?:<br\s*/?>|\r?\n|;)\s*", re.IGNORECASE)


def _digits(number: object) -> str:
    return re.sub(r"\D", "", str(number))


def _texts(value: object) -> list[str]:
    """Flatten a ``message``/``errors`` value to its texts, whatever its JSON shape."""
    if value is None:
        return []
    if isinstance(value, dict):
        return [text for item in value.values() for text in _texts(item)]
    if isinstance(value, list):
        return [text for item in value for text in _texts(item)]
    text = str(value).strip()
    return [text] if text else []


def _text(value: object) -> str:
    return " ".join(_texts(value))


def is_accepted(status: str) -> bool:
    """Apply the platform's own test (contains ``Delivered``) plus its other success words."""
    if "Delivered" in status and not _NOT_DELIVERED.search(status):
        return True
    return status.strip().lower() in _ACCEPTED


def _item_status(item: dict[str, Any]) -> str | None:
    for key in _STATUS_KEYS:
        value = item.get(key)
        if value is not None and str(value).strip():
            return str(value).strip()
    return None


def _item_ref(item: dict[str, Any]) -> str | None:
    for key in ("uid", "campaign_id", "id"):
        value = item.get(key)
        if value is not None and str(value).strip():
            return str(value)
    return None


def _about(number: str, message: str) -> str | None:
    """Find the line of a joined error text that names ``number`` (full or national form)."""
    segments = [s for s in _SEGMENT_SPLIT.split(message) if s]
    for segment in segments:
        seg_digits = re.findall(r"\d{6,}", segment)
        for found in seg_digits:
            if found == number or (
                len(found.lstrip("0")) >= MIN_SUFFIX and number.endswith(found.lstrip("0"))
            ):
                return segment
    return None


class DataFlowsProvider(HttpProvider):
    """DataFlows' ``POST /api/v3/sms/send``: one number, or up to 100 comma-separated."""

    name: ClassVar[str] = "dataflows"
    max_recipients: ClassVar[int] = 100
    supports_unicode: ClassVar[bool] = True  # the platform switches to UCS-2 by itself
    requests_per_second: ClassVar[float | None] = 10.0  # DataFlows publishes 600 req/min
    docs_url: ClassVar[str] = "https://docs.dataflows.com.au/"
    default_base_url: ClassVar[str] = "https://sms.dataflows.com.au"
    supports_contact_lists: ClassVar[bool] = True
    combines_messages: ClassVar[bool] = True  # 600 requests a minute, one text per request

    async def send(self, batch: SmsBatch) -> list[RecipientResult]:
        """Send one request; read the envelope, never the HTTP status, for success."""
        if len(batch.recipients) == 1 and is_contact_list(batch.recipients[0]):
            return [await self._send_campaign(batch)]
        numbers = list(dict.fromkeys(_digits(r) for r in batch.recipients))
        if not numbers:
            return []
        body = {
            "recipient": ",".join(numbers),
            "sender_id": batch.sender_id,
            "type": "otp" if batch.sms_type == "otp" else "plain",  # otp: the priority route
            "message": batch.text,
        }
        response = await self._request("POST", SEND_PATH, json_body=body)
        envelope = self._envelope(response)
        if str(envelope.get("status", "")).strip().lower() == "success":
            by_number = self._success(numbers, envelope)
        else:
            by_number = self._failure(numbers, envelope, response)
        return [replace(by_number[_digits(r)], recipient=r) for r in batch.recipients]

    async def _send_campaign(self, batch: SmsBatch) -> RecipientResult:
        """Send to a DataFlows contact list: one campaign, produced by DataFlows itself.

        The answer only says the campaign was stored; which numbers got it is in DataFlows'
        campaign report (its uid is kept as the reference).
        """
        (recipient,) = batch.recipients
        body = {
            "contact_list_id": recipient.removeprefix(LIST_PREFIX),
            "sender_id": batch.sender_id,
            "type": "otp" if batch.sms_type == "otp" else "plain",
            "message": batch.text,
        }
        response = await self._request("POST", CAMPAIGN_PATH, json_body=body)
        envelope = self._envelope(response)
        said = self._redact(_text(envelope.get("message"))) or f"HTTP {response.status_code}"
        if str(envelope.get("status", "")).strip().lower() == "success":
            data = envelope.get("data")
            ref = _item_ref(data) if isinstance(data, dict) else None
            return RecipientResult(recipient, Outcome.SENT, detail=said, provider_ref=ref)
        rule = classify(said, response.status_code)
        verdict = rule.verdict if rule is not None else Verdict.REFUSED
        if verdict is Verdict.RECIPIENT or _EMPTY_LIST.search(said):
            # an empty list, or nothing in it DataFlows can send to
            return RecipientResult(recipient, Outcome.PERMANENT, detail=said)
        raise self.verdict_error(verdict, said, response)

    async def check_account(self) -> AccountStatus:
        """Ask for the balance: it needs a valid token and sends nothing.

        DataFlows documents ``/api/v3/profile/balance``; stock Ultimate SMS builds have
        ``/api/v3/balance``. The first that exists answers.
        """
        last = "no answer"
        for path in BALANCE_PATHS:
            response = await self._request("GET", path)
            if response.status_code == httpx.codes.NOT_FOUND:
                last = f"{path}: HTTP 404"
                continue  # no such route on this build (Laravel answers JSON 404s too)
            envelope = self._envelope(response)
            said = _text(envelope.get("message")) or f"HTTP {response.status_code}"
            if str(envelope.get("status", "")).strip().lower() != "success":
                rule = classify(said, response.status_code)
                verdict = rule.verdict if rule is not None else Verdict.REFUSED
                if verdict is Verdict.ACCOUNT or response.status_code == httpx.codes.UNAUTHORIZED:
                    raise self.transient(f"the token was refused: {said}", account=True)
                last = f"{path}: {said}"
                continue
            data = envelope.get("data")
            return AccountStatus(
                balance=_balance(data) if isinstance(data, dict) else None,
                detail=f"token accepted by {self.base_url}",
            )
        raise self.transient(f"the balance check failed ({last}): is provider.base_url right?")

    def _envelope(self, response: httpx.Response) -> dict[str, Any]:
        """Read the JSON object answer; redirects and non-JSON bodies are not answers."""
        status = response.status_code
        if response.is_redirect:
            location = self._redact(response.headers.get("Location", "(no Location)"))
            if urlsplit(location).path.rstrip("/").endswith("/login"):
                raise self.transient(
                    f"HTTP {status} redirect to the login page {location}: "
                    "the token was not accepted; check provider.token",
                    account=True,
                )
            raise self.transient(f"HTTP {status} redirect to {location}: check provider.base_url")
        try:
            parsed = response.json()
        except ValueError:
            parsed = None
        if not isinstance(parsed, dict):
            if status == httpx.codes.UNAUTHORIZED:
                raise self.transient(
                    f"HTTP 401: {self.excerpt(response)}; check provider.token", account=True
                )
            raise self.transient(
                f"HTTP {status} {response.reason_phrase}, not a JSON answer "
                f"(is provider.base_url right?): {self.excerpt(response)}"
            )
        return parsed

    def _success(self, numbers: list[str], envelope: dict[str, Any]) -> dict[str, RecipientResult]:
        """Per-number outcomes of a ``status: success`` answer."""
        message = self._redact(_text(envelope.get("message")))
        data = envelope.get("data")
        if isinstance(data, dict) and (
            "to" in data or any(k in data for k in _STATUS_KEYS) or len(numbers) == 1
        ):
            items = [data]
        elif isinstance(data, list):
            items = [item for item in data if isinstance(item, dict)]
        else:
            # No data (scheduled), or an opaque acknowledgement such as {"campaign_id": …}.
            ref = _item_ref(data) if isinstance(data, dict) else None
            detail = message or "accepted"
            return {n: _result(Outcome.SENT, detail, ref) for n in numbers}

        results: dict[str, RecipientResult] = {}
        for item in items:
            number = self._match(item, numbers, results)
            if number is None:
                continue
            status = _item_status(item)
            ref = _item_ref(item)
            if status is None:
                results[number] = _result(Outcome.SENT, message or "accepted", ref)
            elif is_accepted(status):
                results[number] = _result(Outcome.SENT, self._redact(status), ref)
            else:
                results[number] = _result(Outcome.PERMANENT, self._redact(status), ref)
        for number in numbers:
            if number not in results:
                detail = _about(number, message) or message or "skipped: not in DataFlows' answer"
                results[number] = _result(Outcome.PERMANENT, detail, None)
        return results

    @staticmethod
    def _match(
        item: dict[str, Any], numbers: list[str], done: dict[str, RecipientResult]
    ) -> str | None:
        """Find which of our numbers an item is about: exact digits, else national suffix.

        With one number sent, the first item is about it whatever its ``to`` says.
        """
        open_numbers = [n for n in numbers if n not in done]
        if len(numbers) == 1:
            return open_numbers[0] if open_numbers else None
        to = _digits(item.get("to", ""))
        if not to:
            return None
        if to in open_numbers:
            return to
        return suffix_match(to, open_numbers)

    def _failure(
        self, numbers: list[str], envelope: dict[str, Any], response: httpx.Response
    ) -> dict[str, RecipientResult]:
        """Classify an error answer; return per-number results only for number errors."""
        status = response.status_code
        said_first = _text(envelope.get("message"))
        # Laravel validation answers repeat the first error in ``errors``; add only the rest.
        extra = [e for e in _texts(envelope.get("errors")) if e not in said_first]
        message = self._redact(" ".join([said_first, *extra]).strip()) or self.excerpt(response)
        rule = classify(message, status)
        if rule is not None:
            verdict = rule.verdict
        else:
            verdict = Verdict.RETRY if httpx.codes.is_server_error(status) else Verdict.REFUSED
        hint = f" ({rule.hint})" if rule and rule.hint else ""
        said = f"HTTP {status}: {message}{hint}"
        if verdict is Verdict.RECIPIENT:
            if len(numbers) == 1:
                return {numbers[0]: _result(Outcome.PERMANENT, message, None)}
            named = {n: line for n in numbers if (line := _about(n, message))}
            if named:
                # Nothing was sent; the numbers not named are retried without the bad ones.
                return {
                    n: _result(Outcome.PERMANENT, named[n], None)
                    if n in named
                    else _result(Outcome.TRANSIENT, f"not sent: {message}", None)
                    for n in numbers
                }
            verdict = Verdict.REFUSED
        raise self.verdict_error(verdict, said, response)


_BALANCE_KEYS = ("remaining_unit", "sms_unit", "remaining_balance", "sms_credit_balance", "balance")


def _balance(data: dict[str, Any]) -> str | None:
    """The balance in the platform's words; builds name the field differently."""
    for key in _BALANCE_KEYS:
        value = data.get(key)
        if value is not None and str(value).strip():
            unit = (
                "units"
                if key in {"remaining_unit", "sms_unit"}
                else str(data.get("currency") or "")
            )
            text = f"{value} {unit}".strip()
            expires = data.get("expired_on")
            return f"{text} (expires {expires})" if expires else text
    return None


def _result(outcome: Outcome, detail: str, ref: str | None) -> RecipientResult:
    """Make a result keyed by digits; ``send`` puts the caller's own spelling back."""
    return RecipientResult(recipient="", outcome=outcome, detail=detail, provider_ref=ref)
