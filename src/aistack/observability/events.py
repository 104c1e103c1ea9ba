"""Engine progress as it happens, for metrics and for anyone who needs to watch decoding."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

log = logging.getLogger("aistack.events")

SegmentListener = Callable[[str, int], None]


class EngineEvents:
    """Listeners are called on the worker thread, right after the engine produced a segment."""

    def __init__(self) -> None:
        self._segment_listeners: list[SegmentListener] = []
        self._lock = threading.Lock()

    def on_segment(self, listener: SegmentListener) -> Callable[[], None]:
        with self._lock:
            self._segment_listeners.append(listener)

        def remove() -> None:
            with self._lock:
                self._segment_listeners.remove(listener)

        return remove

    def segment_decoded(self, model_id: str, index: int) -> None:
        with self._lock:
            listeners = list(self._segment_listeners)
        for listener in listeners:
            try:
                listener(model_id, index)
            except Exception:  # a faulty listener must not stop decoding
                log.exception("segment listener failed")
