"""Checks on the raw SMTP DATA stream that stop smuggling and junk bytes; pure, no sockets.

aiosmtpd ends a message only at ``<CRLF>.<CRLF>``, but other servers on the path may end it
at a lone ``.`` next to a bare CR or LF. A message that contains such a look-alike can hide
a second message behind it (SMTP smuggling, CVE-2023-51764 and relatives), so it is refused
whole rather than cleaned up. Bare LF or CR line ends on their own are legacy devices
(alarm panels, old printers) and are only normalised. The protocol class in ``smtp`` feeds
every DATA line through ``is_end_of_data_lookalike`` before aiosmtpd removes the
dot-stuffing, which would hide the dot.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable

from mail2sms.errors import BadMessageDataError

__all__ = [
    "LogThrottle",
    "check_no_nul",
    "end_of_data_lookalike_error",
    "is_end_of_data_lookalike",
    "normalize_line_ends",
]

# A "." with a line break on both sides, where at least one is a bare CR or LF: on a
# DATA line (which ends in the only CRLF it holds) any CR or LF before the end is bare.
_LOOKALIKE = re.compile(rb"(?:\A|[\r\n])\.[\r\n]")
_END_OF_DATA = b".\r\n"
_LINE_END = re.compile(rb"\r\n|\r|\n")

_LOOKALIKE_TEXT = (
    "The message contains a bare CR or LF next to a line with only '.', which mail "
    "servers can mistake for the end of the message: send lines ending in CRLF"
)
_NUL_TEXT = (
    "The message contains NUL bytes, which are not allowed in mail: send it as text, "
    "or attach binary data in base64"
)


def is_end_of_data_lookalike(line: bytes) -> bool:
    """Say whether a DATA line hides a lone ``.`` with a bare CR or LF on either side.

    ``line`` is as read up to its CRLF, before dot-unstuffing. The real end of data (the
    line ``.<CRLF>``) is not one; a stuffed ``..`` never is.
    """
    return line != _END_OF_DATA and _LOOKALIKE.search(line) is not None


def end_of_data_lookalike_error() -> BadMessageDataError:
    """The refusal for a message that contained an end-of-data look-alike."""
    return BadMessageDataError(_LOOKALIKE_TEXT)


def check_no_nul(raw: bytes) -> None:
    """Refuse NUL bytes anywhere in the message (RFC 5322 forbids them; parsers disagree)."""
    if b"\x00" in raw:
        raise BadMessageDataError(_NUL_TEXT)


def normalize_line_ends(raw: bytes) -> bytes:
    """Make every bare LF or bare CR a CRLF, as legacy devices mean them.

    The parser reads all three as line ends anyway; doing it first makes the stored
    headers and the body agree on what a line is.
    """
    return _LINE_END.sub(b"\r\n", raw)


class LogThrottle:
    """Let one log line through per ``interval`` seconds and count the ones held back.

    A connection flood must not fill the journal with one line per refused connection.
    """

    def __init__(self, interval: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = interval
        self.clock = clock
        self._next = float("-inf")
        self._held = 0

    def allow(self) -> int | None:
        """None if this event is held back; else how many were held back before it."""
        now = self.clock()
        if now < self._next:
            self._held += 1
            return None
        held, self._held = self._held, 0
        self._next = now + self.interval
        return held
