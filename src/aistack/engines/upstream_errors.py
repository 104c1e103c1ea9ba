"""What an HTTP upstream said when it refused or failed, in its own words, from any of the error
bodies OpenAI-style servers send."""

from __future__ import annotations

import json
from typing import Any

import httpx

MAX_MESSAGE_CHARS = 500
# How much of an error body is read.
MAX_ERROR_BODY = 64 * 1024


async def error_message(response: httpx.Response) -> tuple[str, str | None]:
    """`upstream_message` of a streamed error response, reading at most MAX_ERROR_BODY of it."""
    body = bytearray()
    try:
        async for data in response.aiter_bytes():
            body += data
            if len(body) >= MAX_ERROR_BODY:
                break
    except httpx.HTTPError:
        pass  # the status alone still says what happened
    return upstream_message(bytes(body), response.status_code)


def upstream_message(body: bytes, status: int) -> tuple[str, str | None]:
    """The upstream's own words from an error body, and the field it blames (if it names one).

    Knows vLLM's `{"error": {"message", "type", "param", "code"}}`, older vLLM's flat
    `{"object": "error", "message", ...}`, `{"error": "..."}` (its API-key check) and FastAPI's
    `{"detail": ...}`; anything else is quoted as text.
    """
    text = body.decode("utf-8", "replace").strip()
    try:
        payload = json.loads(text) if text else None
    except ValueError:
        payload = None
    message: Any = None
    param: Any = None
    if isinstance(payload, dict):
        error = payload.get("error")
        if isinstance(error, dict):
            message, param = error.get("message"), error.get("param")
        elif isinstance(error, str):
            message = error
        elif isinstance(payload.get("message"), str):
            message, param = payload["message"], payload.get("param")
        elif "detail" in payload:
            detail = payload["detail"]
            if isinstance(detail, list):
                message = "; ".join(str(item.get("msg", item)) if isinstance(item, dict) else str(item) for item in detail)
            else:
                message = detail
    if message is None:
        message = text or f"HTTP {status} with an empty body"
    message = str(message).strip()
    if len(message) > MAX_MESSAGE_CHARS:
        message = message[:MAX_MESSAGE_CHARS] + "…"
    return message, param if isinstance(param, str) else None
