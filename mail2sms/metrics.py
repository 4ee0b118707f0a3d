"""Prometheus metrics and a health check, served on ``[metrics] listen``.

The counters move where the work happens (SMTP replies, provider outcomes, bounces); the
queue gauges are read from the queue at scrape time, so they are never stale. The HTTP
side is a few lines over ``asyncio.start_server``: two GET paths need no web framework.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from mail2sms.errors import QueueError
from mail2sms.log import get_logger

if TYPE_CHECKING:
    from mail2sms.queue import AsyncQueue

log = get_logger(__name__)

HEALTH_TIMEOUT = 2.0  # seconds the queue may take to answer before /healthz says 503


class Metrics:
    """The daemon's metrics, in a registry of its own (tests run several daemons at once)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.accepted = Counter("mail2sms_messages_accepted", "Mails accepted (250)", registry=r)
        self.refused = Counter(
            "mail2sms_messages_refused", "Mails or recipients refused", ["code"], registry=r
        )
        self.sms = Counter(
            "mail2sms_sms", "SMS outcomes per recipient", ["provider", "outcome"], registry=r
        )
        self.latency = Histogram(
            "mail2sms_provider_request_seconds",
            "Provider request duration",
            ["provider"],
            buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=r,
        )
        self.bounces = Counter("mail2sms_bounces", "Bounce outcomes", ["outcome"], registry=r)
        self.queue_recipients = Gauge(
            "mail2sms_queue_recipients", "Recipients in the queue by state", ["state"], registry=r
        )
        self.queue_oldest = Gauge(
            "mail2sms_queue_oldest_pending_seconds",
            "Age of the oldest message still waiting",
            registry=r,
        )

    def refusal(self, reply: str) -> None:
        """Count an SMTP refusal by its reply code (``550``, ``554``, ``452``…)."""
        self.refused.labels(code=reply[:3]).inc()

    async def refresh(self, queue: AsyncQueue) -> None:
        """Read the queue gauges now."""
        for state, count in (await queue.counts()).items():
            self.queue_recipients.labels(state=state).set(count)
        oldest = await queue.oldest_pending()
        self.queue_oldest.set(0 if oldest is None else max(0.0, time.time() - oldest))


async def serve_metrics(
    metrics: Metrics, queue: AsyncQueue, host: str, port: int
) -> asyncio.Server:
    """``GET /metrics`` (Prometheus text) and ``GET /healthz`` (200, or 503 with the reason)."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readline(), HEALTH_TIMEOUT)
            while (await asyncio.wait_for(reader.readline(), HEALTH_TIMEOUT)) not in (
                b"\r\n",
                b"\n",
                b"",
            ):
                pass
            method, _, rest = request.decode("latin-1").partition(" ")
            path = rest.split(" ", 1)[0]
            status, body, kind = await _answer(metrics, queue, method, path)
            head = (
                f"HTTP/1.1 {status}\r\nContent-Type: {kind}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            )
            writer.write(head.encode("latin-1") + body)
            await writer.drain()
        except (TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()

    return await asyncio.start_server(handle, host, port)


async def _answer(
    metrics: Metrics, queue: AsyncQueue, method: str, path: str
) -> tuple[str, bytes, str]:
    if method != "GET":
        return "405 Method Not Allowed", b"GET only\n", "text/plain"
    if path == "/metrics":
        try:
            await asyncio.wait_for(metrics.refresh(queue), HEALTH_TIMEOUT)
        except (QueueError, TimeoutError) as exc:
            log.warning("metrics_queue_unreadable", error=str(exc) or type(exc).__name__)
        return "200 OK", generate_latest(metrics.registry), CONTENT_TYPE_LATEST
    if path == "/healthz":
        try:
            await asyncio.wait_for(queue.counts(), HEALTH_TIMEOUT)
        except (QueueError, TimeoutError) as exc:
            reason = str(exc) or "the queue did not answer in time"
            return "503 Service Unavailable", f"unhealthy: {reason}\n".encode(), "text/plain"
        return "200 OK", b"ok\n", "text/plain"
    return "404 Not Found", b"/metrics or /healthz\n", "text/plain"
