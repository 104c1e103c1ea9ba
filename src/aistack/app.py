"""The ASGI application: thin routers over the runtime, with the cross-cutting middleware around them."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.middleware.cors import CORSMiddleware

from . import __version__
from .api import admin, audio, console, health, llm, metrics, models, realtime, speech
from .api.errors import install_error_handlers
from .api.middleware import (
    AccessLogMiddleware,
    ApiKeyMiddleware,
    BodyLimitMiddleware,
    BrowserGuardMiddleware,
    DrainMiddleware,
    MetricsMiddleware,
    RequestCleanupMiddleware,
    ShutdownDrain,
    UnexpectedErrorMiddleware,
)
from .api.openapi import install_openapi
from .api.tracing import TracingMiddleware
from .observability.metrics import GatewayMetrics
from .observability.tracing import GatewayTracing
from .protocol.errors import ERROR_RESPONSES
from .runtime import Runtime, build_runtime
from .security import AccessPolicy
from .settings import Settings
from .wyoming_door import serve_wyoming


def create_app(settings: Settings, runtime: Runtime | None = None) -> FastAPI:
    held = runtime or build_runtime(settings)
    # Per app: keys and browser rules (any door, the WebSocket one too, asks it), and the stop's drain.
    access = AccessPolicy.from_settings(settings)
    drain = ShutdownDrain(settings.server.shutdown_grace_s)
    drain.long_lived.append(held.realtime.wind_down)
    gathered = GatewayMetrics(held.inventory.listed_ids)
    gathered.watch(held)
    traced = GatewayTracing.from_settings(settings.tracing)  # None unless an OTLP endpoint is configured

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await held.start()
        try:
            async with serve_wyoming(held):  # the Home Assistant door, when `wyoming.uri` is set
                yield
        finally:
            await held.stop()
            if traced is not None:
                await asyncio.to_thread(traced.shutdown)  # sends the spans still buffered

    app = FastAPI(
        title="aistack",
        version=__version__,
        summary="One local gateway speaking the OpenAI API over the engines on this machine.",
        lifespan=lifespan,
    )
    app.state.runtime = held
    app.state.access = access
    app.state.drain = drain
    app.state.metrics = gathered
    app.state.tracing = traced
    install_error_handlers(app)
    install_openapi(app)
    for router in (health.router, models.router, audio.router, speech.router, llm.router, admin.router, realtime.router,
                   metrics.router):
        app.include_router(router, responses=ERROR_RESPONSES)
    app.include_router(console.router)  # the web console at / and /console/*, outside /v1 and /admin
    # Added last runs first: the access log (and its X-Request-Id) sees every request, including
    # refused ones; right inside it, the last-resort 500 covers a failure in any other layer; request
    # clean-up runs innermost, once the response is over.
    app.add_middleware(RequestCleanupMiddleware)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_upload_bytes, body_timeout_s=settings.server.body_timeout_s)
    app.add_middleware(ApiKeyMiddleware, policy=access)
    if access.allowed_origins:
        # Only for configured origins (none by default); outside the key check, so a preflight needs no key.
        app.add_middleware(CORSMiddleware, allow_origins=list(access.allowed_origins), allow_methods=["*"],
                           allow_headers=["authorization", "content-type", "x-request-id"],
                           expose_headers=["x-request-id", "x-aistack-model", "retry-after"])
    # Host and Origin before anything else does work, CORS preflights included.
    app.add_middleware(BrowserGuardMiddleware, policy=access)
    app.add_middleware(DrainMiddleware, drain=drain)
    app.add_middleware(MetricsMiddleware, metrics=gathered)
    app.add_middleware(UnexpectedErrorMiddleware)
    app.add_middleware(AccessLogMiddleware, json_lines=settings.server.access_log_format == "json")
    if traced is not None:
        app.add_middleware(TracingMiddleware, tracing=traced)  # outermost
    return app
