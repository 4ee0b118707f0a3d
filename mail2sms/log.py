"""Logging: structlog events, human-readable on a terminal, JSON lines for journald otherwise.

Two things never reach a log line unmasked: secrets (any key that names a token, password
or authorization is replaced) and phone numbers (masked as ``+614****5678`` unless the
administrator asks to see them), because logs are shipped and kept far longer than SMS.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import re
import sys
import threading
import time
from collections.abc import Iterable, Iterator, MutableMapping
from typing import Any, TextIO

import structlog

from mail2sms.addressing import mask_number

SECRET_KEYS = re.compile(
    r"token|password|secret|authorization|api_key|application_key", re.IGNORECASE
)
NUMBER_KEYS = frozenset({"to", "number", "numbers", "recipient", "recipients"})
_MASKED_KEYS = NUMBER_KEYS | {"event", "error", "detail", "exception", "reply"}
# "+61412345678", and bare digits as providers write them ("61412345678 is a invalid
# phone number"); not digits inside words or ids.
_E164 = re.compile(r"(?<![\w+])(?:\+\d{6,15}|\d{8,15})(?!\w)")
_SIX_DIGITS = re.compile(r"\d{6}")


def _timestamp(_logger: object, _name: str, event: MutableMapping[str, Any]) -> Any:  # noqa: ANN401
    """Add the time in UTC, ISO 8601 to the microsecond (``2024-06-04T09:15:02.250000Z``).

    The date and time of day are formatted once a second, not for each line as
    structlog's TimeStamper does: a log line per message is a cost under load.
    """
    global _stamped  # noqa: PLW0603  one cache per process, replaced whole (threads)
    now = time.time()
    second = int(now)
    stamped = _stamped
    if stamped[0] != second:
        stamped = _stamped = (second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)))
    event["timestamp"] = f"{stamped[1]}.{int((now - second) * 1_000_000):06d}Z"
    return event


_stamped: tuple[int, str] = (-1, "")


def _mask_value(value: Any) -> Any:  # noqa: ANN401  log values are of any type
    if isinstance(value, str):
        if not _SIX_DIGITS.search(value):  # what every number _E164 finds has
            return value
        return _E164.sub(lambda m: mask_number(m.group(0)), value)
    if isinstance(value, list | tuple | set | frozenset):
        return [_mask_value(v) for v in value]
    return value


class _Redactor:
    """A structlog processor that hides secrets always and phone numbers unless allowed."""

    def __init__(self, *, show_numbers: bool) -> None:
        self.show_numbers = show_numbers
        self._secret: dict[str, bool] = {}  # log keys are few: each is matched once

    def __call__(
        self,
        _logger: object,
        _name: str,
        event: MutableMapping[str, Any],
    ) -> MutableMapping[str, Any]:
        for key in list(event):
            secret = self._secret.get(key)
            if secret is None:
                secret = self._secret[key] = SECRET_KEYS.search(key) is not None
            if secret:
                event[key] = "[redacted]"
            elif not self.show_numbers and key in _MASKED_KEYS:
                event[key] = _mask_value(event[key])
        return event


_held = threading.local()
"""``on`` while a thread's lines are held for one flush (``together``)."""
_stream_logger: _StreamLogger | None = None
"""The one writer our events go to, once ``configure`` ran."""


@contextlib.contextmanager
def together() -> Iterator[None]:
    """Write the lines this thread logs inside as one write, at the end.

    For lines logged in a burst (a group commit's ``message_accepted``): one write call
    instead of one per line, and a reader of the log sees them a moment later at most.
    Never across an ``await``: every task of an event loop shares its thread, and their
    lines would wait too.
    """
    if getattr(_held, "on", False):  # nested: the outer one flushes
        yield
        return
    _held.on = True
    try:
        yield
    finally:
        _held.on = False
        if _stream_logger is not None:
            _stream_logger.flush()


class _StreamLogger:
    """Writes each rendered event as one line, under the handler's lock; never raises.

    As ``logging.Handler`` does, a line that cannot be written (a closed pipe, a full disk)
    is dropped: the work that logged it must go on (delivery would otherwise leave SMS it
    sent unrecorded, and send them again). One lock with the stdlib handler keeps lines
    from other libraries whole beside ours.
    """

    def __init__(self, stream: TextIO, lock: threading.RLock) -> None:
        self._stream = stream
        self._lock = lock

    def msg(self, message: str) -> None:
        """Write one line and flush it (journald, a pipe: seen at once), unless held."""
        with self._lock:
            try:
                self._stream.write(message + "\n")
                if not getattr(_held, "on", False):
                    self._stream.flush()
            except (OSError, ValueError):  # ValueError: the stream was closed
                pass

    def flush(self) -> None:
        """Flush what was written while held; never raises, as ``msg``."""
        with self._lock, contextlib.suppress(OSError, ValueError):
            self._stream.flush()

    log = debug = info = warn = warning = err = error = critical = exception = fatal = msg


def configure(
    *,
    json_lines: bool | None = None,
    level: str = "INFO",
    show_numbers: bool = False,
    stream: TextIO | None = None,
) -> None:
    """Set up structlog and route the stdlib loggers (aiosmtpd, httpx) through it."""
    out = stream or sys.stdout
    use_json = not out.isatty() if json_lines is None else json_lines
    redactor = _Redactor(show_numbers=show_numbers)
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        _timestamp,
        redactor,
    ]
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if use_json
        else structlog.dev.ConsoleRenderer(colors=out.isatty())
    )
    tail: Iterable[Any] = [structlog.processors.dict_tracebacks] if use_json else []
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *tail, renderer],
    )
    handler = logging.StreamHandler(out)
    handler.setFormatter(formatter)
    lock = threading.RLock()
    handler.lock = lock  # the handler's own, shared with ``_StreamLogger``
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aiosmtpd logs every envelope address (phone numbers) at INFO; httpx logs every URL.
    for noisy in ("mail.log", "httpx", "httpcore", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # Our own events skip the stdlib's records and handlers (a third of the cost of a
    # line) and go straight to the stream; other libraries' go through ``handler``.
    global _stream_logger  # noqa: PLW0603  one configuration per process
    _stream_logger = _StreamLogger(out, lock)
    structlog.configure(
        processors=[*shared, structlog.processors.StackInfoRenderer(), *tail, renderer],
        logger_factory=functools.partial(_one_logger, _stream_logger),
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        cache_logger_on_first_use=False,
    )


def _one_logger(logger: _StreamLogger, *_args: object) -> _StreamLogger:
    return logger


def get_logger(name: str) -> Any:  # noqa: ANN401  structlog's bound logger is dynamically typed
    """A structlog logger named after the module that logs."""
    return structlog.get_logger(name)
