"""Request-scoped access to each router's service, and client-disconnect handling."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, Awaitable
from contextlib import aclosing
from typing import Annotated, TypeVar

from fastapi import Depends, Request, WebSocket

from ..engines.base import ClosableAsyncIterator
from ..errors import ClientGone
from ..runtime import Runtime
from ..services.llm import LlmProxy
from ..services.models import ModelsService
from ..services.realtime import RealtimeService
from ..services.speech import SpeechService
from ..services.transcription import TranscriptionService
from .middleware import mark_cancelled

T = TypeVar("T")


def _runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime  # Starlette's State holds untyped attributes
    return runtime


# Each router gets the one service it calls, never the whole runtime.


def get_transcription(request: Request) -> TranscriptionService:
    return _runtime(request).transcription


def get_speech(request: Request) -> SpeechService:
    return _runtime(request).speech


def get_llm(request: Request) -> LlmProxy:
    return _runtime(request).llm


def get_models(request: Request) -> ModelsService:
    return _runtime(request).models


def get_realtime(websocket: WebSocket) -> RealtimeService:
    runtime: Runtime = websocket.app.state.runtime
    return runtime.realtime


TranscriptionDep = Annotated[TranscriptionService, Depends(get_transcription)]
SpeechDep = Annotated[SpeechService, Depends(get_speech)]
LlmDep = Annotated[LlmProxy, Depends(get_llm)]
ModelsDep = Annotated[ModelsService, Depends(get_models)]
RealtimeDep = Annotated[RealtimeService, Depends(get_realtime)]


async def until_disconnected(request: Request, work: Awaitable[T]) -> T:
    """Await `work`, cancelling it if the client disconnects first (then ClientGone, logged as 499)."""

    async def watch() -> None:
        while True:
            message = await request.receive()
            if message["type"] == "http.disconnect":
                return

    work_task = asyncio.ensure_future(work)
    watch_task = asyncio.create_task(watch())
    try:
        done, _ = await asyncio.wait({work_task, watch_task}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        work_task.cancel()
        watch_task.cancel()
        raise
    if work_task in done:
        watch_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watch_task
        return work_task.result()
    # The client left first: stop the work and wait for it to wind down so nothing outlives the request.
    work_task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await work_task
    mark_cancelled(request.scope)
    raise ClientGone()


async def cancellable_body(request: Request, body: ClosableAsyncIterator[bytes]) -> AsyncGenerator[bytes, None]:
    """Relay a streamed body; one closed or cancelled before it ran out was left by its client (499)."""
    try:
        async with aclosing(body) as parts:
            async for part in parts:
                yield part
    except (GeneratorExit, asyncio.CancelledError):
        mark_cancelled(request.scope)
        raise
