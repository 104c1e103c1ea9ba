"""Transcription response formats (docs/api.md): json, text, srt, vtt, verbose_json in OpenAI's shapes."""

from __future__ import annotations

import json
import re

import pytest

from aistack.audio.formats import MEDIA_TYPES, RESPONSE_FORMATS, Transcript, render
from aistack.engines.base import Segment, TranscriptionInfo, Word

SEGMENTS = (
    Segment(
        id=0,
        seek=0,
        start=0.0,
        end=2.5,
        text=" Hello there.",
        tokens=(50364, 2425, 456, 13),
        temperature=0.0,
        avg_logprob=-0.25,
        compression_ratio=1.1,
        no_speech_prob=0.01,
        words=(Word(0.0, 0.8, " Hello", 0.9), Word(0.8, 1.4, " there.", 0.8)),
    ),
    Segment(
        id=1, seek=250, start=2.5, end=61.0049, text=" How are you?",
        words=(Word(2.6, 3.0, " How"), Word(3.0, 3.2, " are"), Word(3.2, 3.5, " you?")),
    ),
    # Past one hour, with a fractional millisecond to round.
    Segment(id=2, seek=360000, start=3725.0006, end=3726.9999, text=" Goodbye."),
)
TRANSCRIPT = Transcript("whisper-small", "transcribe", TranscriptionInfo(language="en", duration=3727.2), SEGMENTS)

SRT_TIME = r"(\d{2}):([0-5]\d):([0-5]\d),(\d{3})"
VTT_TIME = r"(\d{2}):([0-5]\d):([0-5]\d)\.(\d{3})"


def seconds(match: tuple[str, ...]) -> float:
    h, m, s, ms = (int(x) for x in match)
    return h * 3600 + m * 60 + s + ms / 1000


def parse_srt(body: str) -> list[tuple[int, float, float, str]]:
    assert body.endswith("\n") and not body.endswith("\n\n\n")
    cues = []
    for block in body.strip("\n").split("\n\n"):
        lines = block.split("\n")
        assert len(lines) == 3, block
        assert re.fullmatch(r"[1-9]\d*", lines[0]), lines[0]
        times = re.fullmatch(f"{SRT_TIME} --> {SRT_TIME}", lines[1])
        assert times, lines[1]
        groups = times.groups()
        assert lines[2] and lines[2] == lines[2].strip()
        cues.append((int(lines[0]), seconds(groups[:4]), seconds(groups[4:]), lines[2]))
    return cues


def parse_vtt(body: str) -> list[tuple[float, float, str]]:
    assert body.startswith("WEBVTT\n\n")
    cues = []
    for block in body[len("WEBVTT\n\n"):].strip("\n").split("\n\n"):
        lines = block.split("\n")
        assert len(lines) == 2, block
        times = re.fullmatch(f"{VTT_TIME} --> {VTT_TIME}", lines[0])
        assert times, lines[0]
        groups = times.groups()
        cues.append((seconds(groups[:4]), seconds(groups[4:]), lines[1]))
    return cues


def test_json_is_text_and_usage():
    body = render(TRANSCRIPT, "json", frozenset())
    assert body == {"text": "Hello there. How are you? Goodbye.", "usage": {"type": "duration", "seconds": 3728}}
    json.dumps(body)


def test_text_is_the_transcript_and_a_newline():
    assert render(TRANSCRIPT, "text", frozenset()) == "Hello there. How are you? Goodbye.\n"


def test_srt():
    body = render(TRANSCRIPT, "srt", frozenset())
    assert isinstance(body, str)
    assert parse_srt(body) == [
        (1, 0.0, 2.5, "Hello there."),
        (2, 2.5, 61.005, "How are you?"),
        (3, 3725.001, 3727.0, "Goodbye."),
    ]
    assert "01:02:05,001 --> 01:02:07,000" in body
    assert "00:00:02,500 --> 00:01:01,005" in body


def test_vtt():
    body = render(TRANSCRIPT, "vtt", frozenset())
    assert isinstance(body, str)
    assert parse_vtt(body) == [
        (0.0, 2.5, "Hello there."),
        (2.5, 61.005, "How are you?"),
        (3725.001, 3727.0, "Goodbye."),
    ]
    assert "01:02:05.001 --> 01:02:07.000" in body


def test_timestamps_well_past_an_hour_and_below_zero():
    segments = (
        Segment(id=0, start=-0.2, end=0.0004, text="a"),
        Segment(id=1, start=36000.0, end=36059.9996, text="b"),  # ten hours; rounds up to the next minute
    )
    transcript = Transcript("m", "transcribe", TranscriptionInfo("en", 36060.0), segments)
    assert parse_srt(render(transcript, "srt", frozenset())) == [(1, 0.0, 0.0, "a"), (2, 36000.0, 36060.0, "b")]
    assert "10:01:00,000" in render(transcript, "srt", frozenset())
    assert "10:01:00.000" in render(transcript, "vtt", frozenset())


def test_no_segments():
    empty = Transcript("m", "transcribe", TranscriptionInfo("en", 0.4), ())
    assert render(empty, "text", frozenset()) == "\n"
    assert render(empty, "json", frozenset()) == {"text": "", "usage": {"type": "duration", "seconds": 1}}
    assert render(empty, "vtt", frozenset()).startswith("WEBVTT\n")
    assert "-->" not in render(empty, "srt", frozenset())


def test_verbose_json_default_has_segments_and_no_words():
    body = render(TRANSCRIPT, "verbose_json", frozenset())
    assert isinstance(body, dict)
    json.dumps(body)
    assert body["task"] == "transcribe"
    assert body["language"] == "en"
    assert body["duration"] == 3727.2
    assert body["text"] == "Hello there. How are you? Goodbye."
    assert body["model"] == "whisper-small"
    assert body["usage"] == {"type": "duration", "seconds": 3728}
    assert "words" not in body
    first, second, third = body["segments"]
    assert first == {
        "id": 0,
        "seek": 0,
        "start": 0.0,
        "end": 2.5,
        "text": "Hello there.",
        "tokens": [50364, 2425, 456, 13],
        "temperature": 0.0,
        "avg_logprob": -0.25,
        "compression_ratio": 1.1,
        "no_speech_prob": 0.01,
    }
    # What the backend did not report is left out rather than made up.
    assert second == {"id": 1, "seek": 250, "start": 2.5, "end": 61.005, "text": "How are you?", "tokens": []}
    assert third["start"] == 3725.001 and third["end"] == 3727.0


def test_verbose_json_with_words_and_segments():
    body = render(TRANSCRIPT, "verbose_json", frozenset({"word", "segment"}))
    assert [s["id"] for s in body["segments"]] == [0, 1, 2]
    assert body["words"] == [
        {"word": "Hello", "start": 0.0, "end": 0.8},
        {"word": "there.", "start": 0.8, "end": 1.4},
        {"word": "How", "start": 2.6, "end": 3.0},
        {"word": "are", "start": 3.0, "end": 3.2},
        {"word": "you?", "start": 3.2, "end": 3.5},
    ]


def test_verbose_json_with_only_words_omits_segments():
    body = render(TRANSCRIPT, "verbose_json", frozenset({"word"}))
    assert "segments" not in body
    assert [w["word"] for w in body["words"]] == ["Hello", "there.", "How", "are", "you?"]
    assert {"task", "language", "duration", "text", "usage"} <= body.keys()


def test_verbose_json_with_only_segments_has_no_words():
    body = render(TRANSCRIPT, "verbose_json", frozenset({"segment"}))
    assert "words" not in body and len(body["segments"]) == 3


def test_translation_task_is_reported():
    translated = Transcript("whisper-base", "translate", TranscriptionInfo("de", 1.0), (Segment(0, 0.0, 1.0, " Good morning."),))
    body = render(translated, "verbose_json", frozenset())
    assert (body["task"], body["language"], body["text"]) == ("translate", "de", "Good morning.")


def test_every_format_has_a_media_type():
    assert set(RESPONSE_FORMATS) == set(MEDIA_TYPES) == {"json", "text", "srt", "vtt", "verbose_json"}
    assert MEDIA_TYPES["vtt"].startswith("text/vtt")
    assert MEDIA_TYPES["json"] == MEDIA_TYPES["verbose_json"] == "application/json"


@pytest.mark.parametrize("fmt", ["srt", "vtt", "text"])
def test_plain_formats_are_strings(fmt):
    assert isinstance(render(TRANSCRIPT, fmt, frozenset({"word"})), str)
