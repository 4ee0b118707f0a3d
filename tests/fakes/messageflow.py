"""A fake MessageFlow SMS API v2.1 over real HTTP/1.1 on 127.0.0.1, any free port.

It follows ``provider-apis.md`` §2: both headers checked exactly (the raw key in
``Authorization``, no ``Bearer``; the ``Application-Key``), the ``{data, meta}`` success
envelope and the ``{errors, meta}`` error envelope. Where the notes say [?] the fake picks
something and says so in a comment.

    with FakeMessageFlow(token="…", application_key="…") as fake:
        ... point the client at fake.url ...
        fake.wait_for_sent(2)

Scripting (besides the base's ``fail_next``, ``down``, ``delay`` and hooks; a 429 is
``fail_next(status=429, headers={"Retry-After": "5"})``): ``invalid_numbers`` (digits
without ``+``), ``senders`` (registered sender IDs; ``None`` accepts any), ``balance``
(account money; ``None``: unlimited), ``transactional_sms`` (the key's permission),
``long_running`` (answer a new send with 202 and this ``Retry-After``).
"""

from __future__ import annotations

import json
import math
import re
import secrets
import time
from email.utils import formatdate
from typing import TYPE_CHECKING, Any, NamedTuple

from fakes.http import FakeHttpApi, RecordedRequest, Reply, html_reply, json_reply

if TYPE_CHECKING:
    from collections.abc import Callable

DEFAULT_TOKEN = "mfAuthKey0123456789abcdefABCDEF"
DEFAULT_APPLICATION_KEY = "mfAppKey9876543210zyxwvuZYXWVU"
PRICE_PER_PART = 0.09  # [?] smsPrice's unit and currency codes were not found
MSG_UNAUTHORIZED = "Authorization data is invalid"  # [C]
MSG_INVALID_NUMBER = "phoneNumbers: invalid phone number"  # [C] the documented 422 example
MSG_UNKNOWN_SENDER = "sender: sender is not registered"  # [?]
MSG_NO_FUNDS = "Insufficient funds on the account"  # [?]
MSG_NO_PERMISSION = "The API key has no permission for Transactional SMS"  # [?]
CODE_VALIDATION = "E-4-004"  # [C] for an invalid phone number; reused for all validation [?]

_E164 = re.compile(r"\+\d{8,15}")  # [?] whether MessageFlow also takes numbers without "+"


class SentSms(NamedTuple):
    """One SMS the fake accepted; compares equal to a plain tuple."""

    number: str  # digits, no "+"
    message: str
    sender: str
    external_id: str


def _parts(text: str) -> int:
    """Billing parts per the GSM-7/UCS-2 tables, roughly (enough for a fake)."""
    single, multi = (160, 153) if all(ord(c) < 128 for c in text) else (70, 67)
    return 1 if len(text) <= single else math.ceil(len(text) / multi)


class FakeMessageFlow(FakeHttpApi):
    """The fake server. Attributes may be changed while it runs; lists are read as snapshots."""

    def __init__(
        self,
        token: str = DEFAULT_TOKEN,
        application_key: str = DEFAULT_APPLICATION_KEY,
    ) -> None:
        self.token = token
        self.application_key = application_key
        self.invalid_numbers: set[str] = set()
        self.senders: set[str] | None = None
        self.balance: float | None = None
        self.transactional_sms = True
        self.long_running: float | None = None
        self._pending: dict[str, float] = {}  # request body → when it is ready (202 mode)
        super().__init__()

    # ---- the API ---------------------------------------------------------------------

    def _route(self, request: RecordedRequest) -> Reply:
        path = request.path.rstrip("/") or "/"
        routes: dict[tuple[str, str], Callable[[], Reply]] = {
            ("POST", "/v2.1/sms"): lambda: self._send(request.body),
            ("OPTIONS", "/v2.1/sms/senders"): self._senders,
            ("GET", "/v2.1/sms/statuses"): self._statuses,
        }
        handler = routes.get((request.method, path))
        if handler is None:
            known = {p for _, p in routes}
            # [?] the real API's answer to an unknown path or method was not found
            return html_reply(405 if path in known else 404, "Not Found")
        return self._authenticate(request) or handler()

    def _meta(self, status: int, *, data: int = 0, errors: int = 0, **more: Any) -> dict[str, Any]:
        meta: dict[str, Any] = {
            "numberOfErrors": errors,
            "numberOfData": data,
            "status": status,
            "uniqId": secrets.token_hex(5),
            **more,
        }
        if self.balance is not None:
            meta["accountBalance"] = f"{self.balance:.2f}"  # [?] only seen on send answers
        return meta

    def _errors(self, status: int, errors: list[dict[str, Any]]) -> Reply:
        payload = {"errors": errors, "meta": self._meta(status, errors=len(errors))}
        return json_reply(status, payload)

    def _authenticate(self, request: RecordedRequest) -> Reply | None:
        """[C] Both headers, exactly; anything else is 401 "Authorization data is invalid"."""
        key = request.headers.get("authorization", "")
        app = request.headers.get("application-key", "")
        if secrets.compare_digest(key, self.token) and secrets.compare_digest(
            app, self.application_key
        ):
            return None
        error = {"title": "Unauthorized", "message": MSG_UNAUTHORIZED, "code": "E-1-001"}  # [?]
        return self._errors(401, [error])

    def _send(self, body: Any) -> Reply:
        refused = self._refuse(body)
        if refused is not None:
            return refused
        if self.long_running is not None and not self._ready(body):
            return json_reply(
                202,
                {"meta": self._meta(202)},
                {
                    "Retry-After": f"{self.long_running:g}",
                    "Expires": formatdate(time.time() + 3600, usegmt=True),
                },
            )
        sender, message = str(body["sender"]), str(body["message"])
        external_id = str(body.get("externalId") or "")
        valid, bad = [], []
        for raw in dict.fromkeys(str(n) for n in body["phoneNumbers"]):  # [?] duplicates once
            digits = raw.removeprefix("+")
            if _E164.fullmatch(raw) and digits not in self.invalid_numbers:
                valid.append(digits)
            else:
                bad.append(_validation("phoneNumbers", raw, MSG_INVALID_NUMBER))
        if not valid:
            return self._errors(422, bad)
        parts = _parts(message)
        if not self._charge(parts * len(valid)):
            return self._errors(403, [{"title": "Forbidden", "message": MSG_NO_FUNDS}])  # [?]
        now = int(time.time())
        data = []
        for digits in valid:
            self.record_sent(SentSms(digits, message, sender, external_id))
            data.append(
                {
                    "sender": sender,
                    "phoneNumber": f"+{digits}",
                    "externalId": external_id,
                    "status": 0,  # [?] numeric status meanings were not found
                    "statusTime": now,
                    "createTime": now,
                    "smsPrice": round(PRICE_PER_PART * parts * 100),
                    "currency": 1,
                    "numberOfParts": parts,
                }
            )
        meta = self._meta(
            200, data=len(data), errors=len(bad), sentSms=len(data), notSentSms=len(bad)
        )
        payload: dict[str, Any] = {"data": data, "meta": meta}
        if bad:
            payload["errors"] = bad  # [I] a partial success carries errors beside data
        return json_reply(200, payload)

    def _refuse(self, body: Any) -> Reply | None:
        """Whole-request refusals: validation, the sender, the key's permission."""
        if not isinstance(body, dict):
            return self._errors(400, [_validation("body", "", "body: invalid JSON")])  # [?]
        sender = body.get("sender")
        message = body.get("message")
        numbers = body.get("phoneNumbers")
        problems = []
        if not isinstance(sender, str) or not sender.strip():
            problems.append(_validation("sender", sender, "sender: this value is required"))
        if not isinstance(message, str) or not message:
            problems.append(_validation("message", message, "message: this value is required"))
        if not isinstance(numbers, list) or not numbers:
            problems.append(
                _validation("phoneNumbers", numbers, "phoneNumbers: this value is required")
            )
        if problems:
            return self._errors(422, problems)
        if self.senders is not None and sender not in self.senders:
            return self._errors(422, [_validation("sender", sender, MSG_UNKNOWN_SENDER)])
        if not self.transactional_sms:
            return self._errors(403, [{"title": "Forbidden", "message": MSG_NO_PERMISSION}])
        return None

    def _ready(self, body: dict[str, Any]) -> bool:
        """Long-running mode: the first sight of a request starts it; a repeat collects it.

        [C] "repeat the request after the delay"; [?] how MessageFlow recognises the repeat:
        here, by an identical body.
        """
        assert self.long_running is not None
        key = json.dumps(body, sort_keys=True)
        now = time.monotonic()
        with self._lock:
            due = self._pending.get(key)
            if due is None:
                self._pending[key] = now + self.long_running
                return False
            if now < due:
                return False
            del self._pending[key]
            return True

    def _charge(self, cost_parts: int) -> bool:
        with self._lock:
            if self.balance is None:
                return True
            cost = cost_parts * PRICE_PER_PART
            if self.balance + 1e-9 < cost:
                return False
            self.balance = round(self.balance - cost, 2)
            return True

    def _senders(self) -> Reply:
        """[C] ``OPTIONS /v2.1/sms/senders``; [?] item shape; 404 for none, as list endpoints."""
        names = sorted(self.senders or ())
        if not names:
            error = {"title": "Not Found", "message": "No results"}  # [?]
            return self._errors(404, [error])
        data = [{"sender": name} for name in names]
        return json_reply(200, {"data": data, "meta": self._meta(200, data=len(data))})

    def _statuses(self) -> Reply:
        """[C] ``GET /v2.1/sms/statuses``: 404 when there is nothing; [?] item shape."""
        sent = self.sent[-1:]
        if not sent:
            return self._errors(404, [{"title": "Not Found", "message": "No results"}])
        data = [
            {"phoneNumber": f"+{s.number}", "externalId": s.external_id, "status": "Delivered"}
            for s in sent
        ]
        return json_reply(200, {"data": data, "meta": self._meta(200, data=len(data))})


def _validation(parameter: str, value: object, message: str) -> dict[str, Any]:
    """[C] The documented validation error item."""
    return {
        "title": "Validation error",
        "message": message,
        "code": CODE_VALIDATION,
        "meta": {"source": "body", "parameter": parameter, "value": value},
    }
