"""Bounces: the RFC 3464 message build_dsn makes, and RelayClient over a real socket."""

from __future__ import annotations

import email
import email.policy
import re
import shutil
import ssl
import subprocess
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from email.message import EmailMessage
from email.utils import parsedate_to_datetime
from pathlib import Path

import pytest
from fakes.relay import RecordingRelay

from mail2sms.bounce import HEADERS_LIMIT, TEXT_LIMIT, RelayClient, build_dsn
from mail2sms.config import BounceConfig
from mail2sms.errors import RelayDeferredError, RelayRejectedError
from mail2sms.models import BounceJob, FailedRecipient

pytestmark = pytest.mark.anyio

RECEIVED = datetime(2024, 6, 4, 9, 15, 2, tzinfo=UTC).timestamp()
NOW = RECEIVED + 2 * 86400 + 600
MTA = "sms.example.com"
SENDER = "MAILER-DAEMON@sms.example.com"
PASSWORD = "s3cret-Relay-Pa55"

BAD_NUMBER = FailedRecipient(
    number="+61412345678",
    status="5.1.1",
    reason="+61412345678 is a invalid phone number",
    attempts=1,
    last_attempt_at=RECEIVED + 5,
)
EXPIRED = FailedRecipient(
    number="+61498765432",
    status="4.4.7",
    reason="connection refused",
    attempts=57,
    last_attempt_at=RECEIVED + 2 * 86400 + 300,
)
REFUSED = FailedRecipient(
    number="+61411111111",
    status="5.0.0",
    reason="Originator MyBrand is not authorized to send this message",
    attempts=1,
    last_attempt_at=RECEIVED + 7,
)
ORIGINAL_HEADERS = (
    "Received: from pc.example.com by mx.example.com\n"
    " (Postfix) with ESMTP id 4Vt\n"
    "From: Alice <alice@example.com>\n"
    "To: sms@sms.example.com\n"
    "Subject: Server room\n"
    "Message-ID: <test-1@example.com>"
)


def make_job(**changes) -> BounceJob:
    job = BounceJob(
        queue_id="01HZX7Q3M5ABCDEF",
        envelope_from="alice@example.com",
        from_header="alice@example.com",
        subject="Server room",
        message_id="test-1@example.com",
        received_at=RECEIVED,
        text="Server room temperature is 31 C\nPlease check the air conditioning.",
        headers=ORIGINAL_HEADERS,
        failed=(BAD_NUMBER, EXPIRED),
        delivered=("+61400000000",),
        attempts=1,
    )
    return replace(job, **changes)


def dsn(job: BounceJob | None = None, **kwargs) -> bytes:
    options = {
        "reporting_mta": MTA,
        "from_address": SENDER,
        "recipient_domain": "sms.example.com",
        "now": NOW,
    }
    options.update(kwargs)
    return build_dsn(job or make_job(), **options)


def parse(raw: bytes) -> EmailMessage:
    message = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    return message


def parts(raw: bytes) -> tuple[EmailMessage, EmailMessage, EmailMessage]:
    text, status, headers = parse(raw).get_payload()
    return text, status, headers


def plain_text(raw: bytes) -> str:
    return parts(raw)[0].get_content().replace("\r\n", "\n")


# --- the report's structure -----------------------------------------------------------------


def test_is_a_multipart_report_with_three_parts_in_order():
    message = parse(dsn())
    assert message.get_content_type() == "multipart/report"
    assert message.get_param("report-type") == "delivery-status"
    assert [p.get_content_type() for p in message.get_payload()] == [
        "text/plain",
        "message/delivery-status",
        "text/rfc822-headers",
    ]
    assert message.defects == []
    assert all(p.defects == [] for p in message.walk())


def test_uses_crlf_line_ends_and_short_lines_only():
    raw = dsn(make_job(text="x" * 3000, headers="X-Long: " + "y" * 3000))
    assert raw.endswith(b"\r\n")
    assert b"\n" not in raw.replace(b"\r\n", b"")
    assert b"\r" not in raw.replace(b"\r\n", b"")
    assert max(len(line) for line in raw.split(b"\r\n")) <= 998
    raw.decode("ascii")  # 7-bit clean: the relay needs no 8BITMIME


def test_delivery_status_fields():
    _, status, _ = parts(dsn())
    per_message, *per_recipient = status.get_payload()
    assert per_message["Reporting-MTA"] == f"dns; {MTA}"
    assert per_message["X-Mail2SMS-Queue-ID"] == "01HZX7Q3M5ABCDEF"
    assert parsedate_to_datetime(per_message["Arrival-Date"]).timestamp() == RECEIVED
    assert per_message["Arrival-Date"] == "Tue, 04 Jun 2024 09:15:02 +0000"
    assert len(per_recipient) == 2
    bad, expired = per_recipient
    assert bad["Final-Recipient"] == "rfc822; +61412345678@sms.example.com"
    assert bad["Action"] == "failed"
    assert bad["Status"] == "5.1.1"
    assert bad["Diagnostic-Code"] == "X-Mail2SMS; +61412345678 is a invalid phone number"
    assert parsedate_to_datetime(bad["Last-Attempt-Date"]).timestamp() == RECEIVED + 5
    assert expired["Final-Recipient"] == "rfc822; +61498765432@sms.example.com"
    assert expired["Action"] == "failed"
    assert expired["Status"] == "4.4.7"
    assert expired["Diagnostic-Code"] == "X-Mail2SMS; connection refused"


def test_diagnostic_code_is_one_capped_ascii_line():
    reason = "Provider said:\r\n  Nümber\tblocked " + "z" * 2000
    raw = dsn(make_job(failed=(replace(BAD_NUMBER, reason=reason),)))
    _, status, _ = parts(raw)
    diagnostic = status.get_payload()[1]["Diagnostic-Code"]
    assert diagnostic.startswith("X-Mail2SMS; Provider said: Number blocked zzz")
    assert len(diagnostic) < 400
    assert re.search(rb"\r\nDiagnostic-Code: X-Mail2SMS; Provider said: [^\r\n]+\r\n", raw)


def test_a_malformed_status_is_reported_as_5_0_0():
    raw = dsn(make_job(failed=(replace(BAD_NUMBER, status="5.1.1\r\nAction: delivered"),)))
    _, status, _ = parts(raw)
    block = status.get_payload()[1]
    assert block["Status"] == "5.0.0"
    assert block.get_all("Action") == ["failed"]


def test_original_headers_part():
    _, _, headers = parts(dsn())
    assert headers.get_content() == ORIGINAL_HEADERS.replace("\n", "\r\n")


def test_original_headers_are_crlf_normalised():
    raw = dsn(make_job(headers="A: 1\nB: 2\r\nC: 3\rD: 4\r\n\r\n"))
    _, _, headers = parts(raw)
    assert headers.get_content() == "A: 1\r\nB: 2\r\nC: 3\r\nD: 4"


def test_original_headers_are_capped_at_16_kib_on_a_line_boundary():
    lines = [f"X-Filler-{i:04d}: " + "a" * 80 for i in range(500)]  # about 48 KiB
    raw = dsn(make_job(headers="\n".join(lines)))
    _, _, headers = parts(raw)
    content = headers.get_content()
    kept = content.split("\r\n")
    assert len(content.encode()) <= HEADERS_LIMIT
    assert len(content.encode()) > HEADERS_LIMIT - 100
    assert kept == lines[: len(kept)]  # whole lines, in order, none cut


def test_non_ascii_original_headers_round_trip():
    original = "Subject: Temp\u00e9rature \u00e9lev\u00e9e\nFrom: b\u00e9atrice@example.fr"
    _, _, headers = parts(dsn(make_job(headers=original)))
    assert headers.get_content() == original.replace("\n", "\r\n")


# --- the bounce's own headers -----------------------------------------------------------------


def test_bounce_headers():
    message = parse(dsn())
    assert message["From"] == f"Mail Delivery System <{SENDER}>"
    assert message["From"].addresses[0].addr_spec == SENDER
    assert message["To"] == "alice@example.com"
    assert message["Subject"] == "Undelivered SMS: Server room"
    assert message["Date"].datetime == datetime.fromtimestamp(NOW, UTC)
    assert re.fullmatch(rf"<[^<>@\s]+@{re.escape(MTA)}>", message["Message-ID"])
    assert message["MIME-Version"] == "1.0"
    assert message["Auto-Submitted"] == "auto-replied"
    assert message["In-Reply-To"] == "<test-1@example.com>"
    assert message["References"] == "<test-1@example.com>"


def test_the_same_job_gives_the_same_bytes():
    assert dsn() == dsn()
    assert parse(dsn())["Message-ID"] != parse(dsn(now=NOW + 1))["Message-ID"]


@pytest.mark.parametrize(
    "message_id",
    [None, "", "not an id", "<a@b> <c@d>", "a@b\r\nBcc: victim@example.com", "=?utf-8?q?x?=@a.b"],
)
def test_no_in_reply_to_without_a_well_formed_message_id(message_id):
    message = parse(dsn(make_job(message_id=message_id)))
    assert message["In-Reply-To"] is None
    assert message["References"] is None
    assert message["Bcc"] is None


def test_message_id_in_angle_brackets_is_accepted():
    assert parse(dsn(make_job(message_id="<x.1@host.example>")))["In-Reply-To"] == (
        "<x.1@host.example>"
    )


def test_a_subject_less_mail_gets_its_own_wording():
    message = parse(dsn(make_job(subject="  ")))
    assert message["Subject"] == "Undelivered SMS (your email had no subject)"
    assert "Subject:  (no subject)" in plain_text(dsn(make_job(subject="")))


def test_a_long_subject_is_capped_and_folded():
    raw = dsn(make_job(subject="word " * 200))
    subject = parse(raw)["Subject"]
    assert subject.startswith("Undelivered SMS: word word")
    assert len(subject) <= len("Undelivered SMS: ") + 200
    head = raw.split(b"\r\n\r\n", 1)[0]
    assert max(len(line) for line in head.split(b"\r\n")) <= 78


def test_non_ascii_subject_and_text_round_trip():
    french = "Temp\u00e9rature \u00e9lev\u00e9e \u2013 31 \u00b0C \u2603"
    russian = "\u0421\u0435\u0440\u0432\u0435\u0440"
    subject = f"{french} {russian} " * 3
    text = "\u041f\u0440\u0438\u0432\u0435\u0442, \u043c\u0438\u0440! \U0001f525 caf\u00e9"
    raw = dsn(make_job(subject=subject, text=text))
    assert parse(raw)["Subject"] == "Undelivered SMS: " + subject.strip()
    body = plain_text(raw)
    assert f"Subject:  {subject.strip()}" in body
    assert f"> {text}" in body


@pytest.mark.parametrize(
    "subject",
    [
        "Hi\r\nBcc: victim@example.com",
        "Hi\nBcc: victim@example.com",
        "Hi\rBcc: victim@example.com",
        "Hi\x85Bcc: victim@example.com",
        "Hi\u2028Bcc: victim@example.com",
        "=?utf-8?q?Hi=0D=0ABcc:_victim@example.com?=",
        "=?utf-8?b?SGkNCkJjYzogdmljdGltQGV4YW1wbGUuY29t?=",
        "Hi =?utf-8?q?=0D=0A?=Bcc: victim@example.com",
        "\u00fcber =?utf-8?q?x=0ABcc:_victim@example.com?=",
    ],
)
def test_a_subject_cannot_add_a_header(subject):
    raw = dsn(make_job(subject=subject))
    head = raw.split(b"\r\n\r\n", 1)[0]
    assert not re.search(rb"(?im)^bcc:", head)
    message = parse(raw)
    assert message["Bcc"] is None
    assert "\n" not in message["Subject"]
    assert "\r" not in message["Subject"]
    assert message["Subject"].startswith("Undelivered SMS: ")
    names = [name.lower() for name in message]
    assert names == [
        "from",
        "to",
        "subject",
        "date",
        "message-id",
        "in-reply-to",
        "references",
        "auto-submitted",
        "mime-version",
        "content-type",
    ]
    # What a Python 3.11 mail client would do with the bounce: parse it and write it out.
    reserialised = message.as_bytes(policy=email.policy.SMTP)
    assert not re.search(rb"(?im)^bcc:", reserialised.split(b"\r\n\r\n", 1)[0])


def test_an_encoded_word_in_the_subject_is_kept_literally():
    trick = "=?utf-8?q?Hi=0D=0ABcc:_victim@example.com?="
    assert parse(dsn(make_job(subject=trick)))["Subject"] == f"Undelivered SMS: {trick}"


def test_invisible_and_control_characters_are_removed_from_the_subject():
    subject = "Alarm\u202e\u200b\x00\x1b[31m\tpanel  1"
    assert parse(dsn(make_job(subject=subject)))["Subject"] == (
        "Undelivered SMS: Alarm [31m panel 1"
    )


@pytest.mark.parametrize(
    ("changes", "kwargs"),
    [
        ({"envelope_from": ""}, {}),
        ({"envelope_from": "alice@example.com\r\nBcc: victim@example.com"}, {}),
        ({"envelope_from": "alice"}, {}),
        ({"envelope_from": "=?utf-8?b?DQpCY2M6IHZAeC55?=@example.com"}, {}),
        ({"failed": ()}, {}),
        ({}, {"from_address": "MAILER-DAEMON"}),
        ({}, {"reporting_mta": "sms example com"}),
        ({}, {"recipient_domain": "sms.example.com\r\nBcc: x"}),
    ],
)
def test_refuses_what_it_cannot_write_safely(changes, kwargs):
    with pytest.raises(ValueError, match=r"."):
        dsn(make_job(**changes), **kwargs)


# --- the words a person reads -----------------------------------------------------------------


def test_plain_words_name_numbers_reasons_and_what_to_do():
    body = plain_text(dsn(make_job(failed=(BAD_NUMBER, EXPIRED, REFUSED))))
    assert "could not be sent as a text message (SMS) to these 3 numbers" in body
    for failed in (BAD_NUMBER, EXPIRED, REFUSED):
        assert failed.number in body
        assert failed.reason in body
    assert "this number is not valid" in body
    assert "check the number" in body
    assert "could not deliver it for 2 days (57 attempts)" in body
    assert "delivery was abandoned" in body
    assert "send your email again later, or tell your IT administrator" in body
    assert f"the SMS provider refused the message: {REFUSED.reason}" in body
    assert "contact your administrator" in body


def test_plain_words_name_the_delivered_numbers_and_the_original():
    body = plain_text(dsn())
    assert "It WAS delivered to these numbers" in body
    assert "+61400000000" in body
    assert "Subject:  Server room" in body
    assert "Received: Tue 04 Jun 2024 09:15:02 UTC" in body
    assert "01HZX7Q3M5ABCDEF" in body
    assert "> Server room temperature is 31 C\n> Please check the air conditioning." in body


def test_no_delivered_section_when_nothing_was_delivered():
    body = plain_text(dsn(make_job(delivered=(), failed=(BAD_NUMBER,))))
    assert "to this number:" in body
    assert "WAS delivered" not in body


def test_dates_can_be_shown_in_the_local_zone():
    body = plain_text(dsn(tz=timezone(timedelta(hours=10), "AEST")))
    assert "Received: Tue 04 Jun 2024 19:15:02 AEST (UTC+1000)" in body


@pytest.mark.parametrize(
    ("waited", "words"),
    [(120, "2 minutes"), (5 * 3600, "5 hours"), (47 * 3600, "47 hours"), (3 * 86400, "3 days")],
)
def test_expiry_is_said_in_human_units(waited, words):
    expired = replace(EXPIRED, last_attempt_at=RECEIVED + waited)
    assert f"could not deliver it for {words} " in plain_text(dsn(make_job(failed=(expired,))))


def test_long_sms_text_is_cut_for_the_quote():
    text = "0123456789" * 150
    body = plain_text(dsn(make_job(text=text)))
    quoted = "".join(line[2:] for line in body.splitlines() if line.startswith("> "))
    assert quoted == text[:TEXT_LIMIT]
    assert "[500 more characters are not shown]" in body


def test_a_bounce_of_a_bounce_is_not_mistaken_for_more_mime():
    # The untrusted parts cannot end the MIME structure early, whatever they hold.
    boundary_like = "--=_mail2sms_" + "0" * 24 + "_0--"
    raw = dsn(make_job(text=boundary_like, headers=f"X-Trick: 1\n{boundary_like}"))
    assert len(parse(raw).get_payload()) == 3


# --- RelayClient over a real socket -----------------------------------------------------------


def client_for(relay: RecordingRelay, **config) -> RelayClient:
    return RelayClient(BounceConfig(relay=relay.address, timeout=5, **config), helo=MTA)


async def test_sends_from_the_null_sender_to_the_original_sender():
    raw = dsn()
    async with RecordingRelay() as relay:
        await client_for(relay).send(to="alice@example.com", message=raw)
        [transaction] = await relay.wait_for(1)
    assert transaction.mail_from == ""
    assert transaction.rcpt_tos == ("alice@example.com",)
    assert transaction.data == raw
    assert transaction.message.get_content_type() == "multipart/report"
    assert transaction.message["To"] == "alice@example.com"
    assert transaction.login is None
    assert not transaction.tls


async def test_a_line_starting_with_a_dot_survives():
    raw = dsn(make_job(headers="X-A: 1\n.\n.X-B: 2"))
    async with RecordingRelay() as relay:
        await client_for(relay).send(to="alice@example.com", message=raw)
        [transaction] = await relay.wait_for(1)
    assert transaction.data == raw


@pytest.mark.parametrize(
    ("code", "at", "error"),
    [
        (550, "RCPT", RelayRejectedError),
        (553, "MAIL", RelayRejectedError),
        (554, "DATA", RelayRejectedError),
        (451, "RCPT", RelayDeferredError),
        (452, "MAIL", RelayDeferredError),
        (451, "DATA", RelayDeferredError),
        (421, "RCPT", RelayDeferredError),
        (530, "MAIL", RelayDeferredError),  # authentication required: our configuration
    ],
)
async def test_replies_become_rejected_or_deferred(code, at, error):
    async with RecordingRelay() as relay:
        relay.refuse_next(code=code, text="5.9.9 Scripted refusal", at=at)
        with pytest.raises(error) as caught:
            await client_for(relay).send(to="alice@example.com", message=dsn())
        assert relay.transactions == []
    message = str(caught.value)
    assert f"127.0.0.1:{relay.port}" in message
    assert f"{code} 5.9.9 Scripted refusal" in message
    assert caught.value.__cause__ is None
    assert caught.value.__context__ is None


async def test_nothing_listening_is_deferred_then_the_relay_comes_back():
    raw = dsn()
    async with RecordingRelay() as relay:
        client = client_for(relay)
        port = relay.port
        await relay.stop()
        with pytest.raises(RelayDeferredError, match=rf"127\.0\.0\.1:{port}.*refused"):
            await client.send(to="alice@example.com", message=raw)
        await relay.start()
        assert relay.port == port
        await client.send(to="alice@example.com", message=raw)
        await relay.wait_for(1)


async def test_uses_the_configured_credentials():
    async with RecordingRelay(auth={"bounces": PASSWORD}) as relay:
        client = client_for(relay, user="bounces", password=PASSWORD, starttls="auto")
        await client.send(to="alice@example.com", message=dsn())
        [transaction] = await relay.wait_for(1)
    assert transaction.login == "bounces"
    assert [(x.user, x.password, x.ok) for x in relay.logins] == [("bounces", PASSWORD, True)]


async def test_a_wrong_password_is_deferred_and_never_shown():
    async with RecordingRelay(auth={"bounces": "the-right-one"}) as relay:
        client = client_for(relay, user="bounces", password=PASSWORD)
        with pytest.raises(RelayDeferredError) as caught:
            await client.send(to="alice@example.com", message=dsn())
        assert relay.transactions == []
        assert {x.password for x in relay.logins} == {PASSWORD}
    message = str(caught.value)
    assert "check bounce.user/bounce.password" in message
    assert "535" in message
    assert f"127.0.0.1:{relay.port}" in message
    assert PASSWORD not in message
    assert PASSWORD not in repr(caught.value)
    assert caught.value.__cause__ is None
    assert caught.value.__context__ is None


async def test_the_password_is_not_in_any_error():
    async with RecordingRelay(auth={"bounces": PASSWORD}) as relay:
        client = client_for(relay, user="bounces", password=PASSWORD)
        relay.refuse_next(code=550, text=f"5.1.1 echoing {PASSWORD}")
        with pytest.raises(RelayRejectedError) as rejected:
            await client.send(to="alice@example.com", message=dsn())
        await relay.stop()
        with pytest.raises(RelayDeferredError) as deferred:
            await client.send(to="alice@example.com", message=dsn())
    for caught in (rejected, deferred):
        assert PASSWORD not in str(caught.value)
    assert "[redacted]" in str(rejected.value)


async def test_a_relay_without_auth_is_deferred_when_credentials_are_set():
    async with RecordingRelay() as relay:
        client = client_for(relay, user="bounces", password=PASSWORD)
        with pytest.raises(RelayDeferredError, match="does not offer AUTH"):
            await client.send(to="alice@example.com", message=dsn())


async def test_starttls_always_needs_the_relay_to_offer_it():
    async with RecordingRelay() as relay:
        client = client_for(relay, starttls="always")
        with pytest.raises(RelayDeferredError, match="does not offer STARTTLS"):
            await client.send(to="alice@example.com", message=dsn())
        assert relay.transactions == []


async def test_send_without_a_relay_is_a_programming_error():
    client = RelayClient(BounceConfig(), helo=MTA)
    with pytest.raises(ValueError, match=r"bounce\.relay"):
        await client.send(to="alice@example.com", message=b"x")


async def test_a_recipient_that_is_not_a_plain_address_is_refused():
    async with RecordingRelay() as relay:
        with pytest.raises(ValueError, match="not a plain email address"):
            await client_for(relay).send(to="a@b.c>\r\nRCPT TO:<x@y.z", message=dsn())


# --- STARTTLS, with a throw-away certificate --------------------------------------------------


@pytest.fixture
def certificate(tmp_path: Path) -> Path:
    """A self-signed certificate for 127.0.0.1 (made with the openssl command)."""
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is needed to make a test certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "2",
            "-subj", "/CN=relay.test", "-addext", "subjectAltName=IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return tmp_path


@pytest.fixture
def server_tls(certificate: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(certificate / "cert.pem", certificate / "key.pem")
    return context


async def test_starttls_auto_encrypts_without_verifying(server_tls):
    async with RecordingRelay(tls_context=server_tls, auth={"bounces": PASSWORD}) as relay:
        client = client_for(relay, starttls="auto", user="bounces", password=PASSWORD)
        await client.send(to="alice@example.com", message=dsn())
        [transaction] = await relay.wait_for(1)
    assert transaction.tls
    assert transaction.login == "bounces"


async def test_starttls_always_verifies_the_certificate(server_tls):
    async with RecordingRelay(tls_context=server_tls) as relay:
        client = client_for(relay, starttls="always")
        with pytest.raises(RelayDeferredError, match="TLS failed") as caught:
            await client.send(to="alice@example.com", message=dsn())
        assert relay.transactions == []
    assert "CERTIFICATE_VERIFY_FAILED" in str(caught.value)


async def test_starttls_always_with_a_trusted_certificate(server_tls, certificate, monkeypatch):
    monkeypatch.setenv("SSL_CERT_FILE", str(certificate / "cert.pem"))
    async with RecordingRelay(tls_context=server_tls) as relay:
        await client_for(relay, starttls="always").send(to="alice@example.com", message=dsn())
        [transaction] = await relay.wait_for(1)
    assert transaction.tls


async def test_starttls_never_stays_plain(server_tls):
    async with RecordingRelay(tls_context=server_tls) as relay:
        await client_for(relay, starttls="never").send(to="alice@example.com", message=dsn())
        [transaction] = await relay.wait_for(1)
    assert not transaction.tls
