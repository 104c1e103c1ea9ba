"""GET /v1/models: the live inventory in OpenAI's shape with aistack's additive fields (docs/models.md)."""

from __future__ import annotations

from fastapi import APIRouter

from ..protocol.models import ModelList, ModelObject
from .deps import ModelsDep

router = APIRouter(tags=["models"])


@router.get("/v1/models", response_model=ModelList)
async def list_models(models: ModelsDep) -> ModelList:
    return ModelList(data=[ModelObject.of(card) for card in await models.listing()])


@router.get("/v1/models/{model_id:path}", response_model=ModelObject)
async def get_model(model_id: str, models: ModelsDep) -> ModelObject:
    return ModelObject.of(await models.listed(model_id))
