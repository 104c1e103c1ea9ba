"""The ASGI application: thin routers over the runtime, with the cross-cutting middleware around them."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from . import __version__
from .api import admin, audio, console, health, llm, models, realtime, speech
from .api.errors import install_error_handlers
from .api.middleware import (
    AccessLogMiddleware,
    ApiKeyMiddleware,
    BodyLimitMiddleware,
    RequestCleanupMiddleware,
    UnexpectedErrorMiddleware,
)
from .protocol.errors import ERROR_RESPONSES
from .runtime import Runtime, build_runtime
from .settings import Settings
from .wyoming_door import serve_wyoming


def create_app(settings: Settings, runtime: Runtime | None = None) -> FastAPI:
    held = runtime or build_runtime(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await held.start()
        try:
            async with serve_wyoming(held):  # the Home Assistant door, when `wyoming.uri` is set
                yield
        finally:
            await held.stop()

    app = FastAPI(
        title="aistack",
        version=__version__,
        summary="One local gateway speaking the OpenAI API over the engines on this machine.",
        lifespan=lifespan,
    )
    app.state.runtime = held
    install_error_handlers(app)
    for router in (health.router, models.router, audio.router, speech.router, llm.router, admin.router, realtime.router):
        app.include_router(router, responses=ERROR_RESPONSES)
    app.include_router(console.router)  # the web console at / and /console/*, outside /v1 and /admin
    # Added last runs first: the access log (and its X-Request-Id) sees every request, including
    # refused ones; right inside it, the last-resort 500 covers a failure in any other layer; request
    # clean-up runs innermost, once the response is over.
    app.add_middleware(RequestCleanupMiddleware)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_upload_bytes)
    app.add_middleware(ApiKeyMiddleware, api_key=settings.api_key)
    app.add_middleware(UnexpectedErrorMiddleware)
    app.add_middleware(AccessLogMiddleware)
    return app
