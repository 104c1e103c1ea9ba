"""Raw PCM in any declared format (as Wyoming's audio chunks carry it) to the 16 kHz mono float32 the
speech-to-text engines take, and the format errors that say what to send."""

from __future__ import annotations

import numpy as np
import pytest

from aistack.audio.decode import SAMPLE_RATE, decode_pcm
from aistack.errors import AistackError, ErrorKind


def tone(rate: int, seconds: float = 1.0) -> np.ndarray:
    return 0.5 * np.sin(2 * np.pi * 440 * np.arange(int(rate * seconds)) / rate)


def encode(samples: np.ndarray, width: int, channels: int) -> bytes:
    if width == 1:
        frames = (np.round(samples * 127) + 128).astype(np.uint8)[:, None].view(np.uint8)
    else:
        scaled = np.round(samples * (2 ** (8 * width - 1) - 1)).astype("<i4")
        frames = scaled.view(np.uint8).reshape(-1, 4)[:, :width]  # little-endian: the low bytes first
    return np.repeat(frames, channels, axis=0).reshape(len(samples), channels * width).tobytes()


@pytest.mark.parametrize("width", [1, 2, 3, 4])
@pytest.mark.parametrize(("rate", "channels"), [(16000, 1), (22050, 1), (48000, 2), (8000, 3)])
def test_every_width_rate_and_channel_count_becomes_16_khz_mono(width: int, rate: int, channels: int) -> None:
    decoded = decode_pcm(encode(tone(rate), width, channels), rate, width, channels)
    expected = tone(SAMPLE_RATE)
    assert decoded.dtype == np.float32 and decoded.ndim == 1
    assert abs(decoded.size - SAMPLE_RATE) <= 2
    middle = slice(200, SAMPLE_RATE - 200)  # the resampler's filter settles at the ends
    tolerance = 0.02 if width == 1 else 0.002
    assert np.max(np.abs(decoded[middle] - expected[middle])) < tolerance


def test_negative_24_bit_samples_keep_their_sign() -> None:
    data = bytes([0x00, 0x00, 0x80, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x7F])  # -2**23, -1, 2**23 - 1
    assert decode_pcm(data, SAMPLE_RATE, 3, 1).tolist() == pytest.approx([-1.0, -1 / 2**23, 1 - 1 / 2**23])


@pytest.mark.parametrize(("data", "rate", "width", "channels", "needle"), [
    (bytes(4), 16000, 5, 1, "1 to 4 bytes per sample"),
    (bytes(4), 16000, 2, 0, "at least one channel"),
    (bytes(4), 0, 2, 1, "positive rate"),
    (bytes(5), 16000, 2, 1, "not a whole number of 2-byte frames"),
    (bytes(6), 16000, 2, 2, "4-byte frames"),
    (b"", 16000, 2, 1, "no audio was sent"),
])
def test_a_format_it_cannot_read_says_what_to_send(data: bytes, rate: int, width: int, channels: int, needle: str) -> None:
    with pytest.raises(AistackError) as refused:
        decode_pcm(data, rate, width, channels)
    assert refused.value.kind == ErrorKind.MALFORMED and refused.value.param == "audio"
    assert needle in refused.value.message, refused.value.message
