"""Shared fixtures: real servers on 127.0.0.1 port 0 inside the test's own event loop.

Async tests run on asyncio through anyio's pytest plugin (it ships with httpx), so the
daemon's ``App`` runs in the same loop as the SMTP client that talks to it.
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from mail2sms.config import Settings

TOKEN = "22|fakeTokenForTestsOnly0123456789abcdefghij"
GATEWAY = "sms@sms.example.com"
DOMAIN = "sms.example.com"
ALLOWED = "alice@example.com"


def base_config(tmp_path: Path) -> dict[str, Any]:
    """A complete, valid config for tests: outbox provider, queue in tmp_path, any free port."""
    return {
        # "thread": what a test logs is captured in its process (test_reader_process.py
        # covers the reader process)
        "smtp": {
            "listen": "127.0.0.1:0",
            "hostname": "sms.test",
            "max_message_size": 65536,
            "reader": "thread",
        },
        "gateway": {
            "addresses": [GATEWAY],
            "domains": [DOMAIN],
            "default_region": "AU",
            "sender_id": "TestBrand",
            "max_parts": 3,
        },
        "senders": {"allow": [ALLOWED, "@example.org"]},
        "provider": {"kind": "outbox", "path": str(tmp_path / "outbox.jsonl")},
        "queue": {"path": str(tmp_path / "queue.sqlite3")},
        "delivery": {
            "workers": 4,
            "retry_initial": 0.05,
            "retry_max": 0.2,
            "give_up_after": "1h",
            "shutdown_grace": 2,
        },
    }


def merged(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Section-wise update of a config dict."""
    out = copy.deepcopy(base)
    for section, values in overrides.items():
        out.setdefault(section, {}).update(values)
    return out


@pytest.fixture
def anyio_backend() -> str:
    """Every async test runs on asyncio, the loop the daemon uses."""
    return "asyncio"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """A developer's own MAIL2SMS_* variables must not change what the tests see."""
    import os  # noqa: PLC0415

    for key in list(os.environ):
        if key.upper().startswith("MAIL2SMS_") or key == "CREDENTIALS_DIRECTORY":
            monkeypatch.delenv(key, raising=False)


@pytest.fixture
def make_settings(tmp_path: Path) -> Callable[..., Settings]:
    """Build validated Settings from the test base config plus section overrides."""

    def make(**overrides: dict[str, Any]) -> Settings:
        return Settings(**merged(base_config(tmp_path), overrides))

    return make


@pytest.fixture
async def start_app() -> AsyncIterator[Callable[[Settings], Any]]:
    """Start ``App``s in the test's loop; every one is stopped at teardown."""
    from mail2sms.app import App  # noqa: PLC0415  pure-module tests need not import the daemon

    apps: list[App] = []

    async def start(settings: Settings) -> App:
        app = App(settings)
        apps.append(app)
        await app.start()
        return app

    yield start
    for app in reversed(apps):
        await app.stop()


def read_outbox(path: Path) -> list[dict[str, Any]]:
    """The outbox provider's JSON lines."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


async def poll(condition: Callable[[], Any], timeout: float = 10.0, interval: float = 0.01) -> Any:
    """Wait until ``condition()`` (sync or async) is truthy, with a deadline (no blind sleeps)."""
    import inspect  # noqa: PLC0415

    import anyio  # noqa: PLC0415

    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await anyio.sleep(interval)


@pytest.fixture
def fake_dataflows() -> Iterator[Any]:
    """A fake DataFlows API over real HTTP on loopback."""
    from fakes.dataflows import FakeDataFlows  # noqa: PLC0415

    with FakeDataFlows(token=TOKEN) as fake:
        yield fake


@pytest.fixture
def config_file(tmp_path: Path, fake_dataflows: Any) -> Path:
    """A daemon config file (tests/process.py CONFIG) pointing at the fake DataFlows."""
    from process import CONFIG  # noqa: PLC0415  a test helper module, not a package

    path = tmp_path / "config.toml"
    path.write_text(
        CONFIG.format(
            gateway=GATEWAY, allowed=ALLOWED, url=fake_dataflows.url, queue=tmp_path / "q.sqlite3"
        ),
        encoding="utf-8",
    )
    return path


@pytest.fixture
def daemons() -> Iterator[list[Any]]:
    """Daemon processes a test started; each is killed and its pipes closed afterwards."""
    started: list[Any] = []
    yield started
    for daemon in started:
        daemon.close()


@pytest.fixture
async def client() -> AsyncIterator[Any]:
    """A real httpx client, for providers talking to a loopback fake."""
    import httpx  # noqa: PLC0415

    async with httpx.AsyncClient() as http:
        yield http
