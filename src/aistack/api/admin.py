"""GET /admin/models and POST /admin/models/{id}/load | /unload: what is resident, and control over it."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request

from ..services.model_admin import ModelAdmin
from .deps import get_runtime, until_disconnected

router = APIRouter(prefix="/admin", tags=["admin"])


def get_model_admin(request: Request) -> ModelAdmin:
    return get_runtime(request).model_admin


ModelAdminDep = Annotated[ModelAdmin, Depends(get_model_admin)]


@router.get("/models")
async def list_models(admin: ModelAdminDep) -> dict[str, Any]:
    """Every servable model and every resident one: where it runs, resident or not, approximate size,
    last use, jobs in it; null where the server that runs it does not say."""
    return {"object": "list", "data": [row.as_dict() for row in await admin.rows()]}


@router.post("/models/{model_id:path}/load")
async def load_model(model_id: str, request: Request, admin: ModelAdminDep) -> dict[str, Any]:
    return (await until_disconnected(request, admin.load(model_id))).as_dict()


@router.post("/models/{model_id:path}/unload")
async def unload_model(model_id: str, request: Request, admin: ModelAdminDep) -> dict[str, Any]:
    """Unloads now, or when the jobs running on it end (this waits for them); pins do not stop it."""
    return (await until_disconnected(request, admin.unload(model_id))).as_dict()
