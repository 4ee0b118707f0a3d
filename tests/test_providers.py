"""Providers against httpx.MockTransport (no sockets): request shape, every documented answer,
transport failures, Retry-After, token secrecy, the outbox file, the PROVIDERS registry."""

from __future__ import annotations

import asyncio
import json
import traceback
import typing
from datetime import UTC, datetime
from email.utils import format_datetime

import httpx
import pytest
from pydantic import SecretStr

from mail2sms.config import ProviderConfig, ProviderKind
from mail2sms.errors import (
    ConfigError,
    PermanentProviderError,
    ProviderAccountError,
    TransientProviderError,
)
from mail2sms.models import Outcome, SmsBatch
from mail2sms.providers import PROVIDERS, build_provider
from mail2sms.providers.base import RETRY_AFTER_MAX, body_excerpt, parse_retry_after
from mail2sms.providers.dataflows import ERROR_RULES, DataFlowsProvider, Verdict, classify
from mail2sms.providers.outbox import OutboxProvider

if typing.TYPE_CHECKING:
    from pathlib import Path

TOKEN = "22|mockSecretToken0123456789ABCDEFGHIJKLMNOP"
SECRET = TOKEN.split("|")[1]
A, B, C, D = "+61412345678", "+61498765432", "+61411111111", "+61422222222"


def batch(*recipients: str, text: str = "Backup finished", sender: str = "MyBrand") -> SmsBatch:
    return SmsBatch(queue_id="q1", recipients=recipients or (A,), text=text, sender_id=sender)


class Api:
    """A MockTransport handler that answers every request the same way and records them."""

    def __init__(self, status=200, json_body=None, text=None, headers=None, exc=None):
        self.status, self.json_body, self.text = status, json_body, text
        self.headers, self.exc = headers or {}, exc
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if self.exc is not None:
            raise self.exc
        if self.json_body is not None:
            return httpx.Response(self.status, json=self.json_body, headers=self.headers)
        return httpx.Response(self.status, text=self.text or "", headers=self.headers)


async def send(api: Api, *recipients: str, base_url: str | None = None, **kw):
    async with httpx.AsyncClient(transport=httpx.MockTransport(api)) as client:
        provider = DataFlowsProvider(client=client, token=TOKEN, base_url=base_url, timeout=5)
        return await provider.send(batch(*recipients, **kw))


async def failure(api: Api, *recipients: str) -> Exception:
    with pytest.raises(Exception) as caught:  # noqa: PT011  the test inspects the type itself
        await send(api, *recipients)
    return caught.value


def delivered(uid="65f1c0a2b3d4e", to="61412345678", status="Delivered"):
    data = {"uid": uid, "to": to, "from": "MyBrand", "message": "Hi", "status": status}
    return {"status": "success", "message": "Your message was successfully delivered", "data": data}


# ---- request shape --------------------------------------------------------------------


@pytest.mark.anyio
async def test_request_shape_single():
    api = Api(json_body=delivered())
    await send(api, A, text="Grüße ✓", sender="Alarm")
    (request,) = api.requests
    assert request.method == "POST"
    assert str(request.url) == "https://sms.dataflows.com.au/api/v3/sms/send"
    assert request.headers["authorization"] == f"Bearer {TOKEN}"
    assert request.headers["accept"] == "application/json"
    assert request.headers["content-type"] == "application/json"
    assert json.loads(request.content) == {
        "recipient": "61412345678",
        "sender_id": "Alarm",
        "type": "plain",
        "message": "Grüße ✓",
    }


@pytest.mark.anyio
async def test_request_shape_bulk_joins_digits_with_commas():
    api = Api(json_body={"status": "success", "message": "ok"})
    await send(api, A, B, C)
    body = json.loads(api.requests[0].content)
    assert body["recipient"] == "61412345678,61498765432,61411111111"


@pytest.mark.anyio
async def test_base_url_from_config_overrides_the_default():
    api = Api(json_body=delivered())
    config = ProviderConfig(
        kind="dataflows", token=SecretStr(TOKEN), base_url="http://127.0.0.1:9/sub/", timeout=3
    )
    async with httpx.AsyncClient(transport=httpx.MockTransport(api)) as client:
        provider = build_provider(config, client)
        assert isinstance(provider, DataFlowsProvider)
        assert provider.timeout == 3
        await provider.send(batch(A))
    assert str(api.requests[0].url) == "http://127.0.0.1:9/sub/api/v3/sms/send"


# ---- classification of every documented answer -----------------------------------------

# (message, stock HTTP, strict HTTP, verdict) — provider-apis.md §1.1 and §1.2.
DOCUMENTED = [
    ("Unauthenticated.", 200, 401, Verdict.ACCOUNT),
    ("You do not have permission to access API", 403, 403, Verdict.ACCOUNT),
    ("This action is unauthorized.", 200, 403, Verdict.ACCOUNT),
    (
        "There is not enough balance available to send this message.You have 0.2 of the 1",
        403,
        403,
        Verdict.ACCOUNT,
    ),
    ("Insufficient SMS credits. You need 2 credits but have 1.", 403, 403, Verdict.ACCOUNT),
    ("You have exceeded your sending limit.", 404, 404, Verdict.ACCOUNT),
    ("Purchased plan is not active. Please contact support team.", 404, 404, Verdict.ACCOUNT),
    ("No active subscription", 404, 404, Verdict.ACCOUNT),
    ("No sending server available for your subscribed plan", 403, 403, Verdict.ACCOUNT),
    ("Sorry! This option is not available in demo mode", 200, 404, Verdict.ACCOUNT),
    ("Too Many Attempts.", 200, 429, Verdict.RETRY),
    ("Something went wrong. Please try again", 403, 403, Verdict.RETRY),
    ("61412345678 is a invalid phone number", 403, 403, Verdict.RECIPIENT),
    ("The string supplied did not seem to be a phone number.", 403, 403, Verdict.RECIPIENT),
    ("Invalid country calling code", 403, 403, Verdict.RECIPIENT),
    (
        (
            "Permission to send an SMS has not been enabled for the region indicated by the "
            "'To' number: 61412345678"
        ),
        403,
        403,
        Verdict.RECIPIENT,
    ),
    ("Number contains in the blacklist", 403, 403, Verdict.RECIPIENT),
    ("Originator MyBrand is not authorized to send this message", 404, 404, Verdict.REFUSED),
    ("Originator 61400000000 is not capable to send plain sms", 404, 404, Verdict.REFUSED),
    ("locale.block_senderid.sender_id_blocked", 404, 404, Verdict.REFUSED),
    ("Your message contains spam words.", 404, 404, Verdict.REFUSED),
    (
        "Please insert valid sms type called plain, unicode, voice, mms, and whatsapp.",
        404,
        404,
        Verdict.REFUSED,
    ),
    ("You cannot send more than 100 SMS in a single request.", 403, 403, Verdict.REFUSED),
    ("The recipient field is required.", 200, 422, Verdict.REFUSED),
    ("The message field is required. (and 1 more error)", 200, 422, Verdict.REFUSED),
    # Texts not in the table: decided by the HTTP status rows, then the fallback.
    ("Token has expired", 401, 401, Verdict.ACCOUNT),
    ("The given data was invalid.", 422, 422, Verdict.REFUSED),
    ("Request Timeout", 408, 408, Verdict.RETRY),
    ("Slow down", 429, 429, Verdict.RETRY),
    ("Rejected by the upstream gateway", 403, 403, Verdict.REFUSED),
    ("Rejected by the upstream gateway", 200, 200, Verdict.REFUSED),
    ("Server Error", 500, 503, Verdict.RETRY),
]
CASES = [
    pytest.param(message, status, verdict, id=f"{mode}-{status}-{message[:40]}")
    for message, stock, strict, verdict in DOCUMENTED
    for mode, status in (("stock", stock), ("strict", strict))
]


def verdict_of(message: str, status: int) -> Verdict:
    rule = classify(message, status)
    if rule is not None:
        return rule.verdict
    return Verdict.RETRY if status >= 500 else Verdict.REFUSED


@pytest.mark.parametrize(("message", "status", "verdict"), CASES)
def test_classify_documented_answers(message, status, verdict):
    assert verdict_of(message, status) is verdict


@pytest.mark.parametrize("rule", ERROR_RULES, ids=lambda r: r.pattern or f"HTTP {r.http_status}")
def test_every_table_row_decides_some_documented_answer(rule):
    deciding = [
        (m, s)
        for m, stock, strict, _ in DOCUMENTED
        for s in {stock, strict}
        if classify(m, s) is rule
    ]
    assert deciding, f"no documented answer reaches {rule}"


@pytest.mark.anyio
@pytest.mark.parametrize(("message", "status", "verdict"), CASES)
async def test_send_maps_each_documented_error(message, status, verdict):
    api = Api(status=status, json_body={"status": "error", "message": message})
    if verdict is Verdict.RECIPIENT:
        (result,) = await send(api, A)
        assert result.recipient == A
        assert result.outcome is Outcome.PERMANENT
        assert result.detail == message
        return
    exc = await failure(api, A)
    expected = {
        Verdict.ACCOUNT: ProviderAccountError,
        Verdict.RETRY: TransientProviderError,
        Verdict.REFUSED: PermanentProviderError,
    }[verdict]
    assert type(exc) is expected
    assert str(exc).startswith("dataflows: ")
    assert str(status) in str(exc)
    if status not in {408, 429} and status < 500:
        assert message in str(exc)


@pytest.mark.anyio
async def test_laravel_validation_body_lists_every_error_once():
    body = {
        "message": "The recipient field is required. (and 1 more error)",
        "errors": {
            "recipient": ["The recipient field is required."],
            "message": ["The message field is required."],
        },
    }
    exc = await failure(Api(status=422, json_body=body), A)
    assert isinstance(exc, PermanentProviderError)
    assert str(exc).count("The recipient field is required.") == 1
    assert "The message field is required." in str(exc)


# ---- success answers --------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("status", "outcome"),
    [
        ("Delivered", Outcome.SENT),
        ("Delivered|65f1c0a2b3d4e", Outcome.SENT),
        ("Enroute", Outcome.SENT),
        ("Accepted", Outcome.SENT),
        ("Undelivered", Outcome.PERMANENT),
        ("Not Delivered", Outcome.PERMANENT),
        ("Rejected", Outcome.PERMANENT),
        ("Failed: Invalid destination", Outcome.PERMANENT),
    ],
)
async def test_single_success_reads_the_customer_status(status, outcome):
    (result,) = await send(Api(json_body=delivered(status=status)), A)
    assert result.outcome is outcome
    assert result.provider_ref == "65f1c0a2b3d4e"
    assert result.detail == status


@pytest.mark.anyio
async def test_single_success_with_customer_status_key_and_any_http_code():
    body = {
        "status": "success",
        "data": {"uid": "65f1c0a2b3d4e", "to": "0412345678", "customer_status": "Delivered"},
    }
    (result,) = await send(Api(status=201, json_body=body), A)
    assert (result.outcome, result.provider_ref) == (Outcome.SENT, "65f1c0a2b3d4e")


@pytest.mark.anyio
async def test_bulk_results_per_number_including_skipped_and_national_form():
    body = {
        "status": "success",
        "message": "61411111111 is a invalid phone number",
        "data": [
            {"uid": "aaaaaaaaaaaaa", "to": "61412345678", "customer_status": "Delivered"},
            {"uid": "bbbbbbbbbbbbb", "to": "0498765432", "customer_status": "Enroute"},
            {"uid": "ccccccccccccc", "to": "61422222222", "customer_status": "Rejected"},
            {"uid": "ddddddddddddd", "to": "61400000000", "customer_status": "Delivered"},
        ],
    }
    results = await send(Api(json_body=body), A, B, C, D)
    assert [r.recipient for r in results] == [A, B, C, D]
    assert [(r.outcome, r.provider_ref) for r in results] == [
        (Outcome.SENT, "aaaaaaaaaaaaa"),
        (Outcome.SENT, "bbbbbbbbbbbbb"),
        (Outcome.PERMANENT, None),
        (Outcome.PERMANENT, "ccccccccccccc"),
    ]
    assert results[2].detail == "61411111111 is a invalid phone number"
    assert results[3].detail == "Rejected"


@pytest.mark.anyio
@pytest.mark.parametrize("separator", ["\n", "<br>", "; "])
async def test_skipped_numbers_get_their_own_error_line(separator):
    lines = [
        "61411111111 is a invalid phone number",
        (
            "Permission to send an SMS has not been enabled for the region indicated by the "
            "'To' number: 61422222222"
        ),
    ]
    body = {
        "status": "success",
        "message": separator.join(lines),
        "data": [{"uid": "aaaaaaaaaaaaa", "to": "61412345678", "customer_status": "Delivered"}],
    }
    results = await send(Api(json_body=body), A, C, D)
    assert [r.outcome for r in results] == [Outcome.SENT, Outcome.PERMANENT, Outcome.PERMANENT]
    assert results[1].detail == lines[0]
    assert results[2].detail == lines[1]


@pytest.mark.anyio
async def test_skipped_number_without_a_named_line_gets_the_whole_message():
    body = {
        "status": "success",
        "message": "The string supplied did not seem to be a phone number.",
        "data": [],
    }
    results = await send(Api(json_body=body), A, B)
    assert {r.outcome for r in results} == {Outcome.PERMANENT}
    assert results[0].detail == "The string supplied did not seem to be a phone number."


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("data", "ref"),
    [(None, None), ({"campaign_id": "c-42"}, "c-42"), ("queued", None)],
    ids=["no-data-scheduled", "campaign-id", "opaque"],
)
async def test_success_without_per_number_data_means_all_sent(data, ref):
    body = {"status": "success", "message": "Your message is scheduled"}
    if data is not None:
        body["data"] = data
    results = await send(Api(json_body=body), A, B)
    assert [(r.recipient, r.outcome, r.provider_ref) for r in results] == [
        (A, Outcome.SENT, ref),
        (B, Outcome.SENT, ref),
    ]


@pytest.mark.anyio
async def test_duplicate_recipients_are_sent_once_and_answered_each():
    api = Api(json_body=delivered())
    results = await send(api, A, A)
    assert json.loads(api.requests[0].content)["recipient"] == "61412345678"
    assert [(r.recipient, r.outcome) for r in results] == [(A, Outcome.SENT), (A, Outcome.SENT)]


@pytest.mark.anyio
async def test_number_error_in_a_bulk_request_fails_only_the_named_number():
    body = {"status": "error", "message": "61411111111 is a invalid phone number"}
    results = await send(Api(status=403, json_body=body), A, C)
    assert [r.outcome for r in results] == [Outcome.TRANSIENT, Outcome.PERMANENT]


@pytest.mark.anyio
async def test_number_error_naming_no_number_in_a_bulk_request_bounces_the_batch():
    body = {"status": "error", "message": "Number contains in the blacklist"}
    exc = await failure(Api(status=403, json_body=body), A, C)
    assert isinstance(exc, PermanentProviderError)


# ---- transport and HTTP failures ----------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize(
    "exc",
    [
        httpx.ReadTimeout("timed out"),
        httpx.ConnectTimeout("timed out"),
        httpx.ConnectError("[Errno 111] Connection refused"),
        httpx.RemoteProtocolError("Server disconnected without sending a response."),
        httpx.ReadError(""),
    ],
    ids=lambda e: type(e).__name__,
)
async def test_transport_failures_are_transient(exc):
    error = await failure(Api(exc=exc), A)
    assert type(error) is TransientProviderError
    assert "https://sms.dataflows.com.au" in str(error)
    assert type(exc).__name__ in str(error)
    assert error.__cause__ is None
    assert error.__context__ is None


@pytest.mark.anyio
async def test_429_with_retry_after_seconds():
    error = await failure(
        Api(status=429, json_body={"message": "Too Many Attempts."}, headers={"Retry-After": "17"}),
        A,
    )
    assert type(error) is TransientProviderError
    assert error.retry_after == 17.0
    assert "HTTP 429" in str(error)
    assert "Too Many Attempts." in str(error)


@pytest.mark.anyio
async def test_429_with_retry_after_http_date():
    when = datetime.now(UTC).replace(microsecond=0)
    later = format_datetime(when.fromtimestamp(when.timestamp() + 120, UTC), usegmt=True)
    error = await failure(Api(status=429, text="slow down", headers={"Retry-After": later}), A)
    assert isinstance(error, TransientProviderError)
    assert error.retry_after is not None
    assert 110 <= error.retry_after <= 120


@pytest.mark.anyio
async def test_503_html_page_is_transient_with_an_excerpt():
    page = (
        "<!DOCTYPE html><html><head><title>503 Service Unavailable</title>"
        "<style>body{color:red}</style></head><body><h1>Service Unavailable</h1>"
        "<p>The server is down for maintenance &amp; will be back soon.</p>"
        + "<p>filler</p>" * 100
        + "</body></html>"
    )
    error = await failure(Api(status=503, text=page, headers={"Content-Type": "text/html"}), A)
    assert type(error) is TransientProviderError
    assert error.retry_after is None
    text = str(error)
    assert "HTTP 503" in text
    assert (
        "503 Service Unavailable: Service Unavailable The server is down for maintenance & will"
        in text
    )
    assert "<" not in text
    assert "color:red" not in text
    assert len(text) < 400


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("status", "body", "headers", "kind", "words"),
    [
        (200, "<html><body>Welcome</body></html>", {}, TransientProviderError, "not a JSON answer"),
        (404, "<html><title>Not Found</title></html>", {}, TransientProviderError, "base_url"),
        (200, "", {}, TransientProviderError, "(empty body)"),
        (200, "[1, 2]", {}, TransientProviderError, "not a JSON answer"),
        (401, "<html>Unauthorized</html>", {}, ProviderAccountError, "provider.token"),
        (
            302,
            "",
            {"Location": "https://sms.dataflows.com.au/login"},
            ProviderAccountError,
            "login",
        ),
        (
            301,
            "",
            {"Location": "https://elsewhere.example/api"},
            TransientProviderError,
            "base_url",
        ),
    ],
    ids=["html-200", "html-404", "empty", "json-list", "html-401", "login-redirect", "redirect"],
)
async def test_answers_that_are_not_an_envelope(status, body, headers, kind, words):
    error = await failure(Api(status=status, text=body, headers=headers), A)
    assert type(error) is kind
    assert words in str(error)


# ---- the token never leaks -------------------------------------------------------------

LEAKY = [
    Api(exc=httpx.ConnectError(f"cannot connect, Authorization: Bearer {TOKEN}")),
    Api(exc=httpx.ReadTimeout("timed out")),
    Api(status=503, text=f"<html><pre>Authorization: Bearer {TOKEN}</pre></html>"),
    Api(status=500, json_body={"message": f"bad token {SECRET}"}),
    Api(status=200, json_body={"status": "error", "message": f"Unauthenticated. {TOKEN}"}),
    Api(
        status=404,
        json_body={"status": "error", "message": f"Originator {SECRET} is not authorized"},
    ),
    Api(status=302, headers={"Location": f"https://x.example/login?t={SECRET}"}),
    Api(status=200, text=f"Whoops {TOKEN}"),
]


@pytest.mark.anyio
@pytest.mark.parametrize("api", LEAKY, ids=range(len(LEAKY)))
async def test_token_is_never_in_an_error(api):
    error = await failure(api, A)
    assert isinstance(error, TransientProviderError | PermanentProviderError)
    texts = [
        str(error),
        repr(error),
        repr(error.args),
        "".join(traceback.format_exception(error)),
    ]
    for text in texts:
        assert TOKEN not in text
        assert SECRET not in text
    assert "[token]" in str(error) or isinstance(api.exc, httpx.ReadTimeout)


@pytest.mark.anyio
async def test_token_is_not_in_result_details_or_the_repr():
    body = {"status": "success", "data": {"uid": "65f1c0a2b3d4e", "status": f"Failed {TOKEN}"}}
    (result,) = await send(Api(json_body=body), A)
    assert TOKEN not in result.detail
    async with httpx.AsyncClient() as client:
        provider = DataFlowsProvider(client=client, token=TOKEN)
        assert repr(provider) == "DataFlowsProvider(base_url='https://sms.dataflows.com.au')"
        assert SECRET not in repr(provider)
        assert SECRET not in str(provider)


# ---- parse_retry_after -------------------------------------------------------------------

NOW = datetime(2025, 1, 1, 12, 0, 0, tzinfo=UTC).timestamp()


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        ("", None),
        ("   ", None),
        ("120", 120.0),
        (" 0 ", 0.0),
        ("1.5", 1.5),
        ("-5", None),
        ("soon", None),
        ("1e3", None),
        ("99999999", RETRY_AFTER_MAX),
        ("Wed, 01 Jan 2025 12:00:30 GMT", 30.0),
        ("Wed, 01 Jan 2025 11:00:00 GMT", 0.0),
        ("Wed, 01 Jan 2025 12:01:00 -0000", 60.0),
        ("Wed, 01 Jan 2025 14:00:00 +0100", 3600.0),
        ("Thu, 01 Jan 2099 00:00:00 GMT", RETRY_AFTER_MAX),
        ("Wed, 99 Foo 2025 12:00:30 GMT", None),
    ],
)
def test_parse_retry_after(value, expected):
    assert parse_retry_after(value, NOW) == expected


def test_body_excerpt_prefers_a_json_message_and_truncates():
    assert body_excerpt(httpx.Response(500, json={"message": "Server Error"})) == "Server Error"
    long = body_excerpt(httpx.Response(500, text="x" * 1000))
    assert len(long) == 200
    assert long.endswith("…")
    assert body_excerpt(httpx.Response(500, text="  \n ")) == "(empty body)"


# ---- construction ---------------------------------------------------------------------------


def test_providers_match_the_config_kinds():
    assert set(PROVIDERS) == set(typing.get_args(ProviderKind))
    for name, cls in PROVIDERS.items():
        assert cls.name == name
        assert cls.max_recipients >= 1
        assert isinstance(cls.supports_unicode, bool)
        assert cls.requests_per_second is None or cls.requests_per_second > 0
        assert cls.docs_url


def test_dataflows_facts():
    assert DataFlowsProvider.max_recipients == 100
    assert DataFlowsProvider.requests_per_second == 10
    assert DataFlowsProvider.docs_url.startswith("https://")


@pytest.mark.anyio
async def test_http_provider_without_a_token_is_a_config_error():
    config = ProviderConfig.model_construct(kind="dataflows", token=None, base_url=None, timeout=5)
    async with httpx.AsyncClient() as client:
        with pytest.raises(ConfigError, match=r"provider\.token"):
            build_provider(config, client)


# ---- outbox ---------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_outbox_writes_one_json_line_per_recipient_and_appends(tmp_path: Path):
    path = tmp_path / "new" / "dir" / "outbox.jsonl"
    async with httpx.AsyncClient() as client:
        provider = build_provider(ProviderConfig(kind="outbox", path=path), client)
    assert isinstance(provider, OutboxProvider)
    first = await provider.send(batch(A, B, text='Grüße ✓ "quoted"\nline 2'))
    await provider.send(SmsBatch(queue_id="q2", recipients=(C,), text="second", sender_id="X"))

    assert [(r.recipient, r.outcome) for r in first] == [(A, Outcome.SENT), (B, Outcome.SENT)]
    lines = path.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 3
    assert "Grüße ✓" in lines[0]
    records = [json.loads(line) for line in lines]
    assert [set(r) for r in records] == [{"queue_id", "to", "text", "sender_id", "time"}] * 3
    assert [(r["queue_id"], r["to"], r["sender_id"]) for r in records] == [
        ("q1", A, "MyBrand"),
        ("q1", B, "MyBrand"),
        ("q2", C, "X"),
    ]
    assert records[0]["text"] == 'Grüße ✓ "quoted"\nline 2'
    when = datetime.fromisoformat(records[0]["time"])
    assert when.utcoffset() is not None
    assert when.utcoffset().total_seconds() == 0
    assert abs(when.timestamp() - datetime.now(UTC).timestamp()) < 60


@pytest.mark.anyio
async def test_outbox_concurrent_sends_keep_lines_whole(tmp_path: Path):
    provider = OutboxProvider(tmp_path / "outbox.jsonl")
    await asyncio.gather(
        *(provider.send(batch(A, B, text=f"message {i} " + "x" * 5000)) for i in range(20))
    )
    lines = (tmp_path / "outbox.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(lines) == 40
    assert {json.loads(line)["text"].split()[1] for line in lines} == {str(i) for i in range(20)}


@pytest.mark.anyio
async def test_outbox_write_error_is_transient(tmp_path: Path):
    provider = OutboxProvider(tmp_path)  # a directory cannot be appended to
    with pytest.raises(TransientProviderError, match="outbox: cannot write"):
        await provider.send(batch(A))
    assert "OutboxProvider(path=" in repr(provider)


# ---- the account check (check-config --online) ---------------------------------------------


async def check(handler) -> object:
    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        provider = DataFlowsProvider(client=client, token=TOKEN, timeout=5)
        return await provider.check_account()


@pytest.mark.anyio
async def test_account_check_falls_back_to_the_stock_balance_route():
    paths: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        paths.append(request.url.path)
        if request.url.path == "/api/v3/profile/balance":
            return httpx.Response(404, text="<html><title>Not Found</title></html>")
        body = {"status": "success", "message": None, "data": {"remaining_unit": "Unlimited"}}
        return httpx.Response(200, json=body)

    status = await check(handler)
    assert paths == ["/api/v3/profile/balance", "/api/v3/balance"]
    assert status.balance == "Unlimited units"


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("status", "body", "kind"),
    [
        (200, {"status": "error", "message": "Unauthenticated."}, ProviderAccountError),
        (401, {"status": "error", "message": "Unauthenticated."}, ProviderAccountError),
        (
            403,
            {"status": "error", "message": "You do not have permission to access API"},
            ProviderAccountError,
        ),
        (200, {"status": "error", "message": "Too Many Attempts."}, TransientProviderError),
        (503, None, TransientProviderError),
    ],
)
async def test_account_check_errors(status, body, kind):
    def handler(_request: httpx.Request) -> httpx.Response:
        if body is None:
            return httpx.Response(status, text="<html>down</html>")
        return httpx.Response(status, json=body)

    with pytest.raises(kind) as caught:
        await check(handler)
    assert SECRET not in str(caught.value)
    assert (type(caught.value) is ProviderAccountError) == (kind is ProviderAccountError)


@pytest.mark.anyio
async def test_account_check_falls_back_on_a_laravel_json_404_and_reads_other_balance_keys():
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/api/v3/profile/balance":
            return httpx.Response(404, json={"message": "The route could not be found."})
        data = {"remaining_balance": "42.50", "currency": "AUD"}
        return httpx.Response(200, json={"status": "success", "message": None, "data": data})

    status = await check(handler)
    assert status.balance == "42.50 AUD"
