"""senders.verify = "dmarc": SPF, DKIM and DMARC alignment against a stub resolver.

Every lookup is answered by ``StubResolver``; real DNS is made to fail the test, so nothing
here reaches the network. DKIM keys are made at test time.
"""

from __future__ import annotations

import base64
import email.utils

import aiosmtplib
import dkim
import dns.resolver
import pytest
from conftest import poll, read_outbox
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from mail2sms.errors import SenderCheckDeferredError, SenderUnverifiedError
from mail2sms.sender_verify import (
    DnsError,
    SenderVerifier,
    organizational_domain,
    parse_authentication_results,
)
from mail2sms.smtp import Policy

CLIENT_IP = "192.0.2.10"


class StubResolver:
    """Answers from a table; names in ``failing`` time out; records every question."""

    def __init__(self, records: dict[tuple[str, str], list[str]], failing: set[str] = frozenset()):
        self.records = records
        self.failing = failing
        self.asked: list[tuple[str, str]] = []

    def lookup(self, name: str, rdtype: str, timeout: float) -> list[str]:
        assert timeout > 0
        self.asked.append((name, rdtype))
        if name in self.failing:
            raise DnsError(f"{rdtype} {name}: timed out")
        return list(self.records.get((name, rdtype), []))


@pytest.fixture(autouse=True)
def _no_real_dns(monkeypatch):
    """A query that would leave the machine fails the test instead."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"real DNS query attempted: {args[1:3]}")

    monkeypatch.setattr(dns.resolver.Resolver, "resolve", refuse)


@pytest.fixture(scope="module")
def key() -> tuple[bytes, str]:
    """A 1024-bit RSA key (the smallest RFC 8301 allows): PEM and the DNS record's p=."""
    private = rsa.generate_private_key(public_exponent=65537, key_size=1024)  # noqa: S505  test data, fast to make
    pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    public = private.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return pem, f"v=DKIM1; k=rsa; p={base64.b64encode(public).decode()}"


def mail(from_line: str = "Alice <alice@example.com>", extra: str = "") -> bytes:
    return (
        f"{extra}From: {from_line}\r\nTo: sms@sms.example.com\r\n"
        f"Subject: +61412345678\r\nDate: {email.utils.formatdate()}\r\n"
        "Message-ID: <1@example.com>\r\n\r\nServer down\r\n"
    ).encode()


def signed(raw: bytes, pem: bytes, domain: str, **options) -> bytes:
    signature = dkim.sign(
        raw, b"sel", domain.encode(), pem, include_headers=[b"from", b"subject"], **options
    )
    return signature + raw


def check(verifier, raw, *, envelope_from="alice@example.com", from_addresses=None, ip=CLIENT_IP):
    if from_addresses is None:
        from_addresses = [
            email.utils.parseaddr(raw.decode().split("From: ")[1].split("\r\n")[0])[1]
        ]
    return verifier.verify(
        raw, from_addresses, envelope_from=envelope_from, client_ip=ip, helo="client.example.net"
    )


def dns_with(key_record: str | None = None, *, domain="example.com", dmarc="v=DMARC1; p=none"):
    records: dict[tuple[str, str], list[str]] = {}
    if dmarc is not None:
        records[(f"_dmarc.{domain}", "TXT")] = [dmarc]
    if key_record is not None:
        records[(f"sel._domainkey.{domain}", "TXT")] = [key_record]
    return records


def test_aligned_dkim_pass_is_accepted(key):
    pem, record = key
    resolver = StubResolver(dns_with(record))
    verdict = check(SenderVerifier(resolver), signed(mail(), pem, "example.com"))
    assert verdict == "dkim=pass header.d=example.com"


def test_a_forged_from_without_signature_or_spf_is_refused():
    resolver = StubResolver(
        dns_with() | {("attacker.example", "TXT"): ["v=spf1 ip4:192.0.2.0/24 -all"]}
    )
    with pytest.raises(SenderUnverifiedError) as refused:
        check(SenderVerifier(resolver), mail(), envelope_from="alice@attacker.example")
    assert refused.value.reply.startswith("550 5.7.1 From domain example.com failed")
    assert "dkim=none" in refused.value.text
    assert "not aligned" in refused.value.text


def test_aligned_spf_pass_is_accepted():
    resolver = StubResolver(dns_with() | {("example.com", "TXT"): ["v=spf1 ip4:192.0.2.0/24 -all"]})
    assert check(SenderVerifier(resolver), mail()) == "spf=pass smtp.mailfrom=example.com"


def test_spf_fail_for_the_from_domain_is_refused():
    resolver = StubResolver(dns_with() | {("example.com", "TXT"): ["v=spf1 ip4:198.51.100.1 -all"]})
    with pytest.raises(SenderUnverifiedError, match="spf=fail"):
        check(SenderVerifier(resolver), mail())


def test_spf_macros_and_includes_go_through_the_resolver():
    resolver = StubResolver(
        dns_with()
        | {
            ("example.com", "TXT"): ["v=spf1 include:_spf.provider.example -all"],
            ("_spf.provider.example", "TXT"): ["v=spf1 mx a:%{d}.out.provider.example ~all"],
            ("_spf.provider.example", "MX"): ["10 mx.provider.example"],
            ("mx.provider.example", "A"): ["198.51.100.7"],
            ("_spf.provider.example.out.provider.example", "A"): ["192.0.2.10"],
        }
    )
    assert check(SenderVerifier(resolver), mail()).startswith("spf=pass")
    assert ("mx.provider.example", "A") in resolver.asked


def test_a_signature_by_another_domain_is_refused(key):
    pem, record = key
    resolver = StubResolver(dns_with() | dns_with(record, domain="attacker.example", dmarc=None))
    with pytest.raises(SenderUnverifiedError, match=r"signature by attacker\.example not aligned"):
        check(SenderVerifier(resolver), signed(mail(), pem, "attacker.example"))
    assert ("sel._domainkey.attacker.example", "TXT") not in resolver.asked


def test_a_signature_that_does_not_verify_is_refused(key):
    pem, record = key
    raw = signed(mail(), pem, "example.com").replace(b"Server down", b"Send money")
    resolver = StubResolver(dns_with(record))
    with pytest.raises(SenderUnverifiedError, match=r"dkim=fail header\.d=example\.com"):
        check(SenderVerifier(resolver), raw)


def test_relaxed_alignment_accepts_a_parent_domain_signature(key):
    pem, record = key
    resolver = StubResolver(dns_with(dmarc=None) | dns_with(record, dmarc="v=DMARC1; p=reject"))
    raw = signed(mail("ups@mail.example.com"), pem, "example.com")
    assert check(SenderVerifier(resolver), raw) == "dkim=pass header.d=example.com"
    # no record at the subdomain, so the organizational domain's is read (RFC 7489 §6.6.3)
    assert ("_dmarc.mail.example.com", "TXT") in resolver.asked
    assert ("_dmarc.example.com", "TXT") in resolver.asked


def test_strict_alignment_refuses_a_parent_domain_signature(key):
    pem, record = key
    resolver = StubResolver(dns_with(record, dmarc="v=DMARC1; p=reject; adkim=s"))
    raw = signed(mail("ups@mail.example.com"), pem, "example.com")
    with pytest.raises(SenderUnverifiedError, match="not aligned"):
        check(SenderVerifier(resolver), raw)


def test_strict_spf_alignment_refuses_a_subdomain_bounce_address():
    resolver = StubResolver(
        dns_with(dmarc="v=DMARC1; p=none; aspf=s")
        | {("bounces.example.com", "TXT"): ["v=spf1 ip4:192.0.2.10 -all"]}
    )
    verifier = SenderVerifier(resolver)
    with pytest.raises(SenderUnverifiedError, match="spf not aligned"):
        check(verifier, mail(), envelope_from="b@bounces.example.com")
    resolver.records[("_dmarc.example.com", "TXT")] = ["v=DMARC1; p=none"]
    assert check(verifier, mail(), envelope_from="b@bounces.example.com").startswith("spf=pass")


def test_without_a_dmarc_record_an_aligned_pass_still_counts(key):
    pem, record = key
    resolver = StubResolver(dns_with(record, dmarc=None))
    assert check(SenderVerifier(resolver), signed(mail(), pem, "example.com")).startswith(
        "dkim=pass"
    )
    with pytest.raises(SenderUnverifiedError):
        check(SenderVerifier(resolver), mail())


def test_a_signature_with_a_body_length_limit_does_not_count(key):
    pem, record = key
    resolver = StubResolver(dns_with(record))
    raw = signed(mail(), pem, "example.com", length=True)
    with pytest.raises(SenderUnverifiedError, match="l="):
        check(SenderVerifier(resolver), raw)


def test_dns_timeout_for_the_key_is_a_temporary_refusal(key):
    pem, _record = key
    resolver = StubResolver(dns_with(), failing={"sel._domainkey.example.com"})
    with pytest.raises(SenderCheckDeferredError) as deferred:
        check(SenderVerifier(resolver), signed(mail(), pem, "example.com"))
    assert deferred.value.reply.startswith("451 4.4.3 The sender domain example.com could not")
    assert "sel._domainkey.example.com" in deferred.value.text


def test_dns_timeout_for_spf_is_a_temporary_refusal():
    resolver = StubResolver(dns_with(), failing={"example.com"})
    with pytest.raises(SenderCheckDeferredError, match="SPF"):
        check(SenderVerifier(resolver), mail())


def test_dns_timeout_for_dmarc_still_accepts_an_exact_match(key):
    pem, record = key
    resolver = StubResolver(dns_with(record, dmarc=None), failing={"_dmarc.example.com"})
    assert check(SenderVerifier(resolver), signed(mail(), pem, "example.com")).startswith(
        "dkim=pass"
    )
    with pytest.raises(SenderCheckDeferredError):
        check(SenderVerifier(resolver), mail("ups@mail.example.com"))


AR_PASS = (
    "Authentication-Results: mx.corp.example; dkim=pass header.d=example.com;\r\n"
    " spf=fail smtp.mailfrom=example.com;\r\n"
    " dmarc=pass (p=reject dis=none) header.from=example.com\r\n"
)


def test_a_trusted_dmarc_pass_is_accepted_without_dns():
    resolver = StubResolver({})
    verifier = SenderVerifier(resolver, trusted_authserv_ids=frozenset({"mx.corp.example"}))
    assert check(verifier, mail(extra=AR_PASS)) == "dmarc=pass (mx.corp.example)"
    assert resolver.asked == []


def test_a_trusted_dmarc_fail_is_refused():
    header = "Authentication-Results: mx.corp.example; dmarc=fail header.from=example.com\r\n"
    verifier = SenderVerifier(StubResolver({}), trusted_authserv_ids=frozenset({"mx.corp.example"}))
    with pytest.raises(SenderUnverifiedError, match=r"dmarc=fail reported by mx\.corp\.example"):
        check(verifier, mail(extra=AR_PASS + header))


def test_a_trusted_pass_for_another_domain_does_not_count():
    header = "Authentication-Results: mx.corp.example; dmarc=pass header.from=attacker.example\r\n"
    verifier = SenderVerifier(StubResolver({}), trusted_authserv_ids=frozenset({"mx.corp.example"}))
    with pytest.raises(SenderUnverifiedError, match="dkim=none"):
        check(verifier, mail(extra=header))


def test_an_untrusted_authserv_id_is_ignored_and_own_checks_decide():
    resolver = StubResolver(dns_with())
    verifier = SenderVerifier(resolver, trusted_authserv_ids=frozenset({"mx.other.example"}))
    with pytest.raises(SenderUnverifiedError):
        check(verifier, mail(extra=AR_PASS))
    assert ("_dmarc.example.com", "TXT") in resolver.asked


def test_a_trusted_exact_dkim_pass_counts_without_a_dmarc_result():
    header = (
        "Authentication-Results: mx.corp.example;\r\n"
        "  dkim=pass (2048-bit key) header.d=example.com header.s=sel\r\n"
    )
    verifier = SenderVerifier(StubResolver({}), trusted_authserv_ids=frozenset({"mx.corp.example"}))
    assert check(verifier, mail(extra=header)).startswith("dkim=pass header.d=example.com")


@pytest.mark.parametrize(
    ("raw", "addresses"),
    [
        (mail(extra="From: bob@example.com\r\n"), ["bob@example.com", "alice@example.com"]),
        (mail(extra="From: \r\n"), ["alice@example.com"]),
        (mail("alice@example.com, bob@example.com"), ["alice@example.com", "bob@example.com"]),
    ],
    ids=["two From headers", "an empty second From header", "two addresses"],
)
def test_exactly_one_from_address_is_required(raw, addresses):
    verifier = SenderVerifier(StubResolver(dns_with()))
    with pytest.raises(SenderUnverifiedError, match="exactly one From header"):
        check(verifier, raw, from_addresses=addresses)


def test_an_address_literal_cannot_be_verified():
    with pytest.raises(SenderUnverifiedError, match="domain name"):
        check(SenderVerifier(StubResolver({})), mail("ups@[192.0.2.1]"))


def test_authentication_results_parsing():
    authserv_id, results = parse_authentication_results(
        '"MX.Corp.Example" 1; (a comment; with semicolon) dkim=pass (good)'
        ' header.d="example.com" header.s=sel; spf = softfail smtp.mailfrom=a@b.example;'
        " dmarc=pass header.from=example.com"
    )
    assert authserv_id == "mx.corp.example"
    assert [(r.method, r.result) for r in results] == [
        ("dkim", "pass"),
        ("spf", "softfail"),
        ("dmarc", "pass"),
    ]
    assert results[0].properties == {"header.d": "example.com", "header.s": "sel"}
    assert parse_authentication_results("mx.example; none") == ("mx.example", [])


def test_organizational_domain_uses_the_public_suffix_list():
    assert organizational_domain("mail.example.co.uk") == "example.co.uk"
    assert organizational_domain("a.b.example.com") == "example.com"
    assert organizational_domain("example.com") == "example.com"


# ---- through the real SMTP server -------------------------------------------------------


async def smtp_send(port: int, raw: bytes, mail_from: str = "alice@example.com") -> tuple[int, str]:
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, timeout=10)
    await client.connect()
    try:
        await client.sendmail(mail_from, ["sms@sms.example.com"], raw)
    except aiosmtplib.SMTPResponseException as refused:
        return refused.code, refused.message
    finally:
        client.close()
    return 250, "queued"


@pytest.fixture
async def verifying_app(make_settings, start_app, key):
    """The daemon with senders.verify = "dmarc" and every lookup answered by a stub."""
    settings = make_settings(senders={"allow": ["alice@example.com"], "verify": "dmarc"})
    app = await start_app(settings)
    resolver = StubResolver(dns_with(key[1]))
    app.handler.policy = Policy.from_settings(settings, resolver=resolver)
    return app, resolver


@pytest.mark.anyio
async def test_smtp_a_forged_from_is_refused_and_a_signed_one_is_queued(
    verifying_app, key, tmp_path
):
    app, _resolver = verifying_app
    code, text = await smtp_send(app.smtp_port, mail())
    assert code == 550
    assert text.startswith("5.7.1 From domain example.com failed sender verification")
    assert read_outbox(tmp_path / "outbox.jsonl") == []

    code, _text = await smtp_send(app.smtp_port, signed(mail(), key[0], "example.com"))
    assert code == 250
    lines = await poll(lambda: read_outbox(tmp_path / "outbox.jsonl"))
    assert [line["text"] for line in lines] == ["Server down"]


@pytest.mark.anyio
async def test_smtp_a_dns_failure_is_a_temporary_refusal(verifying_app, key):
    app, resolver = verifying_app
    resolver.failing = {"sel._domainkey.example.com"}
    code, text = await smtp_send(app.smtp_port, signed(mail(), key[0], "example.com"))
    assert (code, text.split(" ")[0]) == (451, "4.4.3")


@pytest.mark.anyio
async def test_smtp_a_trusted_network_skips_verification_and_others_do_not(
    make_settings, start_app, key, tmp_path
):
    """senders.networks clients are trusted; the same forged mail from elsewhere is refused."""
    settings = make_settings(
        senders={"allow": ["alice@example.com"], "verify": "dmarc", "networks": ["127.0.0.2/32"]}
    )
    app = await start_app(settings)
    resolver = StubResolver(dns_with(key[1]))
    app.handler.policy = Policy.from_settings(settings, resolver=resolver)
    code, _text = await smtp_send(app.smtp_port, mail())  # from 127.0.0.1: not trusted
    assert code == 550
    asked = len(resolver.asked)
    assert asked > 0  # the untrusted attempt was checked in DNS
    client = aiosmtplib.SMTP(
        hostname="127.0.0.1", port=app.smtp_port, timeout=10, source_address=("127.0.0.2", 0)
    )
    await client.connect()
    try:
        await client.sendmail("alice@example.com", ["sms@sms.example.com"], mail())
    finally:
        client.close()
    lines = await poll(lambda: read_outbox(tmp_path / "outbox.jsonl"))
    assert [line["text"] for line in lines] == ["Server down"]
    assert len(resolver.asked) == asked  # the trusted client was not looked up


def test_a_signature_that_does_not_cover_the_subject_is_not_counted(key):
    """Gateway addresses read the numbers from the Subject: an unsigned one could be replaced."""
    pem, record = key
    raw = mail()
    only_from = dkim.sign(raw, b"sel", b"example.com", pem, include_headers=[b"from"]) + raw
    with pytest.raises(SenderUnverifiedError, match="does not cover the Subject"):
        check(SenderVerifier(StubResolver(dns_with(record))), only_from)


def test_a_replayed_signed_mail_with_a_second_subject_is_refused(key):
    """DKIM verifies the last Subject; mail2sms reads the first, so a second one is refused."""
    pem, record = key
    replayed = b"Subject: +61400000001, +61400000002\r\n" + signed(mail(), pem, "example.com")
    with pytest.raises(SenderUnverifiedError, match="more than one Subject"):
        check(SenderVerifier(StubResolver(dns_with(record))), replayed)


def test_a_trusted_dmarc_pass_without_header_from_says_nothing():
    header = "Authentication-Results: mx.corp.example; dmarc=pass\r\n"
    verifier = SenderVerifier(StubResolver({}), trusted_authserv_ids=frozenset({"mx.corp.example"}))
    with pytest.raises(SenderUnverifiedError):
        check(verifier, mail(extra=header))
