"""The Ollama double speaks the protocol: httpx sees Ollama's bytes, the openai SDK parses them."""

from __future__ import annotations

import errno
import json
import queue
import socket
import threading

import httpx
import numpy as np
import openai
import pytest

from doubles.ollama_server import OllamaDouble, embedding_model, tokenize


@pytest.fixture()
def ollama():
    with OllamaDouble() as server:
        yield server


def sse_events(raw: bytes) -> list[str]:
    text = raw.decode()
    assert text.endswith("\n\n")
    return [block.removeprefix("data: ") for block in text.split("\n\n") if block]


def test_native_inventory_and_health(ollama):
    with httpx.Client(base_url=ollama.url) as client:
        root = client.get("/")
        assert (root.status_code, root.text, root.headers["content-type"]) == (200, "Ollama is running",
                                                                            "text/plain; charset=utf-8")
        version = client.get("/api/version")
        assert version.content == b'{"version":"0.12.11"}'
        assert version.headers["content-type"] == "application/json; charset=utf-8"
        tags = client.get("/api/tags").json()["models"]
        assert [m["name"] for m in tags] == ["llama3.2:latest", "nomic-embed-text:latest"]
        assert set(tags[0]) == {"name", "model", "modified_at", "size", "digest", "details"}
        assert tags[0]["details"] == {"parent_model": "", "format": "gguf", "family": "llama", "families": ["llama"],
                                      "parameter_size": "3.2B", "quantization_level": "Q4_K_M"}
        show = client.post("/api/show", json={"model": "llama3.2"})
        assert show.json()["capabilities"] == ["completion", "tools"]
        assert show.json()["model_info"]["llama.context_length"] == 131072
        assert client.post("/api/show", json={"model": "nomic-embed-text"}).json()["capabilities"] == ["embedding"]
        missing = client.post("/api/show", json={"model": "qwen9"})
        assert (missing.status_code, missing.content) == (404, b'{"error":"model \'qwen9\' not found"}')
        assert client.post("/api/show", content=b"").json() == {"error": "missing request body"}
        nowhere = client.get("/api/nowhere")
        assert (nowhere.status_code, nowhere.text) == (404, "404 page not found")
        assert client.post("/api/tags").status_code == 405
        # Everything above went over one kept-alive connection.
        assert len({r.peer for r in ollama.requests}) == 1


def test_openai_sdk_reads_models_chat_and_embeddings(ollama):
    client = openai.OpenAI(base_url=ollama.base_url, api_key="ollama", max_retries=0)
    models = client.models.list()
    assert [(m.id, m.owned_by) for m in models.data] == [("llama3.2:latest", "library"),
                                                         ("nomic-embed-text:latest", "library")]

    reply = client.chat.completions.create(model="llama3.2", messages=[{"role": "user", "content": "Hello there, world"}])
    assert reply.choices[0].message.content == "Hello there, world"
    assert reply.choices[0].finish_reason == "stop"
    assert reply.id.startswith("chatcmpl-") and reply.system_fingerprint == "fp_ollama"
    assert reply.model == "llama3.2"
    assert reply.usage.completion_tokens == 3

    stream = client.chat.completions.create(model="llama3.2", messages=[{"role": "user", "content": "one two three"}],
                                            stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    assert [c.choices[0].delta.content for c in chunks if c.choices] == ["one", " two", " three", ""]
    assert [c.choices[0].finish_reason for c in chunks if c.choices] == [None, None, None, "stop"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 3
    assert len({c.id for c in chunks}) == 1

    completion = client.completions.create(model="llama3.2", prompt="say this", max_tokens=1)
    assert (completion.choices[0].text, completion.choices[0].finish_reason) == ("say", "length")

    # The SDK asks for base64 unless told otherwise; both decode to the same float32 vectors.
    embedded = client.embeddings.create(model="nomic-embed-text", input=["alpha", "beta"])
    assert [d.embedding for d in embedded.data] == [ollama.embedding_for("alpha"), ollama.embedding_for("beta")]
    floats = client.embeddings.create(model="nomic-embed-text", input="alpha", encoding_format="float")
    assert floats.data[0].embedding == pytest.approx(ollama.embedding_for("alpha"), abs=1e-7)
    assert np.linalg.norm(floats.data[0].embedding) == pytest.approx(1.0, abs=1e-6)
    assert embedded.usage.prompt_tokens == 2


def test_openai_sdk_raises_on_ollama_errors(ollama):
    client = openai.OpenAI(base_url=ollama.base_url, api_key="ollama", max_retries=0)
    with pytest.raises(openai.NotFoundError) as missing:
        client.chat.completions.create(model="qwen9", messages=[{"role": "user", "content": "hi"}])
    assert missing.value.body == {"message": "model 'qwen9' not found", "type": "api_error", "param": None,
                                  "code": None}
    with pytest.raises(openai.NotFoundError) as missing_embed:
        client.embeddings.create(model="qwen9", input="hi")
    assert missing_embed.value.message.endswith('model "qwen9" not found, try pulling it first')
    with pytest.raises(openai.BadRequestError, match="does not support chat"):
        client.chat.completions.create(model="nomic-embed-text", messages=[{"role": "user", "content": "hi"}])
    ollama.queue_fault("error_500")
    with pytest.raises(openai.InternalServerError, match="llama runner process has terminated"):
        client.chat.completions.create(model="llama3.2", messages=[{"role": "user", "content": "hi"}], stream=True)

    with httpx.Client(base_url=ollama.base_url) as raw:
        malformed = raw.post("/chat/completions", content=b'{"model": "llama3.2", "messages": [')
        assert (malformed.status_code, malformed.json()) == (400, {"error": {
            "message": "unexpected EOF", "type": "invalid_request_error", "param": None, "code": None}})
        empty = raw.post("/chat/completions", json={"model": "llama3.2", "messages": []})
        assert empty.json()["error"]["message"] == "[] is too short - 'messages'"
        no_model = raw.post("/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]})
        assert (no_model.status_code, no_model.content) == (
            400, b'{"error":{"message":"model is required","type":"api_error","param":null,"code":null}}\n')


def test_stream_wire_format(ollama):
    body = {"model": "llama3.2", "stream": True, "messages": [{"role": "user", "content": "a <b>"}]}
    with httpx.Client(base_url=ollama.url) as client, client.stream("POST", "/v1/chat/completions", json=body) as r:
        assert r.headers["content-type"] == "text/event-stream"
        assert r.headers["transfer-encoding"] == "chunked" and "content-length" not in r.headers
        raw = r.read()
    events = sse_events(raw)
    assert events[-1] == "[DONE]"
    first = json.loads(events[0])
    assert first["object"] == "chat.completion.chunk" and first["choices"][0]["delta"] == {"role": "assistant",
                                                                                           "content": "a"}
    assert list(first) == ["id", "object", "created", "model", "system_fingerprint", "choices"]
    assert '"content":" \\u003cb\\u003e"' in events[1]  # Go escapes <, > and &
    assert json.loads(events[2])["choices"][0]["finish_reason"] == "stop"


def test_step_mode_sends_each_chunk_only_when_released():
    with OllamaDouble(step=True) as ollama:
        received: queue.Queue[str | None] = queue.Queue()

        def read() -> None:
            body = {"model": "llama3.2", "stream": True, "messages": [{"role": "user", "content": "one two"}]}
            with httpx.Client(base_url=ollama.base_url) as client, \
                    client.stream("POST", "/chat/completions", json=body) as response:
                for line in response.iter_lines():
                    if line:
                        received.put(line)
            received.put(None)

        reader = threading.Thread(target=read)
        reader.start()
        assert json.loads(received.get(timeout=5)[6:])["choices"][0]["delta"]["content"] == "one"
        with pytest.raises(queue.Empty):
            received.get(timeout=0.2)
        assert ollama.chunks_sent == 1
        ollama.release_next_chunk()
        assert json.loads(received.get(timeout=5)[6:])["choices"][0]["delta"]["content"] == " two"
        with pytest.raises(queue.Empty):
            received.get(timeout=0.2)
        ollama.release_next_chunk()  # the final chunk and [DONE] go out together
        final, done = received.get(timeout=5), received.get(timeout=5)
        assert json.loads(final[6:])["choices"][0]["finish_reason"] == "stop" and done == "data: [DONE]"
        assert received.get(timeout=5) is None
        reader.join(5)
        request = ollama.requests[-1]
        assert request.done.wait(5)
        assert (request.outcome, request.chunks_sent) == ("complete", 3)


def test_faults_and_client_going_away():
    with OllamaDouble(max_hang_s=5) as ollama, httpx.Client(base_url=ollama.base_url) as client:
        body = {"model": "llama3.2", "stream": True, "messages": [{"role": "user", "content": "one two three"}]}

        ollama.queue_fault("drop")  # cut after the first chunk
        with pytest.raises(httpx.RemoteProtocolError), client.stream("POST", "/chat/completions", json=body) as r:
            lines = [line for line in r.iter_lines() if line]
        assert ollama.requests[-1].outcome == "dropped" and ollama.requests[-1].chunks_sent == 1

        ollama.queue_fault("error_midstream")  # one nameless empty chunk, then the body ends: no [DONE]
        with client.stream("POST", "/chat/completions", json=body) as r:
            lines = [line for line in r.iter_lines() if line]
        assert len(lines) == 2 and json.loads(lines[1][6:])["model"] == ""
        assert json.loads(lines[1][6:])["choices"][0] == {"index": 0, "delta": {"role": "assistant", "content": ""},
                                                          "finish_reason": None}

        ollama.queue_fault("hang")
        with pytest.raises(httpx.ReadTimeout):
            client.post("/chat/completions", json=body, timeout=0.3)
        hung = ollama.requests[-1]
        # It hangs until the client leaves, and notices that it left.
        assert hung.done.wait(15) and hung.outcome == "client_gone"

        ollama.queue_fault("not_found")
        gone = client.post("/embeddings", json={"model": "nomic-embed-text", "input": "x"})
        assert (gone.status_code, gone.json()["error"]["message"]) == (
            404, 'model "nomic-embed-text" not found, try pulling it first')

        ollama.queue_fault("drop")  # non-streaming: the connection closes with no response
        with pytest.raises(httpx.RemoteProtocolError):
            client.post("/completions", json={"model": "llama3.2", "prompt": "hi"})
        ok = client.post("/completions", json={"model": "llama3.2", "prompt": "hi"})
        assert ok.json()["choices"][0]["text"] == "hi"


def test_slow_version_stop_restart_and_chunked_request_body():
    with OllamaDouble(version_delay_s=60.0) as ollama:  # far past the client's timeout below
        port = ollama.port
        with pytest.raises(httpx.ReadTimeout):
            httpx.get(ollama.url + "/api/version", timeout=0.2)
        ollama.version_delay_s = 0
        assert httpx.get(ollama.url + "/api/version").json() == {"version": "0.12.11"}

        ollama.stop()
        with pytest.raises(httpx.ConnectError):
            httpx.get(ollama.url + "/api/version")
        # Down, the port is still held: nobody else can take it before the restart below.
        with socket.socket() as other, pytest.raises(OSError) as taken:
            other.bind(("127.0.0.1", port))
        assert taken.value.errno == errno.EADDRINUSE
        ollama.start()
        assert ollama.port == port
        assert httpx.get(ollama.url + "/api/version").status_code == 200

        def body():
            yield b'{"model": "llama3.2", '
            yield b'"prompt": "streamed body"}'

        reply = httpx.post(ollama.base_url + "/completions", content=body())
        assert ollama.requests[-1].headers["transfer-encoding"] == "chunked"
        assert reply.json()["choices"][0]["text"] == "streamed body"


def test_pacing_and_custom_models():
    models = [embedding_model("all-minilm:22m"), "qwen3:0.6b"]
    with OllamaDouble(models=models, chunk_interval_s=0.05, reply="a b c d") as ollama:
        assert [m["id"] for m in httpx.get(ollama.base_url + "/models").json()["data"]] == [
            "qwen3:0.6b", "all-minilm:22m"]
        body = {"model": "qwen3:0.6b", "stream": True, "messages": [{"role": "user", "content": "x"}]}
        with httpx.stream("POST", ollama.base_url + "/chat/completions", json=body) as r:
            events = [line for line in r.iter_lines() if line]
        assert len(events) == len(tokenize("a b c d")) + 2
        # The double's own record of when it sent them (a client reading late would see them bunched):
        # at least three 0.05 s pauses between its first chunk and its last.
        sent = ollama.requests[-1]
        assert sent.done.wait(15) and sent.outcome == "complete"
        assert sent.finished_at - sent.first_chunk_at >= 0.15
