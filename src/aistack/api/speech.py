"""POST /v1/audio/speech, GET /v1/audio/voices and GET /v1/audio/models (docs/api.md)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse

from ..audio.encode import SPEECH_MEDIA_TYPES, SpeechEncoder
from ..errors import malformed
from ..protocol.speech import SPEECH_RESPONSES, AudioModel, AudioModelList, SpeechRequest, Voice, VoiceList
from ..scheduler import Lease
from ..services.speech import Primed, SpeechPlan, SpeechService, audio_events, audio_stream, whole_audio
from .deps import SpeechDep, cancellable_body, until_disconnected
from .middleware import MODEL_HEADER, SLOT_WAIT_HEADER, at_request_end
from .streaming import stream_headers

router = APIRouter(tags=["audio"])


@router.post("/v1/audio/speech", response_class=Response, responses=SPEECH_RESPONSES)
async def create_speech(body: SpeechRequest, request: Request, service: SpeechDep) -> Response:
    if body.whole_file and body.stream_format is not None:
        raise malformed(
            f"whole_file asks for one file after synthesis, stream_format '{body.stream_format}' for a stream; send one of them",
            param="whole_file",
        )
    service.check_input(body.input)
    card = await service.select(body.model)
    plan = service.plan(card, body.voice_name, body.speed, body.instructions, body.extension_fields())
    media_type = SPEECH_MEDIA_TYPES[body.response_format]
    if body.whole_file:
        chunks, headers = await _start(request, service, plan, body.input)
        audio = await until_disconnected(request, whole_audio(chunks, body.response_format, plan.stretch))
        return Response(audio, media_type=media_type, headers=headers)
    # Made before synthesis starts, so that a missing encoder is an error status rather than a cut stream.
    encoder = SpeechEncoder(body.response_format, plan.stretch)
    chunks, headers = await _start(request, service, plan, body.input)
    if body.stream_format == "sse":
        events = audio_events(chunks, encoder, len(body.input))
        return StreamingResponse(cancellable_body(request, events), media_type="text/event-stream",
                                 headers=stream_headers(headers))
    # OpenAI's default stream_format is "audio": the file goes out as it is made.
    return StreamingResponse(cancellable_body(request, audio_stream(chunks, encoder)), media_type=media_type,
                             headers=stream_headers(headers))


@router.get("/v1/audio/voices", response_model=VoiceList)
async def list_voices(service: SpeechDep, model: str | None = None) -> VoiceList:
    card = await service.select(model)
    return VoiceList(model=card.id, voices=[Voice(id=v.id, name=v.name) for v in service.voices(card)])


@router.get("/v1/audio/models", response_model=AudioModelList)
async def list_audio_models(service: SpeechDep) -> AudioModelList:
    return AudioModelList(models=[AudioModel(id=card.id) for card in await service.models()])


async def _start(request: Request, service: SpeechService, plan: SpeechPlan, text: str) -> tuple[Primed, dict[str, str]]:
    """The synthesis past its first sound, stopped when the request ends, and the headers that say how it was served."""
    leases: list[Lease] = []

    def hold(lease: Lease) -> None:
        leases.append(lease)
        at_request_end(request.scope, lease.abandon)

    chunks = await until_disconnected(request, service.start(plan, text, on_lease=hold))
    at_request_end(request.scope, chunks.aclose)
    headers = {MODEL_HEADER: plan.card.id}
    if leases:
        headers[SLOT_WAIT_HEADER] = f"{leases[0].waited_s * 1000:.0f}"
    return chunks, headers

