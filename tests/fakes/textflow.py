"""A fake TextFlow (textflow.me) API over real HTTP/1.1 on 127.0.0.1, any free port.

It follows ``provider-apis.md`` §3: every answer is the ``{ok, status, message, data}``
envelope with the HTTP status equal to the body's ``status`` (inferred there). Where the
notes say [?] the fake picks something and says so in a comment; the client must not rely
on those choices beyond what the notes allow.

    with FakeTextFlow(token="tf_live_…") as fake:
        ... point the client at fake.url ...
        fake.wait_for_sent(2)

Scripting (besides ``FakeHttpApi``'s ``fail_next``/``down``/``delay``/hooks):
``invalid_numbers`` (digits without "+"), ``balance`` (credits; ``None`` = unlimited),
``price`` (credits per SMS), ``packages`` (for /api/balance), ``rate_limit`` (requests
per minute).
"""

from __future__ import annotations

import re
import secrets
import time
from typing import TYPE_CHECKING, Any, NamedTuple

from fakes.http import FakeHttpApi, RecordedRequest, Reply, html_reply, json_reply

if TYPE_CHECKING:
    from collections.abc import Callable

DEFAULT_TOKEN = "tfFakeApiKey0123456789abcdefghijklmnopqrstuvwx"

MSG_SENT = "Message sent successfully"
MSG_INVALID_KEY = "Invalid API key"
MSG_UNKNOWN_KEY = "API key not found"
MSG_BAD_NUMBER = "Phone number is invalid"
MSG_NO_BALANCE = "Insufficient balance"  # [?] text and 402 proposed in the notes [I]
MSG_THROTTLED = "Too many requests"  # [?] TextFlow documents no rate limit
MSG_MISSING = "Missing required parameter: {}"  # [?] validation texts not documented

_E164 = re.compile(r"\+[1-9]\d{7,14}")
# [?] country_code is a free string in the vendor's own examples (ISO code or name).
_COUNTRIES = {"1": "US", "44": "GB", "61": "AU", "381": "RS"}


class SentSms(NamedTuple):
    """One SMS the fake "delivered"; ``number`` is digits without "+" as every fake records."""

    number: str
    message: str
    price: float
    timestamp: int


def _refuse(status: int, message: str, headers: dict[str, str] | None = None) -> Reply:
    return json_reply(status, {"ok": False, "status": status, "message": message}, headers)


class FakeTextFlow(FakeHttpApi):
    """The fake server. Attributes may be changed while it runs."""

    def __init__(self, token: str = DEFAULT_TOKEN) -> None:
        self.token = token
        self.invalid_numbers: set[str] = set()
        self.balance: float | None = None
        self.price = 0.05
        self.packages: dict[str, int] = {"USA Canada": 2100, "UK": 500}
        self.rate_limit: int | None = None
        super().__init__()

    # ---- the API ---------------------------------------------------------------------

    def _route(self, request: RecordedRequest) -> Reply:
        """Route, then throttle, then the key; [?] the real order is not documented."""
        path = request.path.rstrip("/") or "/"
        fields = request.body if isinstance(request.body, dict) else {}
        routes: dict[str, tuple[str, Callable[[], Reply]]] = {
            "/api/send-sms": ("POST", lambda: self._send(fields)),
            "/api/balance": ("GET", self._balance),
        }
        if path not in routes:
            return html_reply(404, "Not Found")  # [?] the site's own 404 page
        method, handler = routes[path]
        if request.method != method:
            return html_reply(405, "Method Not Allowed")  # [?]
        return self._throttle() or self._authenticate(request, path) or handler()

    def _throttle(self) -> Reply | None:
        """[?] A 429 with Retry-After, as a well-behaved API would; none is documented."""
        wait = self.minute_window(self.rate_limit)
        if wait is None:
            return None
        return _refuse(429, MSG_THROTTLED, {"Retry-After": str(wait)})

    def _authenticate(self, request: RecordedRequest, path: str) -> Reply | None:
        """Bearer key. [?] Which of the two documented texts TextFlow picks is unknown: here
        a missing or malformed header is "Invalid API key" (400), a well-formed unknown key
        "API key not found" (404). /api/balance refuses with a bare ``{"ok": false}`` [C]."""
        scheme, _, key = request.headers.get("authorization", "").partition(" ")
        key = key.strip()
        if scheme.lower() == "bearer" and secrets.compare_digest(key, self.token):
            return None
        if path == "/api/balance":
            return json_reply(400, {"ok": False})  # [?] its HTTP status is not documented
        if scheme.lower() != "bearer" or not key:
            return _refuse(400, MSG_INVALID_KEY)
        return _refuse(404, MSG_UNKNOWN_KEY)

    def _send(self, fields: dict[str, Any]) -> Reply:
        """JSON or form body [C]; a number as ``+E.164`` [C]."""
        number = str(fields.get("phone_number") or "").strip()
        text = str(fields.get("text") or "")
        for name, value in (("phone_number", number), ("text", text)):
            if not value:
                return _refuse(400, MSG_MISSING.format(name))
        digits = number[1:]
        if not _E164.fullmatch(number) or digits in self.invalid_numbers:
            return _refuse(400, MSG_BAD_NUMBER)
        with self._lock:
            if self.balance is not None:
                if self.balance < self.price:
                    return _refuse(402, MSG_NO_BALANCE)
                self.balance = round(self.balance - self.price, 5)
            timestamp = time.time_ns() // 1_000_000  # milliseconds [C]
            self.record_sent(SentSms(digits, text, self.price, timestamp))
        data = {
            "to": number,
            "content": text,
            "country_code": _country(digits),
            "price": self.price,
            "timestamp": timestamp,
        }
        return json_reply(200, {"ok": True, "status": 200, "message": MSG_SENT, "data": data})

    def _balance(self) -> Reply:
        """``credits`` is a string [C]; the fake shows "unlimited" as a large number [?]."""
        credits_left = 1000.0 if self.balance is None else self.balance
        return json_reply(
            200, {"ok": True, "credits": f"{credits_left:.5f}", "packages": dict(self.packages)}
        )


def _country(digits: str) -> str:
    return next((c for p, c in _COUNTRIES.items() if digits.startswith(p)), "")
