"""Cross-cutting ASGI middleware: request ids and the access log, body limits, API keys,
request-scoped clean-up that runs however the request ends, and the last-resort 500."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..errors import AistackError, ErrorKind
from ..observability.logging import printable
from ..observability.metrics import UNMATCHED_ROUTE, GatewayMetrics
from ..security import KEY_SUBPROTOCOL_PREFIX, AccessPolicy, AccessScope, key_from_authorization
from .errors import BodyTooSlow, PayloadTooLarge, envelope_response, too_large_message, unexpected_error_response

access_log = logging.getLogger("aistack.access")
error_log = logging.getLogger("aistack.errors")

MODEL_HEADER = "x-aistack-model"
SLOT_WAIT_HEADER = "x-aistack-slot-wait-ms"
# The language of the speech where the request did not give it: detected before routing, or by the engine.
LANGUAGE_HEADER = "x-aistack-language"
OUTCOME_KEY = "aistack.outcome"
CLEANUP_KEY = "aistack.cleanup"
SCOPE_KEY = "aistack.scope"


def mark_cancelled(scope: Scope) -> None:
    """Record that the client went away, so the access log shows 499 whatever was sent."""
    scope.setdefault("state", {})[OUTCOME_KEY] = "cancelled"


def at_request_end(scope: Scope, callback: Callable[[], Awaitable[None] | None]) -> None:
    """Run `callback` once the request is over, answered, failed or abandoned (see RequestCleanupMiddleware);
    an awaitable it returns is awaited there."""
    scope.setdefault("state", {}).setdefault(CLEANUP_KEY, []).append(callback)


class RequestCleanupMiddleware:
    """Runs the callbacks a request registered with `at_request_end` when the app is done with it.

    A streamed body may never start (the client left between the headers and the first chunk), so
    whatever a response generator owns is also registered here, where it is given back regardless.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await self.app(scope, receive, send)
        finally:
            for callback in reversed(scope.get("state", {}).pop(CLEANUP_KEY, [])):
                try:
                    pending = callback()
                    if pending is not None:
                        # Shielded: a request cancelled by its server still finishes letting go.
                        await asyncio.shield(asyncio.ensure_future(pending))
                except (Exception, asyncio.CancelledError):
                    access_log.exception("a request clean-up step failed")


class UnexpectedErrorMiddleware:
    """An exception no handler knows becomes the 500 envelope on a connection that stays usable.

    Starlette's own last-resort handler answers and then re-raises to the server, which drops the
    connection; here the error ends with the response. Once a streamed body has started, the
    exception still goes to the server: closing the connection is the only way left to say so.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def send_tracking(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, send_tracking)
        except Exception as error:
            if started:
                raise
            error_log.exception("unhandled error on %s %s", printable(str(scope.get("method"))), printable(str(scope.get("path"))))
            await unexpected_error_response(error)(scope, receive, send)


class AccessLogMiddleware:
    """Gives each request an id (X-Request-Id) and logs one line when it ends (text, or a JSON object)."""

    def __init__(self, app: ASGIApp, json_lines: bool = False) -> None:
        self.app = app
        self.json_lines = json_lines

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        request_id = headers.get(b"x-request-id", b"").decode("latin-1")[:64] or uuid.uuid4().hex[:16]
        started = time.perf_counter()
        status = 0
        model = "-"
        slot_wait = ""
        slot_wait_ms: str | None = None

        body_done = False

        async def receive_watching() -> Message:
            # A client that leaves before its body is in left: 499, whatever a body parser answers.
            nonlocal body_done
            message = await receive()
            if message["type"] == "http.request" and not message.get("more_body", False):
                body_done = True
            elif message["type"] == "http.disconnect" and not body_done:
                mark_cancelled(scope)
            return message

        async def send_with_id(message: Message) -> None:
            nonlocal status, model, slot_wait, slot_wait_ms
            if message["type"] == "http.response.start":
                status = message["status"]
                response_headers = list(message.get("headers") or [])
                for key, value in response_headers:
                    if key.lower() == MODEL_HEADER.encode():
                        model = value.decode("latin-1")
                    elif key.lower() == SLOT_WAIT_HEADER.encode():
                        slot_wait_ms = value.decode("latin-1")
                        slot_wait = f" wait={slot_wait_ms}ms"
                response_headers.append((b"x-request-id", request_id.encode("latin-1")))
                message = {**message, "headers": response_headers}
            await send(message)

        try:
            await self.app(scope, receive_watching, send_with_id)
        finally:
            if scope.get("state", {}).get(OUTCOME_KEY) == "cancelled":
                status = 499
            elapsed_ms = (time.perf_counter() - started) * 1000
            if self.json_lines:
                # JSON escapes control characters itself.
                access_log.info("%s", json.dumps({
                    "request_id": request_id, "method": scope["method"], "path": scope["path"], "status": status or 500,
                    "model": model, "duration_ms": round(elapsed_ms, 1), "slot_wait_ms": slot_wait_ms,
                }))
            else:
                access_log.info(
                    "%s %s %s %d model=%s %.1fms%s",
                    printable(request_id), printable(scope["method"]), printable(scope["path"]), status or 500,
                    printable(model), elapsed_ms, printable(slot_wait),
                )


class MetricsMiddleware:
    """Counts each request by route template, model and status, with its duration, and those in flight."""

    def __init__(self, app: ASGIApp, metrics: GatewayMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500
        model: str | None = None

        async def send_watching(message: Message) -> None:
            nonlocal status, model
            if message["type"] == "http.response.start":
                status = message["status"]
                for key, value in message.get("headers") or []:
                    if key.lower() == MODEL_HEADER.encode():
                        model = value.decode("latin-1")
            await send(message)

        self.metrics.in_flight.inc()
        try:
            await self.app(scope, receive, send_watching)
        finally:
            self.metrics.in_flight.dec()
            if scope.get("state", {}).get(OUTCOME_KEY) == "cancelled":
                status = 499
            route = getattr(scope.get("route"), "path", None) or UNMATCHED_ROUTE
            self.metrics.observe_request(route, model, status, time.perf_counter() - started)


class BodyLimitMiddleware:
    """Refuses bodies over the limit with 413 before reading them (Content-Length) or as soon as they pass it."""

    def __init__(self, app: ASGIApp, max_bytes: int, body_timeout_s: float | None = None) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.body_timeout_s = body_timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _header(scope, b"content-length")
        if declared is not None and not (declared.isascii() and declared.strip().isdigit()):
            message = f"Content-Length '{declared}' is not a number of bytes; send the body's length in bytes, or no Content-Length"
            await envelope_response(400, ErrorKind.MALFORMED, message)(scope, receive, send)
            return
        if declared is not None and int(declared) > self.max_bytes:
            await envelope_response(413, ErrorKind.OVERFLOW, too_large_message(self.max_bytes))(scope, receive, send)
            return
        received = 0
        body_done = False
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.body_timeout_s if self.body_timeout_s is not None else None

        async def limited_receive() -> Message:
            nonlocal received, body_done
            if deadline is None or body_done:
                message = await receive()
            else:
                # A client that trickles its body (a byte a second) is refused once the time is up,
                # rather than holding a connection and a request for as long as it likes.
                # A deadline on this task rather than wait_for's extra task: a receive cancelled from
                # outside (a disconnect watcher told to stop) then ends at once.
                try:
                    async with asyncio.timeout_at(deadline):
                        message = await receive()
                except TimeoutError:
                    raise BodyTooSlow(self.body_timeout_s or 0.0) from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise PayloadTooLarge(self.max_bytes)
                body_done = not message.get("more_body", False)
            return message

        await self.app(scope, limited_receive, send)


class BrowserGuardMiddleware:
    """Host and Origin rules before any work (security.AccessPolicy): a page on another site cannot
    drive the gateway (drive-by requests, text/plain and multipart included), and a name an attacker
    rebinds to 127.0.0.1 is not answered."""

    def __init__(self, app: ASGIApp, policy: AccessPolicy) -> None:
        self.app = app
        self.policy = policy

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            host = _header(scope, b"host")
            try:
                self.policy.check_host(host)
                self.policy.check_origin(_header(scope, b"origin"), host, scope.get("scheme", "http"))
            except AistackError as refusal:
                await envelope_response(refusal.status_code, refusal.kind, refusal.message,
                                        headers=refusal.headers)(scope, receive, send)
                return
        await self.app(scope, receive, send)


class ApiKeyMiddleware:
    """Each route's scope (security.AccessPolicy.required_scope) against the key in `Authorization:
    Bearer KEY`; the scope granted is kept on the request (`granted_scope`) for routes that show more
    to admins."""

    def __init__(self, app: ASGIApp, policy: AccessPolicy) -> None:
        self.app = app
        self.policy = policy

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            try:
                if scope["type"] == "http":
                    presented = key_from_authorization(_header(scope, b"authorization"))
                    granted = self.policy.authorize(presented, self.policy.required_scope(scope["path"]))
                else:
                    # A WebSocket handshake: Host, Origin and the key (a browser offers it as a subprotocol).
                    granted = self.policy.admit(scope["path"], scope.get("headers") or [], scope.get("scheme", "ws"),
                                                scope.get("subprotocols") or ())
            except AistackError as refusal:
                await self._refuse(refusal, scope, receive, send)
                return
            scope.setdefault("state", {})[SCOPE_KEY] = granted
        await self.app(scope, receive, send)

    @staticmethod
    async def _refuse(refusal: AistackError, scope: Scope, receive: Receive, send: Send) -> None:
        message = refusal.message
        if scope["type"] == "websocket" and refusal.kind == ErrorKind.UNAUTHORIZED:
            message += f" (or, from a browser, the WebSocket subprotocol {KEY_SUBPROTOCOL_PREFIX}<key>)"
        if scope["type"] == "websocket" and "websocket.http.response" not in scope.get("extensions", {}):
            # A server that cannot answer a handshake with HTTP: close it, saying why.
            await send({"type": "websocket.close", "code": 1008, "reason": message[:120]})
            return
        headers = {"WWW-Authenticate": "Bearer"} if refusal.kind == ErrorKind.UNAUTHORIZED else None
        await envelope_response(refusal.status_code, refusal.kind, message, headers=headers)(scope, receive, send)


def granted_scope(scope: Scope) -> AccessScope:
    """The scope the request's key was granted (ADMIN when the gateway has no keys)."""
    granted = scope.get("state", {}).get(SCOPE_KEY)
    return granted if isinstance(granted, AccessScope) else AccessScope.NONE


STOPPING_RETRY_AFTER_S = 5


class ShutdownDrain:
    """The gateway is stopping: requests running get `grace_s` to finish (see DrainMiddleware)."""

    def __init__(self, grace_s: float) -> None:
        self.grace_s = grace_s
        self.stopping = False
        # Doors whose connections outlive a request (the Realtime WebSocket): each is given the grace
        # period to end its own, before the server drops what is left.
        self.long_lived: list[Callable[[float], Awaitable[None]]] = []
        # Futures of whichever loop serves (not an asyncio.Event, which binds to the first loop it meets).
        self._waiters: set[asyncio.Future[None]] = set()

    def begin(self) -> None:
        """On the serving loop."""
        self.stopping = True
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)

    async def wind_down_long_lived(self) -> None:
        await asyncio.gather(*(wind_down(self.grace_s) for wind_down in self.long_lived))

    async def grace_over(self) -> None:
        if not self.stopping:
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.add(waiter)
            try:
                await waiter
            finally:
                self._waiters.discard(waiter)
        await asyncio.sleep(self.grace_s)


def _stopping_error() -> AistackError:
    return AistackError(ErrorKind.BUSY, "the gateway is stopping; send the request again once it is back",
                        headers={"Retry-After": str(STOPPING_RETRY_AFTER_S), "Connection": "close"})


class DrainMiddleware:
    """On stop (SIGTERM), a request still running when the grace period ends is ended properly: the
    503 envelope when nothing was sent yet, one SSE error event on an open event stream. Without
    this, the server cancels it, which gives a plain-text 500 or a stream that just stops."""

    def __init__(self, app: ASGIApp, drain: ShutdownDrain) -> None:
        self.app = app
        self.drain = drain

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.drain.stopping:
            refusal = _stopping_error()
            await envelope_response(refusal.status_code, refusal.kind, refusal.message,
                                    headers=refusal.headers)(scope, receive, send)
            return
        started = finished = event_stream = False

        async def send_tracking(message: Message) -> None:
            nonlocal started, finished, event_stream
            if message["type"] == "http.response.start":
                started = True
                content_type = dict(message.get("headers") or []).get(b"content-type", b"")
                event_stream = content_type.startswith(b"text/event-stream")
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                finished = True
            await send(message)

        work = asyncio.ensure_future(self.app(scope, receive, send_tracking))
        grace = asyncio.ensure_future(self.drain.grace_over())
        try:
            await asyncio.wait({work, grace}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not work.done():
                work.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await work
                ended_by_stop = grace.done() and not grace.cancelled() and grace.exception() is None
            else:
                ended_by_stop = False
            grace.cancel()
        if not ended_by_stop:
            work.result()  # the app's own outcome, exceptions included
            return
        error_log.warning("stopping: %s %s did not finish within the %.0f s grace period",
                          printable(str(scope.get("method"))), printable(str(scope.get("path"))), self.drain.grace_s)
        refusal = _stopping_error()
        if not started:
            await envelope_response(refusal.status_code, refusal.kind, refusal.message,
                                    headers=refusal.headers)(scope, receive, send)
        elif not finished:
            tail = b""
            if event_stream:
                event = json.dumps({"type": "error", **refusal.envelope()})
                tail = f"event: error\ndata: {event}\n\n".encode()
            await send({"type": "http.response.body", "body": tail, "more_body": False})


def _header(scope: Scope, name: bytes) -> str | None:
    key: bytes
    value: bytes
    for key, value in scope.get("headers") or []:
        if key.lower() == name:
            return value.decode("latin-1")
    return None


