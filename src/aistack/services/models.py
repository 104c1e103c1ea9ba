"""What /v1/models lists and what /ready reports: the servable models, and per engine what it can
serve now, what is in memory and how busy it is, with each device's queue."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from .. import __version__
from ..engines.base import Capability, ModelCard
from ..errors import not_found
from ..inventory import Inventory
from ..lifecycle import ModelLifecycle
from ..scheduler import Scheduler


@dataclass(frozen=True)
class UnavailableModel:
    model: str
    reason: str
    fix: str


@dataclass(frozen=True)
class EngineReadiness:
    capability: Capability
    state: Literal["ready", "unavailable"]
    visible: list[str]
    loaded: list[str]
    running: int
    unavailable: list[UnavailableModel]


@dataclass(frozen=True)
class Readiness:
    status: Literal["ready", "no_models"]
    version: str
    engines: dict[str, EngineReadiness]
    devices: dict[str, dict[str, object]]
    embedded_llm: dict[str, Any] | None


class ModelsService:
    def __init__(self, inventory: Inventory, lifecycle: ModelLifecycle, scheduler: Scheduler,
                 describe_embedded_llm: Callable[[], dict[str, Any]] | None = None) -> None:
        self._inventory = inventory
        self._lifecycle = lifecycle
        self._scheduler = scheduler
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

    async def readiness(self) -> Readiness:
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
                unavailable=[UnavailableModel(u.subject, u.reason, u.fix) for u in status.unavailable],
            )
            for status in snapshot.statuses
        }
        return Readiness(
            status="ready" if snapshot.cards else "no_models",
            version=__version__,
            engines=engines,
            devices=self._scheduler.describe(),
            embedded_llm=self._describe_embedded_llm() if self._describe_embedded_llm is not None else None,
        )
