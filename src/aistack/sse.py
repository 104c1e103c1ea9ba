"""Server-sent events as the gateway writes them: named events for its own streams
(transcription, speech) and data-only events for the OpenAI-style streams it relays.

A named event repeats its name as the `type` of its JSON data, as OpenAI's transcription and
speech streams do. A relayed stream's events carry no name; an OpenAI SDK reads an envelope in
one as an APIError, and `data: [DONE]` says the stream is complete.
"""

from __future__ import annotations

import json
from typing import Any, Protocol

# How an OpenAI-style event stream says it is complete.
DONE = b"data: [DONE]"


def named_event(event_type: str, payload: dict[str, Any]) -> bytes:
    """`event: TYPE` and its data, `{"type": TYPE, **payload}`, as UTF-8 JSON."""
    body = json.dumps({"type": event_type, **payload}, ensure_ascii=False)
    return f"event: {event_type}\ndata: {body}\n\n".encode()


class StreamEvent(Protocol):
    """A protocol model of one named event (protocol/*.py): its `type` is the event's name."""

    @property
    def type(self) -> str: ...

    def model_dump(self, *, mode: str = ...) -> dict[str, Any]: ...


def event(model: StreamEvent) -> bytes:
    """The named event of a protocol model, its fields in their declared order (`type` first)."""
    payload = model.model_dump(mode="json")
    event_type = payload.pop("type")
    return named_event(event_type, payload)


def data_event(payload: Any) -> bytes:
    """A data-only event; its JSON escapes non-ASCII, as the OpenAI-style servers it is relayed among write theirs."""
    return f"data: {json.dumps(payload)}\n\n".encode()
