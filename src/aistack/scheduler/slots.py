"""Per-device slots with a bounded FIFO queue and a maximum wait.

A request that finds the queue full, or waits longer than the maximum, gets 503 busy with a
`Retry-After` estimated from how long recent jobs held a slot on that device (DESIGN §4).
Everything here runs on the event loop; a worker thread hands its lease back through the loop.
"""

from __future__ import annotations

import asyncio
import logging
import math
import statistics
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field

from ..errors import AistackError, ErrorKind

log = logging.getLogger("aistack.scheduler")

RETRY_AFTER_MAX_S = 3600
_RECENT = 64


class Lease:
    """A held slot. Released exactly once: by the worker that ran the job when it ends, or, when no
    worker took it over, by whoever gives up on the job first."""

    def __init__(self, queue: DeviceQueue, capability: str, waited_s: float) -> None:
        self.device = queue.device
        self.capability = capability
        self.waited_s = waited_s
        self.granted_at = time.monotonic()
        self.taken_over = False
        # Set when the request is over: a worker still running for it stops at its next step.
        self.stop = threading.Event()
        self._queue = queue
        self._released = False
        self._on_release: list[Callable[[], None]] = []

    @property
    def released(self) -> bool:
        return self._released

    def on_release(self, callback: Callable[[], None]) -> None:
        if self._released:
            callback()
            return
        self._on_release.append(callback)

    def release(self, served: bool = False) -> None:
        """Give the slot back; `served` when a job ran to its end, so its time informs Retry-After."""
        if self._released:
            return
        self._released = True
        for callback in reversed(self._on_release):
            try:
                callback()
            except Exception:  # one faulty callback must not keep the slot
                log.exception("a release callback failed")
        self._queue._release(self, served)

    def abandon(self) -> None:
        """The request is over: stop the worker if one took the lease over (it releases when the
        engine has stopped), else give the slot back now."""
        self.stop.set()
        if not self.taken_over:
            self.release()


@dataclass
class _Waiter:
    future: asyncio.Future[Lease]
    capability: str
    enqueued_at: float = field(default_factory=lambda: time.monotonic())  # read through `time` (a test clock may stand for it)


class DeviceQueue:
    def __init__(self, device: str, slots: int, queue_size: int, max_wait_s: float,
                 wait_listeners: list[Callable[[str, float], None]] | None = None) -> None:
        self.device = device
        # Told (device, seconds waited) at each grant: the slot-wait metric.
        self.wait_listeners = wait_listeners if wait_listeners is not None else []
        self.slots = slots
        self.queue_size = queue_size
        self.max_wait_s = max_wait_s
        self._free = slots
        self._waiters: deque[_Waiter] = deque()
        self._holders: set[Lease] = set()
        self._running: Counter[str] = Counter()
        self._service_times: deque[float] = deque(maxlen=_RECENT)
        self._waits: deque[float] = deque(maxlen=_RECENT)
        self.granted = 0
        self.rejected = 0
        self.timed_out = 0

    @property
    def queued(self) -> int:
        return len(self._waiters)

    @property
    def busy(self) -> int:
        return self.slots - self._free

    @property
    def stopping(self) -> int:
        """Slots still held by a job whose request is over: told to stop, not ended yet."""
        # A copy first: this may be read from another thread while the loop grants and releases.
        return sum(1 for lease in tuple(self._holders) if lease.stop.is_set())

    async def acquire(self, capability: str) -> Lease:
        if self._free > 0 and not self._waiters:
            self._free -= 1
            return self._grant(capability, waited_s=0.0)
        if len(self._waiters) >= self.queue_size:
            self.rejected += 1
            raise self._busy(f"the {self.device} queue is full ({self.queued} waiting, {self.busy} running)")
        waiter = _Waiter(asyncio.get_running_loop().create_future(), capability)
        self._waiters.append(waiter)
        try:
            await asyncio.wait({waiter.future}, timeout=self.max_wait_s)
        except asyncio.CancelledError:  # the client left while queued
            self._withdraw(waiter)
            raise
        if waiter.future.done():
            return waiter.future.result()
        self._withdraw(waiter)
        self.timed_out += 1
        raise self._busy(f"no {self.device} slot came free within {self.max_wait_s:g} s")

    def _withdraw(self, waiter: _Waiter) -> None:
        if waiter.future.done() and not waiter.future.cancelled():
            waiter.future.result().release()  # granted just as it gave up: not a served job
            return
        waiter.future.cancel()
        try:
            self._waiters.remove(waiter)
        except ValueError:
            pass

    def _grant(self, capability: str, waited_s: float) -> Lease:
        lease = Lease(self, capability, waited_s)
        self._holders.add(lease)
        self._running[capability] += 1
        self._waits.append(waited_s)
        self.granted += 1
        for listener in self.wait_listeners:
            listener(self.device, waited_s)
        return lease

    def _release(self, lease: Lease, served: bool) -> None:
        self._holders.discard(lease)
        self._running[lease.capability] -= 1
        if served:
            self._service_times.append(time.monotonic() - lease.granted_at)
        while self._waiters:  # FIFO hand-over, skipping anyone who already left
            waiter = self._waiters.popleft()
            if not waiter.future.done():
                waiter.future.set_result(self._grant(waiter.capability, time.monotonic() - waiter.enqueued_at))
                return
        self._free += 1

    def typical_service_s(self) -> float:
        """The median slot time of recent jobs that ran to their end; before there are any, how long
        the running ones have taken so far (at least a second)."""
        if self._service_times:
            return statistics.median(self._service_times)
        now = time.monotonic()
        return max([1.0, *(now - lease.granted_at for lease in self._holders)])

    def retry_after_s(self) -> int:
        """Seconds until the work already here (running and queued) should have gone through the slots."""
        ahead = max(1, self.busy + self.queued)
        estimate = self.typical_service_s() * ahead / self.slots
        return max(1, min(RETRY_AFTER_MAX_S, math.ceil(estimate)))

    def _busy(self, reason: str) -> AistackError:
        retry_after = self.retry_after_s()
        log.debug("busy: %s; Retry-After %d s", reason, retry_after)  # the access log has each 503
        return AistackError(
            ErrorKind.BUSY,
            f"{reason}; retry in about {retry_after} s",
            headers={"Retry-After": str(retry_after)},
        )

    def describe(self) -> dict[str, object]:
        waits = sorted(self._waits)
        return {
            "slots": self.slots,
            "busy": self.busy,
            "queued": self.queued,
            "queue_size": self.queue_size,
            "max_wait_s": self.max_wait_s,
            "running": {capability: n for capability, n in self._running.items() if n},
            "typical_service_s": round(self.typical_service_s(), 3) if self._service_times else None,
            "slot_wait_s": {
                "p50": round(_percentile(waits, 0.5), 4),
                "p95": round(_percentile(waits, 0.95), 4),
                "max": round(waits[-1], 4),
            } if waits else None,
            "granted": self.granted,
            "rejected": self.rejected,
            "timed_out": self.timed_out,
        }


def _percentile(ordered: list[float], fraction: float) -> float:
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]
