"""The pure DATA checks (look-alikes, NUL, line ends), the log throttle and the MIME limits."""

from __future__ import annotations

import time

import pytest

from mail2sms import mail_parse
from mail2sms.errors import BadMessageDataError, UnparseableMailError
from mail2sms.mail_parse import parse_mail
from mail2sms.smtp_guard import (
    LogThrottle,
    check_no_nul,
    is_end_of_data_lookalike,
    normalize_line_ends,
)

HEAD = b"From: alice@example.com\r\nSubject: +61412345678\r\nMIME-Version: 1.0\r\n"


@pytest.mark.parametrize(
    "line",
    [
        b"text\n.\n more\r\n",
        b"text\n.\r\n",
        b"text\r.\rmore\r\n",
        b".\rMAIL FROM:<x@example.com>\r\n",  # after a CRLF: "\r\n.\r"
        b"text\r.\r\n",
        b".\nMAIL FROM:<x@example.com>\r\n",  # "\r\n.\n"
        b"text\n.\rmore\r\n",
        b"text\r.\nmore\r\n",
        b".\r\r\n",
    ],
)
def test_end_of_data_lookalikes_are_found(line: bytes) -> None:
    assert is_end_of_data_lookalike(line)


@pytest.mark.parametrize(
    "line",
    [
        b".\r\n",  # the real end of data
        b"..\r\n",  # a stuffed lone dot: content "."
        b"..\n.x\r\n",
        b"text\n.5 volts\r\n",
        b"a.\rb\r\n",
        b"line1\nline2\r\n",
        b"\r\n",
    ],
)
def test_ordinary_lines_are_not_lookalikes(line: bytes) -> None:
    assert not is_end_of_data_lookalike(line)


def test_nul_bytes_are_refused_with_a_reason() -> None:
    check_no_nul(b"plain text")
    with pytest.raises(BadMessageDataError) as caught:
        check_no_nul(b"a\x00b")
    assert caught.value.reply.startswith("554 5.6.0 The message contains NUL bytes")


def test_bare_line_ends_become_crlf() -> None:
    assert normalize_line_ends(b"a\nb\rc\r\nd\n\re") == b"a\r\nb\r\nc\r\nd\r\n\r\ne"


def test_the_log_throttle_lets_one_through_per_interval_and_counts_the_rest() -> None:
    now = [100.0]
    throttle = LogThrottle(10.0, clock=lambda: now[0])
    assert throttle.allow() == 0
    assert throttle.allow() is None
    assert throttle.allow() is None
    now[0] += 10.0
    assert throttle.allow() == 2
    assert throttle.allow() is None


def many_parts(count: int, boundary: bytes = b"b") -> bytes:
    parts = b"".join(
        b"--" + boundary + b"\r\nContent-Type: text/plain\r\n\r\npart %d\r\n" % i
        for i in range(count)
    )
    return (
        HEAD
        + b'Content-Type: multipart/mixed; boundary="'
        + boundary
        + b'"\r\n\r\n'
        + parts
        + b"--"
        + boundary
        + b"--\r\n"
    )


def test_parts_up_to_the_limit_are_read() -> None:
    # the container counts as a part too
    assert parse_mail(many_parts(mail_parse._MAX_PARTS - 1)).body == "part 0"


def test_20000_parts_are_refused_before_the_parse() -> None:
    started = time.perf_counter()
    with pytest.raises(UnparseableMailError) as caught:
        parse_mail(many_parts(20_000))
    assert "more than 200 MIME parts" in caught.value.reply
    assert time.perf_counter() - started < 0.5  # the full parse takes about a second


def test_a_part_count_the_pre_scan_misses_is_still_refused_after_the_parse() -> None:
    # An RFC 2231 encoded boundary is invisible to the pre-scan's boundary regex.
    raw = many_parts(300).replace(b'boundary="b"', b'boundary*0="b"', 1)
    with pytest.raises(UnparseableMailError) as caught:
        parse_mail(raw)
    assert "more than 200 MIME parts" in caught.value.reply


def test_many_containers_are_refused_before_the_parse() -> None:
    nested = b"".join(
        b'Content-Type: multipart/mixed; boundary="x%d"\r\n\r\n--x%d\r\n' % (i, i)
        for i in range(5000)
    )
    with pytest.raises(UnparseableMailError) as caught:
        parse_mail(HEAD + nested + b"Content-Type: text/plain\r\n\r\ndeep\r\n")
    assert "more than 200 MIME parts" in caught.value.reply


def test_many_declared_boundaries_are_refused_before_the_parse() -> None:
    declared = b"".join(b"boundary=b%d\r\n" % i for i in range(mail_parse._MAX_PARTS + 1))
    with pytest.raises(UnparseableMailError) as caught:
        parse_mail(HEAD + b"\r\n" + declared + b"--b1\r\n" * (mail_parse._MAX_PARTS + 1))
    assert "more than 200 MIME parts" in caught.value.reply


def test_dashes_in_plain_text_are_not_parts() -> None:
    text = b"\r\n".join([b"-- ", b"------", b"--b", b"--b--"] * 300)
    raw = HEAD + b"Content-Type: text/plain\r\n\r\nAlarm\r\n" + text
    assert parse_mail(raw).body.startswith("Alarm")
