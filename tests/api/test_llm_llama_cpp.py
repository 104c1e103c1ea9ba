"""The LLM relay against a real llama.cpp server on SmolLM2-135M, with the official `openai` SDK."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from openai import NotFoundError, OpenAI

from conftest import Gateway, assert_envelope, start_gateway, stop_gateway
from llm_fixtures import LlamaServer, llama_server  # noqa: F401 - the fixture

pytestmark = pytest.mark.slow

QUESTION = [{"role": "user", "content": "Name three colours."}]
# temperature 0 and a seed make SmolLM2 answer the same way twice, so relayed and direct answers compare.
STEADY = {"temperature": 0, "seed": 7, "max_tokens": 24}


@pytest.fixture(scope="module")
def llm_gateway(models_cache: Path, tmp_path_factory: pytest.TempPathFactory, llama_server: LlamaServer) -> Iterator[Gateway]:  # noqa: F811
    upstreams = json.dumps([{"name": "llama", "base_url": llama_server.base_url}])
    env = {"AISTACK_LLM__UPSTREAMS": upstreams, "AISTACK_LLM__OLLAMA__ENABLED": "false"}
    running = start_gateway(models_cache, tmp_path_factory.mktemp("llm"), env)
    try:
        yield running
    finally:
        stop_gateway(running)


@pytest.fixture(scope="module")
def sdk(llm_gateway: Gateway) -> OpenAI:
    return OpenAI(base_url=f"{llm_gateway.url}/v1", api_key="not-needed", max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def direct(llama_server: LlamaServer) -> OpenAI:  # noqa: F811
    return OpenAI(base_url=llama_server.base_url, api_key="not-needed", max_retries=0, timeout=120)


def test_the_model_is_listed_as_a_streaming_llm(llm_gateway: Gateway) -> None:
    with llm_gateway.client() as client:
        models = {m["id"]: m for m in client.get("/v1/models").json()["data"]}
    smollm2 = models["smollm2"]
    assert smollm2["capabilities"] == ["llm"] and smollm2["supports_streaming"] is True
    assert smollm2["owned_by"] == "llama" and "languages" not in smollm2


def test_chat_through_the_gateway_is_the_upstreams_answer(sdk: OpenAI, direct: OpenAI) -> None:
    raw = sdk.chat.completions.with_raw_response.create(model="smollm2", messages=QUESTION, **STEADY)
    relayed = raw.parse()
    straight = direct.chat.completions.create(model="smollm2", messages=QUESTION, **STEADY)
    assert raw.headers["x-aistack-model"] == "smollm2"
    assert relayed.choices[0].message.content
    assert relayed.choices[0].message.content == straight.choices[0].message.content
    assert relayed.usage is not None and relayed.usage.completion_tokens > 0


def test_streamed_chat_arrives_in_chunks_and_says_the_same(sdk: OpenAI, direct: OpenAI) -> None:
    chunks = list(sdk.chat.completions.create(model="smollm2", messages=QUESTION, stream=True, **STEADY))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    straight = direct.chat.completions.create(model="smollm2", messages=QUESTION, **STEADY)
    assert len(chunks) > 3
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")
    assert text == straight.choices[0].message.content


def test_completions(sdk: OpenAI, direct: OpenAI) -> None:
    relayed = sdk.completions.create(model="smollm2", prompt="The sky is", **STEADY)
    straight = direct.completions.create(model="smollm2", prompt="The sky is", **STEADY)
    assert relayed.choices[0].text and relayed.choices[0].text == straight.choices[0].text


def test_the_upstream_can_be_named_explicitly(sdk: OpenAI) -> None:
    answer = sdk.chat.completions.create(model="llama/smollm2", messages=QUESTION, max_tokens=4)
    assert answer.choices[0].message.content is not None


def test_the_sse_stream_keeps_the_upstreams_headers_and_ends_with_done(llm_gateway: Gateway,
                                                                        llama_server: LlamaServer) -> None:  # noqa: F811
    body = {"model": "smollm2", "messages": QUESTION, "stream": True, **STEADY}
    with httpx.Client(timeout=60) as client:
        with client.stream("POST", f"{llama_server.base_url}/chat/completions", json=body) as straight:
            upstream_headers = straight.headers
            straight.read()
        with client.stream("POST", f"{llm_gateway.url}/v1/chat/completions", json=body) as response:
            assert response.status_code == 200
            for name in ("content-type", "cache-control"):
                assert response.headers[name] == upstream_headers[name], name
            assert "content-length" not in response.headers
            lines = [line for line in response.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    assert all(line.startswith("data: ") for line in lines)


def test_an_unknown_model_is_404_naming_the_llms_here(sdk: OpenAI, llm_gateway: Gateway) -> None:
    with pytest.raises(NotFoundError):
        sdk.chat.completions.create(model="no-such-llm", messages=QUESTION)
    with llm_gateway.client() as client:
        response = client.post("/v1/chat/completions", json={"model": "no-such-llm", "messages": QUESTION})
    assert_envelope(response, 404, "not_found", "model", "no-such-llm", "smollm2")


@pytest.mark.parametrize(
    ("content", "status", "kind", "param", "needle"),
    [
        (b'{"messages": []}', 400, "malformed", "model", "'model' is required"),
        (b'{"model": 5, "messages": []}', 400, "malformed", "model", "string"),
        (b'{"model": "smollm2", "messages": [', 400, "malformed", None, "not valid JSON"),
        (b"[1, 2]", 400, "malformed", None, "JSON object"),
        (b"", 400, "malformed", None, "empty"),
        (b'{"model": "whisper-tiny.en", "messages": []}', 400, "malformed", "model", "not an LLM"),
    ],
    ids=["no-model", "model-not-a-string", "broken-json", "not-an-object", "empty", "asr-model"],
)
def test_bad_requests_get_the_envelope(llm_gateway: Gateway, content: bytes, status: int, kind: str, param: str | None,
                                       needle: str) -> None:
    with llm_gateway.client() as client:
        response = client.post("/v1/chat/completions", content=content, headers={"content-type": "application/json"})
    assert_envelope(response, status, kind, param, needle)


def test_a_body_over_the_limit_is_413(models_cache: Path, tmp_path_factory: pytest.TempPathFactory,
                                      llama_server: LlamaServer) -> None:  # noqa: F811
    env = {"AISTACK_LLM__UPSTREAMS": json.dumps([{"name": "llama", "base_url": llama_server.base_url}]),
           "AISTACK_LLM__OLLAMA__ENABLED": "false", "AISTACK_MAX_UPLOAD_MB": "0.01"}
    small = start_gateway(models_cache, tmp_path_factory.mktemp("llm-small"), env)
    try:
        big = {"model": "smollm2", "messages": [{"role": "user", "content": "x" * 20_000}]}
        with httpx.Client(base_url=small.url, timeout=30) as client:
            response = client.post("/v1/chat/completions", json=big)
            assert_envelope(response, 413, "overflow", None)
            still = client.post("/v1/chat/completions", json={"model": "smollm2", "messages": QUESTION, "max_tokens": 2})
        assert still.status_code == 200
    finally:
        stop_gateway(small)
