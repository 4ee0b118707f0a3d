"""The loop shared by the delivery dispatcher and the bouncer: look at the queue, never die.

Both wake when told (new mail, a failure, a CLI retry) or when work falls due, and both
must keep running whatever one pass raises: a locked or full queue database is logged and
tried again after a pause, because a loop that ended silently would leave the daemon
answering 250 to mail it never sends.
"""

from __future__ import annotations

import asyncio
import contextlib

from mail2sms.errors import QueueError
from mail2sms.log import get_logger

log = get_logger(__name__)

ERROR_PAUSE = 5.0  # seconds before a pass that failed is tried again


class QueueLoop:
    """Runs ``_pass`` until ``stop``; subclasses say what one pass does."""

    name = "loop"

    def __init__(self) -> None:
        self._wake = asyncio.Event()
        self._stopping = False
        self._ended = asyncio.Event()

    @property
    def stopping(self) -> bool:
        """``stop`` was called: finish what is in hand, start nothing new."""
        return self._stopping

    def wake(self) -> None:
        """Look at the queue now instead of at the next poll."""
        self._wake.set()

    def stop(self) -> None:
        """Ask the loop to end after the pass in progress."""
        self._stopping = True
        self._wake.set()

    async def run(self) -> None:
        """Run passes until ``stop``; an error in one pass is logged, never fatal."""
        try:
            while not self._stopping:
                self._wake.clear()
                try:
                    await self._pass()
                except QueueError as exc:
                    log.error(  # noqa: TRY400  the message says it all; no traceback needed
                        "queue_error",
                        loop=self.name,
                        error=str(exc),
                        retry_in_s=ERROR_PAUSE,
                    )
                    await self.nap(ERROR_PAUSE)
                except Exception:
                    log.exception("loop_error", loop=self.name, retry_in_s=ERROR_PAUSE)
                    await self.nap(ERROR_PAUSE)
        finally:
            self._ended.set()

    async def ended(self, within: float) -> bool:
        """Wait up to ``within`` seconds for ``run`` to return; False if it did not."""
        try:
            await asyncio.wait_for(self._ended.wait(), within)
        except TimeoutError:
            return False
        return True

    async def nap(self, seconds: float) -> None:
        """Sleep until ``seconds`` pass, ``wake`` or ``stop``."""
        if self._stopping:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), seconds)

    async def _pass(self) -> None:
        raise NotImplementedError
