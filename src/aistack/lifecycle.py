"""Which models are loaded: lazy loads, keep-alive TTL, a resident budget with LRU eviction, pins.

A request checks a model out (loading it on first use, once, whoever waits) and checks it in
when its engine has stopped. A model nobody uses for `keep_alive_s` is unloaded and its memory
handed back to the system; loading one more than the budget allows first unloads the least
recently used idle model. Pinned models are loaded at start and never unloaded by TTL or budget.
Everything here runs on the event loop; loads and unloads run in threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from .engines.base import InProcessBackend, LoadedModel, ManagedBackend, ModelCard, ServerBackend
from .memory import MemoryRelease, ProcessMemory
from .settings import ModelLifecycleSettings

log = logging.getLogger("aistack.lifecycle")

State = Literal["loading", "loaded", "unloading"]


@dataclass(eq=False)
class ResidentModel:
    card: ModelCard
    device: str
    size_bytes: int
    pinned: bool
    ready: asyncio.Future[None]
    state: State = "loading"
    model: LoadedModel | None = None
    in_use: int = 0
    loaded_at: float | None = None
    last_used_at: float | None = None  # wall clock, for people
    # Looked up on the module's `time` at each call, like every other clock read here, so one
    # stand-in clock (a test's) governs them all.
    idle_since: float = field(default_factory=lambda: time.monotonic())
    unloading: asyncio.Future[None] | None = None
    unload_reason: str = ""

    @property
    def leaving(self) -> bool:
        return self.unloading is not None


class ModelLifecycle:
    def __init__(self, backends: Mapping[str, ManagedBackend], settings: ModelLifecycleSettings) -> None:
        self._backends = backends
        self._settings = settings
        self._entries: dict[str, ResidentModel] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        # Told (event, model id, seconds) as each load ends ("loaded" or "load_failed") and each unload ("unloaded").
        self.listeners: list[Callable[[str, str, float], None]] = []
        # Created with the lifecycle, before any engine starts its threads (it caps malloc's arenas).
        self.memory = ProcessMemory(settings.malloc_arena_max)

    # -- requests -----------------------------------------------------------------------------

    async def checkout(self, card: ModelCard) -> LoadedModel:
        """The loaded model, loading it first if need be; pair with `checkin` once the engine stopped."""
        while True:
            entry = self._entries.get(card.id)
            if entry is None:
                entry = self._start_load(card)
            if entry.state == "loading":
                await asyncio.shield(entry.ready)  # a load failure is raised to every waiter
                continue
            if entry.leaving:
                assert entry.unloading is not None
                await asyncio.shield(entry.unloading)  # then load it afresh
                continue
            assert entry.model is not None, "a loaded model that is not leaving is held"
            entry.in_use += 1
            entry.last_used_at = time.time()
            return entry.model

    def checkin(self, model_id: str) -> None:
        entry = self._entries.get(model_id)
        if entry is None or entry.state != "loaded":
            return
        entry.in_use -= 1
        entry.last_used_at = time.time()
        entry.idle_since = time.monotonic()
        if entry.in_use == 0:
            if entry.leaving:
                self._begin_unload(entry)
            else:
                # Loads that overlapped may have gone over the budget; the next idle moment corrects it,
                # never by dropping the model just used (an admin load would otherwise undo itself).
                self._evict_over_budget(keep=entry)

    # -- administration -----------------------------------------------------------------------

    async def load(self, card: ModelCard) -> None:
        await self.checkout(card)
        self.checkin(card.id)

    async def unload(self, model_id: str, reason: str = "asked to") -> bool:
        """Unload now, or as soon as its running jobs end; False when it was not loaded."""
        entry = self._entries.get(model_id)
        while entry is not None and entry.state == "loading":  # a new load may start while we wait
            with contextlib.suppress(Exception):
                await asyncio.shield(entry.ready)
            entry = self._entries.get(model_id)
        if entry is None:
            return False
        done = self._request_unload(entry, reason)
        await asyncio.shield(done)
        return True

    async def unload_idle(self, *, device: str, capability: str, reason: str) -> list[str]:
        """Unload every idle model of `capability` on `device` (pins included: the device is needed)."""
        chosen = [
            e for e in self._entries.values()
            if e.device == device and capability in e.card.capabilities and e.state == "loaded" and e.in_use == 0
        ]
        await asyncio.gather(*(asyncio.shield(self._request_unload(e, reason)) for e in chosen))
        return [e.card.id for e in chosen]

    async def preload(self, cards: Iterable[ModelCard]) -> None:
        for card in cards:
            try:
                await self.load(card)
            except Exception as error:
                log.error("could not preload %s: %s", card.id, error)

    def expire_idle(self) -> list[str]:
        """Start unloading every model idle past its keep-alive; the ids it chose."""
        keep_alive = self._settings.keep_alive_s
        if keep_alive < 0:
            return []
        now = time.monotonic()
        expired = [
            e for e in self._entries.values()
            if e.state == "loaded" and e.in_use == 0 and not e.pinned and not e.leaving and now - e.idle_since >= keep_alive
        ]
        for entry in expired:
            self._request_unload(entry, f"idle for {keep_alive:g} s")
        return [e.card.id for e in expired]

    async def run_reaper(self) -> None:
        """Unload idle models as their keep-alive runs out, until cancelled."""
        keep_alive = self._settings.keep_alive_s
        # keep_alive 0 still waits a tick, so requests queued for the same model find it loaded.
        interval = min(5.0, max(0.05, keep_alive / 4)) if keep_alive > 0 else 0.25
        while True:
            await asyncio.sleep(interval)
            self.expire_idle()

    async def close(self) -> None:
        # Idle models are unloaded, not dropped: an engine in a worker process would outlive the runtime.
        idle = [e for e in self._entries.values() if e.state == "loaded" and e.in_use == 0 and not e.leaving]
        await asyncio.gather(*(self._request_unload(e, "the gateway is stopping") for e in idle), return_exceptions=True)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    # -- reading ------------------------------------------------------------------------------

    def entry(self, model_id: str) -> ResidentModel | None:
        return self._entries.get(model_id)

    def entries(self) -> list[ResidentModel]:
        return list(self._entries.values())

    def in_use_by_provider(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for entry in self._entries.values():
            counts[entry.card.provider] = counts.get(entry.card.provider, 0) + entry.in_use
        return counts

    def expires_in_s(self, entry: ResidentModel) -> float | None:
        keep_alive = self._settings.keep_alive_s
        if entry.state != "loaded" or entry.pinned or entry.in_use or keep_alive < 0:
            return None
        return max(0.0, keep_alive - (time.monotonic() - entry.idle_since))

    # -- inside -------------------------------------------------------------------------------

    def _start_load(self, card: ModelCard) -> ResidentModel:
        backend = self._backends[card.provider]
        entry = ResidentModel(
            card=card,
            device=backend.device(card),
            size_bytes=backend.footprint(card),
            pinned=card.id in self._settings.pinned,
            ready=asyncio.get_running_loop().create_future(),
        )
        # Nobody may be waiting when a load fails; its error is still delivered to later waiters.
        entry.ready.add_done_callback(lambda f: f.cancelled() or f.exception())
        self._entries[card.id] = entry
        self._spawn(self._load(entry, backend))
        return entry

    async def _load(self, entry: ResidentModel, backend: ManagedBackend) -> None:
        started = time.perf_counter()
        try:
            await self._make_room_for(entry)
            started = time.perf_counter()
            if isinstance(backend, ServerBackend):
                entry.model = await backend.start_serving(entry.card)
            else:
                entry.model = await asyncio.to_thread(backend.load, entry.card)
        except BaseException as error:
            if self._entries.get(entry.card.id) is entry:
                del self._entries[entry.card.id]
            if isinstance(error, Exception):
                log.exception("loading %s failed", entry.card.id)
            self._tell("load_failed", entry.card.id, time.perf_counter() - started)
            failure = error if isinstance(error, Exception) else RuntimeError(f"loading {entry.card.id} was interrupted")
            entry.ready.set_exception(failure)
            if not isinstance(error, Exception):
                raise
            return
        entry.state = "loaded"
        entry.loaded_at = entry.last_used_at = time.time()
        entry.idle_since = time.monotonic()
        log.info("%s is resident on %s (about %d MB) after %.2f s",
                 entry.card.id, entry.device, entry.size_bytes >> 20, time.perf_counter() - started)
        self._tell("loaded", entry.card.id, time.perf_counter() - started)
        entry.ready.set_result(None)

    def _tell(self, event: str, model_id: str, seconds: float) -> None:
        for listener in self.listeners:
            try:
                listener(event, model_id, seconds)
            except Exception:  # a metric must not break a load
                log.exception("a lifecycle listener failed")

    async def _make_room_for(self, entry: ResidentModel) -> None:
        """Unload least-recently-used idle models until `entry` fits the budget (or nothing more can go)."""
        while self._over_budget(entry):
            candidates = [
                e for e in self._entries.values()
                if e is not entry and e.state == "loaded" and e.in_use == 0 and not e.pinned and not e.leaving
            ]
            if not candidates:
                log.warning("loading %s goes over the resident budget: every loaded model is in use or pinned", entry.card.id)
                return
            victim = min(candidates, key=lambda e: e.idle_since)
            await asyncio.shield(self._request_unload(victim, f"least recently used, to make room for {entry.card.id}"))

    def _evict_over_budget(self, keep: ResidentModel) -> None:
        while self._over_budget(None):
            idle = [
                e for e in self._entries.values()
                if e is not keep and e.state == "loaded" and e.in_use == 0 and not e.pinned and not e.leaving
            ]
            if not idle:
                return
            self._request_unload(min(idle, key=lambda e: e.idle_since), "least recently used, over the resident budget")

    def _over_budget(self, entry: ResidentModel | None) -> bool:
        counted = [e for e in self._entries.values() if e is not entry and not e.leaving]
        if entry is not None:
            counted.append(entry)
        max_count, max_mb = self._settings.max_resident, self._settings.max_resident_mb
        if max_count is not None and len(counted) > max_count:
            return True
        total = sum(e.size_bytes for e in counted)
        return max_mb is not None and total > max_mb * 1024 * 1024

    def _request_unload(self, entry: ResidentModel, reason: str) -> asyncio.Future[None]:
        assert entry.state != "loading", "a model is unloaded only once its load has finished"
        if entry.unloading is None:
            entry.unloading = asyncio.get_running_loop().create_future()
            entry.unload_reason = reason
            if entry.in_use == 0:
                self._begin_unload(entry)
        return entry.unloading

    def _begin_unload(self, entry: ResidentModel) -> None:
        entry.state = "unloading"
        # Handed over in a list the releasing thread empties, so no frame here keeps the model alive.
        assert entry.model is not None, "only a loaded model is unloaded"
        holder: list[LoadedModel] = [entry.model]
        entry.model = None
        self._spawn(self._unload(entry, holder))

    async def _unload(self, entry: ResidentModel, holder: list[LoadedModel]) -> None:
        backend = self._backends[entry.card.provider]
        # Engine libraries' code is paged out only when no other model may be running it.
        last = all(e is entry for e in self._entries.values())
        started = time.perf_counter()
        try:
            if isinstance(backend, ServerBackend):
                await backend.stop_serving(holder.pop())
                log.info("unloaded %s (%s); its server process stopped, its memory back to the system",
                         entry.card.id, entry.unload_reason)
            else:
                released = await asyncio.to_thread(_release, backend, holder, self.memory, last)
                log.info("unloaded %s (%s); %s", entry.card.id, entry.unload_reason, _describe(released))
        except Exception:
            log.exception("unloading %s failed", entry.card.id)
        finally:
            if self._entries.get(entry.card.id) is entry:
                del self._entries[entry.card.id]
            self._tell("unloaded", entry.card.id, time.perf_counter() - started)
            assert entry.unloading is not None
            if not entry.unloading.done():
                entry.unloading.set_result(None)

    def _spawn(self, work: Any) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def _release(backend: InProcessBackend, holder: list[LoadedModel], memory: ProcessMemory, page_out_libraries: bool) -> MemoryRelease:
    model = holder.pop()
    backend.unload(model)
    del model
    gc.collect()
    return memory.release(page_out_libraries=page_out_libraries)


def _describe(released: MemoryRelease) -> str:
    if released.rss_before is None or released.rss_after is None:
        return "memory handed back" if released.trimmed else "no allocator to trim"
    paged = f", {released.paged_out_bytes >> 20} MB of engine library mappings paged out" if released.paged_out_bytes else ""
    return f"resident set {released.rss_before >> 20} -> {released.rss_after >> 20} MB after handing memory back{paged}"
