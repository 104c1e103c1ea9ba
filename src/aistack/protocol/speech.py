"""POST /v1/audio/speech, GET /v1/audio/voices and GET /v1/audio/models: OpenAI's speech request with
aistack's `whole_file` (other fields are kept for the engines that take them), the voice and model
lists, and the SSE events of stream_format=sse."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic_core import PydanticCustomError

from ..audio.encode import SPEECH_MEDIA_TYPES
from .errors import ErrorEvent
from .streams import named_events_schema


class VoiceReference(BaseModel):
    """The OpenAI SDK's custom-voice form, `{"id": "..."}`."""

    id: str


class SpeechRequest(BaseModel):
    # Fields beyond these are kept: an engine may take more (its `pass_through_fields`); the others ignore them.
    model_config = ConfigDict(extra="allow")

    model: str | None = Field(None, description="A TTS model id, or tts-1 / tts-1-hd / gpt-4o-mini-tts for the default.")
    # Documented, not validated here: the speech service refuses empty input with its own words.
    input: str = Field(description="The text to speak.", json_schema_extra={"minLength": 1})
    voice: str | VoiceReference | None = Field(
        None, description='An engine voice, an alias, or an OpenAI voice name (alloy, echo, ...); as a string or as {"id": ...}.'
    )
    response_format: Literal["mp3", "opus", "aac", "flac", "wav", "pcm"] = "mp3"
    speed: float = Field(1.0, ge=0.25, le=4.0)
    instructions: str | None = None
    stream_format: Literal["audio", "sse"] | None = Field(
        None, description="audio (also when absent): encoded audio as it is made, chunked; sse: base64 deltas."
    )
    # Strict, as documented: `0` or `"false"` is a mistake to point out, not a boolean to guess.
    whole_file: bool = Field(
        False, strict=True,
        description="aistack extension: true answers one whole file with a Content-Length once synthesis has ended.",
    )

    @property
    def voice_name(self) -> str | None:
        return self.voice.id if isinstance(self.voice, VoiceReference) else self.voice

    def extension_fields(self) -> dict[str, Any]:
        """The fields the request set beyond OpenAI's and aistack's."""
        return dict(self.model_extra or {})

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


class Voice(BaseModel):
    id: str
    name: str


class VoiceList(BaseModel):
    model: str
    voices: list[Voice]


class AudioModel(BaseModel):
    id: str


class AudioModelList(BaseModel):
    models: list[AudioModel]


# The SSE events of stream_format=sse, each sent as `event: <type>` with its JSON as `data:`.


class SpeechAudioDelta(BaseModel):
    type: Literal["speech.audio.delta"] = "speech.audio.delta"
    audio: str = Field(description="Base64 of the next piece of the encoded file.")


class SpeechUsage(BaseModel):
    input_characters: int
    output_audio_seconds: float


class SpeechAudioDone(BaseModel):
    type: Literal["speech.audio.done"] = "speech.audio.done"
    usage: SpeechUsage


SPEECH_STREAM_EVENTS: tuple[type[BaseModel], ...] = (SpeechAudioDelta, SpeechAudioDone, ErrorEvent)

SPEECH_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The audio in response_format, sent as it is made (or whole with whole_file); "
        "speech.audio.* SSE events with stream_format=sse.",
        "content": {
            **{media_type: {"schema": {"type": "string", "format": "binary"}}
               for media_type in dict.fromkeys(SPEECH_MEDIA_TYPES.values())},
            "text/event-stream": {"schema": named_events_schema(SPEECH_STREAM_EVENTS)},
        },
    },
}


def _json_type(value: Any) -> str:
    return {bool: "boolean", int: "number", float: "number", list: "array"}.get(type(value), type(value).__name__)
