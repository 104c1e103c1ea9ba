"""The LLM relay against a real llama.cpp server on SmolLM2-135M, with the official `openai` SDK.

A recording proxy sits between the gateway and llama.cpp, so each test compares what its client got
with what llama.cpp sent for that very request. Two generations are never compared: with its prompt
cache and batching, llama.cpp need not answer the same prompt the same way twice, even at
temperature 0 with a seed.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from openai import NotFoundError, OpenAI

from conftest import Gateway, assert_envelope, start_gateway, stop_gateway
from doubles.recording_proxy import Exchange, RecordingProxy
from llm_fixtures import LlamaServer, llama_server  # noqa: F401 - the fixture

pytestmark = pytest.mark.slow

QUESTION = [{"role": "user", "content": "Name three colours."}]
# Greedy, so that an answer is not empty by chance (an empty answer would make a comparison vacuous).
STEADY = {"temperature": 0, "max_tokens": 24}


@pytest.fixture(scope="module")
def proxy(llama_server: LlamaServer) -> Iterator[RecordingProxy]:  # noqa: F811
    with RecordingProxy(llama_server.base_url.removesuffix("/v1")) as running:
        yield running


@pytest.fixture(scope="module")
def llm_gateway(models_cache: Path, tmp_path_factory: pytest.TempPathFactory, proxy: RecordingProxy) -> Iterator[Gateway]:
    upstreams = json.dumps([{"name": "llama", "base_url": f"{proxy.url}/v1"}])
    env = {"AISTACK_LLM__UPSTREAMS": upstreams, "AISTACK_LLM__OLLAMA__ENABLED": "false"}
    running = start_gateway(models_cache, tmp_path_factory.mktemp("llm"), env)
    try:
        yield running
    finally:
        stop_gateway(running)


@pytest.fixture(scope="module")
def sdk(llm_gateway: Gateway) -> OpenAI:
    return OpenAI(base_url=f"{llm_gateway.url}/v1", api_key="not-needed", max_retries=0, timeout=120)


def the_exchange(proxy: RecordingProxy, mark: int, path: str) -> Exchange:
    """The one request the gateway sent upstream to `path` since `mark`, with llama.cpp's whole answer."""
    exchanges = proxy.new_exchanges(mark, path)
    assert len(exchanges) == 1, f"the gateway sent {len(exchanges)} requests to {path} for one client request"
    (exchange,) = exchanges
    assert exchange.complete.wait(60), "the upstream's answer was not recorded in full"
    assert exchange.error is None and exchange.status == 200, (exchange.status, exchange.error, exchange.body[:500])
    return exchange


def test_the_model_is_listed_as_a_streaming_llm(llm_gateway: Gateway) -> None:
    with llm_gateway.client() as client:
        models = {m["id"]: m for m in client.get("/v1/models").json()["data"]}
    smollm2 = models["smollm2"]
    assert smollm2["capabilities"] == ["llm"] and smollm2["supports_streaming"] is True
    assert smollm2["owned_by"] == "llama" and "languages" not in smollm2


def test_chat_through_the_gateway_is_the_upstreams_answer(sdk: OpenAI, proxy: RecordingProxy) -> None:
    mark = proxy.mark()
    raw = sdk.chat.completions.with_raw_response.create(model="smollm2", messages=QUESTION, **STEADY)
    relayed = raw.parse()
    exchange = the_exchange(proxy, mark, "/v1/chat/completions")
    asked = json.loads(exchange.request_body)
    assert asked["model"] == "smollm2" and asked["messages"] == QUESTION and asked["max_tokens"] == 24
    assert raw.headers["x-aistack-model"] == "smollm2"
    assert raw.http_response.content == exchange.body  # byte for byte what llama.cpp sent
    upstream = json.loads(exchange.body)
    assert relayed.id == upstream["id"]
    assert relayed.choices[0].message.content == upstream["choices"][0]["message"]["content"]
    assert relayed.choices[0].message.content
    assert relayed.usage is not None and relayed.usage.completion_tokens == upstream["usage"]["completion_tokens"] > 0


def test_streamed_chat_arrives_in_chunks_and_says_the_same(sdk: OpenAI, proxy: RecordingProxy) -> None:
    mark = proxy.mark()
    chunks = list(sdk.chat.completions.create(model="smollm2", messages=QUESTION, stream=True, **STEADY))
    exchange = the_exchange(proxy, mark, "/v1/chat/completions")
    assert json.loads(exchange.request_body)["stream"] is True
    data = exchange.sse_data()
    assert data[-1] == "[DONE]"
    events = [json.loads(payload) for payload in data[:-1]]
    assert len(chunks) == len(events) > 3  # one SDK chunk per event llama.cpp sent
    assert [c.id for c in chunks] == [e["id"] for e in events]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    sent = "".join(e["choices"][0]["delta"].get("content") or "" for e in events if e["choices"])
    assert text and text == sent
    assert chunks[-1].choices[0].finish_reason == events[-1]["choices"][0]["finish_reason"]
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")


def test_completions(sdk: OpenAI, proxy: RecordingProxy) -> None:
    mark = proxy.mark()
    raw = sdk.completions.with_raw_response.create(model="smollm2", prompt="The sky is", **STEADY)
    relayed = raw.parse()
    exchange = the_exchange(proxy, mark, "/v1/completions")
    assert json.loads(exchange.request_body)["prompt"] == "The sky is"
    assert raw.http_response.content == exchange.body
    upstream = json.loads(exchange.body)
    assert relayed.choices[0].text and relayed.choices[0].text == upstream["choices"][0]["text"]


def test_the_upstream_can_be_named_explicitly(sdk: OpenAI, proxy: RecordingProxy) -> None:
    mark = proxy.mark()
    answer = sdk.chat.completions.create(model="llama/smollm2", messages=QUESTION, max_tokens=4)
    exchange = the_exchange(proxy, mark, "/v1/chat/completions")
    # `llama/` chose the upstream; llama.cpp was asked for the model by its own id.
    assert json.loads(exchange.request_body)["model"] == "smollm2"
    assert answer.choices[0].message.content == json.loads(exchange.body)["choices"][0]["message"]["content"]


def test_the_sse_stream_keeps_the_upstreams_headers_and_ends_with_done(llm_gateway: Gateway,
                                                                        proxy: RecordingProxy) -> None:
    body = {"model": "smollm2", "messages": QUESTION, "stream": True, **STEADY}
    mark = proxy.mark()
    with httpx.Client(timeout=60) as client:
        with client.stream("POST", f"{llm_gateway.url}/v1/chat/completions", json=body) as response:
            assert response.status_code == 200
            received = b"".join(response.iter_bytes())
    exchange = the_exchange(proxy, mark, "/v1/chat/completions")
    for name in ("content-type", "cache-control"):
        assert response.headers[name] == exchange.headers[name], name
    assert "content-length" not in response.headers
    assert received == exchange.body  # the stream, byte for byte as llama.cpp sent it
    lines = [line for line in received.decode().splitlines() if line]
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
