"""The HTTP side of tracing (observability/tracing.py): one server span per request or WebSocket session."""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..observability.tracing import CANCELLED, MODEL, REQUEST_ID, GatewayTracing
from .middleware import MODEL_HEADER, OUTCOME_KEY

# W3C Trace Context: the caller's trace, which the request joins.
TRACE_CONTEXT_HEADERS = ("traceparent", "tracestate")
_MODEL_HEADER = MODEL_HEADER.encode()


class TracingMiddleware:
    """Mounted only when tracing is configured. Outermost, so the span covers every layer and sees the
    X-Request-Id the access log gives each response."""

    def __init__(self, app: ASGIApp, tracing: GatewayTracing) -> None:
        self.app = app
        self.tracing = tracing

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        is_http = scope["type"] == "http"
        method = scope["method"] if is_http else "WebSocket"
        trace_context = {name: value.decode("latin-1") for key, value in scope.get("headers") or []
                         if (name := key.decode("latin-1").lower()) in TRACE_CONTEXT_HEADERS}
        span = self.tracing.request(method, {
            "http.request.method": method if is_http else "GET",
            "url.path": scope.get("path", ""),
            "url.scheme": scope.get("scheme", "http"),
        }, trace_context)
        status: int | None = None

        async def send_watching(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                for key, value in message.get("headers") or []:
                    name = key.lower()
                    if name == _MODEL_HEADER:
                        span.set(MODEL, value.decode("latin-1"))
                    elif name == b"x-request-id":
                        span.set(REQUEST_ID, value.decode("latin-1"))
            await send(message)

        try:
            with span.current():
                await self.app(scope, receive, send_watching if is_http else send)
        finally:
            if scope.get("state", {}).get(OUTCOME_KEY) == "cancelled":
                span.set(CANCELLED, True)
            span.finish(method, getattr(scope.get("route"), "path", None), status)
