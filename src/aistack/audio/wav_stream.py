"""Audio bodies that arrive in pieces: a WAV (its header split anywhere, sizes possibly unknown) or
raw 16-bit PCM, read as it streams into 16-bit mono chunks.
"""

from __future__ import annotations

import struct

import numpy as np
import numpy.typing as npt

from ..engines.base import PcmChunk


class WavError(ValueError):
    """The body is not audio this decoder can read."""


# WAVE format tags.
_PCM = 1
_FLOAT = 3
_EXTENSIBLE = 0xFFFE
_UNKNOWN_SIZES = (0, 0xFFFFFFFF)


class PcmStreamDecoder:
    """Bytes of an audio body, split anywhere, in; 16-bit mono PCM chunks out.

    A body that starts with `RIFF` is a WAV: its header may arrive in pieces, may carry extra
    chunks before `data`, and a streamed one gives 0 or 0xFFFFFFFF for the unknown sizes, which
    means "until the end". Anything else is raw 16-bit little-endian mono PCM at `raw_sample_rate`.
    A sample split between two network reads is kept until its other half arrives.
    """

    def __init__(self, raw_sample_rate: int) -> None:
        self._raw_rate = raw_sample_rate
        self._buffer = bytearray()
        self._state = "sniff"
        self._skip = 0
        self._data_left: int | None = None
        self._format: tuple[int, int, int] | None = None  # (tag, channels, bits)
        self.sample_rate: int | None = None
        self.samples = 0

    @property
    def seconds(self) -> float:
        return self.samples / self.sample_rate if self.sample_rate else 0.0

    def feed(self, data: bytes) -> PcmChunk | None:
        self._buffer += data
        pieces: list[np.ndarray] = []
        while self._step(pieces):
            pass
        if not pieces:
            return None
        samples = pieces[0] if len(pieces) == 1 else np.concatenate(pieces)
        if samples.size == 0:
            return None
        self.samples += int(samples.size)
        assert self.sample_rate is not None
        return PcmChunk(samples, self.sample_rate)

    def finish(self) -> None:
        """The body ended: complain if it ended inside the header."""
        if self._state == "sniff":
            # Fewer than four bytes of raw PCM (or none): at most one sample, not worth a chunk.
            return
        if self._state in ("riff", "chunk", "fmt", "skip"):
            # A WAV whose `data` chunk never began, whether or not its `fmt` had arrived.
            raise WavError("the body ended inside the WAV header")

    def _step(self, out: list[np.ndarray]) -> bool:
        """Advance one state; False when more bytes are needed."""
        buf = self._buffer
        state = self._state
        if state == "sniff":
            if len(buf) < 4:
                return False
            if bytes(buf[:4]) == b"RIFF":
                self._state = "riff"
            else:
                self._state = "raw"
                self._format = (_PCM, 1, 16)
                self.sample_rate = self._raw_rate
            return True
        if state == "riff":
            if len(buf) < 12:
                return False
            if bytes(buf[8:12]) != b"WAVE":
                raise WavError("a RIFF body that is not WAVE")
            del buf[:12]
            self._state = "chunk"
            return True
        if state == "chunk":
            if len(buf) < 8:
                return False
            chunk_id = bytes(buf[:4])
            (size,) = struct.unpack("<I", buf[4:8])
            del buf[:8]
            if chunk_id == b"fmt ":
                self._skip = size
                self._state = "fmt"
            elif chunk_id == b"data":
                if self._format is None:
                    raise WavError("WAV data before its fmt chunk")
                self._data_left = None if size in _UNKNOWN_SIZES else size
                self._state = "data"
            else:
                self._skip = size + (size & 1)
                self._state = "skip"
            return True
        if state == "fmt":
            size = self._skip
            padded = size + (size & 1)
            if len(buf) < padded:
                return False
            self._parse_fmt(bytes(buf[:size]))
            del buf[:padded]
            self._state = "chunk"
            return True
        if state == "skip":
            if not buf:
                return False
            dropped = min(self._skip, len(buf))
            del buf[:dropped]
            self._skip -= dropped
            if self._skip == 0:
                self._state = "chunk"
            return True
        if state in ("data", "raw"):
            return self._take_samples(out)
        if state == "trailer":
            buf.clear()  # chunks after the audio (LIST, ...) carry nothing we need
            return False
        raise AssertionError(state)

    def _parse_fmt(self, fmt: bytes) -> None:
        if len(fmt) < 16:
            raise WavError("a WAV fmt chunk shorter than 16 bytes")
        tag, channels, rate, _byte_rate, _align, bits = struct.unpack("<HHIIHH", fmt[:16])
        if tag == _EXTENSIBLE and len(fmt) >= 26:
            (tag,) = struct.unpack("<H", fmt[24:26])
        if (tag, bits) not in ((_PCM, 16), (_PCM, 32), (_FLOAT, 32)) or channels < 1 or rate < 1:
            raise WavError(f"unsupported WAV encoding (format {tag}, {bits} bit, {channels} channels, {rate} Hz)")
        self._format = (tag, channels, bits)
        self.sample_rate = rate

    def _take_samples(self, out: list[np.ndarray]) -> bool:
        assert self._format is not None
        tag, channels, bits = self._format
        frame = channels * bits // 8
        available = len(self._buffer)
        if self._data_left is not None:
            available = min(available, self._data_left)
        usable = available - available % frame
        if usable == 0:
            if self._data_left is not None and self._data_left < frame:
                self._end_of_data()
                return True
            return False
        raw = bytes(self._buffer[:usable])
        del self._buffer[:usable]
        if self._data_left is not None:
            self._data_left -= usable
        out.append(_to_mono_int16(raw, tag, channels, bits))
        if self._data_left is not None and self._data_left < frame:
            self._end_of_data()
        return True

    def _end_of_data(self) -> None:
        left = self._data_left or 0
        del self._buffer[: min(left, len(self._buffer))]
        self._data_left = None
        self._state = "trailer"


def _to_mono_int16(raw: bytes, tag: int, channels: int, bits: int) -> np.ndarray:
    if tag == _FLOAT:
        values = np.frombuffer(raw, dtype="<f4").astype(np.float32)
        scaled: npt.NDArray[np.float32] = np.clip(values, -1.0, 1.0) * 32767.0
    elif bits == 32:
        scaled = np.frombuffer(raw, dtype="<i4").astype(np.float32) / 65536.0
    else:
        samples = np.frombuffer(raw, dtype="<i2")
        if channels == 1:
            return samples.astype(np.int16, copy=True)
        scaled = samples.astype(np.float32)
    if channels > 1:
        scaled = scaled.reshape(-1, channels).mean(axis=1)
    return np.clip(np.rint(scaled), -32768, 32767).astype(np.int16)
