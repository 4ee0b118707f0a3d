"""A fake DataFlows ("Ultimate SMS" v3) API over real HTTP/1.1 on 127.0.0.1, any free port.

It runs in its own threads (``ThreadingHTTPServer``), not in a test's event loop, so the
same fake serves in-process tests and a daemon started as a subprocess. It follows
``provider-apis.md`` §1: the ``stock`` mode answers auth/validation/throttle errors with
HTTP 200 (the stock platform's quirk), ``strict`` with 401/422/429; both use 403/404 for
send failures as the table there shows. Where the notes say [?] the fake picks something
and says so in a comment.

    with FakeDataFlows(token="22|abc…") as fake:
        ... point the client at fake.url ...
        fake.wait_for_sent(2)

Scripting: ``fail_next(count, status=…, body=…)``, ``down = True`` (every request → 503),
``delay`` (seconds before each answer), ``invalid_numbers`` (digits), ``approved_senders``,
``balance``, ``rate_limit`` (requests per minute).
"""

from __future__ import annotations

import math
import re
import secrets
from datetime import datetime
from typing import TYPE_CHECKING, Any, ClassVar, Literal, NamedTuple

from fakes.http import FakeHttpApi, RecordedRequest, Reply, html_reply, json_reply

if TYPE_CHECKING:
    from collections.abc import Callable

DEFAULT_TOKEN = "22|fakeDataFlowsToken0123456789abcdefghijklm"
MAX_BULK = 100
SMS_TYPES = ("plain", "unicode", "voice", "mms", "whatsapp", "viber", "otp")

MSG_UNAUTHENTICATED = "Unauthenticated."
MSG_THROTTLED = "Too Many Attempts."
MSG_DELIVERED = "Your message was successfully delivered"
MSG_SCHEDULED = "Your message was successfully scheduled"  # [?] exact text not found
MSG_TOO_MANY = f"You cannot send more than {MAX_BULK} SMS in a single request."
MSG_NOT_A_NUMBER = "The string supplied did not seem to be a phone number."
MSG_BAD_TYPE = "Please insert valid sms type called plain, unicode, voice, mms, and whatsapp."
MSG_LIMIT = "You have exceeded your sending limit."
MSG_NO_VALID_NUMBER = "Valid phone number not found. Please insert at least one valid phone number"

_STRIP = re.compile(r"[+()\-\s]")
_UID_PATH = re.compile(r"/api/v3/sms/([0-9a-f]{13})")

Mode = Literal["stock", "strict"]


class SentSms(NamedTuple):
    """One SMS the fake "delivered"; compares equal to a plain tuple."""

    number: str
    message: str
    sender_id: str
    uid: str


_json = json_reply
_html = html_reply


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> Reply:
    return _json(status, {"status": "error", "message": message}, headers)


def _success(message: str | None, data: Any = None, *, with_data: bool = True) -> Reply:
    payload: dict[str, Any] = {"status": "success", "message": message}
    if with_data:
        payload["data"] = data
    return _json(200, payload)


def _sms_count(text: str) -> int:
    """Parts as the platform bills them; a rough GSM-7/UCS-2 split is enough for a fake."""
    single, multi = (160, 153) if all(ord(c) < 128 for c in text) else (70, 67)
    return 1 if len(text) <= single else math.ceil(len(text) / multi)


class FakeDataFlows(FakeHttpApi):
    """The fake server. Attributes may be changed while it runs; lists are read as snapshots."""

    bulk_error_separator: ClassVar[str] = "\n"  # [?] how the platform joins skipped numbers' errors

    def __init__(self, token: str = DEFAULT_TOKEN, *, mode: Mode = "stock") -> None:
        self.token = token
        self.mode: Mode = mode
        self.invalid_numbers: set[str] = set()
        self.approved_senders: set[str] | None = None
        self.balance: int | None = None
        self.rate_limit: int | None = None
        self.contact_lists: dict[str, list[str]] = {}  # group uid → numbers (digits)
        self._scheduled: list[SentSms] = []
        self._uids: set[str] = set()
        super().__init__()

    @property
    def scheduled(self) -> list[SentSms]:
        """SMS accepted with a ``schedule_time`` (not delivered)."""
        with self._lock:
            return list(self._scheduled)

    # ---- the API ---------------------------------------------------------------------

    def _route(self, request: RecordedRequest) -> Reply:
        """Laravel's order: route match, then ``throttle:api``, then ``auth:sanctum``."""
        path = request.path.rstrip("/") or "/"
        if path == "/login":
            return _html(200, "Login")
        fields = request.body if isinstance(request.body, dict) else {}
        uid = _UID_PATH.fullmatch(path)
        routes: dict[str, tuple[tuple[str, ...], Callable[[], Reply]]] = {
            # GET /sms/send is DataFlows' documented "alternative method".
            "/api/v3/sms/send": (("POST", "GET"), lambda: self._send(fields)),
            "/api/v3/sms/campaign": (("POST",), lambda: self._campaign(fields)),
            "/api/v3/balance": (("GET",), self._balance),
            "/api/v3/profile/balance": (("GET",), self._balance),
            "/api/v3/me": (("GET",), self._profile),
            "/api/v3/profile/me": (("GET",), self._profile),
        }
        if uid:
            routes[path] = (("GET",), lambda: self._view(uid.group(1)))
        if path not in routes:
            return _html(404, "Not Found")
        methods, handler = routes[path]
        if request.method not in methods:
            return _html(405, "Method Not Allowed")
        return self._throttle() or self._authenticate(request) or handler()

    def _status(self, stock: int, strict: int) -> int:
        return stock if self.mode == "stock" else strict

    def _throttle(self) -> Reply | None:
        """Laravel's ``throttle:api`` (runs before auth); stock drops the Retry-After header."""
        wait = self.minute_window(self.rate_limit)
        if wait is None:
            return None
        if self.mode == "stock":
            return _error(200, MSG_THROTTLED)
        headers = {
            "Retry-After": str(wait),
            "X-RateLimit-Limit": str(self.rate_limit),
            "X-RateLimit-Remaining": "0",
        }
        return _error(429, MSG_THROTTLED, headers)

    def _authenticate(self, request: RecordedRequest) -> Reply | None:
        """Sanctum: a wrong token without ``Accept: application/json`` redirects to /login."""
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and secrets.compare_digest(token.strip(), self.token):
            return None
        if "json" not in request.headers.get("accept", ""):
            return _html(302, f"Redirecting to {self.url}/login", {"Location": f"{self.url}/login"})
        return _error(self._status(200, 401), MSG_UNAUTHENTICATED)

    def _campaign(self, fields: dict[str, Any]) -> Reply:
        """Send to contact groups (comma-separated uids), as §1.6 describes."""
        uids = [u.strip() for u in str(fields.get("contact_list_id") or "").split(",") if u.strip()]
        message = str(fields.get("message") or "")
        sender_id = str(fields.get("sender_id") or "")
        if not uids or not message:
            return _error(self._status(200, 422), "The contact list id field is required.")
        unknown = [u for u in uids if u not in self.contact_lists]
        if unknown:
            return _error(404, "Invalid contact group")  # [?] locale.campaign.invalid_group
        numbers = [n for u in uids for n in self.contact_lists[u] if self._valid(n)]
        if not numbers:
            return _error(404, MSG_NO_VALID_NUMBER)
        for number in numbers:
            self._record(number, message, sender_id)
        uid = secrets.token_hex(7)[:13]
        return _success(
            "Your campaign successfully store and is being produced in the background. "
            "Track the process in the Reports -> Campaigns Menu",
            {"id": 12, "uid": uid, "status": "queued", "message": message},
        )

    def _send(self, fields: dict[str, Any]) -> Reply:  # noqa: C901, PLR0911, PLR0912  one branch per documented answer
        recipient = str(fields.get("recipient") or "").strip()
        message = str(fields.get("message") or "")
        sender_id = str(fields.get("sender_id") or "")
        sms_type = str(fields.get("type") or "plain")
        schedule = fields.get("schedule_time")
        problems = []
        if not recipient:
            problems.append("The recipient field is required.")
        if not message:
            problems.append("The message field is required.")
        if schedule is not None and not _valid_schedule(str(schedule)):
            problems.append("The schedule time does not match the format Y-m-d H:i.")
        if problems:
            more = len(problems) - 1
            text = problems[0] + (f" (and {more} more error{'s' * (more > 1)})" if more else "")
            return _error(self._status(200, 422), text)
        if sms_type not in SMS_TYPES:
            return _error(404, MSG_BAD_TYPE)
        if self.approved_senders is not None and sender_id not in self.approved_senders:
            return _error(404, f"Originator {sender_id} is not authorized to send this message")
        if self.balance == 0:
            return _error(404, MSG_LIMIT)
        parts = _sms_count(message)

        if "," not in recipient:
            number = _STRIP.sub("", recipient)
            if not number.isdigit():
                return _error(403, MSG_NOT_A_NUMBER)
            if not self._valid(number):
                return _error(403, f"{number} is a invalid phone number")
            if not self._charge(parts):
                return _error(403, self._poor(parts))
            if schedule is not None:
                self._record(number, message, sender_id, scheduled=True)
                return _success(MSG_SCHEDULED, with_data=False)
            uid = self._record(number, message, sender_id)
            return _success(
                MSG_DELIVERED, _item(uid, number, sender_id, message, parts=parts, key="status")
            )

        raw = [_STRIP.sub("", p) for p in recipient.split(",")]
        raw = [p for p in raw if p]
        if len(raw) > MAX_BULK:
            return _error(403, MSG_TOO_MANY)
        numbers = list(dict.fromkeys(raw))
        errors = []
        valid = []
        for number in numbers:
            if not number.isdigit():
                errors.append(MSG_NOT_A_NUMBER)
            elif not self._valid(number):
                errors.append(f"{number} is a invalid phone number")
            else:
                valid.append(number)
        if valid and not self._charge(parts * len(valid)):
            return _error(403, self._poor(parts * len(valid)))
        summary = self.bulk_error_separator.join(errors) if errors else None
        if schedule is not None:
            for number in valid:
                self._record(number, message, sender_id, scheduled=True)
            return _success(summary or MSG_SCHEDULED, with_data=False)
        data = [
            _item(
                self._record(n, message, sender_id),
                n,
                sender_id,
                message,
                parts=parts,
                key="customer_status",
            )
            for n in valid
        ]
        for position, item in enumerate(data, start=1):
            item["id"] = position
        return _success(summary or MSG_DELIVERED, data)

    def _valid(self, number: str) -> bool:
        return 8 <= len(number) <= 15 and number not in self.invalid_numbers

    def _charge(self, units: int) -> bool:
        with self._lock:
            if self.balance is None:
                return True
            if self.balance < units:
                return False
            self.balance -= units
            return True

    def _poor(self, units: int) -> str:
        # (sic) the platform's text has no space after the full stop
        return (
            "There is not enough balance available to send this message."
            f"You have {self.balance} of the {units}"
        )

    def _record(self, number: str, message: str, sender_id: str, *, scheduled: bool = False) -> str:
        with self._lock:
            uid = secrets.token_hex(7)[:13]
            while uid in self._uids:
                uid = secrets.token_hex(7)[:13]
            self._uids.add(uid)
            (self._scheduled if scheduled else self._sent).append(
                SentSms(number, message, sender_id, uid)
            )
            self._lock.notify_all()
            return uid

    def _view(self, uid: str) -> Reply:
        with self._lock:
            found = next((s for s in self._sent if s.uid == uid), None)
        if found is None:
            return _error(
                self._status(200, 404), f"No query results for model [App\\Models\\Reports] {uid}"
            )
        data = _item(
            uid,
            found.number,
            found.sender_id,
            found.message,
            parts=_sms_count(found.message),
            key="customer_status",
        )
        del data["sms_count"]
        return _success(None, data)

    def _balance(self) -> Reply:
        remaining = "Unlimited" if self.balance is None else f"{self.balance:,}"
        return _success(None, {"remaining_unit": remaining, "expired_on": "2099-12-31 23:59:59"})

    def _profile(self) -> Reply:
        return _success(
            None,
            {
                "uid": "6147812b6c15a",
                "api_token": self.token,  # the stock platform really returns it
                "first_name": "Test",
                "last_name": "Account",
                "email": "test@example.com",
                "locale": "en",
                "timezone": "Australia/Sydney",
            },
        )


def _item(
    uid: str, number: str, sender: str, message: str, *, parts: int, key: str
) -> dict[str, Any]:
    return {
        "uid": uid,
        "to": number,
        "from": sender,
        "message": message,
        key: "Delivered",
        "cost": str(parts),
        "sms_count": parts,
    }


def _valid_schedule(value: str) -> bool:
    try:
        datetime.strptime(value, "%Y-%m-%d %H:%M")  # noqa: DTZ007  the account's timezone, not ours
    except ValueError:
        return False
    return True
