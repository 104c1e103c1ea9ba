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
