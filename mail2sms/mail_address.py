"""Email addresses and host names in the plain form a bounce can be written to; pure.

A bounce goes to the envelope sender with ``MAIL FROM:<>`` and names it in its To header,
so mail2sms only accepts senders it can bounce to: an ASCII dot-atom local part (no
quoted strings, no encoded words) at an ASCII host name or an address literal
(``alarm@[192.0.2.7]``, ``[IPv6:2001:db8::7]``). Internationalised domains are kept in
their ASCII (``xn--``) form, so the allowlist, RCPT matching and bounces all compare and
write one spelling. Special-use names (``.local``, ``.internal``, ``.lan``) are fine:
gateways live on internal networks.
"""

from __future__ import annotations

import ipaddress
import re

__all__ = ["ascii_domain", "ascii_hostname", "plain_address", "simple_path"]

_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_DOT_ATOM = re.compile(rf"{_ATOM}(?:\.{_ATOM})*")
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOSTNAME = re.compile(rf"(?=.{{1,253}}\Z){_LABEL}(?:\.{_LABEL})*")
# Not "=?" first: the parser decodes an RFC 2047 encoded word there (any local part at all).
_SIMPLE_PATH = re.compile(rf"[ \t]*<(?!=\?)({_ATOM}(?:\.{_ATOM})*@{_LABEL}(?:\.{_LABEL})*)>")
_MAX_PATH = 254  # RFC 5321's limit on a forward or reverse path, without the brackets


def ascii_hostname(name: str) -> str:
    """A host name as lower-case ASCII (IDNA), without a trailing dot; ValueError if not one."""
    cleaned = name.strip().rstrip(".")
    if cleaned.isascii():  # IDNA leaves ASCII as it is; _HOSTNAME checks its labels
        encoded = cleaned.lower()
    else:
        try:
            encoded = cleaned.encode("idna").decode("ascii").lower()
        except UnicodeError:
            raise ValueError(f"{name!r} is not a host name") from None
    if not _HOSTNAME.fullmatch(encoded):
        raise ValueError(f"{name!r} is not a host name")
    return encoded


def ascii_domain(domain: str) -> str:
    """The domain of an address: a host name, or an address literal such as ``[192.0.2.7]``."""
    cleaned = domain.strip()
    if not (cleaned.startswith("[") and cleaned.endswith("]")):
        return ascii_hostname(cleaned)
    inner = cleaned[1:-1]
    tagged = inner[:5].lower() == "ipv6:"
    try:
        ip = ipaddress.ip_address(inner[5:] if tagged else inner)
    except ValueError:
        raise ValueError(f"{domain!r} is not an address literal") from None
    if (ip.version == 6) != tagged:  # noqa: PLR2004  RFC 5321 §4.1.3: "IPv6:" and only for v6
        raise ValueError(f"{domain!r} is not an address literal: write [IPv6:…] for IPv6 only")
    return f"[IPv6:{ip.compressed}]" if tagged else f"[{ip}]"


def plain_address(address: str) -> str:
    """``local@domain`` with the domain in ASCII; ValueError if a bounce could not go to it."""
    local, at, domain = address.strip().rpartition("@")
    if not at or not _DOT_ATOM.fullmatch(local) or "=?" in local:
        raise ValueError(
            f"{address!r} is not a plain email address (name@example.com, ASCII name part)"
        )
    result = f"{local}@{ascii_domain(domain)}"
    if len(result) > _MAX_PATH:
        raise ValueError(f"{address!r} is longer than {_MAX_PATH} characters")
    return result


def simple_path(arg: str) -> tuple[str, str] | None:
    """``<local@host>`` and what follows it, or None if the path is less plain than that.

    For such a path this is what aiosmtpd's full parse returns (the email package's
    header parser, about a fifth of a busy gateway's CPU, for every MAIL and RCPT); for
    anything else (quoted local parts, comments, literals, encoded words, ``<>``) the full
    parse runs.
    """
    match = _SIMPLE_PATH.match(arg)
    if match is None:
        return None
    rest = arg[match.end() :]
    if rest[:1] in {" ", "\t", "("}:  # the parser drops folding white space after the ">"
        rest = rest.lstrip()
        if rest.startswith("("):
            return None  # and comments, which only the parser reads
    return match.group(1), rest
