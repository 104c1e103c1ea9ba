"""The error envelope every non-2xx answer carries (docs/errors.md), as /openapi.json documents it."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from ..errors import AistackError, ErrorKind


class ErrorBody(BaseModel):
    kind: ErrorKind = Field(description="aistack's error kind; each kind has one HTTP status.")
    provider: str = Field(description="Who failed: `aistack`, or the engine or upstream that did.")
    message: str = Field(description="What went wrong and what to do about it.")
    type: str = Field(description="The OpenAI error type an SDK client keys on.")
    code: str = Field(description="The kind again, where OpenAI clients read a code.")
    param: str | None = Field(description="The request field at fault, if one is.")


class ErrorEnvelope(BaseModel):
    error: ErrorBody


class ErrorEvent(BaseModel):
    """A failure inside an event stream of aistack's own (transcription, speech): the envelope, named `error`."""

    type: Literal["error"] = "error"
    error: ErrorBody

    @classmethod
    def of(cls, error: AistackError) -> ErrorEvent:
        return cls.model_validate(error.envelope())


# For every route: whatever fails answers with the envelope.
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    "4XX": {"model": ErrorEnvelope, "description": "The request cannot be served as sent (the envelope says why)."},
    "5XX": {"model": ErrorEnvelope, "description": "The server or an engine behind it failed, or is busy."},
}
