"""The models service: what /v1/models lists, what /ready reports and what /admin/models shows and does.

Listing and readiness come from the live inventory, the model lifecycle and the scheduler. The
residency rows cover every listed model wherever it runs: one run in this process takes its row
from the lifecycle; one on an upstream server takes it from that server where the server says what
it holds (`ResidencyControl`: Ollama's `/api/ps`, the embedded llama.cpp server's own state), and is
otherwise "remote"; loads and unloads go through that server, or are refused naming the server that
manages the model.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Collection, Mapping
from typing import Any

from .. import __version__
from ..engines.base import ManagedBackend, ModelCard, Residency, ResidencyControl
from ..errors import AistackError, ClientGone, ErrorKind, malformed, not_found
from ..inventory import Inventory, Snapshot
from ..lifecycle import ModelLifecycle, ResidentModel
from ..protocol.health import EngineReadiness, Ready, UnavailableModel
from ..protocol.models import AdminModel
from ..scheduler import Scheduler

log = logging.getLogger("aistack.services.models")


class ModelsService:
    def __init__(
        self,
        inventory: Inventory,
        lifecycle: ModelLifecycle,
        scheduler: Scheduler,
        in_process: Mapping[str, ManagedBackend],
        upstreams: Mapping[str, object],
        pinned: Collection[str],
        describe_embedded_llm: Callable[[], dict[str, Any]] | None = None,
    ) -> None:
        self._inventory = inventory
        self._lifecycle = lifecycle
        self._scheduler = scheduler
        self._in_process = in_process
        self._upstreams = upstreams
        self._pinned = frozenset(pinned)
        self._describe_embedded_llm = describe_embedded_llm

    async def listing(self) -> list[ModelCard]:
        """`auto` first, then every servable model."""
        return (await self._inventory.snapshot()).listing()

    async def listed(self, model_id: str) -> ModelCard:
        listing = await self.listing()
        for card in listing:
            if card.id == model_id:
                return card
        visible = ", ".join(c.id for c in listing) or "none"
        raise not_found(f"model '{model_id}' is not available here; available: {visible}", param="model")

    async def readiness(self) -> Ready:
        snapshot = await self._inventory.snapshot()
        in_use = self._lifecycle.in_use_by_provider()
        resident = self._lifecycle.entries()
        engines = {
            status.provider: EngineReadiness(
                capability=status.capability,
                state="ready" if status.cards else "unavailable",
                visible=[c.id for c in status.cards],
                loaded=sorted(e.card.id for e in resident if e.card.provider == status.provider and e.state == "loaded"),
                running=in_use.get(status.provider, 0),
                unavailable=[UnavailableModel(model=u.subject, reason=u.reason, fix=u.fix) for u in status.unavailable],
            )
            for status in snapshot.statuses
        }
        return Ready(
            status="ready" if snapshot.cards else "no_models",
            version=__version__,
            engines=engines,
            devices=self._scheduler.describe(),
            embedded_llm=self._describe_embedded_llm() if self._describe_embedded_llm is not None else None,
        )

    # -- residency (/admin/models) ------------------------------------------------------------

    async def rows(self) -> list[AdminModel]:
        """Every servable model and every resident one (resident but no longer listed: its files went away)."""
        snapshot = await self._inventory.snapshot()
        held = await self._held_by_servers({c.provider for c in snapshot.cards})
        rows: dict[str, AdminModel] = {}
        for card in snapshot.cards:
            if card.provider in self._in_process:
                rows[card.id] = self._in_process_row(card, self._lifecycle.entry(card.id))
            else:
                rows[card.id] = self._upstream_row(card, held.get(card.provider))
        for entry in self._lifecycle.entries():
            rows.setdefault(entry.card.id, self._in_process_row(entry.card, entry))
        return list(rows.values())

    async def load(self, model_id: str) -> AdminModel:
        card = _servable(await self._inventory.snapshot(), model_id)
        if card.provider in self._in_process:
            try:
                await self._lifecycle.load(card)
            except (AistackError, ClientGone):
                raise
            except Exception as error:
                raise AistackError(ErrorKind.UNKNOWN, f"{card.provider} could not load {card.id}: {error}",
                                   provider=card.provider) from None
            return self._in_process_row(card, self._lifecycle.entry(card.id))
        server = self._controlling(card)
        await server.load_model(card)
        return self._upstream_row(card, await server.resident())

    async def unload(self, model_id: str) -> AdminModel:
        """Unloads now, or when the jobs running on it end (this waits for them); pins do not stop it."""
        entry = self._lifecycle.entry(model_id)
        if entry is not None:
            await self._lifecycle.unload(model_id, reason="unloaded by POST /admin/models/.../unload")
            return self._in_process_row(entry.card, self._lifecycle.entry(model_id))
        card = _servable(await self._inventory.snapshot(), model_id)  # 404 for ids that do not exist
        if card.provider in self._in_process:
            return self._in_process_row(card, None)
        server = self._controlling(card)
        await server.unload_model(card)
        return self._upstream_row(card, await server.resident())

    def _in_process_row(self, card: ModelCard, entry: ResidentModel | None) -> AdminModel:
        backend = self._in_process[card.provider]
        return AdminModel(
            id=card.id,
            owned_by=card.provider,
            capabilities=list(card.capabilities),
            device=entry.device if entry else backend.device(card),
            state=entry.state if entry else "unloaded",
            resident=entry is not None and entry.state == "loaded",
            size_bytes=entry.size_bytes if entry else backend.footprint(card),
            loaded_at=_stamp(entry.loaded_at) if entry else None,
            last_used=_stamp(entry.last_used_at) if entry else None,
            in_use=entry.in_use if entry else 0,
            pinned=card.id in self._pinned,
            expires_in_s=_rounded(self._lifecycle.expires_in_s(entry)) if entry else None,
        )

    def _upstream_row(self, card: ModelCard, held: Mapping[str, Residency] | None) -> AdminModel:
        """`held`: what its server holds in memory; None when the server does not say."""
        residency = None if held is None else held.get(card.provider_model_id, Residency("unloaded"))
        expires_at = residency.expires_at if residency else None
        return AdminModel(
            id=card.id,
            owned_by=card.provider,
            capabilities=list(card.capabilities),
            device=residency.device if residency else None,
            state=residency.state if residency else "remote",
            resident=residency.state == "loaded" if residency else None,
            size_bytes=residency.size_bytes if residency else None,
            loaded_at=None,
            last_used=None,
            in_use=None,
            pinned=card.id in self._pinned,
            expires_in_s=_rounded(max(0.0, expires_at - time.time())) if expires_at is not None else None,
        )

    async def _held_by_servers(self, providers: Collection[str]) -> dict[str, dict[str, Residency]]:
        """What each upstream that says so holds, asked concurrently; a server that cannot say is left out."""
        servers = {p: s for p in providers if isinstance(s := self._upstreams.get(p), ResidencyControl)}
        answers = await asyncio.gather(*(s.resident() for s in servers.values()), return_exceptions=True)
        held: dict[str, dict[str, Residency]] = {}
        for provider, answer in zip(servers, answers, strict=True):
            if isinstance(answer, AistackError):
                log.warning("%s cannot say which models it holds: %s", provider, answer.message)
            elif isinstance(answer, BaseException):
                raise answer
            else:
                held[provider] = answer
        return held

    def _controlling(self, card: ModelCard) -> ResidencyControl:
        server = self._upstreams.get(card.provider)
        if not isinstance(server, ResidencyControl):
            raise malformed(f"{card.provider} manages {card.id}; load and unload it on that server "
                            "(aistack cannot tell it to)")
        return server


def _servable(snapshot: Snapshot, model_id: str) -> ModelCard:
    card = snapshot.card(model_id)
    if card is None:
        ids = ", ".join(c.id for c in snapshot.cards) or "none (run `aistack doctor`)"
        raise snapshot.unknown_model_error(model_id, f"models that can be loaded: {ids}")
    return card


def _stamp(wall: float | None) -> int | None:
    return int(wall) if wall is not None else None


def _rounded(seconds: float | None) -> float | None:
    return round(seconds, 1) if seconds is not None else None
