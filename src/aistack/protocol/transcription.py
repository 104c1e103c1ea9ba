"""POST /v1/audio/transcriptions and /v1/audio/translations: the form fields' values, the JSON answers
and the SSE events of a streamed transcription (OpenAI's shapes, aistack's `model` and `warning`)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from .errors import ErrorEvent

ResponseFormatName = Literal["json", "text", "srt", "vtt", "verbose_json"]
GranularityName = Literal["word", "segment"]


class DurationUsage(BaseModel):
    type: Literal["duration"] = "duration"
    seconds: int = Field(description="Whole seconds of input audio.")


class Transcription(BaseModel):
    """response_format=json."""

    text: str
    usage: DurationUsage


class TranscriptionSegment(BaseModel):
    id: int
    seek: int
    start: float
    end: float
    text: str
    tokens: list[int]
    # Present when the engine reports them.
    temperature: float | None = Field(None, exclude_if=lambda value: value is None)
    avg_logprob: float | None = Field(None, exclude_if=lambda value: value is None)
    compression_ratio: float | None = Field(None, exclude_if=lambda value: value is None)
    no_speech_prob: float | None = Field(None, exclude_if=lambda value: value is None)


class TranscriptionWord(BaseModel):
    word: str
    start: float
    end: float


class VerboseTranscription(BaseModel):
    """response_format=verbose_json; `segments` unless only word timestamps were asked for, `words` when they were."""

    task: Literal["transcribe", "translate"]
    language: str
    duration: float
    text: str
    model: str = Field(description="aistack extension: the model that served the request.")
    segments: list[TranscriptionSegment] | None = Field(None, exclude_if=lambda value: value is None)
    words: list[TranscriptionWord] | None = Field(None, exclude_if=lambda value: value is None)
    usage: DurationUsage


# The SSE events of stream=true, each sent as `event: <type>` with its JSON as `data:`.


class TranscriptTextDelta(BaseModel):
    type: Literal["transcript.text.delta"] = "transcript.text.delta"
    delta: str


class TranscriptTextSegment(BaseModel):
    """aistack extension: each decoded segment with its times."""

    type: Literal["transcript.text.segment"] = "transcript.text.segment"
    id: int
    start: float
    end: float
    text: str


class TranscriptTextDone(BaseModel):
    type: Literal["transcript.text.done"] = "transcript.text.done"
    text: str
    usage: DurationUsage


class StreamWarning(BaseModel):
    """aistack extension: sent first when the model cannot decode incrementally."""

    type: Literal["warning"] = "warning"
    code: str
    message: str


TRANSCRIPT_STREAM_EVENTS: tuple[type[BaseModel], ...] = (
    StreamWarning, TranscriptTextDelta, TranscriptTextSegment, TranscriptTextDone, ErrorEvent,
)

# What the 200 of a transcription can be besides JSON: the text formats, and the event stream.
TRANSCRIPTION_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "JSON for json and verbose_json, text for text, srt and vtt; SSE events when stream=true.",
        "content": {
            "text/plain": {"schema": {"type": "string"}},
            "application/x-subrip": {"schema": {"type": "string"}},
            "text/vtt": {"schema": {"type": "string"}},
            "text/event-stream": {"schema": {"type": "string", "description": "transcript.text.* events, then done"}},
        },
    },
}
