"""Speech encoding: every OpenAI format at 24 kHz mono, streamed chunk by chunk, with pitch-kept speed."""

from __future__ import annotations

import io
import struct
import wave
from dataclasses import dataclass

import av
import numpy as np
import pytest

from aistack.audio.encode import (
    OUTPUT_SAMPLE_RATE,
    SPEECH_FORMATS,
    SPEECH_MEDIA_TYPES,
    SpeechEncoder,
    encode_speech,
    tempo_factors,
)
from aistack.engines.base import PcmChunk

PIPER_RATE = 22_050
SECONDS = 2.5
CHUNKS = 5
# flac is allowed to hold audio back until it has a whole frame, but with 0.5 s chunks it never needs to.
STREAMED_FORMATS = ("mp3", "aac", "opus", "flac", "wav", "pcm")


def sine(frequency: float = 440.0, seconds: float = SECONDS, rate: int = PIPER_RATE) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (np.sin(2 * np.pi * frequency * t) * 12_000).astype(np.int16)


def chirp(seconds: float = SECONDS, rate: int = PIPER_RATE, start: float = 100.0, stop: float = 10_000.0) -> np.ndarray:
    """A linear sweep across the speech band, up to just below the 12 kHz output Nyquist limit."""
    t = np.arange(int(seconds * rate)) / rate
    phase = 2 * np.pi * (start * t + (stop - start) * t**2 / (2 * seconds))
    return (np.sin(phase) * 12_000).astype(np.int16)


def as_chunks(samples: np.ndarray, rate: int = PIPER_RATE, count: int = CHUNKS) -> list[PcmChunk]:
    return [PcmChunk(part, rate) for part in np.array_split(samples, count)]


@dataclass(frozen=True)
class Decoded:
    samples: np.ndarray
    rate: int
    channels: int
    container_format: str

    @property
    def seconds(self) -> float:
        return self.samples.size / self.rate


def decode(data: bytes, response_format: str) -> Decoded:
    """Decode with PyAV as a client's FFmpeg would; pcm has no header, so its layout is stated."""
    if response_format == "pcm":
        container = av.open(io.BytesIO(data), format="s16le", options={"sample_rate": "24000", "ch_layout": "mono"})
    else:
        container = av.open(io.BytesIO(data))
    with container:
        stream = container.streams.audio[0]
        frames = [frame.to_ndarray().reshape(-1) for frame in container.decode(stream)]
        samples = np.concatenate(frames) if frames else np.zeros(0)
        return Decoded(samples, stream.sample_rate, stream.codec_context.channels, container.format.name)


def decoded_seconds(data: bytes, response_format: str) -> float:
    return decode(data, response_format).seconds


def dominant_frequency(pcm: bytes) -> float:
    samples = np.frombuffer(pcm, dtype="<i2").astype(np.float64)
    # Drop the edges, where the tempo filter fades in and out.
    samples = samples[len(samples) // 10 : -len(samples) // 10]
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(samples.size)))
    return float(np.fft.rfftfreq(samples.size, 1 / OUTPUT_SAMPLE_RATE)[np.argmax(spectrum)])


def opus_head(data: bytes) -> tuple[int, int]:
    """(channels, input sample rate) from the OpusHead packet; FFmpeg always decodes Opus at 48 kHz."""
    head = data.index(b"OpusHead")
    channels = data[head + 9]
    (input_rate,) = struct.unpack_from("<I", data, head + 12)
    return channels, input_rate


def test_media_types_cover_every_format() -> None:
    assert set(SPEECH_MEDIA_TYPES) == set(SPEECH_FORMATS)
    assert SPEECH_MEDIA_TYPES["mp3"] == "audio/mpeg"
    assert SPEECH_MEDIA_TYPES["opus"] == "audio/ogg"
    assert SPEECH_MEDIA_TYPES["pcm"] == "audio/pcm"


@pytest.mark.parametrize("response_format", SPEECH_FORMATS)
def test_every_format_decodes_to_the_input_duration_at_24k_mono(response_format: str) -> None:
    data = encode_speech(as_chunks(chirp()), response_format)

    decoded = decode(data, response_format)

    assert decoded.seconds == pytest.approx(SECONDS, rel=0.05)
    assert decoded.channels == 1
    if response_format == "opus":
        assert opus_head(data) == (1, OUTPUT_SAMPLE_RATE)
    else:
        assert decoded.rate == OUTPUT_SAMPLE_RATE
    expected_container = {"mp3": "mp3", "aac": "aac", "opus": "ogg", "flac": "flac", "wav": "wav", "pcm": "s16le"}
    assert decoded.container_format == expected_container[response_format]


@pytest.mark.parametrize("rate", [16_000, 24_000, 44_100])
def test_pcm_is_headerless_24k_s16le_whatever_the_engine_rate(rate: int) -> None:
    original = chirp(rate=rate)
    pcm = encode_speech(as_chunks(original, rate), "pcm")

    assert len(pcm) % 2 == 0
    out = np.frombuffer(pcm, dtype="<i2").astype(np.float64)
    assert out.size / OUTPUT_SAMPLE_RATE == pytest.approx(SECONDS, rel=0.01)
    # The whole sweep is below 12 kHz, so resampling must keep its energy.
    rms_in = np.sqrt(np.mean(original.astype(np.float64) ** 2))
    assert np.sqrt(np.mean(out**2)) == pytest.approx(rms_in, rel=0.05)


@pytest.mark.parametrize("response_format", STREAMED_FORMATS)
def test_streaming_returns_audio_from_feed_before_finish(response_format: str) -> None:
    chunks = as_chunks(chirp())
    encoder = SpeechEncoder(response_format)

    fed = [encoder.feed(chunk) for chunk in chunks]
    streamed = b"".join(fed) + encoder.finish()

    assert all(fed), [len(part) for part in fed]
    # The first chunk's sound is playable before the second chunk exists.
    first_chunk_seconds = chunks[0].samples.size / PIPER_RATE
    assert decoded_seconds(fed[0], response_format) > 0.5 * first_chunk_seconds
    whole = encode_speech(chunks, response_format)
    assert decoded_seconds(streamed, response_format) == pytest.approx(
        decoded_seconds(whole, response_format), rel=0.05
    )
    assert encoder.input_seconds == pytest.approx(SECONDS, abs=1e-6)
    assert encoder.output_seconds == pytest.approx(SECONDS, rel=0.01)


def test_streamed_wav_has_unknown_sizes_and_still_decodes() -> None:
    encoder = SpeechEncoder("wav")
    streamed = b"".join(encoder.feed(chunk) for chunk in as_chunks(chirp())) + encoder.finish()

    assert streamed[:4] == b"RIFF" and streamed[8:12] == b"WAVE" and streamed[36:40] == b"data"
    assert struct.unpack_from("<I", streamed, 4)[0] == 0xFFFFFFFF
    assert struct.unpack_from("<I", streamed, 40)[0] == 0xFFFFFFFF
    assert decoded_seconds(streamed, "wav") == pytest.approx(SECONDS, rel=0.01)


def test_streamed_wav_header_is_openais_and_wave_reads_it_to_the_end() -> None:
    # What OpenAI streams: RIFF and data sizes 0xFFFFFFFF, PCM, mono, 24 kHz, 48000 bytes/s, 2-byte frames, 16 bits.
    openai_header = bytes.fromhex("52494646ffffffff57415645666d7420100000000100010"
                                  "0c05d000080bb00000200100064617461ffffffff")
    encoder = SpeechEncoder("wav")
    streamed = b"".join(encoder.feed(chunk) for chunk in as_chunks(chirp())) + encoder.finish()

    assert streamed[:44] == openai_header
    with wave.open(io.BytesIO(streamed)) as reader:
        assert (reader.getnchannels(), reader.getsampwidth(), reader.getframerate()) == (1, 2, OUTPUT_SAMPLE_RATE)
        frames = reader.readframes(reader.getnframes())
    assert frames == streamed[44:]
    assert len(frames) / 2 / OUTPUT_SAMPLE_RATE == pytest.approx(SECONDS, rel=0.01)


def test_whole_wav_states_its_real_sizes() -> None:
    data = encode_speech(as_chunks(chirp()), "wav")

    assert struct.unpack_from("<I", data, 4)[0] == len(data) - 8
    assert struct.unpack_from("<I", data, 40)[0] == len(data) - 44
    with wave.open(io.BytesIO(data)) as reader:
        assert (reader.getnchannels(), reader.getsampwidth(), reader.getframerate()) == (1, 2, OUTPUT_SAMPLE_RATE)
        assert reader.getnframes() / reader.getframerate() == pytest.approx(SECONDS, rel=0.01)


@pytest.mark.parametrize("speed", [0.25, 0.5, 2.0, 4.0])
def test_speed_scales_the_duration(speed: float) -> None:
    chunks = as_chunks(chirp())
    encoder = SpeechEncoder("pcm", speed)
    pcm = b"".join(encoder.feed(chunk) for chunk in chunks) + encoder.finish()

    assert len(pcm) / 2 / OUTPUT_SAMPLE_RATE == pytest.approx(SECONDS / speed, rel=0.10)
    assert encoder.input_seconds == pytest.approx(SECONDS, abs=1e-6)
    assert encoder.output_seconds == pytest.approx(SECONDS / speed, rel=0.10)


@pytest.mark.parametrize("response_format", ["mp3", "opus"])
def test_speed_applies_to_encoded_formats_too(response_format: str) -> None:
    data = encode_speech(as_chunks(chirp()), response_format, speed=2.0)

    assert decoded_seconds(data, response_format) == pytest.approx(SECONDS / 2, rel=0.10)


@pytest.mark.parametrize("speed", [0.5, 2.0])
def test_speed_keeps_the_pitch(speed: float) -> None:
    pcm = encode_speech(as_chunks(sine(440.0)), "pcm", speed)

    assert dominant_frequency(pcm) == pytest.approx(440.0, rel=0.03)


def test_unchanged_speed_keeps_the_pitch_through_resampling() -> None:
    assert dominant_frequency(encode_speech(as_chunks(sine(440.0)), "pcm")) == pytest.approx(440.0, rel=0.01)


def test_tempo_is_chained_within_atempo_range() -> None:
    assert tempo_factors(1.0) == []
    assert tempo_factors(4.0) == [2.0, 2.0]
    assert tempo_factors(0.25) == [0.5, 0.5]
    factors = tempo_factors(3.0)
    assert all(0.5 <= factor <= 2.0 for factor in factors)
    assert float(np.prod(factors)) == pytest.approx(3.0)


@pytest.mark.parametrize("response_format", ["ogg", "MP3", "", "mpeg"])
def test_unknown_format_is_refused(response_format: str) -> None:
    with pytest.raises(ValueError, match="response_format"):
        SpeechEncoder(response_format)


@pytest.mark.parametrize("speed", [0.0, 0.2, 4.01, -1.0, float("nan")])
def test_speed_out_of_range_is_refused(speed: float) -> None:
    with pytest.raises(ValueError, match="speed must be between 0.25 and 4.0"):
        SpeechEncoder("mp3", speed)


@pytest.mark.parametrize("response_format", SPEECH_FORMATS)
def test_finishing_without_audio_is_a_clear_error(response_format: str) -> None:
    encoder = SpeechEncoder(response_format)

    assert encoder.feed(PcmChunk(np.zeros(0, dtype=np.int16), PIPER_RATE)) == b""
    with pytest.raises(ValueError, match="no speech samples"):
        encoder.finish()
    with pytest.raises(ValueError, match="no speech samples"):
        encode_speech([], response_format)


def test_chunks_must_be_int16_mono_at_one_rate() -> None:
    encoder = SpeechEncoder("pcm")
    with pytest.raises(ValueError, match="int16"):
        encoder.feed(PcmChunk(np.zeros(100, dtype=np.float32), PIPER_RATE))
    with pytest.raises(ValueError, match="int16"):
        encoder.feed(PcmChunk(np.zeros((2, 100), dtype=np.int16), PIPER_RATE))
    encoder.feed(PcmChunk(sine(seconds=0.1), PIPER_RATE))
    with pytest.raises(ValueError, match="sample rate changed"):
        encoder.feed(PcmChunk(sine(seconds=0.1, rate=16_000), 16_000))


def test_a_finished_encoder_takes_no_more_audio() -> None:
    encoder = SpeechEncoder("mp3")
    encoder.feed(PcmChunk(sine(seconds=0.2), PIPER_RATE))
    assert encoder.finish()
    with pytest.raises(RuntimeError, match="finished"):
        encoder.feed(PcmChunk(sine(seconds=0.2), PIPER_RATE))
    with pytest.raises(RuntimeError, match="finished"):
        encoder.finish()
