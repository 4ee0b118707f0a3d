"""MessageFlowProvider: against httpx.MockTransport (request shape, every documented answer,
secrets), over real HTTP on loopback against FakeMessageFlow, and through the whole daemon."""

from __future__ import annotations

import json
import traceback

import httpx
import pytest
from conftest import ALLOWED, GATEWAY, poll
from fakes.messageflow import MSG_INVALID_NUMBER, FakeMessageFlow
from pydantic import SecretStr
from test_smtp import make_mail, transaction

from mail2sms.config import ProviderConfig
from mail2sms.errors import (
    ConfigError,
    PermanentProviderError,
    ProviderAccountError,
    TransientProviderError,
)
from mail2sms.models import Outcome, RecipientState, SmsBatch
from mail2sms.providers import PROVIDERS, build_provider
from mail2sms.providers.base import Verdict
from mail2sms.providers.messageflow import (
    ERROR_RULES,
    SEND_PATH,
    ApiError,
    MessageFlowProvider,
    classify,
    external_id,
)

pytestmark = pytest.mark.anyio

TOKEN = "mfTestAuthorizationKey0123456789abcdef"
APP_KEY = "mfTestApplicationKey9876543210ZYXWVU"
A, B, C = "+48512345678", "+48601234567", "+48511111111"


def batch(*recipients: str, text: str = "Backup finished", sender: str = "MyBrand") -> SmsBatch:
    return SmsBatch(
        queue_id="1JXT21Q00BYAZEBT", recipients=recipients or (A,), text=text, sender_id=sender
    )


class Api:
    """A MockTransport handler: one answer per call (the last repeats), requests recorded."""

    def __init__(self, *answers: httpx.Response | Exception) -> None:
        self.answers = list(answers)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, Exception):
            raise answer
        return answer


def reply(status: int = 200, body=None, text: str | None = None, headers=None) -> httpx.Response:
    if text is not None:
        return httpx.Response(status, text=text, headers=headers)
    return httpx.Response(status, json=body, headers=headers)


def item(number: str, ext: str = "mail2sms-1JXT21Q00BYAZEBT") -> dict:
    return {"sender": "MyBrand", "phoneNumber": number, "externalId": ext, "status": 0}


def ok(*numbers: str, errors=None, **meta) -> dict:
    body = {
        "data": [item(n) for n in numbers],
        "meta": {"sentSms": len(numbers), "notSentSms": 0, "status": 200, "uniqId": "085fa5dabf"}
        | meta,
    }
    if errors is not None:
        body["errors"] = errors
    return body


def error(message: str, parameter: str | None = None, value=None, title="Validation error"):
    meta = {"source": "body", "parameter": parameter, "value": value} if parameter else {}
    return {"title": title, "message": message, "code": "E-4-004", "meta": meta}


def errors(status: int, *items: dict) -> dict:
    return {"errors": list(items), "meta": {"status": status, "uniqId": "abc123def0"}}


def provider(client: httpx.AsyncClient, base_url: str | None = None) -> MessageFlowProvider:
    return MessageFlowProvider(
        client=client, token=TOKEN, application_key=APP_KEY, base_url=base_url, timeout=5
    )


async def send(api: Api, *recipients: str, **kw):
    async with httpx.AsyncClient(transport=httpx.MockTransport(api)) as client:
        return await provider(client).send(batch(*recipients, **kw))


async def failure(api: Api, *recipients: str) -> Exception:
    with pytest.raises(Exception) as caught:  # noqa: PT011  the test inspects the type itself
        await send(api, *recipients)
    return caught.value


async def check(api: Api):
    async with httpx.AsyncClient(transport=httpx.MockTransport(api)) as client:
        return await provider(client).check_account()


# ---- request shape --------------------------------------------------------------------------


async def test_request_shape():
    api = Api(reply(body=ok(A, B)))
    await send(api, A, B, A, text="Grüße ✓", sender="Alarm")
    (request,) = api.requests
    assert request.method == "POST"
    assert str(request.url) == "https://api.messageflow.com/v2.1/sms"
    assert request.headers["authorization"] == TOKEN  # the raw key, no "Bearer"
    assert request.headers["application-key"] == APP_KEY
    assert request.headers["content-type"] == "application/json"
    assert request.headers["accept"] == "application/json"
    assert json.loads(request.content) == {
        "sender": "Alarm",
        "message": "Grüße ✓",
        "phoneNumbers": [A, B],
        "externalId": "mail2sms-1JXT21Q00BYAZEBT",
    }


def test_external_id_is_stable_short_and_plain():
    assert external_id("1JXT21Q00BYAZEBT") == "mail2sms-1JXT21Q00BYAZEBT"
    assert external_id("a b/c") == "mail2sms-a-b-c"
    assert len(external_id("x" * 200)) == 64


async def test_config_builds_it_with_its_base_url_and_both_keys():
    api = Api(reply(body=ok(A)))
    config = ProviderConfig(
        kind="messageflow",
        token=SecretStr(TOKEN),
        application_key=SecretStr(APP_KEY),
        base_url="http://127.0.0.1:9/sub/",
        timeout=3,
    )
    async with httpx.AsyncClient(transport=httpx.MockTransport(api)) as client:
        built = build_provider(config, client)
        assert isinstance(built, MessageFlowProvider)
        assert built.timeout == 3
        await built.send(batch(A))
    assert str(api.requests[0].url) == "http://127.0.0.1:9/sub/v2.1/sms"
    assert api.requests[0].headers["application-key"] == APP_KEY


@pytest.mark.parametrize(
    ("token", "key", "named"),
    [
        (TOKEN, None, ["provider.application_key"]),
        (TOKEN, " ", ["provider.application_key"]),
        (None, None, ["provider.token", "provider.application_key"]),
    ],
)
async def test_missing_keys_are_config_errors_naming_them(token, key, named):
    config = ProviderConfig.model_construct(
        kind="messageflow",
        token=SecretStr(token) if token else None,
        application_key=SecretStr(key) if key else None,
        base_url=None,
        timeout=5,
    )
    async with httpx.AsyncClient() as client:
        with pytest.raises(ConfigError) as caught:
            build_provider(config, client)
    assert [p.split(":")[0] for p in caught.value.problems] == named


def test_facts():
    cls = PROVIDERS["messageflow"]
    assert cls is MessageFlowProvider
    assert cls.max_recipients == 100
    assert cls.supports_unicode is True
    assert cls.requests_per_second is None
    assert cls.docs_url.startswith("https://")
    assert MessageFlowProvider.default_base_url == "https://api.messageflow.com"
    assert SEND_PATH == "/v2.1/sms"


# ---- success and per-number results ---------------------------------------------------------


async def test_success_every_number_sent_with_a_reference_each():
    results = await send(Api(reply(body=ok(A, B))), A, B)
    assert [(r.recipient, r.outcome) for r in results] == [(A, Outcome.SENT), (B, Outcome.SENT)]
    assert [r.provider_ref for r in results] == ["085fa5dabf:48512345678", "085fa5dabf:48601234567"]


async def test_results_are_matched_by_digits_not_by_order():
    body = ok("48601234567", "+48 512 345 678")
    results = await send(Api(reply(body=body)), A, B)
    assert [r.outcome for r in results] == [Outcome.SENT, Outcome.SENT]
    assert results[0].provider_ref == "085fa5dabf:48512345678"


async def test_duplicate_recipients_are_sent_once_and_answered_each():
    api = Api(reply(body=ok(A)))
    results = await send(api, A, A)
    assert json.loads(api.requests[0].content)["phoneNumbers"] == [A]
    assert [(r.recipient, r.outcome) for r in results] == [(A, Outcome.SENT), (A, Outcome.SENT)]


async def test_partial_success_invalid_number_is_permanent_silent_one_transient():
    body = ok(A, errors=[error(MSG_INVALID_NUMBER, "phoneNumbers", B)], notSentSms=2, sentSms=1)
    results = await send(Api(reply(body=body)), A, B, C)
    assert [r.outcome for r in results] == [Outcome.SENT, Outcome.PERMANENT, Outcome.TRANSIENT]
    assert results[1].detail == "Validation error: phoneNumbers: invalid phone number (E-4-004)"
    assert "no result" in results[2].detail
    assert "085fa5dabf" in results[2].detail


@pytest.mark.parametrize(
    "bad",
    [
        error("invalid phone number", "phoneNumbers[1]"),
        error("invalid phone number", "phoneNumbers.1"),
        error("48601234567: invalid phone number"),
        error("Number is on the blacklist", "phoneNumbers", "48601234567"),
    ],
    ids=["index", "dotted-index", "digits-in-text", "blacklist"],
)
async def test_a_refused_number_is_found_by_index_or_digits(bad):
    body = ok(A, errors=[bad], notSentSms=1)
    results = await send(Api(reply(body=body)), A, B)
    assert [r.outcome for r in results] == [Outcome.SENT, Outcome.PERMANENT]


async def test_a_non_number_error_for_an_unsent_number_is_transient():
    body = ok(A, errors=[error(MSG_INVALID_NUMBER.replace("invalid", "x"))], notSentSms=1)
    body["errors"] = [{"title": "Error", "message": "Temporary routing failure", "code": "E-5-1"}]
    results = await send(Api(reply(body=body)), A, B)
    assert [r.outcome for r in results] == [Outcome.SENT, Outcome.TRANSIENT]
    assert results[1].detail.startswith("not sent: Error: Temporary routing failure (E-5-1)")


async def test_success_without_phone_numbers_in_data_trusts_the_counts():
    body = {"data": [{"externalId": "x"}, {"externalId": "x"}], "meta": {"status": 200}}
    results = await send(Api(reply(body=body)), A, B)
    assert {r.outcome for r in results} == {Outcome.SENT}
    body = {"meta": {"sentSms": 2, "notSentSms": 0, "status": 200}}
    results = await send(Api(reply(body=body)), A, B)
    assert {r.outcome for r in results} == {Outcome.SENT}
    assert results[0].provider_ref == "mail2sms-1JXT21Q00BYAZEBT:48512345678"


async def test_success_saying_nothing_retries_every_number():
    results = await send(Api(reply(body={"meta": {"status": 200}})), A, B)
    assert {r.outcome for r in results} == {Outcome.TRANSIENT}


async def test_meta_status_error_in_a_200_body_without_data_is_believed():
    body = errors(401, error("Authorization data is invalid", title="Unauthorized"))
    assert isinstance(await failure(Api(reply(200, body)), A), ProviderAccountError)
    body = {"errors": [], "meta": {"status": 500}}
    assert type(await failure(Api(reply(200, body)), A)) is TransientProviderError


async def test_meta_status_error_with_data_still_counts_the_listed_numbers_as_sent():
    body = ok(A, status=500)
    results = await send(Api(reply(200, body)), A, B)
    assert [r.outcome for r in results] == [Outcome.SENT, Outcome.TRANSIENT]


# ---- error answers ------------------------------------------------------------------------

UNAUTHORIZED = errors(401, error("Authorization data is invalid", title="Unauthorized"))

# (HTTP status, body or text, headers, expected exception, words in it, DSN status)
ANSWERS = [
    (401, UNAUTHORIZED, {}, ProviderAccountError, "Authorization data is invalid", None),
    (401, "<html>Unauthorized</html>", {}, ProviderAccountError, "provider.application_key", None),
    (
        422,
        errors(422, error("sender: invalid sender", "sender", "MyBrand")),
        {},
        PermanentProviderError,
        "register gateway.sender_id",
        "5.7.1",
    ),
    (
        403,
        errors(403, {"title": "Forbidden", "message": "Sender is not registered"}),
        {},
        PermanentProviderError,
        "Sender is not registered",
        "5.7.1",
    ),
    (
        403,
        errors(403, {"message": "Insufficient funds on the account"}),
        {},
        ProviderAccountError,
        "top up",
        None,
    ),
    (
        403,
        errors(403, {"message": "No permission for Transactional SMS"}),
        {},
        ProviderAccountError,
        "Transactional SMS permission",
        None,
    ),
    (403, errors(403, {"message": "Forbidden"}), {}, ProviderAccountError, "Forbidden", None),
    (403, "<html>Forbidden</html>", {}, ProviderAccountError, "Forbidden", None),
    (402, errors(402, {"message": "Payment required"}), {}, ProviderAccountError, "top up", None),
    (
        422,
        errors(422, error("message: this value is required", "message")),
        {},
        PermanentProviderError,
        "message: this value is required",
        "5.7.1",
    ),
    (
        400,
        errors(400, {"message": "Bad request"}),
        {},
        PermanentProviderError,
        "Bad request",
        "5.7.1",
    ),
    (
        413,
        "<html><title>Too large</title></html>",
        {},
        PermanentProviderError,
        "Too large",
        "5.7.1",
    ),
    (404, errors(404, {"message": "Not found"}), {}, TransientProviderError, "base_url", None),
    (404, "<html><title>Not Found</title></html>", {}, TransientProviderError, "base_url", None),
    (405, "", {}, TransientProviderError, "base_url", None),
    (202, {"meta": {"status": 202}}, {"Retry-After": "30"}, TransientProviderError, "30s", None),
    (202, "", {}, TransientProviderError, "will be repeated", None),
    (200, "<html>Welcome</html>", {}, TransientProviderError, "not a JSON answer", None),
    (200, "[1, 2]", {}, TransientProviderError, "not a JSON answer", None),
    (301, "", {"Location": "https://x.example/"}, TransientProviderError, "base_url", None),
    (429, {"message": "slow"}, {"Retry-After": "7"}, TransientProviderError, "HTTP 429", None),
    (500, errors(500, {"message": "Server error"}), {}, TransientProviderError, "HTTP 500", None),
    (503, "<html><title>Down</title></html>", {}, TransientProviderError, "Down", None),
]


@pytest.mark.parametrize("answer", ANSWERS, ids=[f"{a[0]}-{i}" for i, a in enumerate(ANSWERS)])
async def test_every_documented_answer(answer):
    status, body, headers, kind, words, dsn = answer
    if isinstance(body, str):
        answer = reply(status, text=body, headers=headers)
    else:
        answer = reply(status, body, headers=headers)
    exc = await failure(Api(answer), A, B)
    assert type(exc) is kind
    assert words in str(exc)
    assert str(exc).startswith("messageflow: ")
    if dsn is not None:
        assert isinstance(exc, PermanentProviderError)
        assert exc.status == dsn


async def test_202_and_429_carry_retry_after():
    exc = await failure(Api(reply(202, {"meta": {}}, headers={"Retry-After": "30"})), A)
    assert isinstance(exc, TransientProviderError)
    assert exc.retry_after == 30.0
    exc = await failure(Api(reply(429, {}, headers={"Retry-After": "7"})), A)
    assert isinstance(exc, TransientProviderError)
    assert exc.retry_after == 7.0


async def test_error_names_the_request_for_support():
    exc = await failure(Api(reply(401, UNAUTHORIZED)), A)
    assert "MessageFlow request abc123def0" in str(exc)


async def test_422_invalid_single_number_is_a_permanent_result():
    body = errors(422, error(MSG_INVALID_NUMBER, "phoneNumbers", "+4812"))
    (result,) = await send(Api(reply(422, body)), A)
    assert (result.recipient, result.outcome) == (A, Outcome.PERMANENT)
    assert "invalid phone number" in result.detail


async def test_422_naming_some_numbers_fails_them_and_retries_the_others():
    body = errors(422, error(MSG_INVALID_NUMBER, "phoneNumbers", B))
    results = await send(Api(reply(422, body)), A, B, C)
    assert [r.outcome for r in results] == [Outcome.TRANSIENT, Outcome.PERMANENT, Outcome.TRANSIENT]
    assert "refused other numbers" in results[0].detail


async def test_422_about_numbers_naming_none_of_ours_bounces_the_batch():
    body = errors(422, error(MSG_INVALID_NUMBER, "phoneNumbers", "+4812"))
    exc = await failure(Api(reply(422, body)), A, B)
    assert isinstance(exc, PermanentProviderError)
    assert "no number named" in str(exc)


async def test_the_most_cautious_verdict_wins():
    body = errors(
        422,
        error(MSG_INVALID_NUMBER, "phoneNumbers", A),
        error("sender: invalid", "sender"),
        {"message": "Insufficient funds"},
    )
    assert isinstance(await failure(Api(reply(422, body)), A), ProviderAccountError)
    body["errors"].pop()
    exc = await failure(Api(reply(422, body)), A)
    assert isinstance(exc, PermanentProviderError)
    assert exc.status == "5.7.1"


@pytest.mark.parametrize(
    ("err", "status", "verdict"),
    [
        (ApiError(message="Authorization data is invalid"), 401, Verdict.ACCOUNT),
        (ApiError(message="x", parameter="sender"), 422, Verdict.REFUSED),
        (ApiError(message="x", parameter="phoneNumbers"), 422, Verdict.RECIPIENT),
        (ApiError(message="Not enough balance"), 403, Verdict.ACCOUNT),
        (ApiError(message="Sender not registered"), 403, Verdict.REFUSED),
        (ApiError(message="whatever"), 403, Verdict.ACCOUNT),
        (ApiError(message="whatever"), 422, Verdict.REFUSED),
        (ApiError(message="whatever"), 429, Verdict.RETRY),
    ],
)
def test_classification_table(err, status, verdict):
    rule = classify(err, status)
    assert rule is not None
    assert rule.verdict is verdict
    assert rule in ERROR_RULES


def test_unmatched_errors_are_not_classified():
    assert classify(ApiError(message="whatever"), 400) is None
    assert classify(ApiError(message="whatever"), 500) is None


# ---- transport failures and secrets --------------------------------------------------------


@pytest.mark.parametrize(
    "exc",
    [httpx.ReadTimeout("timed out"), httpx.ConnectError("[Errno 111] Connection refused")],
    ids=lambda e: type(e).__name__,
)
async def test_transport_failures_are_transient(exc):
    error_ = await failure(Api(exc), A)
    assert type(error_) is TransientProviderError
    assert error_.__cause__ is None
    assert error_.__context__ is None


LEAKY = [
    Api(httpx.ConnectError(f"cannot connect, Authorization: {TOKEN} Application-Key: {APP_KEY}")),
    Api(reply(503, text=f"<html><pre>{TOKEN} {APP_KEY}</pre></html>")),
    Api(reply(401, errors(401, {"message": f"key {TOKEN} / {APP_KEY} is invalid"}))),
    Api(reply(422, errors(422, error(f"sender {APP_KEY}", "sender")))),
    Api(reply(403, text=f"denied {APP_KEY}")),
    Api(reply(418, text=f"teapot {TOKEN}")),
    Api(reply(301, text="", headers={"Location": f"https://x.example/?k={APP_KEY}"})),
    Api(reply(200, text=f"Whoops {TOKEN}")),
]


@pytest.mark.parametrize("api", LEAKY, ids=range(len(LEAKY)))
async def test_keys_are_never_in_an_error(api):
    exc = await failure(api, A)
    assert isinstance(exc, TransientProviderError | PermanentProviderError)
    texts = [str(exc), repr(exc), repr(exc.args), "".join(traceback.format_exception(exc))]
    for text in texts:
        assert TOKEN not in text
        assert APP_KEY not in text
    assert "[token]" in str(exc)


async def test_keys_are_not_in_result_details_or_the_repr():
    body = ok(A, errors=[error(f"{APP_KEY} invalid phone number", "phoneNumbers", B)])
    results = await send(Api(reply(body=body)), A, B)
    assert APP_KEY not in results[1].detail
    async with httpx.AsyncClient() as client:
        mf = provider(client)
        assert repr(mf) == "MessageFlowProvider(base_url='https://api.messageflow.com')"
        for text in (repr(mf), str(mf), repr(vars(mf).keys())):
            assert TOKEN not in text
            assert APP_KEY not in text


# ---- account check (MockTransport) ----------------------------------------------------------


async def test_check_account_lists_the_senders_and_the_balance():
    body = {"data": [{"sender": "MyBrand"}, "Alarm"], "meta": {"accountBalance": "12.34"}}
    api = Api(reply(200, body))
    status = await check(api)
    assert status.balance == "12.34"
    assert status.detail == "credentials accepted; senders: MyBrand, Alarm"
    (request,) = api.requests
    assert request.method == "OPTIONS"
    assert str(request.url) == "https://api.messageflow.com/v2.1/sms/senders"
    assert request.headers["authorization"] == TOKEN
    assert request.headers["application-key"] == APP_KEY


async def test_check_account_no_senders_is_still_accepted():
    status = await check(Api(reply(404, errors(404, {"message": "No results"}))))
    assert status.balance is None
    assert status.detail == "credentials accepted; senders: none listed for this key"


@pytest.mark.parametrize(
    "first",
    [reply(405, text=""), reply(404, text="<html>nope</html>"), reply(200, text="")],
    ids=["405", "404-html", "200-empty"],
)
async def test_check_account_falls_back_to_the_statuses_list(first):
    api = Api(first, reply(404, errors(404, {"message": "No results"})))
    status = await check(api)
    assert status.detail == "credentials accepted (SMS statuses read)"
    assert api.requests[1].method == "GET"
    assert str(api.requests[1].url) == "https://api.messageflow.com/v2.1/sms/statuses?limit=1"


@pytest.mark.parametrize("status", [401, 403])
async def test_check_account_refused_keys(status):
    with pytest.raises(ProviderAccountError, match="Authorization data is invalid") as caught:
        await check(Api(reply(status, UNAUTHORIZED)))
    assert "provider rejected the credentials" in str(caught.value)


async def test_check_account_unreachable_or_odd_is_transient():
    with pytest.raises(TransientProviderError, match="cannot reach") as caught:
        await check(Api(httpx.ConnectError("refused")))
    assert type(caught.value) is TransientProviderError
    with pytest.raises(TransientProviderError, match="unexpected answer HTTP 400"):
        await check(Api(reply(400, {"message": "odd"})))
    with pytest.raises(TransientProviderError, match="HTTP 503"):
        await check(Api(reply(503, text="down")))


# ---- over real HTTP against FakeMessageFlow --------------------------------------------------


@pytest.fixture
def fake():
    with FakeMessageFlow(token=TOKEN, application_key=APP_KEY) as server:
        yield server


async def test_http_several_numbers_one_invalid(fake, client):
    fake.invalid_numbers.add(C[1:])
    results = await provider(client, fake.url).send(batch(A, C, B, text="Door open"))
    assert [(r.recipient, r.outcome) for r in results] == [
        (A, Outcome.SENT),
        (C, Outcome.PERMANENT),
        (B, Outcome.SENT),
    ]
    assert "invalid phone number" in results[1].detail
    assert [(s.number, s.message) for s in fake.sent] == [
        ("48512345678", "Door open"),
        ("48601234567", "Door open"),
    ]
    assert {s.external_id for s in fake.sent} == {"mail2sms-1JXT21Q00BYAZEBT"}
    assert len({r.provider_ref for r in results if r.provider_ref}) == 2


async def test_http_all_invalid_is_a_422_with_per_number_results(fake, client):
    fake.invalid_numbers |= {A[1:], B[1:]}
    results = await provider(client, fake.url).send(batch(A, B))
    assert [r.outcome for r in results] == [Outcome.PERMANENT, Outcome.PERMANENT]
    assert fake.requests[0].status == 422
    assert fake.sent == []


@pytest.mark.parametrize("wrong", ["token", "key", "bearer"])
async def test_http_wrong_credentials_are_an_account_error(fake, client, wrong):
    token = {"token": "x" * 20, "bearer": f"Bearer {TOKEN}"}.get(wrong, TOKEN)
    key = "y" * 20 if wrong == "key" else APP_KEY
    mf = MessageFlowProvider(
        client=client, token=token, application_key=key, base_url=fake.url, timeout=5
    )
    with pytest.raises(ProviderAccountError, match="Authorization data is invalid"):
        await mf.send(batch(A))
    assert fake.sent == []


async def test_http_unregistered_sender_bounces_5_7_1(fake, client):
    fake.senders = {"Other"}
    with pytest.raises(PermanentProviderError, match="sender is not registered") as caught:
        await provider(client, fake.url).send(batch(A))
    assert caught.value.status == "5.7.1"


async def test_http_no_funds_and_no_permission_keep_mail_queued(fake, client):
    fake.balance = 0.1
    mf = provider(client, fake.url)
    await mf.send(batch(A))
    with pytest.raises(ProviderAccountError, match="top up"):
        await mf.send(batch(A))
    fake.balance = None
    fake.transactional_sms = False
    with pytest.raises(ProviderAccountError, match="Transactional SMS"):
        await mf.send(batch(A))


async def test_http_long_running_202_then_the_repeat_collects_it(fake, client):
    fake.long_running = 0
    mf = provider(client, fake.url)
    with pytest.raises(TransientProviderError, match="HTTP 202") as caught:
        await mf.send(batch(A, B))
    assert caught.value.retry_after == 0
    assert fake.sent == []
    results = await mf.send(batch(A, B))
    assert {r.outcome for r in results} == {Outcome.SENT}
    assert len(fake.sent) == 2


async def test_http_check_account(fake, client):
    fake.senders = {"MyBrand", "Alarm"}
    fake.balance = 123.45
    status = await provider(client, fake.url).check_account()
    assert status.balance == "123.45"
    assert status.detail == "credentials accepted; senders: Alarm, MyBrand"
    bad = MessageFlowProvider(
        client=client, token=TOKEN, application_key="z" * 20, base_url=fake.url, timeout=5
    )
    with pytest.raises(ProviderAccountError, match="Authorization data is invalid"):
        await bad.check_account()


async def test_http_scripted_429_then_success(fake, client):
    fake.fail_next(1, status=429, body={"message": "slow down"}, headers={"Retry-After": "2"})
    mf = provider(client, fake.url)
    with pytest.raises(TransientProviderError) as caught:
        await mf.send(batch(A))
    assert caught.value.retry_after == 2.0
    (result,) = await mf.send(batch(A))
    assert result.outcome is Outcome.SENT


# ---- the fake's own behaviour -----------------------------------------------------------------


def call(fake, method="POST", path="/v2.1/sms", *, token=TOKEN, key=APP_KEY, **kwargs):
    headers = {"Authorization": token, "Application-Key": key}
    with httpx.Client(base_url=fake.url) as http:
        return http.request(method, path, headers=headers, **kwargs)


def test_fake_refuses_bearer_and_missing_key_with_the_documented_shape(fake):
    for response in (
        call(fake, token=f"Bearer {TOKEN}", json={}),
        call(fake, key="", json={}),
    ):
        assert response.status_code == 401
        body = response.json()
        assert body["errors"][0]["message"] == "Authorization data is invalid"
        assert body["meta"]["status"] == 401
        assert set(body["meta"]) >= {"numberOfErrors", "numberOfData", "uniqId"}


def test_fake_validation_and_partial_success(fake):
    response = call(fake, json={"sender": "S"})
    assert response.status_code == 422
    assert {e["meta"]["parameter"] for e in response.json()["errors"]} == {
        "message",
        "phoneNumbers",
    }
    response = call(fake, json={"sender": "S", "message": "hi", "phoneNumbers": [A, "4812"]})
    body = response.json()
    assert response.status_code == 200
    assert [d["phoneNumber"] for d in body["data"]] == [A]
    assert (body["meta"]["sentSms"], body["meta"]["notSentSms"]) == (1, 1)
    assert body["errors"][0]["meta"]["value"] == "4812"
    assert body["errors"][0]["code"] == "E-4-004"


def test_fake_senders_and_statuses_endpoints(fake):
    assert call(fake, "OPTIONS", "/v2.1/sms/senders").status_code == 404
    assert call(fake, "GET", "/v2.1/sms/statuses").status_code == 404
    fake.senders = {"S"}
    assert call(fake, "OPTIONS", "/v2.1/sms/senders").json()["data"] == [{"sender": "S"}]
    call(fake, json={"sender": "S", "message": "hi", "phoneNumbers": [A]})
    assert call(fake, "GET", "/v2.1/sms/statuses").json()["data"][0]["phoneNumber"] == A
    assert call(fake, "GET", "/v2.1/sms").status_code == 405
    assert call(fake, "GET", "/nope").status_code == 404
    assert fake.errors == []


def test_fake_long_running_answers_202_with_retry_after_and_expires(fake):
    fake.long_running = 3600
    body = {"sender": "S", "message": "hi", "phoneNumbers": [A]}
    for _ in range(2):
        response = call(fake, json=body)
        assert response.status_code == 202
        assert response.headers["retry-after"] == "3600"
        assert "expires" in response.headers
    assert fake.sent == []


# ---- through the whole daemon ----------------------------------------------------------------


async def test_mail_in_sms_out_through_the_daemon(make_settings, start_app, fake):
    settings = make_settings(
        provider={
            "kind": "messageflow",
            "base_url": fake.url,
            "token": TOKEN,
            "application_key": APP_KEY,
            "timeout": 5,
        },
        limits={"countries": ["PL"]},  # MessageFlow is a Polish provider
    )
    app = await start_app(settings)
    replies = await transaction(
        app.smtp_port,
        ALLOWED,
        [GATEWAY],
        make_mail(subject="+48512345678, +48601234567", body="Backup finished: 3 errors"),
    )
    assert replies[-1][0] == 250
    queue_id = replies[-1][1].rsplit(" ", 1)[1]
    sent = await fake.until_sent(2)
    assert sorted((s.number, s.message, s.sender) for s in sent) == [
        ("48512345678", "Backup finished: 3 errors", "TestBrand"),
        ("48601234567", "Backup finished: 3 errors", "TestBrand"),
    ]
    (post,) = [r for r in fake.requests if r.method == "POST"]
    assert post.headers["authorization"] == TOKEN
    assert post.headers["application-key"] == APP_KEY
    assert post.body["externalId"] == external_id(queue_id)

    async def all_sent():
        entry = await app.queue.get(queue_id)
        done = all(r.state is RecipientState.SENT for r in entry.recipients)
        return entry if done else None

    entry = await poll(all_sent)
    assert all(r.provider_ref for r in entry.recipients)


async def test_meta_status_never_overrides_an_http_error_status():
    body = errors(500, error(MSG_INVALID_NUMBER, "phoneNumbers", A))
    (result,) = await send(Api(reply(422, body)), A)
    assert result.outcome is Outcome.PERMANENT


async def _mf_send(body: dict, *numbers: str):
    def handler(_request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json=body)

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        provider = MessageFlowProvider(
            client=client, token="mfTokenForTests0123456789", application_key="mfAppKey0123456789"
        )
        batch = SmsBatch(queue_id="1M8Q", recipients=numbers, text="t", sender_id="ACME")
        return await provider.send(batch)


NO_FUNDS = {"title": "Payment", "message": "Insufficient funds on the account", "code": "E-4-009"}


async def test_an_account_error_inside_a_200_with_nothing_sent_keeps_mail_queued():
    body = {
        "data": [],
        "errors": [NO_FUNDS],
        "meta": {"sentSms": 0, "notSentSms": 2, "status": 200},
    }
    with pytest.raises(ProviderAccountError):
        await _mf_send(body, "+61412345678", "+61498765432")


async def test_an_account_error_for_some_numbers_holds_only_those():
    sent = {"phoneNumber": "+61412345678", "externalId": "mail2sms-1M8Q", "status": 0}
    error = NO_FUNDS | {"meta": {"value": "+61498765432"}}
    body = {
        "data": [sent],
        "errors": [error],
        "meta": {"sentSms": 1, "notSentSms": 1, "status": 200},
    }
    results = await _mf_send(body, "+61412345678", "+61498765432")
    assert [(r.recipient, r.outcome) for r in results] == [
        ("+61412345678", Outcome.SENT),
        ("+61498765432", Outcome.HELD),
    ]


async def test_results_echoing_numbers_in_national_form_are_matched():
    items = [
        {"phoneNumber": "0412345678", "externalId": "mail2sms-1M8Q", "status": 0},
        {"phoneNumber": "0498765432", "externalId": "mail2sms-1M8Q", "status": 0},
    ]
    body = {"data": items, "meta": {"sentSms": 2, "notSentSms": 0, "status": 200}}
    results = await _mf_send(body, "+61412345678", "+61498765432")
    assert [r.outcome for r in results] == [Outcome.SENT, Outcome.SENT]


async def test_counts_saying_all_went_out_are_believed_over_odd_spellings():
    items = [{"phoneNumber": "+61 4xx", "externalId": "mail2sms-1M8Q"}] * 2
    body = {"data": items, "meta": {"sentSms": 2, "notSentSms": 0, "status": 200}}
    results = await _mf_send(body, "+61412345678", "+61498765432")
    assert [r.outcome for r in results] == [Outcome.SENT, Outcome.SENT]
