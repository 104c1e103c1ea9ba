"""POST /v1/audio/speech, GET /v1/audio/voices and GET /v1/audio/models (docs/api.md)."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic_core import PydanticCustomError

from ..audio.encode import SPEECH_MEDIA_TYPES, SpeechEncoder
from ..errors import malformed
from ..scheduler import Lease
from ..services.speech import Primed, SpeechPlan, SpeechService, audio_events, audio_stream, whole_audio
from .deps import RuntimeDep, cancellable_body, until_disconnected
from .middleware import MODEL_HEADER, SLOT_WAIT_HEADER, at_request_end
from .streaming import stream_headers

router = APIRouter(tags=["audio"])

# Qwen3-TTS's own request fields, passed through untouched to the engine that understands them.
EXTENSION_FIELDS = ("task_type", "language", "ref_audio", "ref_text", "max_new_tokens")


class VoiceReference(BaseModel):
    """The OpenAI SDK's custom-voice form, `{"id": "..."}`."""

    id: str


class SpeechRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str | None = Field(None, description="A TTS model id, or tts-1 / tts-1-hd / gpt-4o-mini-tts for the default.")
    input: str = Field(description="The text to speak.")
    voice: str | VoiceReference | None = Field(
        None, description='An engine voice, an alias, or an OpenAI voice name (alloy, echo, ...); as a string or as {"id": ...}.'
    )
    response_format: Literal["mp3", "opus", "aac", "flac", "wav", "pcm"] = "mp3"
    speed: float = Field(1.0, ge=0.25, le=4.0)
    instructions: str | None = None
    stream_format: Literal["audio", "sse"] | None = Field(
        None, description="audio (also when absent): encoded audio as it is made, chunked; sse: base64 deltas."
    )
    whole_file: bool = Field(
        False, description="aistack extension: true answers one whole file with a Content-Length once synthesis has ended."
    )
    task_type: str | None = None
    language: str | None = None
    ref_audio: str | None = None
    ref_text: str | None = None
    max_new_tokens: int | None = Field(None, ge=1)

    @property
    def voice_name(self) -> str | None:
        return self.voice.id if isinstance(self.voice, VoiceReference) else self.voice

    # Checked before the union is tried, so that a wrong form gets one message saying what to send.
    @field_validator("voice", mode="before")
    @classmethod
    def _voice_name(cls, value: Any) -> Any:
        if value is None or isinstance(value, str):
            return value
        if isinstance(value, dict) and isinstance(value.get("id"), str):
            return value
        if isinstance(value, dict):
            problem = 'an object whose "id" is not a string' if "id" in value else 'an object without an "id"'
        else:
            problem = f"a JSON {_json_type(value)}"
        raise PydanticCustomError(
            "voice_form",
            'got {problem}; send a voice name as a string ("alloy", "en_US-joe-medium") or as an object {{"id": "en_US-joe-medium"}}',
            {"problem": problem},
        )


@router.post("/v1/audio/speech")
async def create_speech(body: SpeechRequest, request: Request, runtime: RuntimeDep) -> Response:
    if body.whole_file and body.stream_format is not None:
        raise malformed(
            f"whole_file asks for one file after synthesis, stream_format '{body.stream_format}' for a stream; send one of them",
            param="whole_file",
        )
    service = runtime.speech
    service.check_input(body.input)
    card = await service.select(body.model)
    extra = {name: getattr(body, name) for name in EXTENSION_FIELDS if getattr(body, name) is not None}
    plan = service.plan(card, body.voice_name, body.speed, body.instructions, extra)
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


@router.get("/v1/audio/voices")
async def list_voices(runtime: RuntimeDep, model: str | None = None) -> dict[str, Any]:
    service = runtime.speech
    card = await service.select(model)
    return {"model": card.id, "voices": [{"id": v.id, "name": v.name} for v in service.voices(card)]}


@router.get("/v1/audio/models")
async def list_audio_models(runtime: RuntimeDep) -> dict[str, Any]:
    return {"models": [{"id": card.id} for card in await runtime.speech.models()]}


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


def _json_type(value: Any) -> str:
    return {bool: "boolean", int: "number", float: "number", list: "array"}.get(type(value), type(value).__name__)
