"""Quiet, useful logs: one format, our loggers at the chosen level, chatty libraries held back; and
no log line a request can forge (control characters in a message are escaped, whatever put them there:
a path, a header, a model id from a body, an upstream's error text)."""

from __future__ import annotations

import logging
import re

# Control characters (and Unicode line breaks) in anything logged: escaped, so a request cannot forge a log line.
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def printable(text: str) -> str:
    return _UNPRINTABLE.sub(lambda m: f"\\x{ord(m.group()):02x}" if ord(m.group()) < 0x100 else f"\\u{ord(m.group()):04x}", text)


class EscapingFormatter(logging.Formatter):
    """Each record's line with its control characters escaped; a traceback, appended after it, keeps its lines."""

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 - logging's own name
        return printable(super().formatMessage(record))


def configure_logging(level: str = "info") -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(EscapingFormatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s", datefmt="%H:%M:%S"))
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
    for noisy in ("faster_whisper", "httpx", "httpcore", "uvicorn.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
