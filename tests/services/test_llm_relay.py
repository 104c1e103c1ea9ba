"""The LLM relay without HTTP in front of it, to Ollama's loopback double (no Ollama daemon runs here):
which upstream model a request goes to, what it sends there, what it hands back, and what it
refuses before sending anything."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest

from aistack.engines.ollama import OllamaBackend
from aistack.errors import AistackError, ErrorKind
from aistack.inventory import Inventory
from aistack.lifecycle import ModelLifecycle
from aistack.scheduler import Scheduler
from aistack.scheduler.upstreams import UpstreamGate
from aistack.services.llm import LlmProxy, UpstreamAnswer
from aistack.settings import LlmSettings, ModelLifecycleSettings, OllamaSettings, SchedulerSettings
from doubles.ollama_server import OllamaDouble

CHAT_MODEL = "llama3.2:latest"
EMBED_MODEL = "nomic-embed-text:latest"


@pytest.fixture(scope="module")
def ollama() -> Iterator[OllamaDouble]:
    with OllamaDouble() as server:
        yield server


def with_relay(ollama: OllamaDouble, body: Callable[[LlmProxy], Awaitable[None]]) -> None:
    upstream = OllamaBackend(OllamaSettings(base_url=ollama.url), probe_timeout_s=10, load_timeout_s=30)
    scheduler = Scheduler(SchedulerSettings())
    lifecycle = ModelLifecycle({}, ModelLifecycleSettings())
    relay = LlmProxy(LlmSettings(), Inventory((upstream,), probe_timeout_s=10, ttl_s=60), {upstream.provider: upstream},
                     UpstreamGate(SchedulerSettings(), scheduler, lifecycle))

    async def main() -> None:
        try:
            await asyncio.wait_for(body(relay), timeout=60)
        finally:
            await relay.aclose()
            await lifecycle.close()
            scheduler.shutdown()

    asyncio.run(main())


def request(**fields: Any) -> bytes:
    return json.dumps(fields).encode()


async def read(answer: UpstreamAnswer) -> bytes:
    try:
        return b"".join([part async for part in answer.body])
    finally:
        await answer.aclose()


def sent_to_ollama(ollama: OllamaDouble) -> dict[str, Any]:
    last = next(r for r in reversed(ollama.requests) if r.path == "/v1/chat/completions")
    parsed: dict[str, Any] = json.loads(last.body)
    return parsed


def test_a_chat_goes_to_the_upstream_that_lists_the_model_and_its_answer_comes_back(ollama: OllamaDouble) -> None:
    async def body(relay: LlmProxy) -> None:
        answer = await relay.relay("chat/completions", request(model="llama3.2", messages=[{"role": "user", "content": "hello there"}]))
        assert answer.card.id == CHAT_MODEL and answer.card.provider == "ollama"
        assert answer.status_code == 200 and not answer.is_event_stream
        completion = json.loads(await read(answer))
        assert completion["choices"][0]["message"]["content"] == ollama.reply_text([{"role": "user", "content": "hello there"}])

    with_relay(ollama, body)


def test_a_streamed_chat_is_an_event_stream_that_ends_with_done(ollama: OllamaDouble) -> None:
    async def body(relay: LlmProxy) -> None:
        answer = await relay.relay("chat/completions", request(model=CHAT_MODEL, stream=True,
                                                               messages=[{"role": "user", "content": "count"}]))
        assert answer.is_event_stream
        assert (await read(answer)).rstrip().endswith(b"data: [DONE]")

    with_relay(ollama, body)


def test_developer_messages_reach_an_upstream_without_that_role_as_system(ollama: OllamaDouble) -> None:
    async def body(relay: LlmProxy) -> None:
        messages = [{"role": "developer", "content": "be brief"}, {"role": "user", "content": "hi"}]
        await read(await relay.relay("chat/completions", request(model=CHAT_MODEL, messages=messages)))
        assert [m["role"] for m in sent_to_ollama(ollama)["messages"]] == ["system", "user"]

    with_relay(ollama, body)


def test_provider_slash_id_picks_the_upstream_which_gets_its_own_id(ollama: OllamaDouble) -> None:
    async def body(relay: LlmProxy) -> None:
        answer = await relay.relay("chat/completions", request(model=f"ollama/{CHAT_MODEL}", messages=[{"role": "user", "content": "hi"}]))
        await read(answer)
        assert sent_to_ollama(ollama)["model"] == CHAT_MODEL

    with_relay(ollama, body)


@pytest.mark.parametrize(("fields", "kind", "needle"), [
    ({"messages": []}, ErrorKind.MALFORMED, "the field 'model' is required"),
    ({"model": 7, "messages": []}, ErrorKind.MALFORMED, "the field 'model' must be a string"),
    ({"model": EMBED_MODEL, "messages": []}, ErrorKind.MALFORMED, "makes embeddings only"),
])
def test_requests_the_relay_refuses_before_sending_them(ollama: OllamaDouble, fields: dict[str, Any], kind: ErrorKind,
                                                         needle: str) -> None:
    async def body(relay: LlmProxy) -> None:
        before = len(ollama.requests)
        with pytest.raises(AistackError) as error:
            await relay.relay("chat/completions", request(**fields))
        assert error.value.kind == kind and error.value.param == "model" and needle in error.value.message
        assert not [r for r in ollama.requests[before:] if r.path.startswith("/v1/chat")]

    with_relay(ollama, body)


def test_an_unknown_model_is_not_found_and_says_how_to_get_it(ollama: OllamaDouble) -> None:
    async def body(relay: LlmProxy) -> None:
        with pytest.raises(AistackError) as error:
            await relay.relay("chat/completions", request(model="no-such-llm", messages=[]))
        assert error.value.kind == ErrorKind.NOT_FOUND and error.value.param == "model"
        assert "ollama pull no-such-llm" in error.value.message

    with_relay(ollama, body)
