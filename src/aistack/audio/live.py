"""Audio that arrives in pieces over a live session: 16-bit PCM or G.711 bytes, turned into 16 kHz mono
float32 as it comes (one resample, with the resampler's state kept across pieces)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import av
import numpy as np

from .decode import SAMPLE_RATE

Encoding = Literal["pcm16", "pcmu", "pcma"]


@dataclass(frozen=True)
class LiveFormat:
    encoding: Encoding
    rate: int

    @property
    def bytes_per_sample(self) -> int:
        return 2 if self.encoding == "pcm16" else 1

    def seconds(self, byte_count: int) -> float:
        return byte_count / self.bytes_per_sample / self.rate


PCM16_24K = LiveFormat("pcm16", 24_000)
PCMU_8K = LiveFormat("pcmu", 8_000)
PCMA_8K = LiveFormat("pcma", 8_000)


def _mu_law_table() -> np.ndarray:
    # ITU-T G.711: the byte is stored inverted; sign, 3-bit exponent, 4-bit mantissa, bias 0x84.
    codes = ~np.arange(256, dtype=np.int32) & 0xFF
    exponent = (codes >> 4) & 0x07
    mantissa = codes & 0x0F
    magnitude = (((mantissa << 3) + 0x84) << exponent) - 0x84
    return np.where(codes & 0x80, -magnitude, magnitude).astype(np.int16)


def _a_law_table() -> np.ndarray:
    # ITU-T G.711: even bits inverted (XOR 0x55); segment 0 is linear, the others double per segment.
    codes = np.arange(256, dtype=np.int32) ^ 0x55
    exponent = (codes >> 4) & 0x07
    mantissa = codes & 0x0F
    linear = np.where(exponent == 0, (mantissa << 4) + 8, ((mantissa << 4) + 0x108) << np.maximum(exponent - 1, 0))
    return np.where(codes & 0x80, linear, -linear).astype(np.int16)


MU_LAW = _mu_law_table()
A_LAW = _a_law_table()


def to_int16(data: bytes, encoding: Encoding) -> np.ndarray:
    """The samples in `data` as 16-bit linear PCM (its length is whole samples: see `LiveFormat`)."""
    if encoding == "pcm16":
        return np.frombuffer(data, dtype="<i2").astype(np.int16, copy=False)
    table = MU_LAW if encoding == "pcmu" else A_LAW
    return table[np.frombuffer(data, dtype=np.uint8)]


class LiveDecoder:
    """Bytes of one format in, 16 kHz float32 out, piece by piece; the same resampler (FFmpeg's) as files get."""

    def __init__(self, live_format: LiveFormat) -> None:
        self.format = live_format
        self._resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
        self._pts = 0

    def decode(self, data: bytes) -> np.ndarray:
        pcm = to_int16(data, self.format.encoding)
        if pcm.size == 0:
            return np.zeros(0, dtype=np.float32)
        frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = self.format.rate
        frame.pts = self._pts
        self._pts += pcm.size
        out = [piece.to_ndarray().reshape(-1) for piece in self._resampler.resample(frame)]
        return np.concatenate(out).astype(np.float32, copy=False) if out else np.zeros(0, dtype=np.float32)
