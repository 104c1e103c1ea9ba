"""The one module for HTTP upstreams: what their error statuses mean, the envelope for a request
that got no answer (or half of one), and the clients they share (auth, pools, no proxy variables)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator

import httpx
import pytest

from aistack.engines.http_upstream import (
    PooledClient,
    ProbeClient,
    bearer_headers,
    describe,
    request_timeout,
    transport_error,
    upstream_status_kind,
)
from aistack.engines.ollama import OllamaBackend
from aistack.engines.openai_compatible import OpenAICompatibleBackend
from aistack.errors import ErrorKind, kind_for_status
from aistack.settings import OllamaSettings


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (400, ErrorKind.MALFORMED),
        (422, ErrorKind.MALFORMED),
        (404, ErrorKind.NOT_FOUND),
        (413, ErrorKind.OVERFLOW),
        (429, ErrorKind.BUSY),
        (500, ErrorKind.UNKNOWN),
        (501, ErrorKind.UNKNOWN),
        (503, ErrorKind.NETWORK),
        (504, ErrorKind.TIMEOUT),
        # Refused credentials are the gateway's, not the client's: a failure of the gateway.
        (401, ErrorKind.UNKNOWN),
        (403, ErrorKind.UNKNOWN),
    ],
)
def test_an_upstream_status_means_the_kind_the_gateway_answers_with(status: int, kind: ErrorKind) -> None:
    assert upstream_status_kind(status) is kind


def test_the_gateway_own_401_is_unauthorized_while_an_upstream_401_is_the_gateway_failure() -> None:
    assert kind_for_status(401) is ErrorKind.UNAUTHORIZED
    assert kind_for_status(499) is ErrorKind.CANCELLED
    assert kind_for_status(418) is ErrorKind.MALFORMED and kind_for_status(502) is ErrorKind.UNKNOWN
    assert upstream_status_kind(401) is ErrorKind.UNKNOWN


def _words(error: httpx.HTTPError, *, dropped_kind: ErrorKind = ErrorKind.UNKNOWN):
    return transport_error(
        error, "up", unreachable=lambda failure: f"up is down ({describe(failure)})", timed_out="up timed out",
        dropped=lambda detail: f"up dropped it ({detail})", dropped_kind=dropped_kind,
    )


def test_a_pool_timeout_is_busy_with_a_retry_after_whatever_the_upstream() -> None:
    error = _words(httpx.PoolTimeout("no free connection"))
    assert error.kind is ErrorKind.BUSY and error.headers == {"Retry-After": "1"}
    assert error.message == "every connection to up is in use; try again shortly" and error.provider == "up"


@pytest.mark.parametrize("error", [httpx.ConnectError("refused"), httpx.ConnectTimeout("slow connect")])
def test_no_connection_is_network_in_the_upstream_words(error: httpx.HTTPError) -> None:
    envelope = _words(error)
    assert envelope.kind is ErrorKind.NETWORK and envelope.message == f"up is down ({error})"


@pytest.mark.parametrize("error", [httpx.ReadTimeout("read"), httpx.WriteTimeout("write")])
def test_a_timeout_after_connecting_is_timeout(error: httpx.HTTPError) -> None:
    envelope = _words(error)
    assert envelope.kind is ErrorKind.TIMEOUT and envelope.message == "up timed out"


def test_a_broken_connection_is_the_kind_the_caller_gives_with_the_error_text() -> None:
    assert _words(httpx.RemoteProtocolError("peer closed")).kind is ErrorKind.UNKNOWN
    dropped = _words(httpx.ReadError(""), dropped_kind=ErrorKind.NETWORK)
    assert dropped.kind is ErrorKind.NETWORK and dropped.message == "up dropped it (ReadError)"


@pytest.fixture
def refusing_address() -> Iterator[str]:
    """A port bound and not listening: connecting to it is refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"


def test_a_real_refused_connection_is_network(refusing_address: str) -> None:
    async def send() -> httpx.HTTPError:
        pooled = PooledClient(request_timeout(1.0, 1.0))
        try:
            await pooled.get().get(refusing_address)
        except httpx.HTTPError as error:
            return error
        finally:
            await pooled.aclose()
        raise AssertionError("the connection was not refused")

    assert _words(asyncio.run(send())).kind is ErrorKind.NETWORK


def test_bearer_headers_only_with_a_key() -> None:
    assert bearer_headers("sk-1") == {"Authorization": "Bearer sk-1"}
    assert bearer_headers(None) == {} and bearer_headers("") == {}


def test_a_request_timeout_waits_for_the_pool_as_for_a_connection_unless_told() -> None:
    timeout = request_timeout(2.0, 30.0)
    assert (timeout.connect, timeout.read, timeout.write, timeout.pool) == (2.0, 30.0, 30.0, 2.0)
    assert request_timeout(2.0, 30.0, pool_s=30.0).pool == 30.0


def test_the_probe_client_is_built_once_with_its_headers_and_no_proxy_variables(monkeypatch) -> None:
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")
    probe = ProbeClient(0.5, {"Authorization": "Bearer k"})
    client = probe.get()
    assert probe.get() is client
    assert client.headers["authorization"] == "Bearer k" and client.trust_env is False
    assert client.timeout.read == 0.5
    client.close()


def test_the_pooled_client_is_one_per_event_loop_and_built_again_once_closed() -> None:
    pooled = PooledClient(request_timeout(1.0, 5.0), {"Authorization": "Bearer k"}, limits=httpx.Limits(max_connections=3))

    async def twice() -> tuple[httpx.AsyncClient, httpx.AsyncClient]:
        return pooled.get(), pooled.get()

    first, again = asyncio.run(twice())
    assert first is again and first.trust_env is False and first.headers["authorization"] == "Bearer k"
    (other_loop, _) = asyncio.run(twice())
    assert other_loop is not first

    async def after_close() -> bool:
        client = pooled.get()
        await pooled.aclose()
        return pooled.get() is not client

    assert asyncio.run(after_close())


def test_ollama_knows_an_untagged_name_as_latest_and_others_add_no_ids() -> None:
    ollama = OllamaBackend(OllamaSettings(), probe_timeout_s=1.0)
    assert ollama.canonical_ids("llama3.2") == ("llama3.2:latest",)
    assert ollama.canonical_ids("ollama/llama3.2") == ("ollama/llama3.2:latest",)
    assert ollama.canonical_ids("llama3.2:1b") == () and ollama.canonical_ids("ns/llama3.2:1b") == ()
    generic = OpenAICompatibleBackend.fixed("vllm", "http://127.0.0.1:1/v1", None, 1.0)
    assert generic.canonical_ids("llama3.2") == ()
