"""GET /health and GET /ready."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from ..engines.base import Capability


class Health(BaseModel):
    status: Literal["ok"] = "ok"
    version: str


class UnavailableModel(BaseModel):
    model: str
    reason: str
    fix: str = Field(description="The command or setting that makes it servable.")


class EngineReadiness(BaseModel):
    capability: Capability
    state: Literal["ready", "unavailable"]
    visible: list[str] = Field(description="The models it can serve now.")
    loaded: list[str] = Field(description="Those in memory now.")
    running: int = Field(description="Jobs running on its models now.")
    unavailable: list[UnavailableModel]


class Ready(BaseModel):
    status: Literal["ready", "no_models"]
    version: str
    engines: dict[str, EngineReadiness]
    devices: dict[str, dict[str, Any]] = Field(
        description="Per device: slots, queue depth, running work per capability, recent slot waits."
    )
    # Only when aistack runs a llama.cpp server itself.
    embedded_llm: dict[str, Any] | None = Field(None, exclude_if=lambda value: value is None)

    def without_details(self) -> Ready:
        """For callers without an admin key: no filesystem paths, PIDs, ports or URLs (the reasons
        and fixes of missing models name files and addresses; the embedded server's its log, PID and port)."""
        engines = {
            name: engine.model_copy(update={"unavailable": [
                UnavailableModel(model=u.model, reason="not available here", fix=ADMIN_DETAIL_FIX) for u in engine.unavailable
            ]})
            for name, engine in self.engines.items()
        }
        embedded = None
        if self.embedded_llm is not None:
            embedded = {k: v for k, v in self.embedded_llm.items() if k in EMBEDDED_PUBLIC_FIELDS}
        return self.model_copy(update={"engines": engines, "embedded_llm": embedded})


ADMIN_DETAIL_FIX = "call GET /ready with an admin key to see why, or run `aistack doctor` on the gateway's machine"
EMBEDDED_PUBLIC_FIELDS = frozenset({"provider", "state", "model", "restarts", "retrying", "retry_in_s"})
