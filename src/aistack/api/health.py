"""GET /health (the process is up) and GET /ready (what each engine can serve now, and how busy each device is)."""

from __future__ import annotations

from fastapi import APIRouter, Request

from .. import __version__
from ..protocol.health import Health, Ready
from ..security import AccessScope
from .deps import ModelsDep
from .middleware import granted_scope

router = APIRouter(tags=["health"])


# HEAD too: load balancers and uptime checks probe with it.
@router.api_route("/health", methods=["GET", "HEAD"], response_model=Health)
async def health() -> Health:
    return Health(version=__version__)


@router.api_route("/ready", methods=["GET", "HEAD"], response_model=Ready)
async def ready(models: ModelsDep, request: Request) -> Ready:
    readiness = await models.readiness()
    # Paths, PIDs and ports only to admins (everyone, when the gateway has no keys: it is then loopback-only).
    return readiness if granted_scope(request.scope) == AccessScope.ADMIN else readiness.without_details()
