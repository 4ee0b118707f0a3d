from __future__ import annotations

import pytest

from mail2sms.addressing import mask_number, parse_numbers, parse_rcpt, validate_region
from mail2sms.errors import BadNumberError, RecipientRefusedError
from mail2sms.models import RcptTarget

GATEWAY = {
    "gateway_addresses": ["sms@sms.example.com", "Alerts@SMS.example.com"],
    "gateway_domains": ["sms.example.com"],
}
HINT = "list numbers with country code, e.g. +61412345678, separated by commas"


# --- parse_numbers: one number in the forms people write ----------------------------------


@pytest.mark.parametrize(
    ("region", "subject", "expected"),
    [
        # Australia: mobile and landline, national with trunk 0, international, spaced.
        ("AU", "0412345678", "+61412345678"),
        ("AU", "0412 345 678", "+61412345678"),
        ("AU", "+61 412 345 678", "+61412345678"),
        ("AU", "+61412345678", "+61412345678"),
        ("AU", "61412345678", "+61412345678"),
        ("AU", "412345678", "+61412345678"),
        ("AU", "(02) 9876 5432", "+61298765432"),
        ("AU", "02-9876-5432", "+61298765432"),
        ("AU", "0011 61 412 345 678", "+61412345678"),
        ("AU", "0061412345678", "+61412345678"),
        ("AU", "+61 (0) 412 345 678", "+61412345678"),
        # United States: ten digits with no trunk prefix is the normal way to write it.
        ("US", "4155550123", "+14155550123"),
        ("US", "(415) 555-0123", "+14155550123"),
        ("US", "415.555.0123", "+14155550123"),
        ("US", "1 415 555 0123", "+14155550123"),
        ("US", "+1 415 555 0123", "+14155550123"),
        # Great Britain.
        ("GB", "07400 123456", "+447400123456"),
        ("GB", "+44 7400 123456", "+447400123456"),
        ("GB", "447400123456", "+447400123456"),
        ("GB", "+44 (0) 20 7946 0018", "+442079460018"),
        ("GB", "0044 7400 123456", "+447400123456"),
        # New Zealand.
        ("NZ", "021 123 4567", "+64211234567"),
        ("NZ", "0211234567", "+64211234567"),
        ("NZ", "+64 21 123 4567", "+64211234567"),
        ("NZ", "64211234567", "+64211234567"),
        ("NZ", "09 303 1234", "+6493031234"),
    ],
)
def test_parse_numbers_reads_one_number(region: str, subject: str, expected: str) -> None:
    assert parse_numbers(subject, region) == (expected,)


@pytest.mark.parametrize(
    ("region", "digits", "expected"),
    [
        # International digits of another country, written without '+'.
        ("AU", "447400123456", "+447400123456"),
        ("AU", "14155550123", "+14155550123"),
        ("AU", "64211234567", "+64211234567"),
        ("US", "61412345678", "+61412345678"),
        ("US", "447400123456", "+447400123456"),
        ("GB", "61412345678", "+61412345678"),
        ("NZ", "61412345678", "+61412345678"),
        ("NZ", "14155550123", "+14155550123"),
        # Valid both ways: US writes national numbers without a trunk prefix → national.
        ("US", "3694208093", "+13694208093"),
        # Valid both ways: AU writes national numbers with their 0, so the digits without
        # it are read as international (+43 Vienna), as the module docstring says.
        ("AU", "431859649", "+431859649"),
        ("GB", "2032045566", "+2032045566"),
    ],
)
def test_digits_without_plus_follow_the_documented_rule(
    region: str, digits: str, expected: str
) -> None:
    assert parse_numbers(digits, region) == (expected,)


@pytest.mark.parametrize(
    ("subject", "expected"),
    [
        ("+61412345678, +61412345679", ("+61412345678", "+61412345679")),
        ("+61412345678;+61412345679", ("+61412345678", "+61412345679")),
        ("+61412345678 +61412345679", ("+61412345678", "+61412345679")),
        ("+61412345678\t+61412345679", ("+61412345678", "+61412345679")),
        ("0412 345 678 0412 345 679", ("+61412345678", "+61412345679")),
        (
            "0412 345 678, (02) 9876 5432; +64 21 123 4567",
            ("+61412345678", "+61298765432", "+64211234567"),
        ),
        (" , 0412345678 ,, ; ", ("+61412345678",)),
        ("0412345678 / 0412345679", ("+61412345678", "+61412345679")),
    ],
)
def test_parse_numbers_separators(subject: str, expected: tuple[str, ...]) -> None:
    assert parse_numbers(subject, "AU") == expected


@pytest.mark.parametrize(
    ("subject", "expected"),
    [
        ("0412345678, +61412345678, 0412 345 678", ("+61412345678",)),
        ("0412345679, 0412345678, 0412345679", ("+61412345679", "+61412345678")),
    ],
)
def test_parse_numbers_removes_duplicates_and_keeps_order(
    subject: str, expected: tuple[str, ...]
) -> None:
    assert parse_numbers(subject, "AU") == expected


@pytest.mark.parametrize(
    ("subject", "named"),
    [
        ("hello", "'hello'"),
        ("0412345678, hello", "'hello'"),
        ("hello 0412345678", "'hello'"),
        ("0412345678 abc", "'abc'"),
        ("Re: 0412345678", "'Re:'"),
        ("0412 345", "'0412 345'"),
        ("0412345678, 12", "'12'"),
        ("+61412345678 999", "'999'"),
        ("1800-FLOWERS", "'1800-FLOWERS'"),
        ("0412345678x5", "'0412345678x5'"),
        ("+61+412345678", "'+61+412345678'"),
        ("caf\u00e9", "'caf\\xe9'"),
    ],
)
def test_parse_numbers_names_the_bad_token(subject: str, named: str) -> None:
    with pytest.raises(BadNumberError) as caught:
        parse_numbers(subject, "AU")
    reply = caught.value.reply
    assert reply.startswith(f"550 5.1.3 {named} in the subject is not a phone number")
    assert reply.endswith(HINT)
    assert reply.isascii()


def test_parse_numbers_error_text_is_exactly_as_documented() -> None:
    with pytest.raises(BadNumberError) as caught:
        parse_numbers("hello", "AU")
    assert caught.value.reply == f"550 5.1.3 'hello' in the subject is not a phone number: {HINT}"


def test_long_bad_token_is_shortened_in_the_reply() -> None:
    with pytest.raises(BadNumberError) as caught:
        parse_numbers("x" * 500, "AU")
    assert len(caught.value.reply) < 200
    assert "..." in caught.value.reply


@pytest.mark.parametrize("subject", ["", "   ", ",", " ; , ", "\t"])
def test_parse_numbers_without_any_number(subject: str) -> None:
    with pytest.raises(BadNumberError) as caught:
        parse_numbers(subject, "AU")
    assert caught.value.reply == f"550 5.1.3 No phone number in the subject: {HINT}"


def test_example_in_the_hint_follows_the_region() -> None:
    with pytest.raises(BadNumberError) as caught:
        parse_numbers("", "US")
    assert "e.g. +12015550123," in caught.value.text


# --- parse_rcpt ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "expected_address", "expected_number"),
    [
        ("sms@sms.example.com", "sms@sms.example.com", None),
        ("SMS@Sms.Example.COM", "sms@sms.example.com", None),
        ("alerts@sms.example.com", "alerts@sms.example.com", None),
        ("<sms@sms.example.com>", "sms@sms.example.com", None),
        ("+61412345678@sms.example.com", "+61412345678@sms.example.com", "+61412345678"),
        ("61412345678@sms.example.com", "61412345678@sms.example.com", "+61412345678"),
        ("0412345678@SMS.Example.com", "0412345678@sms.example.com", "+61412345678"),
        ("0412.345.678@sms.example.com", "0412.345.678@sms.example.com", "+61412345678"),
        ("0412-345-678@sms.example.com", "0412-345-678@sms.example.com", "+61412345678"),
        ("447400123456@sms.example.com", "447400123456@sms.example.com", "+447400123456"),
        ("+64211234567@sms.example.com.", "+64211234567@sms.example.com", "+64211234567"),
    ],
)
def test_parse_rcpt_accepts(
    address: str, expected_address: str, expected_number: str | None
) -> None:
    target = parse_rcpt(address, default_region="AU", **GATEWAY)
    assert target == RcptTarget(address=expected_address, number=expected_number)


@pytest.mark.parametrize(
    ("region", "local", "expected"),
    [
        ("US", "4155550123", "+14155550123"),
        ("US", "14155550123", "+14155550123"),
        ("GB", "07400123456", "+447400123456"),
        ("NZ", "0211234567", "+64211234567"),
        ("NZ", "+61412345678", "+61412345678"),
    ],
)
def test_parse_rcpt_reads_numbers_in_the_default_region(
    region: str, local: str, expected: str
) -> None:
    target = parse_rcpt(f"{local}@sms.example.com", default_region=region, **GATEWAY)
    assert target.number == expected


@pytest.mark.parametrize(
    "address",
    [
        "someone@example.com",
        "+61412345678@example.com",
        "sms@sms.example.com.evil.example",
        "sms@evil.example",
        "0412345678@sub.sms.example.com",
        "sms",
        "@sms.example.com",
        "",
    ],
)
def test_parse_rcpt_refuses_everything_else(address: str) -> None:
    with pytest.raises(RecipientRefusedError) as caught:
        parse_rcpt(address, default_region="AU", **GATEWAY)
    reply = caught.value.reply
    assert reply.startswith("550 5.1.1 <")
    assert (
        "is not a gateway address: send to sms@sms.example.com with numbers in the Subject" in reply
    )
    assert reply.endswith("or to <number>@sms.example.com")


def test_parse_rcpt_refusal_text_is_exactly_as_documented() -> None:
    with pytest.raises(RecipientRefusedError) as caught:
        parse_rcpt("x@y", default_region="AU", **GATEWAY)
    assert caught.value.reply == (
        "550 5.1.1 <x@y> is not a gateway address: send to sms@sms.example.com with numbers "
        "in the Subject, or to <number>@sms.example.com"
    )


@pytest.mark.parametrize(
    ("addresses", "domains", "hint"),
    [
        ([], ["sms.example.com"], "send to <number>@sms.example.com"),
        (["sms@sms.example.com"], [], "send to sms@sms.example.com with numbers in the Subject"),
    ],
)
def test_refusal_names_only_the_configured_ways(
    addresses: list[str], domains: list[str], hint: str
) -> None:
    with pytest.raises(RecipientRefusedError) as caught:
        parse_rcpt("x@y", gateway_addresses=addresses, gateway_domains=domains, default_region="AU")
    assert caught.value.text.endswith(f"is not a gateway address: {hint}")


@pytest.mark.parametrize(
    "local",
    ["joe", "0412", "4155550123", "+61-", "0412 345 678", "+61412345678x", "04123456789999999999"],
)
def test_parse_rcpt_bad_number_at_gateway_domain(local: str) -> None:
    with pytest.raises(BadNumberError) as caught:
        parse_rcpt(f"{local}@sms.example.com", default_region="AU", **GATEWAY)
    reply = caught.value.reply
    assert reply.startswith(f"550 5.1.3 '{local}' is not a phone number")
    assert "e.g. +61412345678@sms.example.com" in reply


def test_parse_rcpt_quotes_non_ascii_safely() -> None:
    with pytest.raises(BadNumberError) as caught:
        parse_rcpt("j\u00f6rg@sms.example.com", default_region="AU", **GATEWAY)
    assert caught.value.reply.isascii()
    assert "'j\\xf6rg'" in caught.value.reply


# --- validate_region, mask_number ----------------------------------------------------------


@pytest.mark.parametrize(
    ("region", "expected"), [("AU", "AU"), ("us", "US"), (" gb ", "GB"), ("Nz", "NZ")]
)
def test_validate_region_accepts(region: str, expected: str) -> None:
    assert validate_region(region) == expected


@pytest.mark.parametrize("region", ["ZZ", "", "AUS", "001", "UK"])
def test_validate_region_refuses(region: str) -> None:
    with pytest.raises(ValueError, match="is not a known region") as caught:
        validate_region(region)
    assert str(caught.value) == f"'{region}' is not a known region"


@pytest.mark.parametrize(
    ("number", "masked"),
    [
        ("+61412345678", "+614****5678"),
        ("+14155550123", "+141****0123"),
        ("+447400123456", "+447*****3456"),
        ("+6493031234", "+649***1234"),
        ("+12345", "+12***"),
    ],
)
def test_mask_number(number: str, masked: str) -> None:
    assert mask_number(number) == masked
    assert len(masked) == len(number)
