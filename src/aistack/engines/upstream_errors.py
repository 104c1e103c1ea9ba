"""What an HTTP upstream said when it refused or failed, in its own words, from any of the error
bodies OpenAI-style servers send.

A refusal may be a validation answer whatever its status: FastAPI servers send 422 with a `detail`
list, vLLM 400 with the text of FastAPI's validation error, llama-cpp-python 500 with that same
text. That text carries the server's own file paths (the endpoint's `File "...", line N`), which are
no business of the client's; they are cut out, as are Python tracebacks, and any other absolute path
is shortened to its last part.
"""

from __future__ import annotations

import ast
import json
import re
from dataclasses import dataclass
from typing import Any

import httpx

MAX_MESSAGE_CHARS = 500
# How much of an error body is read.
MAX_ERROR_BODY = 64 * 1024
# How many of a validation answer's problems a message names (a union of message types yields one per member).
MAX_PROBLEMS = 3

# FastAPI's `str(RequestValidationError)`: "2 validation errors:\n  {'type': ..., 'loc': (...), ...}\n".
_FASTAPI_VALIDATION = re.compile(r"^\s*\d+ validation errors?:\s*$", re.MULTILINE)
# Pydantic's `str(ValidationError)`: "1 validation error for Model\nfield.path\n  msg [type=...]".
_PYDANTIC_VALIDATION = re.compile(r"^\s*\d+ validation errors? for [\w.\[\], ]+$", re.MULTILINE)
_PYDANTIC_DETAIL = re.compile(r"^\s+(?P<msg>.+?) \[type=(?P<type>[\w-]+)(?:, input_value=(?P<input>.*?))?"
                              r"(?:, input_type=\w+)?\]$")
# Go's json.UnmarshalTypeError, as Ollama reports it: "... into Go struct field ChatCompletionRequest.messages.role ...".
_GO_STRUCT_FIELD = re.compile(r"Go struct field \w+\.(?P<field>[\w.]+)")
_TRACEBACK_HEADER = re.compile(r"^\s*Traceback \(most recent call last\):\s*$")
_FRAME = re.compile(r'^(?P<indent>\s*)File "[^"]*", line \d+')
# An absolute POSIX path of two or more parts (not the path of a URL: those follow a host or `:/`).
_POSIX_PATH = re.compile(r"(?<![\w:/.~-])/(?P<root>[\w.@+~-]+)/(?:[\w.@+~-]+/)*(?P<last>[\w.@+~-]+)")
# An HTTP route an upstream may name (`POST /v1/completions`, `/api/show`) is the client's to know.
_ROUTE_ROOT = re.compile(r"^(?:v\d+|api)$")
_WINDOWS_PATH = re.compile(r"\b[A-Za-z]:\\(?:[^\\\s\"'<>|]+\\)+(?P<last>[^\\\s\"'<>|]+)")
# The parts of a pydantic `loc` that name a member of a union, not a field: `str`, `list[str]`,
# `ChatCompletionRequestUserMessage`, `typed-dict`, `function-after[...]`.
_TYPE_NAMES = {"str", "int", "float", "bool", "none", "list", "dict", "set", "tuple", "bytes", "literal"}
_FIELD_NAME = re.compile(r"^[a-z_][a-z0-9_]*$")


@dataclass(frozen=True)
class UpstreamRefusal:
    """An upstream's error answer: its words (without tracebacks or server paths), the request field it
    blames, and whether it says the request itself is invalid (a validation answer), whatever status it sent."""

    message: str
    param: str | None = None
    invalid_request: bool = False


async def read_refusal(response: httpx.Response) -> UpstreamRefusal:
    """`parse_refusal` of a streamed error response, reading at most MAX_ERROR_BODY of it."""
    return parse_refusal(await _read_body(response), response.status_code)


async def error_message(response: httpx.Response) -> tuple[str, str | None]:
    """`upstream_message` of a streamed error response, reading at most MAX_ERROR_BODY of it."""
    return upstream_message(await _read_body(response), response.status_code)


def parse_refusal(body: bytes, status: int) -> UpstreamRefusal:
    """What the upstream refused and why: validation answers are read field by field; anything else is
    `upstream_message`."""
    payload = _json(body)
    detail = payload.get("detail") if isinstance(payload, dict) else None
    if isinstance(detail, list) and detail:
        problems = [item for item in detail if isinstance(item, dict)]
        if problems:
            return _validation_refusal(problems)
    message, param = upstream_message(body, status)
    text = _raw_message(payload) if payload is not None else _message_of_cut_body(body)
    if text is not None:
        problems = _validation_problems(text)
        if problems:
            return _validation_refusal(problems)
    if param is None and (found := _GO_STRUCT_FIELD.search(message)):
        param = found["field"].split(".")[0]
    return UpstreamRefusal(message, param, invalid_request=False)


def upstream_message(body: bytes, status: int) -> tuple[str, str | None]:
    """The upstream's own words from an error body, and the field it blames (if it names one).

    Knows vLLM's `{"error": {"message", "type", "param", "code"}}`, older vLLM's flat
    `{"object": "error", "message", ...}`, `{"error": "..."}` (its API-key check) and FastAPI's
    `{"detail": ...}`; anything else is quoted as text. Tracebacks and server paths are cut out.
    """
    text = body.decode("utf-8", "replace").strip()
    payload = _json(body)
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
        message = text
    message = scrub(str(message)) or f"HTTP {status} with an empty body"
    return _cut(message), param if isinstance(param, str) and param else None


def scrub(text: str) -> str:
    """`text` without Python tracebacks' frames, FastAPI's endpoint context, or absolute server paths."""
    kept: list[str] = []
    frame_indent: int | None = None  # inside a frame: its source line follows, indented deeper
    for line in text.splitlines():
        if _TRACEBACK_HEADER.match(line):
            frame_indent = None
            continue
        frame = _FRAME.match(line)
        if frame:
            frame_indent = len(frame["indent"])
            continue
        if frame_indent is not None and line.strip() and len(line) - len(line.lstrip()) > frame_indent:
            continue
        frame_indent = None
        kept.append(line)
    cleaned = "\n".join(kept).strip()
    cleaned = _POSIX_PATH.sub(lambda m: m[0] if _ROUTE_ROOT.match(m["root"]) else m["last"], cleaned)
    return _WINDOWS_PATH.sub(lambda m: m["last"], cleaned)


# -- validation answers ---------------------------------------------------------------------------


def _validation_problems(text: str) -> list[dict[str, Any]]:
    """Pydantic's errors (`loc`, `msg`, `type`, `input`) from the text of a validation exception."""
    if _FASTAPI_VALIDATION.search(text):
        problems = []
        for line in text.splitlines():
            line = line.strip()
            if not line.startswith("{"):
                continue
            problem = _literal(line)
            if problem is None:  # an `input` or `ctx` Python cannot read back: take what can be read
                problem = _loose_problem(line)
            if problem is not None:
                problems.append(problem)
        return problems
    if _PYDANTIC_VALIDATION.search(text):
        problems = []
        lines = text.splitlines()
        for where, what in zip(lines, lines[1:], strict=False):
            found = _PYDANTIC_DETAIL.match(what)
            if found and where.strip() and not where.startswith(" "):
                loc = tuple(int(part) if part.isdigit() else part for part in where.strip().split("."))
                problems.append({"loc": loc, "msg": found["msg"], "type": found["type"], "input_text": found["input"]})
        return problems
    return []


def _validation_refusal(problems: list[dict[str, Any]]) -> UpstreamRefusal:
    by_field: dict[str, list[str]] = {}
    params: list[str] = []
    inputs: dict[str, str] = {}
    if any(problem.get("type") != "missing" for problem in problems):
        # A field "missing" from one member of a union (the tool message's `tool_call_id`) is only
        # pydantic trying every member; the member-independent problem is the one to report.
        problems = [problem for problem in problems
                    if not (problem.get("type") == "missing" and _names_union_member(problem.get("loc")))]
    for problem in problems:
        path = _field_path(problem.get("loc"))
        field = _field_text(path) if path else "the request body"
        if path and isinstance(path[0], str) and path[0] not in params:
            params.append(path[0])
        messages = by_field.setdefault(field, [])
        message = str(problem.get("msg") or problem.get("type") or "is not valid").strip()
        if problem.get("type") == "missing":
            message = "is required; add it"
        if message not in messages:
            messages.append(message)
        if field not in inputs and problem.get("type") != "missing":
            sent = _sent(problem)
            if sent is not None:
                inputs[field] = sent
    parts = []
    for field, messages in list(by_field.items())[:MAX_PROBLEMS]:
        got = f" (got {inputs[field]})" if field in inputs else ""
        parts.append(f"{field}: {' or '.join(messages)}{got}")
    if len(by_field) > MAX_PROBLEMS:
        parts.append(f"and {len(by_field) - MAX_PROBLEMS} more")
    return UpstreamRefusal(_cut(scrub("; ".join(parts))), params[0] if len(params) == 1 else None, invalid_request=True)


def _field_path(loc: Any) -> list[str | int]:
    """The request field a pydantic `loc` points at: without its source (`body`) or union members' names."""
    return [part for part in _without_source(loc) if isinstance(part, int)
            or (isinstance(part, str) and _FIELD_NAME.match(part) and part not in _TYPE_NAMES)]


def _without_source(loc: Any) -> list[Any]:
    if not isinstance(loc, (list, tuple)):
        return []
    parts = list(loc)
    return parts[1:] if parts and parts[0] in ("body", "query", "path", "header", "cookie") else parts


def _names_union_member(loc: Any) -> bool:
    return len(_field_path(loc)) < len(_without_source(loc))


def _field_text(path: list[str | int]) -> str:
    first, *rest = path
    return str(first) + "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in rest)


def _sent(problem: dict[str, Any]) -> str | None:
    if "input" in problem:
        value = problem["input"]
        if isinstance(value, (dict, list)):
            return None  # the whole object or list: the client has it, and it may be long
        try:
            shown = json.dumps(value)
        except (TypeError, ValueError):
            shown = repr(value)
    elif problem.get("input_text"):
        shown = str(problem["input_text"])
    else:
        return None
    return shown if len(shown) <= 60 else shown[:60] + "…"


def _literal(line: str) -> dict[str, Any] | None:
    try:
        value = ast.literal_eval(line)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def _loose_problem(line: str) -> dict[str, Any] | None:
    loc = re.search(r"'loc': (\([^)]*\))", line)
    msg = re.search(r"'msg': ('(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\")", line)
    kind = re.search(r"'type': '([\w-]+)'", line)
    if not (loc and msg):
        return None
    return {"loc": _literal_or_none(loc[1]) or (), "msg": _literal_or_none(msg[1]) or "", "type": kind[1] if kind else None}


def _literal_or_none(text: str) -> Any:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return None


# -- reading -------------------------------------------------------------------------------------


async def _read_body(response: httpx.Response) -> bytes:
    body = bytearray()
    try:
        async for data in response.aiter_bytes():
            body += data
            if len(body) >= MAX_ERROR_BODY:
                break
    except httpx.HTTPError:
        pass  # the status alone still says what happened
    return bytes(body)


def _json(body: bytes) -> Any:
    text = body.decode("utf-8", "replace").strip()
    try:
        return json.loads(text) if text else None
    except (ValueError, RecursionError):
        return None


# The start of an OpenAI-style error body, up to the opening quote of its message.
_MESSAGE_START = re.compile(rb'^\s*\{\s*"error"\s*:\s*\{\s*"message"\s*:\s*(?=")')
# The longest escape (`\u00e9`) a cut can split.
_LONGEST_ESCAPE = 6


def _message_of_cut_body(body: bytes) -> str | None:
    """What was read of the message of an error body cut at MAX_ERROR_BODY (llama-cpp-python's
    validation answer lists every problem with every member of the message union: hundreds of lines)."""
    start = _MESSAGE_START.match(body)
    if start is None:
        return None
    rest = body[start.end():].decode("utf-8", "ignore")
    for trim in range(_LONGEST_ESCAPE + 1):
        try:
            text, _ = json.JSONDecoder().raw_decode(rest[:len(rest) - trim] + '"')
        except ValueError:
            continue
        return text if isinstance(text, str) else None
    return None


def _raw_message(payload: Any) -> str | None:
    """The message text of an OpenAI-style error body, before any cleaning."""
    if not isinstance(payload, dict):
        return None
    error = payload.get("error")
    nested = error.get("message") if isinstance(error, dict) else None
    if isinstance(nested, str):
        return nested
    if isinstance(error, str):
        return error
    for key in ("message", "detail"):
        text = payload.get(key)
        if isinstance(text, str):
            return text
    return None


def _cut(message: str) -> str:
    message = message.strip()
    return message[:MAX_MESSAGE_CHARS] + "…" if len(message) > MAX_MESSAGE_CHARS else message
