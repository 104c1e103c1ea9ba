"""GET /admin/models and POST /admin/models/{id}/load | /unload: what is resident, and control over it."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from ..engines.base import ModelCard
from ..errors import AistackError, ClientGone, ErrorKind
from ..inventory import Snapshot
from ..lifecycle import ModelLifecycle, ResidentModel
from ..runtime import Runtime
from .deps import RuntimeDep, until_disconnected

router = APIRouter(prefix="/admin", tags=["admin"])


@router.get("/models")
async def list_models(runtime: RuntimeDep) -> dict[str, Any]:
    """Every servable model and every resident one: resident or not, approximate size, last use, jobs in it."""
    snapshot = await runtime.inventory.snapshot()
    lifecycle = runtime.lifecycle
    rows = {card.id: _row(runtime, card, lifecycle.entry(card.id)) for card in snapshot.cards}
    for entry in lifecycle.entries():  # resident but no longer listed (its files went away)
        rows.setdefault(entry.card.id, _row(runtime, entry.card, entry))
    return {"object": "list", "data": list(rows.values())}


@router.post("/models/{model_id:path}/load")
async def load_model(model_id: str, request: Request, runtime: RuntimeDep) -> dict[str, Any]:
    card = _servable(await runtime.inventory.snapshot(), model_id)
    try:
        await until_disconnected(request, runtime.lifecycle.load(card))
    except (AistackError, ClientGone):
        raise
    except Exception as error:
        raise AistackError(ErrorKind.UNKNOWN, f"{card.provider} could not load {card.id}: {error}", provider=card.provider) from None
    return _row(runtime, card, runtime.lifecycle.entry(card.id))


@router.post("/models/{model_id:path}/unload")
async def unload_model(model_id: str, request: Request, runtime: RuntimeDep) -> dict[str, Any]:
    """Unloads now, or when the jobs running on it end (this waits for them); pins do not stop it."""
    entry = runtime.lifecycle.entry(model_id)
    if entry is None:
        card = _servable(await runtime.inventory.snapshot(), model_id)  # 404 for ids that do not exist
        return _row(runtime, card, None)
    card = entry.card
    await until_disconnected(request, runtime.lifecycle.unload(model_id, reason="unloaded by POST /admin/models/.../unload"))
    return _row(runtime, card, runtime.lifecycle.entry(model_id))


def _servable(snapshot: Snapshot, model_id: str) -> ModelCard:
    card = snapshot.card(model_id)
    if card is None:
        ids = ", ".join(c.id for c in snapshot.cards) or "none (run `aistack doctor`)"
        raise snapshot.unknown_model_error(model_id, f"models that can be loaded: {ids}")
    return card


def _row(runtime: Runtime, card: ModelCard, entry: ResidentModel | None) -> dict[str, Any]:
    lifecycle: ModelLifecycle = runtime.lifecycle
    backend = runtime.backends[card.provider]
    return {
        "id": card.id,
        "object": "model",
        "owned_by": card.provider,
        "capabilities": list(card.capabilities),
        "device": entry.device if entry else backend.device(card),
        "state": entry.state if entry else "unloaded",
        "resident": entry is not None and entry.state == "loaded",
        "size_bytes": entry.size_bytes if entry else backend.footprint(card),
        "loaded_at": _stamp(entry.loaded_at) if entry else None,
        "last_used": _stamp(entry.last_used_at) if entry else None,
        "in_use": entry.in_use if entry else 0,
        "pinned": card.id in runtime.settings.models.pinned,
        "expires_in_s": _rounded(lifecycle.expires_in_s(entry)) if entry else None,
    }


def _stamp(wall: float | None) -> int | None:
    return int(wall) if wall is not None else None


def _rounded(seconds: float | None) -> float | None:
    return round(seconds, 1) if seconds is not None else None
