"""POST /v1/chat/completions, /v1/completions and /v1/embeddings: relayed to the model's upstream,
so the request and the answer are OpenAI's, passed through as the upstream sent them."""

from __future__ import annotations

from typing import Any

from .streams import DATA_ONLY_EVENT_SCHEMA

RELAYED_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The upstream's answer, as it sent it: a JSON object, or SSE chunks when stream=true.",
        "content": {
            "application/json": {"schema": {"type": "object", "additionalProperties": True}},
            "text/event-stream": {"schema": DATA_ONLY_EVENT_SCHEMA},
        },
    },
}

_MODEL = {"type": "string", "minLength": 1, "description": "A model id from /v1/models (or `provider/id`)."}
_TEXT_OR_TEXTS = {"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]}


def _relayed_body(description: str, required: list[str], fields: dict[str, Any]) -> dict[str, Any]:
    """The request body of a relayed route, for `openapi_extra`: the route reads the bytes itself (it
    checks `model` and passes the rest to the upstream), so FastAPI cannot document it from a model."""
    return {"requestBody": {"required": True, "description": description, "content": {"application/json": {"schema": {
        "type": "object",
        "required": ["model", *required],
        "properties": {"model": _MODEL, **fields},
        "additionalProperties": True,
    }}}}}


CHAT_REQUEST = _relayed_body(
    "OpenAI's chat request; fields other than `model` are checked by the upstream.", ["messages"], {
        "messages": {"type": "array", "items": {"type": "object", "required": ["role"], "properties": {
            "role": {"type": "string", "description": "system, developer, user, assistant or tool."},
            "content": {"anyOf": [{"type": "string"}, {"type": "array"}, {"type": "null"}]},
        }}},
        "stream": {"type": "boolean"},
        "max_tokens": {"type": "integer", "minimum": 1},
        "temperature": {"type": "number", "minimum": 0},
    })
COMPLETION_REQUEST = _relayed_body(
    "OpenAI's (legacy) completion request; fields other than `model` are checked by the upstream.", ["prompt"], {
        "prompt": _TEXT_OR_TEXTS,
        "stream": {"type": "boolean"},
        "max_tokens": {"type": "integer", "minimum": 1},
        "temperature": {"type": "number", "minimum": 0},
    })
EMBEDDINGS_REQUEST = _relayed_body(
    "OpenAI's embeddings request: the text, or texts, to embed.", ["input"], {
        "input": _TEXT_OR_TEXTS,
        "encoding_format": {"enum": ["float", "base64"]},
    })
