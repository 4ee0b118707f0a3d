"""Plain addresses and host names: what a bounce can be written to; pure."""

from __future__ import annotations

import pytest

from mail2sms.mail_address import ascii_domain, ascii_hostname, plain_address


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("alice@example.com", "alice@example.com"),
        ("Alice@EXAMPLE.com", "Alice@example.com"),
        ("ups@panel.local", "ups@panel.local"),
        ("alarm@[192.0.2.7]", "alarm@[192.0.2.7]"),
        ("alarm@[IPv6:2001:db8:0::7]", "alarm@[IPv6:2001:db8::7]"),
        ("ops@bücher.example", "ops@xn--bcher-kva.example"),
        ("ops@sms.example.com.", "ops@sms.example.com"),
        ("first.last+tag@example.org", "first.last+tag@example.org"),
    ],
)
def test_plain_addresses(given, expected):
    assert plain_address(given) == expected


@pytest.mark.parametrize(
    "given",
    [
        "",
        "nobody",
        '"john smith"@example.org',
        "jörg@example.org",
        "a..b@example.org",
        "=?utf-8?q?x?=@example.org",
        "a@-bad.example",
        "a@exa_mple.com",
        "a@[1.2.3]",
        "a@[::1]",
        "a@[IPv6:192.0.2.1]",
        "a@ex ample.com",
        "x" * 250 + "@example.com",
        "a@example.com\r\nBcc: victim@example.net",
    ],
)
def test_addresses_a_bounce_cannot_go_to(given):
    with pytest.raises(ValueError, match=r"not|longer"):
        plain_address(given)


def test_host_names_are_ascii_lower_case_without_the_trailing_dot():
    assert ascii_hostname("SMS.Example.COM.") == "sms.example.com"
    assert ascii_hostname("sms.bücher.de") == "sms.xn--bcher-kva.de"
    for bad in ("", "sms_gw.example", "-x.example", "a" * 64 + ".example", "[192.0.2.7]"):
        with pytest.raises(ValueError, match="not a host name"):
            ascii_hostname(bad)


def test_address_literals_need_the_ipv6_tag_for_ipv6_only():
    assert ascii_domain("[192.0.2.7]") == "[192.0.2.7]"
    assert ascii_domain("[ipv6:2001:DB8::7]") == "[IPv6:2001:db8::7]"
