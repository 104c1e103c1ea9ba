"""Synthesized speech encoded the way OpenAI's `/v1/audio/speech` sends it, streamed as it is made.

Every format comes out at 24 kHz mono whatever rate the engine speaks at, so clients written for
OpenAI (which assume 24 kHz, above all for headerless `pcm`) play it unchanged. Encoding runs in
process with PyAV into an in-memory sink that is drained after every chunk, so the first sentence
can be on the wire while the next one is still being synthesized.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from fractions import Fraction

import av
import av.filter
import numpy as np

from ..engines.base import PcmChunk

SPEECH_FORMATS: tuple[str, ...] = ("mp3", "opus", "aac", "flac", "wav", "pcm")

# What OpenAI answers with: MPEG layer III, Ogg-encapsulated Opus, raw ADTS AAC, native FLAC,
# RIFF WAVE, and headerless 16-bit little-endian samples.
SPEECH_MEDIA_TYPES: dict[str, str] = {
    "mp3": "audio/mpeg",
    "opus": "audio/ogg",
    "aac": "audio/aac",
    "flac": "audio/flac",
    "wav": "audio/wav",
    "pcm": "audio/pcm",
}

OUTPUT_SAMPLE_RATE = 24_000
MIN_SPEED = 0.25
MAX_SPEED = 4.0

# One atempo instance only stretches within this range; wider factors are a chain of them.
_ATEMPO_MIN = 0.5
_ATEMPO_MAX = 2.0
# A streamed WAV cannot know its length, so its size fields say "unknown" as OpenAI's do.
_UNKNOWN_WAV_SIZE = 0xFFFFFFFF
_BYTES_PER_SAMPLE = 2


# Stated rather than left to each encoder's default, which for LAME at 24 kHz mono is a thin 32 kbps;
# 64 kbps is clean mono speech in all three lossy codecs.
_LOSSY_BIT_RATE = 64_000


@dataclass(frozen=True)
class _Codec:
    container: str
    codec: str
    bit_rate: int | None = None
    container_options: Mapping[str, str] = field(default_factory=dict)


_CODECS: dict[str, _Codec] = {
    "mp3": _Codec("mp3", "libmp3lame", _LOSSY_BIT_RATE),
    "aac": _Codec("adts", "aac", _LOSSY_BIT_RATE),
    # The Ogg muxer holds a page until it spans a second of audio; 100 ms keeps a sentence's tail
    # from waiting for the next sentence while page overhead stays small.
    "opus": _Codec("ogg", "libopus", _LOSSY_BIT_RATE, {"page_duration": "100000"}),
    # The 8 KiB padding block exists so a seekable file can be retagged in place; a stream cannot.
    "flac": _Codec("flac", "flac", container_options={"metadata_header_padding": "0"}),
}


class _ByteSink:
    """A write-only, non-seekable file for PyAV: muxers then write strictly forward, never patch."""

    def __init__(self) -> None:
        self._pending = bytearray()

    def write(self, data: bytes) -> int:
        self._pending += data
        return len(data)

    def drain(self) -> bytes:
        ready = bytes(self._pending)
        self._pending.clear()
        return ready


class SpeechEncoder:
    """Turns PCM chunks into one `response_format` stream: `feed` each chunk, then `finish` once.

    Each call returns the bytes that are ready now; concatenated in order they are the whole file.
    Codecs keep a little audio back (frame alignment, look-ahead), which `finish` releases.
    `finish` refuses a stream that was fed no samples: mp3, aac and Ogg Opus cannot express "no
    audio" in a form players open, so the caller decides what an engine's silence means.
    """

    def __init__(self, response_format: str, speed: float = 1.0) -> None:
        _check_format(response_format)
        _check_speed(speed)
        self.response_format = response_format
        self.speed = float(speed)
        self._sink = _ByteSink()
        self._input_rate: int | None = None
        self._graph: av.filter.Graph | None = None
        self._input_samples = 0
        self._output_samples = 0
        self._finished = False
        self._container: av.container.OutputContainer | None = None
        self._stream: av.audio.stream.AudioStream | None = None
        if response_format == "wav":
            self._sink.write(wav_header(_UNKNOWN_WAV_SIZE))
        elif response_format in _CODECS:
            codec = _CODECS[response_format]
            self._container = av.open(
                self._sink, mode="w", format=codec.container, container_options=dict(codec.container_options)
            )
            stream = self._container.add_stream(codec.codec, rate=OUTPUT_SAMPLE_RATE, layout="mono")
            assert isinstance(stream, av.audio.stream.AudioStream)  # every codec in _CODECS is an audio codec
            if codec.bit_rate:
                stream.codec_context.bit_rate = codec.bit_rate
            self._stream = stream
            # Opening the codec now makes a missing encoder fail here, before any response has started.
            self._container.start_encoding()

    @property
    def input_seconds(self) -> float:
        """Seconds of speech fed so far, before any speed change."""
        return self._input_samples / self._input_rate if self._input_rate else 0.0

    @property
    def output_seconds(self) -> float:
        """Seconds of audio handed to the encoder so far, after the speed change."""
        return self._output_samples / OUTPUT_SAMPLE_RATE

    def feed(self, chunk: PcmChunk) -> bytes:
        """Encode one chunk and return whatever bytes are complete now (possibly none)."""
        if self._finished:
            raise RuntimeError("this SpeechEncoder has finished; start a new one for more audio")
        samples = _mono_int16(chunk)
        if self._graph is None:
            self._input_rate = chunk.sample_rate
            self._graph = _build_graph(chunk.sample_rate, self.speed)
        elif chunk.sample_rate != self._input_rate:
            raise ValueError(
                f"chunk sample rate changed from {self._input_rate} Hz to {chunk.sample_rate} Hz within one stream"
            )
        if not samples.size:
            return b""
        frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = chunk.sample_rate
        frame.time_base = Fraction(1, chunk.sample_rate)
        frame.pts = self._input_samples
        self._input_samples += samples.size
        self._graph.push(frame)
        self._encode_filtered(self._graph)
        return self._sink.drain()

    def finish(self) -> bytes:
        """Flush the filters and the codec, close the container and return the last bytes.

        Raises ValueError when no samples were fed (nothing has been returned by `feed` then either).
        """
        if self._finished:
            raise RuntimeError("this SpeechEncoder has already finished")
        self._finished = True
        if self._graph is not None:
            self._graph.push(None)
            self._encode_filtered(self._graph)
        if self._container is not None and self._stream is not None:
            self._container.mux(self._stream.encode(None))
            self._container.close()
        if not self._input_samples:
            raise ValueError("no speech samples were fed to the encoder, so there is no audio to send")
        return self._sink.drain()

    def _encode_filtered(self, graph: av.filter.Graph) -> None:
        while True:
            try:
                frame = graph.pull()
            except (BlockingIOError, EOFError):
                return
            assert isinstance(frame, av.AudioFrame)  # the graph is built from audio buffers only
            self._encode(frame)

    def _encode(self, frame: av.AudioFrame) -> None:
        # Restamped as a plain count of 24 kHz samples: that is all the muxers need, whatever time base
        # the filters left on the frame.
        frame.pts = self._output_samples
        frame.time_base = Fraction(1, OUTPUT_SAMPLE_RATE)
        self._output_samples += frame.samples
        if self._container is None or self._stream is None:
            self._sink.write(frame.to_ndarray().astype("<i2", copy=False).tobytes())
        else:
            self._container.mux(self._stream.encode(frame))


def encode_speech(chunks: Iterable[PcmChunk], response_format: str, speed: float = 1.0) -> bytes:
    """A whole (non-streamed) response; unlike the streamed one, its WAV header states the real sizes."""
    if response_format == "wav":
        samples = encode_speech(chunks, "pcm", speed)
        return wav_header(len(samples)) + samples
    encoder = SpeechEncoder(response_format, speed)
    parts = [encoder.feed(chunk) for chunk in chunks]
    parts.append(encoder.finish())
    return b"".join(parts)


def wav_header(data_bytes: int) -> bytes:
    """A 44-byte PCM WAVE header for 24 kHz mono s16le; `0xFFFFFFFF` data bytes means "until EOF"."""
    riff_bytes = _UNKNOWN_WAV_SIZE if data_bytes == _UNKNOWN_WAV_SIZE else 36 + data_bytes
    byte_rate = OUTPUT_SAMPLE_RATE * _BYTES_PER_SAMPLE
    return (
        struct.pack("<4sI4s", b"RIFF", riff_bytes, b"WAVE")
        + struct.pack("<4sIHHIIHH", b"fmt ", 16, 1, 1, OUTPUT_SAMPLE_RATE, byte_rate, _BYTES_PER_SAMPLE, 16)
        + struct.pack("<4sI", b"data", data_bytes)
    )


def tempo_factors(speed: float) -> list[float]:
    """Split `speed` into atempo factors that each lie in atempo's 0.5-2.0 range (none for 1.0)."""
    factors: list[float] = []
    while speed > _ATEMPO_MAX:
        factors.append(_ATEMPO_MAX)
        speed /= _ATEMPO_MAX
    while speed < _ATEMPO_MIN:
        factors.append(_ATEMPO_MIN)
        speed /= _ATEMPO_MIN
    if speed != 1.0:
        factors.append(speed)
    return factors


def _build_graph(input_rate: int, speed: float) -> av.filter.Graph:
    """One filter graph does both jobs, so there is a single thing to feed and a single thing to flush:
    atempo changes speed without changing pitch, aformat resamples to 24 kHz mono s16."""
    graph = av.filter.Graph()
    nodes = [graph.add_abuffer(sample_rate=input_rate, format="s16", layout="mono")]
    nodes += [graph.add("atempo", tempo=f"{factor}") for factor in tempo_factors(speed)]
    nodes.append(
        graph.add("aformat", sample_fmts="s16", sample_rates=str(OUTPUT_SAMPLE_RATE), channel_layouts="mono")
    )
    nodes.append(graph.add("abuffersink"))
    graph.link_nodes(*nodes).configure()
    return graph


def _mono_int16(chunk: PcmChunk) -> np.ndarray:
    samples = np.asarray(chunk.samples)
    # Scaling floats here would hide an engine bug; the contract is int16 mono.
    if samples.dtype != np.int16 or samples.ndim != 1:
        raise ValueError(
            f"speech chunks must be 1-D int16 samples; got {samples.dtype} with shape {samples.shape}"
        )
    if chunk.sample_rate <= 0:
        raise ValueError(f"speech chunk sample rate must be positive; got {chunk.sample_rate}")
    return np.ascontiguousarray(samples)


def _check_format(response_format: str) -> None:
    if response_format not in SPEECH_FORMATS:
        raise ValueError(f"unknown speech response_format {response_format!r}; use one of {', '.join(SPEECH_FORMATS)}")


def _check_speed(speed: float) -> None:
    # Written so that NaN fails too.
    if not MIN_SPEED <= speed <= MAX_SPEED:
        raise ValueError(f"speed must be between {MIN_SPEED} and {MAX_SPEED}; got {speed}")
