"""GET /v1/models: the live inventory in OpenAI's shape with aistack's additive fields (docs/models.md)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from ..engines.base import ModelCard
from ..errors import not_found
from ..inventory import AUTO_ID
from .deps import RuntimeDep

router = APIRouter(tags=["models"])


def model_json(card: ModelCard) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": card.id,
        "object": "model",
        "created": card.created,
        "owned_by": card.provider,
        "capabilities": list(card.capabilities),
    }
    if "asr" in card.capabilities and card.languages is not None:
        body["languages"] = list(card.languages)
    body["supports_streaming"] = card.supports_streaming
    body["is_routing_alias"] = card.id == AUTO_ID
    return body


@router.get("/v1/models")
async def list_models(runtime: RuntimeDep) -> dict[str, Any]:
    snapshot = await runtime.inventory.snapshot()
    return {"object": "list", "data": [model_json(c) for c in snapshot.listing()]}


@router.get("/v1/models/{model_id:path}")
async def get_model(model_id: str, runtime: RuntimeDep) -> dict[str, Any]:
    snapshot = await runtime.inventory.snapshot()
    for card in snapshot.listing():
        if card.id == model_id:
            return model_json(card)
    visible = ", ".join(c.id for c in snapshot.listing()) or "none"
    raise not_found(f"model '{model_id}' is not available here; available: {visible}", param="model")
