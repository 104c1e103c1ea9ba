"""The response headers of every streamed answer (SSE events, audio as it is made, a relayed stream)."""

from __future__ import annotations

from collections.abc import Mapping


def stream_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """`headers` plus what keeps caches and buffering proxies (nginx) from holding the stream back; a
    Cache-Control already there (an upstream's own) is kept."""
    streamed = dict(headers)
    if not any(name.lower() == "cache-control" for name in streamed):
        streamed["cache-control"] = "no-cache"
    streamed["x-accel-buffering"] = "no"
    return streamed
