"""How /openapi.json documents an event stream (text/event-stream): in OpenAPI 3.1 the schema of that
media type describes each event, an object with the SSE fields `event` and `data` (as OpenAPI 3.2's
`itemSchema` does), so a client or a fuzzer can check every event, and the JSON in its `data` too."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from pydantic import BaseModel


def named_events_schema(events: Iterable[type[BaseModel]]) -> dict[str, Any]:
    """One event of a stream of aistack's own (sse.event): `event: <type>` and the model's JSON as `data`."""
    return {"oneOf": [_named_event(model) for model in events]}


# A relayed OpenAI-style stream: data-only events, each a JSON chunk (or the envelope), then `data: [DONE]`.
DATA_ONLY_EVENT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["data"],
    "properties": {"data": {"type": "string", "description": "A JSON chunk as the upstream sent it, the error "
                                                             "envelope, or [DONE] at the end."}},
}


def _named_event(model: type[BaseModel]) -> dict[str, Any]:
    name = model.model_fields["type"].default
    return {
        "type": "object",
        "title": name,
        "required": ["event", "data"],
        "properties": {
            "event": {"const": name},
            "data": {"type": "string", "contentMediaType": "application/json", "contentSchema": inline_schema(model)},
        },
    }


def inline_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The model's JSON schema as it is serialized, with its definitions written in place: a schema
    nested in a document (`contentSchema`) has no `$defs` of its own to refer to."""
    schema = model.model_json_schema(mode="serialization")
    definitions = schema.pop("$defs", {})

    def expand(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                return expand({**definitions[ref.removeprefix("#/$defs/")], **{k: v for k, v in node.items() if k != "$ref"}})
            return {key: expand(value) for key, value in node.items()}
        if isinstance(node, list):
            return [expand(item) for item in node]
        return node

    expanded: dict[str, Any] = expand(schema)
    return expanded
