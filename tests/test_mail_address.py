"""Plain addresses and host names: what a bounce can be written to; pure."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from aiosmtpd.smtp import SMTP
from hypothesis import given, settings
from hypothesis import strategies as st

from mail2sms.mail_address import ascii_domain, ascii_hostname, plain_address, simple_path


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


def _aiosmtpd_path(arg: str) -> tuple[str | None, str | None]:
    """aiosmtpd's own parse of a MAIL/RCPT path, the one ``simple_path`` stands in for."""
    return SMTP._getaddr(SimpleNamespace(local_part_limit=0), arg)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("arg", "expected"),
    [
        ("<alice@example.com>", ("alice@example.com", "")),
        (
            "<alice@example.com> SIZE=300 BODY=8BITMIME",
            ("alice@example.com", "SIZE=300 BODY=8BITMIME"),
        ),
        (" \t<first.last+tag@mail.example.org>", ("first.last+tag@mail.example.org", "")),
        ("<61412345678@sms.example.com>", ("61412345678@sms.example.com", "")),
        ("<o'brien/x=y@host>", ("o'brien/x=y@host", "")),
        ("<a@example.com>  \t SIZE=1 ", ("a@example.com", "SIZE=1 ")),
        ("<a@example.com>SIZE=1", ("a@example.com", "SIZE=1")),
        ("<a@example.com> (comment) SIZE=1", None),
        ("<>", None),  # the null sender: aiosmtpd's own parse
        ("<=?utf-8?q?abc?=@example.com>", None),  # an encoded word: the parser decodes it
        ("<a=?b?=@example.com>", ("a=?b?=@example.com", "")),
        ('<"quoted local"@example.com>', None),
        ("<alarm@[192.0.2.7]>", None),
        ("(comment)<a@example.com>", None),
        ("<a..b@example.com>", None),
        ("<a@-bad.example>", None),
        ("a@example.com", None),
        ("<@relay.example:a@example.com>", None),
        ("<ünï@example.com>", None),
    ],
)
def test_simple_path(arg, expected):
    assert simple_path(arg) == expected
    if expected is not None:
        assert _aiosmtpd_path(arg) == expected


_PATH_CHARS = "aZ09.-_+'=?@<> \t\n\x0b()\"[]:;,\\!é"


@given(
    st.text(alphabet=_PATH_CHARS, max_size=30)
    | st.from_regex(r"\A<=\?utf-8\?[qb]\?[a-zA-Z0-9=]{0,8}\?=@ex\.com>\Z")
)
@settings(max_examples=2000, deadline=None)
def test_simple_path_agrees_with_aiosmtpd(arg):
    """Whatever the fast parse takes, it reads exactly as aiosmtpd does."""
    simple = simple_path(arg)
    if simple is not None:
        assert _aiosmtpd_path(arg) == simple


@given(st.from_regex(r"\A[ \t]{0,2}<[a-z0-9.+_-]{1,12}@[a-z0-9.-]{1,12}>[ \tA-Z=0-9()]{0,12}\Z"))
@settings(max_examples=1000, deadline=None)
def test_simple_path_agrees_on_plain_looking_paths(arg):
    """Paths that look plain, where the two are likeliest to differ at the edges."""
    simple = simple_path(arg)
    if simple is not None:
        assert _aiosmtpd_path(arg) == simple
