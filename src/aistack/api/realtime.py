"""GET /v1/realtime: the Realtime API's transcription sessions over a WebSocket (docs/api.md).

A thin door: frames are parsed into typed client events for the session (services/realtime.py), and
the server events it yields are sent back as they come. One access-log line per session."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from fastapi import APIRouter, WebSocket, WebSocketDisconnect

from ..errors import AistackError, ErrorKind, malformed
from ..protocol import realtime as wire
from ..services.realtime import RealtimeSession, SessionEnd
from .deps import RealtimeDep

router = APIRouter(tags=["realtime"])
access_log = logging.getLogger("aistack.access")
log = logging.getLogger("aistack.realtime")

# What a realtime client offers besides its key; answering with it is what OpenAI does.
REALTIME_SUBPROTOCOL = "realtime"
BETA_HEADER_VALUE = "realtime=v1"
BETA_SUBPROTOCOL = "openai-beta.realtime-v1"
POLICY_VIOLATION = 1008
INTERNAL_ERROR = 1011
SERVICE_RESTART = 1012


@router.websocket("/v1/realtime")
async def realtime(websocket: WebSocket, service: RealtimeDep) -> None:
    # Every session here transcribes, so `?intent=transcription` (and `?model=`) change nothing. Clients
    # of the earlier beta say so (a header, or a subprotocol from a browser) and get its session events.
    offered = websocket.scope.get("subprotocols") or []
    beta = BETA_HEADER_VALUE in websocket.headers.get("openai-beta", "") or BETA_SUBPROTOCOL in offered
    await websocket.accept(subprotocol=REALTIME_SUBPROTOCOL if REALTIME_SUBPROTOCOL in offered else None)
    started = time.perf_counter()
    try:
        session = await service.open("legacy" if beta else "ga")
    except Exception as error:  # e.g. the VAD model is missing from this installation
        log.exception("a realtime session could not start")
        failure = AistackError(ErrorKind.UNKNOWN, f"the session could not start: {error}")
        await websocket.send_text(wire.encode(wire.error_event(failure)))
        await websocket.close(INTERNAL_ERROR, "the session could not start")
        return
    reader = asyncio.create_task(_read(websocket, session, service.max_event_bytes))
    reason = "server stopped"
    try:
        async for event in session.events():
            if isinstance(event, SessionEnd):
                reason = event.reason
                if event.by_limit:
                    await websocket.close(POLICY_VIOLATION, event.reason[:120])
                elif event.stopping:
                    await websocket.close(SERVICE_RESTART, event.reason[:120])
                break
            await websocket.send_text(wire.encode(event))
    except (WebSocketDisconnect, RuntimeError, OSError):
        reason = "client gone"
    finally:
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await reader
        await session.close()
        stats = session.stats
        access_log.info(
            "%s WS /v1/realtime %s model=%s %.1fs audio=%.1fs turns=%d deltas=%d early_finals=%d close=%r",
            session.id, session.dialect, session.model, time.perf_counter() - started, stats.audio_s, stats.turns,
            stats.deltas, stats.early_finals, reason,
        )


async def _read(websocket: WebSocket, session: RealtimeSession, max_event_bytes: int) -> None:
    """Feed each frame to the session until the client leaves."""
    try:
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                session.end("client closed")
                return
            frame = message.get("text")
            if frame is None:
                session.reject(wire.BadEvent(malformed("binary frames are not events; send each event as a JSON "
                                                            "text frame"), None))
                continue
            if len(frame) > max_event_bytes and len(frame.encode()) > max_event_bytes:
                session.reject(wire.BadEvent(wire.too_large(max_event_bytes), None))
                continue
            try:
                event = wire.parse_client_event(frame)
            except wire.BadEvent as error:
                session.reject(error)
                continue
            await session.receive(event)
    except (WebSocketDisconnect, RuntimeError, OSError):
        session.end("client gone")
