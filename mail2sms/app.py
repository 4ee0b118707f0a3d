"""Composition root: config → queue → HTTP client → provider → workers + SMTP listener.

The only module that knows every other one. ``App`` is started and stopped by the CLI
(``serve``) and, in the same way, by the tests, so what is tested is what runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Callable

import httpx

from mail2sms import __version__
from mail2sms.bounce import Bouncer, RelayClient
from mail2sms.config import Settings
from mail2sms.delivery import Delivery
from mail2sms.errors import ConfigError, InternalError, QueueError
from mail2sms.log import get_logger
from mail2sms.metrics import Metrics, serve_metrics
from mail2sms.models import AccountStatus
from mail2sms.notify import Notifier
from mail2sms.providers import build_provider
from mail2sms.providers.base import Provider
from mail2sms.queue import AsyncQueue
from mail2sms.reader_process import SpillReader, reader_for
from mail2sms.smtp import GatewayHandler, LocalReader, Policy, start_server
from mail2sms.tls import ServerTLS, load_context

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
        self.tls_server: asyncio.Server | None = None
        """The implicit-TLS listener (``smtp.tls_listen``), if configured."""
        self.tls: ServerTLS | None = None
        self.bouncer: Bouncer | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = asyncio.Event()
        self.notifier = Notifier()
        self.metrics = Metrics()
        self.metrics_server: asyncio.Server | None = None
        self.reader: LocalReader | SpillReader | None = None
        self.failed = asyncio.Event()
        """Set when a background task ended on its own: the daemon must exit and restart."""

    @property
    def smtp_port(self) -> int:
        """The port actually bound (``smtp.listen`` may say 0 for any free port)."""
        if self.server is None or not self.server.sockets:
            raise RuntimeError("the SMTP server is not listening")
        return int(self.server.sockets[0].getsockname()[1])

    @property
    def tls_port(self) -> int:
        """The port the implicit-TLS listener bound (``smtp.tls_listen`` may say 0)."""
        if self.tls_server is None or not self.tls_server.sockets:
            raise RuntimeError("the implicit-TLS listener is not running")
        return int(self.tls_server.sockets[0].getsockname()[1])

    @property
    def metrics_port(self) -> int:
        """The port ``/metrics`` is served on (``metrics.listen`` may say 0)."""
        if self.metrics_server is None or not self.metrics_server.sockets:
            raise RuntimeError("metrics are not served")
        return int(self.metrics_server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        """Open and recover the queue, then start the workers, then listen."""
        settings = self.settings
        for note in settings.warnings():
            log.warning("config_warning", detail=note)
        # The HTTP client reads the CA bundle (tens of ms, mostly without the GIL): it is
        # made on another thread while the queue opens, so that it does not delay READY.
        making_client = asyncio.ensure_future(asyncio.to_thread(http_client, settings))
        try:
            self.queue = await AsyncQueue.open(settings.queue.path)
            recovered = await self.queue.recover(time.time())
        except BaseException:
            with contextlib.suppress(Exception):  # the queue's error is the one to report
                self.client = await making_client  # for stop() to close
            raise
        self.client = await making_client
        if recovered:
            log.warning(
                "recovered_in_flight",
                recipients=recovered,
                detail="these were being sent when the daemon stopped; they are sent again "
                "and may arrive twice",
            )
        self.provider = build_provider(settings.provider, self.client)
        self.bouncer = self._build_bouncer(self.queue)
        self.delivery = Delivery(
            queue=self.queue,
            provider=self.provider,
            config=settings.delivery,
            request_timeout=settings.provider.timeout,
            on_failed=self.bouncer.wake,
            metrics=self.metrics,
        )
        self._tasks = [
            asyncio.create_task(self.delivery.run(), name="delivery"),
            asyncio.create_task(self.bouncer.run(), name="bouncer"),
            asyncio.create_task(self._prune_forever(self.queue), name="prune"),
        ]
        for task in self._tasks:
            task.add_done_callback(self._task_ended)
        self.tls = server_tls(settings)
        self.reader = reader_for(LocalReader(self.queue), settings)
        self.handler = GatewayHandler(
            Policy.from_settings(settings),
            self.queue,
            on_queued=lambda _id: self._wake(),
            metrics=self.metrics,
            tls_context=None if self.tls is None else self.tls.context,
            reader=self.reader,
        )
        listen = settings.smtp.listen
        self.server = await start_server(
            self.handler, listen.host, listen.port, max_message_size=settings.smtp.max_message_size
        )
        tls_at = settings.smtp.tls_listen
        if tls_at is not None and self.tls is not None:
            self.tls_server = await start_server(
                self.handler,
                tls_at.host,
                tls_at.port,
                max_message_size=settings.smtp.max_message_size,
                implicit_tls=self.tls.listener,
            )
            log.info("smtp_tls_listening", host=tls_at.host, port=self.tls_port)
        metrics_at = settings.metrics.listen
        if metrics_at is not None:
            self.metrics_server = await serve_metrics(
                self.metrics, self.queue, metrics_at.host, metrics_at.port
            )
        self.notifier.notify("READY=1", f"STATUS=listening on {listen.host}:{self.smtp_port}")
        interval = self.notifier.watchdog_interval
        if interval is not None:
            self._tasks.append(asyncio.create_task(self._watchdog(interval), name="watchdog"))
        if isinstance(self.reader, SpillReader) and self.reader.mode == "process":
            self.reader.start_soon()  # after READY: its start-up must not delay ours
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
            metrics=self.metrics,
        )

    async def _watchdog(self, interval: float) -> None:
        """Ping systemd from the event loop: if the loop stalls, the pings stop."""
        while not self._stopping.is_set():
            self.notifier.notify("WATCHDOG=1")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), interval)

    async def _prune_forever(self, queue: AsyncQueue) -> None:
        """Delete settled messages older than ``queue.retention``, at start and hourly."""
        while not self._stopping.is_set():
            retention = self.settings.queue.retention  # a reload may change it
            try:
                pruned = await queue.prune(before=time.time() - retention)
            except QueueError as exc:
                log.error("queue_error", loop="prune", error=str(exc))  # noqa: TRY400  expected
            else:
                if pruned:
                    log.info("queue_pruned", messages=pruned, retention_s=retention)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), PRUNE_EVERY)

    def reload(self, new: Settings) -> list[str]:
        """Apply a re-read configuration without dropping a connection or a queued message.

        The allowlist, users, gateway addresses, aliases, options, content rules, provider,
        delivery and bounce settings take effect for the next transaction or send, and the
        TLS certificate (re-read from its files) for the next connection; what is bound at
        start (listen addresses, size limit, queue file) needs a restart, and the returned
        notes say so. A certificate that does not load refuses the reload (ConfigError).
        """
        old = self.settings
        tls = server_tls(new)  # first: a bad certificate changes nothing
        notes = [
            f"{key} changed: restart mail2sms to apply it"
            for key, before, after in (
                ("smtp.listen", old.smtp.listen, new.smtp.listen),
                ("smtp.tls_listen", old.smtp.tls_listen, new.smtp.tls_listen),
                ("smtp.max_message_size", old.smtp.max_message_size, new.smtp.max_message_size),
                ("queue.path", old.queue.path, new.queue.path),
                ("smtp.reader", old.smtp.reader, new.smtp.reader),
            )
            if before != after
        ]
        if isinstance(self.reader, SpillReader):
            self.reader.reload(new)
        if self.handler is not None:
            self.handler.policy = Policy.from_settings(new)
            self.handler.tls_context = None if tls is None else tls.context
        if self.tls is not None and tls is not None:
            self.tls.context = tls.context  # the implicit-TLS listener's next handshakes
        if self.delivery is not None and self.client is not None:
            if new.provider != old.provider:
                self.provider = build_provider(new.provider, self.client)
                self.delivery.use_provider(self.provider)
            self.delivery.config = new.delivery
        self.settings = new
        if self.bouncer is not None and self.queue is not None:
            self.bouncer.configure(self._build_bouncer(self.queue))
        for note in new.warnings():
            log.warning("config_warning", detail=note)
        log.info("config_reloaded", restart_needed=notes)
        return notes

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
        if self.metrics_server is not None:
            self.metrics_server.close()
            await self.metrics_server.wait_closed()
        for server in (self.server, self.tls_server):
            if server is not None:
                await server.wait_closed()
        if self.client is not None:
            await self.client.aclose()
        if self.queue is not None:
            await self.queue.close()
        log.info("stopped")

    async def _stop_intake(self, grace: float) -> None:
        """No new connections; transactions in DATA may finish (and get their 250)."""
        for server in (self.server, self.tls_server):
            if server is not None:
                server.close()
        if self.handler is not None:
            if not await self.handler.drain(grace):
                log.warning("shutdown_smtp_transactions_cut")
            self.handler.close_sessions()
        if isinstance(self.reader, SpillReader):  # it has answered every DATA by now
            await self.reader.close(grace)

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


def server_tls(settings: Settings) -> ServerTLS | None:
    """The certificate from ``smtp.tls_cert``/``smtp.tls_key``, read now (None: no TLS).

    The files may have changed since the config was validated, so it is checked again.
    """
    cert, key = settings.smtp.tls_cert, settings.smtp.tls_key
    if cert is None or key is None:
        return None
    try:
        return ServerTLS(load_context(cert, key))
    except ValueError as exc:
        raise ConfigError([f"smtp.tls_key: {exc}"]) from None


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


async def check_relay(settings: Settings) -> None:
    """Talk to ``bounce.relay`` as a bounce would, up to AUTH (``check-config --online``)."""
    await RelayClient(settings.bounce, helo=settings.smtp.hostname).check()


async def serve(
    settings: Settings,
    stop: asyncio.Event,
    *,
    reload: asyncio.Event | None = None,
    load: Callable[[], Settings] | None = None,
) -> None:
    """Run until ``stop`` is set (SIGTERM/SIGINT); on ``reload`` (SIGHUP), ``load`` again.

    A configuration that does not load is refused with an error log; the old one stays.
    """
    app = App(settings)
    reload = reload or asyncio.Event()
    try:
        await app.start()
        while not stop.is_set() and not app.failed.is_set():
            waits = {asyncio.create_task(e.wait()) for e in (stop, app.failed, reload)}
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            for task in waits:
                task.cancel()
            if reload.is_set() and load is not None:
                reload.clear()
                try:
                    app.reload(load())
                except ConfigError as error:
                    log.error(  # noqa: TRY400  the problems say it all; no traceback
                        "reload_refused",
                        problems=error.problems,
                        detail="the old configuration stays",
                    )
    finally:
        await app.stop()
    if app.failed.is_set():
        raise InternalError("a background task ended unexpectedly; see the task_ended log event")
