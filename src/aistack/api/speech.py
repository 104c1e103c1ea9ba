"""POST /v1/audio/speech, GET /v1/audio/voices and GET /v1/audio/models (DESIGN §5)."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from ..audio.encode import SPEECH_MEDIA_TYPES, SpeechEncoder, encode_speech
from ..engines.base import PcmChunk
from ..errors import AistackError, ErrorKind, malformed
from ..services.speech import SpeechPlan
from ..services.transcription import sse_event
from .deps import RuntimeDep, cancellable_body, until_disconnected
from .middleware import MODEL_HEADER, SLOT_WAIT_HEADER, at_request_end

router = APIRouter(tags=["audio"])

# Qwen3-TTS's own request fields, passed through untouched to the engine that understands them.
EXTENSION_FIELDS = ("task_type", "language", "ref_audio", "ref_text", "max_new_tokens")


class SpeechRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str | None = Field(None, description="A TTS model id, or tts-1 / tts-1-hd / gpt-4o-mini-tts for the default.")
    input: str = Field(description="The text to speak.")
    voice: str | None = Field(None, description="An engine voice, or an OpenAI voice name (alloy, echo, ...).")
    response_format: Literal["mp3", "opus", "aac", "flac", "wav", "pcm"] = "mp3"
    speed: float = Field(1.0, ge=0.25, le=4.0)
    instructions: str | None = None
    stream_format: Literal["audio", "sse"] | None = Field(
        None, description="audio: encoded audio as it is made (chunked); sse: base64 deltas. Absent: one whole file."
    )
    task_type: str | None = None
    language: str | None = None
    ref_audio: str | None = None
    ref_text: str | None = None
    max_new_tokens: int | None = Field(None, ge=1)


@router.post("/v1/audio/speech")
async def create_speech(body: SpeechRequest, request: Request, runtime: RuntimeDep) -> Response:
    limit = runtime.settings.tts.max_input_chars
    if not body.input.strip():
        raise malformed("input is empty; send the text to speak", param="input")
    if len(body.input) > limit:
        raise AistackError(
            ErrorKind.OVERFLOW,
            f"input has {len(body.input)} characters, over the {limit} limit; split the text or raise AISTACK_TTS__MAX_INPUT_CHARS",
            param="input",
        )
    service = runtime.speech
    card = await service.select(body.model)
    extra = {name: getattr(body, name) for name in EXTENSION_FIELDS if getattr(body, name) is not None}
    plan = service.plan(card, body.voice, body.speed, body.instructions, extra)
    leases = []

    def hold(lease) -> None:
        leases.append(lease)
        at_request_end(request.scope, lease.abandon)

    chunks = await until_disconnected(request, service.start(plan, body.input, on_lease=hold))
    at_request_end(request.scope, chunks.aclose)  # type: ignore[attr-defined]
    headers = {MODEL_HEADER: card.id}
    if leases:
        headers[SLOT_WAIT_HEADER] = f"{leases[0].waited_s * 1000:.0f}"
    if body.stream_format == "sse":
        return StreamingResponse(
            cancellable_body(request, _sse(chunks, plan, body.response_format, len(body.input))),
            media_type="text/event-stream",
            headers={**headers, "Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
    media_type = SPEECH_MEDIA_TYPES[body.response_format]
    if body.stream_format == "audio":
        return StreamingResponse(cancellable_body(request, _encoded(SpeechEncoder(body.response_format, plan.stretch), chunks)), media_type=media_type, headers=headers)
    audio = await until_disconnected(request, _whole(chunks, plan, body.response_format))
    return Response(audio, media_type=media_type, headers=headers)


@router.get("/v1/audio/voices")
async def list_voices(runtime: RuntimeDep, model: str | None = None) -> dict[str, Any]:
    service = runtime.speech
    card = await service.select(model)
    return {"model": card.id, "voices": [{"id": v.id, "name": v.name} for v in service.voices(card)]}


@router.get("/v1/audio/models")
async def list_audio_models(runtime: RuntimeDep) -> dict[str, Any]:
    return {"models": [{"id": card.id} for card in await runtime.speech.models()]}


async def _whole(chunks: AsyncIterator[PcmChunk], plan: SpeechPlan, response_format: str) -> bytes:
    async with aclosing(chunks) as pcm:  # type: ignore[type-var]
        collected = [chunk async for chunk in pcm]
    return await asyncio.to_thread(encode_speech, collected, response_format, plan.stretch)


async def _encoded(encoder: SpeechEncoder, chunks: AsyncIterator[PcmChunk]) -> AsyncIterator[bytes]:
    async with aclosing(chunks) as pcm:  # type: ignore[type-var]
        async for chunk in pcm:
            data = await asyncio.to_thread(encoder.feed, chunk)
            if data:
                yield data
    tail = await asyncio.to_thread(encoder.finish)
    if tail:
        yield tail


async def _sse(chunks: AsyncIterator[PcmChunk], plan: SpeechPlan, response_format: str, characters: int) -> AsyncIterator[bytes]:
    encoder = SpeechEncoder(response_format, plan.stretch)
    try:
        async with aclosing(_encoded(encoder, chunks)) as encoded:
            async for data in encoded:
                yield sse_event("speech.audio.delta", {"audio": base64.b64encode(data).decode("ascii")})
    except AistackError as error:
        yield sse_event("error", error.envelope())
        return
    usage = {"input_characters": characters, "output_audio_seconds": round(encoder.output_seconds, 3)}
    yield sse_event("speech.audio.done", {"usage": usage})
