"""GET /v1/models (OpenAI's model list plus aistack's fields) and /admin/models (residency rows)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from ..engines.base import ModelCard
from ..inventory import AUTO_ID

# "remote": a server that does not say what it holds in memory (or could not say just now).
RowState = Literal["loading", "loaded", "unloading", "unloaded", "remote"]


class ModelObject(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = Field(description="The engine or upstream that serves the model.")
    capabilities: list[str]
    # Only on speech-recognition models that say which languages they hear.
    languages: list[str] | None = Field(None, exclude_if=lambda value: value is None)
    supports_streaming: bool
    is_routing_alias: bool = Field(description="true for `auto`, which picks a model per request.")

    @classmethod
    def of(cls, card: ModelCard) -> ModelObject:
        return cls(
            id=card.id,
            created=card.created,
            owned_by=card.provider,
            capabilities=list(card.capabilities),
            languages=list(card.languages) if "asr" in card.capabilities and card.languages is not None else None,
            supports_streaming=card.supports_streaming,
            is_routing_alias=card.id == AUTO_ID,
        )


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelObject]


class AdminModel(BaseModel):
    """One model as /admin/models shows it; null where the server that runs it does not say."""

    id: str
    object: Literal["model"] = "model"
    owned_by: str
    capabilities: list[str]
    device: str | None
    state: RowState
    resident: bool | None
    size_bytes: int | None
    loaded_at: int | None = Field(description="Unix time it was loaded.")
    last_used: int | None = Field(description="Unix time of its last job.")
    in_use: int | None = Field(description="Jobs running in it now.")
    pinned: bool
    expires_in_s: float | None = Field(description="Seconds until the keep-alive unloads it.")


class AdminModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[AdminModel]
