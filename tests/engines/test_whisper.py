"""The Whisper engine's guards on real weights: no decoding without speech, pieces bounded in length
and tokens, runaway decodes cut off, garbage prompts dropped."""

from __future__ import annotations

from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest

from aistack.audio.decode import decode_audio
from aistack.engines.base import TranscribeOptions
from aistack.engines.whisper import (
    SAMPLE_RATE,
    WhisperBackend,
    WhisperTranscriber,
    card_for,
    speech_pieces,
    token_bound,
    token_loop,
    usable_prompt,
)
from aistack.settings import Settings, WhisperSettings
from aistack.weights.catalog import WHISPER_BY_ID

pytestmark = pytest.mark.slow

GARBAGE_PROMPT = b"\x80\x81\xfe".decode("utf-8", errors="replace")  # what a form field of those bytes becomes


class DecodeRecorder:
    """The real faster-whisper model, recording the audio of each decode it is asked for."""

    def __init__(self, model) -> None:
        self._model = model
        self.decoded_samples: list[int] = []

    def transcribe(self, audio, **options):
        self.decoded_samples.append(int(audio.shape[0]))
        return self._model.transcribe(audio, **options)

    def __getattr__(self, name: str):
        return getattr(self._model, name)


def load(models_cache: Path, model_id: str, **whisper) -> tuple[WhisperBackend, WhisperTranscriber]:
    from aistack.runtime import build_runtime

    # In-process: these tests look inside the engine (the host's tests are in test_worker_process.py).
    runtime = build_runtime(Settings(cache_dir=models_cache, whisper=WhisperSettings(**{"worker_process": False, **whisper})))
    runtime.prepare_weights()
    backend = runtime.backends["faster-whisper"]
    assert isinstance(backend, WhisperBackend)
    return backend, backend.load(card_for(WHISPER_BY_ID[model_id]))


@pytest.fixture(scope="module")
def tiny(models_cache: Path):
    backend, transcriber = load(models_cache, "whisper-tiny.en")
    yield transcriber
    backend.unload(transcriber)


def noise(seconds: float) -> np.ndarray:
    return (np.random.RandomState(0).randn(int(seconds * SAMPLE_RATE)) * 0.01).astype(np.float32)


@pytest.mark.parametrize("samples", [160, 2 * SAMPLE_RATE], ids=["10 ms", "2 s of silence"])
def test_audio_without_speech_is_an_empty_transcript_without_decoding(tiny: WhisperTranscriber, samples: int) -> None:
    recorder = DecodeRecorder(tiny._model)
    tiny._model = recorder
    try:
        info, segments = tiny.transcribe(np.zeros(samples, np.float32), TranscribeOptions(prompt=GARBAGE_PROMPT))
        assert list(segments) == []
    finally:
        tiny._model = recorder._model
    assert recorder.decoded_samples == []
    assert info.duration == pytest.approx(samples / SAMPLE_RATE)
    assert info.language == "en"


def test_noise_taken_for_speech_decodes_within_its_token_bound(models_cache: Path) -> None:
    # A threshold this low makes Silero call noise speech, so Whisper decodes it and, unguarded, loops
    # ("a little bit of a little bit of ...") until its context is full.
    backend, transcriber = load(models_cache, "whisper-tiny.en", vad_threshold=0.01)
    try:
        audio = noise(15)
        pieces = speech_pieces(audio, 0.01, transcriber._settings.max_piece_s)
        info, segments = transcriber.transcribe(audio, TranscribeOptions(prompt=GARBAGE_PROMPT))
        segments = list(segments)
    finally:
        backend.unload(transcriber)
    assert pieces, "the noise should count as speech at this threshold"
    words = [t for s in segments for t in s.tokens if t < transcriber._end_of_text]
    assert len(words) <= sum(token_bound((end - start) / SAMPLE_RATE) for start, end in pieces)
    for segment in segments:
        assert not token_loop([t for t in segment.tokens if t < transcriber._end_of_text]), segment.text
        assert "\ufffd" not in segment.text
    assert info.duration == pytest.approx(15)


def test_long_speech_is_decoded_in_bounded_pieces_on_one_clock(tiny: WhisperTranscriber, long_wav: Path) -> None:
    audio = decode_audio(long_wav.read_bytes())
    limit = tiny._settings.max_piece_s * SAMPLE_RATE
    recorder = DecodeRecorder(tiny._model)
    tiny._model = recorder
    try:
        info, segments = tiny.transcribe(audio, TranscribeOptions(word_timestamps=True))
        segments = list(segments)
    finally:
        tiny._model = recorder._model
    assert len(recorder.decoded_samples) >= 2 and all(n <= limit for n in recorder.decoded_samples)
    assert [s.id for s in segments] == list(range(len(segments)))
    assert all(0 <= s.start <= s.end <= info.duration for s in segments)
    assert all(a.end <= b.start + 0.01 for a, b in pairwise(segments))
    assert [s.seek for s in segments] == sorted(s.seek for s in segments)
    words = [w for s in segments for w in s.words]
    assert [w.start for w in words] == sorted(w.start for w in words)
    assert words[-1].end > info.duration / 2  # later pieces are offset, not stamped from zero


def test_speech_pieces_cover_the_speech_in_order_within_the_limit(long_wav: Path) -> None:
    audio = decode_audio(long_wav.read_bytes())
    pieces = speech_pieces(audio, 0.5, 10.0)
    assert len(pieces) >= 6
    assert all(0 < end - start <= 10 * SAMPLE_RATE for start, end in pieces)
    assert all(a[1] <= b[0] for a, b in pairwise(pieces))
    assert pieces[0][0] < SAMPLE_RATE and pieces[-1][1] > audio.shape[0] - SAMPLE_RATE
    assert speech_pieces(np.zeros(2 * SAMPLE_RATE, np.float32), 0.5, 10.0) == []
    assert speech_pieces(np.zeros(0, np.float32), 0.5, 10.0) == []


def test_token_bound_grows_with_the_audio_and_fits_the_context() -> None:
    assert token_bound(0.01) < token_bound(2) < token_bound(10) <= 220
    assert token_bound(600) == 220


def test_token_loop_is_a_repeated_ngram_not_a_repeated_word() -> None:
    phrase = [257, 1310, 1643, 286]  # " a little bit of"
    assert token_loop([314, 1101, *phrase * 6])
    assert token_loop([11] * 25)
    assert not token_loop([3919, 11, 645, 11, 645, 11, 645, 13])  # "No, no, no, no."
    assert not token_loop(list(range(100, 300)))


@pytest.mark.parametrize(("prompt", "expected"), [
    (GARBAGE_PROMPT, None),
    ("\ufffd \x00\x07 \ufffd", None),
    ("Quick \ufffdBrown\x00 Fox.", "Quick Brown Fox."),
    ("  ", None),
    (None, None),
    ("Grüße, 東京", "Grüße, 東京"),
])
def test_usable_prompt_drops_replacement_characters_and_control_codes(prompt: str | None, expected: str | None) -> None:
    assert usable_prompt(prompt) == expected
