"""What the relay does with requests an upstream would refuse, against the real llama.cpp server on
SmolLM2-135M (and the Ollama double where Ollama's own behaviour is the point).

Between the gateway and llama.cpp sits the recording proxy (tests/doubles/recording_proxy.py), so
a test sees the bytes llama.cpp was sent for the very request it made, and llama.cpp's own answer to it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator

import httpx
import pytest

from aistack.engines.upstream_errors import MAX_ERROR_BODY
from aistack.settings import EmbeddingSettings, LlmSettings, OllamaSettings, OpenAIUpstreamSettings
from conftest import assert_envelope, wait_until
from doubles.ollama_server import OllamaDouble
from doubles.recording_proxy import Exchange, RecordingProxy
from llm_fixtures import LlamaServer, llama_server  # noqa: F401 - the fixture

pytestmark = pytest.mark.slow

ROUTES = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings")
HI = [{"role": "user", "content": "hi"}]
# What a server path in a message looks like: `/usr/lib/python3/...`, `.../site-packages/...`, `app.py", line 264`.
SERVER_PATH = re.compile(r"(?<![\w:])/(?:usr|home|opt|root|work|tmp|var|srv)/|site-packages|\.py\b|File \"")


def the_exchange(proxy: RecordingProxy, mark: int, path: str) -> Exchange:
    """The one request to `path` llama.cpp was sent since `mark`, with its whole answer."""
    (exchange,) = proxy.new_exchanges(mark, path)
    assert exchange.complete.wait(30), "the proxy never saw the end of llama.cpp's answer"
    return exchange


@pytest.fixture(scope="module")
def proxy(llama_server: LlamaServer) -> Iterator[RecordingProxy]:  # noqa: F811
    with RecordingProxy(llama_server.base_url.removesuffix("/v1")) as running:
        yield running


@pytest.fixture
def ollama() -> Iterator[OllamaDouble]:
    with OllamaDouble() as server:
        yield server


# Without the in-process all-MiniLM-L6-v2 (on by default): these tests are about the upstreams' embeddings.
NO_LOCAL_EMBEDDINGS = EmbeddingSettings(enabled=False)


def llama_only(make_inprocess_gateway, proxy: RecordingProxy):
    llm = LlmSettings(upstreams=[OpenAIUpstreamSettings(name="llama", base_url=f"{proxy.url}/v1")],
                      ollama=OllamaSettings(enabled=False))
    return make_inprocess_gateway(llm=llm, embeddings=NO_LOCAL_EMBEDDINGS)


def llama_and_ollama(make_inprocess_gateway, proxy: RecordingProxy, ollama: OllamaDouble):
    llm = LlmSettings(upstreams=[OpenAIUpstreamSettings(name="llama", base_url=f"{proxy.url}/v1")],
                      ollama=OllamaSettings(base_url=ollama.url))
    return make_inprocess_gateway(llm=llm, embeddings=NO_LOCAL_EMBEDDINGS)


def assert_still_serving(client: httpx.Client) -> None:
    answer = client.post("/v1/chat/completions", json={"model": "smollm2", "messages": HI, "max_tokens": 2})
    assert answer.status_code == 200, answer.text
    assert answer.json()["choices"][0]["message"]["role"] == "assistant"


# -- the developer role ---------------------------------------------------------------------------


def test_a_developer_message_reaches_llama_cpp_as_system(make_inprocess_gateway, proxy: RecordingProxy,
                                                         llama_server: LlamaServer) -> None:  # noqa: F811
    messages = [{"role": "developer", "content": "Be brief."}, {"role": "user", "content": "hi"}]
    body = {"model": "smollm2", "messages": messages, "max_tokens": 8, "temperature": 0}
    # llama-cpp-python itself refuses the role: what the gateway has to work around.
    direct = httpx.post(f"{llama_server.base_url}/chat/completions", json=body, timeout=60)
    assert direct.status_code == 500 and "Input should be 'system'" in direct.text

    gateway = llama_only(make_inprocess_gateway, proxy)
    with gateway.client() as client:
        mark = proxy.mark()
        response = client.post("/v1/chat/completions", json=body)
        assert response.status_code == 200, response.text
        answer = response.json()
        assert answer["choices"][0]["message"]["role"] == "assistant"
        assert isinstance(answer["choices"][0]["message"]["content"], str)
        assert answer["choices"][0]["finish_reason"] in ("stop", "length")
        sent = the_exchange(proxy, mark, "/v1/chat/completions")
        upstream_saw = json.loads(sent.request_body)
        assert upstream_saw["messages"] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]
        assert {k: v for k, v in upstream_saw.items() if k != "messages"} == {k: v for k, v in body.items() if k != "messages"}
        # What the client got is what llama.cpp answered to that request.
        assert sent.status == 200 and json.loads(sent.body) == answer

        # Without a developer message the body goes out as the very bytes the client sent.
        plain = json.dumps({"model": "smollm2", "messages": [{"role": "system", "content": "Be brief."}, *HI],
                            "max_tokens": 2}, separators=(",", ":")).encode()
        mark = proxy.mark()
        assert client.post("/v1/chat/completions", content=plain,
                           headers={"content-type": "application/json"}).status_code == 200
        assert the_exchange(proxy, mark, "/v1/chat/completions").request_body == plain


def test_a_developer_message_reaches_ollama_as_system(make_inprocess_gateway, ollama: OllamaDouble) -> None:
    gateway = make_inprocess_gateway(llm=LlmSettings(ollama=OllamaSettings(base_url=ollama.url)))
    messages = [{"role": "developer", "content": "Be brief."}, {"role": "user", "content": "one two"}]
    with gateway.client() as client:
        response = client.post("/v1/chat/completions", json={"model": "llama3.2", "messages": messages})
        assert response.status_code == 200, response.text
    (sent,) = ollama.requests_to("/v1/chat/completions")
    assert sent.json["messages"] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "one two"}]


# -- validation answers ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("route", "body", "param", "needle"),
    [
        ("/v1/completions", {"model": "smollm2", "prompt": None}, "prompt", "Input should be a valid string"),
        ("/v1/completions", {"model": "smollm2", "prompt": "x", "max_tokens": -5}, "max_tokens",
         "Input should be greater than or equal to 0"),
        ("/v1/chat/completions", {"model": "smollm2", "messages": HI, "temperature": "hot"}, "temperature",
         "Input should be a valid number"),
        ("/v1/embeddings", {"model": "smollm2", "input": None}, "input", "Input should be a valid string"),
    ],
    ids=["prompt-null", "max-tokens-negative", "temperature-a-word", "input-null"],
)
def test_llama_cpps_validation_500_is_a_400_in_its_own_words_without_server_paths(
        make_inprocess_gateway, proxy: RecordingProxy, route: str, body: dict, param: str, needle: str) -> None:
    gateway = llama_only(make_inprocess_gateway, proxy)
    with gateway.client() as client:
        mark = proxy.mark()
        response = client.post(route, json=body)
        error = assert_envelope(response, 400, "malformed", param, needle, f"{param}:", provider="llama")
        assert not SERVER_PATH.search(error["message"]), error["message"]
        # llama.cpp said so as a 500 whose message carries its own file path.
        upstream = the_exchange(proxy, mark, route)
        assert upstream.status == 500 and json.loads(upstream.request_body) == body
        assert SERVER_PATH.search(json.loads(upstream.body)["error"]["message"])
        assert_still_serving(client)


def test_a_validation_500_longer_than_the_relay_reads_is_still_a_400(make_inprocess_gateway, proxy: RecordingProxy) -> None:
    # Per message, llama.cpp names a problem with each member of its message union: far past 64 KiB in all
    # (more than one read of the socket, whose size the cut would otherwise depend on).
    messages = [{"role": f"coral{index}", "content": "x"} for index in range(400)]
    gateway = llama_only(make_inprocess_gateway, proxy)
    with gateway.client() as client:
        mark = proxy.mark()
        response = client.post("/v1/chat/completions", json={"model": "smollm2", "messages": messages, "max_tokens": 2})
        assert_envelope(response, 400, "malformed", "messages", "messages[0].role: Input should be 'system'",
                        '(got "coral0")', provider="llama")
        upstream = the_exchange(proxy, mark, "/v1/chat/completions")
        # The relay read its MAX_ERROR_BODY through the proxy and stopped there; how much more the proxy
        # passed on before the relay let go depends on socket buffers.
        assert upstream.status == 500 and len(upstream.body) >= MAX_ERROR_BODY
        assert_still_serving(client)


def test_a_real_upstream_fault_stays_a_5xx(make_inprocess_gateway, ollama: OllamaDouble) -> None:
    gateway = make_inprocess_gateway(llm=LlmSettings(ollama=OllamaSettings(base_url=ollama.url)))
    ollama.queue_fault("error_500")
    with gateway.client() as client:
        response = client.post("/v1/chat/completions", json={"model": "llama3.2", "messages": HI})
        assert_envelope(response, 500, "unknown", None, "llama runner process has terminated", provider="ollama")


# -- what a model does ----------------------------------------------------------------------------


def test_embeddings_from_a_chat_model_is_400_naming_the_models_that_embed(make_inprocess_gateway, proxy: RecordingProxy,
                                                                          ollama: OllamaDouble) -> None:
    gateway = llama_and_ollama(make_inprocess_gateway, proxy, ollama)
    with gateway.client() as client:
        assert wait_until(lambda: {"smollm2", "nomic-embed-text:latest"}
                          <= {m["id"] for m in client.get("/v1/models").json()["data"]}, 10)
        mark = proxy.mark()
        response = client.post("/v1/embeddings", json={"model": "smollm2", "input": "hi"})
        error = assert_envelope(response, 400, "malformed", "model", "'smollm2' does not make embeddings",
                                "models here that do: nomic-embed-text:latest", provider="llama")
        assert "embedding=True" in error["message"]  # llama.cpp's own words for it
        assert the_exchange(proxy, mark, "/v1/embeddings").status == 500
        assert_still_serving(client)


def test_embeddings_with_no_model_that_embeds_says_how_to_get_one(make_inprocess_gateway, proxy: RecordingProxy) -> None:
    gateway = llama_only(make_inprocess_gateway, proxy)
    with gateway.client() as client:
        response = client.post("/v1/embeddings", json={"model": "smollm2", "input": "hi"})
        assert_envelope(response, 400, "malformed", "model", "'smollm2' does not make embeddings",
                        "no model here does", "AISTACK_LLM__UPSTREAMS", provider="llama")
        assert_still_serving(client)


@pytest.mark.parametrize("route", ["/v1/chat/completions", "/v1/completions"])
def test_generating_with_an_embedding_model_is_400_naming_the_models_that_generate(
        make_inprocess_gateway, proxy: RecordingProxy, ollama: OllamaDouble, route: str) -> None:
    gateway = llama_and_ollama(make_inprocess_gateway, proxy, ollama)
    body = {"model": "nomic-embed-text", "messages": HI, "prompt": "hi"}
    with gateway.client() as client:
        assert wait_until(lambda: "nomic-embed-text:latest" in {m["id"] for m in client.get("/v1/models").json()["data"]}, 10)
        response = client.post(route, json=body)
        error = assert_envelope(response, 400, "malformed", "model", "'nomic-embed-text' makes embeddings only",
                                "/v1/embeddings")
        assert "smollm2" in error["message"] and "llama3.2:latest" in error["message"]
        assert ollama.requests_to(route) == []  # refused from the listing, not sent
        assert_still_serving(client)


# -- bodies the relay cannot parse ----------------------------------------------------------------


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("depth", [1_000, 100_000])
def test_json_nested_too_deeply_is_400(make_inprocess_gateway, proxy: RecordingProxy, route: str, depth: int) -> None:
    gateway = llama_only(make_inprocess_gateway, proxy)
    deep = b'{"model": "smollm2", "messages": ' + b"[" * depth + b"]" * depth + b', "prompt": "x", "input": "x"}'
    with gateway.client() as client:
        mark = proxy.mark()
        response = client.post(route, content=deep, headers={"content-type": "application/json"})
        assert_envelope(response, 400, "malformed", None, "too deeply")
        assert proxy.new_exchanges(mark, route) == []  # nothing relayed
        assert_still_serving(client)
