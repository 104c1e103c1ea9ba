"""Engine progress as it happens, for metrics and for anyone who needs to watch decoding."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

log = logging.getLogger("aistack.events")

StepListener = Callable[[str, int], None]


class EngineEvents:
    """Listeners are called on the worker thread right after an engine finished a step: a decoded
    segment for speech-to-text, a synthesized sentence for text-to-speech."""

    def __init__(self) -> None:
        self._step_listeners: list[StepListener] = []
        self._lock = threading.Lock()
        # Told ("transcribed" or "synthesized", model id, seconds of audio), on the serving loop.
        self.audio_listeners: list[Callable[[str, str, float], None]] = []

    def audio_done(self, direction: str, model_id: str, seconds: float) -> None:
        for listener in self.audio_listeners:
            try:
                listener(direction, model_id, seconds)
            except Exception:  # a metric must not stop a request
                log.exception("an audio listener failed")

    def on_step(self, listener: StepListener) -> Callable[[], None]:
        with self._lock:
            self._step_listeners.append(listener)

        def remove() -> None:
            with self._lock:
                self._step_listeners.remove(listener)

        return remove

    def step_done(self, model_id: str, index: int) -> None:
        with self._lock:
            listeners = list(self._step_listeners)
        for listener in listeners:
            try:
                listener(model_id, index)
            except Exception:  # a faulty listener must not stop decoding
                log.exception("an engine step listener failed")
