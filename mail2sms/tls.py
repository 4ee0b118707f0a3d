"""The server's TLS certificate: loaded from ``smtp.tls_cert``/``smtp.tls_key``, swappable.

A renewed certificate is picked up on SIGHUP without a restart: new connections (STARTTLS
and the implicit-TLS listener alike) get the new one, sessions already running keep theirs.
"""

from __future__ import annotations

import ssl
from pathlib import Path


def load_context(cert: Path, key: Path) -> ssl.SSLContext:
    """A server context for this certificate chain and key (TLS 1.2 or later).

    ValueError says what is wrong with which file; it never quotes the key.
    """
    for path in (cert, key):
        try:
            path.read_bytes()
        except OSError as exc:
            raise ValueError(f"cannot read {path}: {exc.strerror}") from None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        # an encrypted key would ask for a passphrase on the terminal; it gets none here
        context.load_cert_chain(cert, key, password=b"")
    except ssl.SSLError as exc:
        reason = exc.reason or str(exc)
        raise ValueError(
            f"{cert} and {key} are not a matching PEM certificate and unencrypted private "
            f"key ({reason})"
        ) from None
    return context


class ServerTLS:
    """The certificate in use, replaced on reload; ``listener`` is for the implicit-TLS port.

    ``context`` is read when a connection starts STARTTLS. The listening socket's context
    cannot be replaced, so ``listener`` hands each handshake over to the current
    ``context`` (the SNI callback runs for every ClientHello, with or without SNI).
    """

    def __init__(self, context: ssl.SSLContext) -> None:
        self.context = context
        self.listener = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.listener.sni_callback = self._use_current

    def _use_current(
        self, connection: ssl.SSLObject, _server_name: str | None, _context: ssl.SSLContext
    ) -> None:
        connection.context = self.context
