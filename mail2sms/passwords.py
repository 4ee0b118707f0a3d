"""Password hashes for ``[[smtp.users]]``: salted scrypt (stdlib), self-describing strings.

A hash reads ``scrypt$<n>$<r>$<p>$<salt>$<hash>`` (salt and hash in base64), so the cost
can be raised later without breaking stored hashes: each one carries its own parameters.
Only ``mail2sms hash-password`` makes them; the config refuses anything else, so a
plain-text password pasted into ``password_hash`` is an error, not a weak login.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import secrets
from typing import NamedTuple

SCHEME = "scrypt"
# RFC 7914's interactive-login parameters: 16 MiB and some 50 ms per check.
DEFAULT_N = 2**14
DEFAULT_R = 8
DEFAULT_P = 1
SALT_BYTES = 16
HASH_BYTES = 32
# Bounds on what a config may ask for, so a hash cannot make every login eat the machine.
_MIN_N, _MAX_N = 2**10, 2**20
_MAX_R, _MAX_P = 32, 16
_FORMAT = re.compile(
    r"scrypt\$(\d{1,8})\$(\d{1,2})\$(\d{1,2})\$([A-Za-z0-9+/=]+)\$([A-Za-z0-9+/=]+)"
)
_NOT_A_HASH = "is not a password hash: make one with 'mail2sms hash-password'"


class PasswordHash(NamedTuple):
    """A parsed hash: scrypt's cost parameters, the salt and the derived key."""

    n: int
    r: int
    p: int
    salt: bytes
    digest: bytes

    def __str__(self) -> str:
        salt = base64.b64encode(self.salt).decode("ascii")
        digest = base64.b64encode(self.digest).decode("ascii")
        return f"{SCHEME}${self.n}${self.r}${self.p}${salt}${digest}"

    def derive(self, password: bytes) -> bytes:
        """The scrypt key of ``password`` with this hash's salt and cost (the slow part)."""
        return hashlib.scrypt(
            password,
            salt=self.salt,
            n=self.n,
            r=self.r,
            p=self.p,
            maxmem=256 * self.r * self.n * self.p + 2**20,
            dklen=len(self.digest),
        )


def parse_hash(text: str) -> PasswordHash:
    """Read a stored hash; ValueError (without echoing it: it is a secret) if it is not one."""
    match = _FORMAT.fullmatch(text.strip())
    if not match:
        raise ValueError(_NOT_A_HASH)
    n, r, p = (int(match.group(i)) for i in (1, 2, 3))
    if n & (n - 1) or not _MIN_N <= n <= _MAX_N or not 1 <= r <= _MAX_R or not 1 <= p <= _MAX_P:
        raise ValueError(f"{_NOT_A_HASH} (its scrypt parameters are out of range)")
    try:
        salt = base64.b64decode(match.group(4), validate=True)
        digest = base64.b64decode(match.group(5), validate=True)
    except binascii.Error:
        raise ValueError(_NOT_A_HASH) from None
    if len(salt) < 8 or len(digest) < 16:  # noqa: PLR2004  minimum sizes worth checking
        raise ValueError(_NOT_A_HASH)
    return PasswordHash(n, r, p, salt, digest)


def hash_password(
    password: str, *, n: int = DEFAULT_N, r: int = DEFAULT_R, p: int = DEFAULT_P
) -> str:
    """A new salted hash of ``password`` in the stored format."""
    empty = PasswordHash(n, r, p, secrets.token_bytes(SALT_BYTES), bytes(HASH_BYTES))
    return str(empty._replace(digest=empty.derive(password.encode("utf-8"))))


def verify_password(password: bytes, stored: PasswordHash) -> bool:
    """Whether ``password`` matches; the comparison takes the same time either way."""
    return hmac.compare_digest(stored.derive(password), stored.digest)


def dummy_hash(like: PasswordHash | None = None) -> PasswordHash:
    """A hash no password matches, costing as much as ``like`` to check.

    An unknown user name is checked against it, so a wrong name takes as long as a wrong
    password and the timing does not tell which names exist.
    """
    base = like or PasswordHash(DEFAULT_N, DEFAULT_R, DEFAULT_P, b"", b"")
    return base._replace(
        salt=secrets.token_bytes(SALT_BYTES), digest=secrets.token_bytes(HASH_BYTES)
    )
