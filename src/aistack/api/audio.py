"""POST /v1/audio/transcriptions and /v1/audio/translations (OpenAI multipart fields, docs/api.md)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
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
    IncludeName,
    ResponseFormatName,
    Transcription,
    VerboseTranscription,
    checked_keywords,
)
from ..protocol.transcription import chunking_strategy as chunking_from_form
from ..scheduler import Lease
from ..services.transcription import TranscriptionService
from .deps import TranscriptionDep, cancellable_body, until_disconnected
from .middleware import LANGUAGE_HEADER, MODEL_HEADER, SLOT_WAIT_HEADER, at_request_end
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
    languages: Annotated[list[str] | None, Form(alias="languages[]", description="Possible languages; detection picks among them.")] = None,
    prompt: PromptField = None,
    keywords: Annotated[list[str] | None, Form(alias="keywords[]", description="Words or phrases to favour.")] = None,
    temperature: TemperatureField = None,
    response_format: FormatField = "json",
    timestamp_granularities: Annotated[list[GranularityName] | None, Form(alias="timestamp_granularities[]")] = None,
    include: Annotated[list[IncludeName] | None, Form(alias="include[]", description="logprobs: each token's log probability.")] = None,
    chunking_strategy: Annotated[str | None, Form(description='"auto", or a JSON object {"type": "server_vad", ...}.')] = None,
    chunking_type: Annotated[str | None, Form(alias="chunking_strategy[type]")] = None,
    chunking_threshold: Annotated[float | None, Form(alias="chunking_strategy[threshold]")] = None,
    chunking_prefix_padding_ms: Annotated[int | None, Form(alias="chunking_strategy[prefix_padding_ms]")] = None,
    chunking_silence_duration_ms: Annotated[int | None, Form(alias="chunking_strategy[silence_duration_ms]")] = None,
    known_speaker_names: Annotated[list[str] | None, Form(alias="known_speaker_names[]")] = None,
    known_speaker_references: Annotated[list[str] | None, Form(alias="known_speaker_references[]")] = None,
    stream: Annotated[bool, Form()] = False,
) -> Response:
    if response_format == "diarized_json" or known_speaker_names or known_speaker_references:
        param = ("response_format" if response_format == "diarized_json"
                 else "known_speaker_names" if known_speaker_names else "known_speaker_references")
        raise malformed("speaker diarization is not available here (diarized_json, known_speaker_names[], "
                        "known_speaker_references[]); drop those fields for a transcript without speakers", param=param)
    hint = normalize_language(language)
    possible = tuple(dict.fromkeys(c for c in (normalize_language(v) for v in languages or ()) if c is not None))
    granularities = frozenset(timestamp_granularities or ())
    if granularities and response_format != "verbose_json":
        raise malformed(
            "timestamp_granularities[] needs response_format=verbose_json; set it or drop the granularities",
            param="timestamp_granularities",
        )
    logprobs = "logprobs" in (include or ())
    if logprobs and response_format != "json":
        raise malformed("include[]=logprobs needs response_format=json; set it or drop the include", param="include")
    chunking = chunking_from_form(chunking_strategy, chunking_type, chunking_threshold, chunking_prefix_padding_ms,
                                  chunking_silence_duration_ms)
    options = TranscribeOptions(hint or (possible[0] if len(possible) == 1 else None), "transcribe", prompt, temperature,
                                word_timestamps="word" in granularities, languages=possible if len(possible) > 1 else (),
                                keywords=checked_keywords(keywords), chunking=chunking, logprobs=logprobs)
    card = await transcription.select(model, hint, "transcribe", possible, options.needs)
    routing = Rerouting(model, hint, possible)
    return await _serve(request, transcription, card, file, options, response_format, granularities, stream, routing)


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
    if response_format == "diarized_json":
        raise malformed("speaker diarization is not available here; pick another response_format", param="response_format")
    card = await transcription.select(model, None, "translate")
    options = TranscribeOptions(None, "translate", prompt, temperature)
    return await _serve(request, transcription, card, file, options, response_format, frozenset(), False, Rerouting(model))


@dataclass(frozen=True)
class Rerouting:
    """What a request asked for, for routing `auto` again once its language is detected."""

    model: str
    hint: str | None = None
    languages: tuple[str, ...] = ()


async def _serve(
    request: Request,
    service: TranscriptionService,
    card: ModelCard,
    file: UploadFile,
    options: TranscribeOptions,
    response_format: str,
    granularities: frozenset[str],
    stream: bool,
    routing: Rerouting,
) -> Response:
    audio = await asyncio.to_thread(decode_audio, file.file)

    def hold(lease: Lease) -> None:
        at_request_end(request.scope, lease.abandon)

    card, detected = await until_disconnected(request, service.route_by_detection(
        routing.model, card, routing.hint, routing.languages, options.task, options.needs, audio, hold))
    # The slot and the loaded model come before any byte is sent, so busy or a load failure is a
    # proper error status, even when streaming. Whatever no worker takes over is given back at the end.
    job = await until_disconnected(request, service.start(card, on_lease=hold))
    headers = {MODEL_HEADER: card.id, SLOT_WAIT_HEADER: f"{job.lease.waited_s * 1000:.0f}"}
    if detected is not None:
        headers[LANGUAGE_HEADER] = detected
    if stream:
        events = service.stream_events(job, audio, options)
        return StreamingResponse(
            cancellable_body(request, events),
            media_type="text/event-stream",
            headers=stream_headers(headers),
        )
    transcript = await until_disconnected(request, service.transcribe(job, audio, options))
    if options.language is None:
        headers.setdefault(LANGUAGE_HEADER, transcript.info.language)
    body = render(transcript, response_format, granularities, options.logprobs)
    if isinstance(body, str):
        return Response(body, media_type=MEDIA_TYPES[response_format], headers=headers)
    return JSONResponse(body, headers=headers)
