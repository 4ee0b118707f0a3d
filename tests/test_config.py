"""Config: TOML + environment, every problem named by its key path, secrets never shown."""

from __future__ import annotations

from pathlib import Path

import pytest

from mail2sms.config import HostPort, load_config, parse_duration, parse_host_port
from mail2sms.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
MINIMAL = '[gateway]\naddresses = ["sms@sms.example.com"]\n'
SENDERS_TEMPLATE = MINIMAL + '[senders]\nallow = ["{entry}"]\n'


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text, encoding="utf-8")
    return path


def problems(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(path)
    return info.value.problems


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (30, 30.0),
        (1.5, 1.5),
        ("45", 45.0),
        ("90s", 90.0),
        ("5m", 300.0),
        ("2h", 7200.0),
        ("1d", 86400.0),
        ("1h30m", 5400.0),
        ("250ms", 0.25),
        (" 2D ", 172800.0),
    ],
)
def test_durations(value, seconds):
    assert parse_duration(value) == seconds


@pytest.mark.parametrize("value", ["", "5x", "m5", "-5", "5 minutes", True, None, [1]])
def test_bad_durations(value):
    with pytest.raises(ValueError, match=r"duration"):
        parse_duration(value)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("127.0.0.1:2525", HostPort("127.0.0.1", 2525)),
        ("[::1]:25", HostPort("::1", 25)),
        ("mail.example.com:587", HostPort("mail.example.com", 587)),
        ("0.0.0.0:0", HostPort("0.0.0.0", 0)),
    ],
)
def test_host_port(value, expected):
    assert parse_host_port(value) == expected
    assert str(expected).endswith(f":{expected.port}")


@pytest.mark.parametrize("value", ["2525", "host:", ":25", "host:70000", "::1:25", 25])
def test_bad_host_port(value):
    with pytest.raises(ValueError, match=r"host:port|out of range"):
        parse_host_port(value)


def test_the_example_config_is_valid_and_embedded_defaults_are_as_documented():
    settings = load_config(ROOT / "config.example.toml")
    assert settings.provider.kind == "outbox"
    assert str(settings.smtp.listen) == "127.0.0.1:2525"
    assert settings.queue.path == Path("var/queue.sqlite3")
    assert settings.provider.path == Path("var/outbox.jsonl")
    assert settings.delivery.retry_initial == 30
    assert settings.delivery.retry_max == 900
    assert settings.delivery.give_up_after == 172800


def test_every_problem_is_listed_with_its_key_path(tmp_path):
    found = problems(
        write(
            tmp_path,
            """
[smtp]
listen = "nonsense"
colour = "blue"
[gateway]
addresses = ["not an address"]
default_region = "ZZ"
max_parts = 0
[provider]
kind = "pigeon"
[delivery]
retry_initial = "5x"
""",
        )
    )
    joined = "\n".join(found)
    for expected in (
        "smtp.listen:",
        "smtp.colour: unknown key",
        "gateway.addresses:",
        "gateway.default_region: 'ZZ' is not a known region",
        "gateway.max_parts:",
        "provider.kind:",
        "delivery.retry_initial:",
    ):
        assert expected in joined, joined
    assert len(found) == 7


def test_unknown_section_is_an_error(tmp_path):
    assert problems(write(tmp_path, MINIMAL + "[smpt]\nlisten = '127.0.0.1:25'\n")) == [
        "smpt: unknown key"
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [("this is = = not toml", "not valid TOML"), ("gateway = 3\n", "expected a [gateway] table")],
)
def test_unreadable_toml_is_one_clear_line(tmp_path, text, expected):
    found = problems(write(tmp_path, text))
    assert len(found) == 1
    assert expected in found[0]


def test_missing_file_and_directory(tmp_path):
    assert problems(tmp_path / "nope.toml") == [f"{tmp_path / 'nope.toml'}: no such file"]
    assert "is a directory" in problems(tmp_path)[0]


def test_environment_overrides_the_file(tmp_path, monkeypatch):
    path = write(tmp_path, MINIMAL + "[smtp]\nlisten = '127.0.0.1:2525'\n")
    monkeypatch.setenv("MAIL2SMS_SMTP__LISTEN", "0.0.0.0:25")
    monkeypatch.setenv("MAIL2SMS_GATEWAY__MAX_PARTS", "2")
    monkeypatch.setenv("MAIL2SMS_SENDERS__ALLOW", '["Ops@Example.com", "@example.org"]')
    settings = load_config(path)
    assert settings.smtp.listen == HostPort("0.0.0.0", 25)
    assert settings.gateway.max_parts == 2
    assert settings.gateway.addresses == ["sms@sms.example.com"]  # the file's value survives
    assert settings.senders.allow == ["ops@example.com", "@example.org"]


def test_environment_list_that_is_not_json_is_a_config_error(tmp_path, monkeypatch):
    monkeypatch.setenv("MAIL2SMS_SENDERS__ALLOW", "ops@example.com")
    found = problems(write(tmp_path, MINIMAL))
    assert len(found) == 1
    assert found[0].startswith("senders:")
    assert "JSON" in found[0]


def test_bad_environment_value_is_named(tmp_path, monkeypatch):
    monkeypatch.setenv("MAIL2SMS_GATEWAY__MAX_PARTS", "lots")
    found = problems(write(tmp_path, MINIMAL))
    assert found[0].startswith("gateway.max_parts:")


def test_http_provider_needs_a_token_and_never_shows_it(tmp_path, monkeypatch):
    path = write(tmp_path, MINIMAL + "[provider]\nkind = 'dataflows'\n")
    assert any("provider.token" in p for p in problems(path))
    monkeypatch.setenv("MAIL2SMS_PROVIDER__TOKEN", "22|verysecretvalue")
    settings = load_config(path)
    assert settings.provider.token is not None
    assert settings.provider.token.get_secret_value() == "22|verysecretvalue"
    assert "verysecretvalue" not in repr(settings)
    assert "verysecretvalue" not in str(settings.model_dump())


def test_token_type_error_does_not_echo_the_value(tmp_path):
    path = write(tmp_path, MINIMAL + "[provider]\nkind = 'dataflows'\ntoken = 12345678\n")
    joined = "\n".join(problems(path))
    assert "12345678" not in joined
    assert "provider.token" in joined


def test_token_from_systemd_credentials_directory(tmp_path, monkeypatch):
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "provider_token").write_text("22|fromcredentials\n", encoding="utf-8")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    settings = load_config(write(tmp_path, MINIMAL + "[provider]\nkind = 'dataflows'\n"))
    assert settings.provider.token is not None
    assert settings.provider.token.get_secret_value() == "22|fromcredentials"


def test_gateway_needs_an_address_or_a_domain(tmp_path):
    found = problems(write(tmp_path, "[gateway]\ndefault_region = 'AU'\n"))
    assert any("gateway.addresses and/or gateway.domains" in p for p in found)


@pytest.mark.parametrize("sender_id", ["MyBrand", "ACME 24-7", "+61412345678", "61412345678"])
def test_sender_ids(tmp_path, sender_id):
    settings = load_config(write(tmp_path, MINIMAL + f"sender_id = '{sender_id}'\n"))
    assert settings.gateway.sender_id == sender_id


@pytest.mark.parametrize("sender_id", ["TwelveLetter", "", "Bad!Chars"])
def test_bad_sender_ids(tmp_path, sender_id):
    assert problems(write(tmp_path, MINIMAL + f"sender_id = '{sender_id}'\n"))[0].startswith(
        "gateway.sender_id:"
    )


@pytest.mark.parametrize(
    ("entry", "stored"),
    [
        ("ups@panel.local", "ups@panel.local"),
        ("alarm@[192.0.2.7]", "alarm@[192.0.2.7]"),
        ("@corp.internal", "@corp.internal"),
        ("Printer@Office.LAN", "printer@office.lan"),
    ],
)
def test_internal_network_senders_can_be_allowed(tmp_path, entry, stored):
    settings = load_config(write(tmp_path, SENDERS_TEMPLATE.format(entry=entry)))
    assert stored in settings.senders.allow


@pytest.mark.parametrize("entry", ["nobody", "a@-bad.example", "a@[1.2.3]", "a b@example.com"])
def test_malformed_sender_entries_are_refused_naming_them(tmp_path, entry):
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, SENDERS_TEMPLATE.format(entry=entry)))
    assert any(p.startswith("senders.allow") and entry in p for p in caught.value.problems)


@pytest.mark.parametrize(
    ("relay", "starttls", "warned"),
    [
        ("smtp.office365.com:587", "auto", True),
        ("smtp.office365.com:587", "never", True),
        ("smtp.office365.com:587", "always", False),
        ("127.0.0.1:25", "auto", False),
    ],
)
def test_a_relay_password_without_verified_tls_is_warned_about(tmp_path, relay, starttls, warned):
    text = MINIMAL + (
        f'[bounce]\nrelay = "{relay}"\nstarttls = "{starttls}"\n'
        'user = "bounces@example.com"\npassword = "hunter2-secret"\n'
    )
    notes = load_config(write(tmp_path, text)).warnings()
    assert any("without verified TLS" in n for n in notes) is warned
    assert not any("hunter2" in n for n in notes)


def test_bounce_user_without_password_is_an_error(tmp_path):
    text = MINIMAL + '[bounce]\nrelay = "127.0.0.1:25"\nuser = "bounces@example.com"\n'
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, text))
    assert any("bounce.user and bounce.password" in p for p in caught.value.problems)


def test_internationalised_domains_are_stored_in_ascii(tmp_path):
    text = (
        '[gateway]\naddresses = ["sms@sms.bücher.example"]\ndomains = ["sms.bücher.example"]\n'
        '[senders]\nallow = ["@bücher.example"]\n[smtp]\nhostname = "Sms.Bücher.Example."\n'
    )
    settings = load_config(write(tmp_path, text))
    assert settings.gateway.domains == ["sms.xn--bcher-kva.example"]
    assert settings.senders.allow == ["@xn--bcher-kva.example"]
    assert settings.smtp.hostname == "sms.xn--bcher-kva.example"


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ('[smtp]\nhostname = "sms_gw.example"\n', "smtp.hostname"),
        ('[bounce]\nfrom = "jörg@example.org"\n', "bounce.from"),
        ('[bounce]\nfrom = "\\"mailer daemon\\"@example.org"\n', "bounce.from"),
    ],
)
def test_names_a_bounce_could_not_carry_are_config_errors(tmp_path, text, key):
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, MINIMAL + text))
    assert any(p.startswith(key) for p in caught.value.problems), caught.value.problems


@pytest.mark.parametrize("token", ["22|abc\nsecondline", "22|tökén", "22|a b"])
def test_a_credential_that_cannot_be_an_http_header_is_refused_unseen(tmp_path, token):
    text = MINIMAL + f'[provider]\nkind = "dataflows"\ntoken = """{token}"""\n'
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, text))
    (problem,) = caught.value.problems
    assert problem.startswith("provider.token: ")
    assert "printable ASCII" in problem
    assert token not in problem
    assert "secondline" not in problem


@pytest.mark.parametrize("name", ["0412-345-678", "+61412345678", "a..b", "oncall."])
def test_alias_names_that_are_numbers_or_malformed_are_refused(tmp_path, name):
    text = (
        MINIMAL + f'domains = ["sms.example.com"]\n[gateway.aliases]\n"{name}" = ["+61412345678"]\n'
    )
    with pytest.raises(ConfigError):
        load_config(write(tmp_path, text))


def test_log_section_defaults_and_levels(tmp_path):
    settings = load_config(write(tmp_path, MINIMAL + '[log]\nlevel = "WARNING"\n'))
    assert settings.log.level == "warning"
    assert settings.log.show_numbers is False
    found = problems(write(tmp_path, MINIMAL + '[log]\nlevel = "loud"\nshow_number = true\n'))
    assert any(p.startswith("log.level:") for p in found)
    assert "log.show_number: unknown key" in found


@pytest.mark.parametrize(
    ("listen", "verify", "warned"),
    [
        ("0.0.0.0:25", "none", True),
        ("93.184.215.14:25", "none", True),
        ("mail.example.com:25", "none", True),
        ("192.168.1.2:25", "none", False),
        ("127.0.0.1:2525", "none", False),
        ("0.0.0.0:25", "dmarc", False),
    ],
)
def test_an_internet_facing_listener_without_sender_verification_is_warned_about(
    tmp_path, listen, verify, warned
):
    text = MINIMAL + f'[smtp]\nlisten = "{listen}"\n[senders]\nverify = "{verify}"\n'
    notes = load_config(write(tmp_path, text)).warnings()
    assert any('senders.verify is "none"' in n for n in notes) is warned


def test_sender_verification_keys_are_read_and_checked(tmp_path):
    text = MINIMAL + (
        '[senders]\nverify = "dmarc"\ntrusted_authserv_ids = ["MX.Example.com"]\n'
        'dns_servers = ["127.0.0.53", "::1"]\ndns_timeout = "2s"\n'
    )
    senders = load_config(write(tmp_path, text)).senders
    assert (senders.verify, senders.trusted_authserv_ids) == ("dmarc", ["mx.example.com"])
    assert (senders.dns_servers, senders.dns_timeout) == (["127.0.0.53", "::1"], 2.0)
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, MINIMAL + '[senders]\ndns_servers = ["dns.example"]\n'))
    assert caught.value.problems == [
        "senders.dns_servers: 'dns.example' is not an IP address, e.g. '127.0.0.53'"
    ]
    with pytest.raises(ConfigError, match=r"senders\.verify"):
        load_config(write(tmp_path, MINIMAL + '[senders]\nverify = "spf"\n'))


def test_trusted_authserv_ids_without_verification_are_warned_about(tmp_path):
    text = MINIMAL + '[senders]\ntrusted_authserv_ids = ["mx.example.com"]\n'
    notes = load_config(write(tmp_path, text)).warnings()
    assert any("trusted_authserv_ids does nothing" in n for n in notes)
