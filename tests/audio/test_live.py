"""Live input audio: G.711 tables equal FFmpeg's decoders, and the piecewise decoder gives the same
16 kHz samples however the bytes are split."""

from __future__ import annotations

import av
import numpy as np
import pytest

from aistack.audio.live import A_LAW, MU_LAW, PCM16_24K, PCMU_8K, LiveDecoder, to_int16


@pytest.mark.parametrize(("table", "codec"), [(MU_LAW, "pcm_mulaw"), (A_LAW, "pcm_alaw")])
def test_g711_tables_equal_ffmpeg(table: np.ndarray, codec: str) -> None:
    decoder = av.CodecContext.create(codec, "r")
    decoder.sample_rate, decoder.layout = 8000, "mono"  # type: ignore[attr-defined]
    frames = decoder.decode(av.Packet(bytes(range(256))))  # type: ignore[attr-defined]
    reference = np.concatenate([frame.to_ndarray().reshape(-1) for frame in frames])
    assert np.array_equal(table, reference)
    assert np.array_equal(to_int16(bytes(range(256)), "pcmu" if codec == "pcm_mulaw" else "pcma"), table)


def test_pieces_resample_like_one_whole() -> None:
    seconds = np.arange(PCM16_24K.rate) / PCM16_24K.rate
    pcm = (np.sin(2 * np.pi * 440 * seconds) * 8000).astype("<i2").tobytes()
    whole = LiveDecoder(PCM16_24K).decode(pcm)
    split = LiveDecoder(PCM16_24K)
    pieces = np.concatenate([split.decode(pcm[i:i + 1234]) for i in range(0, len(pcm), 1234)])  # odd sizes of whole samples
    assert abs(whole.size - 16_000) <= 32 and abs(pieces.size - whole.size) <= 32
    common = min(whole.size, pieces.size)
    assert np.allclose(whole[:common], pieces[:common], atol=1e-3)
    # A 440 Hz tone stays a 440 Hz tone at 16 kHz.
    spectrum = np.abs(np.fft.rfft(whole[:16_000]))
    assert abs(int(np.argmax(spectrum)) - 440) <= 2  # one bin a hertz over a second


def test_g711_is_upsampled_to_16k() -> None:
    out = LiveDecoder(PCMU_8K).decode(bytes([0xFF]) * 8000)  # a second of silence
    assert abs(out.size - 16_000) <= 32 and np.all(np.abs(out) < 1e-3)
    assert LiveDecoder(PCMU_8K).decode(b"").size == 0
