"""Is the From domain really the sender's? DMARC-style alignment for ``senders.verify``.

An allowlist of From addresses is worthless on the internet: anyone can write any From
line. With ``senders.verify = "dmarc"`` a message from an unauthenticated client is taken
only when its From domain is vouched for, by either

1. an ``Authentication-Results`` header of a trusted upstream MTA (RFC 8601, by its
   authserv-id; every other one is ignored, since anyone can write one): ``dmarc=pass``
   for the From domain accepts, ``dmarc=fail`` refuses, a ``dkim=pass``/``spf=pass`` for
   exactly the From domain accepts; or
2. our own checks (RFC 7489 §3.1): a DKIM signature (RFC 6376) that verifies, or an SPF
   pass (RFC 7208) for the MAIL FROM domain (the HELO name for a null sender), whose domain
   is aligned with the From domain: the same domain (strict) or the same organizational
   domain (relaxed), as the DMARC record's ``adkim``/``aspf`` say (relaxed without one).

The published policy (``p=none``) does not matter: an SMS costs money, so an aligned pass
is required whatever the domain asks for. A DNS failure that leaves no aligned pass is a
temporary refusal (451), never a pass. Lookups are synchronous: this runs in a worker
thread, with a deadline for all of a message's lookups together.
"""

from __future__ import annotations

import functools
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol, Self

from publicsuffixlist import PublicSuffixList

from mail2sms.config import SendersConfig
from mail2sms.errors import SenderCheckDeferredError, SenderUnverifiedError
from mail2sms.mail_address import ascii_domain
from mail2sms.mail_parse import header_block

if TYPE_CHECKING:
    import dns.resolver

# dnspython, dkimpy and pyspf (both import dnspython) are imported where they are first used:
# together they are a tenth of a second of every start, and most gateways never verify.

__all__ = [
    "DnsError",
    "DnsResolver",
    "Resolver",
    "SenderVerifier",
    "organizational_domain",
    "parse_authentication_results",
]

# All lookups for one message share this many times senders.dns_timeout (SPF alone may
# need ten lookups; most answer in milliseconds, a dead server costs one timeout each).
_BUDGET_TIMEOUTS = 4
_MIN_RSA_BITS = 1024  # RFC 8301: verifiers must not accept shorter keys
_MAX_SIGNATURES = 8  # more is no real mail, and each costs a lookup and an RSA check
Alignment = Literal["r", "s"]


class DnsError(Exception):
    """A lookup could not be answered (timeout, SERVFAIL, no server): the answer is unknown.

    "No such name" and "no record of that type" are answers (an empty list), not errors.
    """


class Resolver(Protocol):
    """The one DNS interface the checks use, so tests can answer every lookup themselves."""

    def lookup(self, name: str, rdtype: str, timeout: float) -> list[str]:
        """Records of ``rdtype`` at ``name``; [] when there are none; DnsError when unknown.

        TXT records come as their strings joined, MX as ``"<preference> <host>"``, A and
        AAAA as addresses, PTR as host names (no trailing dots).
        """
        ...


class DnsResolver:
    """dnspython with the configured servers (or /etc/resolv.conf), read at first use."""

    def __init__(self, servers: Sequence[str] = ()) -> None:
        self.servers = tuple(servers)
        self._resolver: dns.resolver.Resolver | None = None

    def _get(self) -> dns.resolver.Resolver:
        import dns.exception  # noqa: PLC0415  # see the note at the top
        import dns.resolver  # noqa: PLC0415

        if self._resolver is None:
            try:
                resolver = dns.resolver.Resolver(configure=not self.servers)
            except dns.exception.DNSException as exc:  # no /etc/resolv.conf, no servers in it
                raise DnsError(f"no DNS resolver configured: {exc}") from None
            if self.servers:
                resolver.nameservers = list(self.servers)
            self._resolver = resolver
        return self._resolver

    def lookup(self, name: str, rdtype: str, timeout: float) -> list[str]:
        """Ask the configured servers; see ``Resolver.lookup``."""
        import dns.exception  # noqa: PLC0415  # see the note at the top
        import dns.name  # noqa: PLC0415
        import dns.resolver  # noqa: PLC0415

        try:
            answer = self._get().resolve(
                name, rdtype, lifetime=timeout, search=False, raise_on_no_answer=False
            )
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return []
        except (dns.name.NameTooLong, dns.name.EmptyLabel, dns.name.LabelTooLong):
            return []  # not a name that can exist
        except dns.exception.DNSException as exc:  # timeout, SERVFAIL from every server
            raise DnsError(f"{rdtype} {name}: {exc}") from None
        records: list[str] = []
        for rdata in answer.rrset or ():
            if rdtype == "TXT":
                records.append(b"".join(rdata.strings).decode("utf-8", "replace"))
            elif rdtype == "MX":
                records.append(f"{rdata.preference} {rdata.exchange.to_text(omit_final_dot=True)}")
            elif rdtype == "PTR":
                records.append(rdata.target.to_text(omit_final_dot=True))
            else:
                records.append(rdata.to_text())
        return records


class _Lookups:
    """One message's lookups: a shared deadline, so a slow DNS cannot hold DATA for long."""

    def __init__(self, resolver: Resolver, timeout: float) -> None:
        self.resolver = resolver
        self.timeout = timeout
        self.deadline = time.monotonic() + timeout * _BUDGET_TIMEOUTS

    def get(self, name: str, rdtype: str) -> list[str]:
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise DnsError(f"{rdtype} {name}: out of time for this message's DNS lookups")
        return self.resolver.lookup(name.rstrip(".").lower(), rdtype, min(self.timeout, remaining))


@functools.cache
def _spf_query_type() -> type[Any]:
    """The SPF query class over our lookups, made at first use: pyspf imports dnspython."""
    import spf  # noqa: PLC0415  # see the note at the top

    class SpfQuery(spf.query):  # type: ignore[misc]  # pyspf is untyped
        """pyspf's evaluation (macros, include, redirect, limits) over our lookups, not its own."""

        def __init__(self, lookups: _Lookups, **kwargs: Any) -> None:  # noqa: ANN401
            super().__init__(**kwargs)
            self.mail2sms_lookups = lookups  # pyspf's own ``lookups`` is its lookup counter

        def dns(
            self, name: str, qtype: str, cnames: object = None, *, ignore_void: bool = False
        ) -> list[Any]:
            """Answer pyspf's lookups from ``lookups`` (the resolver follows CNAMEs itself)."""
            del cnames
            name = str(name).rstrip(".").lower()
            if not name or not all(0 < len(label) < 64 for label in name.split(".")):  # noqa: PLR2004
                return []
            key = (name, qtype)
            if key not in self.cache:
                records: list[str] = []
                if qtype != "SPF":  # type 99 is obsolete (RFC 7208 §3.1): not asked for
                    try:
                        records = self.mail2sms_lookups.get(name, qtype)
                    except DnsError as exc:
                        raise spf.TempError(f"DNS {exc}") from None
                self.cache[key] = [_spf_value(qtype, r) for r in records]
            result: list[Any] = self.cache[key]
            if not result and not ignore_void:
                self.void_lookups += 1
                if self.void_lookups > spf.MAX_VOID_LOOKUPS:
                    raise spf.PermError(f"Void lookup limit of {spf.MAX_VOID_LOOKUPS} exceeded")
            return result

    return SpfQuery


def _spf_value(qtype: str, record: str) -> object:
    """A record in the shape pyspf's own lookup functions return it."""
    if qtype == "TXT":
        return (record.encode("utf-8"),)
    if qtype == "MX":
        preference, _, host = record.partition(" ")
        return (int(preference), host)
    return record


@functools.cache
def _suffix_list() -> PublicSuffixList:
    """The Public Suffix List the package bundles (never fetched at run time)."""
    return PublicSuffixList()


def organizational_domain(domain: str) -> str:
    """The registered domain (RFC 7489 §3.2): ``mail.example.co.uk`` → ``example.co.uk``."""
    return _suffix_list().privatesuffix(domain) or domain


def _aligned(domain: str, from_domain: str, mode: Alignment) -> bool:
    domain = domain.rstrip(".").lower()
    if domain == from_domain:
        return True
    return mode == "r" and organizational_domain(domain) == organizational_domain(from_domain)


# ---- Authentication-Results (RFC 8601) ------------------------------------------------


@dataclass(frozen=True, slots=True)
class AuthResult:
    """One ``method=result`` of an Authentication-Results header, with its properties."""

    method: str
    result: str
    properties: dict[str, str] = field(default_factory=dict)


_PAIR = re.compile(r'([A-Za-z0-9][\w.-]*(?:/\d+)?)\s*=\s*("(?:[^"\\]|\\.)*"|[^\s";=]+)')


def _without_comments(value: str) -> str:
    """Drop RFC 5322 comments (nested parentheses), keeping quoted strings as they are."""
    out: list[str] = []
    depth = 0
    quoted = escaped = False
    for char in value:
        if escaped:
            escaped = False
            if depth == 0:
                out.append(char)
            continue
        if char == "\\":
            escaped = True
            if depth == 0:
                out.append(char)
        elif quoted:
            quoted = char != '"'
            out.append(char)
        elif char == "(":
            depth += 1
        elif char == ")" and depth:
            depth -= 1
        elif depth == 0:
            quoted = char == '"'
            out.append(char)
    return "".join(out)


def _split_semicolons(value: str) -> list[str]:
    return [m.group(0) for m in re.finditer(r'(?:"(?:[^"\\]|\\.)*"|[^;"])+', value)]


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] == '"':  # noqa: PLR2004
        return re.sub(r"\\(.)", r"\1", value[1:-1])
    return value


def parse_authentication_results(value: str) -> tuple[str, list[AuthResult]]:
    """The authserv-id (lower case) and the results of one header value."""
    parts = _split_semicolons(_without_comments(value))
    head = parts[0].split() if parts else []
    authserv_id = _unquote(head[0]).lower() if head else ""
    results = []
    for part in parts[1:]:
        pairs = _PAIR.findall(part)
        if not pairs:
            continue  # "none", or something unreadable
        method, result = pairs[0]
        results.append(
            AuthResult(
                method=method.partition("/")[0].lower(),
                result=_unquote(result).lower(),
                properties={key.lower(): _unquote(val) for key, val in pairs[1:]},
            )
        )
    return authserv_id, results


def _trusted_pass(authserv_id: str, result: AuthResult, domain: str) -> str | None:
    """What one trusted result says for the From domain: a pass, nothing, or a refusal.

    Without DNS the domain's alignment mode is unknown, so a dkim/spf pass counts only for
    exactly the From domain.
    """
    if result.method == "dmarc":
        # no header.from: the result cannot be tied to this From line, so it says nothing
        if _domain_of(result.properties.get("header.from", "")) != domain:
            return None
        if result.result == "fail":
            raise _refusal(domain, f"dmarc=fail reported by {authserv_id}")
        return f"dmarc=pass ({authserv_id})" if result.result == "pass" else None
    identity = {"dkim": "header.d", "spf": "smtp.mailfrom"}.get(result.method)
    if (
        result.result == "pass"
        and identity
        and _domain_of(result.properties.get(identity, "")) == domain
    ):
        return f"{result.method}=pass {identity}={domain} ({authserv_id})"
    return None


def _domain_of(value: str) -> str:
    """``user@example.com`` or ``example.com`` → ``example.com``."""
    return value.rpartition("@")[2].strip().rstrip(".").lower()


# ---- the verifier -----------------------------------------------------------------------


def _header_fields(raw: bytes) -> list[tuple[str, str]]:
    """(lower-case name, unfolded value) of every header field, in order."""
    fields: list[tuple[str, str]] = []
    for line in header_block(raw).split("\n"):
        if line[:1] in {" ", "\t"} and fields:
            name, value = fields[-1]
            fields[-1] = (name, f"{value} {line.strip()}")
        else:
            name, _, value = line.partition(":")
            fields.append((name.strip().lower(), value.strip()))
    return fields


def _single_from_domain(fields: list[tuple[str, str]], from_addresses: Sequence[str]) -> str:
    """The From domain, when there is exactly one From header with exactly one address."""
    count = sum(1 for name, _ in fields if name == "from")
    if count != 1 or len(from_addresses) != 1:
        raise SenderUnverifiedError(
            "The message must have exactly one From header with exactly one address, "
            "so that its sender can be verified"
        )
    domain = from_addresses[0].rpartition("@")[2]
    try:
        ascii_name = ascii_domain(domain).lower()
    except ValueError:
        ascii_name = ""
    if not ascii_name or ascii_name.startswith("["):
        raise SenderUnverifiedError(
            f"From domain {domain[:100]} cannot be verified (SPF/DKIM need a domain name): "
            "send from an address at a domain name"
        )
    return ascii_name


def _refusal(domain: str, details: str) -> SenderUnverifiedError:
    return SenderUnverifiedError(
        f"From domain {domain} failed sender verification ({details}): send through "
        f"{domain}'s own mail server, which signs with DKIM or is listed in its SPF record"
    )


@dataclass(frozen=True, slots=True)
class SenderVerifier:
    """Decides whether a message's From domain is vouched for; see the module docstring."""

    resolver: Resolver
    trusted_authserv_ids: frozenset[str] = frozenset()
    timeout: float = 5.0

    @classmethod
    def from_config(cls, senders: SendersConfig, resolver: Resolver | None = None) -> Self:
        """The verifier for ``[senders]``; ``resolver`` replaces DNS (tests).

        The DNS, DKIM and SPF libraries are imported here, at start-up or reload, not in
        the first message's read (whose time limit could interrupt an import).
        """
        import dkim.util  # noqa: PLC0415, F401  # see the note at the top
        import dns.resolver  # noqa: PLC0415, F401

        _spf_query_type()
        return cls(
            resolver=resolver or DnsResolver(senders.dns_servers),
            trusted_authserv_ids=frozenset(senders.trusted_authserv_ids),
            timeout=senders.dns_timeout,
        )

    def verify(
        self,
        raw: bytes,
        from_addresses: Sequence[str],
        *,
        envelope_from: str,
        client_ip: str | None,
        helo: str,
    ) -> str:
        """Return how the From domain was verified, e.g. ``dkim=pass header.d=example.com``.

        Raises SenderUnverifiedError (550) when it is not, SenderCheckDeferredError (451)
        when a DNS failure left it undecided.
        """
        fields = _header_fields(raw)
        domain = _single_from_domain(fields, from_addresses)
        if sum(1 for name, _ in fields if name == "subject") > 1:
            # DKIM verifies the last Subject, mail2sms reads the first: a replay could add one
            raise SenderUnverifiedError(
                "The message has more than one Subject header, so its numbers cannot be "
                "verified: send it with one Subject"
            )
        trusted = self._trusted(fields, domain)
        if trusted is not None:
            return trusted
        return self._own_checks(raw, domain, envelope_from, client_ip, helo)

    def _trusted(self, fields: list[tuple[str, str]], domain: str) -> str | None:
        """The verdict of trusted Authentication-Results headers, or None if they give none.

        A trusted dmarc=fail refuses whatever else passed.
        """
        passed: list[str] = []
        for name, value in fields:
            if name != "authentication-results" or not self.trusted_authserv_ids:
                continue
            authserv_id, results = parse_authentication_results(value)
            if authserv_id not in self.trusted_authserv_ids:
                continue  # RFC 8601 §5: anyone can write one
            for result in results:  # every one: a dmarc=fail anywhere refuses
                verdict = _trusted_pass(authserv_id, result, domain)
                if verdict is not None:
                    passed.append(verdict)
        return min(passed, key=lambda v: not v.startswith("dmarc"), default=None)

    def _own_checks(
        self, raw: bytes, domain: str, envelope_from: str, client_ip: str | None, helo: str
    ) -> str:
        checks = _Checks(_Lookups(self.resolver, self.timeout), domain)
        try:
            adkim, aspf = _dmarc_modes(domain, checks.lookups)
        except DnsError as exc:
            checks.temporary.append(f"DMARC record: {exc}")
            adkim = aspf = "s"  # unknown: only an exact match is aligned in every mode
        verdict = checks.dkim(raw, adkim) or checks.spf(aspf, envelope_from, client_ip, helo)
        if verdict is not None:
            return verdict
        if checks.temporary:
            raise SenderCheckDeferredError(
                f"The sender domain {domain} could not be verified now "
                f"(DNS lookup failed: {checks.temporary[0][:150]}); please try again later"
            )
        raise _refusal(domain, "; ".join(checks.failures)[:200])


def _signs_subject(tags: Mapping[bytes, bytes]) -> bool:
    """Whether a signature's ``h=`` covers the Subject.

    A replayed signed mail with another Subject would otherwise send its text to the
    replayer's numbers (gateway addresses read the numbers from the Subject).
    """
    signed = {name.strip().lower() for name in tags.get(b"h", b"").split(b":")}
    return b"subject" in signed


def _dmarc_modes(domain: str, lookups: _Lookups) -> tuple[Alignment, Alignment]:
    """``adkim`` and ``aspf`` of the domain's DMARC record (RFC 7489 §6.6.3); relaxed if none."""
    names = [domain]
    organizational = organizational_domain(domain)
    if organizational != domain:
        names.append(organizational)
    for name in names:
        records = [r for r in lookups.get(f"_dmarc.{name}", "TXT") if _is_dmarc(r)]
        if len(records) == 1:
            tags = {
                key.strip().lower(): val.strip().lower()
                for key, _, val in (tag.partition("=") for tag in records[0].split(";"))
            }
            return (
                "s" if tags.get("adkim") == "s" else "r",
                "s" if tags.get("aspf") == "s" else "r",
            )
    return "r", "r"


def _is_dmarc(record: str) -> bool:
    return re.match(r"v\s*=\s*DMARC1\s*(;|$)", record) is not None


class _Checks:
    """Our own DKIM and SPF checks of one message, noting what failed and what was unknown."""

    def __init__(self, lookups: _Lookups, domain: str) -> None:
        self.lookups = lookups
        self.domain = domain
        self.failures: list[str] = []
        self.temporary: list[str] = []

    def _txt(self, name: bytes, timeout: float = 0) -> bytes | None:
        """The first TXT record at ``name``, as dkimpy's ``dnsfunc`` wants it."""
        del timeout  # the deadline is the lookups'
        records = self.lookups.get(name.decode("ascii", "replace"), "TXT")
        return records[0].encode("utf-8") if records else None

    def dkim(self, raw: bytes, mode: Alignment) -> str | None:
        """Verify the signatures whose d= is aligned; the first that verifies wins."""
        import dkim  # noqa: PLC0415  # see the note at the top
        import dkim.util  # noqa: PLC0415

        message = dkim.DKIM(raw, minkey=_MIN_RSA_BITS, timeout=self.lookups.timeout)
        signatures = [v for k, v in message.headers if k.lower() == b"dkim-signature"]
        if not signatures:
            self.failures.append("dkim=none")
        for index, value in enumerate(signatures[:_MAX_SIGNATURES]):
            try:
                tags = dkim.util.parse_tag_value(value)
            except dkim.util.InvalidTagValueList:
                self.failures.append("dkim=permerror (unreadable signature)")
                continue
            signer = tags.get(b"d", b"").decode("ascii", "replace").strip().lower()
            if not _aligned(signer, self.domain, mode):
                self.failures.append(f"dkim signature by {signer[:60]} not aligned")
            elif b"l" in tags:  # text could be appended to a signed body: not counted
                self.failures.append(f"dkim signature by {signer} has l= (partial body)")
            elif not _signs_subject(tags):  # the Subject carries numbers: it must be signed
                self.failures.append(f"dkim signature by {signer} does not cover the Subject")
            elif self._verify(message, index, signer):
                return f"dkim=pass header.d={signer}"
        return None

    def _verify(self, message: Any, index: int, signer: str) -> bool:  # noqa: ANN401  untyped
        import dkim  # noqa: PLC0415  # see the note at the top

        try:
            if message.verify(idx=index, dnsfunc=self._txt):
                return True
        except DnsError as exc:
            self.temporary.append(f"DKIM key: {exc}")
            return False
        except dkim.DKIMException as exc:
            self.failures.append(f"dkim=fail header.d={signer} ({str(exc)[:60]})")
            return False
        self.failures.append(f"dkim=fail header.d={signer}")
        return False

    def spf(
        self, mode: Alignment, envelope_from: str, client_ip: str | None, helo: str
    ) -> str | None:
        """SPF for the MAIL FROM domain (HELO for a null sender), when that is aligned."""
        address = envelope_from.strip("<>")
        identity = (address.rpartition("@")[2] if "@" in address else helo).lower()
        if not identity or not _aligned(identity, self.domain, mode):
            self.failures.append(f"spf not aligned (MAIL FROM domain {identity[:60] or 'none'})")
            return None
        if client_ip is None:
            self.failures.append("spf=none (no client address)")
            return None
        query = _spf_query_type()(self.lookups, i=client_ip, s=address, h=helo)
        result, _code, explanation = query.check()
        if result == "pass":
            return f"spf=pass smtp.mailfrom={identity}"
        if result == "temperror":
            self.temporary.append(f"SPF: {explanation}")
        self.failures.append(f"spf={result} smtp.mailfrom={identity}")
        return None
