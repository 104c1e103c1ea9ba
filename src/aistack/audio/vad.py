"""Streaming voice activity detection on Silero VAD: the ONNX model faster-whisper ships in its package
(nothing is downloaded), run with onnxruntime on 32 ms windows as audio arrives, its recurrent state
carried from window to window; and the speech start / stop decisions a live session's turns follow."""

from __future__ import annotations

import functools
import importlib.util
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from .decode import SAMPLE_RATE

WINDOW = 512  # samples at 16 kHz: the window Silero v5+ is trained on
_CONTEXT = 64  # samples of the previous window the model sees in front of each one
_STATE_SHAPE = (1, 1, 128)
# Speech ends when the probability falls this far below the start threshold (Silero's own hysteresis).
_HYSTERESIS = 0.15


def silero_model_path() -> Path:
    spec = importlib.util.find_spec("faster_whisper")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("faster-whisper is not installed; it carries the Silero VAD model live sessions need")
    path = Path(next(iter(spec.submodule_search_locations))) / "assets" / "silero_vad_v6.onnx"
    if not path.is_file():
        raise RuntimeError(f"the Silero VAD model is missing from faster-whisper's package ({path}); reinstall faster-whisper")
    return path


@functools.cache
def _session() -> object:
    import onnxruntime

    options = onnxruntime.SessionOptions()
    # A window takes well under a millisecond; more threads would only contend with the decoders.
    options.inter_op_num_threads = 1
    options.intra_op_num_threads = 1
    options.log_severity_level = 4
    return onnxruntime.InferenceSession(str(silero_model_path()), providers=["CPUExecutionProvider"], sess_options=options)


_session_lock = threading.Lock()


def load_model() -> None:
    """Load the shared model now (blocking, once per process), so the first session does not wait for it."""
    with _session_lock:
        _session()


class SpeechProbabilities:
    """One audio stream's speech probability per 512-sample window, as samples come in any sizes."""

    def __init__(self) -> None:
        self._session = _session()
        self._h = np.zeros(_STATE_SHAPE, dtype=np.float32)
        self._c = np.zeros(_STATE_SHAPE, dtype=np.float32)
        self._context = np.zeros(_CONTEXT, dtype=np.float32)
        self._pending = np.zeros(0, dtype=np.float32)

    @property
    def pending_samples(self) -> int:
        """Samples fed that wait for the rest of their window."""
        return int(self._pending.size)

    def feed(self, samples: np.ndarray) -> np.ndarray:
        """The probabilities of the windows `samples` completes (the rest waits for the next feed)."""
        audio = np.concatenate([self._pending, samples.astype(np.float32, copy=False)])
        count = audio.size // WINDOW
        self._pending = audio[count * WINDOW:]
        if count == 0:
            return np.zeros(0, dtype=np.float32)
        windows = audio[: count * WINDOW].reshape(count, WINDOW)
        previous = np.concatenate([self._context[None, :], windows[:-1, -_CONTEXT:]], axis=0)
        batch = np.concatenate([previous, windows], axis=1)
        self._context = windows[-1, -_CONTEXT:].copy()
        probabilities, self._h, self._c = self._session.run(  # type: ignore[attr-defined]
            None, {"input": batch, "h": self._h, "c": self._c}
        )
        return np.asarray(probabilities, dtype=np.float32).reshape(-1)


@dataclass(frozen=True)
class VadParams:
    threshold: float = 0.5
    prefix_padding_ms: int = 300
    silence_duration_ms: int = 500


@dataclass(frozen=True)
class SpeechEdge:
    kind: Literal["started", "stopped"]
    sample: int  # where speech started, or where the silence that ended it began (16 kHz, from the stream's start)
    detected_at: int  # the sample at which the decision was made


class SpeechDetector:
    """Speech starts at the first window at or above the threshold; it stops once the probability has
    stayed below threshold - 0.15 for the silence duration."""

    def __init__(self, params: VadParams, origin: int = 0) -> None:
        """`origin`: the stream sample at which this detector's first sample lies. A detector made anew
        mid-stream (a cleared buffer, new turn detection) reports its edges in the stream's own time."""
        self.params = params
        self._origin = origin
        self._probabilities = SpeechProbabilities()
        self._windows = 0
        self.speaking = False
        self._silence_from: int | None = None

    @property
    def trailing_silence(self) -> bool:
        """Speech is on, but the probability has fallen: the turn may be about to end."""
        return self.speaking and self._silence_from is not None

    @property
    def silence_ms(self) -> int:
        """How long the trailing silence has lasted so far (0 while speech goes on)."""
        if not self.trailing_silence or self._silence_from is None:
            return 0
        return (self._windows * WINDOW - self._silence_from) * 1000 // SAMPLE_RATE

    @property
    def silence_to_come(self) -> int:
        """Samples of silence still to come, beyond those fed, before the trailing silence ends the turn."""
        if not self.trailing_silence or self._silence_from is None:
            return 0
        needed = max(1, round(self.params.silence_duration_ms * SAMPLE_RATE / 1000 / WINDOW)) * WINDOW
        heard = self._windows * WINDOW - self._silence_from + self._probabilities.pending_samples
        return max(0, needed - heard)

    def feed(self, samples: np.ndarray) -> list[SpeechEdge]:
        edges: list[SpeechEdge] = []
        silence_windows = max(1, round(self.params.silence_duration_ms * SAMPLE_RATE / 1000 / WINDOW))
        low = max(0.0, self.params.threshold - _HYSTERESIS)
        for probability in self._probabilities.feed(samples):
            start = self._windows * WINDOW
            self._windows += 1
            if not self.speaking:
                if probability >= self.params.threshold:
                    self.speaking = True
                    self._silence_from = None
                    edges.append(SpeechEdge("started", self._origin + start, self._origin + start + WINDOW))
                continue
            if probability >= low:
                self._silence_from = None
                continue
            if self._silence_from is None:
                self._silence_from = start
            if (self._windows * WINDOW - self._silence_from) >= silence_windows * WINDOW:
                edges.append(SpeechEdge("stopped", self._origin + self._silence_from, self._origin + self._windows * WINDOW))
                self.speaking = False
                self._silence_from = None
        return edges
