"""The real DataFlowsProvider and a real httpx.AsyncClient against FakeDataFlows over loopback;
plus the fake's own documented behaviours, which the end-to-end tests rely on."""

from __future__ import annotations

import re
import socket

import httpx
import pytest
from fakes.dataflows import MAX_BULK, FakeDataFlows

from mail2sms.errors import PermanentProviderError, ProviderAccountError, TransientProviderError
from mail2sms.models import Outcome, SmsBatch
from mail2sms.providers.dataflows import DataFlowsProvider

TOKEN = "22|httpTestToken0123456789abcdefghijklmnopqr"
WRONG = "22|wrongToken"
A, B, BAD = "+61412345678", "+61498765432", "+61411111111"

pytestmark = pytest.mark.anyio


@pytest.fixture
def fake():
    with FakeDataFlows(token=TOKEN) as server:
        yield server


def provider(client, url, token=TOKEN, timeout=5.0):
    return DataFlowsProvider(client=client, token=token, base_url=url, timeout=timeout)


def batch(*recipients, text="Door open"):
    return SmsBatch(queue_id="q1", recipients=recipients, text=text, sender_id="TestBrand")


def posts(fake):
    return [r for r in fake.requests if r.method == "POST"]


# ---- the provider over real HTTP ------------------------------------------------------------


async def test_single_success(fake, client):
    (result,) = await provider(client, fake.url).send(batch(A))
    assert result.recipient == A
    assert result.outcome is Outcome.SENT
    assert re.fullmatch(r"[0-9a-f]{13}", result.provider_ref or "")
    assert fake.sent == [("61412345678", "Door open", "TestBrand", result.provider_ref)]
    (request,) = fake.requests
    assert request.headers["authorization"] == f"Bearer {TOKEN}"
    assert request.body == {
        "recipient": "61412345678",
        "sender_id": "TestBrand",
        "type": "plain",
        "message": "Door open",
    }


async def test_150_recipients_in_two_requests_over_one_connection(fake, client):
    numbers = [f"+614{n:08d}" for n in range(12_000_000, 12_000_150)]
    dataflows = provider(client, fake.url)
    chunks = [numbers[:MAX_BULK], numbers[MAX_BULK:]]
    results = [r for chunk in chunks for r in await dataflows.send(batch(*chunk))]

    assert [r.recipient for r in results] == numbers
    assert {r.outcome for r in results} == {Outcome.SENT}
    assert len({r.provider_ref for r in results}) == 150
    assert [len(p.body["recipient"].split(",")) for p in posts(fake)] == [100, 50]
    assert sorted(s.number for s in fake.wait_for_sent(150)) == sorted(n[1:] for n in numbers)
    assert fake.connections_opened == 1


async def test_bulk_with_an_invalid_number(fake, client):
    fake.invalid_numbers.add(BAD[1:])
    results = await provider(client, fake.url).send(batch(A, BAD, B))
    assert [r.outcome for r in results] == [Outcome.SENT, Outcome.PERMANENT, Outcome.SENT]
    assert results[1].detail == "61411111111 is a invalid phone number"
    assert [s.number for s in fake.sent] == ["61412345678", "61498765432"]


async def test_single_invalid_number_is_a_permanent_result(fake, client):
    fake.invalid_numbers.add(BAD[1:])
    (result,) = await provider(client, fake.url).send(batch(BAD))
    assert result.outcome is Outcome.PERMANENT
    assert "is a invalid phone number" in result.detail
    assert fake.sent == []


@pytest.mark.parametrize("mode", ["stock", "strict"])
async def test_wrong_token_is_an_account_error(fake, client, mode):
    fake.mode = mode
    with pytest.raises(ProviderAccountError, match=r"Unauthenticated\.") as caught:
        await provider(client, fake.url, token=WRONG).send(batch(A))
    assert ("HTTP 200" if mode == "stock" else "HTTP 401") in str(caught.value)
    assert fake.sent == []


async def test_strict_throttle_is_transient_with_retry_after(fake, client):
    fake.mode = "strict"
    fake.rate_limit = 1
    dataflows = provider(client, fake.url)
    await dataflows.send(batch(A))
    with pytest.raises(TransientProviderError, match="HTTP 429") as caught:
        await dataflows.send(batch(A))
    assert type(caught.value) is TransientProviderError
    assert caught.value.retry_after is not None
    assert 1 <= caught.value.retry_after <= 60


async def test_stock_throttle_is_transient_without_retry_after(fake, client):
    fake.rate_limit = 0
    with pytest.raises(TransientProviderError, match=r"Too Many Attempts\.") as caught:
        await provider(client, fake.url).send(batch(A))
    assert caught.value.retry_after is None


async def test_scripted_503_then_success(fake, client):
    fake.fail_next(
        1, status=503, body="<html><body>Bad gateway</body></html>", headers={"Retry-After": "1"}
    )
    dataflows = provider(client, fake.url)
    with pytest.raises(TransientProviderError, match="Bad gateway") as caught:
        await dataflows.send(batch(A))
    assert caught.value.retry_after == 1.0
    (result,) = await dataflows.send(batch(A))
    assert result.outcome is Outcome.SENT
    assert [r.status for r in fake.requests] == [503, 200]


async def test_down_is_transient(fake, client):
    fake.down = True
    with pytest.raises(TransientProviderError, match="HTTP 503"):
        await provider(client, fake.url).send(batch(A))


async def test_unapproved_sender_bounces(fake, client):
    fake.approved_senders = {"Other"}
    with pytest.raises(PermanentProviderError, match="Originator TestBrand is not authorized"):
        await provider(client, fake.url).send(batch(A))


async def test_no_balance_is_an_account_error(fake, client):
    fake.balance = 1
    await provider(client, fake.url).send(batch(A))
    with pytest.raises(ProviderAccountError, match="exceeded your sending limit"):
        await provider(client, fake.url).send(batch(A))
    fake.balance = 1
    with pytest.raises(ProviderAccountError, match="not enough balance"):
        await provider(client, fake.url).send(batch(A, B))


async def test_slow_answer_is_a_transient_timeout(fake, client):
    fake.delay = 2.0
    with pytest.raises(TransientProviderError, match=r"no answer .* within 0\.2s"):
        await provider(client, fake.url, timeout=0.2).send(batch(A))


async def test_connection_refused_on_a_closed_port(client):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(TransientProviderError, match="cannot reach") as caught:
        await provider(client, f"http://127.0.0.1:{port}").send(batch(A))
    assert type(caught.value) is TransientProviderError


# ---- the fake's own behaviour -----------------------------------------------------------------


def call(fake, method="POST", path="/api/v3/sms/send", *, token=TOKEN, accept=True, **kwargs):
    headers = {"Authorization": f"Bearer {token}"}
    if accept:
        headers["Accept"] = "application/json"
    with httpx.Client(base_url=fake.url) as http:
        return http.request(method, path, headers=headers, **kwargs)


def test_fake_redirects_to_login_without_accept_json(fake):
    response = call(fake, token=WRONG, accept=False, json={})
    assert response.status_code == 302
    assert response.headers["location"] == f"{fake.url}/login"


@pytest.mark.parametrize(("mode", "status"), [("stock", 200), ("strict", 422)])
def test_fake_validation(fake, mode, status):
    fake.mode = mode
    response = call(fake, json={"sender_id": "X"})
    assert response.status_code == status
    assert response.json() == {
        "status": "error",
        "message": "The recipient field is required. (and 1 more error)",
    }


def test_fake_bulk_limit_duplicates_and_form_body(fake):
    too_many = ",".join(f"614{n:08d}" for n in range(101))
    response = call(fake, json={"recipient": too_many, "message": "x"})
    assert (response.status_code, response.json()["message"]) == (
        403,
        "You cannot send more than 100 SMS in a single request.",
    )
    response = call(
        fake, data={"recipient": "+61 412 345 678,61412345678, 61498765432", "message": "hi"}
    )
    data = response.json()["data"]
    assert [(d["to"], d["customer_status"]) for d in data] == [
        ("61412345678", "Delivered"),
        ("61498765432", "Delivered"),
    ]
    assert len(fake.sent) == 2


def test_fake_single_success_envelope(fake):
    body = call(fake, json={"recipient": "61412345678", "message": "hi", "sender_id": "S"}).json()
    assert body["status"] == "success"
    assert set(body["data"]) >= {"uid", "to", "from", "message", "status", "cost", "sms_count"}
    assert body["data"]["status"] == "Delivered"
    uid = body["data"]["uid"]
    view = call(fake, "GET", f"/api/v3/sms/{uid}").json()
    assert view["data"]["customer_status"] == "Delivered"
    missing = call(fake, "GET", "/api/v3/sms/0123456789abc").json()
    assert missing["message"].startswith("No query results for model")


@pytest.mark.parametrize(
    "path", ["/api/v3/balance", "/api/v3/profile/balance", "/api/v3/me", "/api/v3/profile/me"]
)
def test_fake_account_endpoints(fake, path):
    assert call(fake, "GET", path).json()["status"] == "success"
    assert call(fake, "GET", path, token=WRONG).json()["message"] == "Unauthenticated."


def test_fake_unknown_path_and_wait_deadline(fake):
    assert call(fake, "GET", "/nope").status_code == 404
    assert fake.wait_for_requests(1)[0].path == "/nope"
    with pytest.raises(AssertionError, match=r"waited 0\.05s for 1 SMS sent"):
        fake.wait_for_sent(1, timeout=0.05)
    assert fake.errors == []
