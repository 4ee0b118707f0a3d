"""Delivery workers: claim due work from the queue, send it, record what the provider said.

One dispatcher claims at most as many messages as there are free workers, so no more than
``delivery.workers`` provider requests run at once; under a provider's published rate limit,
one message per token taken, with the same-text mail that came due meanwhile in its request.
Every outcome is written back to the queue before the next claim; a worker that dies
leaves its rows leased, and the lease (or the next start's recovery) hands them out
again: at-least-once.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace

from mail2sms.config import DeliveryConfig
from mail2sms.errors import (
    PermanentProviderError,
    ProviderAccountError,
    QueueError,
    TransientProviderError,
)
from mail2sms.log import get_logger
from mail2sms.loop import QueueLoop
from mail2sms.metrics import Metrics
from mail2sms.models import ClaimedJob, Outcome, RecipientResult, SmsBatch, is_contact_list
from mail2sms.providers.base import Provider
from mail2sms.queue import AsyncQueue
from mail2sms.rate_limit import TokenBucket

log = get_logger(__name__)

RECORD_GRACE = 10.0  # seconds drain waits, past its grace, for answers being recorded
IDLE_POLL = 1.0  # seconds between looks at the queue when nothing is due (sees CLI retries)
MIN_LEASE = 300.0
# RFC 3463 codes a bounce reports: the provider refused this number; retries ran out.
STATUS_BAD_NUMBER = "5.1.1"
STATUS_EXPIRED = "4.4.7"


def backoff(
    attempts: int,
    *,
    initial: float,
    maximum: float,
    retry_after: float | None = None,
    rng: Callable[[], float] = random.random,
) -> float:
    """Seconds until the next try: doubling from ``initial``, capped, with jitter.

    The jitter keeps half the delay fixed and randomises the other half, so a burst of
    failures does not come back as a burst. A provider's Retry-After is a floor.
    """
    base = min(maximum, initial * 2.0 ** max(0, attempts - 1))
    delay = base / 2 + rng() * base / 2
    return max(delay, retry_after or 0.0)


def chunks(numbers: Sequence[str], size: int) -> list[tuple[str, ...]]:
    """Split recipients into provider-sized requests."""
    return [tuple(numbers[i : i + size]) for i in range(0, len(numbers), size)]


class Delivery(QueueLoop):
    """The dispatcher and its workers."""

    name = "delivery"

    def __init__(
        self,
        *,
        queue: AsyncQueue,
        provider: Provider,
        config: DeliveryConfig,
        request_timeout: float,
        clock: Callable[[], float] = time.time,
        rng: Callable[[], float] = random.random,
        on_failed: Callable[[], None] | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        super().__init__()
        self.metrics = metrics
        self.queue = queue
        self._on_failed = on_failed or (lambda: None)
        self.config = config
        self.clock = clock
        self.rng = rng
        self.lease = max(MIN_LEASE, request_timeout * 4)
        self._active: set[asyncio.Task[None]] = set()
        self._recording: set[asyncio.Future[None]] = set()
        """Providers' answers being recorded: ``drain`` lets them finish."""
        self.limiter: TokenBucket | None = None
        self.use_provider(provider)

    def use_provider(self, provider: Provider) -> None:
        """Send with ``provider`` from the next batch on (a reload may change it)."""
        self.provider = provider
        rate = provider.requests_per_second
        self.limiter = TokenBucket.for_limit(rate) if rate else None

    async def run(self) -> None:
        """Claim and dispatch until ``stop`` is called."""
        log.info("delivery_started", provider=self.provider.name, workers=self.config.workers)
        await super().run()

    async def _pass(self) -> None:
        """Claim what is due for the free workers, start them, then wait for more work.

        Under a rate limit, one message at a time, claimed once its request's token is
        there (nothing is leased while waiting for it; an unused token is given back).
        Workers that each held a claimed message while waiting for a token would each
        spend one on it alone, while the first to get one took along all the mail that had
        come meanwhile: a burst to many people then cost a request per worker for every
        full one. Each message's companions (``_alike``) are gathered before the next
        claim, which would otherwise take one of them as a message of its own.
        """
        free = self.config.workers - len(self._active)
        limiter = self.limiter
        wanted = 1 if limiter is not None else free
        claimed: list[ClaimedJob] = []
        if free > 0:
            if limiter is not None:
                await limiter.acquire()  # the first request's token: the worker sends at once
                if self.stopping:
                    limiter.refund()
                    return
            try:
                claimed = await self.queue.claim(now=self.clock(), lease=self.lease, limit=wanted)
            finally:
                if limiter is not None and not claimed:
                    limiter.refund()  # nothing due (or the claim failed): no request made
            # started even when stop() came meanwhile: stop() waits for this pass, then them
            for job in claimed:
                alike = await self._alike(job)
                task = asyncio.create_task(
                    self._deliver(job, alike, paid=limiter), name=f"deliver-{job.queue_id}"
                )
                self._active.add(task)
                task.add_done_callback(self._finished)
        if claimed and len(claimed) == wanted:
            return  # there may be more due work; claim again once a worker frees up
        timeout = IDLE_POLL
        if free > len(claimed):
            due = await self.queue.next_due()
            if due is not None:
                timeout = min(IDLE_POLL, max(0.0, due - self.clock()))
        await self.nap(timeout)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._active.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("delivery_task_crashed", exc_info=task.exception())
        self._wake.set()

    async def drain(self, grace: float) -> None:
        """Stop claiming; let sends in flight finish within ``grace`` seconds, then cancel.

        The dispatcher's pass in progress ends first, so a claim it is making is sent (and
        recorded) too. A cancelled send leaves its rows leased; the next start resends them.
        An answer the provider already gave is recorded to the end (``RECORD_GRACE``): its
        SMS were sent, and the log and metrics must say so.
        """
        deadline = time.monotonic() + grace
        self.stop()
        await self.ended(grace)
        if self._active:
            remaining = max(0.0, deadline - time.monotonic())
            _done, pending = await asyncio.wait(set(self._active), timeout=remaining)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending)
                log.warning("delivery_cancelled_at_shutdown", messages=len(pending))
        if self._recording:  # answers already given: a few queue writes, not a send
            await asyncio.wait(set(self._recording), timeout=RECORD_GRACE)

    async def _alike(self, job: ClaimedJob) -> list[ClaimedJob] | None:
        """Other due messages to send in ``job``'s request, or None where it is not combined.

        A job that leaves room in its request takes other due messages with the same text
        along (see ``Queue.claim_alike``): one request, one token of the provider's rate
        limit. If the queue cannot say which, the job goes alone.
        """
        numbers = tuple(r for r in job.recipients if not is_contact_list(r))
        room = self.provider.max_recipients - len(numbers)
        if not (numbers and room > 0 and self.provider.combines_messages):
            return None
        try:
            return await self.queue.claim_alike(
                replace(job, recipients=numbers), room=room, now=self.clock(), lease=self.lease
            )
        except QueueError as exc:
            log.error(  # noqa: TRY400  expected; the job is sent on its own
                "queue_error", loop="delivery", queue_id=job.queue_id, error=str(exc)
            )
            return []

    async def _deliver(
        self,
        job: ClaimedJob,
        alike: Sequence[ClaimedJob] | None = None,
        *,
        paid: TokenBucket | None = None,
    ) -> None:
        """Send the job batch by batch, renewing the lease before each.

        A long job (many batches, rate limiting, slow answers) is then never claimed
        again by another worker while this one still works on it. ``alike``: the messages
        that share its request (``_alike``), None to send it in requests of its own.
        ``paid``: the rate limit from which the dispatcher took the first request's token.
        Contact lists the provider cannot send to are failed after the sends, so that a
        queue error recording that does not hold the numbers back.
        """
        lists = [r for r in job.recipients if is_contact_list(r)]
        numbers = tuple(r for r in job.recipients if not is_contact_list(r))
        requests: list[list[tuple[ClaimedJob, tuple[str, ...]]]] = []
        if alike is not None:
            requests.append([(job, numbers), *((o, o.recipients) for o in alike)])
        else:
            requests += [[(job, batch)] for batch in chunks(numbers, self.provider.max_recipients)]
        if self.provider.supports_contact_lists:  # a contact list is a request of its own
            requests += [[(job, (contact_list,))] for contact_list in lists]
        if paid is not None and not requests:
            paid.refund()  # only contact lists, which this provider cannot send to
        for i, parts in enumerate(requests):
            await self._send_batch(parts, paid=paid if i == 0 else None)
        if lists and not self.provider.supports_contact_lists:
            reason = f"{self.provider.name} cannot send to contact lists (DataFlows can)"
            for contact_list in lists:
                await self._fail(job, (contact_list,), reason, "5.3.3")

    async def _send_batch(
        self,
        parts: Sequence[tuple[ClaimedJob, tuple[str, ...]]],
        *,
        paid: TokenBucket | None = None,
    ) -> None:
        """Send one request for the numbers of one or more jobs with the same text.

        ``paid``: the rate limit its token was already taken from (a reload that changed
        the provider since then means a token of the new one is needed).
        """
        await self._renew(parts)
        first = parts[0][0]
        batch = SmsBatch(
            queue_id=first.queue_id,
            recipients=tuple(n for _job, numbers in parts for n in numbers),
            text=first.text,
            sender_id=first.sender_id,
            sms_type=first.sms_type,
        )
        if self.limiter is not None and self.limiter is not paid:
            await self.limiter.acquire()  # stay under the provider's published rate limit
        started = self.clock()
        try:
            results = await self.provider.send(batch)
        except Exception as exc:  # noqa: BLE001  every failure is recorded, none is lost
            await self._request_failed(parts, exc)
            return
        duration = self.clock() - started
        if self.metrics is not None:
            self.metrics.latency.labels(provider=self.provider.name).observe(duration)
        by_number = {r.recipient: r for r in results}
        # The provider has answered: what it said is recorded (and logged, and counted) to
        # the end even if this worker is cancelled meanwhile (``drain`` waits for it).
        recording = asyncio.ensure_future(self._record_results(parts, by_number, duration))
        self._recording.add(recording)
        recording.add_done_callback(self._recording.discard)
        await asyncio.shield(recording)

    async def _record_results(
        self,
        parts: Sequence[tuple[ClaimedJob, tuple[str, ...]]],
        by_number: Mapping[str, RecipientResult],
        duration: float,
    ) -> None:
        recorded = await self._record_sent(parts, by_number)
        for job, numbers in parts:
            try:
                await self._record(job, numbers, by_number, duration, sent_recorded=recorded)
            except QueueError as exc:  # the others' results must still be recorded
                log.error(  # noqa: TRY400  expected; the lease brings this one back
                    "queue_error", loop="delivery", queue_id=job.queue_id, error=str(exc)
                )

    async def _record_sent(
        self,
        parts: Sequence[tuple[ClaimedJob, tuple[str, ...]]],
        by_number: Mapping[str, RecipientResult],
    ) -> bool:
        """Record every message's sent numbers in one transaction; False if that failed.

        Then each message is recorded alone (``_record``), so that one that cannot be
        does not hold back the others.
        """
        sent = []
        for job, numbers in parts:
            taken = _with_outcome(numbers, by_number, Outcome.SENT)
            if taken:
                refs = {n: by_number[n].provider_ref for n in taken}
                sent.append((job.queue_id, taken, refs))
        if not sent:
            return True
        try:
            await self.queue.mark_sent_many(sent, now=self.clock())
        except QueueError:
            return False
        return True

    async def _renew(self, parts: Sequence[tuple[ClaimedJob, tuple[str, ...]]]) -> None:
        """Extend the leases before a request, and say which numbers may get it twice.

        Leases taken moments ago (a first request) have half their time or more left,
        twice a request's timeout at least: renewing them would be a write transaction
        (and a wait for the queue's lock) for nothing.
        """
        now = self.clock()
        if any(job.lease_until < now + self.lease / 2 for job, _ in parts):
            await self.queue.renew_leases(
                [(job.queue_id, job.recipients) for job, _ in parts], until=now + self.lease
            )
        for job, numbers in parts:
            maybe_sent = [n for n in numbers if n in job.possible_duplicates]
            if maybe_sent:
                log.warning(
                    "possible_duplicate",
                    queue_id=job.queue_id,
                    recipients=maybe_sent,
                    detail="a send to these was in flight when the daemon stopped or a worker "
                    "died; the provider may already have sent it",
                )

    async def _request_failed(
        self, parts: Sequence[tuple[ClaimedJob, tuple[str, ...]]], exc: Exception
    ) -> None:
        """A request failed as a whole: retry or fail every job that was in it.

        A refusal of a request that combined several messages is not pinned on all of
        them: one bad number would bounce other people's mail. Each is sent alone instead.
        """
        if isinstance(exc, PermanentProviderError) and len(parts) > 1:
            log.info(
                "combined_request_refused",
                queue_ids=[job.queue_id for job, _numbers in parts],
                error=str(exc),
                detail="sending each message on its own to find the one refused",
            )
            for part in parts:
                await self._send_batch([part])
            return
        first = parts[0][0]
        if isinstance(exc, ProviderAccountError):
            log.error(
                "provider_account_error",
                queue_id=first.queue_id,
                provider=self.provider.name,
                error=str(exc),
                hint="check provider.token and the account's balance; mail stays queued",
            )
        elif not isinstance(exc, TransientProviderError | PermanentProviderError):
            log.error(
                "provider_crashed",
                queue_id=first.queue_id,
                provider=self.provider.name,
                exc_info=exc,
            )
        for job, numbers in parts:
            if isinstance(exc, ProviderAccountError):
                # never given up on: a wrong token must not bounce every customer's mail
                await self._retry(job, numbers, str(exc), exc.retry_after, may_give_up=False)
            elif isinstance(exc, TransientProviderError):
                await self._retry(job, numbers, str(exc), exc.retry_after)
            elif isinstance(exc, PermanentProviderError):
                await self._fail(job, numbers, str(exc), exc.status)
            else:
                await self._retry(job, numbers, f"internal error: {type(exc).__name__}", None)

    async def _record(
        self,
        job: ClaimedJob,
        numbers: tuple[str, ...],
        by_number: Mapping[str, RecipientResult],
        duration: float,
        *,
        sent_recorded: bool,
    ) -> None:
        sent = _with_outcome(numbers, by_number, Outcome.SENT)
        failed = _with_outcome(numbers, by_number, Outcome.PERMANENT)
        held = _with_outcome(numbers, by_number, Outcome.HELD)
        retry = [n for n in numbers if n not in sent and n not in failed and n not in held]
        self._count("sent", len(sent))
        if sent:
            if not sent_recorded:
                await self.queue.mark_sent(
                    job.queue_id,
                    sent,
                    now=self.clock(),
                    provider_refs={n: by_number[n].provider_ref for n in sent},
                )
            log.info(
                "sms_sent",
                queue_id=job.queue_id,
                provider=self.provider.name,
                recipients=sent,
                attempt=job.attempts,
                duration_ms=round(duration * 1000),
            )
        for number in failed:
            detail = by_number[number].detail or "the provider refused this number"
            await self._fail(job, (number,), detail, STATUS_BAD_NUMBER)
        if held:  # the operator's account, for these numbers only: keep them, say so loudly
            reason = "; ".join(sorted({by_number[n].detail for n in held} - {""}))
            log.error(
                "provider_account_error",
                queue_id=job.queue_id,
                provider=self.provider.name,
                recipients=held,
                error=reason,
                hint="check the provider account; these numbers stay queued",
            )
            await self._retry(job, held, reason, None, may_give_up=False)
        if retry:
            details = {by_number[n].detail for n in retry if n in by_number} - {""}
            reason = "; ".join(sorted(details)) or "the provider gave no result for it"
            await self._retry(job, retry, reason, None)

    async def _retry(
        self,
        job: ClaimedJob,
        numbers: Sequence[str],
        error: str,
        retry_after: float | None,
        *,
        may_give_up: bool = True,
    ) -> None:
        now = self.clock()
        if may_give_up and now - job.received_at >= self.config.give_up_after:
            await self._fail(
                job,
                numbers,
                f"gave up after {job.attempts} attempts; last error: {error}",
                STATUS_EXPIRED,
            )
            return
        delay = backoff(
            job.attempts,
            initial=self.config.retry_initial,
            maximum=self.config.retry_max,
            retry_after=retry_after,
            rng=self.rng,
        )
        await self.queue.mark_retry(job.queue_id, numbers, now=now, at=now + delay, error=error)
        self._count("deferred", len(numbers))
        log.warning(
            "sms_deferred",
            queue_id=job.queue_id,
            provider=self.provider.name,
            recipients=list(numbers),
            attempt=job.attempts,
            retry_in_s=round(delay, 1),
            error=error,
        )

    def _count(self, outcome: str, recipients: int) -> None:
        if self.metrics is not None and recipients:
            self.metrics.sms.labels(provider=self.provider.name, outcome=outcome).inc(recipients)

    async def _fail(self, job: ClaimedJob, numbers: Sequence[str], error: str, status: str) -> None:
        await self.queue.mark_failed(
            job.queue_id, numbers, now=self.clock(), error=error, status=status
        )
        self._count("failed", len(numbers))
        self._on_failed()
        log.warning(
            "sms_failed",
            queue_id=job.queue_id,
            provider=self.provider.name,
            recipients=list(numbers),
            attempt=job.attempts,
            sender=job.envelope_from,
            error=error,
        )


def _with_outcome(
    numbers: Sequence[str], by_number: Mapping[str, RecipientResult], outcome: Outcome
) -> list[str]:
    """The numbers whose result in ``by_number`` has this outcome (in their order)."""
    return [n for n in numbers if n in by_number and by_number[n].outcome is outcome]
