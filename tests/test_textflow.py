"""TextFlowProvider: every documented answer against httpx.MockTransport (no sockets), then the
real client over loopback against FakeTextFlow, then one mail through the whole daemon."""

from __future__ import annotations

import json
import socket
import traceback
from collections.abc import Callable

import httpx
import pytest
from conftest import ALLOWED, GATEWAY, poll
from fakes.textflow import MSG_BAD_NUMBER, MSG_SENT, FakeTextFlow
from pydantic import SecretStr
from test_smtp import make_mail, transaction

from mail2sms.config import ProviderConfig
from mail2sms.errors import PermanentProviderError, ProviderAccountError, TransientProviderError
from mail2sms.models import Outcome, RecipientState, SmsBatch
from mail2sms.providers import PROVIDERS, build_provider
from mail2sms.providers.base import Verdict
from mail2sms.providers.textflow import ERROR_RULES, TextFlowProvider, classify

pytestmark = pytest.mark.anyio

TOKEN = "tfMockSecretKey0123456789ABCDEFGHIJKLMNOPQRSTU"
WRONG = "tfWrongKey0123456789abcdefghij"
A, B, C, BAD = "+61412345678", "+61498765432", "+61422222222", "+61411111111"


def batch(*recipients: str, text: str = "Backup finished") -> SmsBatch:
    return SmsBatch(queue_id="q1", recipients=recipients or (A,), text=text, sender_id="MyBrand")


def sent_body(number: str = A, text: str = "Backup finished") -> dict:
    data = {
        "to": number,
        "content": text,
        "country_code": "AU",
        "price": 0.05,
        "timestamp": 1735689600123,
    }
    return {"ok": True, "status": 200, "message": MSG_SENT, "data": data}


def refused(status: int, message: str) -> dict:
    return {"ok": False, "status": status, "message": message}


Answer = httpx.Response | Exception


class Api:
    """A MockTransport handler: ``answer(request)`` per request, every request recorded."""

    def __init__(self, answer: Callable[[httpx.Request], Answer]) -> None:
        self.answer = answer
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        answer = self.answer(request)
        if isinstance(answer, Exception):
            raise answer
        return answer

    @classmethod
    def always(cls, status: int = 200, body: dict | str | None = None, headers=None) -> Api:
        def answer(_request: httpx.Request) -> httpx.Response:
            if isinstance(body, dict):
                return httpx.Response(status, json=body, headers=headers)
            return httpx.Response(status, text=body or "", headers=headers)

        return cls(answer)

    @classmethod
    def raising(cls, exc: Exception) -> Api:
        return cls(lambda _request: exc)

    @classmethod
    def in_turn(cls, *answers: Answer) -> Api:
        """The n-th request gets the n-th answer."""
        queue = list(answers)
        return cls(lambda _request: queue.pop(0))

    def numbers(self) -> list[str]:
        return [json.loads(r.content)["phone_number"] for r in self.requests]


def ok(number: str = A) -> httpx.Response:
    return httpx.Response(200, json=sent_body(number))


async def send(api: Api, *recipients: str, **kw):
    async with httpx.AsyncClient(transport=httpx.MockTransport(api)) as client:
        provider = TextFlowProvider(client=client, token=TOKEN, timeout=5)
        return await provider.send(batch(*recipients, **kw))


async def failure(api: Api, *recipients: str) -> Exception:
    with pytest.raises(Exception) as caught:  # noqa: PT011  the test inspects the type itself
        await send(api, *recipients)
    return caught.value


async def check(api: Api, token: str = TOKEN):
    async with httpx.AsyncClient(transport=httpx.MockTransport(api)) as client:
        return await TextFlowProvider(client=client, token=token, timeout=5).check_account()


# ---- request shape and facts ------------------------------------------------------------


async def test_request_shape():
    api = Api.always(200, sent_body())
    (result,) = await send(api, A, text="Grüße ✓")
    (request,) = api.requests
    assert request.method == "POST"
    assert str(request.url) == "https://textflow.me/api/send-sms"
    assert request.headers["authorization"] == f"Bearer {TOKEN}"
    assert request.headers["accept"] == "application/json"
    assert request.headers["content-type"] == "application/json"
    assert json.loads(request.content) == {"phone_number": A, "text": "Grüße ✓"}
    assert (result.recipient, result.outcome, result.detail) == (A, Outcome.SENT, MSG_SENT)
    assert result.provider_ref is None  # TextFlow returns no message id


async def test_number_is_sent_as_plus_and_digits_and_keeps_the_callers_spelling():
    api = Api.always(200, sent_body())
    (result,) = await send(api, "61412345678")
    assert api.numbers() == [A]
    assert result.recipient == "61412345678"


async def test_base_url_and_timeout_from_config():
    api = Api.always(200, sent_body())
    config = ProviderConfig(
        kind="textflow", token=SecretStr(TOKEN), base_url="http://127.0.0.1:9/tf/", timeout=3
    )
    async with httpx.AsyncClient(transport=httpx.MockTransport(api)) as client:
        provider = build_provider(config, client)
        assert isinstance(provider, TextFlowProvider)
        assert provider.timeout == 3
        await provider.send(batch(A))
    assert str(api.requests[0].url) == "http://127.0.0.1:9/tf/api/send-sms"


def test_facts():
    assert PROVIDERS["textflow"] is TextFlowProvider
    assert TextFlowProvider.max_recipients == 1  # one request per number: per-number answers
    assert TextFlowProvider.requests_per_second is None  # none published
    assert TextFlowProvider.supports_unicode is True
    assert TextFlowProvider.docs_url.startswith("https://")
    assert TextFlowProvider.default_base_url == "https://textflow.me"


# ---- every documented answer, and the tolerant guesses --------------------------------------

# (HTTP status, body, expected): an Outcome for a per-number result, else the exception type.
# Documented in provider-apis.md §3.2 unless marked [?].
DOCUMENTED: list[tuple[int, dict, object]] = [
    (200, sent_body(), Outcome.SENT),
    (200, {**sent_body(), "ok": "true"}, Outcome.SENT),  # [?] a stringly flag
    (400, refused(400, "Invalid API key"), ProviderAccountError),
    (404, refused(404, "API key not found"), ProviderAccountError),
    (400, refused(400, "Invalid API key or user id."), ProviderAccountError),
    (400, refused(400, MSG_BAD_NUMBER), Outcome.PERMANENT),
    (200, refused(400, MSG_BAD_NUMBER), Outcome.PERMANENT),  # HTTP 200, error in the body
    (402, refused(402, "Insufficient balance"), ProviderAccountError),  # [I] proposed
    (400, refused(400, "You do not have enough credits"), ProviderAccountError),  # [?]
    (402, refused(402, "Payment required"), ProviderAccountError),  # [?] by status
    (400, refused(400, "Unsupported country"), Outcome.PERMANENT),  # [?]
    (400, refused(400, "The number +61411111111 is not valid"), Outcome.PERMANENT),  # [?]
    (400, refused(400, "No active senders"), ProviderAccountError),  # [?]
    (400, refused(400, "Sender device is offline"), ProviderAccountError),  # [?]
    (200, refused(429, "Too many requests"), TransientProviderError),  # [?] 429 in the body
    (400, refused(400, "Rate limit exceeded"), TransientProviderError),  # [?]
    (401, {"message": "Unauthenticated."}, ProviderAccountError),  # [?] a framework's 401
    (401, refused(401, "Session expired"), ProviderAccountError),  # [?] by status
    (403, refused(403, "Forbidden"), ProviderAccountError),  # [?] by status
    (200, refused(500, "Server error"), TransientProviderError),  # [?] 5xx in the body
    (404, {"message": "Not Found"}, TransientProviderError),  # no ok: not a TextFlow answer
    (400, refused(400, "Missing required parameter: text"), PermanentProviderError),  # [?]
    (200, refused(400, "Message contains blocked words"), PermanentProviderError),  # [?]
    (200, {"ok": False}, PermanentProviderError),  # a refusal without words
    (400, refused(400, "No phone number given"), PermanentProviderError),  # [?] not a phone
]


def _id(case: tuple[int, dict, object]) -> str:
    status, body, _ = case
    return f"{status}-{str(body.get('message', body.get('ok')))[:30]}"


@pytest.mark.parametrize(("status", "body", "expected"), DOCUMENTED, ids=map(_id, DOCUMENTED))
async def test_send_maps_each_documented_answer(status, body, expected):
    api = Api.always(status, body)
    if isinstance(expected, Outcome):
        (result,) = await send(api, A)
        assert (result.recipient, result.outcome) == (A, expected)
        assert result.detail == body.get("message", "")
        return
    exc = await failure(api, A)
    assert type(exc) is expected
    assert str(exc).startswith("textflow: ")
    assert f"HTTP {status}" in str(exc)
    if "message" in body:
        assert body["message"] in str(exc)
    assert exc.__context__ is None


def verdict_of(message: str, status: int) -> Verdict | None:
    rule = classify(message, [status])
    return None if rule is None else rule.verdict


@pytest.mark.parametrize("rule", ERROR_RULES, ids=lambda r: r.pattern or f"HTTP {r.http_status}")
def test_every_table_row_decides_some_answer(rule):
    answers = [(b.get("message", ""), s, b.get("status")) for s, b, _ in DOCUMENTED]
    answers += [("Request Timeout", 408, None), ("Please wait", 429, None)]  # retried by _request
    deciding = [
        m
        for m, http, body in answers
        if classify(m, [http] if body is None else [http, body]) is rule
    ]
    assert deciding, f"no answer reaches {rule}"


def test_documented_key_and_number_texts_are_matched_by_their_own_rows():
    assert verdict_of("Invalid API key", 400) is Verdict.ACCOUNT
    assert verdict_of("API key not found", 404) is Verdict.ACCOUNT
    assert verdict_of("Phone number is invalid", 400) is Verdict.RECIPIENT
    assert verdict_of("Message sent successfully", 200) is None


async def test_retry_after_is_read_from_a_throttle_in_the_body():
    api = Api.always(200, refused(429, "Too many requests"), headers={"Retry-After": "7"})
    exc = await failure(api, A)
    assert type(exc) is TransientProviderError
    assert exc.retry_after == 7.0


# ---- answers that are not an envelope -------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "body", "headers", "kind", "words"),
    [
        (200, "<html><body>Welcome</body></html>", {}, TransientProviderError, "not a JSON answer"),
        (404, "<html><title>Not Found</title></html>", {}, TransientProviderError, "base_url"),
        (200, "", {}, TransientProviderError, "(empty body)"),
        (200, "[1, 2]", {}, TransientProviderError, "not a JSON answer"),
        (401, "<html>Unauthorized</html>", {}, ProviderAccountError, "provider.token"),
        (403, "<html>Forbidden</html>", {}, ProviderAccountError, "provider.token"),
        (301, "", {"Location": "https://www.textflow.me/"}, TransientProviderError, "base_url"),
        (503, "<html><body>Bad gateway</body></html>", {}, TransientProviderError, "HTTP 503"),
        (429, "slow down", {"Retry-After": "17"}, TransientProviderError, "HTTP 429"),
    ],
    ids=["html-200", "html-404", "empty", "json-list", "401", "403", "redirect", "503", "429"],
)
async def test_answers_that_are_not_an_envelope(status, body, headers, kind, words):
    exc = await failure(Api.always(status, body, headers), A)
    assert type(exc) is kind
    assert words in str(exc)
    if status == 429:
        assert exc.retry_after == 17.0


@pytest.mark.parametrize(
    "exc",
    [
        httpx.ReadTimeout("timed out"),
        httpx.ConnectError("[Errno 111] Connection refused"),
        httpx.RemoteProtocolError("Server disconnected without sending a response."),
    ],
    ids=lambda e: type(e).__name__,
)
async def test_transport_failures_are_transient(exc):
    error = await failure(Api.raising(exc), A)
    assert type(error) is TransientProviderError
    assert "https://textflow.me" in str(error)
    assert error.__cause__ is None
    assert error.__context__ is None


# ---- several numbers: one request each, per-number results -----------------------------------


async def test_several_numbers_one_request_each_with_a_bad_number():
    api = Api.in_turn(ok(A), httpx.Response(400, json=refused(400, MSG_BAD_NUMBER)), ok(B))
    results = await send(api, A, BAD, B)
    assert api.numbers() == [A, BAD, B]
    assert [(r.recipient, r.outcome) for r in results] == [
        (A, Outcome.SENT),
        (BAD, Outcome.PERMANENT),
        (B, Outcome.SENT),
    ]
    assert results[1].detail == MSG_BAD_NUMBER


async def test_duplicates_are_sent_once_and_answered_each():
    api = Api.always(200, sent_body())
    results = await send(api, A, "61412345678")
    assert api.numbers() == [A]
    assert [r.outcome for r in results] == [Outcome.SENT, Outcome.SENT]


@pytest.mark.parametrize(
    ("second", "outcome", "words"),
    [
        (httpx.Response(503, text="<html>down</html>"), Outcome.TRANSIENT, "HTTP 503"),
        (httpx.ConnectError("refused"), Outcome.TRANSIENT, "cannot reach"),
        (
            httpx.Response(402, json=refused(402, "Insufficient balance")),
            Outcome.TRANSIENT,
            "Insufficient balance",
        ),
        (
            httpx.Response(400, json=refused(400, "Message contains blocked words")),
            Outcome.PERMANENT,
            "blocked words",
        ),
    ],
    ids=["503", "refused", "no-balance", "refusal"],
)
async def test_failure_midway_keeps_what_was_sent_and_stops(second, outcome, words):
    api = Api.in_turn(ok(A), second, ok(C))
    results = await send(api, A, B, C)
    assert len(api.requests) == 2  # C is not tried after the failure
    assert [(r.recipient, r.outcome) for r in results] == [
        (A, Outcome.SENT),
        (B, outcome),
        (C, Outcome.TRANSIENT),
    ]
    assert words in results[1].detail
    assert results[2].detail.startswith("not tried after an earlier failure: ")


async def test_failure_on_the_first_number_raises_for_the_batch():
    api = Api.in_turn(httpx.Response(400, json=refused(400, "Invalid API key")), ok(B))
    exc = await failure(api, A, B)
    assert type(exc) is ProviderAccountError
    assert len(api.requests) == 1


async def test_bad_first_number_does_not_stop_the_rest():
    api = Api.in_turn(httpx.Response(400, json=refused(400, MSG_BAD_NUMBER)), ok(B))
    results = await send(api, BAD, B)
    assert [r.outcome for r in results] == [Outcome.PERMANENT, Outcome.SENT]


# ---- check_account ----------------------------------------------------------------------------


async def test_check_account_reads_credits_and_packages():
    body = {"ok": True, "credits": "0.11437", "packages": {"USA Canada": 2100, "UK": 500}}
    api = Api.always(200, body)
    status = await check(api)
    assert status.balance == "0.11437 credits; packages: USA Canada 2100, UK 500"
    assert "/api/balance" in status.detail
    (request,) = api.requests
    assert request.method == "GET"
    assert str(request.url) == "https://textflow.me/api/balance"
    assert request.headers["authorization"] == f"Bearer {TOKEN}"


async def test_check_account_without_figures_has_no_balance():
    assert (await check(Api.always(200, {"ok": True}))).balance is None


@pytest.mark.parametrize(
    ("status", "body", "kind", "words"),
    [
        (400, {"ok": False}, ProviderAccountError, "provider.token"),
        (200, {"ok": False}, ProviderAccountError, "provider.token"),
        (400, refused(400, "Invalid API key"), ProviderAccountError, "Invalid API key"),
        (404, refused(404, "API key not found"), ProviderAccountError, "API key not found"),
        (503, "<html>Service Unavailable</html>", TransientProviderError, "HTTP 503"),
        (200, refused(500, "Server error"), TransientProviderError, "Server error"),
    ],
    ids=["bare-400", "bare-200", "invalid", "not-found", "503", "500-in-body"],
)
async def test_check_account_failures(status, body, kind, words):
    with pytest.raises(TransientProviderError) as caught:
        await check(Api.always(status, body))
    assert type(caught.value) is kind
    assert words in str(caught.value)


# ---- the token never leaks --------------------------------------------------------------------

LEAKY = [
    Api.raising(httpx.ConnectError(f"cannot connect, Authorization: Bearer {TOKEN}")),
    Api.always(503, f"<html><pre>Authorization: Bearer {TOKEN}</pre></html>"),
    Api.always(400, refused(400, f"Invalid API key {TOKEN}")),
    Api.always(200, refused(400, f"Message refused for key {TOKEN}")),
    Api.always(404, {"message": f"No route for {TOKEN}"}),
    Api.always(302, headers={"Location": f"https://x.example/?key={TOKEN}"}),
    Api.always(200, f"Whoops {TOKEN}"),
]


@pytest.mark.parametrize("api", LEAKY, ids=range(len(LEAKY)))
async def test_token_is_never_in_an_error(api):
    error = await failure(api, A)
    assert isinstance(error, TransientProviderError | PermanentProviderError)
    texts = [str(error), repr(error), repr(error.args), "".join(traceback.format_exception(error))]
    for text in texts:
        assert TOKEN not in text
    assert "[token]" in str(error)


async def test_token_is_not_in_results_balance_or_repr():
    api = Api.in_turn(
        ok(A),
        httpx.Response(400, json=refused(400, f"Phone number is invalid {TOKEN}")),
        httpx.Response(503, text=f"down {TOKEN}"),
    )
    results = await send(api, A, BAD, B)
    assert all(TOKEN not in r.detail for r in results)
    status = await check(Api.always(200, {"ok": True, "credits": TOKEN}))
    assert TOKEN not in (status.balance or "")
    for words in ("credits", "packages"):
        with pytest.raises(ProviderAccountError) as caught:
            await check(Api.always(400, refused(400, f"Invalid API key {words} {TOKEN}")))
        assert TOKEN not in str(caught.value)
    async with httpx.AsyncClient() as client:
        provider = TextFlowProvider(client=client, token=TOKEN)
        assert repr(provider) == "TextFlowProvider(base_url='https://textflow.me')"
        assert TOKEN not in str(provider)


# ---- the real client over loopback against FakeTextFlow -----------------------------------------


@pytest.fixture
def fake():
    with FakeTextFlow(token=TOKEN) as server:
        yield server


def provider(client, url, token=TOKEN, timeout=5.0):
    return TextFlowProvider(client=client, token=token, base_url=url, timeout=timeout)


async def test_http_single_success(fake, client):
    (result,) = await provider(client, fake.url).send(batch(A, text="Door open ✓"))
    assert (result.recipient, result.outcome, result.detail) == (A, Outcome.SENT, MSG_SENT)
    (sms,) = fake.sent
    assert (sms.number, sms.message) == ("61412345678", "Door open ✓")
    (request,) = fake.requests
    assert (request.method, request.path) == ("POST", "/api/send-sms")
    assert request.headers["authorization"] == f"Bearer {TOKEN}"
    assert request.body == {"phone_number": A, "text": "Door open ✓"}
    assert fake.errors == []


async def test_http_several_numbers_with_an_invalid_one(fake, client):
    fake.invalid_numbers.add(BAD[1:])
    results = await provider(client, fake.url).send(batch(A, BAD, B))
    assert [(r.recipient, r.outcome) for r in results] == [
        (A, Outcome.SENT),
        (BAD, Outcome.PERMANENT),
        (B, Outcome.SENT),
    ]
    assert results[1].detail == MSG_BAD_NUMBER
    assert [s.number for s in fake.sent] == [A[1:], B[1:]]
    assert [r.body["phone_number"] for r in fake.requests] == [A, BAD, B]
    assert fake.connections_opened == 1  # keep-alive across the per-number requests


@pytest.mark.parametrize(
    ("token", "words"),
    [(WRONG, "API key not found"), (f"{TOKEN}x", "API key not found")],
    ids=["other-key", "longer-key"],
)
async def test_http_wrong_key_is_an_account_error(fake, client, token, words):
    with pytest.raises(ProviderAccountError, match=words) as caught:
        await provider(client, fake.url, token=token).send(batch(A, B))
    assert token not in str(caught.value)
    assert len(fake.requests) == 1
    assert fake.sent == []


async def test_http_failure_midway_reports_earlier_numbers_sent(fake, client):
    fake.on_request = lambda _request: len(fake.requests) >= 2  # the 2nd request on: 503
    results = await provider(client, fake.url).send(batch(A, B, C))
    assert [r.outcome for r in results] == [Outcome.SENT, Outcome.TRANSIENT, Outcome.TRANSIENT]
    assert "HTTP 503" in results[1].detail
    assert [s.number for s in fake.sent] == [A[1:]]
    assert len(fake.requests) == 2


async def test_http_credits_running_out_midway(fake, client):
    fake.balance = fake.price
    results = await provider(client, fake.url).send(batch(A, B))
    assert [r.outcome for r in results] == [Outcome.SENT, Outcome.TRANSIENT]
    assert "Insufficient balance" in results[1].detail
    with pytest.raises(ProviderAccountError, match="top up"):
        await provider(client, fake.url).send(batch(B))


async def test_http_throttle_is_transient_with_retry_after(fake, client):
    fake.rate_limit = 1
    textflow = provider(client, fake.url)
    await textflow.send(batch(A))
    with pytest.raises(TransientProviderError, match="HTTP 429") as caught:
        await textflow.send(batch(A))
    assert type(caught.value) is TransientProviderError
    assert caught.value.retry_after is not None
    assert 1 <= caught.value.retry_after <= 60


async def test_http_scripted_503_then_success(fake, client):
    fake.fail_next(1, status=503, headers={"Retry-After": "1"})
    textflow = provider(client, fake.url)
    with pytest.raises(TransientProviderError) as caught:
        await textflow.send(batch(A))
    assert caught.value.retry_after == 1.0
    (result,) = await textflow.send(batch(A))
    assert result.outcome is Outcome.SENT


async def test_http_slow_answer_is_a_timeout(fake, client):
    fake.delay = 2.0
    with pytest.raises(TransientProviderError, match=r"no answer .* within 0\.2s"):
        await provider(client, fake.url, timeout=0.2).send(batch(A))


async def test_http_connection_refused(client):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(TransientProviderError, match="cannot reach") as caught:
        await provider(client, f"http://127.0.0.1:{port}").check_account()
    assert type(caught.value) is TransientProviderError


async def test_http_check_account(fake, client):
    fake.balance = 1.25
    status = await provider(client, fake.url).check_account()
    assert status.balance == "1.25000 credits; packages: USA Canada 2100, UK 500"
    with pytest.raises(ProviderAccountError, match=r"provider\.token") as caught:
        await provider(client, fake.url, token=WRONG).check_account()
    assert WRONG not in str(caught.value)
    assert [r.path for r in fake.requests] == ["/api/balance", "/api/balance"]


# ---- the fake's own documented behaviours ------------------------------------------------------


def call(fake, method="POST", path="/api/send-sms", *, auth=f"Bearer {TOKEN}", **kwargs):
    headers = {"Authorization": auth} if auth else {}
    with httpx.Client(base_url=fake.url) as http:
        return http.request(method, path, headers=headers, **kwargs)


def test_fake_answers_in_the_documented_envelope(fake):
    body = call(fake, json={"phone_number": A, "text": "hi"}).json()
    assert body["ok"] is True
    assert (body["status"], body["message"]) == (200, MSG_SENT)
    assert set(body["data"]) == {"to", "content", "country_code", "price", "timestamp"}
    form = call(fake, data={"phone_number": B, "text": "form"})  # form bodies too [C]
    assert form.json()["ok"] is True
    assert [(s.number, s.message) for s in fake.sent] == [(A[1:], "hi"), (B[1:], "form")]


@pytest.mark.parametrize(
    ("auth", "status", "message"),
    [(None, 400, "Invalid API key"), (f"Bearer {WRONG}", 404, "API key not found")],
)
def test_fake_key_errors(fake, auth, status, message):
    response = call(fake, auth=auth, json={"phone_number": A, "text": "hi"})
    assert response.status_code == status
    assert response.json() == {"ok": False, "status": status, "message": message}
    assert call(fake, "GET", "/api/balance", auth=auth).json() == {"ok": False}


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"text": "hi"}, "Missing required parameter: phone_number"),
        ({"phone_number": A}, "Missing required parameter: text"),
        ({"phone_number": "61412345678", "text": "hi"}, MSG_BAD_NUMBER),
    ],
)
def test_fake_validation(fake, fields, message):
    response = call(fake, json=fields)
    assert (response.status_code, response.json()["message"]) == (400, message)
    assert fake.sent == []


def test_fake_unknown_path_and_method(fake):
    assert call(fake, "GET", "/api/bulk-count").status_code == 404
    assert call(fake, "GET", "/api/send-sms").status_code == 405
    assert fake.errors == []


# ---- through the whole daemon --------------------------------------------------------------------


async def test_mail_in_sms_out_one_request_per_number(make_settings, start_app, fake):
    fake.invalid_numbers.add(BAD[1:])
    provider_config = {"kind": "textflow", "base_url": fake.url, "token": TOKEN, "timeout": 5}
    app = await start_app(make_settings(provider=provider_config))
    replies = await transaction(
        app.smtp_port,
        ALLOWED,
        [GATEWAY],
        make_mail(subject=f"{A}; {BAD}; 0498 765 432", body="Backup finished: 3 errors"),
    )
    assert replies[-1][0] == 250
    queue_id = replies[-1][1].rsplit(" ", 1)[1]

    sent = await fake.until_sent(2)
    assert sorted((s.number, s.message) for s in sent) == [
        (A[1:], "Backup finished: 3 errors"),
        (B[1:], "Backup finished: 3 errors"),
    ]

    async def finished():
        entry = await app.queue.get(queue_id)
        states = {r.number: r.state for r in entry.recipients}
        done = {RecipientState.SENT, RecipientState.FAILED}
        return states if set(states.values()) <= done else None

    states = await poll(finished)
    assert states == {A: RecipientState.SENT, BAD: RecipientState.FAILED, B: RecipientState.SENT}
    posts = [r for r in fake.requests if r.method == "POST"]
    assert sorted(r.body["phone_number"] for r in posts) == sorted([A, BAD, B])
    assert {r.headers["authorization"] for r in posts} == {f"Bearer {TOKEN}"}
    entry = await app.queue.get(queue_id)
    failed = next(r for r in entry.recipients if r.number == BAD)
    assert MSG_BAD_NUMBER in (failed.last_error or "")
