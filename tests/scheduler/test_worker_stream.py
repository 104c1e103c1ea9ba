"""Scheduler.stream: a generator runs on the device's worker threads, its items arrive on the loop,
and the slot is given back only once the engine has stopped.

Plain asyncio (`asyncio.run` per test); no engine, no HTTP. Generators block on threading events
rather than sleeping wherever the order of events matters.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest

from aistack.scheduler import CPU, Scheduler
from aistack.settings import SchedulerSettings

TIMEOUT = 5.0


def make_scheduler(cpu_slots: int = 1, queue_size: int = 4, max_wait_s: float = 5.0) -> Scheduler:
    return Scheduler(SchedulerSettings(cpu_slots=cpu_slots, queue_size=queue_size, max_wait_s=max_wait_s))


def run(test: Callable[[], Awaitable[Any]]) -> Any:
    return asyncio.run(asyncio.wait_for(test(), timeout=10))


async def eventually(condition: Callable[[], bool], timeout: float = TIMEOUT) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.005)
    return True


def cpu_threads() -> set[threading.Thread]:
    return {thread for thread in threading.enumerate() if thread.name.startswith("aistack-cpu")}


def test_items_arrive_in_order_and_slot_is_released_after_the_engine_stops() -> None:
    loop_thread = threading.current_thread()
    engine_stopped = threading.Event()
    seen_at_release: list[tuple[bool, threading.Thread]] = []

    def produce() -> Iterator[int]:
        try:
            yield from range(20)
        finally:
            time.sleep(0.05)  # the engine takes a moment to wind down
            engine_stopped.set()

    async def scenario() -> None:
        scheduler = make_scheduler()
        try:
            queue = scheduler.queue(CPU)
            lease = await scheduler.admit(CPU, "tts")
            lease.on_release(lambda: seen_at_release.append((engine_stopped.is_set(), threading.current_thread())))
            assert queue.busy == 1
            items = [item async for item in scheduler.stream(lease, produce)]
            assert items == list(range(20))
            # The worker hands the lease back before it announces the end, so it is back by now.
            assert lease.released
            assert queue.busy == 0
            assert scheduler.total_running() == 0
            assert seen_at_release == [(True, loop_thread)], "released before the engine stopped, or off the loop"
        finally:
            scheduler.shutdown()

    run(scenario)


def test_stream_does_not_release_while_the_engine_is_still_running() -> None:
    gate = threading.Event()
    engine_stopped = threading.Event()

    def produce() -> Iterator[str]:
        try:
            yield "first"
            gate.wait(TIMEOUT)
            yield "second"
        finally:
            engine_stopped.set()

    async def scenario() -> None:
        scheduler = make_scheduler()
        try:
            lease = await scheduler.admit(CPU, "asr")
            stream = scheduler.stream(lease, produce)
            assert await stream.__anext__() == "first"
            await asyncio.sleep(0.05)
            assert not lease.released  # the engine is blocked mid-job: the slot stays held
            assert scheduler.total_running() == 1
            gate.set()
            assert await stream.__anext__() == "second"
            with pytest.raises(StopAsyncIteration):
                await stream.__anext__()
            assert engine_stopped.is_set()
            assert lease.released
            assert scheduler.total_running() == 0
        finally:
            gate.set()
            scheduler.shutdown()

    run(scenario)


def test_leaving_early_stops_the_generator_before_its_next_item() -> None:
    produced: list[int] = []
    resume = threading.Event()
    finished = threading.Event()
    finished_at_release: list[bool] = []

    def produce() -> Iterator[int]:
        try:
            for i in range(100):
                produced.append(i)
                yield i
                resume.wait(TIMEOUT)  # hold the engine here until the test lets it go on
        finally:
            time.sleep(0.05)  # winding down takes a moment: the slot must stay held meanwhile
            finished.set()

    async def scenario() -> None:
        scheduler = make_scheduler()
        try:
            queue = scheduler.queue(CPU)
            lease = await scheduler.admit(CPU, "tts")
            lease.on_release(lambda: finished_at_release.append(finished.is_set()))
            stream = scheduler.stream(lease, produce)
            async for item in stream:
                assert item == 0
                break
            await stream.aclose()
            resume.set()  # the engine may finish the step it is in, no more

            assert await eventually(lambda: lease.released), "the slot was not given back after aclose"
            assert finished.is_set()
            assert finished_at_release == [True]
            assert len(produced) <= 2, f"the generator went on after the consumer left: {produced}"
            assert queue.busy == 0
            await asyncio.sleep(0.05)
            assert len(produced) <= 2
        finally:
            resume.set()
            scheduler.shutdown()

    run(scenario)


def test_dropping_the_stream_without_aclose_still_stops_the_generator() -> None:
    """`break` alone: the loop's async-generator finalizer closes the stream."""
    produced: list[int] = []
    finished = threading.Event()

    def produce() -> Iterator[int]:
        try:
            for i in range(1000):
                produced.append(i)
                yield i
                time.sleep(0.002)
        finally:
            finished.set()

    async def scenario() -> None:
        scheduler = make_scheduler()
        try:
            lease = await scheduler.admit(CPU, "tts")
            async for item in scheduler.stream(lease, produce):
                if item == 2:
                    break
            assert await eventually(lambda: lease.released)
            assert finished.is_set()
            assert len(produced) < 1000
            assert scheduler.total_running() == 0
        finally:
            scheduler.shutdown()

    run(scenario)


def test_cancelling_the_consumer_stops_the_generator_and_releases() -> None:
    started = threading.Event()
    finished = threading.Event()
    produced: list[int] = []

    def produce() -> Iterator[int]:
        try:
            for i in range(1000):
                produced.append(i)
                started.set()
                yield i
                time.sleep(0.002)
        finally:
            finished.set()

    async def scenario() -> None:
        scheduler = make_scheduler()
        try:
            lease = await scheduler.admit(CPU, "asr")

            async def consume() -> None:
                async for _ in scheduler.stream(lease, produce):
                    await asyncio.sleep(0.01)

            task = asyncio.create_task(consume())
            assert await eventually(started.is_set)
            await asyncio.sleep(0.02)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert await eventually(lambda: lease.released)
            assert finished.is_set()
            assert len(produced) < 1000
            assert scheduler.total_running() == 0
        finally:
            scheduler.shutdown()

    run(scenario)


class EngineFailed(Exception):
    pass


def test_an_exception_in_the_generator_reaches_the_consumer_and_releases() -> None:
    def produce() -> Iterator[int]:
        yield 1
        yield 2
        raise EngineFailed("boom")

    async def scenario() -> None:
        scheduler = make_scheduler()
        try:
            lease = await scheduler.admit(CPU, "asr")
            received: list[int] = []
            with pytest.raises(EngineFailed, match="boom"):
                async for item in scheduler.stream(lease, produce):
                    received.append(item)
            assert received == [1, 2]
            assert await eventually(lambda: lease.released)
            assert scheduler.total_running() == 0
            # The slot is really free: the next job gets it at once.
            again = await scheduler.admit(CPU, "asr")
            assert again.waited_s == 0
            again.release()
        finally:
            scheduler.shutdown()

    run(scenario)


def test_an_exception_from_produce_itself_reaches_the_consumer_and_releases() -> None:
    def produce() -> Iterator[int]:
        raise EngineFailed("could not start")

    async def scenario() -> None:
        scheduler = make_scheduler()
        try:
            lease = await scheduler.admit(CPU, "asr")
            with pytest.raises(EngineFailed, match="could not start"):
                async for _ in scheduler.stream(lease, produce):
                    pass
            assert await eventually(lambda: lease.released)
            assert scheduler.total_running() == 0
        finally:
            scheduler.shutdown()

    run(scenario)


def test_abandoning_a_taken_over_lease_stops_the_engine_and_the_worker_releases_it() -> None:
    """At request end the handler abandons its lease: the engine stops at its next step and only
    the worker, once the engine has stopped, gives the slot back."""
    gate = threading.Event()
    busy = threading.Event()
    next_step = threading.Event()
    engine_stopped = threading.Event()

    def produce() -> Iterator[str]:
        try:
            yield "started"
            busy.set()
            gate.wait(TIMEOUT)  # the engine is busy with something that cannot be interrupted
            yield "second"
            next_step.set()
            yield "third"
        finally:
            engine_stopped.set()

    async def scenario() -> None:
        scheduler = make_scheduler()
        try:
            lease = await scheduler.admit(CPU, "tts")
            stream = scheduler.stream(lease, produce)
            assert await stream.__anext__() == "started"
            assert lease.taken_over
            assert await eventually(busy.is_set)  # the worker is inside the engine, past its stop check
            lease.abandon()
            await asyncio.sleep(0.05)
            assert not lease.released  # the worker still owns the slot while the engine is busy
            assert scheduler.total_running() == 1
            gate.set()
            assert await eventually(lambda: lease.released)
            assert engine_stopped.is_set() and not next_step.is_set()  # stopped before its next step
            assert scheduler.total_running() == 0
            await stream.aclose()
        finally:
            gate.set()
            scheduler.shutdown()

    run(scenario)


def test_stream_on_a_released_lease_raises_and_runs_nothing() -> None:
    called: list[bool] = []

    def produce() -> Iterator[int]:
        called.append(True)
        yield 1

    async def scenario() -> None:
        scheduler = make_scheduler()
        try:
            lease = await scheduler.admit(CPU, "asr")
            lease.release()
            with pytest.raises(RuntimeError, match="already given back"):
                async for _ in scheduler.stream(lease, produce):
                    pass
            await asyncio.sleep(0.02)
            assert called == []
            assert not lease.taken_over
            assert scheduler.total_running() == 0
        finally:
            scheduler.shutdown()

    run(scenario)


def test_stream_after_shutdown_raises_and_releases() -> None:
    def produce() -> Iterator[int]:
        yield 1

    async def scenario() -> None:
        scheduler = make_scheduler()
        lease = await scheduler.admit(CPU, "asr")
        scheduler.shutdown()
        with pytest.raises(RuntimeError):
            async for _ in scheduler.stream(lease, produce):
                pass
        assert lease.released
        assert scheduler.total_running() == 0

    run(scenario)


def test_worker_threads_are_bounded_by_slots_and_end_on_shutdown() -> None:
    before = cpu_threads()
    used: set[threading.Thread] = set()
    lock = threading.Lock()

    def produce() -> Iterator[int]:
        with lock:
            used.add(threading.current_thread())
        for i in range(3):
            time.sleep(0.005)
            yield i

    async def job(scheduler: Scheduler) -> list[int]:
        lease = await scheduler.admit(CPU, "asr")
        return [item async for item in scheduler.stream(lease, produce)]

    async def scenario() -> set[threading.Thread]:
        scheduler = make_scheduler(cpu_slots=2, queue_size=10)
        try:
            for _ in range(10):
                assert await job(scheduler) == [0, 1, 2]
            results = await asyncio.gather(*(job(scheduler) for _ in range(10)))
            assert results == [[0, 1, 2]] * 10
            queue = scheduler.queue(CPU)
            assert queue.granted == 20
            assert queue.rejected == 0
            assert await eventually(lambda: scheduler.total_running() == 0)
            mine = cpu_threads() - before
            assert 1 <= len(mine) <= 2, [thread.name for thread in mine]
            assert len(used) <= 2, [thread.name for thread in used]
            assert used <= mine
            assert threading.current_thread() not in used
        finally:
            scheduler.shutdown()
        return mine

    mine = run(scenario)
    for thread in mine:
        thread.join(timeout=TIMEOUT)
        assert not thread.is_alive(), f"{thread.name} still running after shutdown"


def test_describe_and_totals_follow_the_scheduler_queues() -> None:
    gate = threading.Event()

    def produce() -> Iterator[int]:
        gate.wait(TIMEOUT)
        yield 1

    async def scenario() -> None:
        scheduler = make_scheduler(cpu_slots=1, queue_size=2)
        try:
            lease = await scheduler.admit(CPU, "asr")
            waiting = asyncio.create_task(scheduler.admit(CPU, "tts"))
            assert await eventually(lambda: scheduler.total_queued() == 1)
            described = scheduler.describe()
            assert set(described) == {CPU}
            assert described[CPU]["busy"] == 1
            assert described[CPU]["queued"] == 1
            assert described[CPU]["running"] == {"asr": 1}
            assert scheduler.total_running() == 1
            assert scheduler.total_queued() == 1

            consumer = asyncio.create_task(_collect(scheduler.stream(lease, produce)))
            await asyncio.sleep(0.01)
            gate.set()
            assert await consumer == [1]
            second = await waiting  # the worker's release went to the waiting request
            assert second.capability == "tts"
            assert scheduler.total_queued() == 0
            assert scheduler.describe()[CPU]["running"] == {"tts": 1}
            second.release()
            assert scheduler.total_running() == 0
        finally:
            gate.set()
            scheduler.shutdown()

    run(scenario)


async def _collect(stream: Any) -> list[Any]:
    return [item async for item in stream]


def test_a_generator_whose_cleanup_fails_on_early_stop_still_releases() -> None:
    resume = threading.Event()

    def produce() -> Iterator[int]:
        try:
            for i in range(100):
                yield i
                resume.wait(TIMEOUT)
        finally:
            raise EngineFailed("cleanup failed")

    async def scenario() -> None:
        scheduler = make_scheduler()
        try:
            lease = await scheduler.admit(CPU, "tts")
            stream = scheduler.stream(lease, produce)
            assert await stream.__anext__() == 0
            await stream.aclose()
            resume.set()
            assert await eventually(lambda: lease.released, timeout=1.0), "the slot leaked"
            assert scheduler.total_running() == 0
        finally:
            resume.set()
            scheduler.shutdown()

    run(scenario)
