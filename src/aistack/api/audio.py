"""POST /v1/audio/transcriptions and /v1/audio/translations (OpenAI multipart fields, docs/api.md)."""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, File, Form, Request, UploadFile
from fastapi.responses import JSONResponse, Response, StreamingResponse

from ..audio.decode import decode_audio
from ..audio.formats import MEDIA_TYPES, render
from ..engines.base import ModelCard, TranscribeOptions
from ..errors import malformed
from ..languages import normalize_language
from ..protocol.transcription import (
    TRANSCRIPTION_RESPONSES,
    GranularityName,
    ResponseFormatName,
    Transcription,
    VerboseTranscription,
)
from ..services.transcription import TranscriptionService
from .deps import TranscriptionDep, cancellable_body, until_disconnected
from .middleware import MODEL_HEADER, SLOT_WAIT_HEADER, at_request_end
from .streaming import stream_headers

router = APIRouter(tags=["audio"])

AudioFile = Annotated[UploadFile, File(description="Audio in any format FFmpeg reads.")]
ModelField = Annotated[str, Form(description="A model id from /v1/models, `auto` or `whisper-1`.")]
PromptField = Annotated[str | None, Form(description="Text that steers spelling and style.")]
TemperatureField = Annotated[float | None, Form(ge=0.0, le=1.0)]
FormatField = Annotated[ResponseFormatName, Form()]


@router.post("/v1/audio/transcriptions", response_model=Transcription | VerboseTranscription,
             responses=TRANSCRIPTION_RESPONSES)
async def create_transcription(
    request: Request,
    file: AudioFile,
    transcription: TranscriptionDep,
    model: ModelField = "auto",
    language: Annotated[str | None, Form(description="ISO 639-1 code of the speech; detected when absent.")] = None,
    prompt: PromptField = None,
    temperature: TemperatureField = None,
    response_format: FormatField = "json",
    timestamp_granularities: Annotated[list[GranularityName] | None, Form(alias="timestamp_granularities[]")] = None,
    stream: Annotated[bool, Form()] = False,
) -> Response:
    hint = normalize_language(language)
    granularities = frozenset(timestamp_granularities or ())
    if granularities and response_format != "verbose_json":
        raise malformed(
            "timestamp_granularities[] needs response_format=verbose_json; set it or drop the granularities",
            param="timestamp_granularities",
        )
    card = await transcription.select(model, hint, "transcribe")
    options = TranscribeOptions(hint, "transcribe", prompt, temperature, word_timestamps="word" in granularities)
    return await _serve(request, transcription, card, file, options, response_format, granularities, stream)


@router.post("/v1/audio/translations", response_model=Transcription | VerboseTranscription,
             responses=TRANSCRIPTION_RESPONSES)
async def create_translation(
    request: Request,
    file: AudioFile,
    transcription: TranscriptionDep,
    model: ModelField = "auto",
    prompt: PromptField = None,
    temperature: TemperatureField = None,
    response_format: FormatField = "json",
) -> Response:
    card = await transcription.select(model, None, "translate")
    options = TranscribeOptions(None, "translate", prompt, temperature)
    return await _serve(request, transcription, card, file, options, response_format, frozenset(), stream=False)


async def _serve(
    request: Request,
    service: TranscriptionService,
    card: ModelCard,
    file: UploadFile,
    options: TranscribeOptions,
    response_format: str,
    granularities: frozenset[str],
    stream: bool,
) -> Response:
    audio = await asyncio.to_thread(decode_audio, file.file)
    # The slot and the loaded model come before any byte is sent, so busy or a load failure is a
    # proper error status, even when streaming. Whatever no worker takes over is given back at the end.
    job = await until_disconnected(
        request, service.start(card, on_lease=lambda lease: at_request_end(request.scope, lease.abandon))
    )
    headers = {MODEL_HEADER: card.id, SLOT_WAIT_HEADER: f"{job.lease.waited_s * 1000:.0f}"}
    if stream:
        events = service.stream_events(job, audio, options)
        return StreamingResponse(
            cancellable_body(request, events),
            media_type="text/event-stream",
            headers=stream_headers(headers),
        )
    transcript = await until_disconnected(request, service.transcribe(job, audio, options))
    body = render(transcript, response_format, granularities)
    if isinstance(body, str):
        return Response(body, media_type=MEDIA_TYPES[response_format], headers=headers)
    return JSONResponse(body, headers=headers)
