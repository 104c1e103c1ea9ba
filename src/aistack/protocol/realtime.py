"""GET /v1/realtime (WebSocket): the client and server events of a transcription session, shaped as the
`openai` package's realtime types, in both dialects: GA (`session.update` with `session.type:
"transcription"`) and the earlier one (`?intent=transcription`, `transcription_session.update`)."""

from __future__ import annotations

import json
import uuid
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from ..errors import AistackError, ErrorKind, malformed

LOGPROBS_INCLUDE = "item.input_audio_transcription.logprobs"


def _id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:20]}"


def event_id() -> str:
    return _id("event")


def item_id() -> str:
    return _id("item")


def session_id() -> str:
    return _id("sess")


class _Lenient(BaseModel):
    # Clients send fields a transcription session has no use for (create_response, modalities, ...).
    model_config = ConfigDict(extra="ignore")


# --- configuration a client sends -------------------------------------------------------------


class TranscriptionConfig(_Lenient):
    model: str | None = None
    language: str | None = None
    prompt: str | None = None


class TurnDetectionConfig(_Lenient):
    type: Literal["server_vad", "semantic_vad"] = "server_vad"
    threshold: float | None = Field(None, ge=0.0, le=1.0)
    prefix_padding_ms: int | None = Field(None, ge=0, le=10_000)
    silence_duration_ms: int | None = Field(None, ge=0, le=10_000)


class NoiseReductionConfig(_Lenient):
    type: Literal["near_field", "far_field"] | None = None


class AudioFormatConfig(_Lenient):
    type: Literal["audio/pcm", "audio/pcmu", "audio/pcma"] = "audio/pcm"
    rate: Literal[24000] | None = None


class AudioInputConfig(_Lenient):
    format: AudioFormatConfig | None = None
    transcription: TranscriptionConfig | None = None
    turn_detection: TurnDetectionConfig | None = None
    noise_reduction: NoiseReductionConfig | None = None


class AudioConfig(_Lenient):
    input: AudioInputConfig | None = None


class TranscriptionSessionConfig(_Lenient):
    """GA: the `session` of `session.update`."""

    type: Literal["transcription"]
    audio: AudioConfig | None = None
    include: list[Literal["item.input_audio_transcription.logprobs"]] | None = None


class LegacySessionConfig(_Lenient):
    """The earlier dialect: the `session` of `transcription_session.update`."""

    input_audio_format: Literal["pcm16", "g711_ulaw", "g711_alaw"] | None = None
    input_audio_transcription: TranscriptionConfig | None = None
    turn_detection: TurnDetectionConfig | None = None
    input_audio_noise_reduction: NoiseReductionConfig | None = None
    include: list[Literal["item.input_audio_transcription.logprobs"]] | None = None


# --- client events ---------------------------------------------------------------------------


class _ClientEvent(_Lenient):
    event_id: str | None = None


class SessionUpdate(_ClientEvent):
    type: Literal["session.update"]
    session: TranscriptionSessionConfig


class TranscriptionSessionUpdate(_ClientEvent):
    type: Literal["transcription_session.update"]
    session: LegacySessionConfig


class InputAudioBufferAppend(_ClientEvent):
    type: Literal["input_audio_buffer.append"]
    audio: str = Field(description="Base64 audio in the session's input format.")


class InputAudioBufferCommit(_ClientEvent):
    type: Literal["input_audio_buffer.commit"]


class InputAudioBufferClear(_ClientEvent):
    type: Literal["input_audio_buffer.clear"]


ClientEvent = Annotated[
    SessionUpdate | TranscriptionSessionUpdate | InputAudioBufferAppend | InputAudioBufferCommit | InputAudioBufferClear,
    Field(discriminator="type"),
]
CLIENT_EVENT_TYPES = ("session.update", "transcription_session.update", "input_audio_buffer.append",
                      "input_audio_buffer.commit", "input_audio_buffer.clear")
_CLIENT_EVENT = TypeAdapter[Any](ClientEvent)


class BadEvent(AistackError):
    """A client event that cannot be served, with the event_id it came with (if it could be read)."""

    def __init__(self, error: AistackError, client_event_id: str | None) -> None:
        super().__init__(error.kind, error.message, provider=error.provider, param=error.param)
        self.client_event_id = client_event_id


def parse_client_event(frame: str | bytes) -> SessionUpdate | TranscriptionSessionUpdate | InputAudioBufferAppend | \
        InputAudioBufferCommit | InputAudioBufferClear:
    """One frame as a typed client event, or BadEvent saying what to send instead."""
    try:
        raw = json.loads(frame)
    except (ValueError, RecursionError) as error:
        raise BadEvent(malformed(f"the event is not JSON ({error}); send each event as one JSON object"), None) from None
    if not isinstance(raw, dict):
        raise BadEvent(malformed("the event is not a JSON object; send {\"type\": ..., ...}"), None)
    client_event_id = raw.get("event_id") if isinstance(raw.get("event_id"), str) else None
    kind = raw.get("type")
    if kind not in CLIENT_EVENT_TYPES:
        named = f"type '{kind}'" if isinstance(kind, str) else "no string `type`"
        message = f"the event has {named}; a transcription session takes: {', '.join(CLIENT_EVENT_TYPES)}"
        raise BadEvent(malformed(message, param="type"), client_event_id)
    try:
        event = _CLIENT_EVENT.validate_python(raw)
    except ValidationError as error:
        raise BadEvent(_invalid(error), client_event_id) from None
    assert isinstance(event, SessionUpdate | TranscriptionSessionUpdate | InputAudioBufferAppend | InputAudioBufferCommit
                      | InputAudioBufferClear)
    return event


def _invalid(error: ValidationError) -> AistackError:
    first = error.errors()[0]
    # The discriminator's own tag comes first in the location; the client never wrote it.
    location = [str(part) for part in first["loc"][1:]]
    param = ".".join(location) or None
    hint = ""
    if location[:1] == ["session"] and location[-1:] == ["type"]:
        hint = "; this gateway serves transcription sessions only: set session.type to \"transcription\""
    return malformed(f"{param or 'the event'}: {first['msg']}{hint}", param=param)


# --- server events ---------------------------------------------------------------------------


class _ServerEvent(BaseModel):
    event_id: str = Field(default_factory=event_id)


class AudioFormat(BaseModel):
    type: Literal["audio/pcm", "audio/pcmu", "audio/pcma"]
    rate: int


class TranscriptionView(BaseModel):
    model: str = Field(description="The model that serves this session's decodes.")
    language: str | None
    prompt: str | None


class ServerVadView(BaseModel):
    type: Literal["server_vad"] = "server_vad"
    threshold: float
    prefix_padding_ms: int
    silence_duration_ms: int


class AudioInputView(BaseModel):
    format: AudioFormat
    transcription: TranscriptionView
    turn_detection: ServerVadView | None
    noise_reduction: None = Field(None, description="Noise reduction is not applied; always null.")


class AudioView(BaseModel):
    input: AudioInputView


class TranscriptionSession(BaseModel):
    """GA: a transcription session, as session.created and session.updated carry it."""

    type: Literal["transcription"] = "transcription"
    id: str
    object: Literal["realtime.transcription_session"] = "realtime.transcription_session"
    expires_at: int = Field(description="Unix time at which the session's maximum length is reached.")
    audio: AudioView
    include: list[str]


class LegacyTranscriptionSession(BaseModel):
    """The earlier dialect's transcription session object."""

    id: str
    object: Literal["realtime.transcription_session"] = "realtime.transcription_session"
    expires_at: int
    input_audio_format: Literal["pcm16", "g711_ulaw", "g711_alaw"]
    input_audio_transcription: TranscriptionView
    turn_detection: ServerVadView | None
    input_audio_noise_reduction: None = None
    include: list[str]
    modalities: list[Literal["text"]] = ["text"]


class SessionCreated(_ServerEvent):
    type: Literal["session.created"] = "session.created"
    session: TranscriptionSession


class SessionUpdated(_ServerEvent):
    type: Literal["session.updated"] = "session.updated"
    session: TranscriptionSession


class TranscriptionSessionCreated(_ServerEvent):
    type: Literal["transcription_session.created"] = "transcription_session.created"
    session: LegacyTranscriptionSession


class TranscriptionSessionUpdated(_ServerEvent):
    type: Literal["transcription_session.updated"] = "transcription_session.updated"
    session: LegacyTranscriptionSession


class SpeechStarted(_ServerEvent):
    type: Literal["input_audio_buffer.speech_started"] = "input_audio_buffer.speech_started"
    audio_start_ms: int
    item_id: str


class SpeechStopped(_ServerEvent):
    type: Literal["input_audio_buffer.speech_stopped"] = "input_audio_buffer.speech_stopped"
    audio_end_ms: int
    item_id: str


class Committed(_ServerEvent):
    type: Literal["input_audio_buffer.committed"] = "input_audio_buffer.committed"
    item_id: str
    previous_item_id: str | None


class Cleared(_ServerEvent):
    type: Literal["input_audio_buffer.cleared"] = "input_audio_buffer.cleared"


class LogProb(BaseModel):
    token: str
    bytes: list[int]
    logprob: float


class TranscriptionDelta(_ServerEvent):
    type: Literal["conversation.item.input_audio_transcription.delta"] = "conversation.item.input_audio_transcription.delta"
    item_id: str
    content_index: int = 0
    delta: str
    logprobs: list[LogProb] | None = None


class DurationUsage(BaseModel):
    type: Literal["duration"] = "duration"
    seconds: float = Field(description="Seconds of audio in the turn.")


class TranscriptionCompleted(_ServerEvent):
    type: Literal["conversation.item.input_audio_transcription.completed"] = \
        "conversation.item.input_audio_transcription.completed"
    item_id: str
    content_index: int = 0
    transcript: str
    usage: DurationUsage
    logprobs: list[LogProb] | None = None


class FailureDetail(BaseModel):
    type: str
    code: str = Field(description="aistack's error kind (busy, unknown, ...).")
    message: str
    param: str | None = None


class TranscriptionFailed(_ServerEvent):
    type: Literal["conversation.item.input_audio_transcription.failed"] = \
        "conversation.item.input_audio_transcription.failed"
    item_id: str
    content_index: int = 0
    error: FailureDetail


class ErrorDetail(BaseModel):
    type: str = Field(description="The OpenAI error type (invalid_request_error, server_error).")
    code: str = Field(description="aistack's error kind, as the HTTP envelope's `code`.")
    kind: str = Field(description="aistack extension: the error kind.")
    provider: str = Field(description="aistack extension: who failed.")
    message: str
    param: str | None = None
    event_id: str | None = Field(None, description="The client event that caused it, when it had an id.")


class ErrorEvent(_ServerEvent):
    type: Literal["error"] = "error"
    error: ErrorDetail


ServerEvent = (SessionCreated | SessionUpdated | TranscriptionSessionCreated | TranscriptionSessionUpdated | SpeechStarted
               | SpeechStopped | Committed | Cleared | TranscriptionDelta | TranscriptionCompleted | TranscriptionFailed
               | ErrorEvent)


def error_event(error: AistackError, client_event_id: str | None = None) -> ErrorEvent:
    body = error.envelope()["error"]
    return ErrorEvent(error=ErrorDetail(type=body["type"], code=body["code"], kind=body["kind"], provider=body["provider"],
                                        message=body["message"], param=body["param"], event_id=client_event_id))


def failure_detail(error: AistackError) -> FailureDetail:
    body = error.envelope()["error"]
    return FailureDetail(type=body["type"], code=body["code"], message=body["message"], param=body["param"])


def encode(event: ServerEvent) -> str:
    return event.model_dump_json()


def too_large(max_bytes: int) -> AistackError:
    return AistackError(ErrorKind.OVERFLOW, f"the event is over {max_bytes} bytes; send audio in smaller appends "
                        "(e.g. 20-100 ms each)")
