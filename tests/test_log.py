"""Logging: our events and other libraries' on one stream, redacted, and never in the way."""

from __future__ import annotations

import io
import json
import logging
import re
import time
from datetime import datetime

import pytest
import structlog

from mail2sms import log


class _BrokenStream(io.StringIO):
    def write(self, text: str) -> int:
        del text
        raise BrokenPipeError(32, "Broken pipe")


@pytest.fixture(autouse=True)
def _restore_logging():
    """Put back structlog's and the root logger's set-up: other tests expect their own."""
    config = structlog.get_config()
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    structlog.configure(**config)
    root.handlers[:] = handlers
    root.setLevel(level)


def test_a_line_that_cannot_be_written_does_not_stop_the_caller():
    log.configure(json_lines=True, stream=_BrokenStream())
    log.get_logger("test").info("sms_sent", queue_id="Q1")  # must not raise
    log.get_logger("test").error("queue_error", error="x")


def test_our_lines_and_other_libraries_lines_share_the_stream_redacted():
    out = io.StringIO()
    log.configure(json_lines=True, stream=out)
    log.get_logger("test").info("sms_sent", recipients=["+61412345678"], token="s3cret")
    logging.getLogger("httpx").warning("upstream said %s", "no")
    first, second = (json.loads(line) for line in out.getvalue().splitlines())
    assert first["event"] == "sms_sent"
    assert first["recipients"] == ["+614****5678"]
    assert first["token"] == "[redacted]"
    assert second["event"] == "upstream said no"
    assert second["level"] == "warning"


def test_a_new_level_applies_to_loggers_made_before_it():
    out = io.StringIO()
    logger = log.get_logger("test")
    log.configure(json_lines=True, stream=out, level="INFO")
    logger.info("first")
    log.configure(json_lines=True, stream=out, level="WARNING")
    logger.info("hidden")
    logger.warning("second")
    assert [json.loads(line)["event"] for line in out.getvalue().splitlines()] == [
        "first",
        "second",
    ]


class _CountingStream(io.StringIO):
    """Remembers what had been flushed (a pipe to journald shows only that)."""

    def __init__(self) -> None:
        super().__init__()
        self.flushes = 0
        self.seen = ""

    def flush(self) -> None:
        self.flushes += 1
        self.seen = self.getvalue()


def test_lines_logged_together_are_flushed_once_at_the_end():
    out = _CountingStream()
    log.configure(json_lines=True, stream=out)
    logger = log.get_logger("test")
    logger.info("alone")
    assert out.flushes == 1
    with log.together():
        logger.info("first")
        with log.together():  # nested: the outer one flushes
            logger.info("second")
        logger.info("third")
        assert out.flushes == 1
        assert "first" not in out.seen
    assert out.flushes == 2
    assert [json.loads(line)["event"] for line in out.seen.splitlines()] == [
        "alone", "first", "second", "third"
    ]  # fmt: skip
    logger.info("after")  # each line flushed again
    assert out.flushes == 3


def test_timestamps_are_utc_to_the_microsecond():
    out = io.StringIO()
    log.configure(json_lines=True, stream=out)
    log.get_logger("test").info("when")
    stamp = json.loads(out.getvalue())["timestamp"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", stamp)
    assert abs(datetime.fromisoformat(stamp).timestamp() - time.time()) < 60
