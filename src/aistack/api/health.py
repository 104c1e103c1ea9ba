"""GET /health (the process is up) and GET /ready (what each engine can serve now)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from .. import __version__
from .deps import RuntimeDep

router = APIRouter(tags=["health"])


@router.get("/health")
async def health() -> dict[str, Any]:
    return {"status": "ok", "version": __version__}


@router.get("/ready")
async def ready(runtime: RuntimeDep) -> dict[str, Any]:
    snapshot = await runtime.inventory.snapshot()
    running = runtime.scheduler.running()
    engines = {
        status.provider: {
            "capability": status.capability,
            "state": "ready" if status.cards else "unavailable",
            "visible": [c.id for c in status.cards],
            "loaded": list(status.loaded),
            "running": running.get(status.provider, 0),
            "unavailable": [{"model": u.subject, "reason": u.reason, "fix": u.fix} for u in status.unavailable],
        }
        for status in snapshot.statuses
    }
    return {"status": "ready" if snapshot.cards else "no_models", "version": __version__, "engines": engines}
