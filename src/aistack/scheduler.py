"""Where blocking inference runs: off the event loop, one worker thread per job, stoppable between steps.

A job is a generator; the worker pulls one item at a time and checks for a stop request before
each pull, so a client that goes away stops the engine at its next step (a segment, a sentence).
"""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, TypeVar

T = TypeVar("T")

_ITEM, _ERROR, _END = "item", "error", "end"


class Scheduler:
    def __init__(self) -> None:
        self._running: Counter[str] = Counter()
        self._lock = threading.Lock()

    def running(self) -> dict[str, int]:
        with self._lock:
            return {key: n for key, n in self._running.items() if n}

    def total_running(self) -> int:
        with self._lock:
            return sum(self._running.values())

    async def stream(self, key: str, produce: Callable[[], Iterator[T]]) -> AsyncIterator[T]:
        """Run `produce()` in a worker thread and yield its items here as they are made.

        Leaving the `async for` early (or being cancelled) asks the worker to stop before its next item.
        """
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        stop = threading.Event()

        def deliver(kind: str, value: Any) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, (kind, value))
            except RuntimeError:  # the loop closed while the worker was finishing
                pass

        def work() -> None:
            iterator: Iterator[T] | None = None
            try:
                iterator = produce()
                while not stop.is_set():
                    try:
                        item = next(iterator)
                    except StopIteration:
                        break
                    deliver(_ITEM, item)
            except BaseException as error:  # noqa: BLE001 - re-raised on the loop side
                deliver(_ERROR, error)
            finally:
                close = getattr(iterator, "close", None)
                if close is not None:
                    close()
                with self._lock:
                    self._running[key] -= 1
                deliver(_END, None)

        with self._lock:
            self._running[key] += 1
        threading.Thread(target=work, name=f"aistack-{key}", daemon=True).start()
        try:
            while True:
                kind, value = await queue.get()
                if kind == _END:
                    return
                if kind == _ERROR:
                    raise value
                yield value
        finally:
            stop.set()
