"""Composition root: config → queue → HTTP client → provider → workers + SMTP listener.

The only module that knows every other one. ``App`` is started and stopped by the CLI
(``serve``) and, in the same way, by the tests, so what is tested is what runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import httpx

from mail2sms import __version__
from mail2sms.config import Settings
from mail2sms.delivery import Delivery
from mail2sms.log import get_logger
from mail2sms.providers import build_provider
from mail2sms.providers.base import Provider
from mail2sms.queue import AsyncQueue
from mail2sms.smtp import GatewayHandler, Policy, start_server

log = get_logger(__name__)


class App:
    """One running mail2sms: start it, read its bound port, stop it."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.queue: AsyncQueue | None = None
        self.client: httpx.AsyncClient | None = None
        self.provider: Provider | None = None
        self.delivery: Delivery | None = None
        self.handler: GatewayHandler | None = None
        self.server: asyncio.Server | None = None
        self._delivery_task: asyncio.Task[None] | None = None

    @property
    def smtp_port(self) -> int:
        """The port actually bound (``smtp.listen`` may say 0 for any free port)."""
        if self.server is None or not self.server.sockets:
            raise RuntimeError("the SMTP server is not listening")
        return int(self.server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        """Open and recover the queue, then start the workers, then listen."""
        settings = self.settings
        for note in settings.warnings():
            log.warning("config_warning", detail=note)
        self.queue = await AsyncQueue.open(settings.queue.path)
        recovered = await self.queue.recover(time.time())
        if recovered:
            log.warning(
                "recovered_in_flight",
                recipients=recovered,
                detail="these were being sent when the daemon stopped; they are sent again "
                "and may arrive twice",
            )
        workers = settings.delivery.workers
        self.client = httpx.AsyncClient(
            timeout=settings.provider.timeout,
            limits=httpx.Limits(max_connections=workers, max_keepalive_connections=workers),
            headers={"User-Agent": f"mail2sms/{__version__}"},
            follow_redirects=False,
        )
        self.provider = build_provider(settings.provider, self.client)
        self.delivery = Delivery(
            queue=self.queue,
            provider=self.provider,
            config=settings.delivery,
            request_timeout=settings.provider.timeout,
        )
        self._delivery_task = asyncio.create_task(self.delivery.run(), name="delivery")
        self.handler = GatewayHandler(
            Policy.from_settings(settings), self.queue, on_queued=lambda _id: self._wake()
        )
        listen = settings.smtp.listen
        self.server = await start_server(
            self.handler, listen.host, listen.port, max_message_size=settings.smtp.max_message_size
        )
        log.info(
            "smtp_listening",
            host=listen.host,
            port=self.smtp_port,
            provider=self.provider.name,
            queue=str(settings.queue.path),
            version=__version__,
        )

    def _wake(self) -> None:
        if self.delivery is not None:
            self.delivery.wake()

    async def stop(self) -> None:
        """Stop listening, finish SMTP transactions and sends within a bound, close."""
        grace = self.settings.delivery.shutdown_grace
        log.info("shutting_down", grace_s=grace)
        if self.server is not None:
            self.server.close()
        if self.handler is not None:
            if not await self.handler.drain(grace):
                log.warning("shutdown_smtp_transactions_cut")
            self.handler.close_sessions()
        if self.delivery is not None:
            await self.delivery.stop(grace)
        if self._delivery_task is not None:
            self._delivery_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._delivery_task
        if self.server is not None:
            await self.server.wait_closed()
        if self.client is not None:
            await self.client.aclose()
        if self.queue is not None:
            await self.queue.close()
        log.info("stopped")


async def serve(settings: Settings, stop: asyncio.Event) -> None:
    """Run until ``stop`` is set (the CLI sets it on SIGTERM/SIGINT)."""
    app = App(settings)
    try:
        await app.start()
        await stop.wait()
    finally:
        await app.stop()
