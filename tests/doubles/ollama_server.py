"""A stand-in for the Ollama daemon: a real HTTP/1.1 server on loopback.

No Ollama binary can be installed here, so tests talk to this instead (DESIGN §6). It speaks
Ollama 0.12.x's protocol as its source writes it (server/routes.go, middleware/openai.go,
openai/openai.go, api/types.go), byte for byte where a client could tell: Go's JSON (compact,
`<>&` escaped, float32 shortest form, map keys sorted), `Content-Length` for bodies up to 2048
bytes and chunked above that (net/http's buffer), SSE over a chunked body, headers sent with the
first streamed chunk (not before), gin's plain-text 404/405, and Ollama's error bodies: native
`{"error": "..."}`, and on /v1 `{"error": {"message", "type", "param": null, "code": null}}`
(`invalid_request_error` from the OpenAI middleware's own checks; `api_error` for every error the
handler raises, whatever the status, as 0.12's `BaseWriter.writeError` does).

Routes: `GET|HEAD /`, `GET|HEAD /api/version`, `GET|HEAD /api/tags`, `POST /api/show`, `GET /api/ps`,
`POST /api/generate`, `POST /api/embed`, `GET /v1/models`, `GET /v1/models/{model}`, `POST /v1/chat/completions`, `POST /v1/completions`,
`POST /v1/embeddings`. Anything else gets gin's `404 page not found` (405 for a known path).

Models in memory: every request that runs a model loads it (a chat, a completion, an embedding, or
a native request with no prompt or input, which only loads); it stays for its `keep_alive` (Go's
Duration: seconds as a number, or a string such as "5m"; negative: for ever, which Ollama stores
as the longest Go duration, about 292 years) or the server's default (`keep_alive_s`, as
OLLAMA_KEEP_ALIVE), and `/api/ps` lists it with `size` (`loaded_size`), `size_vram` (`vram_fraction`
of it; 0 on a machine without a GPU) and `expires_at` in Go's RFC 3339 with nanoseconds. A native
request with no prompt and `"keep_alive": 0` unloads (`done_reason` "unload"): as Ollama's scheduler,
it sets `expires_at` to now and drops the model in the background, after `unload_delay_s`.

Generation is deterministic: the reply is the last user message (or the prompt) echoed, cut into
word tokens ("Hello", " world"); each token is one SSE chunk, then the final chunk with
`finish_reason` (+ the usage chunk with `stream_options.include_usage`) and `data: [DONE]` go in
one last HTTP chunk, as Ollama flushes them. Embeddings are hash-seeded unit vectors (float32).

Faults, per instance (`fault=`) or for the next generation requests (`queue_fault()`), applied
once a request has passed validation: `"error_500"` (500 with Ollama's body), `"not_found"` (404,
as if the model was deleted), `"hang"` (never answers, for at most `max_hang_s`), `"drop"` (stream:
connection cut after `drop_after_chunks` chunks; otherwise cut with no response), `"stall"` (stream:
stops after `drop_after_chunks` chunks and hangs), `"error_midstream"` (stream: what Ollama sends
when the runner fails mid-stream: one empty chunk with `"model": ""`, then the body ends without
`[DONE]`). Pacing: `first_chunk_delay_s`, `chunk_interval_s`, and `step=True` (each chunk after the
first waits for `release_next_chunk()`; `chunks_sent` / `wait_for_chunks()` tell what went out).
`version_delay_s` delays `/api/version`, `models_delay_s` `/v1/models`. `stop()` refuses connections
(the port stays held, so nobody else can take it); `start()` again serves at the same address. Every
request is recorded (`requests`) with its peer and how it ended.

    with OllamaDouble() as ollama:
        client = openai.OpenAI(base_url=ollama.url + "/v1", api_key="ollama")
"""

from __future__ import annotations

import asyncio
import base64
import calendar
import collections
import hashlib
import json
import random
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from email.utils import formatdate
from http import HTTPStatus
from typing import Any
from urllib.parse import unquote

import numpy as np

from doubles.loopback import ClientWatch, LoopbackServer, ReleaseGate

DEFAULT_VERSION = "0.12.11"
# OLLAMA_KEEP_ALIVE's default, and what a negative keep_alive becomes (time.Duration(math.MaxInt64)).
DEFAULT_KEEP_ALIVE_S = 300.0
FOREVER_NS = 2**63 - 1
DEFAULT_NUM_CTX = 4096
FAULTS = ("error_500", "not_found", "hang", "drop", "stall", "error_midstream")
RUNNER_ERROR = "llama runner process has terminated: exit status 2"
# net/http buffers this much of a handler's output before it must choose chunked encoding.
BUFFER_BEFORE_CHUNKING = 2048
GENERATION_ROUTES = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings")
ROUTES: dict[str, tuple[str, ...]] = {
    "/": ("GET", "HEAD"),
    "/api/version": ("GET", "HEAD"),
    "/api/tags": ("GET", "HEAD"),
    "/api/show": ("POST",),
    "/api/ps": ("GET",),
    "/api/generate": ("POST",),
    "/api/embed": ("POST",),
    "/v1/models": ("GET",),
    "/v1/chat/completions": ("POST",),
    "/v1/completions": ("POST",),
    "/v1/embeddings": ("POST",),
}


# -- models ----------------------------------------------------------------------------------


@dataclass
class OllamaModel:
    """One pulled model, as `/api/tags` and `/api/show` describe it."""

    name: str
    family: str = "llama"
    parameter_size: str = "3.2B"
    quantization_level: str = "Q4_K_M"
    capabilities: tuple[str, ...] = ("completion", "tools")
    size: int = 2019393189
    digest: str = ""
    modified_at: str = "2025-09-30T14:02:11.734519805Z"
    context_length: int = 131072
    embedding_length: int = 3072
    parameter_count: int = 3212749888
    file_type: int = 15
    template: str = ("<|start_header_id|>system<|end_header_id|>\n\n{{ .System }}<|eot_id|>"
                     "{{ range .Messages }}<|start_header_id|>{{ .Role }}<|end_header_id|>\n\n"
                     "{{ .Content }}<|eot_id|>{{ end }}<|start_header_id|>assistant<|end_header_id|>\n\n")
    parameters: tuple[tuple[str, Any], ...] = (("stop", "<|start_header_id|>"), ("stop", "<|end_header_id|>"),
                                               ("stop", "<|eot_id|>"))
    license: str = "LLAMA 3.2 COMMUNITY LICENSE AGREEMENT"
    # What it takes in memory once loaded (weights, KV cache, graph), as /api/ps reports it; 0: 5/3 of `size`.
    loaded_size: int = 0

    def __post_init__(self) -> None:
        self.name = canonical_name(self.name)
        if not self.loaded_size:
            self.loaded_size = self.size * 5 // 3
        if not self.digest:
            self.digest = hashlib.sha256(f"manifest:{self.name}".encode()).hexdigest()

    @property
    def namespace(self) -> str:
        return _parse_name(self.name)[1]

    @property
    def created(self) -> int:
        """`modified_at` as Unix seconds (what /v1/models calls `created`)."""
        match = re.match(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)", self.modified_at)
        assert match is not None
        return calendar.timegm(time.strptime(match.group(1), "%Y-%m-%dT%H:%M:%S"))

    @property
    def details(self) -> dict[str, Any]:
        return {"parent_model": "", "format": "gguf", "family": self.family, "families": [self.family],
                "parameter_size": self.parameter_size, "quantization_level": self.quantization_level}


def chat_model(name: str = "llama3.2:latest", **overrides: Any) -> OllamaModel:
    return OllamaModel(name, **overrides)


def embedding_model(name: str = "nomic-embed-text:latest", **overrides: Any) -> OllamaModel:
    values: dict[str, Any] = dict(family="nomic-bert", parameter_size="137M", quantization_level="F16",
                                  capabilities=("embedding",), size=274302450, context_length=2048,
                                  embedding_length=768, parameter_count=136727040, file_type=1,
                                  template="{{ .Prompt }}", parameters=(("num_ctx", 8192),),
                                  license="Apache License\nVersion 2.0, January 2004",
                                  modified_at="2025-09-28T08:41:55.102938477Z")
    values.update(overrides)
    return OllamaModel(name, **values)


def _parse_name(name: str) -> tuple[str, str, str, str]:
    """Ollama's model.ParseName: [host/][namespace/]model[:tag], with its defaults."""
    host, namespace = "registry.ollama.ai", "library"
    parts = name.split("/")
    if len(parts) >= 3:
        host, namespace, rest = parts[0], parts[1], "/".join(parts[2:])
    elif len(parts) == 2:
        namespace, rest = parts
    else:
        rest = parts[0]
    model, _, tag = rest.partition(":")
    return host, namespace, model, tag or "latest"


def canonical_name(name: str) -> str:
    """The name as /api/tags shows it: `llama3.2` -> `llama3.2:latest`."""
    host, namespace, model, tag = _parse_name(name)
    prefix = "" if host == "registry.ollama.ai" else f"{host}/"
    prefix += "" if namespace == "library" and not prefix else f"{namespace}/"
    return f"{prefix}{model}:{tag}"


def _valid_name(name: str) -> bool:
    _host, _ns, model, _tag = _parse_name(name)
    return bool(model) and not re.search(r"\s", name)


# -- Go's encoding/json ----------------------------------------------------------------------


class GoMap(dict):  # type: ignore[type-arg]
    """A Go map: encoding/json writes its keys sorted (struct fields keep their order)."""


def _go_float(value: float, bits: int) -> str:
    if bits == 32:
        f32 = np.float32(value)
        magnitude = abs(float(f32))
        if magnitude != 0 and (magnitude < 1e-6 or magnitude >= 1e21):
            text = np.format_float_scientific(f32, unique=True, trim="-", exp_digits=2)
        else:
            text = np.format_float_positional(f32, unique=True, trim="-")
    else:
        magnitude = abs(value)
        if magnitude != 0 and (magnitude < 1e-6 or magnitude >= 1e21):
            text = repr(float(value))
        else:
            text = format(Decimal(repr(float(value))), "f")
            if "." in text:
                text = text.rstrip("0").rstrip(".")
    text = text.replace(".e", "e")
    match = re.fullmatch(r"(.*e[-+])0(\d)", text)  # Go cleans e-07 to e-7
    return match.group(1) + match.group(2) if match else text


def _go_string(value: str) -> str:
    text = json.dumps(value, ensure_ascii=False)
    for raw, escaped in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"), ("\u2028", "\\u2028"),
                         ("\u2029", "\\u2029")):
        text = text.replace(raw, escaped)
    return text


def go_json(value: Any) -> str:
    """What Go's json.Marshal writes for the equivalent Go value (dicts are structs, in order)."""
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, np.floating):
        return _go_float(float(value), 32 if value.dtype == np.float32 else 64)
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, float):
        return _go_float(value, 64)
    if isinstance(value, str):
        return _go_string(value)
    if isinstance(value, dict):
        items = sorted(value.items()) if isinstance(value, GoMap) else value.items()
        return "{" + ",".join(f"{_go_string(str(k))}:{go_json(v)}" for k, v in items) + "}"
    if isinstance(value, (list, tuple, np.ndarray)):
        return "[" + ",".join(go_json(v) for v in value) + "]"
    raise TypeError(f"cannot encode {type(value).__name__}")


def _gin_json(value: Any) -> bytes:
    """gin's c.JSON: json.Marshal, no trailing newline."""
    return go_json(value).encode()


def _encoder_json(value: Any) -> bytes:
    """json.NewEncoder(w).Encode: the same, plus a newline."""
    return go_json(value).encode() + b"\n"


# -- Go's json decoder errors ----------------------------------------------------------------


class _GoJSONError(Exception):
    pass


def _quote_char(c: int) -> str:
    """encoding/json's quoteChar."""
    if c == 0x27:
        return "'\\''"
    if c == 0x22:
        return "'\"'"
    escapes = {7: "\\a", 8: "\\b", 12: "\\f", 10: "\\n", 13: "\\r", 9: "\\t", 11: "\\v", 0x5C: "\\\\"}
    if c in escapes:
        text = escapes[c]
    elif c < 0x20 or c == 0x7F:
        text = f"\\x{c:02x}"
    elif 0x80 <= c < 0xA0:
        text = f"\\u{c:04x}"
    else:
        text = chr(c)
    return f"'{text}'"


class _Scanner:
    """The syntax check of Go's json.Decoder, with its error texts."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.size = len(data)

    def skip(self, i: int) -> int:
        while i < self.size and self.data[i] in b" \t\r\n":
            i += 1
        return i

    def fail(self, i: int, context: str) -> None:
        if i >= self.size:
            raise _GoJSONError("unexpected EOF")
        raise _GoJSONError(f"invalid character {_quote_char(self.data[i])} {context}")

    def at(self, i: int) -> int:
        if i >= self.size:
            raise _GoJSONError("unexpected EOF")
        return self.data[i]

    def value(self, i: int) -> int:
        i = self.skip(i)
        c = self.at(i)
        if c == 0x7B:
            return self.obj(i + 1)
        if c == 0x5B:
            return self.array(i + 1)
        if c == 0x22:
            return self.string(i + 1)
        if c == 0x2D or 0x30 <= c <= 0x39:
            return self.number(i)
        for literal in (b"true", b"false", b"null"):
            if c == literal[0]:
                return self.literal(i, literal)
        self.fail(i, "looking for beginning of value")
        return i

    def obj(self, i: int) -> int:
        i = self.skip(i)
        if self.at(i) == 0x7D:
            return i + 1
        while True:
            if self.at(i) != 0x22:
                self.fail(i, "looking for beginning of object key string")
            i = self.skip(self.string(i + 1))
            if self.at(i) != 0x3A:
                self.fail(i, "after object key")
            i = self.skip(self.value(i + 1))
            c = self.at(i)
            if c == 0x2C:
                i = self.skip(i + 1)
                continue
            if c == 0x7D:
                return i + 1
            self.fail(i, "after object key:value pair")

    def array(self, i: int) -> int:
        i = self.skip(i)
        if self.at(i) == 0x5D:
            return i + 1
        while True:
            i = self.skip(self.value(i))
            c = self.at(i)
            if c == 0x2C:
                i += 1
                continue
            if c == 0x5D:
                return i + 1
            self.fail(i, "after array element")

    def string(self, i: int) -> int:
        while True:
            c = self.at(i)
            if c == 0x22:
                return i + 1
            if c == 0x5C:
                escape = self.at(i + 1)
                if escape == 0x75:
                    for k in range(2, 6):
                        if chr(self.at(i + k)) not in "0123456789abcdefABCDEF":
                            self.fail(i + k, "in \\u hexadecimal character escape")
                    i += 6
                    continue
                if escape not in b'"\\/bfnrt':
                    self.fail(i + 1, "in string escape code")
                i += 2
                continue
            if c < 0x20:
                self.fail(i, "in string literal")
            i += 1

    def digits(self, i: int) -> int:
        while i < self.size and 0x30 <= self.data[i] <= 0x39:
            i += 1
        return i

    def number(self, i: int) -> int:
        if self.data[i] == 0x2D:
            i += 1
            if not 0x30 <= self.at(i) <= 0x39:
                self.fail(i, "in numeric literal")
        i = i + 1 if self.data[i] == 0x30 else self.digits(i)
        if i < self.size and self.data[i] == 0x2E:
            i += 1
            if not 0x30 <= self.at(i) <= 0x39:
                self.fail(i, "after decimal point in numeric literal")
            i = self.digits(i)
        if i < self.size and self.data[i] in b"eE":
            i += 1
            if i < self.size and self.data[i] in b"+-":
                i += 1
            if not 0x30 <= self.at(i) <= 0x39:
                self.fail(i, "in exponent of numeric literal")
            i = self.digits(i)
        return i

    def literal(self, i: int, literal: bytes) -> int:
        for k in range(1, len(literal)):
            if self.at(i + k) != literal[k]:
                self.fail(i + k, f"in literal {literal.decode()} (expecting {_quote_char(literal[k])})")
        return i + len(literal)


def go_decode(body: bytes) -> Any:
    """json.NewDecoder(body).Decode: the first JSON value (trailing bytes ignored), or Go's error."""
    scanner = _Scanner(body)
    start = scanner.skip(0)
    if start >= scanner.size:
        raise _GoJSONError("EOF")
    try:
        end = scanner.value(start)
    except RecursionError:
        raise _GoJSONError("exceeded max depth") from None
    return json.loads(body[start:end].decode("utf-8", "replace"))


# Go struct shapes, for json's UnmarshalTypeError: field -> (kind, Go type, nested shape).
_STREAM_OPTIONS = ("StreamOptions", {"include_usage": ("bool", "bool", None)})
_MESSAGE = ("Message", {"role": ("string", "string", None), "content": ("any", "", None),
                        "reasoning": ("string", "string", None), "tool_calls": ("array", "[]openai.ToolCall", None),
                        "name": ("string", "string", None), "tool_call_id": ("string", "string", None)})
CHAT_REQUEST = ("openai.ChatCompletionRequest", "ChatCompletionRequest", {
    "model": ("string", "string", None), "messages": ("array", "[]openai.Message", ("openai.Message", _MESSAGE)),
    "stream": ("bool", "bool", None), "stream_options": ("struct", "openai.StreamOptions", _STREAM_OPTIONS),
    "max_tokens": ("int", "int", None), "seed": ("int", "int", None), "temperature": ("float", "float64", None),
    "frequency_penalty": ("float", "float64", None), "presence_penalty": ("float", "float64", None),
    "top_p": ("float", "float64", None), "tools": ("array", "[]api.Tool", None),
    "response_format": ("object", "openai.ResponseFormat", None), "reasoning_effort": ("string", "string", None)})
COMPLETION_REQUEST = ("openai.CompletionRequest", "CompletionRequest", {
    "model": ("string", "string", None), "prompt": ("string", "string", None),
    "frequency_penalty": ("float", "float32", None), "max_tokens": ("int", "int", None),
    "presence_penalty": ("float", "float32", None), "seed": ("int", "int", None), "stream": ("bool", "bool", None),
    "stream_options": ("struct", "openai.StreamOptions", _STREAM_OPTIONS),
    "temperature": ("float", "float32", None), "top_p": ("float", "float32", None),
    "suffix": ("string", "string", None)})
EMBED_REQUEST = ("openai.EmbedRequest", "EmbedRequest", {
    "input": ("any", "", None), "model": ("string", "string", None), "dimensions": ("int", "int", None),
    "encoding_format": ("string", "string", None)})
GENERATE_REQUEST = ("api.GenerateRequest", "GenerateRequest", {
    "model": ("string", "string", None), "prompt": ("string", "string", None), "suffix": ("string", "string", None),
    "system": ("string", "string", None), "template": ("string", "string", None), "stream": ("bool", "*bool", None),
    "raw": ("bool", "bool", None), "keep_alive": ("any", "", None), "images": ("array", "[]api.ImageData", None),
    "options": ("object", "map[string]interface {}", None)})
NATIVE_EMBED_REQUEST = ("api.EmbedRequest", "EmbedRequest", {
    "model": ("string", "string", None), "input": ("any", "", None), "truncate": ("bool", "*bool", None),
    "keep_alive": ("any", "", None), "dimensions": ("int", "int", None),
    "options": ("object", "map[string]interface {}", None)})
SHOW_REQUEST = ("api.ShowRequest", "ShowRequest", {
    "model": ("string", "string", None), "system": ("string", "string", None),
    "template": ("string", "string", None), "verbose": ("bool", "bool", None),
    "options": ("object", "map[string]interface {}", None), "name": ("string", "string", None)})


def _json_kind(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _type_error(fields: dict[str, Any], payload: dict[str, Any], struct: str, path: tuple[str, ...]) -> str | None:
    """The first UnmarshalTypeError Go would report decoding `payload` into the struct `fields`."""
    lowered = {name.lower(): name for name in fields}
    for key, value in payload.items():
        name = key if key in fields else lowered.get(key.lower())
        if name is None or value is None:
            continue
        kind, go_type, nested = fields[name]
        where = ".".join(path + (name,))
        bad = f"json: cannot unmarshal {_json_kind(value)} into Go struct field {struct}.{where} of type {go_type}"
        if kind == "any":
            continue
        if kind == "string" and not isinstance(value, str):
            return bad
        if kind == "bool" and not isinstance(value, bool):
            return bad
        if kind in ("int", "float") and (isinstance(value, bool) or not isinstance(value, (int, float))):
            return bad
        if kind == "int" and isinstance(value, float):
            return (f"json: cannot unmarshal number {value!r} into Go struct field {struct}.{where} "
                    f"of type {go_type}")
        if kind == "object" and not isinstance(value, dict):
            return bad
        if kind == "struct":
            if not isinstance(value, dict):
                return bad
            inner_struct, inner_fields = nested
            error = _type_error(inner_fields, value, inner_struct, path + (name,))
            if error:
                return error
        if kind == "array":
            if not isinstance(value, list):
                return bad
            if nested is None:
                continue
            element_type, (inner_struct, inner_fields) = nested
            for element in value:
                if element is None:
                    continue
                if not isinstance(element, dict):
                    return (f"json: cannot unmarshal {_json_kind(element)} into Go struct field "
                            f"{struct}.{where} of type {element_type}")
                error = _type_error(inner_fields, element, inner_struct, path + (name,))
                if error:
                    return error
    return None


def bind_json(body: bytes, shape: tuple[str, str, dict[str, Any]]) -> dict[str, Any]:
    """gin's ShouldBindJSON into a Go struct: the decoded object, or the error Ollama reports."""
    go_name, struct, fields = shape
    payload = go_decode(body)
    if payload is None:
        return {}
    if not isinstance(payload, dict):
        raise _GoJSONError(f"json: cannot unmarshal {_json_kind(payload)} into Go value of type {go_name}")
    error = _type_error(fields, payload, struct, ())
    if error:
        raise _GoJSONError(error)
    return {key.lower() if key.lower() in fields else key: value for key, value in payload.items()}


# -- keep_alive and times, as Go has them -----------------------------------------------------

_DURATION_UNITS = {"ns": 1, "us": 1_000, "µs": 1_000, "μs": 1_000, "ms": 1_000_000, "s": 10**9, "m": 60 * 10**9,
                   "h": 3600 * 10**9}


def go_parse_duration(text: str) -> int:
    """time.ParseDuration in nanoseconds ("1h30m", "-1s", "0"), raising _GoJSONError with Go's message."""
    quoted = json.dumps(text)
    rest = text
    sign = 1
    if rest and rest[0] in "+-":
        sign = -1 if rest[0] == "-" else 1
        rest = rest[1:]
    if rest == "0":
        return 0
    if not rest:
        raise _GoJSONError(f"time: invalid duration {quoted}")
    total = 0
    while rest:
        match = re.match(r"(\d*)(?:\.(\d*))?", rest)
        assert match is not None  # every part may be empty, so it always matches
        whole, fraction = match.group(1), match.group(2)
        if not whole and not fraction:
            raise _GoJSONError(f"time: invalid duration {quoted}")
        rest = rest[match.end():]
        unit = re.match(r"[^\d.]*", rest).group(0)
        if not unit:
            raise _GoJSONError(f"time: missing unit in duration {quoted}")
        if unit not in _DURATION_UNITS:
            raise _GoJSONError(f"time: unknown unit {json.dumps(unit)} in duration {quoted}")
        rest = rest[len(unit):]
        scale = _DURATION_UNITS[unit]
        total += int(whole or 0) * scale + (int(Decimal(f"0.{fraction}") * scale) if fraction else 0)
    return sign * total


def keep_alive_ns(value: Any) -> int | None:
    """api.Duration's UnmarshalJSON: None when absent; negative becomes for ever; Go's errors for the rest."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        go_type = {bool: "bool", dict: "map[string]interface {}", list: "[]interface {}"}[type(value)]
        raise _GoJSONError(f"Unsupported type: '{go_type}'")
    if isinstance(value, str):
        nanoseconds = go_parse_duration(value)
    else:
        nanoseconds = -1 if value < 0 else int(value * 10**9)
    return FOREVER_NS if nanoseconds < 0 else nanoseconds


def go_time(unix_ns: int, utc: bool = False) -> str:
    """A time.Time as encoding/json writes it (RFC 3339 with nanoseconds, trailing zeros cut), local or UTC."""
    import datetime as _dt

    seconds, nanos = divmod(unix_ns, 10**9)
    moment = _dt.datetime.fromtimestamp(seconds, _dt.UTC if utc else None).astimezone(
        _dt.UTC if utc else None)
    offset = moment.utcoffset() or _dt.timedelta(0)
    if offset:
        minutes = int(offset.total_seconds()) // 60
        zone = f"{'+' if minutes >= 0 else '-'}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"
    else:
        zone = "Z"
    fraction = f".{nanos:09d}".rstrip("0") if nanos else ""
    return moment.strftime("%Y-%m-%dT%H:%M:%S") + fraction.rstrip(".") + zone


@dataclass
class RunningModel:
    """A model the double holds in memory, as /api/ps lists it."""

    model: OllamaModel
    expires_at_ns: int  # wall clock
    size: int
    size_vram: int
    context_length: int = DEFAULT_NUM_CTX
    # Expired by a keep_alive 0 request, still in memory until the scheduler has unloaded it.
    unloading: bool = False


# -- generation ------------------------------------------------------------------------------


def tokenize(text: str) -> list[str]:
    """The double's tokens: words with their leading whitespace ("Hello", " world")."""
    return re.findall(r"\s*\S+|\s+$", text)


def embed(text: str, dim: int = 8) -> np.ndarray:
    """The double's embedding of `text`: a unit float32 vector seeded by the text's hash."""
    seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")
    vector = np.random.default_rng(seed).standard_normal(dim).astype(np.float32)
    return normalize(vector)


def normalize(vector: np.ndarray) -> np.ndarray:
    """server/routes.go normalize(), in float32."""
    total = np.float32(0)
    for v in vector.astype(np.float32):
        total = np.float32(total + v * v)
    norm = np.float32(1.0 / max(float(np.sqrt(np.float64(total))), 1e-12))
    return (vector.astype(np.float32) * norm).astype(np.float32)


def _message_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(part.get("text", "") for part in content
                       if isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str))
    return ""


def echo_reply(messages_or_prompt: list[dict[str, Any]] | str) -> str:
    """The default reply: the prompt, or the last user message, echoed (or "OK" when empty)."""
    if isinstance(messages_or_prompt, str):
        return messages_or_prompt or "OK"
    for message in reversed(messages_or_prompt):
        if message.get("role") == "user":
            return _message_text(message.get("content")) or "OK"
    return "OK"


# -- recording ---------------------------------------------------------------------------------


@dataclass
class RecordedRequest:
    """One request as the double read and answered it (times are `time.monotonic()`)."""

    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes
    at: float
    # The client's (host, port): the same port on several requests means a reused connection.
    peer: tuple[str, int]
    http_version: str = "HTTP/1.1"
    fault: str | None = None
    stream: bool = False
    status: int | None = None
    chunks_sent: int = 0
    headers_at: float | None = None
    first_chunk_at: float | None = None
    finished_at: float | None = None
    # pending | complete | truncated | client_gone | dropped | hung | stalled | stopped
    outcome: str = "pending"
    done: threading.Event = field(default_factory=threading.Event, repr=False)

    @property
    def json(self) -> Any:
        return json.loads(self.body) if self.body else None

    @property
    def client_gone(self) -> bool:
        """The client closed its end before the response was complete."""
        return self.outcome == "client_gone"

    @property
    def is_generation(self) -> bool:
        return self.path in GENERATION_ROUTES


@dataclass
class _Conn:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    close: bool = False
    head_only: bool = False


class _Reply(Exception):
    """An answer decided while validating: status, body bytes, content type."""

    def __init__(self, status: int, body: bytes, content_type: str | None) -> None:
        super().__init__(status)
        self.status = status
        self.body = body
        self.content_type = content_type


# -- the server --------------------------------------------------------------------------------


class OllamaDouble(LoopbackServer):
    thread_name = "ollama-double"
    label = "Ollama double"

    def __init__(
        self,
        *,
        models: list[OllamaModel | str] | None = None,
        version: str = DEFAULT_VERSION,
        reply: Callable[[list[dict[str, Any]] | str], str] | str | None = None,
        embedding_dim: int = 8,
        first_chunk_delay_s: float = 0.0,
        chunk_interval_s: float = 0.0,
        step: bool = False,
        fault: str | None = None,
        max_hang_s: float = 10.0,
        drop_after_chunks: int = 1,
        error_message: str = RUNNER_ERROR,
        version_delay_s: float = 0.0,
        status_error_types: bool = False,
        try_pulling_message: bool = False,
        keep_alive_s: float = DEFAULT_KEEP_ALIVE_S,
        vram_fraction: float = 0.0,
        unload_delay_s: float = 0.0,
    ) -> None:
        if fault is not None and fault not in FAULTS:
            raise ValueError(f"unknown fault {fault!r}; one of {FAULTS}")
        super().__init__()
        default = [chat_model(), embedding_model()]
        self.models: list[OllamaModel] = [m if isinstance(m, OllamaModel) else chat_model(m)
                                          for m in (default if models is None else models)]
        self.version = version
        self.reply = reply
        self.embedding_dim = embedding_dim
        self.first_chunk_delay_s = first_chunk_delay_s
        self.chunk_interval_s = chunk_interval_s
        self.step = step
        self.fault = fault
        self.max_hang_s = max_hang_s
        self.drop_after_chunks = drop_after_chunks
        self.error_message = error_message
        self.version_delay_s = version_delay_s
        # Like llama-cpp-python, which answers its model list only between generations.
        self.models_delay_s = 0.0
        # False: Ollama 0.12 (every handler error on /v1 has type "api_error"); True: later
        # releases, where the type follows the status (not_found_error, invalid_request_error).
        self.status_error_types = status_error_types
        # False: 0.12's chat/completions say `model 'x' not found` (the handler's own GetModel check);
        # True: `model "x" not found, try pulling it first`, as they did up to 0.11 (embeddings always do).
        self.try_pulling_message = try_pulling_message
        # OLLAMA_KEEP_ALIVE: how long a model stays loaded after a request that gave no keep_alive.
        self.keep_alive_s = keep_alive_s
        # The share of a loaded model in GPU memory (size_vram / size); 0 as on a machine without a GPU.
        self.vram_fraction = vram_fraction
        self.unload_delay_s = unload_delay_s
        # Models in memory by canonical name (what /api/ps lists).
        self.running: dict[str, RunningModel] = {}
        self.port = 0  # until the first start() binds one
        self.requests: list[RecordedRequest] = []
        self.listening = threading.Event()
        self._faults: collections.deque[str] = collections.deque()
        self._chunks_sent = 0
        self._chunk_cond = threading.Condition()
        self._chunk_gate = ReleaseGate()

    # -- control ----------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        """Where an OpenAI SDK points: `url + "/v1"`."""
        return self.url + "/v1"

    @property
    def chunks_sent(self) -> int:
        """SSE chunks written so far, over all streams (the last one carries [DONE])."""
        return self._chunks_sent

    @property
    def generation_requests(self) -> list[RecordedRequest]:
        return [r for r in self.requests if r.is_generation]

    def requests_to(self, path: str) -> list[RecordedRequest]:
        return [r for r in self.requests if r.path == path]

    def model(self, name: str) -> OllamaModel | None:
        wanted = canonical_name(name).lower()
        return next((m for m in self.models if m.name.lower() == wanted), None)

    def loaded(self) -> list[str]:
        """The names /api/ps lists now (models whose keep-alive ran out are gone)."""
        self._expire()
        return list(self.running)

    def hold(self, name: str, keep_alive_ns: int | None = None) -> RunningModel:
        """Load `name` as a request would (for `keep_alive_ns`, else the default keep-alive)."""
        found = self.model(name)
        if found is None:
            raise KeyError(name)
        duration = int(self.keep_alive_s * 10**9) if keep_alive_ns is None else keep_alive_ns
        now = time.time_ns()
        held = self.running.get(found.name)
        if held is None:
            held = self.running[found.name] = RunningModel(found, now, found.loaded_size,
                                                           int(found.loaded_size * self.vram_fraction))
        held.expires_at_ns = now + duration
        held.unloading = False
        return held

    def _expire(self) -> None:
        now = time.time_ns()
        for name, held in list(self.running.items()):
            if held.expires_at_ns <= now and not held.unloading:
                del self.running[name]

    def remove_model(self, name: str) -> None:
        self.models = [m for m in self.models if m.name.lower() != canonical_name(name).lower()]

    def queue_fault(self, fault: str, times: int = 1) -> None:
        """The next `times` generation requests that pass validation fail this way; then `fault` applies."""
        if fault not in FAULTS:
            raise ValueError(f"unknown fault {fault!r}; one of {FAULTS}")
        self._faults.extend([fault] * times)

    def clear_faults(self) -> None:
        self._faults.clear()
        self.fault = None

    def reply_text(self, messages_or_prompt: list[dict[str, Any]] | str) -> str:
        """The full reply the double generates for these messages (or this prompt)."""
        if callable(self.reply):
            return self.reply(messages_or_prompt)
        if isinstance(self.reply, str):
            return self.reply
        return echo_reply(messages_or_prompt)

    def embedding_for(self, text: str, dimensions: int | None = None) -> list[float]:
        """The vector /v1/embeddings returns for `text` (as Python floats of the float32 values)."""
        vector = embed(text, self.embedding_dim)
        if dimensions and 0 < dimensions < len(vector):
            vector = normalize(vector[:dimensions])
        return [float(v) for v in vector]

    def release_next_chunk(self, count: int = 1) -> None:
        """Step mode: let `count` more chunks go out (a release given early is kept)."""
        self._chunk_gate.release(count)

    def release_all(self) -> None:
        """Leave step mode: every waiting and later chunk goes out without waiting."""
        self.step = False
        self._chunk_gate.wake()

    def wait_for_chunks(self, count: int, timeout: float = 5.0) -> bool:
        """Block until `chunks_sent >= count` (True) or `timeout` passes (False)."""
        with self._chunk_cond:
            return self._chunk_cond.wait_for(lambda: self._chunks_sent >= count, timeout)

    def wait_for_request(self, path: str, count: int = 1, timeout: float = 5.0) -> RecordedRequest:
        """Block until `count` requests to `path` have been read; the last of them."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            seen = self.requests_to(path)
            if len(seen) >= count:
                return seen[count - 1]
            time.sleep(0.005)
        raise TimeoutError(f"no request #{count} to {path} within {timeout}s")

    def _count_chunk(self, rec: RecordedRequest) -> None:
        rec.chunks_sent += 1
        with self._chunk_cond:
            self._chunks_sent += 1
            self._chunk_cond.notify_all()

    # -- serving ----------------------------------------------------------------------------

    async def _main(self) -> None:
        self._chunk_gate.bind()
        serving = await self._serve_main(self._connection, backlog=128)
        if serving is None:
            return
        sock, server = serving
        self.listening.set()
        self._ready.set()
        try:
            await self._serve_until_stopped(server)
        finally:
            sock.close()
            self.listening.clear()

    async def _read_body(self, reader: asyncio.StreamReader, headers: dict[str, str]) -> bytes:
        if "chunked" in headers.get("transfer-encoding", "").lower():
            body = bytearray()
            while True:
                line = await reader.readuntil(b"\r\n")
                size = int(line.split(b";", 1)[0].strip(), 16)
                if size == 0:
                    while await reader.readuntil(b"\r\n") != b"\r\n":
                        pass  # trailers
                    return bytes(body)
                body += await reader.readexactly(size)
                await reader.readexactly(2)
        length = int(headers.get("content-length") or 0)
        return await reader.readexactly(length) if length else b""

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer_info = writer.get_extra_info("peername")
        peer = (str(peer_info[0]), int(peer_info[1]))
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
                    return
                try:
                    lines = head.decode("latin-1").lstrip("\r\n").split("\r\n")
                    method, target, version = lines[0].split(" ", 2)
                    headers: dict[str, str] = {}
                    for line in lines[1:]:
                        if ":" in line:
                            name, _, value = line.partition(":")
                            key = name.strip().lower()
                            headers[key] = f"{headers[key]}, {value.strip()}" if key in headers else value.strip()
                    if headers.get("expect", "").lower() == "100-continue":
                        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                        await writer.drain()
                    body = await self._read_body(reader, headers)
                except (ValueError, asyncio.LimitOverrunError):
                    writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\n"
                                 b"Connection: close\r\n\r\n400 Bad Request")
                    await writer.drain()
                    return
                path, _, query = target.partition("?")
                rec = RecordedRequest(method, path, query, headers, body, time.monotonic(), peer, version.strip())
                self.requests.append(rec)
                connection = headers.get("connection", "").lower()
                close = "close" in connection or (version.strip() == "HTTP/1.0" and "keep-alive" not in connection)
                conn = _Conn(reader, writer, close=close, head_only=method == "HEAD")
                try:
                    reusable = await self._route(conn, rec)
                finally:
                    if rec.outcome == "pending":
                        rec.outcome = "client_gone"
                    rec.finished_at = rec.finished_at or time.monotonic()
                    rec.done.set()
                if not reusable or close:
                    return
        except (ConnectionError, asyncio.IncompleteReadError):
            return

    # -- bytes on the wire ------------------------------------------------------------------

    def _head(self, conn: _Conn, status: int, content_type: str | None, length: int | None) -> bytes:
        """net/http's header block: the handler's headers, Date, then the framing ones."""
        lines = [f"HTTP/1.1 {status} {HTTPStatus(status).phrase}"]
        if content_type:
            lines.append(f"Content-Type: {content_type}")
        lines.append(f"Date: {formatdate(usegmt=True)}")
        lines.append("Transfer-Encoding: chunked" if length is None else f"Content-Length: {length}")
        if conn.close:
            lines.append("Connection: close")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    async def _send(self, conn: _Conn, rec: RecordedRequest, status: int, body: bytes,
                    content_type: str | None) -> bool:
        """A whole response: Content-Length up to 2048 bytes, one chunk of a chunked body above."""
        chunked = len(body) > BUFFER_BEFORE_CHUNKING and not conn.head_only
        data = self._head(conn, status, content_type, None if chunked else len(body))
        if not conn.head_only:
            data += (b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)) if chunked else body
        conn.writer.write(data)
        await conn.writer.drain()
        rec.status, rec.outcome = status, "complete"
        rec.headers_at = rec.finished_at = time.monotonic()
        return True

    async def _send_reply(self, conn: _Conn, rec: RecordedRequest, reply: _Reply) -> bool:
        return await self._send(conn, rec, reply.status, reply.body, reply.content_type)

    # -- error bodies -----------------------------------------------------------------------

    @staticmethod
    def _native_error(status: int, message: str) -> _Reply:
        """gin's c.JSON(status, gin.H{"error": message})."""
        return _Reply(status, _gin_json({"error": message}), "application/json; charset=utf-8")

    @staticmethod
    def _openai_bad_request(message: str) -> _Reply:
        """The OpenAI middleware's own check: AbortWithStatusJSON(400, openai.NewError(400, ...))."""
        body = {"error": {"message": message, "type": "invalid_request_error", "param": None, "code": None}}
        return _Reply(400, _gin_json(body), "application/json; charset=utf-8")

    def _openai_error(self, status: int, message: str) -> _Reply:
        """A handler error rewritten by the middleware's BaseWriter.writeError."""
        error_type = "api_error"
        if self.status_error_types:
            error_type = {400: "invalid_request_error", 404: "not_found_error"}.get(status, "api_error")
        body = {"error": {"message": message, "type": error_type, "param": None, "code": None}}
        return _Reply(status, _encoder_json(body), "application/json")

    # -- routing ----------------------------------------------------------------------------

    async def _route(self, conn: _Conn, rec: RecordedRequest) -> bool:
        path, method = rec.path, rec.method
        if path.startswith("/v1/models/") and path.count("/") == 3 and len(path) > len("/v1/models/"):
            methods: tuple[str, ...] = ("GET",)
        else:
            methods = ROUTES.get(path, ())
        if not methods:
            return await self._send(conn, rec, 404, b"404 page not found", "text/plain")
        if method not in methods:
            return await self._send(conn, rec, 405, b"405 method not allowed", "text/plain")
        try:
            if path == "/":
                return await self._send(conn, rec, 200, b"Ollama is running", "text/plain; charset=utf-8")
            if path == "/api/version":
                if not await self._delay(conn, rec, self.version_delay_s):
                    return False
                return await self._send(conn, rec, 200, _gin_json({"version": self.version}),
                                        "application/json; charset=utf-8")
            if path == "/api/tags":
                return await self._send(conn, rec, 200, _gin_json(self._tags()), "application/json; charset=utf-8")
            if path == "/api/ps":
                return await self._send(conn, rec, 200, _gin_json(self._ps()), "application/json; charset=utf-8")
            if path == "/api/generate":
                return await self._native_generate(conn, rec)
            if path == "/api/embed":
                return await self._native_embed(conn, rec)
            if path == "/api/show":
                return await self._send(conn, rec, 200, _gin_json(self._show(rec.body)),
                                        "application/json; charset=utf-8")
            if path == "/v1/models":
                if not await self._delay(conn, rec, self.models_delay_s):
                    return False
                return await self._send(conn, rec, 200, _encoder_json(self._list()), "application/json")
            if path.startswith("/v1/models/"):
                name = unquote(path[len("/v1/models/"):])  # gin matches on the decoded path
                return await self._send(conn, rec, 200, _encoder_json(self._retrieve(name)),
                                        "application/json")
            return await self._generation(conn, rec)
        except _Reply as reply:
            return await self._send_reply(conn, rec, reply)

    async def _delay(self, conn: _Conn, rec: RecordedRequest, seconds: float) -> bool:
        """Wait before answering (a slow or busy server); False when the client left or the server stopped."""
        if seconds <= 0:
            return True
        watch = ClientWatch(conn.reader, self._stopping)  # type: ignore[arg-type]
        try:
            ended = await watch.pause(seconds)
        finally:
            await watch.close()
        if ended:
            rec.outcome = "client_gone" if ended == "gone" else "stopped"
            return False
        return True

    def _tags(self) -> dict[str, Any]:
        ordered = sorted(self.models, key=lambda m: m.created, reverse=True)  # most recently modified first
        return {"models": [{"name": m.name, "model": m.name, "modified_at": m.modified_at, "size": m.size,
                            "digest": m.digest, "details": m.details} for m in ordered]}

    def _list(self) -> dict[str, Any]:
        ordered = sorted(self.models, key=lambda m: m.created, reverse=True)
        data = [{"id": m.name, "object": "model", "created": m.created, "owned_by": m.namespace} for m in ordered]
        return {"object": "list", "data": data or None}  # a nil slice in Go: "data": null

    def _retrieve(self, name: str) -> dict[str, Any]:
        found = self.model(name) if _valid_name(name) else None
        if found is None:
            raise self._openai_error(404, f"model '{name}' not found")
        return {"id": name, "object": "model", "created": found.created, "owned_by": _parse_name(name)[1]}

    def _ps(self) -> dict[str, Any]:
        """PsHandler: what is in memory, the longest time left first."""
        self._expire()
        held = sorted(self.running.values(), key=lambda r: r.expires_at_ns // 10**9, reverse=True)
        return {"models": [{"name": r.model.name, "model": r.model.name, "size": r.size, "digest": r.model.digest,
                            "details": r.model.details, "expires_at": go_time(r.expires_at_ns),
                            "size_vram": r.size_vram, "context_length": r.context_length} for r in held]}

    def _native_bind(self, body: bytes, shape: tuple[str, str, dict[str, Any]]) -> tuple[dict[str, Any], int | None]:
        """ShouldBindJSON for a native route: the request and its keep_alive (ns), or Ollama's 400."""
        try:
            request = bind_json(body, shape)
            return request, keep_alive_ns(request.get("keep_alive"))
        except _GoJSONError as error:
            message = "missing request body" if str(error) == "EOF" else str(error)
            raise self._native_error(400, message) from None

    def _native_model(self, name: str) -> OllamaModel:
        found = self.model(name) if _valid_name(name) else None
        if found is None:
            raise self._native_error(404, f"model '{name}' not found")
        return found

    def _expire_runner(self, found: OllamaModel) -> None:
        """sched.expireRunner: expires now; the scheduler drops it from memory in the background."""
        held = self.running.get(found.name)
        if held is None:
            return
        held.expires_at_ns, held.unloading = time.time_ns(), True

        def unloaded() -> None:
            if self.running.get(found.name) is held and held.unloading:
                del self.running[found.name]

        asyncio.get_running_loop().call_later(self.unload_delay_s, unloaded)

    async def _native_generate(self, conn: _Conn, rec: RecordedRequest) -> bool:
        """GenerateHandler: no prompt and keep_alive 0 unloads, no prompt loads, a prompt generates (NDJSON)."""
        request, keep_alive = self._native_bind(rec.body, GENERATE_REQUEST)
        name = request.get("model") or ""
        found = self._native_model(name)
        prompt = request.get("prompt") or ""
        now = go_time(time.time_ns(), utc=True)
        if not prompt and keep_alive == 0:
            self._expire_runner(found)
            return await self._send(conn, rec, 200, _gin_json(
                {"model": name, "created_at": now, "response": "", "done": True, "done_reason": "unload"}),
                "application/json; charset=utf-8")
        if "completion" not in found.capabilities:
            raise self._native_error(400, f"{json.dumps(name)} does not support generate")
        self.hold(found.name, keep_alive)
        if not prompt:
            return await self._send(conn, rec, 200, _gin_json(
                {"model": name, "created_at": now, "response": "", "done": True, "done_reason": "load"}),
                "application/json; charset=utf-8")
        tokens = tokenize(self.reply_text(prompt))
        metrics = {"context": list(range(1, len(tokens) + 1)), "total_duration": 1_000_000, "load_duration": 100_000,
                   "prompt_eval_count": max(1, len(tokenize(prompt))), "prompt_eval_duration": 200_000,
                   "eval_count": len(tokens), "eval_duration": 700_000}
        if request.get("stream") is False:
            body = {"model": name, "created_at": now, "response": "".join(tokens), "done": True, "done_reason": "stop",
                    **metrics}
            return await self._send(conn, rec, 200, _gin_json(body), "application/json; charset=utf-8")
        rec.stream = True
        lines = [{"model": name, "created_at": go_time(time.time_ns(), utc=True), "response": t, "done": False}
                 for t in tokens]
        lines.append({"model": name, "created_at": go_time(time.time_ns(), utc=True), "response": "", "done": True,
                      "done_reason": "stop", **metrics})
        data = self._head(conn, 200, "application/x-ndjson", None)
        data += b"".join(self._http_chunk(_gin_json(line) + b"\n") for line in lines) + b"0\r\n\r\n"
        conn.writer.write(data)
        await conn.writer.drain()
        rec.status, rec.outcome = 200, "complete"
        rec.headers_at = rec.finished_at = time.monotonic()
        return True

    async def _native_embed(self, conn: _Conn, rec: RecordedRequest) -> bool:
        """EmbedHandler: loads the model; no input answers at once with no embeddings."""
        request, keep_alive = self._native_bind(rec.body, NATIVE_EMBED_REQUEST)
        raw = request.get("input")
        if raw is None or raw == "":
            inputs: list[str] = []
        elif isinstance(raw, str):
            inputs = [raw]
        elif isinstance(raw, list) and all(isinstance(item, str) for item in raw):
            inputs = list(raw)
        else:
            raise self._native_error(400, "invalid input type")
        name = request.get("model") or ""
        found = self._native_model(name)
        self.hold(found.name, keep_alive)
        if keep_alive == 0:
            self._expire_runner(found)  # a zero session: unloaded once the request is done
        if not inputs:
            return await self._send(conn, rec, 200, _gin_json({"model": name, "embeddings": []}),
                                    "application/json; charset=utf-8")
        vectors = [embed(text, self.embedding_dim) for text in inputs]
        body = {"model": name, "embeddings": vectors, "total_duration": 1_000_000, "load_duration": 100_000,
                "prompt_eval_count": sum(max(1, len(tokenize(t))) for t in inputs)}
        return await self._send(conn, rec, 200, _gin_json(body), "application/json; charset=utf-8")

    def _show(self, body: bytes) -> dict[str, Any]:
        try:
            request = bind_json(body, SHOW_REQUEST)
        except _GoJSONError as error:
            message = "missing request body" if str(error) == "EOF" else str(error)
            raise self._native_error(400, message) from None
        name = request.get("model") or request.get("name") or ""
        if not name:
            raise self._native_error(400, "model is required")
        found = self.model(name) if _valid_name(name) else None
        if found is None:
            raise self._native_error(404, f"model '{name}' not found")
        return self._show_body(found)

    def _show_body(self, m: OllamaModel) -> dict[str, Any]:
        params = "\n".join(f"{k:<30} {json.dumps(v) if isinstance(v, str) else v}" for k, v in m.parameters)
        modelfile = (f"# Modelfile generated by \"ollama show\"\n# To build a new Modelfile based on this, "
                     f"replace FROM with:\n# FROM {m.name}\n\nFROM /root/.ollama/models/blobs/sha256-"
                     f"{hashlib.sha256(m.name.encode()).hexdigest()}\nTEMPLATE \"\"\"{m.template}\"\"\"\n"
                     + "".join(f"PARAMETER {k} {v}\n" for k, v in m.parameters)
                     + (f"LICENSE \"\"\"{m.license}\"\"\"\n" if m.license else ""))
        arch = m.family
        info = GoMap({
            "general.architecture": arch, "general.file_type": m.file_type,
            "general.parameter_count": m.parameter_count, "general.quantization_version": 2,
            f"{arch}.context_length": m.context_length, f"{arch}.embedding_length": m.embedding_length,
            f"{arch}.block_count": 28 if "completion" in m.capabilities else 12,
            f"{arch}.attention.head_count": 24 if "completion" in m.capabilities else 12,
            f"{arch}.attention.layer_norm_rms_epsilon": np.float32(1e-5),
            "tokenizer.ggml.model": "gpt2" if "completion" in m.capabilities else "bert",
        })
        body: dict[str, Any] = {}
        if m.license:
            body["license"] = m.license
        body.update({"modelfile": modelfile, "parameters": params, "template": m.template, "details": m.details,
                     "model_info": info, "capabilities": list(m.capabilities), "modified_at": m.modified_at})
        return body

    # -- /v1 generation ---------------------------------------------------------------------

    def _bind(self, body: bytes, shape: tuple[str, str, dict[str, Any]]) -> dict[str, Any]:
        try:
            return bind_json(body, shape)
        except _GoJSONError as error:
            raise self._openai_bad_request(str(error)) from None

    def _validate_chat(self, body: bytes) -> tuple[dict[str, Any], OllamaModel]:
        request = self._bind(body, CHAT_REQUEST)
        messages = request.get("messages") or []
        if not messages:
            raise self._openai_bad_request("[] is too short - 'messages'")
        for message in messages:  # openai.FromChatRequest
            message = message or {}
            content = message.get("content")
            if isinstance(content, str):
                continue
            if isinstance(content, list):
                for part in content:
                    if not isinstance(part, dict):
                        raise self._openai_bad_request("invalid message format")
                    if part.get("type") == "text":
                        if not isinstance(part.get("text"), str):
                            raise self._openai_bad_request("invalid message format")
                    elif part.get("type") == "image_url":
                        url = part.get("image_url")
                        url = url.get("url") if isinstance(url, dict) else url
                        if not isinstance(url, str):
                            raise self._openai_bad_request("invalid message format")
                        if not re.match(r"data:(image/(jpeg|jpg|png|webp))?;base64,", url):
                            raise self._openai_bad_request("invalid image input")
                    else:
                        raise self._openai_bad_request("invalid message format")
                continue
            if message.get("tool_calls") is None:
                go_type = {bool: "bool", int: "float64", float: "float64", dict: "map[string]interface {}"}.get(
                    type(content), "<nil>")
                raise self._openai_bad_request(f"invalid message content type: {go_type}")
        effort = request.get("reasoning_effort")
        if isinstance(effort, str) and effort and effort not in ("high", "medium", "low", "none"):
            raise self._openai_bad_request(
                f"invalid reasoning value: '{effort}' (must be \"high\", \"medium\", \"low\", or \"none\")")
        name = request.get("model") or ""
        if not _valid_name(name):  # ChatHandler
            raise self._openai_error(400, "model is required")
        found = self.model(name)
        if found is None:
            raise self._not_found(name, "/v1/chat/completions")
        if "completion" not in found.capabilities:
            raise self._openai_error(400, f"{json.dumps(name)} does not support chat")
        return request, found

    def _validate_completion(self, body: bytes) -> tuple[dict[str, Any], OllamaModel]:
        request = self._bind(body, COMPLETION_REQUEST)
        stop = request.get("stop")
        if isinstance(stop, list):
            for item in stop:
                if not isinstance(item, str):
                    go_type = {bool: "bool", dict: "map[string]interface {}", list: "[]interface {}"}.get(
                        type(item), "float64" if item is not None else "<nil>")
                    raise self._openai_bad_request(f"invalid type for 'stop' field: {go_type}")
        name = request.get("model") or ""
        found = self.model(name) if _valid_name(name) else None  # GenerateHandler
        if found is None:
            raise self._not_found(name, "/v1/completions")
        if "completion" not in found.capabilities:
            raise self._openai_error(400, f"{json.dumps(name)} does not support generate")
        return request, found

    def _validate_embeddings(self, body: bytes) -> tuple[dict[str, Any], list[str]]:
        request = self._bind(body, EMBED_REQUEST)
        encoding = request.get("encoding_format") or ""
        if encoding and encoding.lower() not in ("float", "base64"):
            raise self._openai_bad_request(
                f"Invalid value for 'encoding_format' = {encoding}. Supported values: ['float', 'base64'].")
        raw = request.get("input")
        if raw == "":
            raw = [""]
        if raw is None or raw == []:
            raise self._openai_bad_request("invalid input")
        if isinstance(raw, str):  # EmbedHandler
            inputs = [raw]
        elif isinstance(raw, list) and all(isinstance(item, str) for item in raw):
            inputs = list(raw)
        else:
            raise self._openai_error(400, "invalid input type")
        name = request.get("model") or ""
        if self.model(name) is None or not _valid_name(name):
            raise self._not_found(name, "/v1/embeddings")
        return request, inputs

    def _not_found(self, name: str, path: str) -> _Reply:
        if path == "/v1/embeddings" or (self.try_pulling_message and _valid_name(name)):
            return self._openai_error(404, f"model {json.dumps(name)} not found, try pulling it first")
        return self._openai_error(404, f"model '{name}' not found")

    def _fault_reply(self, fault: str, path: str, name: str) -> _Reply:
        if fault == "not_found":
            return self._not_found(name, path)
        return self._openai_error(500, self.error_message)

    async def _generation(self, conn: _Conn, rec: RecordedRequest) -> bool:
        if rec.path == "/v1/chat/completions":
            request, _found = self._validate_chat(rec.body)
        elif rec.path == "/v1/completions":
            request, _found = self._validate_completion(rec.body)
        else:
            request, inputs = self._validate_embeddings(rec.body)
        fault = self._faults.popleft() if self._faults else self.fault
        rec.fault = fault
        if fault not in ("not_found", "error_500"):
            self.hold(request.get("model") or "")  # the scheduler loads the model before it runs
        rec.stream = rec.path != "/v1/embeddings" and bool(request.get("stream"))
        watch = ClientWatch(conn.reader, self._stopping)  # type: ignore[arg-type]
        try:
            if fault == "hang" or (fault == "stall" and not rec.stream):
                return await self._hang(rec, watch)
            if fault == "drop" and not rec.stream:
                return self._drop(rec, conn)
            if fault in ("error_500", "not_found") or (fault == "error_midstream" and not rec.stream):
                if await watch.pause(self.first_chunk_delay_s):
                    return self._ended_early(rec, watch)
                await watch.close()
                reply = self._fault_reply(fault, rec.path, request.get("model") or "")
                return await self._send_reply(conn, rec, reply)
            if rec.path == "/v1/embeddings":
                return await self._embeddings(conn, rec, request, inputs, watch)
            return await self._complete(conn, rec, request, watch)
        except (ConnectionError, OSError):
            rec.outcome = "client_gone"
            return False
        finally:
            await watch.close()

    async def _embeddings(self, conn: _Conn, rec: RecordedRequest, request: dict[str, Any], inputs: list[str],
                          watch: ClientWatch) -> bool:
        if await watch.pause(self.first_chunk_delay_s):
            return self._ended_early(rec, watch)
        base64_format = (request.get("encoding_format") or "").lower() == "base64"
        dimensions = request.get("dimensions") or 0
        data = []
        tokens = 0
        for index, text in enumerate(inputs):
            vector = embed(text, self.embedding_dim)
            if 0 < dimensions < len(vector):
                vector = normalize(vector[:dimensions])
            tokens += max(1, len(tokenize(text)))
            value: Any = base64.b64encode(vector.astype("<f4").tobytes()).decode() if base64_format else vector
            data.append({"object": "embedding", "embedding": value, "index": index})
        body = {"object": "list", "data": data, "model": request.get("model") or "",
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}
        await watch.close()
        return await self._send(conn, rec, 200, _encoder_json(body), "application/json")

    async def _complete(self, conn: _Conn, rec: RecordedRequest, request: dict[str, Any], watch: ClientWatch) -> bool:
        chat = rec.path == "/v1/chat/completions"
        model = request.get("model") or ""
        if chat:
            messages = request["messages"]
            source: list[dict[str, Any]] | str = messages
            prompt_tokens = sum(len(tokenize(_message_text((m or {}).get("content")))) for m in messages)
        else:
            source = request.get("prompt") or ""
            prompt_tokens = len(tokenize(source))
        prompt_tokens = max(1, prompt_tokens)
        if not chat and not source:
            tokens: list[str] = []
            done_reason = "load"  # GenerateHandler: an empty prompt only loads the model
        else:
            tokens = tokenize(self.reply_text(source))
            done_reason = "stop"
            max_tokens = request.get("max_tokens")
            if isinstance(max_tokens, int) and 0 < max_tokens < len(tokens):
                tokens, done_reason = tokens[:max_tokens], "length"
        usage = {"prompt_tokens": prompt_tokens if done_reason != "load" else 0, "completion_tokens": len(tokens),
                 "total_tokens": (prompt_tokens if done_reason != "load" else 0) + len(tokens)}
        ident = f"{'chatcmpl' if chat else 'cmpl'}-{random.randrange(999)}"
        if not rec.stream:
            return await self._whole(conn, rec, chat, ident, model, "".join(tokens), done_reason, usage, tokens, watch)
        stream_options = request.get("stream_options") or {}
        include_usage = stream_options.get("include_usage") is True
        steps: list[Callable[[], bytes]] = [
            (lambda t=t: self._event(self._chunk(chat, ident, model, t, None, include_usage))) for t in tokens]
        steps.append(lambda: self._final_step(chat, ident, model, done_reason, usage, include_usage))
        return await self._stream(conn, rec, steps, chat, ident, include_usage, watch)

    @staticmethod
    def _event(chunk: dict[str, Any]) -> bytes:
        return b"data: " + _gin_json(chunk) + b"\n\n"

    @staticmethod
    def _chunk(chat: bool, ident: str, model: str, text: str, finish: str | None,
               include_usage: bool) -> dict[str, Any]:
        now = int(time.time())
        if chat:  # openai.ToChunk
            return {"id": ident, "object": "chat.completion.chunk", "created": now, "model": model,
                    "system_fingerprint": "fp_ollama",
                    "choices": [{"index": 0, "delta": {"role": "assistant", "content": text},
                                 "finish_reason": finish}]}
        chunk: dict[str, Any] = {  # openai.ToCompleteChunk; every chunk carries a zero usage with include_usage
            "id": ident, "object": "text_completion", "created": now,
            "choices": [{"text": text, "index": 0, "finish_reason": finish}], "model": model,
            "system_fingerprint": "fp_ollama"}
        if include_usage:
            chunk["usage"] = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
        return chunk

    def _final_step(self, chat: bool, ident: str, model: str, done_reason: str, usage: dict[str, int],
                    include_usage: bool) -> bytes:
        """The done response: its chunk, the usage chunk (choices emptied), and [DONE], in one flush."""
        final = self._chunk(chat, ident, model, "", done_reason, include_usage)
        data = self._event(final)
        if include_usage:
            final["choices"] = []
            final["usage"] = usage
            data += self._event(final)
        return data + b"data: [DONE]\n\n"

    async def _whole(self, conn: _Conn, rec: RecordedRequest, chat: bool, ident: str, model: str, text: str,
                     done_reason: str, usage: dict[str, int], tokens: list[str], watch: ClientWatch) -> bool:
        """Non-streaming: nothing is sent until the whole reply is generated."""
        generation_s = self.first_chunk_delay_s + self.chunk_interval_s * len(tokens)
        if await watch.pause(generation_s):
            return self._ended_early(rec, watch)
        now = int(time.time())
        if chat:  # openai.ToChatCompletion
            body: dict[str, Any] = {
                "id": ident, "object": "chat.completion", "created": now, "model": model,
                "system_fingerprint": "fp_ollama",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                             "finish_reason": done_reason}], "usage": usage}
        else:  # openai.ToCompletion
            body = {"id": ident, "object": "text_completion", "created": now, "model": model,
                    "system_fingerprint": "fp_ollama",
                    "choices": [{"text": text, "index": 0, "finish_reason": done_reason}], "usage": usage}
        await watch.close()
        return await self._send(conn, rec, 200, _encoder_json(body), "application/json")

    async def _wait_release(self, watch: ClientWatch) -> str | None:
        """Step mode: wait for release_next_chunk() (at most max_hang_s); "gone"/"stopping" if that came first."""
        return await self._chunk_gate.wait(watch, closed=lambda: self.step, timeout=self.max_hang_s)

    async def _stream(self, conn: _Conn, rec: RecordedRequest, steps: list[Callable[[], bytes]], chat: bool,
                      ident: str, include_usage: bool, watch: ClientWatch) -> bool:
        fault = rec.fault
        writer = conn.writer
        for index, make in enumerate(steps):
            if index == 0:
                if await watch.pause(self.first_chunk_delay_s):
                    return self._ended_early(rec, watch)
            else:
                if self.step and await self._wait_release(watch):
                    return self._ended_early(rec, watch)
                if await watch.pause(self.chunk_interval_s):
                    return self._ended_early(rec, watch)
            if index == self.drop_after_chunks and fault in ("drop", "stall", "error_midstream"):
                if fault == "drop":
                    return self._drop(rec, conn)
                if fault == "stall":
                    return await self._hang(rec, watch, outcome="stalled")
                if index == 0:  # nothing written yet: streamResponse answers with the error itself
                    await watch.close()
                    return await self._send_reply(conn, rec, self._openai_error(500, self.error_message))
                # The runner's error reaches the SSE writer as {"error": ...}, which it turns into an
                # empty chunk of a nameless model; then the handler returns: no [DONE].
                chunk = self._chunk(chat, ident, "", "", None, include_usage)
                await watch.close()
                writer.write(self._http_chunk(self._event(chunk)) + b"0\r\n\r\n")
                await writer.drain()
                self._count_chunk(rec)
                rec.outcome, rec.finished_at = "truncated", time.monotonic()
                return True
            if watch.gone:
                return self._ended_early(rec, watch)
            data = self._http_chunk(make())
            if index == 0:  # Ollama's headers go out with the first chunk
                data = self._head(conn, 200, "text/event-stream", None) + data
                rec.status, rec.headers_at = 200, time.monotonic()
            last = index == len(steps) - 1
            if last:
                await watch.close()  # so a keep-alive client's next request is not read here
            writer.write(data)
            await writer.drain()
            rec.first_chunk_at = rec.first_chunk_at or time.monotonic()
            self._count_chunk(rec)
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        rec.outcome, rec.finished_at = "complete", time.monotonic()
        return True

    @staticmethod
    def _http_chunk(data: bytes) -> bytes:
        return b"%x\r\n%s\r\n" % (len(data), data)

    async def _hang(self, rec: RecordedRequest, watch: ClientWatch, outcome: str = "hung") -> bool:
        ended = await watch.pause(self.max_hang_s)
        rec.outcome = {"gone": "client_gone", "stopping": "stopped"}.get(ended or "", outcome)
        return False

    @staticmethod
    def _ended_early(rec: RecordedRequest, watch: ClientWatch) -> bool:
        rec.outcome = "client_gone" if watch.gone else "stopped"
        return False

    @staticmethod
    def _drop(rec: RecordedRequest, conn: _Conn) -> bool:
        conn.writer.transport.abort()
        rec.outcome = "dropped"
        return False
