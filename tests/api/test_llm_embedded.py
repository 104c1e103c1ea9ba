"""The embedded LLM: `aistack serve` with a GGUF file starts llama.cpp's server, serves through it,
restarts it when it dies and stops it (by its PID) when aistack stops."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import httpx
import psutil
import pytest

from conftest import start_gateway, stop_gateway, wait_until
from llm_fixtures import smollm2_gguf

pytestmark = pytest.mark.slow

CHAT = {"model": "smollm2", "messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 8}


def embedded_state(client: httpx.Client) -> dict:
    return client.get("/ready").json()["embedded_llm"]


def test_the_embedded_server_is_started_supervised_and_stopped(models_cache: Path, tmp_path: Path) -> None:
    env = {
        "AISTACK_LLM__EMBEDDED__GGUF": str(smollm2_gguf()),
        "AISTACK_LLM__EMBEDDED__MODEL_ALIAS": "smollm2",
        "AISTACK_LLM__OLLAMA__ENABLED": "false",
    }
    gateway = start_gateway(models_cache, tmp_path, env)
    pids: list[int] = []
    try:
        with gateway.client(timeout=60) as client:
            assert wait_until(lambda: embedded_state(client)["state"] == "running", timeout=90), embedded_state(client)
            first = embedded_state(client)
            pids.append(first["pid"])
            assert psutil.Process(first["pid"]).ppid() == gateway.process.pid
            answer = client.post("/v1/chat/completions", json=CHAT)  # served as soon as it is healthy
            assert answer.status_code == 200 and answer.json()["choices"][0]["message"]["content"] is not None
            models = {m["id"]: m for m in client.get("/v1/models").json()["data"]}
            assert models["smollm2"]["owned_by"] == "llama-cpp" and models["smollm2"]["capabilities"] == ["llm"]

            os.kill(first["pid"], signal.SIGKILL)  # the child dies under it
            assert wait_until(lambda: embedded_state(client)["restarts"] == 1 and embedded_state(client)["state"] == "running",
                              timeout=90), embedded_state(client)
            second = embedded_state(client)
            pids.append(second["pid"])
            assert second["pid"] != first["pid"] and not psutil.pid_exists(first["pid"])
            assert second["last_exit"] == -signal.SIGKILL
            assert wait_until(lambda: client.post("/v1/chat/completions", json=CHAT).status_code == 200, timeout=30)
    finally:
        stop_gateway(gateway)
    assert gateway.process.returncode is not None  # uvicorn exits by re-raising the SIGTERM it handled
    assert wait_until(lambda: not any(psutil.pid_exists(pid) for pid in pids), timeout=15), pids


def test_while_the_embedded_server_is_down_a_request_gets_503_saying_why(models_cache: Path, tmp_path: Path) -> None:
    missing = tmp_path / "no-such-model.gguf"
    env = {"AISTACK_LLM__EMBEDDED__GGUF": str(missing), "AISTACK_LLM__OLLAMA__ENABLED": "false"}
    gateway = start_gateway(models_cache, tmp_path, env)
    try:
        with gateway.client() as client:
            state = embedded_state(client)
            response = client.post("/v1/chat/completions", json={**CHAT, "model": "no-such-model"})
            health = client.get("/health")
    finally:
        stop_gateway(gateway)
    assert state["state"] == "failed" and "does not exist" in state["error"]
    assert health.status_code == 200
    assert response.status_code == 503
    error = response.json()["error"]
    assert error["kind"] == "network" and "does not exist" in error["message"] and "AISTACK_LLM__EMBEDDED__GGUF" in error["message"]
