"""DeviceQueue and Lease: slots, FIFO waiting, 503 busy with an estimated Retry-After, cancellation.

Plain asyncio (`asyncio.run` per test); no engine, no HTTP. Timings are small (tens of ms); where
a test needs to know how long a slot was held, the queue reads a clock the test moves (`clock`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aistack.errors import AistackError, ErrorKind
from aistack.scheduler import slots
from aistack.scheduler.slots import DeviceQueue, Lease
from clocks import SteppedClock, stepped_clock_fixture

clock = stepped_clock_fixture(slots)  # aistack.scheduler.slots reads this clock in the tests that take `clock`


def run(test: Callable[[], Awaitable[Any]]) -> Any:
    return asyncio.run(asyncio.wait_for(test(), timeout=10))


async def settle(iterations: int = 10) -> None:
    """Let every callback and woken task that is ready run (a grant takes a few loop iterations)."""
    for _ in range(iterations):
        await asyncio.sleep(0)


def assert_busy(error: AistackError) -> int:
    assert error.kind is ErrorKind.BUSY
    assert error.status_code == 503
    retry_after = error.headers["Retry-After"]
    assert retry_after.isdigit(), retry_after
    assert int(retry_after) >= 1
    assert "retry" in error.message.lower()
    assert f"{int(retry_after)} s" in error.message
    return int(retry_after)


# --- granting and FIFO -----------------------------------------------------------------------


def test_free_slot_is_granted_immediately() -> None:
    async def scenario() -> None:
        q = DeviceQueue("cpu", slots=2, queue_size=0, max_wait_s=5)
        first = await q.acquire("asr")
        second = await q.acquire("tts")
        for lease in (first, second):
            assert isinstance(lease, Lease)
            assert lease.waited_s == 0
            assert lease.device == "cpu"
            assert not lease.released
            assert not lease.taken_over
        assert (first.capability, second.capability) == ("asr", "tts")
        assert q.busy == 2
        assert q.queued == 0
        assert q.granted == 2
        first.release()
        assert q.busy == 1
        third = await q.acquire("asr")
        assert third.waited_s == 0
        assert q.busy == 2

    run(scenario)


def test_waiters_are_served_in_fifo_order() -> None:
    async def scenario() -> None:
        q = DeviceQueue("cpu", slots=1, queue_size=5, max_wait_s=5)
        held = await q.acquire("first")
        names = ["a", "b", "c", "d"]
        tasks = {}
        for name in names:
            tasks[name] = asyncio.create_task(q.acquire(name))
            await settle()  # enqueue in a known order
        assert q.queued == 4
        assert q.busy == 1
        await asyncio.sleep(0.01)

        served: list[str] = []
        current = held
        for expected in names:
            await asyncio.sleep(0.005)  # so that each later waiter has waited measurably longer
            current.release()
            await settle()
            done = [name for name, task in tasks.items() if task.done() and name not in served]
            assert done == [expected], f"after a release, {done} were served; expected only {expected}"
            served.append(expected)
            current = tasks[expected].result()
            assert current.capability == expected
            assert current.waited_s >= 0.01
            assert q.busy == 1
            assert q.queued == len(names) - len(served)
        current.release()
        assert q.busy == 0
        assert q.queued == 0
        assert q.granted == 5
        # Waiting longer means a larger waited_s: the queue kept each waiter's own arrival time.
        waits = [tasks[name].result().waited_s for name in names]
        assert waits == sorted(waits)

    run(scenario)


# --- busy: queue full, queue_size 0, max wait -------------------------------------------------


def test_full_queue_is_busy_with_retry_after() -> None:
    async def scenario() -> None:
        q = DeviceQueue("cuda:0", slots=1, queue_size=2, max_wait_s=5)
        held = await q.acquire("asr")
        waiters = [asyncio.create_task(q.acquire("asr")) for _ in range(2)]
        await settle()
        assert q.queued == 2

        with pytest.raises(AistackError) as caught:
            await q.acquire("tts")
        assert_busy(caught.value)
        assert "cuda:0" in caught.value.message
        assert q.rejected == 1
        assert q.queued == 2  # the rejected request did not join the queue
        assert q.busy == 1

        with pytest.raises(AistackError):
            await q.acquire("tts")
        assert q.rejected == 2
        assert q.timed_out == 0

        held.release()
        await settle()
        second = waiters[0].result()
        second.release()
        await settle()
        waiters[1].result().release()
        assert q.busy == 0
        assert q.queued == 0

    run(scenario)


def test_queue_size_zero_is_busy_as_soon_as_all_slots_are_held() -> None:
    async def scenario() -> None:
        q = DeviceQueue("cpu", slots=2, queue_size=0, max_wait_s=5)
        a = await q.acquire("asr")
        b = await q.acquire("asr")
        with pytest.raises(AistackError) as caught:
            await q.acquire("asr")
        assert_busy(caught.value)
        assert q.queued == 0
        assert q.rejected == 1
        b.release()
        c = await q.acquire("asr")  # a slot is free again: granted at once
        assert c.waited_s == 0
        a.release()
        c.release()
        assert q.busy == 0

    run(scenario)


def test_waiting_longer_than_max_wait_is_busy() -> None:
    async def scenario() -> None:
        q = DeviceQueue("cpu", slots=1, queue_size=3, max_wait_s=0.05)
        held = await q.acquire("asr")
        with pytest.raises(AistackError) as caught:
            await q.acquire("asr")
        assert_busy(caught.value)
        assert "0.05" in caught.value.message
        assert q.queued == 0  # the timed-out waiter left the queue
        assert q.timed_out == 1  # it was queued and timed out ...
        assert q.rejected == 0  # ... not turned away at the door

        # Its departure does not swallow the next release: a later waiter still gets the slot.
        later = asyncio.create_task(q.acquire("tts"))
        await settle()
        held.release()
        lease = await later
        assert lease.capability == "tts"
        lease.release()
        assert q.busy == 0
        assert q.queued == 0

    run(scenario)


def test_several_waiters_time_out_and_leave_the_queue_empty() -> None:
    async def scenario() -> None:
        q = DeviceQueue("cpu", slots=1, queue_size=3, max_wait_s=0.05)
        held = await q.acquire("asr")
        results = await asyncio.gather(*(q.acquire("asr") for _ in range(3)), return_exceptions=True)
        for result in results:
            assert isinstance(result, AistackError)
            assert_busy(result)
        assert q.timed_out == 3
        assert q.queued == 0
        held.release()
        assert q.busy == 0
        assert (await q.acquire("asr")).waited_s == 0

    run(scenario)


# --- cancellation -----------------------------------------------------------------------------


def test_cancelled_waiter_leaves_queue_and_next_release_goes_to_following_waiter() -> None:
    async def scenario() -> None:
        q = DeviceQueue("cpu", slots=1, queue_size=3, max_wait_s=5)
        held = await q.acquire("asr")
        first = asyncio.create_task(q.acquire("first"))
        await settle()
        second = asyncio.create_task(q.acquire("second"))
        await settle()
        assert q.queued == 2

        first.cancel()
        await settle()
        assert first.cancelled()
        assert q.queued == 1
        assert q.busy == 1

        held.release()
        await settle()
        assert second.done()
        lease = second.result()
        assert lease.capability == "second"
        assert q.busy == 1
        assert q.queued == 0
        lease.release()
        assert q.busy == 0
        assert q.describe()["running"] == {}

    run(scenario)


@pytest.mark.parametrize("cancel_first", [False, True])
@pytest.mark.parametrize("iterations_between", [0, 1, 2, 3, 4])
def test_waiter_granted_as_it_is_cancelled_passes_the_slot_on(iterations_between: int, cancel_first: bool) -> None:
    """Release and cancel together (same loop iteration, or a few apart): the slot is not leaked."""

    async def scenario() -> None:
        q = DeviceQueue("cpu", slots=1, queue_size=3, max_wait_s=5)
        held = await q.acquire("asr")
        doomed = asyncio.create_task(q.acquire("doomed"))
        await settle()
        following = asyncio.create_task(q.acquire("following"))
        await settle()
        assert q.queued == 2

        if cancel_first:
            doomed.cancel()
            held.release()
        else:
            held.release()  # the slot goes to `doomed`...
            for _ in range(iterations_between):
                await asyncio.sleep(0)
            doomed.cancel()  # ...which is cancelled before it could return the lease
        await settle()

        if doomed.cancelled():
            # The slot it may have been handed went on to the next waiter.
            assert following.done(), "the cancelled waiter kept the slot: leaked"
            lease = following.result()
            assert lease.capability == "following"
        else:
            # Cancelled too late: acquire had already returned the lease to it.
            assert iterations_between > 0
            lease = doomed.result()
            assert not following.done()
            lease.release()
            await settle()
            lease = following.result()
        assert q.busy == 1
        assert q.queued == 0
        lease.release()
        assert q.busy == 0
        assert q.describe()["running"] == {}
        assert (await q.acquire("again")).waited_s == 0

    run(scenario)


def test_granted_and_cancelled_last_waiter_frees_the_slot() -> None:
    async def scenario() -> None:
        q = DeviceQueue("cpu", slots=1, queue_size=1, max_wait_s=5)
        held = await q.acquire("asr")
        doomed = asyncio.create_task(q.acquire("doomed"))
        await settle()
        held.release()
        doomed.cancel()
        await settle()
        assert doomed.cancelled()
        assert q.busy == 0
        assert q.queued == 0
        assert (await q.acquire("again")).waited_s == 0

    run(scenario)


# --- Retry-After is an estimate ---------------------------------------------------------------


async def _fill(q: DeviceQueue) -> tuple[list[Lease], list[asyncio.Task[Lease]]]:
    held = [await q.acquire("x") for _ in range(q.slots)]
    waiters = [asyncio.create_task(q.acquire("x")) for _ in range(q.queue_size)]
    await settle()
    assert q.busy == q.slots
    assert q.queued == q.queue_size
    return held, waiters


async def _retry_after_when_full(q: DeviceQueue) -> int:
    with pytest.raises(AistackError) as caught:
        await q.acquire("x")
    return assert_busy(caught.value)


async def _drain(held: list[Lease], waiters: list[asyncio.Task[Lease]]) -> None:
    for task in waiters:
        task.cancel()
    await settle()
    for lease in held:
        lease.release()


def test_retry_after_grows_with_recorded_service_time() -> None:
    """Only jobs that ran to their end (served=True) inform the estimate."""
    """Deterministic: leases back-dated to look as if held 0.2 s and 4.9 s."""

    async def scenario() -> list[int]:
        answers = []
        for held_for in (0.2, 4.9):
            q = DeviceQueue("cpu", slots=1, queue_size=1, max_wait_s=5)
            lease = await q.acquire("x")
            lease.granted_at -= held_for
            lease.release(served=True)
            assert q.typical_service_s() == pytest.approx(held_for, abs=0.05)
            held, waiters = await _fill(q)
            answers.append(await _retry_after_when_full(q))
            await _drain(held, waiters)
        return answers

    short, long = run(scenario)
    assert short == 1  # 0.2 s x 2 ahead / 1 slot, rounded up
    assert long == 10  # 4.9 s x 2 ahead / 1 slot = 9.8 s, rounded up
    assert long > short


def test_retry_after_grows_with_the_time_a_lease_was_held(clock: SteppedClock) -> None:
    """A lease acquired, held 0.25 s or 1 s on the queue's clock, and released as served."""

    async def measure(held_for: float) -> int:
        q = DeviceQueue("cpu", slots=1, queue_size=1, max_wait_s=5)
        lease = await q.acquire("x")
        clock.now += held_for
        lease.release(served=True)
        held, waiters = await _fill(q)
        answer = await _retry_after_when_full(q)
        await _drain(held, waiters)
        return answer

    async def scenario() -> list[int]:
        return [await measure(0.25), await measure(1.0)]

    short, long = run(scenario)
    assert short == 1  # 0.25 s x 2 ahead / 1 slot = 0.5 s, rounded up
    assert long == 2  # 1 s x 2 ahead / 1 slot


def test_retry_after_grows_with_queued_work(clock: SteppedClock) -> None:
    """The same recent service time (0.25 s on the queue's clock); 1 vs 4 requests waiting."""

    async def measure(queue_size: int) -> int:
        q = DeviceQueue("cpu", slots=1, queue_size=queue_size, max_wait_s=5)
        lease = await q.acquire("x")
        clock.now += 0.25
        lease.release(served=True)
        held, waiters = await _fill(q)
        answer = await _retry_after_when_full(q)
        await _drain(held, waiters)
        return answer

    async def scenario() -> list[int]:
        return [await measure(1), await measure(4)]

    one_waiting, four_waiting = run(scenario)
    assert one_waiting == 1  # 0.25 s x 2 ahead = 0.5 s: 1
    assert four_waiting == 2  # 0.25 s x 5 ahead = 1.25 s: 2
    assert four_waiting > one_waiting


def test_retry_after_accounts_for_slots_and_has_bounds() -> None:
    async def scenario() -> None:
        q = DeviceQueue("cpu", slots=1, queue_size=0, max_wait_s=5)
        assert q.retry_after_s() >= 1  # idle, nothing recorded: still a positive integer
        lease = await q.acquire("x")
        lease.granted_at -= 9.5
        lease.release(served=True)
        assert q.retry_after_s() == 10  # nothing running or queued counts as one job ahead

        wide = DeviceQueue("cpu", slots=4, queue_size=0, max_wait_s=5)
        leases = [await wide.acquire("x") for _ in range(4)]
        for lease in leases:
            lease.granted_at -= 9.5
        for lease in leases:
            lease.release(served=True)
        leases = [await wide.acquire("x") for _ in range(4)]
        assert wide.retry_after_s() == 10  # 4 ahead on 4 slots: one service time
        for lease in leases:
            lease.release(served=True)

        huge = DeviceQueue("cpu", slots=1, queue_size=0, max_wait_s=5)
        lease = await huge.acquire("x")
        lease.granted_at -= 10**6
        lease.release(served=True)
        assert huge.retry_after_s() == 3600

    run(scenario)


# --- Lease --------------------------------------------------------------------------------------


def test_release_is_idempotent_and_callbacks_run_once_in_reverse_order() -> None:
    async def scenario() -> None:
        q = DeviceQueue("cpu", slots=1, queue_size=1, max_wait_s=5)
        lease = await q.acquire("asr")
        calls: list[str] = []
        lease.on_release(lambda: calls.append("first"))
        lease.on_release(lambda: calls.append("second"))
        lease.on_release(lambda: calls.append("third"))
        waiter = asyncio.create_task(q.acquire("next"))
        await settle()

        lease.release()
        assert lease.released
        assert calls == ["third", "second", "first"]
        await settle()
        follower = waiter.result()

        lease.release()  # again: nothing happens, above all no second slot given back
        lease.abandon()
        await settle()
        assert calls == ["third", "second", "first"]
        assert q.busy == 1
        assert not follower.released
        follower.release()
        assert q.busy == 0
        assert q.describe()["running"] == {}
        assert q.granted == 2

    run(scenario)


def test_a_failing_release_callback_does_not_keep_the_slot() -> None:
    async def scenario() -> None:
        q = DeviceQueue("cpu", slots=1, queue_size=0, max_wait_s=5)
        lease = await q.acquire("asr")
        calls: list[str] = []
        lease.on_release(lambda: calls.append("ran"))
        lease.on_release(lambda: 1 / 0)
        lease.release()
        assert calls == ["ran"]
        assert q.busy == 0

    run(scenario)


def test_abandon_releases_unless_taken_over() -> None:
    async def scenario() -> None:
        q = DeviceQueue("cpu", slots=2, queue_size=0, max_wait_s=5)
        plain = await q.acquire("asr")
        plain.abandon()
        assert plain.released
        assert q.busy == 0

        worked = await q.acquire("asr")
        worked.taken_over = True
        worked.abandon()
        assert not worked.released
        assert q.busy == 1
        worked.release()  # the worker gives it back when the engine stops
        assert worked.released
        assert q.busy == 0

    run(scenario)


# --- describe -------------------------------------------------------------------------------------


def test_describe_reports_slots_busy_queued_running_and_waits() -> None:
    async def scenario() -> None:
        q = DeviceQueue("cuda:0", slots=2, queue_size=3, max_wait_s=7)
        empty = q.describe()
        assert empty["slots"] == 2
        assert empty["busy"] == 0
        assert empty["queued"] == 0
        assert empty["queue_size"] == 3
        assert empty["max_wait_s"] == 7
        assert empty["running"] == {}
        assert empty["slot_wait_s"] is None
        assert empty["typical_service_s"] is None
        assert (empty["granted"], empty["rejected"], empty["timed_out"]) == (0, 0, 0)

        asr = await q.acquire("asr")
        tts = await q.acquire("tts")
        waiters = [asyncio.create_task(q.acquire("asr")) for _ in range(2)]
        await settle()
        busy = q.describe()
        assert busy["busy"] == 2
        assert busy["queued"] == 2
        assert busy["running"] == {"asr": 1, "tts": 1}

        await asyncio.sleep(0.03)
        tts.release(served=True)
        await settle()
        await asyncio.sleep(0.03)
        asr.release(served=True)
        await settle()
        granted = [task.result() for task in waiters]
        after = q.describe()
        assert after["busy"] == 2
        assert after["queued"] == 0
        assert after["running"] == {"asr": 2}  # tts finished: no zero entries
        assert after["granted"] == 4
        assert after["typical_service_s"] is not None and after["typical_service_s"] > 0

        waits = sorted([0.0, 0.0] + [lease.waited_s for lease in granted])
        assert waits[2] >= 0.03 and waits[3] >= 0.06
        stats = after["slot_wait_s"]
        assert stats is not None
        assert stats["p50"] == round(waits[2], 4)  # index int(0.5 * 4)
        assert stats["p95"] == round(waits[3], 4)  # index int(0.95 * 4)
        assert stats["max"] == round(waits[3], 4)
        assert stats["p50"] <= stats["p95"] <= stats["max"]

        for lease in granted:
            lease.release(served=True)
        final = q.describe()
        assert final["busy"] == 0
        assert final["running"] == {}

    run(scenario)


# --- property: random operations keep the books balanced ---------------------------------------

_acquire = st.tuples(st.just("acquire"), st.sampled_from(["asr", "tts", "llm"]))
operation = st.one_of(
    _acquire,
    _acquire,  # twice as likely as the rest, so that queues fill up
    st.tuples(st.just("cancel"), st.integers(0, 4)),
    st.tuples(st.just("release"), st.integers(0, 4)),
    st.tuples(st.just("release_and_cancel"), st.integers(0, 3)),
    st.tuples(st.just("tick"), st.integers(0, 3)),
)


@settings(max_examples=50, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    slots=st.integers(1, 3),
    queue_size=st.integers(0, 4),
    operations=st.lists(operation, max_size=40),
)
def test_random_operations_keep_invariants(slots: int, queue_size: int, operations: list[tuple[str, Any]]) -> None:
    async def scenario() -> None:
        q = DeviceQueue("cpu", slots=slots, queue_size=queue_size, max_wait_s=60)
        pending: list[asyncio.Task[Lease]] = []
        held: list[Lease] = []
        rejected = 0

        def collect() -> None:
            for task in list(pending):
                if task.done():
                    pending.remove(task)
                    if not task.cancelled():
                        held.append(task.result())  # a busy error would surface here

        def check() -> None:
            collect()
            assert 0 <= q.busy <= q.slots
            assert q.busy + q._free == q.slots
            assert q.busy == len(held), "busy != unreleased granted leases"
            assert all(not lease.released for lease in held)
            assert q.queued == len(pending), "queued != waiters still pending"
            if pending:
                assert q.busy == q.slots, "a waiter is pending while a slot is free"
            running = q.describe()["running"]
            assert sum(running.values()) == q.busy
            for capability, count in running.items():
                assert count == sum(1 for lease in held if lease.capability == capability)
            assert q.rejected == rejected
            assert q.timed_out == 0

        for name, argument in operations:
            if name == "acquire":
                full = q.busy == q.slots and q.queued >= q.queue_size
                immediate = q.busy < q.slots
                task = asyncio.create_task(q.acquire(argument))
                await settle()
                if full:
                    assert task.done()
                    error = task.exception()
                    assert isinstance(error, AistackError)
                    assert error.kind is ErrorKind.BUSY
                    assert int(error.headers["Retry-After"]) >= 1
                    rejected += 1
                elif immediate:
                    assert task.done()
                    lease = task.result()
                    assert lease.waited_s == 0
                    held.append(lease)
                else:
                    assert not task.done()
                    pending.append(task)
            elif name == "cancel" and pending:
                pending[argument % len(pending)].cancel()
                await settle()
            elif name == "release" and held:
                held.pop(argument % len(held)).release()
                await settle()
            elif name == "release_and_cancel" and held and pending:
                # The first waiter is granted the slot and cancelled in the same loop iteration
                # (gap 0) or a few iterations later, before or after acquire returned to it.
                held.pop().release()
                for _ in range(argument):
                    await asyncio.sleep(0)
                pending[0].cancel()
                await settle()
            elif name == "tick":
                await asyncio.sleep(argument / 1000)
            check()

        for task in pending:
            task.cancel()
        await settle()
        collect()
        check()
        while held:
            held.pop().release()
            await settle()
            check()
        assert q.busy == 0
        assert q.queued == 0
        assert q.describe()["running"] == {}
        lease = await q.acquire("fresh")
        assert lease.waited_s == 0
        lease.release()

    run(scenario)
