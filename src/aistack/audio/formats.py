"""Transcription response formats: json, text, srt, vtt, verbose_json (OpenAI shapes)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ..engines.base import Segment, Task, TokenLogprob, TranscriptionInfo

RESPONSE_FORMATS: tuple[str, ...] = ("json", "text", "srt", "vtt", "verbose_json")

MEDIA_TYPES: dict[str, str] = {
    "json": "application/json",
    "verbose_json": "application/json",
    "text": "text/plain; charset=utf-8",
    "srt": "application/x-subrip; charset=utf-8",
    "vtt": "text/vtt; charset=utf-8",
}


@dataclass(frozen=True)
class Transcript:
    model_id: str
    task: Task
    info: TranscriptionInfo
    segments: tuple[Segment, ...]

    @property
    def text(self) -> str:
        return join_text(s.text for s in self.segments)


def join_text(pieces: Any) -> str:
    return "".join(pieces).strip()


def usage(duration: float) -> dict[str, Any]:
    """Billing-style usage as OpenAI reports it for audio: whole seconds of input."""
    return {"type": "duration", "seconds": int(math.ceil(duration))}


def render(transcript: Transcript, response_format: str, granularities: frozenset[str], logprobs: bool = False) -> str | dict[str, Any]:
    if response_format == "text":
        return transcript.text + "\n"
    if response_format == "srt":
        return to_srt(transcript.segments)
    if response_format == "vtt":
        return to_vtt(transcript.segments)
    if response_format == "verbose_json":
        return to_verbose_json(transcript, granularities)
    body: dict[str, Any] = {"text": transcript.text}
    if logprobs:
        body["logprobs"] = [logprob_json(p) for s in transcript.segments for p in s.logprobs]
    body["usage"] = usage(transcript.info.duration)
    return body


def logprob_json(entry: TokenLogprob) -> dict[str, Any]:
    return {"token": entry.token, "logprob": round(entry.logprob, 6), "bytes": list(entry.bytes)}


def to_verbose_json(transcript: Transcript, granularities: frozenset[str]) -> dict[str, Any]:
    body: dict[str, Any] = {
        "task": transcript.task,
        "language": transcript.info.language,
        "duration": round(transcript.info.duration, 3),
        "text": transcript.text,
        "model": transcript.model_id,
    }
    if not granularities or "segment" in granularities:
        body["segments"] = [segment_json(s) for s in transcript.segments]
    if "word" in granularities:
        body["words"] = [
            {"word": w.word.strip(), "start": round(w.start, 3), "end": round(w.end, 3)}
            for s in transcript.segments
            for w in s.words
        ]
    body["usage"] = usage(transcript.info.duration)
    return body


def segment_json(segment: Segment) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": segment.id,
        "seek": segment.seek if segment.seek is not None else 0,
        "start": round(segment.start, 3),
        "end": round(segment.end, 3),
        "text": segment.text.strip(),
        "tokens": list(segment.tokens),
    }
    for name in ("temperature", "avg_logprob", "compression_ratio", "no_speech_prob"):
        value = getattr(segment, name)
        if value is not None:
            body[name] = value
    return body


def _timestamp(seconds: float, separator: str) -> str:
    millis = int(round(max(seconds, 0.0) * 1000))
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    secs, millis = divmod(millis, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{separator}{millis:03d}"


def to_srt(segments: tuple[Segment, ...]) -> str:
    blocks = [
        f"{index}\n{_timestamp(s.start, ',')} --> {_timestamp(s.end, ',')}\n{s.text.strip()}\n"
        for index, s in enumerate(segments, start=1)
    ]
    return "\n".join(blocks)


def to_vtt(segments: tuple[Segment, ...]) -> str:
    blocks = [f"{_timestamp(s.start, '.')} --> {_timestamp(s.end, '.')}\n{s.text.strip()}\n" for s in segments]
    return "WEBVTT\n\n" + "\n".join(blocks)
