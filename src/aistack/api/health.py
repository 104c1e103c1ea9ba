"""GET /health (the process is up) and GET /ready (what each engine can serve now, and how busy each device is)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from .. import __version__
from .deps import RuntimeDep

router = APIRouter(tags=["health"])


# HEAD too: load balancers and uptime checks probe with it.
@router.api_route("/health", methods=["GET", "HEAD"])
async def health() -> dict[str, Any]:
    return {"status": "ok", "version": __version__}


@router.api_route("/ready", methods=["GET", "HEAD"])
async def ready(runtime: RuntimeDep) -> dict[str, Any]:
    snapshot = await runtime.inventory.snapshot()
    in_use = runtime.lifecycle.in_use_by_provider()
    resident = runtime.lifecycle.entries()
    engines = {
        status.provider: {
            "capability": status.capability,
            "state": "ready" if status.cards else "unavailable",
            "visible": [c.id for c in status.cards],
            "loaded": sorted(e.card.id for e in resident if e.card.provider == status.provider and e.state == "loaded"),
            "running": in_use.get(status.provider, 0),
            "unavailable": [{"model": u.subject, "reason": u.reason, "fix": u.fix} for u in status.unavailable],
        }
        for status in snapshot.statuses
    }
    body: dict[str, Any] = {
        "status": "ready" if snapshot.cards else "no_models",
        "version": __version__,
        "engines": engines,
        # Per device: slots, queue depth, running work per capability, recent slot waits.
        "devices": runtime.scheduler.describe(),
    }
    if runtime.embedded_llm is not None:
        body["embedded_llm"] = runtime.embedded_llm.describe()
    return body
