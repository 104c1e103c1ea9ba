"""Any audio FFmpeg can read, decoded in-process with PyAV to 16 kHz mono float32 (no temp files)."""

from __future__ import annotations

import io
from typing import BinaryIO, Literal

import av
import numpy as np

from ..errors import malformed

SAMPLE_RATE = 16_000

# Containers whose header states the exact length, so a file shorter than that was cut off.
_EXACT_LENGTH_FORMATS = {"wav", "aiff", "w64", "flac", "caf"}
# Tools writing WAV to a pipe put zero or a near-maximal size in the header because they cannot know it.
_UNBOUNDED_WAV_BYTES = 0x7FFF0000
_FORMATS_HINT = "wav, mp3, ogg/opus, flac, m4a, webm or any other format FFmpeg reads"


def decode_audio(source: BinaryIO | bytes, *, param: str = "file") -> np.ndarray:
    """Decode the first audio stream of `source` to 16 kHz mono float32 samples.

    Raises a 400 `malformed` error naming `param` for empty, undecodable, cut-off or silent-less input.
    """
    stream_in: BinaryIO = io.BytesIO(source) if isinstance(source, bytes) else source
    if _size(stream_in) == 0:
        raise malformed(f"the uploaded {param} is empty; send an audio file ({_FORMATS_HINT})", param=param)
    try:
        container = av.open(stream_in, mode="r", metadata_errors="ignore")
    except (av.FFmpegError, UnicodeDecodeError, ValueError) as error:
        raise malformed(
            f"could not read the uploaded {param} as audio ({_describe(error)}); send {_FORMATS_HINT}",
            param=param,
        ) from None
    with container:
        if not container.streams.audio:
            raise malformed(
                f"the uploaded {param} has no audio stream; send a file with sound in it ({_FORMATS_HINT})",
                param=param,
            )
        stream = container.streams.audio[0]
        resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
        chunks: list[np.ndarray] = []
        try:
            for frame in container.decode(stream):
                frame.pts = None
                chunks.extend(out.to_ndarray().reshape(-1) for out in resampler.resample(frame))
            chunks.extend(out.to_ndarray().reshape(-1) for out in resampler.resample(None))
        except (av.FFmpegError, ValueError) as error:
            decoded_s = sum(len(c) for c in chunks) / SAMPLE_RATE
            raise malformed(
                f"the audio in {param} is corrupt after {decoded_s:.1f} s ({_describe(error)}); "
                "re-export or re-encode the file and try again",
                param=param,
            ) from None
        samples = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.float32)
        if samples.size == 0:
            raise malformed(f"no audio could be decoded from {param}; the file holds no samples", param=param)
        _reject_truncated(container, samples.size / SAMPLE_RATE, param, stream_in)
    return samples.astype(np.float32, copy=False)


def _reject_truncated(container: av.container.InputContainer, decoded_s: float, param: str, source: BinaryIO) -> None:
    format_names = set((container.format.name or "").split(","))
    if "wav" in format_names:
        _reject_short_wav(source, param)
        return
    if not format_names & _EXACT_LENGTH_FORMATS or not container.duration:
        return
    declared_s = container.duration / av.time_base
    if declared_s - decoded_s > max(0.25, 0.02 * declared_s):
        raise malformed(
            f"the uploaded {param} is cut off: its header declares {declared_s:.2f} s of audio but only "
            f"{decoded_s:.2f} s is there; upload the complete file",
            param=param,
        )


def _reject_short_wav(source: BinaryIO, param: str) -> None:
    """FFmpeg sizes a WAV by the bytes present, so compare the header's data size with the file itself."""
    size = _size(source)
    source.seek(0)
    header = source.read(64 * 1024)
    if header[:4] not in (b"RIFF", b"RIFX") or header[8:12] != b"WAVE":
        return
    byte_order: Literal["big", "little"] = "big" if header[:4] == b"RIFX" else "little"
    offset = 12
    while offset + 8 <= len(header):
        chunk_id, chunk_size = header[offset : offset + 4], int.from_bytes(header[offset + 4 : offset + 8], byte_order)
        if chunk_id == b"data":
            if chunk_size == 0 or chunk_size >= _UNBOUNDED_WAV_BYTES:
                return
            present = size - (offset + 8)
            if present < chunk_size:
                raise malformed(
                    f"the uploaded {param} is cut off: its WAV header declares {chunk_size} bytes of audio but only "
                    f"{present} are there; upload the complete file",
                    param=param,
                )
            return
        offset += 8 + chunk_size + (chunk_size & 1)


def _size(stream: BinaryIO) -> int:
    position = stream.tell()
    stream.seek(0, io.SEEK_END)
    size = stream.tell()
    stream.seek(position)
    return size


def _describe(error: BaseException) -> str:
    text = getattr(error, "strerror", None) or str(error)
    return text.strip().rstrip(".") or type(error).__name__


# Sample widths raw PCM may have: 8-bit is unsigned (as in WAV), 16-, 24- and 32-bit are signed.
PCM_WIDTHS = (1, 2, 3, 4)


def decode_pcm(data: bytes, rate: int, width: int, channels: int, *, param: str = "audio") -> np.ndarray:
    """Raw little-endian PCM, as a stream protocol declares it (rate, bytes per sample, channels),
    to 16 kHz mono float32 samples like `decode_audio` gives.

    Raises a 400 `malformed` error naming `param` for a format it cannot read or a cut sample.
    """
    if width not in PCM_WIDTHS or channels < 1 or rate < 1:
        raise malformed(
            f"the {param} format (rate {rate} Hz, width {width} bytes, {channels} channels) cannot be read; "
            "send PCM of 1 to 4 bytes per sample, at least one channel and a positive rate",
            param=param,
        )
    frame_bytes = width * channels
    if len(data) % frame_bytes:
        raise malformed(
            f"the {param} holds {len(data)} bytes, not a whole number of {frame_bytes}-byte frames "
            f"({width} bytes x {channels} channels); send whole samples",
            param=param,
        )
    if not data:
        raise malformed(f"no audio was sent in {param}; send the samples before it ends", param=param)
    if width == 1:
        samples = (np.frombuffer(data, dtype=np.uint8).astype(np.float32) - 128.0) / 128.0
    elif width == 3:
        triplets = np.frombuffer(data, dtype=np.uint8).reshape(-1, 3).astype(np.int32)
        # Shifted into the top three bytes of an int32, so the arithmetic shift back extends the sign.
        packed = (triplets[:, 0] << 8) | (triplets[:, 1] << 16) | (triplets[:, 2] << 24)
        samples = (packed >> 8).astype(np.float32) / float(1 << 23)
    else:
        dtype = "<i2" if width == 2 else "<i4"
        samples = np.frombuffer(data, dtype=dtype).astype(np.float32) / float(1 << (8 * width - 1))
    mono = samples.reshape(-1, channels).mean(axis=1, dtype=np.float32) if channels > 1 else samples
    if rate == SAMPLE_RATE:
        return np.ascontiguousarray(mono, dtype=np.float32)
    frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(mono, dtype=np.float32).reshape(1, -1), format="flt", layout="mono")
    frame.sample_rate = rate
    resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
    pieces = [out.to_ndarray().reshape(-1) for out in (*resampler.resample(frame), *resampler.resample(None))]
    return np.concatenate(pieces).astype(np.float32, copy=False) if pieces else np.zeros(0, dtype=np.float32)
