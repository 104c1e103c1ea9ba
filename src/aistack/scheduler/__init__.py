"""Where inference runs: per-device slots and queues, and worker threads that stop between steps.

Every in-process job first takes a slot on its device (`admit`), which may queue or answer 503
busy; it then runs as a generator on that device's worker threads (`stream`), which check for a
stop request before each item, so a client that goes away stops the engine at its next step (a
segment, a sentence). The slot is given back when the engine has actually stopped.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import threading
from collections.abc import AsyncGenerator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from ..observability import tracing
from ..settings import SchedulerSettings
from .slots import DeviceQueue, Lease

__all__ = ["CPU", "DeviceQueue", "Lease", "Scheduler"]

T = TypeVar("T")

log = logging.getLogger("aistack.scheduler")

CPU = "cpu"
_ITEM, _ERROR, _END = "item", "error", "end"


class Scheduler:
    def __init__(self, settings: SchedulerSettings) -> None:
        self._settings = settings
        self._queues: dict[str, DeviceQueue] = {}
        self._workers: dict[str, ThreadPoolExecutor] = {}
        # (device, seconds waited for a slot), for every queue, present and future.
        self.wait_listeners: list[Callable[[str, float], None]] = []
        self.queue(CPU)

    def slots_on(self, device: str) -> int:
        return self._settings.cpu_slots if device == CPU else self._settings.gpu_slots

    def queue(self, device: str) -> DeviceQueue:
        found = self._queues.get(device)
        if found is None:
            s = self._settings
            slots = self.slots_on(device)
            found = self._queues[device] = DeviceQueue(device, slots, s.queue_size, s.max_wait_s, self.wait_listeners)
            # One thread per slot: a job holds its slot until the engine has stopped.
            self._workers[device] = ThreadPoolExecutor(slots, thread_name_prefix=f"aistack-{device}")
        return found

    async def admit(self, device: str, capability: str) -> Lease:
        """A slot on `device`, after waiting in its queue if need be; 503 busy when full or too slow."""
        queue = self.queue(device)
        with tracing.step(tracing.QUEUE_SPAN, {tracing.DEVICE: device, tracing.CAPABILITY: capability,
                                               tracing.QUEUE_DEPTH: queue.queued}) as waiting:
            lease = await queue.acquire(capability)
            waiting.set(tracing.QUEUE_WAIT, lease.waited_s)
            return lease

    def describe(self) -> dict[str, dict[str, object]]:
        return {device: queue.describe() for device, queue in self._queues.items()}

    def total_running(self) -> int:
        return sum(queue.busy for queue in self._queues.values())

    def total_queued(self) -> int:
        return sum(queue.queued for queue in self._queues.values())

    def shutdown(self) -> None:
        for workers in self._workers.values():
            workers.shutdown(wait=False, cancel_futures=True)

    async def stream(self, lease: Lease, produce: Callable[[], Iterator[T]]) -> AsyncGenerator[T, None]:
        """Run `produce()` on the lease's device and yield its items here as they are made.

        The worker takes the lease over and releases it once the engine has stopped. Leaving the
        `async for` early (or being cancelled) asks the worker to stop before its next item.
        """
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        stop = threading.Event()

        def on_loop(callback: Callable[..., None], *args: Any) -> None:
            try:
                loop.call_soon_threadsafe(callback, *args)
            except RuntimeError:  # the loop closed while the worker was finishing
                pass

        def work() -> None:
            iterator: Iterator[T] | None = None
            ran_to_end = False
            try:
                iterator = produce()
                while not (stop.is_set() or lease.stop.is_set()):
                    try:
                        item = next(iterator)
                    except StopIteration:
                        ran_to_end = True
                        break
                    on_loop(queue.put_nowait, (_ITEM, item))
            except BaseException as error:  # noqa: BLE001 - re-raised on the loop side
                on_loop(queue.put_nowait, (_ERROR, error))
            finally:
                try:
                    close = getattr(iterator, "close", None)
                    if close is not None:
                        close()
                except Exception:  # the engine's own clean-up failed; the slot must come back anyway
                    log.exception("an engine failed while stopping")
                finally:
                    on_loop(lease.release, ran_to_end)
                    on_loop(queue.put_nowait, (_END, None))

        if lease.released:
            raise RuntimeError("this lease was already given back")
        lease.taken_over = True
        try:
            # In the request's context (its trace among it), as the code on the loop side runs.
            self._workers[lease.device].submit(contextvars.copy_context().run, work)
        except RuntimeError:  # shutting down
            lease.release()
            raise
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
