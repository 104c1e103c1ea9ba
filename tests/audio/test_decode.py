"""PyAV decoding: any container FFmpeg reads becomes 16 kHz mono float32; broken input is refused."""

from __future__ import annotations

import io
import subprocess
import wave
from pathlib import Path

import av
import numpy as np
import pytest

from aistack.audio.decode import SAMPLE_RATE, decode_audio
from aistack.errors import AistackError


def wav_seconds(path: Path) -> float:
    with wave.open(str(path)) as w:
        return w.getnframes() / w.getframerate()


def reencode(path: Path, container_format: str, codec: str, rate: int) -> bytes:
    """The same speech in another container and codec, made with PyAV."""
    out = io.BytesIO()
    with av.open(str(path)) as source, av.open(out, mode="w", format=container_format) as target:
        stream = target.add_stream(codec, rate=rate, layout="mono")
        resampler = av.AudioResampler(format=stream.codec_context.format.name, layout="mono", rate=rate)
        for frame in source.decode(audio=0):
            frame.pts = None
            for resampled in resampler.resample(frame):
                for packet in stream.encode(resampled):
                    target.mux(packet)
        for packet in stream.encode(None):
            target.mux(packet)
    return out.getvalue()


@pytest.mark.parametrize(
    ("container_format", "codec", "rate"),
    [("mp3", "libmp3lame", 22050), ("ogg", "libopus", 48000), ("flac", "flac", 22050), ("ipod", "aac", 22050),
     ("webm", "libopus", 48000)],
)
def test_other_formats_decode_to_the_same_length(english_wav: Path, container_format: str, codec: str, rate: int) -> None:
    samples = decode_audio(reencode(english_wav, container_format, codec, rate))
    assert samples.dtype == np.float32 and samples.ndim == 1
    # Lossy codecs pad a few milliseconds at the edges.
    assert abs(samples.size / SAMPLE_RATE - wav_seconds(english_wav)) < 0.1
    assert 0.01 < float(np.abs(samples).max()) < 1.1  # resampling may overshoot full scale a little


def test_stereo_48k_is_mixed_down_and_resampled() -> None:
    tone = (0.5 * np.sin(2 * np.pi * 440 * np.arange(48000) / 48000)).astype(np.float32)
    frame = av.AudioFrame.from_ndarray(np.stack([tone, tone], axis=1).reshape(1, -1), format="flt", layout="stereo")
    frame.sample_rate = 48000
    out = io.BytesIO()
    with av.open(out, mode="w", format="wav") as target:
        stream = target.add_stream("pcm_f32le", rate=48000, layout="stereo")
        for packet in stream.encode(frame):
            target.mux(packet)
        for packet in stream.encode(None):
            target.mux(packet)
    samples = decode_audio(out.getvalue())
    assert samples.size == SAMPLE_RATE
    # FFmpeg mixes two channels down at -3 dB each (0.5 + 0.5 -> 0.71), not by averaging.
    assert 0.48 < float(np.abs(samples).max()) < 0.75


def test_a_wav_from_a_pipe_with_unknown_length_is_accepted(espeak_available: None) -> None:
    # espeak-ng --stdout cannot know the length, so its header claims about 2 GB: not a cut-off file.
    data = subprocess.run(["espeak-ng", "--stdout", "hello world"], check=True, capture_output=True).stdout
    assert int.from_bytes(data[40:44], "little") >= 0x7FFF0000
    assert decode_audio(data).size > SAMPLE_RATE // 2


@pytest.mark.parametrize(
    ("content", "needle"),
    [(b"", "empty"), (b"RIFF\x00\x00", "could not read"), (b"hello, this is plain text, not sound" * 50, "could not read")],
)
def test_unreadable_input_is_malformed(content: bytes, needle: str) -> None:
    with pytest.raises(AistackError) as raised:
        decode_audio(content)
    assert raised.value.kind.value == "malformed" and raised.value.param == "file"
    assert needle in raised.value.message


def test_a_wav_cut_short_is_refused(english_wav: Path) -> None:
    data = english_wav.read_bytes()
    with pytest.raises(AistackError) as raised:
        decode_audio(data[: len(data) - 1000])
    assert "cut off" in raised.value.message
    assert decode_audio(data).size > 0
