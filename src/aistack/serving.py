"""The HTTP server around the app: uvicorn with a time limit on request headers, and a stop that
drains (api.middleware.DrainMiddleware) before uvicorn's own shutdown cancels what is left."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from .api.middleware import ShutdownDrain
from .settings import Settings

# uvicorn's own graceful shutdown waits this much longer than our grace period, so that what the
# drain ends (envelopes, SSE error events) is sent before uvicorn cancels the tasks.
UVICORN_EXTRA_GRACE_S = 5.0


def header_timed_protocol(header_timeout_s: float, body_timeout_s: float | None = None) -> type[HttpToolsProtocol]:
    """uvicorn's httptools protocol, closing a connection whose request headers are not complete
    within `header_timeout_s` of the connection opening or of the request's first byte (uvicorn
    itself has no such limit: a client sending a byte a second held its connection for ever).

    With `body_timeout_s`, also one whose request body is still arriving that long after its headers
    once the request is answered: a body the app never reads (a 401, a route without a body) is not
    held to the body limit by the app (BodyLimitMiddleware), and uvicorn reads and drops it for as
    long as it comes, each byte putting its keep-alive limit off."""

    class HeaderTimedProtocol(HttpToolsProtocol):
        _header_timer: asyncio.TimerHandle | None = None
        _body_timer: asyncio.TimerHandle | None = None
        _body_overdue = False

        def _arm_header_timer(self) -> None:
            self._disarm_header_timer()
            self._header_timer = self.loop.call_later(header_timeout_s, self._headers_too_slow)

        def _disarm_header_timer(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _disarm_body_timer(self) -> None:
            if self._body_timer is not None:
                self._body_timer.cancel()
                self._body_timer = None

        def _headers_too_slow(self) -> None:
            self._header_timer = None
            if not self.transport.is_closing():
                self.transport.close()

        def _body_too_slow(self) -> None:
            self._body_timer = None
            self._body_overdue = True
            if self.cycle is None or self.cycle.response_complete:
                self._close_body_overdue()
            # Otherwise the app is still answering: if it reads the body it refuses it (408) itself, and
            # the connection closes once the answer is sent (on_response_complete).

        def _close_body_overdue(self) -> None:
            if not self.transport.is_closing():
                self.transport.close()

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm_header_timer()

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._arm_header_timer()

        def on_headers_complete(self) -> None:
            self._disarm_header_timer()
            self._body_overdue = False
            if body_timeout_s is not None:
                self._disarm_body_timer()
                self._body_timer = self.loop.call_later(body_timeout_s, self._body_too_slow)
            super().on_headers_complete()

        def on_message_complete(self) -> None:
            self._disarm_body_timer()
            self._body_overdue = False
            super().on_message_complete()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if self._body_overdue:
                self._close_body_overdue()

        def handle_websocket_upgrade(self) -> None:
            # The connection is the WebSocket protocol's from here on.
            self._disarm_header_timer()
            self._disarm_body_timer()
            super().handle_websocket_upgrade()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm_header_timer()
            self._disarm_body_timer()
            super().connection_lost(exc)

    return HeaderTimedProtocol


class GatewayServer(uvicorn.Server):
    """Starts the drain as the stop begins (SIGTERM, Ctrl-C or `should_exit`): listeners close at once,
    running requests get the grace period, and so do the WebSocket sessions, which end themselves
    (uvicorn's own shutdown would drop them at once, without a word to their clients)."""

    def __init__(self, config: uvicorn.Config, drain: ShutdownDrain | None) -> None:
        super().__init__(config)
        self.drain = drain

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        if self.drain is not None:
            for server in self.servers:
                server.close()
            for sock in sockets or []:
                sock.close()
            self.drain.begin()
            await self.drain.wind_down_long_lived()
        await super().shutdown(sockets)


def uvicorn_config(app: Any, settings: Settings) -> uvicorn.Config:
    return uvicorn.Config(
        app, host=settings.host, port=settings.port, access_log=False, log_level=settings.log_level,
        http=header_timed_protocol(settings.server.header_timeout_s, settings.server.body_timeout_s),
        timeout_graceful_shutdown=int(settings.server.shutdown_grace_s + UVICORN_EXTRA_GRACE_S),
        # A WebSocket frame a little over realtime.max_event_mb gets an error event; one far over it is
        # closed by the server (1009) before it is held in memory.
        ws_max_size=settings.realtime.max_event_bytes + 1024 * 1024,
    )


def is_loopback_address(host: str) -> bool:
    if host in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def network_refusal(settings: Settings, has_keys: bool) -> str | None:
    """Why serving must not start (HTTP or Wyoming beyond loopback, with nothing to keep strangers out), or None."""
    if settings.security.allow_unauthenticated_network:
        return None
    wyoming_host = settings.wyoming.tcp_host()
    if wyoming_host is not None and not settings.wyoming.allowed_clients and not is_loopback_address(wyoming_host):
        return (f"refusing to serve Wyoming on {wyoming_host} to any client: the Wyoming protocol carries no key, so "
                "anyone who can reach it could transcribe and speak. Set AISTACK_WYOMING__ALLOWED_CLIENTS to Home "
                "Assistant's address (e.g. '[\"192.168.1.10\"]'), or bind wyoming.uri to 127.0.0.1; to serve it to "
                "anyone anyway, set AISTACK_SECURITY__ALLOW_UNAUTHENTICATED_NETWORK=true (or pass "
                "--allow-unauthenticated-network)")
    if has_keys or is_loopback_address(settings.host):
        return None
    return (f"refusing to serve on {settings.host} without an API key: anyone who can reach it could use every "
            "engine and the admin routes. Set AISTACK_SECURITY__ADMIN_KEYS (or AISTACK_SECURITY__KEY_FILE, "
            "AISTACK_API_KEY), or bind 127.0.0.1; to serve without a key anyway, set "
            "AISTACK_SECURITY__ALLOW_UNAUTHENTICATED_NETWORK=true (or pass --allow-unauthenticated-network)")
