"""Every streamed answer tells caches and buffering proxies to let it through, keeping an upstream's own Cache-Control."""

from __future__ import annotations

from aistack.api.streaming import stream_headers


def test_stream_headers_add_no_cache_and_no_buffering() -> None:
    assert stream_headers({"x-aistack-model": "m"}) == {
        "x-aistack-model": "m", "cache-control": "no-cache", "x-accel-buffering": "no"
    }


def test_an_upstream_cache_control_is_kept() -> None:
    headers = stream_headers({"cache-control": "no-store", "content-type": "text/event-stream"})
    assert headers["cache-control"] == "no-store" and headers["x-accel-buffering"] == "no"
    assert stream_headers({"Cache-Control": "private"}) == {"Cache-Control": "private", "x-accel-buffering": "no"}
