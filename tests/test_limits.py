"""The anti-pumping rules as pure functions: destinations, message size, rates (no sockets)."""

from __future__ import annotations

import pytest

from mail2sms.config import LimitsConfig, Settings
from mail2sms.errors import LimitRefusedError, RateLimitedError
from mail2sms.limits import Destinations, Quota
from mail2sms.models import LIST_PREFIX

AU_MOBILE = "+61412345678"
GB_MOBILE = "+447400123456"
AU_PREMIUM = "+611900123456"


@pytest.fixture
def au() -> Destinations:
    return LimitsConfig().destinations("AU")


def refusal(destinations: Destinations, number: str) -> LimitRefusedError:
    with pytest.raises(LimitRefusedError) as caught:
        destinations.check_number(number)
    assert caught.value.reply.startswith("550 5.7.1 ")
    return caught.value


def test_countries_default_to_the_gateway_region(au):
    assert au.countries == ("AU",)
    au.check_number(AU_MOBILE)


def test_a_number_in_another_country_is_refused_naming_country_and_rule(au):
    error = refusal(au, GB_MOBILE)
    assert error.text == (f"{GB_MOBILE} is in GB; this gateway sends only to AU (limits.countries)")
    assert error.rule == "limits.countries"


def test_listed_countries_replace_the_default():
    destinations = LimitsConfig(countries=["nz", "GB", "gb"]).destinations("AU")
    assert destinations.countries == ("NZ", "GB")
    destinations.check_number(GB_MOBILE)
    assert "sends only to NZ, GB" in refusal(destinations, AU_MOBILE).text


def test_a_non_geographic_number_is_in_no_country(au):
    assert "+80012345678 is not in any country" in refusal(au, "+80012345678").text


@pytest.mark.parametrize(
    ("number", "kind"),
    [
        (AU_PREMIUM, "premium-rate"),
        ("+61131450", "shared-cost"),
        ("+611300123456", "shared-cost"),
    ],
)
def test_costly_number_types_are_refused_in_an_allowed_country(au, number, kind):
    error = refusal(au, number)
    assert error.text == f"{number} is a {kind} number; {kind} numbers are not allowed"
    assert error.rule == f"{kind} number"


def test_a_short_code_or_emergency_number_is_refused(au):
    for number in ("+61000", "+61112"):
        error = refusal(au, number)
        assert "short code or emergency number" in error.text
        assert error.rule == "short code"


def test_a_toll_free_or_landline_number_passes(au):
    au.check_number("+611800123456")
    au.check_number("+61298765432")


def test_a_contact_list_passes_and_counts_as_one(au):
    au.check_number(f"{LIST_PREFIX}6065ac2f1a2b3")
    Destinations(countries=("AU",), max_recipients=1).check_message((f"{LIST_PREFIX}abc",))


def test_too_many_numbers_in_one_message():
    destinations = Destinations(countries=("AU",), max_recipients=2)
    numbers = (AU_MOBILE, "+61498765432", "+61411111111")
    with pytest.raises(LimitRefusedError) as caught:
        destinations.check_message(numbers)
    assert caught.value.reply == (
        "550 5.7.1 The message goes to 3 numbers; the limit is 2 per message "
        "(limits.max_recipients): send it in several messages"
    )
    destinations.check_message(numbers[:2])


def test_the_whole_message_is_checked_number_by_number(au):
    with pytest.raises(LimitRefusedError, match=r"\+447400123456 is in GB"):
        au.check_message((AU_MOBILE, GB_MOBILE))


def rates(**limits: int) -> Quota:
    return Quota(sender_key="alice@example.com", **limits)


def test_under_every_rate_passes():
    rates(per_sender_per_hour=3, per_recipient_per_hour=1, per_day=3).check(
        (AU_MOBILE, "+61498765432"), sender_sent=1, recipient_sent={}, day_sent=1
    )


def test_the_sender_rate_is_temporary_and_names_sender_count_and_rule():
    with pytest.raises(RateLimitedError) as caught:
        rates(per_sender_per_hour=200).check(
            (AU_MOBILE,), sender_sent=200, recipient_sent={}, day_sent=0
        )
    assert caught.value.reply == (
        "451 4.7.1 alice@example.com has sent 200 SMS in the last hour; the limit is 200 "
        "(limits.per_sender_per_hour): try again later"
    )
    assert (caught.value.rule, caught.value.count) == ("limits.per_sender_per_hour", 200)


def test_a_message_that_would_cross_the_sender_rate_says_how_many_it_adds():
    with pytest.raises(RateLimitedError, match="has sent 9 SMS in the last hour and this"):
        rates(per_sender_per_hour=10).check(
            (AU_MOBILE, "+61498765432"), sender_sent=9, recipient_sent={}, day_sent=0
        )


def test_the_recipient_and_day_rates():
    with pytest.raises(RateLimitedError, match=r"\+61412345678 has been sent 20 SMS"):
        rates(per_recipient_per_hour=20).check(
            ("+61498765432", AU_MOBILE),
            sender_sent=0,
            recipient_sent={AU_MOBILE: 20, "+61498765432": 3},
            day_sent=0,
        )
    with pytest.raises(RateLimitedError, match=r"24 hours; the limit is 5 \(limits.per_day\)"):
        rates(per_day=5).check((AU_MOBILE,), sender_sent=0, recipient_sent={}, day_sent=5)


def test_zero_turns_a_rate_off():
    rates().check((AU_MOBILE,), sender_sent=10**6, recipient_sent={AU_MOBILE: 10**6}, day_sent=1)


def test_a_message_bigger_than_a_whole_window_is_refused_for_good():
    with pytest.raises(LimitRefusedError) as caught:
        rates(per_sender_per_hour=2).check(
            (AU_MOBILE, "+61498765432", "+61411111111"),
            sender_sent=0,
            recipient_sent={},
            day_sent=0,
        )
    assert not isinstance(caught.value, RateLimitedError)
    assert caught.value.reply.startswith("550 5.7.1 The message goes to 3 numbers")


def test_a_sender_key_is_made_safe_for_a_reply():
    with pytest.raises(RateLimitedError) as caught:
        Quota(sender_key="bad\r\nname\u00e9", per_sender_per_hour=1).check(
            (AU_MOBILE,), sender_sent=1, recipient_sent={}, day_sent=0
        )
    assert caught.value.reply.isascii()
    assert "\r" not in caught.value.reply
    assert "\n" not in caught.value.reply


# ---- configuration -----------------------------------------------------------------------


def test_limits_defaults(make_settings):
    limits = make_settings().limits
    assert (limits.countries, limits.max_recipients) == ([], 100)
    assert (limits.per_sender_per_hour, limits.per_recipient_per_hour, limits.per_day) == (
        200,
        60,
        2000,
    )


def test_an_unknown_country_is_a_config_error_naming_the_key(make_settings):
    with pytest.raises(ValueError, match=r"limits\.countries[\s\S]*'XX' is not a country"):
        make_settings(limits={"countries": ["AU", "XX"]})


def test_an_alias_the_limits_refuse_is_a_config_error_naming_it(make_settings):
    with pytest.raises(ValueError, match=r"gateway\.aliases\.uk: \+447400123456 is in GB"):
        make_settings(gateway={"aliases": {"uk": [GB_MOBILE], "ok": [AU_MOBILE]}})
    with pytest.raises(ValueError, match=r"gateway\.aliases\.tips: \+611900123456 is a prem"):
        make_settings(gateway={"aliases": {"tips": ["1900 123 456"]}})
    with pytest.raises(ValueError, match=r"gateway\.aliases\.all: .* 3 numbers"):
        make_settings(
            gateway={"aliases": {"all": [AU_MOBILE, "0498765432", "0411111111"]}},
            limits={"max_recipients": 2},
        )
    settings: Settings = make_settings(
        gateway={"aliases": {"uk": [GB_MOBILE]}}, limits={"countries": ["AU", "GB"]}
    )
    assert settings.gateway.aliases == {"uk": [GB_MOBILE]}


def test_check_config_names_the_alias_and_exits_78(tmp_path, capsys):
    from mail2sms.cli import main  # noqa: PLC0415

    path = tmp_path / "config.toml"
    path.write_text(
        '[gateway]\ndomains = ["sms.example.com"]\naliases = { uk = ["+447400123456"] }\n',
        encoding="utf-8",
    )
    assert main(["check-config", "-c", str(path)]) == 78
    assert capsys.readouterr().err.splitlines()[1] == (
        "  - gateway.aliases.uk: +447400123456 is in GB; this gateway sends only to AU "
        "(limits.countries)"
    )
