"""The streaming audio body decoder (aistack.audio.wav_stream): WAV headers split anywhere, unknown
sizes, extra chunks, other sample formats mixed down to 16-bit mono, and raw PCM at a given rate."""

from __future__ import annotations

import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aistack.audio.wav_stream import PcmStreamDecoder, WavError
from aistack.engines.qwen3_tts import NATIVE_SAMPLE_RATE
from doubles.qwen3_tts_server import wav_header

RATE = 24_000


def tone(count: int, seed: int = 0) -> np.ndarray:
    """Distinct int16 samples covering the whole range, so a shifted or dropped byte shows."""
    return np.random.default_rng(seed).integers(-32768, 32767, size=count, dtype=np.int16)


def wav(samples: bytes, *, rate: int = RATE, channels: int = 1, bits: int = 16, tag: int = 1,
        data_size: int | None = None, before_data: bytes = b"", fmt_extra: bytes = b"", riff_size: int | None = None,
        after_data: bytes = b"") -> bytes:
    """A WAV body built by hand: `data_size` None is the streamed 0xFFFFFFFF placeholder."""
    fmt = struct.pack("<HHIIHH", tag, channels, rate, rate * channels * bits // 8, channels * bits // 8, bits) + fmt_extra
    size = 0xFFFFFFFF if data_size is None else data_size
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + (b"\0" if len(fmt) % 2 else b"")
    body += before_data + b"data" + struct.pack("<I", size) + samples + after_data
    riff = 0xFFFFFFFF if riff_size is None else riff_size
    return b"RIFF" + struct.pack("<I", riff) + body


def decode(pieces: list[bytes], raw_rate: int = RATE) -> tuple[np.ndarray, PcmStreamDecoder]:
    decoder = PcmStreamDecoder(raw_rate)
    out: list[np.ndarray] = []
    for piece in pieces:
        chunk = decoder.feed(piece)
        if chunk is not None:
            assert chunk.samples.dtype == np.int16 and chunk.samples.ndim == 1
            assert chunk.samples.size > 0
            assert chunk.sample_rate == decoder.sample_rate
            out.append(chunk.samples)
    decoder.finish()
    joined = np.concatenate(out) if out else np.zeros(0, dtype=np.int16)
    assert decoder.samples == joined.size
    return joined, decoder


def split_at(data: bytes, cuts: list[int]) -> list[bytes]:
    bounds = [0, *sorted(set(c for c in cuts if 0 < c < len(data))), len(data)]
    return [data[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]


def test_wav_header_split_at_every_byte_offset_decodes_the_same_samples() -> None:
    samples = tone(300)
    body = wav_header(RATE, None) + samples.tobytes()
    for cut in range(1, 60):  # every split inside the 44-byte header and into the first samples
        got, decoder = decode([body[:cut], body[cut:]])
        assert decoder.sample_rate == RATE, cut
        np.testing.assert_array_equal(got, samples, err_msg=f"split at {cut}")


def test_wav_fed_one_byte_at_a_time() -> None:
    samples = tone(101)
    got, decoder = decode([bytes([b]) for b in wav(samples.tobytes(), rate=16_000)])
    assert decoder.sample_rate == 16_000
    np.testing.assert_array_equal(got, samples)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cuts=st.lists(st.integers(min_value=1, max_value=700), max_size=12), count=st.integers(0, 300))
def test_any_split_of_a_streamed_wav_gives_the_same_samples(cuts: list[int], count: int) -> None:
    samples = tone(count, seed=count)
    body = wav_header(RATE, None) + samples.tobytes()
    got, _ = decode(split_at(body, cuts))
    np.testing.assert_array_equal(got, samples)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cuts=st.lists(st.integers(min_value=1, max_value=700), max_size=12))
def test_any_split_of_raw_pcm_keeps_samples_whole(cuts: list[int]) -> None:
    samples = tone(333, seed=7)
    got, decoder = decode(split_at(samples.tobytes(), cuts), raw_rate=22_050)
    assert decoder.sample_rate == 22_050
    np.testing.assert_array_equal(got, samples)


def test_streamed_unknown_sizes_mean_until_the_end() -> None:
    samples = tone(5000)
    # 0xFFFFFFFF (what vLLM-Omni and OpenAI stream) and 0 (what some encoders write) are both "unknown".
    for size in (None, 0):
        got, _ = decode([wav(samples[:10].tobytes(), data_size=size), samples[10:].tobytes()])
        np.testing.assert_array_equal(got, samples)


def test_known_data_size_stops_at_the_end_of_data_and_ignores_trailing_chunks() -> None:
    samples = tone(200)
    trailer = b"LIST" + struct.pack("<I", 9) + b"INFOabcde\0"  # odd size, padded
    body = wav(samples.tobytes(), data_size=len(samples) * 2, riff_size=0, after_data=trailer)
    for cut in (44, 45, len(body) - len(trailer) - 1, len(body) - 3):
        got, _ = decode([body[:cut], body[cut:]])
        np.testing.assert_array_equal(got, samples)


def test_odd_data_size_leaves_its_pad_byte_out() -> None:
    samples = tone(50)
    data = samples.tobytes() + b"\x7f"  # a stray byte: not a whole sample
    got, _ = decode([wav(data, data_size=len(data), after_data=b"\0")])
    np.testing.assert_array_equal(got, samples)


def test_raw_pcm_is_taken_as_16_bit_mono_at_the_given_rate() -> None:
    samples = tone(480)
    got, decoder = decode([samples.tobytes()], raw_rate=NATIVE_SAMPLE_RATE)
    assert decoder.sample_rate == NATIVE_SAMPLE_RATE
    assert decoder.seconds == pytest.approx(480 / NATIVE_SAMPLE_RATE)
    np.testing.assert_array_equal(got, samples)


def test_odd_byte_splits_keep_a_half_sample_for_the_next_read() -> None:
    samples = tone(9)
    data = samples.tobytes()
    decoder = PcmStreamDecoder(RATE)
    first = decoder.feed(data[:5])  # sniffing needs 4 bytes; 2 whole samples and half a third
    assert first is not None
    np.testing.assert_array_equal(first.samples, samples[:2])
    assert decoder.feed(data[5:6]) is not None  # the third sample completes
    assert decoder.feed(data[6:7]) is None  # half a sample: nothing yet
    rest = decoder.feed(data[7:])
    assert rest is not None
    np.testing.assert_array_equal(rest.samples, samples[3:])
    assert decoder.samples == 9


def test_extra_chunks_before_data_are_skipped() -> None:
    samples = tone(64)
    before = (b"LIST" + struct.pack("<I", 5) + b"INFOx\0"  # odd size with its pad byte
              + b"fact" + struct.pack("<I", 4) + struct.pack("<I", 64))
    body = wav(samples.tobytes(), before_data=before, fmt_extra=struct.pack("<H", 0))  # an 18-byte fmt chunk
    for cut in range(1, 90, 3):
        got, _ = decode([body[:cut], body[cut:]])
        np.testing.assert_array_equal(got, samples, err_msg=f"split at {cut}")


def test_float32_stereo_is_mixed_down_to_int16_mono() -> None:
    left = np.array([0.5, -1.0, 1.0, 0.0, 2.0], dtype="<f4")
    right = np.array([0.25, -1.0, 0.0, -0.5, 2.0], dtype="<f4")  # 2.0 is clipped to 1.0
    frames = np.stack([left, right], axis=1).astype("<f4").tobytes()
    body = wav(frames, rate=44_100, channels=2, bits=32, tag=3)
    got, decoder = decode([body[:47], body[47:53], body[53:]])  # a frame split across reads
    assert decoder.sample_rate == 44_100
    expected = np.rint((np.clip(left, -1, 1) * 32767 + np.clip(right, -1, 1) * 32767) / 2).astype(np.int16)
    np.testing.assert_array_equal(got, expected)


def test_int16_stereo_and_32_bit_extensible_pcm() -> None:
    stereo = np.array([[1000, 3000], [-2000, -4000], [32767, 32767]], dtype="<i2")
    got, _ = decode([wav(stereo.tobytes(), channels=2)])
    np.testing.assert_array_equal(got, [2000, -3000, 32767])
    wide = np.array([65536 * 100, -65536 * 200, 2**31 - 1], dtype="<i4")
    # WAVE_FORMAT_EXTENSIBLE: cbSize, valid bits, channel mask, then the sub-format GUID (PCM = 1).
    extensible = struct.pack("<HHI", 22, 32, 4) + struct.pack("<H", 1) + bytes(14)
    got, _ = decode([wav(wide.tobytes(), bits=32, tag=0xFFFE, fmt_extra=extensible)])
    np.testing.assert_array_equal(got, [100, -200, 32767])


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        (b"RIFF\xff\xff\xff\xffAVI LIST", "not WAVE"),
        (wav(b"\0\0", bits=8), "unsupported WAV encoding"),
        (wav(b"\0\0", tag=6), "unsupported WAV encoding"),  # A-law
        (b"RIFF" + struct.pack("<I", 0) + b"WAVE" + b"data" + struct.pack("<I", 4) + b"\0" * 4, "before its fmt"),
        (b"RIFF" + struct.pack("<I", 0) + b"WAVE" + b"fmt " + struct.pack("<I", 8) + b"\0" * 8, "shorter than 16"),
    ],
)
def test_bodies_that_are_not_readable_audio_raise(body: bytes, problem: str) -> None:
    with pytest.raises(WavError, match=problem):
        decode([body])


@pytest.mark.parametrize("cut", [4, 11, 20, 43])
def test_a_body_that_ends_inside_the_header_raises_on_finish(cut: int) -> None:
    decoder = PcmStreamDecoder(RATE)
    assert decoder.feed(wav_header(RATE, None)[:cut]) is None
    with pytest.raises(WavError, match="ended inside the WAV header"):
        decoder.finish()


def test_a_tiny_raw_body_is_no_audio_rather_than_an_error() -> None:
    decoder = PcmStreamDecoder(RATE)
    assert decoder.feed(b"\x01\x02\x03") is None
    decoder.finish()
    assert decoder.samples == 0
