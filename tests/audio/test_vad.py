"""Streaming Silero VAD: speech starts and stops where Piper's sentences do, whatever the piece sizes."""

from __future__ import annotations

import numpy as np
import pytest

from aistack.audio.vad import SpeechDetector, VadParams


@pytest.fixture(scope="module")
def two_sentences(piper_voice) -> tuple[np.ndarray, list[tuple[float, float]]]:
    """16 kHz float samples: 0.5 s silence, a sentence, 1 s silence, a sentence, 1 s silence; and where each sentence is."""
    import av
    from piper import SynthesisConfig

    still = SynthesisConfig(noise_scale=0.0, noise_w_scale=0.0)
    silence = np.zeros(16_000, dtype=np.float32)
    parts, spans, at = [silence[:8000]], [], 0.5
    for text in ("The quick brown fox jumps over the lazy dog.", "Children stop by on their way to school."):
        chunks = list(piper_voice.synthesize(text, syn_config=still))
        pcm = np.concatenate([c.audio_int16_array for c in chunks])
        resampler = av.AudioResampler(format="flt", layout="mono", rate=16_000)
        frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = chunks[0].sample_rate
        samples = np.concatenate([f.to_ndarray().reshape(-1) for f in [*resampler.resample(frame), *resampler.resample(None)]])
        parts += [samples, silence]
        spans.append((at, at + samples.size / 16_000))
        at += samples.size / 16_000 + 1.0
    return np.concatenate(parts), spans


@pytest.mark.parametrize("piece", [160, 512, 640, 3000])
def test_two_sentences_are_two_turns(two_sentences, piece: int) -> None:
    audio, spans = two_sentences
    detector = SpeechDetector(VadParams(silence_duration_ms=500))
    edges = [edge for i in range(0, audio.size, piece) for edge in detector.feed(audio[i:i + piece])]
    assert [e.kind for e in edges] == ["started", "stopped"] * 2
    for (start, stop), (began, ended) in zip(zip(edges[::2], edges[1::2], strict=True), spans, strict=True):
        # Piper leaves a little silence around each sentence; the edges fall within it.
        assert began - 0.1 <= start.sample / 16_000 <= began + 0.5
        assert ended - 0.5 <= stop.sample / 16_000 <= ended + 0.1
        assert stop.detected_at - stop.sample >= 0.5 * 16_000 - 512


def test_silence_is_no_speech() -> None:
    detector = SpeechDetector(VadParams())
    assert detector.feed(np.zeros(48_000, dtype=np.float32)) == [] and not detector.speaking


def test_a_detector_made_mid_stream_counts_from_where_it_began(two_sentences) -> None:
    audio, _ = two_sentences
    origin = 123_456
    from_zero = SpeechDetector(VadParams()).feed(audio)
    from_origin = SpeechDetector(VadParams(), origin=origin).feed(audio)
    assert from_zero and [(e.kind, e.sample + origin, e.detected_at + origin) for e in from_zero] == \
        [(e.kind, e.sample, e.detected_at) for e in from_origin]
