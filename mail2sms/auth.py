"""SMTP AUTH: check a user name and password against ``[[smtp.users]]``, with a lockout.

The scrypt work runs in a thread, so a login never stalls other sessions. A wrong name
costs as much as a wrong password (see ``passwords.dummy_hash``), and the reply is the same.
Repeated failures from one address lock that address out of AUTH for a while; the
lockout is kept in memory only (a restart forgets it).
"""

from __future__ import annotations

import asyncio
import ipaddress
import time
from collections import deque
from collections.abc import Callable, Mapping

from mail2sms.errors import AuthLockedError, BadCredentialsError
from mail2sms.log import get_logger
from mail2sms.passwords import PasswordHash, dummy_hash, verify_password

log = get_logger(__name__)

MAX_FAILURES = 5
FAILURE_WINDOW = 600.0  # seconds: MAX_FAILURES within this lock the address out
LOCKOUT = 900.0  # seconds an address stays locked out
MAX_TRACKED = 10_000  # addresses remembered at most, so a scan cannot fill the memory

BAD_CREDENTIALS = "Authentication credentials invalid"
LOCKED = "Too many failed authentication attempts; try again later"


class Lockout:
    """Counts failed logins per client address and says when one is locked out.

    Pure and clock-injected, so it is tested without sockets or waiting.
    """

    def __init__(
        self,
        *,
        max_failures: int = MAX_FAILURES,
        window: float = FAILURE_WINDOW,
        duration: float = LOCKOUT,
        clock: Callable[[], float] = time.monotonic,
        max_tracked: int = MAX_TRACKED,
    ) -> None:
        self.max_failures = max_failures
        self.window = window
        self.duration = duration
        self.clock = clock
        self.max_tracked = max_tracked
        self._failures: dict[str, deque[float]] = {}
        self._locked_until: dict[str, float] = {}

    def locked(self, key: str) -> bool:
        """Whether ``key`` (a client address) may not try to log in now."""
        until = self._locked_until.get(key)
        if until is None:
            return False
        if self.clock() < until:
            return True
        del self._locked_until[key]
        return False

    def failed(self, key: str) -> bool:
        """Count a failure; True when it is the one that locks ``key`` out."""
        now = self.clock()
        times = self._failures.setdefault(key, deque())
        times.append(now)
        while times and times[0] <= now - self.window:
            times.popleft()
        if len(times) >= self.max_failures:
            self._locked_until[key] = now + self.duration
            return True
        self._forget_old(now)
        return False

    def refund(self, key: str, *, locked_now: bool) -> None:
        """Take back the one failure counted in advance for a login that turned out good.

        Only that one: the address's other failures stay, so one valid account cannot be
        used to reset the count while guessing another's password.
        """
        times = self._failures.get(key)
        if times:
            times.pop()
        if not times:
            self._failures.pop(key, None)
        if locked_now:
            self._locked_until.pop(key, None)

    def _forget_old(self, now: float) -> None:
        if len(self._failures) + len(self._locked_until) <= self.max_tracked:
            return
        for key, times in list(self._failures.items()):
            if times[-1] <= now - self.window:
                del self._failures[key]
        for key, until in list(self._locked_until.items()):
            if until <= now:
                del self._locked_until[key]
        while len(self._failures) > self.max_tracked // 2:  # still full: oldest first
            del self._failures[next(iter(self._failures))]


def lockout_key(ip: str) -> str:
    """An IPv4 address as it is; an IPv6 address by its /64, which one host can roam in."""
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return ip
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.ip_network(f"{address}/64", strict=False))
    return str(address)


async def authenticate(
    login: bytes,
    password: bytes,
    *,
    users: Mapping[str, PasswordHash],
    lockout: Lockout,
    client: str,
    peer: str,
) -> str:
    """The user name, if ``password`` is that user's; else BadCredentialsError.

    ``client`` is the lockout key (the client's IP address). AuthLockedError while it is
    locked out: then the password is not even checked.
    """
    client = lockout_key(client)
    if lockout.locked(client):
        raise AuthLockedError(LOCKED)
    try:
        name: str | None = login.decode("utf-8")
    except UnicodeDecodeError:
        name = None
    stored = users.get(name) if name is not None else None
    # Counted before the slow check, so parallel attempts cannot slip past the limit.
    locks_now = lockout.failed(client)
    good = await asyncio.to_thread(
        verify_password, password, stored or dummy_hash(next(iter(users.values()), None))
    )
    if stored is not None and good:
        lockout.refund(client, locked_now=locks_now)
        return str(name)
    log.warning("smtp_auth_failed", user=(name or "")[:64], peer=peer)
    if locks_now:
        log.warning(
            "smtp_auth_locked",
            peer=peer,
            detail=f"{lockout.max_failures} failed logins: AUTH refused for "
            f"{lockout.duration:.0f}s",
        )
    raise BadCredentialsError(BAD_CREDENTIALS)
