"""Cross-cutting ASGI middleware: request ids and the access log, body limits, API keys,
request-scoped clean-up that runs however the request ends, and the last-resort 500."""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
import uuid
from collections.abc import Awaitable, Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..errors import ErrorKind
from .errors import PayloadTooLarge, envelope_response, too_large_message, unexpected_error_response

access_log = logging.getLogger("aistack.access")
error_log = logging.getLogger("aistack.errors")

MODEL_HEADER = "x-aistack-model"
SLOT_WAIT_HEADER = "x-aistack-slot-wait-ms"
# The language of the speech where the request did not give it: detected before routing, or by the engine.
LANGUAGE_HEADER = "x-aistack-language"
OUTCOME_KEY = "aistack.outcome"
CLEANUP_KEY = "aistack.cleanup"
PROTECTED_PREFIXES = ("/v1/", "/admin/")


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
            error_log.exception("unhandled error on %s %s", scope.get("method"), scope.get("path"))
            await unexpected_error_response(error)(scope, receive, send)


class AccessLogMiddleware:
    """Gives each request an id (X-Request-Id) and logs one line when it ends."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

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
            nonlocal status, model, slot_wait
            if message["type"] == "http.response.start":
                status = message["status"]
                response_headers = list(message.get("headers") or [])
                for key, value in response_headers:
                    if key.lower() == MODEL_HEADER.encode():
                        model = value.decode("latin-1")
                    elif key.lower() == SLOT_WAIT_HEADER.encode():
                        slot_wait = f" wait={value.decode('latin-1')}ms"
                response_headers.append((b"x-request-id", request_id.encode("latin-1")))
                message = {**message, "headers": response_headers}
            await send(message)

        try:
            await self.app(scope, receive_watching, send_with_id)
        finally:
            if scope.get("state", {}).get(OUTCOME_KEY) == "cancelled":
                status = 499
            access_log.info(
                "%s %s %s %d model=%s %.1fms%s",
                request_id, scope["method"], scope["path"], status or 500, model, (time.perf_counter() - started) * 1000,
                slot_wait,
            )


class BodyLimitMiddleware:
    """Refuses bodies over the limit with 413 before reading them (Content-Length) or as soon as they pass it."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

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

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise PayloadTooLarge(self.max_bytes)
            return message

        await self.app(scope, limited_receive, send)


# Browsers cannot set headers on a WebSocket, so OpenAI's realtime clients offer the key as a subprotocol.
KEY_SUBPROTOCOL_PREFIX = "openai-insecure-api-key."


class ApiKeyMiddleware:
    """When a key is configured, /v1 and /admin routes need `Authorization: Bearer KEY`; a WebSocket may
    instead offer the subprotocol `openai-insecure-api-key.KEY`."""

    def __init__(self, app: ASGIApp, api_key: str | None) -> None:
        self.app = app
        self.api_key = api_key

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.api_key and scope["type"] in ("http", "websocket") and scope["path"].startswith(PROTECTED_PREFIXES):
            supplied = [(_header(scope, b"authorization") or "").removeprefix("Bearer ").strip()]
            if scope["type"] == "websocket":
                supplied += [p.removeprefix(KEY_SUBPROTOCOL_PREFIX) for p in scope.get("subprotocols") or ()
                             if p.startswith(KEY_SUBPROTOCOL_PREFIX)]
            if not any(hmac.compare_digest(key.encode(), self.api_key.encode()) for key in supplied if key):
                message = "this gateway needs an API key: send `Authorization: Bearer <key>` with the key set in AISTACK_API_KEY"
                if scope["type"] == "websocket":
                    message += f" (or, from a browser, the WebSocket subprotocol {KEY_SUBPROTOCOL_PREFIX}<key>)"
                    if "websocket.http.response" not in scope.get("extensions", {}):
                        await send({"type": "websocket.close", "code": 1008, "reason": message[:120]})
                        return
                await envelope_response(401, ErrorKind.UNAUTHORIZED, message)(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _header(scope: Scope, name: bytes) -> str | None:
    key: bytes
    value: bytes
    for key, value in scope.get("headers") or []:
        if key.lower() == name:
            return value.decode("latin-1")
    return None


