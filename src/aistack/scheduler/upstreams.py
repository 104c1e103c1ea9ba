"""Upstream calls (Qwen3-TTS, Ollama) that share the GPU with the in-process engines.

By default an upstream schedules its own work (Ollama queues requests itself). A provider named
in `serialized_upstreams` takes a slot on the shared GPU for each call instead; with
`unload_asr_before_llm`, an LLM call first unloads the idle speech-to-text models there, for GPUs
too small to hold both.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from ..lifecycle import ModelLifecycle
from ..settings import SchedulerSettings
from . import Scheduler
from .slots import Lease


class UpstreamGate:
    def __init__(self, settings: SchedulerSettings, scheduler: Scheduler, lifecycle: ModelLifecycle) -> None:
        self._settings = settings
        self._scheduler = scheduler
        self._lifecycle = lifecycle

    def serializes(self, provider: str) -> bool:
        return provider in self._settings.serialized_upstreams

    @asynccontextmanager
    async def call(self, provider: str, capability: str) -> AsyncIterator[Lease | None]:
        """Hold what a call to `provider` needs for as long as the call lasts (nothing, unless configured)."""
        if not self.serializes(provider):
            yield None
            return
        device = self._settings.shared_gpu
        lease = await self._scheduler.admit(device, capability)
        served = False
        try:
            if capability == "llm" and self._settings.unload_asr_before_llm:
                await self._lifecycle.unload_idle(device=device, capability="asr", reason=f"making room for {provider}")
            yield lease
            served = True
        finally:
            lease.release(served)
