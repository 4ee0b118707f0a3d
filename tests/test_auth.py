"""Password hashes, the AUTH lockout, ``hash-password`` and the auth/TLS config keys.

No sockets here: tests/test_tls.py talks to the real server.
"""

from __future__ import annotations

import io
import sys
import threading
from pathlib import Path

import pytest
import structlog
import trustme
from conftest import base_config, merged

from mail2sms import auth, cli
from mail2sms.auth import Lockout, authenticate, lockout_key
from mail2sms.config import Settings, load_config
from mail2sms.errors import AuthLockedError, BadCredentialsError, ConfigError
from mail2sms.passwords import hash_password, parse_hash, verify_password
from mail2sms.smtp import Client, Policy, check_sender

FAST = 2**10  # the lowest scrypt cost a config accepts: keeps the tests quick


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# ---- password hashes -------------------------------------------------------------------


def test_a_hash_verifies_its_password_only():
    stored = hash_password("correct horse", n=FAST)
    assert stored.startswith(f"scrypt${FAST}$8$1$")
    parsed = parse_hash(stored)
    assert verify_password(b"correct horse", parsed)
    assert not verify_password(b"correct horsf", parsed)
    assert hash_password("correct horse", n=FAST) != stored  # salted


@pytest.mark.parametrize(
    "text",
    [
        "hunter2",
        "scrypt$16384$8$1$c2FsdA==",
        "scrypt$1000$8$1$c2FsdHNhbHQ=$aGFzaGhhc2hoYXNoaGFzaA==",  # n not a power of two
        "scrypt$16384$8$1$!!!$aGFzaGhhc2hoYXNoaGFzaA==",
        "bcrypt$16384$8$1$c2FsdHNhbHQ=$aGFzaGhhc2hoYXNoaGFzaA==",
    ],
)
def test_anything_else_is_not_a_hash_and_is_not_echoed(text):
    with pytest.raises(ValueError, match="hash-password") as caught:
        parse_hash(text)
    assert text not in str(caught.value)


# ---- lockout ---------------------------------------------------------------------------


def test_five_failures_in_ten_minutes_lock_an_address_for_fifteen():
    clock = FakeClock()
    lockout = Lockout(clock=clock)
    for _ in range(4):
        assert not lockout.failed("192.0.2.1")
        clock.now += 60
    assert not lockout.locked("192.0.2.1")
    assert lockout.failed("192.0.2.1")  # the fifth
    assert lockout.locked("192.0.2.1")
    assert not lockout.locked("192.0.2.2")  # other addresses are unaffected
    clock.now += 899
    assert lockout.locked("192.0.2.1")
    clock.now += 2
    assert not lockout.locked("192.0.2.1")


def test_failures_older_than_the_window_do_not_count():
    clock = FakeClock()
    lockout = Lockout(clock=clock)
    for _ in range(4):
        lockout.failed("192.0.2.1")
    clock.now += 601
    assert not lockout.failed("192.0.2.1")
    assert not lockout.locked("192.0.2.1")


def test_a_good_login_takes_back_only_its_own_count():
    """One valid account must not reset the count while another's password is guessed."""
    lockout = Lockout(clock=FakeClock())
    for _ in range(4):
        lockout.failed("192.0.2.1")
    locks = lockout.failed("192.0.2.1")  # counted before the check, as authenticate does
    assert locks
    lockout.refund("192.0.2.1", locked_now=locks)  # ... and the password was right
    assert not lockout.locked("192.0.2.1")
    assert lockout.failed("192.0.2.1")  # the four earlier failures still count


def test_memory_stays_bounded_under_a_scan():
    clock = FakeClock()
    lockout = Lockout(clock=clock, max_tracked=100)
    for i in range(1000):
        lockout.failed(f"10.0.{i // 250}.{i % 250}")
    assert len(lockout._failures) + len(lockout._locked_until) <= 101


# ---- authenticate ----------------------------------------------------------------------

pytestmark_anyio = pytest.mark.anyio


@pytest.fixture
def users():
    return {"printer": parse_hash(hash_password("s3cret-Pass", n=FAST))}


@pytestmark_anyio
async def test_authenticate_returns_the_name(users):
    lockout = Lockout()
    name = await authenticate(
        b"printer", b"s3cret-Pass", users=users, lockout=lockout, client="c", peer="p"
    )
    assert name == "printer"
    assert not lockout._failures


@pytestmark_anyio
async def test_an_unknown_user_costs_a_scrypt_too(users, monkeypatch):
    calls = []

    def counting(password, stored):
        calls.append(stored.n)
        return verify_password(password, stored)

    monkeypatch.setattr(auth, "verify_password", counting)
    for login in (b"nobody", b"\xff\xfe"):
        with pytest.raises(BadCredentialsError) as caught:
            await authenticate(
                login, b"s3cret-Pass", users=users, lockout=Lockout(), client="c", peer="p"
            )
        assert caught.value.reply == "535 5.7.8 Authentication credentials invalid"
    assert calls == [FAST, FAST]  # as costly as the real users' hashes


@pytestmark_anyio
async def test_the_check_runs_off_the_event_loop(users, monkeypatch):
    entered, release = threading.Event(), threading.Event()
    released = []

    def blocking(password, stored):
        entered.set()
        released.append(release.wait(5))  # on the loop itself, nothing could set it
        return verify_password(password, stored)

    monkeypatch.setattr(auth, "verify_password", blocking)
    import anyio  # noqa: PLC0415
    import anyio.lowlevel  # noqa: PLC0415

    async with anyio.create_task_group() as group:
        group.start_soon(
            lambda: authenticate(
                b"printer", b"s3cret-Pass", users=users, lockout=Lockout(), client="c", peer="p"
            )
        )
        # the loop still runs while the hash is being computed
        await anyio.to_thread.run_sync(entered.wait, 10)
        await anyio.lowlevel.checkpoint()
        release.set()
    assert released == [True]


@pytestmark_anyio
async def test_failures_are_logged_without_the_password_and_lock_out(users):
    lockout = Lockout()
    with structlog.testing.capture_logs() as logs:
        for _ in range(5):
            with pytest.raises(BadCredentialsError):
                await authenticate(
                    b"printer", b"wrong-pw-xyz", users=users, lockout=lockout, client="c", peer="p"
                )
        with pytest.raises(AuthLockedError) as caught:
            await authenticate(
                b"printer", b"s3cret-Pass", users=users, lockout=lockout, client="c", peer="p"
            )
    assert caught.value.reply.startswith("454 4.7.0 Too many failed authentication attempts")
    events = [entry["event"] for entry in logs]
    assert events.count("smtp_auth_failed") == 5
    assert events.count("smtp_auth_locked") == 1
    assert logs[0]["user"] == "printer"
    assert "wrong-pw-xyz" not in repr(logs)


# ---- who may send (pure) ---------------------------------------------------------------


def make_policy(**kwargs):
    return Policy(
        hostname="sms.test",
        gateway_addresses=("sms@sms.example.com",),
        gateway_domains=(),
        default_region="AU",
        sender_id="Test",
        max_parts=3,
        allow=("alice@example.com",),
        **kwargs,
    )


def test_the_trust_decision():
    import ipaddress  # noqa: PLC0415

    policy = make_policy(
        require_auth=True,
        networks=(ipaddress.ip_network("10.1.0.0/16"),),
        user_allow={"ups": ("ups@example.net", "@plant.example")},
    )
    assert Client(ip="10.1.2.3", trusted_network=policy.in_networks("10.1.2.3")).trusted
    assert policy.in_networks("::ffff:10.1.2.3")
    assert not policy.in_networks("10.2.0.1")
    assert not Client(ip="10.2.0.1").trusted
    assert Client(user="ups").trusted
    check_sender(policy, "anyone@else.example", where="Sender", client=Client(trusted_network=True))
    check_sender(policy, "Box@Plant.Example", where="Sender", client=Client(user="ups"))
    with pytest.raises(Exception, match="not an address user ups may send as") as refused:
        check_sender(policy, "alice@example.com", where="From address", client=Client(user="ups"))
    assert refused.value.reply.startswith("550 5.7.1 From address <alice@example.com>")
    with pytest.raises(Exception, match="Authentication required") as required:
        check_sender(policy, "alice@example.com", where="Sender", client=Client(ip="10.2.0.1"))
    assert required.value.reply.startswith("530 5.7.0 Authentication required")


# ---- hash-password ---------------------------------------------------------------------


def test_hash_password_reads_stdin_and_prints_a_hash(monkeypatch, capsys):
    monkeypatch.setattr(sys, "stdin", io.StringIO("pw from a pipe\nignored\n"))
    assert cli.main(["hash-password"]) == cli.EX_OK
    printed = capsys.readouterr().out.strip()
    assert verify_password(b"pw from a pipe", parse_hash(printed))
    assert "pw from a pipe" not in printed


def test_hash_password_refuses_an_empty_password(monkeypatch, capsys):
    monkeypatch.setattr(sys, "stdin", io.StringIO("\n"))
    assert cli.main(["hash-password"]) == cli.EX_USAGE
    out = capsys.readouterr()
    assert "empty password" in out.err
    assert not out.out


def test_hash_password_asks_without_echo_on_a_terminal(monkeypatch, capsys):
    class Tty(io.StringIO):
        def isatty(self):
            return True

    monkeypatch.setattr(sys, "stdin", Tty(""))
    monkeypatch.setattr(cli.getpass, "getpass", lambda _prompt: "typed secret")
    assert cli.main(["hash-password"]) == cli.EX_OK
    assert verify_password(b"typed secret", parse_hash(capsys.readouterr().out.strip()))


# ---- configuration ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def ca():
    return trustme.CA()


@pytest.fixture
def cert_files(ca, tmp_path):
    issued = ca.issue_cert("sms.test", "127.0.0.1")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    issued.cert_chain_pems[0].write_to_path(cert)
    issued.private_key_pem.write_to_path(key)
    return cert, key


def write_config(tmp_path: Path, overrides: dict) -> Path:
    lines = []
    for table, values in merged(base_config(tmp_path), overrides).items():
        lines.append(f"[{table}]")
        for key, value in values.items():
            if key == "users":
                continue
            lines.append(f"{key} = {_toml(value)}")
        for user in values.get("users", []):
            lines.append(f"[[{table}.users]]")
            lines.extend(f"{k} = {_toml(v)}" for k, v in user.items())
    path = tmp_path / "config.toml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, int):
        return str(value)
    return '"' + str(value).replace("\\", "\\\\") + '"'


def problems(tmp_path: Path, overrides: dict) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_config(write_config(tmp_path, overrides))
    return caught.value.problems


def test_tls_and_users_load(tmp_path, cert_files):
    cert, key = cert_files
    secret = hash_password("pw", n=FAST)
    settings = load_config(
        write_config(
            tmp_path,
            {
                "smtp": {
                    "tls_cert": str(cert),
                    "tls_key": str(key),
                    "tls_listen": "127.0.0.1:0",
                    "users": [
                        {"name": "ups", "password_hash": secret, "allow": ["UPS@Example.NET"]}
                    ],
                },
                "senders": {"require_auth": True, "networks": ["10.0.0.0/8", "2001:db8::/32"]},
            },
        )
    )
    assert settings.smtp.users[0].allow == ["ups@example.net"]
    assert settings.senders.networks == ["10.0.0.0/8", "2001:db8::/32"]
    assert secret not in repr(settings)
    assert secret not in str(settings.model_dump())
    assert secret not in repr(Policy.from_settings(settings))
    assert settings.warnings() == [
        "bounce.relay is empty: failed messages are logged, no bounce is sent"
    ]


def test_check_config_output_has_no_hash(tmp_path, cert_files, capsys):
    cert, key = cert_files
    secret = hash_password("pw", n=FAST)
    path = write_config(
        tmp_path,
        {
            "smtp": {
                "tls_cert": str(cert),
                "tls_key": str(key),
                "users": [{"name": "u", "password_hash": secret}],
            }
        },
    )
    assert cli.main(["check-config", "-c", str(path)]) == cli.EX_OK
    out = capsys.readouterr()
    assert secret not in out.out + out.err
    assert "  users:    u\n" in out.out
    assert f"  tls:      STARTTLS with {cert}\n" in out.out
    assert secret.split("$")[-1] not in out.out + out.err


def test_a_missing_certificate_names_the_key(tmp_path, cert_files):
    _cert, key = cert_files
    missing = str(tmp_path / "nope.pem")
    found = problems(tmp_path, {"smtp": {"tls_cert": missing, "tls_key": str(key)}})
    assert any(p.startswith("smtp.tls_cert: cannot read") for p in found), found


def test_a_key_that_does_not_match_names_the_key(tmp_path, ca, cert_files):
    cert, _key = cert_files
    other = tmp_path / "other-key.pem"
    ca.issue_cert("other.test").private_key_pem.write_to_path(other)
    found = problems(tmp_path, {"smtp": {"tls_cert": str(cert), "tls_key": str(other)}})
    assert len(found) == 1
    assert found[0].startswith("smtp.tls_key: ")
    assert "not a matching PEM certificate" in found[0]
    assert "PRIVATE KEY" not in found[0]


def test_an_unreadable_key_names_the_key(tmp_path, cert_files):
    cert, key = cert_files
    key.unlink()
    found = problems(tmp_path, {"smtp": {"tls_cert": str(cert), "tls_key": str(key)}})
    assert found == [f"smtp.tls_key: cannot read {key}: No such file or directory"]


def test_cert_and_key_go_together_and_tls_listen_needs_them(tmp_path, cert_files):
    cert, _key = cert_files
    assert any("set together" in p for p in problems(tmp_path, {"smtp": {"tls_cert": str(cert)}}))
    found = problems(tmp_path, {"smtp": {"tls_listen": "127.0.0.1:0"}})
    assert any("smtp.tls_listen needs smtp.tls_cert" in p for p in found), found


def test_a_bad_hash_names_the_user_key_and_hides_the_value(tmp_path):
    found = problems(tmp_path, {"smtp": {"users": [{"name": "ups", "password_hash": "hunter2"}]}})
    assert len(found) == 1
    assert found[0].startswith("smtp.users.0.password_hash: ")
    assert "hunter2" not in found[0]


def test_user_names_are_unique(tmp_path):
    secret = hash_password("pw", n=FAST)
    users = [{"name": "ups", "password_hash": secret}, {"name": "ups", "password_hash": secret}]
    found = problems(tmp_path, {"smtp": {"users": users}})
    assert any("ups: user name listed more than once" in p for p in found), found


def test_networks_are_cidrs(tmp_path):
    found = problems(tmp_path, {"senders": {"networks": ["10.0.0.0/8", "printers"]}})
    assert any(p.startswith("senders.networks: 'printers' is not a network") for p in found)


def test_warnings_for_users_without_tls_and_require_auth_without_users(make_settings):
    secret = hash_password("pw", n=FAST)
    notes = make_settings(smtp={"users": [{"name": "u", "password_hash": secret}]}).warnings()
    assert any("AUTH is offered only over TLS" in n for n in notes)
    notes = make_settings(senders={"require_auth": True, "allow": []}).warnings()
    assert any("senders.require_auth is true but smtp.users is empty" in n for n in notes)
    assert not any("every sender will be refused" in n for n in notes)


def test_settings_repr_hides_the_hash(make_settings):
    secret = hash_password("pw", n=FAST)
    settings: Settings = make_settings(smtp={"users": [{"name": "u", "password_hash": secret}]})
    assert secret not in repr(settings)
    assert settings.smtp.users[0].password_hash.get_secret_value() == secret


@pytest.mark.parametrize(
    ("ip", "key"),
    [
        ("192.0.2.7", "192.0.2.7"),
        ("2001:db8:1:2:aaaa::1", "2001:db8:1:2::/64"),
        ("2001:db8:1:2:bbbb::9", "2001:db8:1:2::/64"),  # the same host, another address
        ("::ffff:192.0.2.7", "192.0.2.7"),
        ("unknown", "unknown"),
    ],
)
def test_lockout_key_groups_an_ipv6_host_by_its_64(ip, key):
    assert lockout_key(ip) == key
