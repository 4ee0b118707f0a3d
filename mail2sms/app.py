"""Composition root: config → queue → HTTP client → provider → workers + SMTP listener.

The only module that knows every other one. ``App`` is started and stopped by the CLI
(``serve``) and, in the same way, by the tests, so what is tested is what runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time

import httpx

from mail2sms import __version__
from mail2sms.bounce import Bouncer, RelayClient
from mail2sms.config import Settings
from mail2sms.delivery import Delivery
from mail2sms.errors import InternalError, QueueError
from mail2sms.log import get_logger
from mail2sms.models import AccountStatus
from mail2sms.notify import Notifier
from mail2sms.providers import build_provider
from mail2sms.providers.base import Provider
from mail2sms.queue import AsyncQueue
from mail2sms.smtp import GatewayHandler, Policy, start_server

log = get_logger(__name__)

PRUNE_EVERY = 3600.0  # seconds between retention passes


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
        self.bouncer: Bouncer | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = asyncio.Event()
        self.notifier = Notifier()
        self.failed = asyncio.Event()
        """Set when a background task ended on its own: the daemon must exit and restart."""

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
        self.client = http_client(settings)
        self.provider = build_provider(settings.provider, self.client)
        self.bouncer = self._build_bouncer(self.queue)
        self.delivery = Delivery(
            queue=self.queue,
            provider=self.provider,
            config=settings.delivery,
            request_timeout=settings.provider.timeout,
            on_failed=self.bouncer.wake,
        )
        self._tasks = [
            asyncio.create_task(self.delivery.run(), name="delivery"),
            asyncio.create_task(self.bouncer.run(), name="bouncer"),
            asyncio.create_task(self._prune_forever(self.queue), name="prune"),
        ]
        for task in self._tasks:
            task.add_done_callback(self._task_ended)
        self.handler = GatewayHandler(
            Policy.from_settings(settings), self.queue, on_queued=lambda _id: self._wake()
        )
        listen = settings.smtp.listen
        self.server = await start_server(
            self.handler, listen.host, listen.port, max_message_size=settings.smtp.max_message_size
        )
        self.notifier.notify("READY=1", f"STATUS=listening on {listen.host}:{self.smtp_port}")
        interval = self.notifier.watchdog_interval
        if interval is not None:
            self._tasks.append(asyncio.create_task(self._watchdog(interval), name="watchdog"))
        log.info(
            "smtp_listening",
            host=listen.host,
            port=self.smtp_port,
            provider=self.provider.name,
            queue=str(settings.queue.path),
            version=__version__,
        )

    def _build_bouncer(self, queue: AsyncQueue) -> Bouncer:
        settings = self.settings
        hostname = settings.smtp.hostname
        relay = settings.bounce.relay
        return Bouncer(
            queue=queue,
            relay=None if relay is None else RelayClient(settings.bounce, helo=hostname),
            reporting_mta=hostname,
            from_address=settings.bounce.sender(hostname),
            recipient_domain=(settings.gateway.domains or [hostname])[0],
            retry=settings.delivery,
            clock=time.time,
            rng=random.random,
        )

    async def _watchdog(self, interval: float) -> None:
        """Ping systemd from the event loop: if the loop stalls, the pings stop."""
        while not self._stopping.is_set():
            self.notifier.notify("WATCHDOG=1")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), interval)

    async def _prune_forever(self, queue: AsyncQueue) -> None:
        """Delete settled messages older than ``queue.retention``, at start and hourly."""
        retention = self.settings.queue.retention
        while not self._stopping.is_set():
            try:
                pruned = await queue.prune(before=time.time() - retention)
            except QueueError as exc:
                log.error("queue_error", loop="prune", error=str(exc))  # noqa: TRY400  expected
            else:
                if pruned:
                    log.info("queue_pruned", messages=pruned, retention_s=retention)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), PRUNE_EVERY)

    def _task_ended(self, task: asyncio.Task[None]) -> None:
        """A background task must only end at stop; otherwise mail would pile up unsent."""
        if self._stopping.is_set():
            return
        error = None if task.cancelled() else task.exception()
        log.error("task_ended", task=task.get_name(), exc_info=error)
        self.failed.set()

    def _wake(self) -> None:
        if self.delivery is not None:
            self.delivery.wake()

    async def stop(self) -> None:
        """Stop listening, finish SMTP transactions and sends within one grace time, close."""
        grace = self.settings.delivery.shutdown_grace
        deadline = time.monotonic() + grace
        log.info("shutting_down", grace_s=grace)
        self.notifier.notify("STOPPING=1", "STATUS=stopping")
        await self._stop_intake(grace)
        await self._stop_workers(max(0.0, deadline - time.monotonic()))
        if self.server is not None:
            await self.server.wait_closed()
        if self.client is not None:
            await self.client.aclose()
        if self.queue is not None:
            await self.queue.close()
        log.info("stopped")

    async def _stop_intake(self, grace: float) -> None:
        """No new connections; transactions in DATA may finish (and get their 250)."""
        if self.server is not None:
            self.server.close()
        if self.handler is not None:
            if not await self.handler.drain(grace):
                log.warning("shutdown_smtp_transactions_cut")
            self.handler.close_sessions()

    async def _stop_workers(self, grace: float) -> None:
        """Let sends and the bounce in flight finish within ``grace``; cancel the rest.

        A cancelled send or bounce stays leased in the queue and is sent again at the next
        start (it may then arrive twice: see the delivery guarantee).
        """
        self._stopping.set()
        if self.bouncer is not None:
            self.bouncer.stop()
        if self.delivery is not None:
            await self.delivery.drain(grace)
        if self._tasks:
            _done, late = await asyncio.wait(self._tasks, timeout=grace)
            for task in late:
                task.cancel()
            for task in self._tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task


def http_client(settings: Settings) -> httpx.AsyncClient:
    """The one HTTP client: a connection per worker, kept alive; no redirects followed."""
    workers = settings.delivery.workers
    return httpx.AsyncClient(
        timeout=settings.provider.timeout,
        limits=httpx.Limits(max_connections=workers, max_keepalive_connections=workers),
        headers={"User-Agent": f"mail2sms/{__version__}"},
        follow_redirects=False,
    )


async def check_account(settings: Settings) -> AccountStatus:
    """Ask the configured provider whether the credentials work (``check-config --online``)."""
    async with http_client(settings) as client:
        return await build_provider(settings.provider, client).check_account()


async def serve(settings: Settings, stop: asyncio.Event) -> None:
    """Run until ``stop`` is set (the CLI sets it on SIGTERM/SIGINT)."""
    app = App(settings)
    try:
        await app.start()
        stopped = asyncio.create_task(stop.wait())
        failed = asyncio.create_task(app.failed.wait())
        await asyncio.wait({stopped, failed}, return_when=asyncio.FIRST_COMPLETED)
        stopped.cancel()
        failed.cancel()
    finally:
        await app.stop()
    if app.failed.is_set():
        raise InternalError("a background task ended unexpectedly; see the task_ended log event")
