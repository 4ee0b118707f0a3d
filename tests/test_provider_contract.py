"""The contract every provider passes, parametrised over ``PROVIDERS``.

Each HTTP provider is run over real HTTP on loopback against its fake, which speaks the
provider's own API; the outbox writes a file. Whatever the API, the rest of mail2sms sees
the same behaviour: one typed result per number in order, transient vs permanent errors,
the operator's credential problems as ``ProviderAccountError``, and secrets nowhere.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from fakes.dataflows import FakeDataFlows
from fakes.http import FakeHttpApi
from fakes.messageflow import FakeMessageFlow
from fakes.textflow import FakeTextFlow

from mail2sms.config import ProviderConfig
from mail2sms.errors import ProviderAccountError, TransientProviderError
from mail2sms.models import AccountStatus, Outcome, SmsBatch
from mail2sms.providers import PROVIDERS, build_provider
from mail2sms.providers.base import HttpProvider

pytestmark = pytest.mark.anyio

TOKEN = "31|contractTestTokenNeverToBeSeen0123456789"
APP_KEY = "contractAppKey0123456789"
SECRETS = (TOKEN, TOKEN.split("|")[1], APP_KEY)
GOOD, BAD = "+61412345678", "+61498765432"


@dataclass(frozen=True)
class Kit:
    """How to stand up one provider's fake and point the provider at it."""

    fake: Callable[[], FakeHttpApi]
    config: Callable[[FakeHttpApi], dict[str, Any]]
    break_credentials: Callable[[FakeHttpApi], None]


def _dataflows_kit() -> Kit:
    def fake() -> FakeHttpApi:
        return FakeDataFlows(token=TOKEN)

    def config(f: FakeHttpApi) -> dict[str, Any]:
        return {"kind": "dataflows", "base_url": f.url, "token": TOKEN, "timeout": 1}

    def break_credentials(f: FakeHttpApi) -> None:
        f.token = "31|someoneElsesToken0000000000000000"  # type: ignore[attr-defined]

    return Kit(fake, config, break_credentials)


def _messageflow_kit() -> Kit:
    def fake() -> FakeHttpApi:
        return FakeMessageFlow(token=TOKEN, application_key=APP_KEY)

    def config(f: FakeHttpApi) -> dict[str, Any]:
        return {
            "kind": "messageflow",
            "base_url": f.url,
            "token": TOKEN,
            "application_key": APP_KEY,
            "timeout": 1,
        }

    def break_credentials(f: FakeHttpApi) -> None:
        f.application_key = "someOtherApplicationKey000"  # type: ignore[attr-defined]

    return Kit(fake, config, break_credentials)


def _textflow_kit() -> Kit:
    def fake() -> FakeHttpApi:
        return FakeTextFlow(token=TOKEN)

    def config(f: FakeHttpApi) -> dict[str, Any]:
        return {"kind": "textflow", "base_url": f.url, "token": TOKEN, "timeout": 1}

    def break_credentials(f: FakeHttpApi) -> None:
        f.token = "someoneElsesTextFlowKey000000"  # type: ignore[attr-defined]

    return Kit(fake, config, break_credentials)


KITS: dict[str, Kit] = {
    "dataflows": _dataflows_kit(),
    "messageflow": _messageflow_kit(),
    "textflow": _textflow_kit(),
}
HTTP_KINDS = sorted(k for k, cls in PROVIDERS.items() if issubclass(cls, HttpProvider))


def test_every_http_provider_has_a_contract_kit():
    assert sorted(KITS) == HTTP_KINDS


@pytest.fixture(params=HTTP_KINDS)
def kit(request: pytest.FixtureRequest) -> Kit:
    return KITS[request.param]


@pytest.fixture
def fake(kit: Kit) -> Iterator[FakeHttpApi]:
    with kit.fake() as server:
        yield server


async def provider_call(kit: Kit, fake: FakeHttpApi, call: Callable[[Any], Any]) -> Any:
    async with httpx.AsyncClient() as client:
        provider = build_provider(ProviderConfig(**kit.config(fake)), client)
        assert not any(secret in repr(provider) for secret in SECRETS)
        return await call(provider)


def batch(*numbers: str) -> SmsBatch:
    return SmsBatch(
        queue_id="1M8CONTRACT00001", recipients=numbers, text="Pump 2 failed", sender_id="TestBrand"
    )


def assert_no_secret(error: BaseException) -> None:
    seen: BaseException | None = error
    while seen is not None:  # the message and every chained exception
        assert not any(secret in str(seen) for secret in SECRETS), seen
        seen = seen.__cause__ or seen.__context__


async def test_success_gives_one_sent_result_per_number_in_order(kit, fake):
    results = await provider_call(kit, fake, lambda p: p.send(batch(GOOD, BAD)))
    assert [(r.recipient, r.outcome) for r in results] == [
        (GOOD, Outcome.SENT),
        (BAD, Outcome.SENT),
    ]
    assert sorted(s.number for s in fake.sent) == sorted(n[1:] for n in (GOOD, BAD))
    assert {s.message for s in fake.sent} == {"Pump 2 failed"}


async def test_an_invalid_number_fails_alone(kit, fake):
    fake.invalid_numbers.add(BAD[1:])  # type: ignore[attr-defined]
    results = await provider_call(kit, fake, lambda p: p.send(batch(GOOD, BAD)))
    outcome = {r.recipient: r.outcome for r in results}
    assert outcome[BAD] is Outcome.PERMANENT
    assert outcome[GOOD] in {Outcome.SENT, Outcome.TRANSIENT}  # never failed for good
    assert BAD[1:] not in [s.number for s in fake.sent]


async def test_refused_credentials_are_the_operators_problem(kit, fake):
    kit.break_credentials(fake)
    with pytest.raises(ProviderAccountError) as caught:
        await provider_call(kit, fake, lambda p: p.send(batch(GOOD)))
    assert_no_secret(caught.value)
    with pytest.raises(ProviderAccountError) as checked:
        await provider_call(kit, fake, lambda p: p.check_account())
    assert_no_secret(checked.value)
    assert fake.sent == []


async def test_the_account_check_accepts_good_credentials_and_sends_nothing(kit, fake):
    status = await provider_call(kit, fake, lambda p: p.check_account())
    assert isinstance(status, AccountStatus)
    assert status.detail
    assert fake.sent == []


@pytest.mark.parametrize(
    ("answer", "retry_after"),
    [
        ((503, "<html><body><h1>Service Unavailable</h1></body></html>", {}), None),
        ((502, "<html><title>Bad Gateway</title>nginx</html>", {}), None),
        ((429, {"message": "Too Many Requests"}, {"Retry-After": "7"}), 7.0),
        ((500, "", {}), None),
    ],
)
async def test_overload_and_server_errors_are_transient(kit, fake, answer, retry_after):
    status, body, headers = answer
    fake.fail_next(1, status=status, body=body, headers=headers)
    with pytest.raises(TransientProviderError) as caught:
        await provider_call(kit, fake, lambda p: p.send(batch(GOOD)))
    assert type(caught.value) is TransientProviderError  # not an account problem
    assert caught.value.retry_after == retry_after
    assert_no_secret(caught.value)
    assert fake.sent == []


async def test_a_timeout_is_transient(kit, fake):
    fake.delay = 3.0  # the kits give the provider a 1 s timeout
    with pytest.raises(TransientProviderError) as caught:
        await provider_call(kit, fake, lambda p: p.send(batch(GOOD)))
    assert "within 1s" in str(caught.value)
    assert_no_secret(caught.value)


async def test_connection_refused_is_transient(kit, fake):
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = kit.config(fake) | {"base_url": f"http://127.0.0.1:{port}"}
    async with httpx.AsyncClient() as client:
        provider = build_provider(ProviderConfig(**config), client)
        with pytest.raises(TransientProviderError) as caught:
            await provider.send(batch(GOOD))
    assert "cannot reach" in str(caught.value)
    assert_no_secret(caught.value)


async def test_the_outbox_keeps_the_same_contract(tmp_path):
    config = ProviderConfig(kind="outbox", path=tmp_path / "outbox.jsonl")
    async with httpx.AsyncClient() as client:
        provider = build_provider(config, client)
        results = await provider.send(batch(GOOD, BAD))
        status = await provider.check_account()
    assert [(r.recipient, r.outcome) for r in results] == [
        (GOOD, Outcome.SENT),
        (BAD, Outcome.SENT),
    ]
    assert "writable" in status.detail
