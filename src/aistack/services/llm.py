"""Relaying /v1/chat/completions, /v1/completions and /v1/embeddings to the upstream that owns the model.

An embedding model run in this process (`EmbeddingService.serves` it) is answered here instead,
in OpenAI's shape; every other model goes to its upstream.

The body is read once (within the upload limit) and parsed only to find its `model`; it goes out
as the same bytes unless the model had to be renamed for the upstream (`provider/id`) or the
upstream does not know OpenAI's `developer` role (its messages go as `system`). An upstream's
validation answer is the client's error (400), whatever status the upstream gave it. The upstream's answer
comes back as it arrives: its status, its content type and its bytes, never buffered. Each
upstream has one pooled keep-alive client with a short connect timeout and a long read timeout.
A failure before the answer starts is the error envelope; one in the middle of a stream is one
SSE event carrying the envelope, after which the stream ends. A client that goes away closes
the upstream request.
"""

from __future__ import annotations

import json
import logging
import math
import re
import time
from collections.abc import AsyncGenerator, Callable, Mapping
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any

import httpx

from .. import sse
from ..engines.base import BackendStatus, ChatUpstream, ClosableAsyncIterator, ModelCard, ServerBackend
from ..engines.http_upstream import RELAY_POOL, PooledClient, request_timeout, transport_error, upstream_status_kind
from ..engines.upstream_errors import UpstreamRefusal, read_refusal
from ..errors import AistackError, ErrorKind, malformed, not_found
from ..inventory import Inventory, Snapshot
from ..lifecycle import ModelLifecycle
from ..observability import tracing
from ..scheduler.upstreams import UpstreamGate
from ..settings import LlmSettings
from .embeddings import EmbeddingService

log = logging.getLogger("aistack.llm")

# What of the upstream's response headers a client needs; hop-by-hop and length headers are the server's.
# (The upstream's own x-request-id would clash with the gateway's; the access log has the gateway's.)
RELAYED_HEADERS = ("content-type", "cache-control", "openai-processing-ms")
# How an OpenAI-style event stream says it is complete.
STREAM_END = sse.DONE
# A listing younger than this is not refreshed again for a model it lacks.
FRESH_ENOUGH_S = 0.25
ENDPOINT_CAPABILITY = {"chat/completions": "llm", "completions": "llm", "embeddings": "embeddings"}
# Where a model that embeds can come from, for a message that finds none here.
EMBEDDING_MODEL_PLACEHOLDER = "<an embedding model>"
# How an upstream says a model cannot do what was asked (llama-cpp-python: 500 "must be created with embedding=True").
CANNOT_DO_IT_STATUSES = (400, 422, 500, 501)


@dataclass
class UpstreamAnswer:
    """An upstream's successful answer, headers in, body still to come.

    `aclose` lets go of everything it holds (the connection, a gate slot) whether or not the body
    was read; the body closes them itself when it ends.
    """

    card: ModelCard
    status_code: int
    headers: dict[str, str]
    body: ClosableAsyncIterator[bytes]
    is_event_stream: bool
    held: AsyncExitStack

    async def aclose(self) -> None:
        await self.held.aclose()


# The usage an OpenAI-compatible answer reports comes last (the body's end, or the stream's last chunk).
USAGE_TAIL_BYTES = 4096
PROMPT_TOKENS = re.compile(rb'"prompt_tokens"\s*:\s*(\d+)')
COMPLETION_TOKENS = re.compile(rb'"completion_tokens"\s*:\s*(\d+)')


def _last_count(pattern: re.Pattern[bytes], tail: bytes) -> int | None:
    found = pattern.findall(tail)
    return int(found[-1]) if found else None


class LlmProxy:
    def __init__(self, settings: LlmSettings, inventory: Inventory, upstreams: Mapping[str, ChatUpstream],
                 gate: UpstreamGate, embeddings: EmbeddingService | None = None,
                 lifecycle: ModelLifecycle | None = None) -> None:
        """`lifecycle` starts and stops the upstreams that run on demand (`ServerBackend`) around their requests."""
        self._settings = settings
        self._inventory = inventory
        self._upstreams = upstreams
        self._gate = gate
        self._embeddings = embeddings
        self._lifecycle = lifecycle
        self._clients: dict[str, PooledClient] = {}
        # Told (model id, prompt tokens, completion tokens) where an upstream's answer reports its usage.
        self.usage_listeners: list[Callable[[str, int, int], None]] = []

    async def relay(self, endpoint: str, body: bytes) -> UpstreamAnswer:
        """Send `body` to `POST /v1/{endpoint}` of the model's upstream; its answer once its headers are in."""
        payload = _parse(body)
        model = payload.get("model")
        if model is None or model == "":
            raise malformed("the field 'model' is required: name an LLM (GET /v1/models lists them)", param="model")
        if not isinstance(model, str):
            raise malformed("the field 'model' must be a string", param="model")
        capability = ENDPOINT_CAPABILITY[endpoint]
        card = await self._resolve(model, capability)
        if self._embeddings is not None and self._embeddings.serves(card):
            answer = await self._embeddings.create(card, payload)
            return UpstreamAnswer(card, 200, {"content-type": "application/json"}, _whole(json.dumps(answer).encode()),
                                  False, AsyncExitStack())
        upstream = self._upstreams[card.provider]
        rewritten = payload
        if model.startswith(f"{card.provider}/") and card.provider_model_id != model:
            # `provider/id` chose the upstream; the upstream knows the model by its own id.
            rewritten = {**rewritten, "model": card.provider_model_id}
        if endpoint == "chat/completions" and not upstream.accepts_developer_role:
            rewritten = _developer_as_system(rewritten)
        refusal = upstream.unservable(endpoint, rewritten)
        if refusal is not None:
            raise refusal
        if rewritten is not payload:
            body = _encode(rewritten)
        try:
            return await self._send(upstream, card, endpoint, body)
        except UpstreamRefused as refused:
            if (capability == "embeddings" and "embeddings" not in card.capabilities
                    and refused.status in CANNOT_DO_IT_STATUSES and not refused.refusal.invalid_request):
                # Not listed as embedding, tried anyway (a generic server's listing cannot say whether a
                # model embeds; Ollama embeds with chat models), and refused: the model does not embed.
                raise await self._does_not_embed(card, refused.refusal) from None
            raise refused.error from None

    async def aclose(self) -> None:
        clients, self._clients = self._clients, {}
        for client in clients.values():
            await client.aclose()

    # -- choosing the upstream --------------------------------------------------------------------

    async def _resolve(self, model: str, capability: str) -> ModelCard:
        snapshot = await self._inventory.snapshot(allow_stale=True)
        card = self._find(snapshot, model)
        if card is None and time.monotonic() - snapshot.taken_at > FRESH_ENOUGH_S:
            # Not in a listing that may be a moment old: look again before saying no (a model just
            # pulled, an upstream that just came up).
            self._inventory.invalidate()
            snapshot = await self._inventory.snapshot()
            card = self._find(snapshot, model)
        if card is not None and self._serves(card):
            if capability == "llm" and "llm" not in card.capabilities:
                raise malformed(f"model '{model}' makes embeddings only ({card.provider} says so): send it to "
                                f"/v1/embeddings, or pick a model that generates text: "
                                f"{self._models_that(capability, snapshot) or 'none here'}", param="model")
            return card
        if card is not None:
            raise malformed(f"model '{model}' is not an LLM ({', '.join(card.capabilities)}); pick one from GET /v1/models",
                            param="model")
        raise self._unknown(model, capability, snapshot)

    def _serves(self, card: ModelCard) -> bool:
        return card.provider in self._upstreams or (self._embeddings is not None and self._embeddings.serves(card))

    def _answers_for(self, status: BackendStatus, capability: str) -> bool:
        """Whether `status` tells about servers for `capability`: every upstream, and the local engines that do it."""
        return status.provider in self._upstreams or any(self._serves(c) and capability in c.capabilities for c in status.cards)

    def _find(self, snapshot: Snapshot, model: str) -> ModelCard | None:
        for candidate in self._canonical_ids(model):
            card = snapshot.card(candidate)
            if card is not None:
                return card
        return None

    def _canonical_ids(self, model: str) -> list[str]:
        """`model`, then the other ids the upstreams would list it under (their `canonical_ids`)."""
        ids = [model]
        for upstream in self._upstreams.values():
            ids.extend(alias for alias in upstream.canonical_ids(model) if alias not in ids)
        return ids

    def _models_that(self, capability: str, snapshot: Snapshot) -> str:
        return ", ".join(c.id for c in snapshot.cards if self._serves(c) and capability in c.capabilities)

    async def _does_not_embed(self, card: ModelCard, refusal: UpstreamRefusal) -> AistackError:
        snapshot = await self._inventory.snapshot(allow_stale=True)
        said = f"{card.provider}: {refusal.message}"
        embedders = self._models_that("embeddings", snapshot)
        if embedders:
            return malformed(f"model '{card.id}' does not make embeddings ({said}); models here that do: {embedders}",
                             param="model", provider=card.provider)
        fixes = [fix for upstream in self._upstreams.values()
                 if (fix := upstream.missing_model_fix(EMBEDDING_MODEL_PLACEHOLDER))]
        get_one = "".join(f"`{fix}` or " for fix in fixes)
        return malformed(f"model '{card.id}' does not make embeddings ({said}), and no model here does; get one: "
                         f"{get_one}serve one on an OpenAI-compatible server listed in AISTACK_LLM__UPSTREAMS",
                         param="model", provider=card.provider)

    def _retry_headers(self, provider: str) -> dict[str, str] | None:
        """Retry-After for a server that is down for a moment (restarting), so clients wait rather than fail."""
        upstream = self._upstreams.get(provider)
        seconds = upstream.retry_after_s() if upstream is not None else None
        return {"Retry-After": str(max(1, math.ceil(seconds)))} if seconds is not None else None

    def _unknown(self, model: str, capability: str, snapshot: Snapshot) -> AistackError:
        llm_cards = [c for c in snapshot.cards if self._serves(c)]
        statuses = [s for s in snapshot.statuses if self._answers_for(s, capability)]
        names = self._canonical_ids(model)
        for status in statuses:  # a server that served this model is down now: say so, and how to start it
            for missing in status.unavailable:
                if missing.subject in names:
                    return AistackError(ErrorKind.NETWORK, f"model '{model}' cannot be served now: {missing.reason}; "
                                        f"{missing.fix}", provider=status.provider,
                                        headers=self._retry_headers(status.provider))
        reachable = [s.provider for s in statuses if not s.unavailable]
        choices = ", ".join(c.id for c in llm_cards if capability in c.capabilities) or "none"
        if not reachable:
            down = [missing for s in statuses for missing in s.unavailable]
            reasons = "; ".join(f"{m.reason} ({m.fix})" for m in down) or "no LLM server is configured"
            return AistackError(
                ErrorKind.NETWORK,
                f"no LLM server is running, so model '{model}' cannot be served: {reasons}",
                provider=down[0].subject if len(down) == 1 else "aistack",
            )
        fixes = [fix for provider in reachable
                 if provider in self._upstreams and (fix := self._upstreams[provider].missing_model_fix(model))]
        hint = f"; to get it: {' or '.join(f'`{fix}`' for fix in fixes)}" if fixes else ""
        unreachable = [s.provider for s in statuses if s.unavailable]
        also = f" ({', '.join(unreachable)} not reachable now)" if unreachable else ""
        return not_found(f"model '{model}' is not available here{hint}; LLMs here: {choices}{also}", param="model")

    # -- talking to it ----------------------------------------------------------------------------

    async def _send(self, upstream: ChatUpstream, card: ModelCard, endpoint: str, body: bytes) -> UpstreamAnswer:
        held = AsyncExitStack()
        # The relay, from the upstream's start (on demand) to the end of its answer; ends as `held` closes.
        traced = tracing.start_engine_step("llm", upstream.provider, card.id)
        held.callback(traced.end)
        try:
            if isinstance(upstream, ServerBackend) and self._lifecycle is not None:
                # Started on first use (the request waits until it is healthy); in use until the answer ends.
                await self._lifecycle.checkout(card)
                held.callback(self._lifecycle.checkin, card.id)
            root = upstream.root_url()
            if root is None:
                missing = upstream.unreachable("it is not running")
                raise AistackError(ErrorKind.NETWORK, f"{missing.reason}; {missing.fix}", provider=upstream.provider,
                                   headers=self._retry_headers(upstream.provider))
            await held.enter_async_context(self._gate.call(upstream.provider, "llm"))
        except BaseException as error:
            traced.fail(error)
            await held.aclose()
            raise
        client = self._client(upstream.provider)
        headers = {"content-type": "application/json", "accept-encoding": "identity", **upstream.auth_headers()}
        request = client.build_request("POST", f"{root}/{endpoint}", content=body, headers=headers)
        try:
            response = await client.send(request, stream=True)
        except BaseException as error:
            traced.fail(error)
            await held.aclose()
            if isinstance(error, httpx.HTTPError):
                raise self._transport_error(upstream, error) from None
            raise
        held.push_async_callback(response.aclose)
        traced.set("http.response.status_code", response.status_code)
        try:
            if response.status_code >= 400:
                raise await self._upstream_error(upstream, card, response)
        except BaseException as error:
            traced.fail(error.error if isinstance(error, UpstreamRefused) else error)
            await held.aclose()
            raise
        content_type = response.headers.get("content-type", "")
        relayed = {name: response.headers[name] for name in RELAYED_HEADERS if name in response.headers}
        is_event_stream = content_type.startswith("text/event-stream")
        return UpstreamAnswer(card, response.status_code, relayed,
                              self._body(upstream, response, held, is_event_stream, card.id, traced), is_event_stream, held)

    async def _body(self, upstream: ChatUpstream, response: httpx.Response, held: AsyncExitStack,
                    is_event_stream: bool, model_id: str = "", traced: tracing.Step = tracing.NO_STEP) -> AsyncGenerator[bytes, None]:
        tail = b""  # the end of what was relayed: whether an event stream finished, and the usage it reported
        try:
            async for chunk in response.aiter_raw():
                tail = (tail + chunk)[-USAGE_TAIL_BYTES:]
                yield chunk
            self._tell_usage(model_id, tail, response.headers.get("content-encoding"))
        except httpx.HTTPError as error:
            failure = self._transport_error(upstream, error, mid_stream=True)
            traced.fail(failure)
            log.warning("%s failed mid-answer: %s", upstream.provider, failure.message)
            if not is_event_stream:
                raise failure from None  # nothing else can tell a client reading a plain body
            yield sse.data_event(failure.envelope())
            return
        finally:
            await held.aclose()
        if is_event_stream and STREAM_END not in tail[-64:]:
            # Ollama ends a stream whose runner died with an empty chunk and no [DONE].
            failure = AistackError(ErrorKind.UNKNOWN, f"{upstream.provider} ended its stream without finishing it "
                                   "(no [DONE]); the answer is incomplete", provider=upstream.provider)
            log.warning("%s", failure.message)
            yield sse.data_event(failure.envelope())

    def _tell_usage(self, model_id: str, tail: bytes, encoding: str | None) -> None:
        if not self.usage_listeners or (encoding not in (None, "identity")):
            return
        prompt = _last_count(PROMPT_TOKENS, tail)
        completion = _last_count(COMPLETION_TOKENS, tail)
        if prompt is None and completion is None:
            return
        for listener in self.usage_listeners:
            try:
                listener(model_id, prompt or 0, completion or 0)
            except Exception:  # a metric must not break a relay
                log.exception("a usage listener failed")

    def _client(self, provider: str) -> httpx.AsyncClient:
        pooled = self._clients.get(provider)
        if pooled is None:
            settings = self._settings
            timeout = request_timeout(settings.connect_timeout_s, settings.read_timeout_s)
            pooled = self._clients[provider] = PooledClient(timeout, limits=RELAY_POOL)
        return pooled.get()

    def _transport_error(self, upstream: ChatUpstream, error: httpx.HTTPError, mid_stream: bool = False) -> AistackError:
        def unreachable(failure: httpx.HTTPError) -> str:
            missing = upstream.unreachable(str(failure) or type(failure).__name__)
            return f"{missing.reason}; {missing.fix}"

        what = "stopped sending" if mid_stream else "did not answer"
        where = "in the middle of its answer" if mid_stream else "before answering"
        provider = upstream.provider
        failure = transport_error(
            error, provider, unreachable=unreachable,
            timed_out=f"{provider} {what} for {self._settings.read_timeout_s:g} s; raise AISTACK_LLM__READ_TIMEOUT_S "
                      "if generations need longer",
            dropped=lambda detail: f"{provider} dropped the connection {where} ({detail})",
        )
        if failure.kind == ErrorKind.NETWORK:
            failure.headers = {**failure.headers, **(self._retry_headers(provider) or {})}
        return failure

    async def _upstream_error(self, upstream: ChatUpstream, card: ModelCard,
                              response: httpx.Response) -> UpstreamRefused:
        status = response.status_code
        refusal = await read_refusal(response)
        return UpstreamRefused(status, refusal, self._envelope_for(upstream, card, status, refusal,
                                                                   response.headers.get("retry-after", "1")))

    def _envelope_for(self, upstream: ChatUpstream, card: ModelCard, status: int, refusal: UpstreamRefusal,
                      retry_after: str) -> AistackError:
        message = refusal.message
        provider = upstream.provider
        if status == 404:
            fix = upstream.missing_model_fix(card.provider_model_id)
            hint = f"; to get it: `{fix}`" if fix else ""
            return AistackError(ErrorKind.NOT_FOUND, f"{provider}: {message}{hint}", provider=provider, param="model")
        if refusal.invalid_request:
            # A validation answer, even one sent as 500 (llama-cpp-python): the request is at fault.
            return malformed(f"{provider} rejected the request: {message}", param=refusal.param, provider=provider)
        kind = upstream_status_kind(status)
        headers = {"Retry-After": retry_after} if kind is ErrorKind.BUSY else None
        if status in (401, 403):
            message = f"{message} (the gateway's credentials for it were refused; check its api_key setting)"
        param = refusal.param if kind is ErrorKind.MALFORMED else None
        return AistackError(kind, f"{provider} answered {status}: {message}", provider=provider, headers=headers,
                            param=param)


class UpstreamRefused(Exception):
    """An upstream's error answer before any of it was relayed: what it said, and the envelope for the client."""

    def __init__(self, status: int, refusal: UpstreamRefusal, error: AistackError) -> None:
        super().__init__(error.message)
        self.status = status
        self.refusal = refusal
        self.error = error


async def _whole(body: bytes) -> AsyncGenerator[bytes, None]:
    yield body


def _parse(body: bytes) -> dict[str, Any]:
    if not body.strip():
        raise malformed("the request body is empty; send a JSON object with at least 'model'")
    try:
        payload = json.loads(body)
    except (ValueError, UnicodeDecodeError) as error:
        raise malformed(f"the request body is not valid JSON ({error})") from None
    except RecursionError:
        raise _too_deep() from None
    if not isinstance(payload, dict):
        raise malformed("the request body must be a JSON object")
    return payload


def _encode(payload: dict[str, Any]) -> bytes:
    try:
        return json.dumps(payload).encode()
    except RecursionError:
        raise _too_deep() from None


def _too_deep() -> AistackError:
    return malformed("the request body nests arrays or objects too deeply to parse (hundreds of levels); "
                     "an OpenAI request needs a few: send its fields as the API reference gives them")


def _developer_as_system(payload: dict[str, Any]) -> dict[str, Any]:
    """`payload` with its `developer` messages sent as `system` (OpenAI's newer name for the same role)."""
    messages = payload.get("messages")
    if not isinstance(messages, list) or not any(_is_developer(message) for message in messages):
        return payload
    return {**payload, "messages": [{**message, "role": "system"} if _is_developer(message) else message
                                    for message in messages]}


def _is_developer(message: Any) -> bool:
    return isinstance(message, dict) and message.get("role") == "developer"
