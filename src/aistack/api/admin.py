"""GET /admin/models and POST /admin/models/{id}/load | /unload: what is resident, and control over it."""

from __future__ import annotations

from fastapi import APIRouter, Request

from ..protocol.models import AdminModel, AdminModelList
from .deps import ModelsDep, until_disconnected

router = APIRouter(prefix="/admin", tags=["admin"])


@router.get("/models", response_model=AdminModelList)
async def list_models(models: ModelsDep) -> AdminModelList:
    """Every servable model and every resident one: where it runs, resident or not, approximate size,
    last use, jobs in it; null where the server that runs it does not say."""
    return AdminModelList(data=await models.rows())


@router.post("/models/{model_id:path}/load", response_model=AdminModel)
async def load_model(model_id: str, request: Request, models: ModelsDep) -> AdminModel:
    return await until_disconnected(request, models.load(model_id))


@router.post("/models/{model_id:path}/unload", response_model=AdminModel)
async def unload_model(model_id: str, request: Request, models: ModelsDep) -> AdminModel:
    """Unloads now, or when the jobs running on it end (this waits for them); pins do not stop it."""
    return await until_disconnected(request, models.unload(model_id))
