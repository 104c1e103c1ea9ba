"""GET /health (the process is up) and GET /ready (what each engine can serve now, and how busy each device is)."""

from __future__ import annotations

from fastapi import APIRouter

from .. import __version__
from ..protocol.health import Health, Ready
from .deps import ModelsDep

router = APIRouter(tags=["health"])


# HEAD too: load balancers and uptime checks probe with it.
@router.api_route("/health", methods=["GET", "HEAD"], response_model=Health)
async def health() -> Health:
    return Health(version=__version__)


@router.api_route("/ready", methods=["GET", "HEAD"], response_model=Ready)
async def ready(models: ModelsDep) -> Ready:
    return await models.readiness()
