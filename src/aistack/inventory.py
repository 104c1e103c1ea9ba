"""The live inventory: which models can be served right now (docs/models.md).

Every backend is probed concurrently, each under its own timeout, and the result is cached
briefly, so one hung backend never stalls a listing and a picker may call it freely.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Collection, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, replace
from functools import cached_property

from .engines.base import BackendStatus, ModelCard, ProbedEngine, Unavailable
from .errors import AistackError, network, not_found

log = logging.getLogger("aistack.inventory")

AUTO_ID = "auto"
# Who serves `auto`: the gateway itself, which routes each request to a model.
AUTO_PROVIDER = "aistack"


@dataclass(frozen=True)
class Snapshot:
    statuses: tuple[BackendStatus, ...]
    taken_at: float

    @cached_property
    def cards(self) -> tuple[ModelCard, ...]:
        """Every visible model once. An id that a later provider offers too is listed for it as
        `provider/id` (backends come in priority order, so the plain id goes to the preferred one)."""
        seen: set[str] = set()
        cards: list[ModelCard] = []
        for status in self.statuses:
            for card in status.cards:
                if card.id in seen:
                    card = replace(card, id=f"{card.provider}/{card.id}", upstream_id=card.id)
                seen.add(card.id)
                cards.append(card)
        return tuple(cards)

    def card(self, model_id: str) -> ModelCard | None:
        """The model with this id; `provider/id` names one provider's model explicitly."""
        found = next((c for c in self.cards if c.id == model_id), None)
        if found is None and "/" in model_id:
            provider, _, inner = model_id.partition("/")
            found = next((c for c in self.cards if c.provider == provider and c.provider_model_id == inner), None)
        return found

    def asr_cards(self) -> list[ModelCard]:
        return [c for c in self.cards if "asr" in c.capabilities]

    def auto_card(self) -> ModelCard | None:
        """The routing alias, present while any speech-to-text model is visible."""
        asr = self.asr_cards()
        if not asr:
            return None
        return ModelCard(
            id=AUTO_ID,
            provider=AUTO_PROVIDER,
            capabilities=("asr",),
            family="auto",
            supports_streaming=all(c.supports_streaming for c in asr),
            can_translate=any(c.can_translate for c in asr),
            created=min(c.created for c in asr),
        )

    def unknown_model_error(self, model_id: str, choices: str) -> AistackError:
        """503 saying why a known model cannot be served and the command that fixes it (install the
        weights, start the server), else 404 naming `choices`."""
        for status in self.statuses:
            for missing in status.unavailable:
                if missing.subject == model_id:
                    return network(f"model '{model_id}' cannot be served now: {missing.reason}; to fix it: {missing.fix}",
                                   provider=status.provider)
        return not_found(f"model '{model_id}' does not exist here; {choices}", param="model")

    def listing(self) -> list[ModelCard]:
        auto = self.auto_card()
        return ([auto] if auto else []) + list(self.cards)


# How long a probe of an engine in this process (file checks) may take before its engine is listed as
# down. Not `probe_timeout_s`, which is for servers over the network: on a busy machine a file check
# can take longer than that, and a model loaded here must not vanish from the listing for it.
LOCAL_PROBE_TIMEOUT_S = 10.0


class Inventory:
    def __init__(self, backends: Sequence[ProbedEngine], probe_timeout_s: float, ttl_s: float,
                 in_process: Collection[str] = ()) -> None:
        """`in_process`: the providers whose probes are local and get LOCAL_PROBE_TIMEOUT_S."""
        self.backends = tuple(backends)
        self.probe_timeout_s = probe_timeout_s
        self._in_process = frozenset(in_process)
        self.ttl_s = ttl_s
        self._snapshot: Snapshot | None = None
        # Kept across `invalidate` (for metrics): the latest listing, while the next one is being taken.
        self._latest: Snapshot | None = None
        self._listed_ids: frozenset[str] = frozenset()
        self._refreshing: asyncio.Task[Snapshot] | None = None
        self._probes_in_flight: dict[str, Future[BackendStatus]] = {}
        # Each backend's model ids as last seen, so a probe that fails names the models it hides.
        self._last_ids: dict[str, tuple[str, ...]] = {}
        # How long each backend's latest probe took (the probe-latency metric).
        self.probe_seconds: dict[str, float] = {}

    async def snapshot(self, allow_stale: bool = False) -> Snapshot:
        """The listing, probed at most `ttl_s` ago. With `allow_stale` (a request choosing its model),
        an older listing is returned at once while a refresh runs in the background, so no request
        waits for the probes; callers look again (`invalidate`) when the model they need is missing."""
        current = self._snapshot
        if current is not None and time.monotonic() - current.taken_at < self.ttl_s:
            return current
        # Concurrent callers share one refresh instead of probing once each.
        if self._refreshing is None or self._refreshing.done():
            self._refreshing = asyncio.create_task(self._refresh())
        if allow_stale and current is not None:
            return current
        return await asyncio.shield(self._refreshing)

    def invalidate(self) -> None:
        self._snapshot = None

    async def _refresh(self) -> Snapshot:
        statuses = await asyncio.gather(*(self._probe(b) for b in self.backends))
        self._snapshot = Snapshot(tuple(statuses), time.monotonic())
        self._latest = self._snapshot
        self._listed_ids = frozenset(card.id for card in self._snapshot.listing())
        return self._snapshot

    def _remembering(self, provider: str, status: BackendStatus) -> BackendStatus:
        """Note which models a backend serves; when it is down, file its reason under those models
        too, so a request for one is told why and how to fix it (503), not that it does not exist."""
        if status.cards:
            self._last_ids[provider] = tuple(c.id for c in status.cards)
            return status
        named = {m.subject for m in status.unavailable}
        lost = [model_id for model_id in self._last_ids.get(provider, ()) if model_id not in named]
        if not lost or not status.unavailable:
            return status
        why = status.unavailable[0]
        return replace(status, unavailable=(*status.unavailable, *(Unavailable(m, why.reason, why.fix) for m in lost)))

    def _probe_future(self, backend: ProbedEngine) -> Future[BackendStatus]:
        """The backend's running probe, or a new one on its own daemon thread.

        A probe that hangs keeps its thread; reusing it (rather than starting another each refresh)
        bounds the threads at one per backend and never starves the other backends' probes.
        """
        running = self._probes_in_flight.get(backend.provider)
        if running is not None and not running.done():
            return running
        future: Future[BackendStatus] = Future()

        def probe() -> None:
            try:
                future.set_result(backend.probe())
            except BaseException as error:  # noqa: BLE001 - handed to the waiting coroutine
                future.set_exception(error)

        threading.Thread(target=probe, name=f"aistack-probe-{backend.provider}", daemon=True).start()
        self._probes_in_flight[backend.provider] = future
        return future

    def last_snapshot(self) -> Snapshot | None:
        """The latest listing as it is, without probing (also after `invalidate`)."""
        return self._latest

    def listed_ids(self) -> frozenset[str]:
        """The model ids of the latest listing, without probing (metric labels are bounded by it); still
        those of the latest listing after `invalidate`, so that a model's counts do not move to `other`
        in the moment before the next listing (its server just started, say)."""
        return self._listed_ids

    async def _probe(self, backend: ProbedEngine) -> BackendStatus:
        started = time.perf_counter()
        try:
            return await self._probe_timed(backend)
        finally:
            self.probe_seconds[backend.provider] = time.perf_counter() - started

    async def _probe_timed(self, backend: ProbedEngine) -> BackendStatus:
        timeout_s = LOCAL_PROBE_TIMEOUT_S if backend.provider in self._in_process else self.probe_timeout_s
        try:
            future = asyncio.wrap_future(self._probe_future(backend))
            status = await asyncio.wait_for(asyncio.shield(future), timeout_s)
        except TimeoutError:
            reason = f"its probe did not answer within {timeout_s:g} s"
        except Exception as error:  # a broken backend must not break the listing
            log.warning("probe of %s failed: %s", backend.provider, error)
            reason = f"its probe failed: {error}"
        else:
            return self._remembering(backend.provider, status)
        fix = "run `aistack doctor` for details"
        down = BackendStatus(backend.provider, backend.capability, unavailable=(Unavailable(backend.provider, reason, fix),))
        return self._remembering(backend.provider, down)
