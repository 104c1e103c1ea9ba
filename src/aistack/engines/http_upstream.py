"""Reaching an upstream server over HTTP (Ollama, OpenAI-compatible servers, Qwen3-TTS): how its
clients are built, what its error statuses mean for the gateway's client, and the envelope for a
request that got no answer, or only part of one. What an upstream said in an error body is read
by `upstream_errors`.

Every client ignores the proxy variables of the environment (`trust_env=False`): upstreams are
named by address in the settings, and an `HTTP_PROXY` meant for the internet must not reroute
the gateway's calls to a server next to it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping

import httpx

from ..errors import AistackError, ErrorKind, kind_for_status

# A relay's pool: many concurrent generations on one server, kept alive between them.
RELAY_POOL = httpx.Limits(max_connections=256, max_keepalive_connections=64, keepalive_expiry=60)


def bearer_headers(api_key: str | None) -> dict[str, str]:
    """The `Authorization` an OpenAI-style server with an API key expects; none without a key."""
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


def request_timeout(connect_s: float, read_s: float, pool_s: float | None = None) -> httpx.Timeout:
    """Connecting within `connect_s`; sending and answering may each pause up to `read_s`. A request
    waits for a pooled connection `pool_s` (by default as long as for a new one)."""
    return httpx.Timeout(connect=connect_s, read=read_s, write=read_s, pool=connect_s if pool_s is None else pool_s)


def one_off_client(timeout: httpx.Timeout) -> httpx.AsyncClient:
    """A client for a single request, closed with it: nothing stays tied to the calling event loop."""
    return httpx.AsyncClient(timeout=timeout, trust_env=False)


class ProbeClient:
    """The one blocking client an upstream's probes share, built on first use: building one (its TLS
    context) costs more than the probe itself."""

    def __init__(self, timeout: float | httpx.Timeout, headers: Mapping[str, str] | None = None) -> None:
        self._timeout = timeout
        self._headers = dict(headers or {})
        self._client: httpx.Client | None = None

    def get(self) -> httpx.Client:
        if self._client is None:
            self._client = httpx.Client(timeout=self._timeout, headers=self._headers, trust_env=False)
        return self._client


class PooledClient:
    """An upstream's pooled keep-alive client for requests: one per event loop, since a client's
    connections belong to the loop that opened them; built again once closed."""

    def __init__(self, timeout: httpx.Timeout, headers: Mapping[str, str] | None = None,
                 limits: httpx.Limits | None = None) -> None:
        self._timeout = timeout
        self._headers = dict(headers or {})
        self._limits = limits
        self._client: httpx.AsyncClient | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def get(self) -> httpx.AsyncClient:
        loop = asyncio.get_running_loop()
        if self._client is None or self._client.is_closed or self._loop is not loop:
            if self._limits is None:
                self._client = httpx.AsyncClient(timeout=self._timeout, headers=self._headers, trust_env=False)
            else:
                self._client = httpx.AsyncClient(timeout=self._timeout, headers=self._headers, limits=self._limits,
                                                 trust_env=False)
            self._loop = loop
        return self._client

    async def aclose(self) -> None:
        client, self._client, self._loop = self._client, None, None
        if client is not None:
            await client.aclose()


def upstream_status_kind(status: int) -> ErrorKind:
    """What an upstream's error status means for the gateway's client: what the same status means
    from the gateway, except that refused credentials (401, 403) are the gateway's own, for the upstream,
    so they are the gateway's failure, not the client's."""
    if status in (401, 403):
        return ErrorKind.UNKNOWN
    return kind_for_status(status)


def transport_error(
    error: httpx.HTTPError,
    provider: str,
    *,
    unreachable: Callable[[httpx.HTTPError], str],
    timed_out: str,
    dropped: Callable[[str], str],
    dropped_kind: ErrorKind = ErrorKind.UNKNOWN,
) -> AistackError:
    """The envelope for a request to `provider` that failed below HTTP, in the upstream's words:
    `unreachable` (from the connect failure) when nothing took the connection, `timed_out` when it
    stopped answering, `dropped` (from the error's text) when the connection broke, a failure of kind
    `dropped_kind`. Waiting in vain for a pooled connection is busy, whichever upstream it is."""
    if isinstance(error, httpx.PoolTimeout):
        return AistackError(ErrorKind.BUSY, f"every connection to {provider} is in use; try again shortly",
                            provider=provider, headers={"Retry-After": "1"})
    if isinstance(error, (httpx.ConnectError, httpx.ConnectTimeout)):
        return AistackError(ErrorKind.NETWORK, unreachable(error), provider=provider)
    if isinstance(error, httpx.TimeoutException):
        return AistackError(ErrorKind.TIMEOUT, timed_out, provider=provider)
    return AistackError(dropped_kind, dropped(describe(error)), provider=provider)


def describe(error: BaseException) -> str:
    """An exception's own words, or its type where it has none (httpx's often have none)."""
    return str(error).strip() or type(error).__name__
