"""The gateway's log format: a request cannot forge a line, whichever logger writes what it sent."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator

import pytest

from aistack.observability.logging import configure_logging


@pytest.fixture
def log_stream(monkeypatch: pytest.MonkeyPatch) -> Iterator[io.StringIO]:
    stream = io.StringIO()
    monkeypatch.setattr("sys.stderr", stream)  # configure_logging's handler writes to stderr
    configure_logging("info")
    try:
        yield stream
    finally:
        logging.basicConfig(force=True, handlers=[logging.NullHandler()])


def test_control_characters_in_any_logged_field_are_escaped(log_stream: io.StringIO) -> None:
    # Before: only the access line escaped its fields; a model id from a body or an upstream's error
    # text, logged elsewhere, wrote its line breaks as they were.
    forged = "x\n12:00:00 INFO    aistack.access: 0 GET /admin 200\r\x1b[2K\u2028"
    logging.getLogger("aistack.services.llm").warning("llama-cpp failed mid-answer: %s", forged)
    logging.getLogger("aistack.realtime").info(f"session model={forged}")
    lines = log_stream.getvalue().splitlines()
    assert len(lines) == 2, lines
    assert lines[0].endswith("llama-cpp failed mid-answer: x\\x0a12:00:00 INFO    aistack.access: 0 GET /admin 200\\x0d\\x1b[2K\\u2028")
    assert "session model=x\\x0a12:00:00" in lines[1]


def test_a_traceback_keeps_its_lines(log_stream: io.StringIO) -> None:
    try:
        raise ValueError("bad")
    except ValueError:
        logging.getLogger("aistack.errors").exception("unhandled error on %s", "GET /v1/x\nforged")
    text = log_stream.getvalue()
    assert "unhandled error on GET /v1/x\\x0aforged\nTraceback (most recent call last):\n" in text
    assert text.rstrip().endswith("ValueError: bad")
