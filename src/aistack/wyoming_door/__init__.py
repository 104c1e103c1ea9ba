"""The Wyoming protocol door (Home Assistant's voice pipeline): one more thin door beside the HTTP API.

It turns Wyoming events into calls on the same services the HTTP routers call (transcription, speech,
the models listing) and their results into Wyoming events (docs/wyoming.md). Off unless `wyoming.uri`
is set; `serve_wyoming` runs it for as long as the gateway runs.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from ..runtime import Runtime
from .server import WyomingDoor
from .session import Services

__all__ = ["WyomingDoor", "serve_wyoming", "wyoming_door"]


def wyoming_door(runtime: Runtime, uri: str) -> WyomingDoor:
    settings = runtime.settings
    services = Services(
        transcription=runtime.transcription,
        speech=runtime.speech,
        models=runtime.models,
        stream_transcripts=settings.wyoming.stream_transcripts,
        max_upload_bytes=settings.max_upload_bytes,
        max_text_chars=settings.tts.max_input_chars,
    )
    return WyomingDoor(uri, services, settings.wyoming.client_networks())


@asynccontextmanager
async def serve_wyoming(runtime: Runtime) -> AsyncIterator[WyomingDoor | None]:
    """The Wyoming server while the block runs, when `wyoming.uri` asks for one."""
    uri = runtime.settings.wyoming.uri
    if uri is None:
        yield None
        return
    door = wyoming_door(runtime, uri)
    await door.start()
    try:
        yield door
    finally:
        await door.stop()
