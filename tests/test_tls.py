"""STARTTLS, implicit TLS, AUTH and who may submit, over real sockets on 127.0.0.1.

The CA and the certificates are made at test time (trustme); users' hashes use the
cheapest scrypt cost a config accepts, so logins are quick.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator
from email.message import EmailMessage
from pathlib import Path

import aiosmtplib
import pytest
import structlog
import trustme
from conftest import ALLOWED, GATEWAY, poll, read_outbox
from pydantic import SecretStr

from mail2sms.config import Settings
from mail2sms.errors import ConfigError
from mail2sms.passwords import hash_password

pytestmark = pytest.mark.anyio

FAST = 2**10
PASSWORD = "printer-Pa55word"
UPS_PASSWORD = "ups-Pa55word"
STRANGER = "someone@elsewhere.example"  # on no allowlist


@pytest.fixture(scope="module")
def ca():
    return trustme.CA()


@pytest.fixture(scope="module")
def hashes():
    return {"printer": hash_password(PASSWORD, n=FAST), "ups": hash_password(UPS_PASSWORD, n=FAST)}


def issue(ca: trustme.CA, directory: Path, name: str) -> tuple[Path, Path]:
    issued = ca.issue_cert(name, "127.0.0.1")
    cert, key = directory / f"{name}.crt", directory / f"{name}.key"
    issued.private_key_and_cert_chain_pem.write_to_path(cert)
    issued.private_key_pem.write_to_path(key)
    return cert, key


@pytest.fixture
def tls_settings(ca, hashes, make_settings, tmp_path):
    """Settings with a certificate, two users and any overrides."""
    cert, key = issue(ca, tmp_path, "one.sms.test")

    def make(**overrides: dict) -> Settings:
        smtp = {
            "tls_cert": str(cert),
            "tls_key": str(key),
            "users": [
                {"name": "printer", "password_hash": hashes["printer"]},
                {"name": "ups", "password_hash": hashes["ups"], "allow": ["ups@plant.example"]},
            ],
        } | overrides.pop("smtp", {})
        return make_settings(smtp=smtp, **overrides)

    return make


@pytest.fixture
def client_tls(ca):
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


def mail(sender: str = STRANGER, subject: str = "+61412345678") -> bytes:
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = GATEWAY
    msg["Subject"] = subject
    msg["Message-ID"] = f"<{subject}-{sender}@test>"
    msg.set_content("Toner low on level 3")
    return msg.as_bytes()


def smtp_client(port: int, context: ssl.SSLContext, **kwargs) -> aiosmtplib.SMTP:
    return aiosmtplib.SMTP(
        hostname="127.0.0.1", port=port, tls_context=context, start_tls=False, timeout=10, **kwargs
    )


@contextlib.asynccontextmanager
async def tls_session(
    port: int, context: ssl.SSLContext, **kwargs
) -> AsyncIterator[aiosmtplib.SMTP]:
    """A client past EHLO, STARTTLS and EHLO again; QUIT at the end (or close, if hung up)."""
    client = smtp_client(port, context, **kwargs)
    await client.connect()
    try:
        await client.ehlo()
        await client.starttls()
        await client.ehlo()
        yield client
    finally:
        try:
            await client.quit()
        except aiosmtplib.SMTPServerDisconnected:
            client.close()


async def send(client: aiosmtplib.SMTP, sender: str, data: bytes) -> tuple[int, str]:
    """MAIL, RCPT, DATA; the first refusal or the final reply."""
    reply = await client.execute_command(b"MAIL", f"FROM:<{sender}>".encode())
    if reply.code != 250:
        return reply.code, reply.message
    reply = await client.execute_command(b"RCPT", f"TO:<{GATEWAY}>".encode())
    assert reply.code == 250, reply
    try:
        reply = await client.data(data)
    except aiosmtplib.SMTPDataError as refused:
        return refused.code, refused.message
    return reply.code, reply.message


async def login(client: aiosmtplib.SMTP, user: str, password: str, mechanism: str = "plain"):
    method = client.auth_plain if mechanism == "plain" else client.auth_login
    return await method(user, password)


def peer_names(client: aiosmtplib.SMTP) -> set[str]:
    assert client.transport is not None
    cert = client.transport.get_extra_info("peercert")
    return {value for kind, value in cert["subjectAltName"] if kind == "DNS"}


@pytest.mark.parametrize("mechanism", ["plain", "login"])
async def test_starttls_then_auth_sends_as_anyone(
    tls_settings, start_app, client_tls, *, tmp_path, mechanism, caplog
):
    app = await start_app(tls_settings())
    client = smtp_client(app.smtp_port, client_tls)
    await client.connect()
    try:
        await client.ehlo()
        assert client.supports_extension("starttls")
        assert not client.supports_extension("auth")  # not before TLS
        await client.starttls()
        await client.ehlo()
        assert set(client.server_auth_methods) == {"plain", "login"}
        reply = await login(client, "printer", PASSWORD, mechanism)
        assert reply.code == 235
        code, text = await send(client, STRANGER, mail())
        assert code == 250, text
    finally:
        await client.quit()
    lines = await poll(lambda: read_outbox(tmp_path / "outbox.jsonl"))
    assert lines[0]["text"] == "Toner low on level 3"
    assert "deprecated" not in caplog.text  # aiosmtpd's login_data warning, once per login


async def test_auth_before_starttls_is_refused(tls_settings, start_app, client_tls):
    app = await start_app(tls_settings())
    client = smtp_client(app.smtp_port, client_tls)
    await client.connect()
    try:
        await client.ehlo()
        reply = await client.execute_command(b"AUTH", b"PLAIN", b"AHByaW50ZXIAeA==")
        assert reply.code == 538
        assert reply.message.startswith("5.7.11 Encryption required")
    finally:
        await client.quit()


async def test_no_users_means_no_auth_offered(make_settings, start_app, client_tls, ca, tmp_path):
    cert, key = issue(ca, tmp_path, "plain.sms.test")
    app = await start_app(make_settings(smtp={"tls_cert": str(cert), "tls_key": str(key)}))
    async with tls_session(app.smtp_port, client_tls) as client:
        assert client.supports_extension("8bitmime")
        assert not client.supports_extension("auth")


async def test_wrong_password_and_unknown_user_get_535(tls_settings, start_app, client_tls):
    app = await start_app(tls_settings())
    async with tls_session(app.smtp_port, client_tls) as client:
        with structlog.testing.capture_logs() as logs:
            for user, password in (("printer", "wrong-Secret-1"), ("nobody", PASSWORD)):
                with pytest.raises(aiosmtplib.SMTPAuthenticationError) as caught:
                    await login(client, user, password)
                assert caught.value.code == 535
                assert caught.value.message == "5.7.8 Authentication credentials invalid"
        # still usable, but not logged in: a stranger is refused as before
        code, _text = await send(client, STRANGER, mail())
        assert code == 550
    failed = [entry for entry in logs if entry["event"] == "smtp_auth_failed"]
    assert [entry["user"] for entry in failed] == ["printer", "nobody"]
    assert "wrong-Secret-1" not in repr(logs)


async def test_lockout_after_five_failures_spares_other_addresses(
    tls_settings, start_app, client_tls
):
    app = await start_app(tls_settings())
    async with tls_session(app.smtp_port, client_tls) as client:
        for _ in range(5):
            with pytest.raises(aiosmtplib.SMTPAuthenticationError) as caught:
                await login(client, "printer", "wrong")
            assert caught.value.code == 535
        with pytest.raises(aiosmtplib.SMTPAuthenticationError) as caught:
            await login(client, "printer", PASSWORD)  # right, but too late
        assert caught.value.code == 454
        assert caught.value.message.startswith("4.7.0 Too many failed authentication")
    async with tls_session(app.smtp_port, client_tls, source_address=("127.0.0.2", 0)) as other:
        assert (await login(other, "printer", PASSWORD)).code == 235


async def test_require_auth_refuses_strangers_and_allowlisted_alike(
    tls_settings, start_app, client_tls
):
    app = await start_app(tls_settings(senders={"require_auth": True}))
    client = smtp_client(app.smtp_port, client_tls)
    await client.connect()
    try:
        await client.ehlo()
        code, text = await send(client, ALLOWED, mail(ALLOWED))
        assert code == 530
        assert text.startswith("5.7.0 Authentication required")
        await client.starttls()
        await client.ehlo()
        await login(client, "printer", PASSWORD)
        code, text = await send(client, ALLOWED, mail(ALLOWED))
        assert code == 250, text
    finally:
        await client.quit()


async def test_a_trusted_network_sends_without_auth_or_allowlist(
    make_settings, start_app, tmp_path
):
    app = await start_app(
        make_settings(senders={"require_auth": True, "networks": ["127.0.0.0/8"], "allow": []})
    )
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=app.smtp_port, start_tls=False, timeout=10)
    await client.connect()
    try:
        await client.ehlo()
        code, text = await send(client, STRANGER, mail())
        assert code == 250, text
    finally:
        await client.quit()
    assert await poll(lambda: read_outbox(tmp_path / "outbox.jsonl"))


async def test_outside_the_network_the_allowlist_applies(make_settings, start_app):
    app = await start_app(make_settings(senders={"networks": ["10.9.0.0/16"]}))
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=app.smtp_port, start_tls=False, timeout=10)
    await client.connect()
    try:
        await client.ehlo()
        code, text = await send(client, STRANGER, mail())
        assert code == 550
        assert f"<{STRANGER}> is not allowed" in text
        code, text = await send(client, ALLOWED, mail(ALLOWED))
        assert code == 250, text
    finally:
        await client.quit()


async def test_a_users_allow_list_binds_mail_from_and_from(tls_settings, start_app, client_tls):
    app = await start_app(tls_settings())
    async with tls_session(app.smtp_port, client_tls) as client:
        await login(client, "ups", UPS_PASSWORD, "login")
        code, text = await send(client, ALLOWED, mail(ALLOWED))  # allowlisted, not ups's
        assert code == 550
        assert text == (
            f"5.7.1 Sender <{ALLOWED}> is not an address user ups may send as; send from "
            "one of that user's addresses or ask the administrator to add it"
        )
        await client.rset()
        code, text = await send(client, "ups@plant.example", mail(STRANGER))
        assert code == 550
        assert text.startswith(f"5.7.1 From address <{STRANGER}> is not an address user ups")
        data = mail("ups@plant.example", "0412345678")
        code, text = await send(client, "UPS@plant.example", data)
        assert code == 250, text


async def test_implicit_tls_listener(tls_settings, start_app, client_tls, tmp_path):
    app = await start_app(tls_settings(smtp={"tls_listen": "127.0.0.1:0"}))
    client = smtp_client(app.tls_port, client_tls, use_tls=True)
    await client.connect()
    try:
        await client.ehlo()
        assert not client.supports_extension("starttls")
        assert peer_names(client) == {"one.sms.test"}
        assert (await login(client, "printer", PASSWORD)).code == 235
        code, text = await send(client, STRANGER, mail())
        assert code == 250, text
    finally:
        await client.quit()
    assert await poll(lambda: read_outbox(tmp_path / "outbox.jsonl"))


async def test_reload_uses_the_new_certificate_for_new_connections(
    tls_settings, start_app, client_tls, ca, tmp_path
):
    settings = tls_settings(smtp={"tls_listen": "127.0.0.1:0"})
    app = await start_app(settings)
    async with tls_session(app.smtp_port, client_tls) as old:
        assert peer_names(old) == {"one.sms.test"}
        await login(old, "printer", PASSWORD)

        cert, key = issue(ca, tmp_path, "two.sms.test")
        smtp = settings.smtp.model_copy(update={"tls_cert": cert, "tls_key": key})
        app.reload(settings.model_copy(update={"smtp": smtp}))

        for port, implicit in ((app.smtp_port, False), (app.tls_port, True)):
            new = smtp_client(port, client_tls, use_tls=implicit)
            await new.connect()
            try:
                await new.ehlo()
                if not implicit:
                    await new.starttls()
                assert peer_names(new) == {"two.sms.test"}
            finally:
                await new.quit()

        # a certificate that does not load is refused; the current one stays
        _cert3, key3 = issue(ca, tmp_path, "three.sms.test")
        broken = settings.smtp.model_copy(update={"tls_cert": cert, "tls_key": key3})
        with pytest.raises(ConfigError, match=r"smtp\.tls_key: .*not a matching"):
            app.reload(settings.model_copy(update={"smtp": broken}))
        again = smtp_client(app.smtp_port, client_tls)
        await again.connect()
        await again.ehlo()
        await again.starttls()
        assert peer_names(again) == {"two.sms.test"}
        await again.quit()

        code, text = await send(old, STRANGER, mail())  # the old session still works
        assert code == 250, text


@pytest.mark.parametrize(
    "garbage",
    [
        b"MAIL FROM:<x@example.com>\r\nRCPT TO:<sms@sms.example.com>\r\n",  # no TLS at all
        b"\x16\x03\x01\x00\x05\x01\xff\xff\xff\xff",  # a TLS record that is no ClientHello
    ],
)
async def test_garbage_after_starttls_closes_that_session_only(
    tls_settings, start_app, client_tls, garbage
):
    app = await start_app(tls_settings())
    other = smtp_client(app.smtp_port, client_tls)
    await other.connect()
    await other.ehlo()

    reader, writer = await asyncio.open_connection("127.0.0.1", app.smtp_port)
    try:
        assert (await reader.readline()).startswith(b"220 ")
        writer.write(b"EHLO garbage.test\r\n")
        while not (line := await reader.readline()).startswith(b"250 "):
            assert line.startswith(b"250-")
        writer.write(b"STARTTLS\r\n")
        assert (await reader.readline()).startswith(b"220 ")
        writer.write(garbage)
        await writer.drain()
        rest = await asyncio.wait_for(reader.read(), 10)  # EOF: the server hung up
        assert b"250" not in rest
    finally:
        writer.close()

    try:
        code, text = await send(other, ALLOWED, mail(ALLOWED))
        assert code == 250, text
    finally:
        await other.quit()


async def test_a_user_removed_by_reload_is_no_longer_logged_in(tls_settings, start_app, client_tls):
    settings = tls_settings()
    app = await start_app(settings)
    async with tls_session(app.smtp_port, client_tls) as client:
        await login(client, "printer", PASSWORD)
        smtp = settings.smtp.model_copy(update={"users": settings.smtp.users[1:]})
        app.reload(settings.model_copy(update={"smtp": smtp}))
        code, text = await send(client, STRANGER, mail())
        assert code == 550
        assert f"<{STRANGER}> is not allowed" in text


async def test_auth_in_the_middle_of_a_transaction_is_refused(tls_settings, start_app, client_tls):
    """RFC 4954 §4: AUTH after MAIL would change who sent a message already checked."""
    app = await start_app(tls_settings())
    async with tls_session(app.smtp_port, client_tls) as client:
        await client.mail(ALLOWED)
        response = await client.execute_command(b"AUTH", b"PLAIN", b"AHByaW50ZXIAeA==")
        assert (response.code, response.message.split(" ")[0]) == (503, "5.5.1")
        await client.rset()
        await login(client, "printer", PASSWORD)  # after RSET it is fine


async def test_a_changed_password_logs_out_sessions_on_reload(tls_settings, start_app, client_tls):
    settings = tls_settings()
    app = await start_app(settings)
    async with tls_session(app.smtp_port, client_tls) as client:
        await login(client, "printer", PASSWORD)
        printer = settings.smtp.users[0].model_copy(
            update={"password_hash": SecretStr(hash_password("new-Pa55word", n=FAST))}
        )
        smtp = settings.smtp.model_copy(update={"users": [printer, *settings.smtp.users[1:]]})
        app.reload(settings.model_copy(update={"smtp": smtp}))
        code, text = await send(client, STRANGER, mail())
        assert code == 550
        assert f"<{STRANGER}> is not allowed" in text
