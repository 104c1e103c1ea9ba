"""The LLM relay in front of Ollama, played by a loopback server speaking Ollama's protocol
(tests/doubles/ollama_server.py; no Ollama binary can be installed here, DESIGN §6)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import openai
import pytest

from aistack.settings import EmbeddedLlmSettings, LlmSettings, OllamaSettings, OpenAIUpstreamSettings
from conftest import assert_envelope, wait_until
from doubles.ollama_server import OllamaDouble

MESSAGES = [{"role": "user", "content": "one two three four"}]


@pytest.fixture
def ollama() -> Iterator[OllamaDouble]:
    with OllamaDouble() as server:
        yield server


def gateway_for(make_inprocess_gateway, ollama: OllamaDouble, **llm):
    settings = LlmSettings(ollama=OllamaSettings(base_url=ollama.url), **llm)
    return make_inprocess_gateway(llm=settings, inventory_ttl_s=0.2)


def sdk_for(gateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="unused", max_retries=0, timeout=30)


def sse_data(raw: bytes) -> list[str]:
    return [block.removeprefix("data: ") for block in raw.decode().split("\n\n") if block.strip()]


# -- inventory -----------------------------------------------------------------------------------


def test_ollamas_models_are_listed_with_their_capabilities_while_it_answers(make_inprocess_gateway, ollama) -> None:
    gateway = gateway_for(make_inprocess_gateway, ollama)
    with gateway.client() as client:
        models = {m["id"]: m for m in client.get("/v1/models").json()["data"]}
        assert models["llama3.2:latest"]["capabilities"] == ["llm"]
        assert models["nomic-embed-text:latest"]["capabilities"] == ["embeddings"]
        assert models["llama3.2:latest"]["owned_by"] == "ollama" and models["llama3.2:latest"]["supports_streaming"]
        assert "languages" not in models["llama3.2:latest"]

        ollama.version_delay_s = 2.0  # slower than the probe timeout: not "answering"
        # Gone from the listing once a refresh finds it slow (the TTL is 0.2 s; this only waits for it).
        assert wait_until(lambda: "llama3.2:latest" not in [m["id"] for m in client.get("/v1/models").json()["data"]], 15)
        ready = client.get("/ready").json()["engines"]["ollama"]
        assert ready["state"] == "unavailable" and "ollama serve" in ready["unavailable"][0]["fix"]

        ollama.version_delay_s = 0
        assert wait_until(lambda: "llama3.2:latest" in [m["id"] for m in client.get("/v1/models").json()["data"]], 10)
    shows = [r.json["model"] for r in ollama.requests_to("/api/show")]
    assert sorted(shows) == ["llama3.2:latest", "nomic-embed-text:latest"]  # asked once per model, then remembered


# -- relaying ------------------------------------------------------------------------------------


def test_chat_with_the_sdk_and_fields_that_pass_through_untouched(make_inprocess_gateway, ollama) -> None:
    gateway = gateway_for(make_inprocess_gateway, ollama)
    sdk = sdk_for(gateway)
    answer = sdk.chat.completions.create(
        model="llama3.2", messages=MESSAGES, extra_body={"keep_alive": "10m", "options": {"num_ctx": 4096}}
    )
    assert answer.choices[0].message.content == "one two three four"
    assert answer.system_fingerprint == "fp_ollama"
    (sent,) = ollama.requests_to("/v1/chat/completions")
    assert sent.json["model"] == "llama3.2"  # Ollama resolves the untagged name itself
    assert sent.json["keep_alive"] == "10m" and sent.json["options"] == {"num_ctx": 4096}


def test_streamed_chat_relays_ollamas_chunks_as_they_are(make_inprocess_gateway, ollama) -> None:
    gateway = gateway_for(make_inprocess_gateway, ollama)
    chunks = list(sdk_for(gateway).chat.completions.create(model="llama3.2:latest", messages=MESSAGES, stream=True,
                                                           stream_options={"include_usage": True}))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "one two three four"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
    body = {"model": "llama3.2:latest", "messages": MESSAGES, "stream": True}
    with gateway.client() as client:
        relayed = client.post("/v1/chat/completions", json=body)
    with httpx.Client(base_url=ollama.url) as client:
        straight = client.post("/v1/chat/completions", json=body)
    assert relayed.headers["content-type"] == straight.headers["content-type"] == "text/event-stream"
    drop_ids = [json.loads(e) | {"id": "", "created": 0} for e in sse_data(relayed.content)[:-1]]
    straight_ids = [json.loads(e) | {"id": "", "created": 0} for e in sse_data(straight.content)[:-1]]
    assert drop_ids == straight_ids and sse_data(relayed.content)[-1] == "[DONE]"


def test_each_chunk_reaches_the_client_before_the_next_is_sent(make_inprocess_gateway, ollama) -> None:
    ollama.step = True  # after the first, each chunk waits for release_next_chunk()
    gateway = gateway_for(make_inprocess_gateway, ollama)
    body = {"model": "llama3.2:latest", "messages": MESSAGES, "stream": True}
    seen: list[str] = []
    with gateway.client() as client, client.stream("POST", "/v1/chat/completions", json=body) as response:
        events = response.iter_lines()
        for expected in ("one", " two", " three", " four"):
            line = next(line for line in events if line)
            seen.append(json.loads(line.removeprefix("data: "))["choices"][0]["delta"]["content"])
            assert seen[-1] == expected
            # The upstream is held until it is released, so the gateway cannot have waited for more.
            assert ollama.chunks_sent <= len(seen)
            ollama.release_next_chunk()
        rest = [line for line in events if line]
    assert rest[-1] == "data: [DONE]"


def test_completions_and_embeddings(make_inprocess_gateway, ollama) -> None:
    gateway = gateway_for(make_inprocess_gateway, ollama)
    sdk = sdk_for(gateway)
    completion = sdk.completions.create(model="llama3.2:latest", prompt="red green blue")
    assert completion.choices[0].text == "red green blue"
    embedded = sdk.embeddings.create(model="nomic-embed-text", input=["first text", "second text"])
    for item, text in zip(embedded.data, ["first text", "second text"], strict=True):
        assert item.embedding == pytest.approx(list(ollama.embedding_for(text)), abs=1e-6)


def test_connections_to_the_upstream_are_pooled(make_inprocess_gateway, ollama) -> None:
    gateway = gateway_for(make_inprocess_gateway, ollama)
    sdk = sdk_for(gateway)
    for _ in range(4):
        sdk.chat.completions.create(model="llama3.2:latest", messages=MESSAGES)
    peers = {r.peer for r in ollama.requests_to("/v1/chat/completions")}
    assert len(peers) == 1


def test_the_same_id_on_two_upstreams_goes_by_priority_and_can_be_named(make_inprocess_gateway, ollama) -> None:
    with OllamaDouble(reply="from the other one") as other:
        upstream = OpenAIUpstreamSettings(name="other", base_url=other.base_url)
        gateway = gateway_for(make_inprocess_gateway, ollama, upstreams=[upstream])
        sdk = sdk_for(gateway)
        with gateway.client() as client:
            owners = {m["id"]: m["owned_by"] for m in client.get("/v1/models").json()["data"]}
        assert owners["llama3.2:latest"] == "ollama" and owners["other/llama3.2:latest"] == "other"
        assert sdk.chat.completions.create(model="llama3.2:latest", messages=MESSAGES).choices[0].message.content == "one two three four"
        named = sdk.chat.completions.create(model="other/llama3.2:latest", messages=MESSAGES)
        assert named.choices[0].message.content == "from the other one"
        assert other.requests_to("/v1/chat/completions")[-1].json["model"] == "llama3.2:latest"

        preferring = gateway_for(make_inprocess_gateway, ollama, upstreams=[upstream], priority=["other"])
        answer = sdk_for(preferring).chat.completions.create(model="llama3.2:latest", messages=MESSAGES)
        assert answer.choices[0].message.content == "from the other one"


def test_a_busy_openai_compatible_server_keeps_its_models_listed(make_inprocess_gateway, ollama) -> None:
    """llama-cpp-python answers its model list only between generations; slow to list is busy, not gone."""
    with OllamaDouble(reply="busy but here") as busy:
        upstream = OpenAIUpstreamSettings(name="busy", base_url=busy.base_url)
        gateway = gateway_for(make_inprocess_gateway, ollama, upstreams=[upstream])
        with gateway.client() as client:
            assert "busy/llama3.2:latest" in [m["id"] for m in client.get("/v1/models").json()["data"]]
            seen = len(busy.requests_to("/v1/models"))
            busy.models_delay_s = 3.0  # far past the probe timeout

            def gave_up_on_a_slow_listing() -> bool:
                client.get("/v1/models")  # a refresh once the TTL is past
                return any(r.outcome == "client_gone" for r in busy.requests_to("/v1/models")[seen:])

            # A probe of the busy server has timed out (the gateway hung up on it): still listed.
            assert wait_until(gave_up_on_a_slow_listing, 15)
            assert "busy/llama3.2:latest" in [m["id"] for m in client.get("/v1/models").json()["data"]]
            answer = client.post("/v1/chat/completions", json={"model": "busy/llama3.2:latest", "messages": MESSAGES})
            assert answer.status_code == 200 and answer.json()["choices"][0]["message"]["content"] == "busy but here"
            busy.stop()  # refused: gone at once
            assert wait_until(lambda: "busy/llama3.2:latest" not in [m["id"] for m in client.get("/v1/models").json()["data"]], 5)


# -- what goes wrong -----------------------------------------------------------------------------


def test_a_model_that_is_not_pulled_is_404_naming_ollama_pull(make_inprocess_gateway, ollama) -> None:
    gateway = gateway_for(make_inprocess_gateway, ollama)
    with gateway.client() as client:
        unknown = client.post("/v1/chat/completions", json={"model": "mistral", "messages": MESSAGES})
        assert_envelope(unknown, 404, "not_found", "model", "ollama pull mistral", "llama3.2:latest")
        ollama.queue_fault("not_found")  # listed, but gone by the time Ollama is asked
        gone = client.post("/v1/chat/completions", json={"model": "llama3.2:latest", "messages": MESSAGES})
    assert_envelope(gone, 404, "not_found", "model", "ollama pull llama3.2:latest", provider="ollama")


def test_ollama_not_running_is_503_saying_how_to_start_it(make_inprocess_gateway, ollama) -> None:
    gateway = gateway_for(make_inprocess_gateway, ollama)
    ollama.stop()
    with gateway.client() as client:
        response = client.post("/v1/chat/completions", json={"model": "llama3.2:latest", "messages": MESSAGES})
        assert_envelope(response, 503, "network", None, "ollama serve", provider="ollama")
        assert client.get("/health").status_code == 200
        ollama.start()
        assert wait_until(lambda: client.post("/v1/chat/completions", json={"model": "llama3.2:latest",
                                                                             "messages": MESSAGES}).status_code == 200, 10)


def test_ollama_refusing_after_it_was_listed_is_503(make_inprocess_gateway, ollama) -> None:
    gateway = gateway_for(make_inprocess_gateway, ollama)
    with gateway.client() as client:
        assert client.get("/v1/models").status_code == 200  # listed now
        ollama.stop()
        response = client.post("/v1/chat/completions", json={"model": "llama3.2:latest", "messages": MESSAGES})
    assert_envelope(response, 503, "network", None, "ollama serve", provider="ollama")


def test_an_upstream_500_is_the_envelope_with_its_words(make_inprocess_gateway, ollama) -> None:
    gateway = gateway_for(make_inprocess_gateway, ollama)
    ollama.queue_fault("error_500")
    with gateway.client() as client:
        response = client.post("/v1/chat/completions", json={"model": "llama3.2:latest", "messages": MESSAGES})
        assert_envelope(response, 500, "unknown", None, "llama runner process has terminated", provider="ollama")
        assert client.post("/v1/chat/completions", json={"model": "llama3.2:latest", "messages": MESSAGES}).status_code == 200


def test_an_upstream_that_hangs_past_the_read_timeout_is_504(make_inprocess_gateway, ollama) -> None:
    gateway = gateway_for(make_inprocess_gateway, ollama, read_timeout_s=1.0)
    ollama.queue_fault("hang")
    # The client would wait far longer than the gateway's 1 s read timeout: the 504 is the gateway's.
    with gateway.client(timeout=60) as client:
        response = client.post("/v1/chat/completions", json={"model": "llama3.2:latest", "messages": MESSAGES})
        assert_envelope(response, 504, "timeout", None, "AISTACK_LLM__READ_TIMEOUT_S", provider="ollama")
        assert client.post("/v1/chat/completions", json={"model": "llama3.2:latest", "messages": MESSAGES}).status_code == 200


def test_a_stream_that_stalls_ends_with_one_timeout_event(make_inprocess_gateway, ollama) -> None:
    gateway = gateway_for(make_inprocess_gateway, ollama, read_timeout_s=1.0)
    ollama.drop_after_chunks = 2
    ollama.queue_fault("stall")
    with gateway.client() as client:
        response = client.post("/v1/chat/completions", json={"model": "llama3.2:latest", "messages": MESSAGES, "stream": True})
    events = sse_data(response.content)
    assert len(events) == 3 and "[DONE]" not in events
    error = json.loads(events[-1])["error"]
    assert error["kind"] == "timeout" and error["provider"] == "ollama"


def test_a_stream_dropped_midway_ends_with_one_error_event_and_the_sdk_raises(make_inprocess_gateway, ollama) -> None:
    gateway = gateway_for(make_inprocess_gateway, ollama)
    ollama.drop_after_chunks = 2
    ollama.queue_fault("drop")
    with gateway.client() as client:
        response = client.post("/v1/chat/completions", json={"model": "llama3.2:latest", "messages": MESSAGES, "stream": True})
    events = sse_data(response.content)
    assert [json.loads(e)["choices"][0]["delta"]["content"] for e in events[:2]] == ["one", " two"]
    (error_event,) = events[2:]
    assert json.loads(error_event)["error"]["kind"] == "unknown" and "middle of its answer" in error_event

    ollama.queue_fault("drop")
    with pytest.raises(openai.APIError, match="middle of its answer"):
        list(sdk_for(gateway).chat.completions.create(model="llama3.2:latest", messages=MESSAGES, stream=True))
    answer = sdk_for(gateway).chat.completions.create(model="llama3.2:latest", messages=MESSAGES)
    assert answer.choices[0].message.content == "one two three four"


def test_a_plain_answer_dropped_before_it_starts_is_the_envelope(make_inprocess_gateway, ollama) -> None:
    gateway = gateway_for(make_inprocess_gateway, ollama)
    ollama.queue_fault("drop")
    with gateway.client() as client:
        response = client.post("/v1/chat/completions", json={"model": "llama3.2:latest", "messages": MESSAGES})
    assert_envelope(response, 500, "unknown", None, "dropped the connection", provider="ollama")


def test_a_client_that_leaves_closes_the_upstream_request(make_inprocess_gateway, ollama) -> None:
    ollama.step = True
    gateway = gateway_for(make_inprocess_gateway, ollama)
    body = {"model": "llama3.2:latest", "messages": MESSAGES, "stream": True}
    with gateway.client() as client, client.stream("POST", "/v1/chat/completions", json=body) as response:
        assert next(line for line in response.iter_lines() if line).startswith("data: ")
    (request,) = ollama.requests_to("/v1/chat/completions")
    # Still in step mode, Ollama sends nothing more until released: its request can only end
    # because the gateway, hearing the client leave, closed it.
    try:
        assert request.done.wait(10)
        assert request.outcome == "client_gone"
    finally:
        ollama.release_all()


def test_a_model_whose_server_is_down_is_503_even_while_another_server_is_up(make_inprocess_gateway, ollama) -> None:
    with OllamaDouble(models=["qwen2:0.5b"]) as other:
        upstream = OpenAIUpstreamSettings(name="other", base_url=other.base_url)
        gateway = gateway_for(make_inprocess_gateway, ollama, upstreams=[upstream])
        with gateway.client() as client:
            assert "llama3.2:latest" in [m["id"] for m in client.get("/v1/models").json()["data"]]
            ollama.stop()
            assert wait_until(lambda: "llama3.2:latest" not in [m["id"] for m in client.get("/v1/models").json()["data"]], 5)
            response = client.post("/v1/chat/completions", json={"model": "llama3.2", "messages": MESSAGES})
            assert_envelope(response, 503, "network", None, "ollama serve", provider="ollama")
            unknown = client.post("/v1/chat/completions", json={"model": "mistral", "messages": MESSAGES})
            assert_envelope(unknown, 404, "not_found", "model", "qwen2:0.5b", "ollama not reachable now")


def test_a_stream_ollama_ends_without_finishing_gets_one_error_event(make_inprocess_gateway, ollama) -> None:
    gateway = gateway_for(make_inprocess_gateway, ollama)
    ollama.drop_after_chunks = 2
    ollama.queue_fault("error_midstream")  # what Ollama sends when its runner dies: no [DONE]
    with gateway.client() as client:
        response = client.post("/v1/chat/completions", json={"model": "llama3.2:latest", "messages": MESSAGES, "stream": True})
        assert len(response.headers.get_list("x-request-id")) == 1  # the gateway's own
    events = sse_data(response.content)
    assert "[DONE]" not in events
    error = json.loads(events[-1])["error"]
    assert error["kind"] == "unknown" and error["provider"] == "ollama" and "without finishing" in error["message"]
    ollama.queue_fault("error_midstream")
    with pytest.raises(openai.APIError, match="without finishing"):
        list(sdk_for(gateway).chat.completions.create(model="llama3.2:latest", messages=MESSAGES, stream=True))


def test_a_client_that_leaves_while_sending_its_request_is_a_499_not_an_error(make_inprocess_gateway, ollama, caplog) -> None:
    import socket
    from urllib.parse import urlsplit

    gateway = gateway_for(make_inprocess_gateway, ollama)
    address = urlsplit(gateway.url)
    caplog.set_level("INFO", logger="aistack")
    with socket.create_connection((address.hostname, address.port)) as raw:
        raw.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                    b"Content-Length: 1000\r\n\r\n{\"model\": \"llama3.2")
        # Leave once the gateway has the request's head and is reading its body.
        assert wait_until(lambda: len(gateway.server.server_state.tasks) == 1, 10)
    assert wait_until(lambda: any("POST /v1/chat/completions 499" in r.getMessage() for r in caplog.records), 5)
    assert not [r for r in caplog.records if r.levelname == "ERROR"]
    with gateway.client() as client:
        assert client.post("/v1/chat/completions", json={"model": "llama3.2:latest", "messages": MESSAGES}).status_code == 200


def test_no_llm_server_at_all_is_503_saying_how_to_start_one(make_inprocess_gateway, ollama) -> None:
    ollama.stop()
    # Without the packaged SmolLM2 (on by default), Ollama is the only LLM server configured.
    gateway = gateway_for(make_inprocess_gateway, ollama, embedded=EmbeddedLlmSettings(packaged_default=False))
    with gateway.client() as client:
        assert not [m for m in client.get("/v1/models").json()["data"] if "llm" in m["capabilities"]]
        response = client.post("/v1/chat/completions", json={"model": "llama3.2", "messages": MESSAGES})
    assert_envelope(response, 503, "network", None, "ollama serve", provider="ollama")
