"""POST /v1/chat/completions, /v1/completions and /v1/embeddings: relayed to the model's upstream,
so the request and the answer are OpenAI's, passed through as the upstream sent them."""

from __future__ import annotations

from typing import Any

RELAYED_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The upstream's answer, as it sent it: a JSON object, or SSE chunks when stream=true.",
        "content": {
            "application/json": {"schema": {"type": "object", "additionalProperties": True}},
            "text/event-stream": {"schema": {"type": "string"}},
        },
    },
}
