"""GET and HEAD on /health and /ready: what load balancers and uptime checks call."""

from __future__ import annotations

import pytest

from conftest import Gateway

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("path", ["/health", "/ready"])
def test_head_answers_like_get_without_a_body(gateway: Gateway, path: str) -> None:
    with gateway.client() as client:
        got = client.get(path)
        head = client.head(path)
    assert got.status_code == 200 and head.status_code == 200
    assert head.content == b""
    assert head.headers["content-type"] == got.headers["content-type"] == "application/json"
    assert head.headers["x-request-id"]
