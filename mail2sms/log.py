"""Logging: structlog events, human-readable on a terminal, JSON lines for journald otherwise.

Two things never reach a log line unmasked: secrets (any key that names a token, password
or authorization is replaced) and phone numbers (masked as ``+614****5678`` unless the
administrator asks to see them), because logs are shipped and kept far longer than SMS.
"""

from __future__ import annotations

import functools
import logging
import re
import sys
import threading
from collections.abc import Iterable, MutableMapping
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


def _mask_value(value: Any) -> Any:  # noqa: ANN401  log values are of any type
    if isinstance(value, str):
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
        """Write one line and flush it (journald, a pipe: seen at once)."""
        with self._lock:
            try:
                self._stream.write(message + "\n")
                self._stream.flush()
            except (OSError, ValueError):  # ValueError: the stream was closed
                pass

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
        structlog.processors.TimeStamper(fmt="iso", utc=True),
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
    structlog.configure(
        processors=[*shared, structlog.processors.StackInfoRenderer(), *tail, renderer],
        logger_factory=functools.partial(_one_logger, _StreamLogger(out, lock)),
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        cache_logger_on_first_use=False,
    )


def _one_logger(logger: _StreamLogger, *_args: object) -> _StreamLogger:
    return logger


def get_logger(name: str) -> Any:  # noqa: ANN401  structlog's bound logger is dynamically typed
    """A structlog logger named after the module that logs."""
    return structlog.get_logger(name)
