"""Optional OpenTelemetry tracing (docs/metrics.md, Tracing): one server span per request, with child
spans for the wait for a slot and for the engine's work.

This is the only module that knows OpenTelemetry, and it imports it only once an OTLP endpoint is
configured (`GatewayTracing.from_settings`); with none, or without the packages, there is no
middleware and every step below is a no-op that imports nothing. Each app owns its tracer provider
(the global one is left alone), as it owns its metrics registry.

Child spans find their parent by context: the request middleware makes its span current and puts
the app's tracer in a context variable, which asyncio copies into every task of the request and the
scheduler into its worker threads. Child spans are never made current themselves: they are opened
and closed around `await`s and `yield`s, where attaching a context could leak into the caller.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from contextvars import ContextVar
from typing import TYPE_CHECKING

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .. import __version__
from ..errors import AistackError

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Span, Tracer

    from ..settings import TracingSettings

log = logging.getLogger("aistack.tracing")

INSTALL_HINT = "pip install 'aistack[tracing]' (opentelemetry-sdk and opentelemetry-exporter-otlp-proto-http)"
Attribute = str | int | float | bool

# Attribute names beyond OpenTelemetry's HTTP conventions.
MODEL = "aistack.model"
ENGINE = "aistack.engine"
DEVICE = "aistack.device"
CAPABILITY = "aistack.capability"
QUEUE_DEPTH = "aistack.queue.depth"
QUEUE_WAIT = "aistack.queue.wait_s"
REQUEST_ID = "aistack.request_id"
CANCELLED = "aistack.cancelled"

QUEUE_SPAN = "queue.wait"
TRACE_CONTEXT_HEADERS = ("traceparent", "tracestate")  # W3C Trace Context: a caller's trace to join
ENGINE_SPAN_PREFIX = "engine."

# The tracer of the app serving the current request; None outside a traced request.
_request_tracer: ContextVar[Tracer | None] = ContextVar("aistack_request_tracer", default=None)


class GatewayTracing:
    """One app's tracer provider, exporting batches of finished spans over OTLP/HTTP."""

    def __init__(self, provider: TracerProvider, endpoint: str) -> None:
        self.provider = provider
        self.endpoint = endpoint
        self.tracer: Tracer = provider.get_tracer("aistack", __version__)

    @classmethod
    def from_settings(cls, settings: TracingSettings) -> GatewayTracing | None:
        """The tracing to wire in, or None: no endpoint configured, or OpenTelemetry not installed (one warning)."""
        endpoint = settings.traces_url()
        if endpoint is None:
            return None
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
            from opentelemetry.sdk.resources import SERVICE_NAME, SERVICE_VERSION, Resource
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.export import BatchSpanProcessor
        except ImportError as missing:
            log.warning("tracing is configured (OTLP endpoint %s) but OpenTelemetry is not installed (%s); serving "
                        "without traces: %s", endpoint, missing, INSTALL_HINT)
            return None
        provider = TracerProvider(resource=Resource.create({SERVICE_NAME: settings.service_name,
                                                            SERVICE_VERSION: __version__}))
        exporter = OTLPSpanExporter(endpoint=endpoint, timeout=settings.export_timeout_s)
        provider.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=settings.export_interval_s * 1000))
        log.info("tracing to %s as %s", endpoint, settings.service_name)
        return cls(provider, endpoint)

    def shutdown(self) -> None:
        """Send the spans still buffered, then stop exporting (blocking: at most the export timeout)."""
        self.provider.shutdown()


class TracingMiddleware:
    """One server span per HTTP request or WebSocket session, named by its route template (bounded),
    continuing the caller's trace when the request carries a W3C `traceparent`."""

    def __init__(self, app: ASGIApp, tracing: GatewayTracing) -> None:
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        self.app = app
        self.tracer = tracing.tracer
        self.propagator = TraceContextTextMapPropagator()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        # Imported already (by `from_settings`); here so that this module imports nothing of them itself.
        from opentelemetry import context, trace
        from opentelemetry.trace import SpanKind, Status, StatusCode

        from ..api.middleware import MODEL_HEADER, OUTCOME_KEY

        is_http = scope["type"] == "http"
        method = scope["method"] if is_http else "WebSocket"
        carrier = {name: value.decode("latin-1") for key, value in scope.get("headers") or []
                   if (name := key.decode("latin-1").lower()) in TRACE_CONTEXT_HEADERS}
        caller = self.propagator.extract(carrier) if carrier else None
        span = self.tracer.start_span(method, context=caller, kind=SpanKind.SERVER, attributes={
            "http.request.method": method if is_http else "GET",
            "url.path": scope.get("path", ""),
            "url.scheme": scope.get("scheme", "http"),
        })
        status: int | None = None
        model_header = MODEL_HEADER.encode()

        async def send_watching(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                for key, value in message.get("headers") or []:
                    name = key.lower()
                    if name == model_header:
                        span.set_attribute(MODEL, value.decode("latin-1"))
                    elif name == b"x-request-id":
                        span.set_attribute(REQUEST_ID, value.decode("latin-1"))
            await send(message)

        attached = context.attach(trace.set_span_in_context(span, caller))
        tracer_set = _request_tracer.set(self.tracer)
        try:
            await self.app(scope, receive, send_watching if is_http else send)
        except asyncio.CancelledError:
            span.set_attribute(CANCELLED, True)
            raise
        except BaseException as error:
            span.record_exception(error)
            span.set_status(Status(StatusCode.ERROR, _describe(error)))
            raise
        finally:
            _request_tracer.reset(tracer_set)
            context.detach(attached)
            route = getattr(scope.get("route"), "path", None)
            if route:
                span.update_name(f"{method} {route}")
                span.set_attribute("http.route", route)
            if scope.get("state", {}).get(OUTCOME_KEY) == "cancelled":
                span.set_attribute(CANCELLED, True)
            if status is not None:
                span.set_attribute("http.response.status_code", status)
                # OpenTelemetry's HTTP conventions: a server span is an error for 5xx; a 4xx is the caller's.
                if status >= 500:
                    span.set_attribute("error.type", str(status))
                    span.set_status(Status(StatusCode.ERROR, f"HTTP {status}"))
            span.end()


class Step:
    """A child span of the current request, or nothing (no request being traced)."""

    __slots__ = ("_ended", "_span")

    def __init__(self, span: Span | None = None) -> None:
        self._span = span
        self._ended = False

    def set(self, key: str, value: Attribute) -> None:
        if self._span is not None:
            self._span.set_attribute(key, value)

    def fail(self, error: BaseException) -> None:
        """Mark the step failed (client departures are not failures: see `step`)."""
        if self._span is None:
            return
        from opentelemetry.trace import Status, StatusCode

        self._span.record_exception(error)
        self._span.set_attribute("error.type", error.kind.value if isinstance(error, AistackError) else type(error).__name__)
        self._span.set_status(Status(StatusCode.ERROR, _describe(error)))

    def end(self) -> None:
        if self._span is not None and not self._ended:
            self._ended = True
            self._span.end()


NO_STEP = Step()


def start_step(name: str, attributes: Mapping[str, Attribute]) -> Step:
    """A child span of the current request's span, open until `end()`; a no-op Step outside a traced request."""
    tracer = _request_tracer.get()
    if tracer is None:
        return NO_STEP
    return Step(tracer.start_span(name, attributes=attributes))


@contextmanager
def step(name: str, attributes: Mapping[str, Attribute]) -> Iterator[Step]:
    """`start_step` for a block: an exception marks it failed, a cancellation or a generator closed early
    (the client left) only marks it cancelled."""
    handle = start_step(name, attributes)
    try:
        yield handle
    except (GeneratorExit, asyncio.CancelledError):
        handle.set(CANCELLED, True)
        raise
    except BaseException as error:
        handle.fail(error)
        raise
    finally:
        handle.end()


def engine_step(kind: str, engine: str, model: str) -> AbstractContextManager[Step]:
    """The engine's work on one request, as a block: `engine.<kind>` (transcription, speech, embeddings, llm)."""
    return step(f"{ENGINE_SPAN_PREFIX}{kind}", {ENGINE: engine, MODEL: model})


def start_engine_step(kind: str, engine: str, model: str) -> Step:
    """`engine_step` for work whose end is elsewhere (a relayed body that ends when the client has read it)."""
    return start_step(f"{ENGINE_SPAN_PREFIX}{kind}", {ENGINE: engine, MODEL: model})


def _describe(error: BaseException) -> str:
    return error.message if isinstance(error, AistackError) else f"{type(error).__name__}: {error}"
