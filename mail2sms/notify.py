"""systemd's notify protocol (sd_notify) over its datagram socket; no dependency needed.

``Type=notify`` lets systemd know when the daemon is really ready (queue open and
recovered, listener bound), and ``WatchdogSec=`` restarts it if the event loop stalls:
the pings come from the loop itself, so a stuck loop stops them. Outside systemd
(``$NOTIFY_SOCKET`` unset) every call does nothing.
"""

from __future__ import annotations

import os
import socket

from mail2sms.log import get_logger

log = get_logger(__name__)


class Notifier:
    """Sends ``KEY=value`` lines to ``$NOTIFY_SOCKET``; never raises (logging is enough)."""

    def __init__(
        self, address: str | None = None, *, environ: dict[str, str] | None = None
    ) -> None:
        env = dict(os.environ) if environ is None else environ
        path = address if address is not None else env.get("NOTIFY_SOCKET")
        # "@name" is an abstract socket: its real name starts with a NUL byte
        self.address = ("\0" + path[1:]) if path and path.startswith("@") else path
        self._watchdog = _watchdog_seconds(env)

    @property
    def enabled(self) -> bool:
        """Running under systemd with ``Type=notify``."""
        return bool(self.address)

    @property
    def watchdog_interval(self) -> float | None:
        """How often to ping: half of ``WatchdogSec``, as systemd recommends; None if off."""
        return None if self._watchdog is None else self._watchdog / 2

    def notify(self, *states: str) -> None:
        """Send e.g. ``READY=1``, ``STOPPING=1``, ``WATCHDOG=1``, ``STATUS=…``."""
        if not self.address:
            return
        message = "\n".join(states).encode("utf-8")
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.sendto(message, self.address)
        except OSError as exc:
            log.warning("sd_notify_failed", error=exc.strerror or type(exc).__name__)


def _watchdog_seconds(env: dict[str, str]) -> float | None:
    """``WATCHDOG_USEC`` for this process (``WATCHDOG_PID``, when set, must be ours)."""
    pid = env.get("WATCHDOG_PID")
    if pid and pid.strip() != str(os.getpid()):
        return None
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    return usec / 1_000_000 if usec > 0 else None
