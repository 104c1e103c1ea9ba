"""GET /health (the process is up) and GET /ready (what each engine can serve now, and how busy each device is)."""

from __future__ import annotations

from fastapi import APIRouter, Request

from .. import __version__
from ..protocol.health import Health, Ready
from ..security import AccessScope
from .deps import ModelsDep
from .middleware import granted_scope

router = APIRouter(tags=["health"])


# HEAD too: load balancers and uptime checks probe with it. One route per method, so that each
# operation in /openapi.json has its own operationId.
@router.get("/health", response_model=Health)
@router.head("/health", response_model=Health)
async def health() -> Health:
    return Health(version=__version__)


@router.get("/ready", response_model=Ready)
@router.head("/ready", response_model=Ready)
async def ready(models: ModelsDep, request: Request) -> Ready:
    readiness = await models.readiness()
    # Paths, PIDs and ports only to admins (everyone, when the gateway has no keys: it is then loopback-only).
    return readiness if granted_scope(request.scope) == AccessScope.ADMIN else readiness.without_details()
