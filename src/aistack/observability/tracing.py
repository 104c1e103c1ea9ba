"""Optional OpenTelemetry tracing (docs/metrics.md, Tracing): one server span per request, with child
spans for the wait for a slot and for the engine's work.

This is the only module that knows OpenTelemetry, and it imports it only once an OTLP endpoint is
configured (`GatewayTracing.from_settings`); with none, or without the packages, there is no
request middleware (api/tracing.py, the HTTP side) and every step below is a no-op that imports
nothing. It knows nothing of HTTP itself, so services may use it. Each app owns its tracer provider
(the global one is left alone), as it owns its metrics registry.

Child spans find their parent by context: the request's span is made current and the app's tracer is
put in a context variable while the request is served, which asyncio copies into every task of the
request and the scheduler into its worker threads. Child spans are never made current themselves:
they are opened and closed around `await`s and `yield`s, where attaching a context could leak into
the caller.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from contextvars import ContextVar
from typing import TYPE_CHECKING

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
ENGINE_SPAN_PREFIX = "engine."

# The tracer of the app serving the current request; None outside a traced request.
_request_tracer: ContextVar[Tracer | None] = ContextVar("aistack_request_tracer", default=None)


class GatewayTracing:
    """One app's tracer provider, exporting batches of finished spans over OTLP/HTTP."""

    def __init__(self, provider: TracerProvider, endpoint: str) -> None:
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        self.provider = provider
        self.endpoint = endpoint
        self.tracer: Tracer = provider.get_tracer("aistack", __version__)
        self.propagator = TraceContextTextMapPropagator()

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

    def request(self, name: str, attributes: Mapping[str, Attribute], trace_context: Mapping[str, str]) -> RequestSpan:
        return RequestSpan(self, name, attributes, trace_context)

    def shutdown(self) -> None:
        """Send the spans still buffered, then stop exporting (blocking: at most the export timeout)."""
        self.provider.shutdown()


class RequestSpan:
    """The server span of one request or WebSocket session (the HTTP middleware, api/tracing.py, drives it)."""

    def __init__(self, tracing: GatewayTracing, name: str, attributes: Mapping[str, Attribute],
                 trace_context: Mapping[str, str]) -> None:
        from opentelemetry.trace import SpanKind

        self._tracer = tracing.tracer
        # A caller's W3C trace context (traceparent, tracestate): the request joins its trace.
        self._caller = tracing.propagator.extract(trace_context) if trace_context else None
        self._span = self._tracer.start_span(name, context=self._caller, kind=SpanKind.SERVER, attributes=attributes)

    def set(self, key: str, value: Attribute) -> None:
        self._span.set_attribute(key, value)

    @contextmanager
    def current(self) -> Iterator[None]:
        """The block that serves the request, with this span current: the steps inside become its children."""
        from opentelemetry import context, trace
        from opentelemetry.trace import Status, StatusCode

        attached = context.attach(trace.set_span_in_context(self._span, self._caller))
        tracer_set = _request_tracer.set(self._tracer)
        try:
            yield
        except asyncio.CancelledError:
            self._span.set_attribute(CANCELLED, True)
            raise
        except BaseException as error:
            self._span.record_exception(error)
            self._span.set_status(Status(StatusCode.ERROR, _describe(error)))
            raise
        finally:
            _request_tracer.reset(tracer_set)
            context.detach(attached)

    def finish(self, method: str, route: str | None, status: int | None) -> None:
        """Name the span by its route template (names stay bounded), record the status, and end it."""
        from opentelemetry.trace import Status, StatusCode

        if route:
            self._span.update_name(f"{method} {route}")
            self._span.set_attribute("http.route", route)
        if status is not None:
            self._span.set_attribute("http.response.status_code", status)
            # OpenTelemetry's HTTP conventions: a server span is an error for 5xx; a 4xx is the caller's.
            if status >= 500:
                self._span.set_attribute("error.type", str(status))
                self._span.set_status(Status(StatusCode.ERROR, f"HTTP {status}"))
        self._span.end()


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
