"""POST /v1/audio/transcriptions and /v1/audio/translations: the form fields' values, the JSON answers
and the SSE events of a streamed transcription (OpenAI's shapes, aistack's `model` and `warning`)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any, Literal

from pydantic import BaseModel, Field

from ..audio.formats import logprob_json
from ..engines.base import TokenLogprob, VadChunking
from ..errors import malformed
from .errors import ErrorEvent
from .streams import named_events_schema

# diarized_json is accepted only to be refused with the reason (no speaker diarization here).
ResponseFormatName = Literal["json", "text", "srt", "vtt", "verbose_json", "diarized_json"]
GranularityName = Literal["word", "segment"]
IncludeName = Literal["logprobs"]
MAX_KEYWORDS = 100


class TokenLogprobEntry(BaseModel):
    """One token of the transcript and its log probability (include[]=logprobs)."""

    token: str
    logprob: float
    bytes: list[int]


class DurationUsage(BaseModel):
    type: Literal["duration"] = "duration"
    seconds: int = Field(description="Whole seconds of input audio.")


class Transcription(BaseModel):
    """response_format=json."""

    text: str
    logprobs: list[TokenLogprobEntry] | None = Field(None, exclude_if=lambda value: value is None)
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
    logprobs: list[TokenLogprobEntry] | None = Field(None, exclude_if=lambda value: value is None)


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
            "text/event-stream": {"schema": named_events_schema(TRANSCRIPT_STREAM_EVENTS)},
        },
    },
}


def logprob_entries(logprobs: Iterable[TokenLogprob]) -> list[TokenLogprobEntry]:
    return [TokenLogprobEntry.model_validate(logprob_json(p)) for p in logprobs]


def checked_keywords(keywords: list[str] | None) -> tuple[str, ...]:
    """keywords[] as OpenAI checks them: words or short phrases, without `<`, `>` or line breaks."""
    kept = tuple(k.strip() for k in keywords or () if k.strip())
    if len(kept) > MAX_KEYWORDS:
        raise malformed(f"keywords[] has {len(kept)} entries; send at most {MAX_KEYWORDS}", param="keywords")
    for keyword in kept:
        if any(ch in keyword for ch in "<>\r\n"):
            raise malformed(f"keyword {keyword!r} contains '<', '>' or a line break; send plain words or phrases", param="keywords")
    return kept


def chunking_strategy(value: str | None, vad_type: str | None, threshold: float | None, prefix_padding_ms: int | None,
                      silence_duration_ms: int | None) -> VadChunking | None:
    """OpenAI's chunking_strategy as a multipart form carries it: "auto", a JSON object, or the SDK's
    bracketed fields (chunking_strategy[type]=server_vad, chunking_strategy[threshold]=...)."""
    fields: dict[str, Any] = {}
    if value is not None and value.strip().startswith("{"):
        try:
            parsed = json.loads(value)
        except ValueError:
            parsed = None
        if not isinstance(parsed, dict):
            raise malformed('chunking_strategy is not a JSON object; send "auto" or {"type": "server_vad", ...}',
                            param="chunking_strategy")
        fields = parsed
        vad_type = fields.get("type")
    elif value is not None:
        if value.strip() != "auto":
            raise malformed(f'chunking_strategy {value!r} is not known; send "auto" or {{"type": "server_vad", ...}}',
                            param="chunking_strategy")
        return VadChunking()
    else:
        fields = {"threshold": threshold, "prefix_padding_ms": prefix_padding_ms, "silence_duration_ms": silence_duration_ms}
        if vad_type is None and any(v is not None for v in fields.values()):
            raise malformed("chunking_strategy[...] fields need chunking_strategy[type]=server_vad", param="chunking_strategy")
    if vad_type is None:
        return None
    if vad_type != "server_vad":
        raise malformed(f"chunking_strategy type {vad_type!r} is not known; the type is server_vad", param="chunking_strategy")
    return _vad_chunking(fields)


def _vad_chunking(fields: dict[str, Any]) -> VadChunking:
    threshold, padding, silence = fields.get("threshold"), fields.get("prefix_padding_ms"), fields.get("silence_duration_ms")
    if threshold is not None and (not isinstance(threshold, int | float) or not 0 < threshold < 1):
        raise malformed("chunking_strategy threshold is a number between 0 and 1 (exclusive)", param="chunking_strategy")
    for name, ms in (("prefix_padding_ms", padding), ("silence_duration_ms", silence)):
        if ms is not None and (not isinstance(ms, int) or isinstance(ms, bool) or not 0 <= ms <= 10_000):
            raise malformed(f"chunking_strategy {name} is whole milliseconds from 0 to 10000", param="chunking_strategy")
    return VadChunking(threshold=threshold, prefix_padding_ms=padding, silence_duration_ms=silence)
