"""/metrics and /healthz over real HTTP, moving with real SMTP traffic."""

from __future__ import annotations

import re

import httpx
import pytest
from conftest import ALLOWED, GATEWAY, poll, read_outbox
from test_smtp import make_mail, transaction

pytestmark = pytest.mark.anyio


def value(text: str, sample: str) -> float:
    match = re.search(rf"^{re.escape(sample)} (\S+)$", text, re.MULTILINE)
    assert match, f"{sample} not in /metrics"
    return float(match.group(1))


async def test_counters_and_gauges_move_with_traffic(make_settings, start_app):
    settings = make_settings(metrics={"listen": "127.0.0.1:0"})
    app = await start_app(settings)
    base = f"http://127.0.0.1:{app.metrics_port}"
    await transaction(app.smtp_port, ALLOWED, [GATEWAY], make_mail(body="Pump 2 failed"))
    await transaction(app.smtp_port, "mallory@evil.example", [GATEWAY], make_mail())
    await transaction(app.smtp_port, ALLOWED, [GATEWAY], make_mail(subject="hello"))
    await poll(lambda: read_outbox(settings.provider.path))
    async with httpx.AsyncClient() as client:
        text = (await client.get(f"{base}/metrics")).text
        health = await client.get(f"{base}/healthz")
        missing = await client.get(f"{base}/nope")
    assert value(text, "mail2sms_messages_accepted_total") == 1
    assert value(text, 'mail2sms_messages_refused_total{code="550"}') == 2
    assert value(text, 'mail2sms_sms_total{outcome="sent",provider="outbox"}') == 1
    assert value(text, 'mail2sms_provider_request_seconds_count{provider="outbox"}') == 1
    assert value(text, 'mail2sms_queue_recipients{state="sent"}') == 1
    assert value(text, "mail2sms_queue_oldest_pending_seconds") == 0
    assert (health.status_code, health.text) == (200, "ok\n")
    assert missing.status_code == 404


async def test_healthz_says_503_with_the_reason_when_the_queue_is_gone(make_settings, start_app):
    app = await start_app(make_settings(metrics={"listen": "127.0.0.1:0"}))
    port = app.metrics_port
    await app.queue.close()
    async with httpx.AsyncClient() as client:
        health = await client.get(f"http://127.0.0.1:{port}/healthz")
    assert health.status_code == 503
    assert health.text.startswith("unhealthy: ")
    assert "closed" in health.text


async def test_metrics_are_off_unless_asked_for(make_settings, start_app):
    app = await start_app(make_settings())
    assert app.metrics_server is None
