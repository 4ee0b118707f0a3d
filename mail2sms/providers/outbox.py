"""The outbox provider: every SMS becomes one JSON line in a file instead of leaving the host.

It is the default, so a new installation shows what it would send before any provider
account exists, and tests and demos need no network. A line is written only after it is
on disk (flush + fsync), because "sent" here is what the queue acknowledges.
"""

from __future__ import annotations

import asyncio
import json
import os
from datetime import UTC, datetime
from typing import TYPE_CHECKING, ClassVar, Self

from mail2sms.errors import ProviderAccountError, TransientProviderError
from mail2sms.models import AccountStatus, Outcome, RecipientResult
from mail2sms.providers.base import Provider

if TYPE_CHECKING:
    from pathlib import Path

    import httpx

    from mail2sms.config import ProviderConfig
    from mail2sms.models import SmsBatch


class OutboxProvider(Provider):
    """Append ``{"time", "queue_id", "to", "sender_id", "text"}`` per recipient to ``path``."""

    name: ClassVar[str] = "outbox"
    max_recipients: ClassVar[int] = 1000
    supports_unicode: ClassVar[bool] = True
    requests_per_second: ClassVar[float | None] = None
    docs_url: ClassVar[str] = "docs/providers.md#outbox"

    def __init__(self, path: Path) -> None:
        self.path = path
        # Workers send concurrently; one writer at a time keeps every line whole.
        self._lock = asyncio.Lock()

    @classmethod
    def from_config(cls, config: ProviderConfig, client: httpx.AsyncClient) -> Self:  # noqa: ARG003  the interface passes the client to every provider
        """Only ``provider.path`` matters; the HTTP client is not used."""
        return cls(config.path)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(path={str(self.path)!r})"

    async def send(self, batch: SmsBatch) -> list[RecipientResult]:
        """Write one line per recipient; a disk error keeps the mail queued for a retry."""
        now = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        lines = "".join(
            json.dumps(
                {
                    "time": now,
                    "queue_id": batch.queue_id,
                    "to": number,
                    "sender_id": batch.sender_id,
                    "text": batch.text,
                },
                ensure_ascii=False,
            )
            + "\n"
            for number in batch.recipients
        )
        async with self._lock:
            try:
                await asyncio.to_thread(self._append, lines)
            except OSError as exc:
                reason = exc.strerror or type(exc).__name__
                raise TransientProviderError(
                    f"outbox: cannot write {self.path}: {reason}"
                ) from None
        detail = f"written to {self.path}"
        return [
            RecipientResult(recipient=number, outcome=Outcome.SENT, detail=detail)
            for number in batch.recipients
        ]

    async def check_account(self) -> AccountStatus:
        """There is no account: check that the outbox file can be written."""
        try:
            await asyncio.to_thread(self._append, "")
        except OSError as exc:
            reason = exc.strerror or type(exc).__name__
            raise ProviderAccountError(f"outbox: cannot write {self.path}: {reason}") from None
        return AccountStatus(balance=None, detail=f"{self.path} is writable")

    def _append(self, lines: str) -> None:
        """Blocking part: create the directory, append, fsync (and fsync a new file's dir)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        created = not self.path.exists()
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(lines)
            handle.flush()
            os.fsync(handle.fileno())
        if created:
            directory = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(directory)
            finally:
                os.close(directory)
