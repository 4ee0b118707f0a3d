"""Logging: our events and other libraries' on one stream, redacted, and never in the way."""

from __future__ import annotations

import io
import json
import logging

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
