"""Ollama's models in memory: `/api/ps`, and loads and unloads by `keep_alive`, through the engine module,
against the loopback double that speaks Ollama's native API (tests/doubles/ollama_server.py)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from datetime import datetime

import httpx
import pytest

from aistack.engines.base import ModelCard, ResidencyControl
from aistack.engines.ollama import OllamaBackend
from aistack.errors import AistackError, ErrorKind
from aistack.settings import OllamaSettings
from doubles.ollama_server import FOREVER_NS, OllamaDouble

CHAT = ModelCard("llama3.2:latest", "ollama", ("llm",), "llama")
EMBEDDER = ModelCard("nomic-embed-text:latest", "ollama", ("embeddings",), "nomic-bert")
PS_FIELDS = {"name", "model", "size", "digest", "details", "expires_at", "size_vram", "context_length"}


@pytest.fixture
def ollama() -> Iterator[OllamaDouble]:
    with OllamaDouble() as server:
        yield server


def backend_for(ollama: OllamaDouble) -> OllamaBackend:
    return OllamaBackend(OllamaSettings(base_url=ollama.url), probe_timeout_s=5.0, load_timeout_s=30.0)


def wall_clock(go_time: str) -> float:
    return datetime.fromisoformat(go_time.replace("Z", "+00:00")).timestamp()


# -- the double speaks Ollama's native residency protocol -----------------------------------------


def test_the_double_loads_lists_and_unloads_as_ollama_does(ollama) -> None:
    with httpx.Client(base_url=ollama.url) as client:
        assert client.get("/api/ps").content == b'{"models":[]}'

        loaded = client.post("/api/generate", json={"model": "llama3.2"})
        assert loaded.status_code == 200 and loaded.headers["content-type"] == "application/json; charset=utf-8"
        body = loaded.json()
        assert list(body) == ["model", "created_at", "response", "done", "done_reason"]
        assert (body["model"], body["response"], body["done"], body["done_reason"]) == ("llama3.2", "", True, "load")
        assert body["created_at"].endswith("Z")

        (held,) = client.get("/api/ps").json()["models"]
        assert set(held) == PS_FIELDS
        assert held["name"] == held["model"] == "llama3.2:latest"
        assert held["size"] == ollama.model("llama3.2").loaded_size and held["size_vram"] == 0
        assert 290 < wall_clock(held["expires_at"]) - time.time() <= 300  # OLLAMA_KEEP_ALIVE's 5 minutes
        assert held["details"]["family"] == "llama" and held["context_length"] == 4096

        forever = client.post("/api/generate", json={"model": "llama3.2", "keep_alive": -1})
        assert forever.json()["done_reason"] == "load"
        expires = client.get("/api/ps").json()["models"][0]["expires_at"]
        assert wall_clock(expires) - time.time() > FOREVER_NS / 1e9 * 0.99  # about 292 years

        bad = client.post("/api/generate", json={"model": "llama3.2", "keep_alive": "soon"})
        assert (bad.status_code, bad.content) == (400, b'{"error":"time: invalid duration \\"soon\\""}')
        refused = client.post("/api/generate", json={"model": "nomic-embed-text"})
        assert (refused.status_code, refused.json()) == (400, {"error": '"nomic-embed-text" does not support generate'})
        missing = client.post("/api/generate", json={"model": "qwen9", "keep_alive": 0})
        assert (missing.status_code, missing.content) == (404, b'{"error":"model \'qwen9\' not found"}')

        embedded = client.post("/api/embed", json={"model": "nomic-embed-text"})
        assert embedded.content == b'{"model":"nomic-embed-text","embeddings":[]}'
        assert sorted(m["name"] for m in client.get("/api/ps").json()["models"]) == [
            "llama3.2:latest", "nomic-embed-text:latest"]

        unloaded = client.post("/api/generate", json={"model": "llama3.2", "keep_alive": 0})
        assert unloaded.json()["done_reason"] == "unload"
        assert [m["name"] for m in client.get("/api/ps").json()["models"]] == ["nomic-embed-text:latest"]


def test_a_chat_on_v1_loads_the_model_for_the_default_keep_alive(ollama) -> None:
    with httpx.Client(base_url=ollama.url) as client:
        chat = client.post("/v1/chat/completions", json={"model": "llama3.2", "messages": [{"role": "user", "content": "hi"}]})
        assert chat.status_code == 200
        assert [m["name"] for m in client.get("/api/ps").json()["models"]] == ["llama3.2:latest"]


# -- the engine: resident(), load_model(), unload_model() -------------------------------------------


def test_resident_reads_sizes_device_and_expiry_from_api_ps() -> None:
    with OllamaDouble(vram_fraction=1.0) as ollama:
        backend = backend_for(ollama)
        assert isinstance(backend, ResidencyControl)
        assert asyncio.run(backend.resident()) == {}
        ollama.hold("llama3.2", keep_alive_ns=60 * 10**9)
        ollama.hold("nomic-embed-text", keep_alive_ns=FOREVER_NS)
        held = asyncio.run(backend.resident())
    chat, embedder = held["llama3.2:latest"], held["nomic-embed-text:latest"]
    assert (chat.state, chat.device, chat.size_bytes) == ("loaded", "cuda", ollama.model("llama3.2").loaded_size)
    assert chat.expires_at is not None and 50 < chat.expires_at - time.time() <= 60
    assert embedder.state == "loaded" and embedder.expires_at is None  # kept until told otherwise


def test_a_model_held_in_system_memory_is_on_the_cpu(ollama) -> None:
    ollama.hold("llama3.2")
    assert asyncio.run(backend_for(ollama).resident())["llama3.2:latest"].device == "cpu"


def test_load_and_unload_go_through_keep_alive_and_the_unload_waits_until_it_is_gone() -> None:
    with OllamaDouble(unload_delay_s=0.3) as ollama:
        backend = backend_for(ollama)
        asyncio.run(backend.load_model(CHAT))
        asyncio.run(backend.load_model(EMBEDDER))
        assert sorted(ollama.loaded()) == ["llama3.2:latest", "nomic-embed-text:latest"]
        assert [r.json for r in ollama.requests_to("/api/generate")] == [{"model": "llama3.2:latest"}]
        assert [r.json for r in ollama.requests_to("/api/embed")] == [{"model": "nomic-embed-text:latest"}]

        asyncio.run(backend.unload_model(CHAT))
        # Ollama unloads in the background (here 0.3 s later); the call returned once /api/ps said so.
        assert ollama.loaded() == ["nomic-embed-text:latest"]
        assert ollama.requests_to("/api/generate")[-1].json == {"model": "llama3.2:latest", "keep_alive": 0}
        assert len(ollama.requests_to("/api/ps")) >= 2


def test_ollamas_refusals_and_absence_are_envelopes(ollama) -> None:
    backend = backend_for(ollama)
    with pytest.raises(AistackError) as missing:
        asyncio.run(backend.load_model(ModelCard("qwen9:latest", "ollama", ("llm",), "qwen")))
    assert missing.value.kind is ErrorKind.NOT_FOUND and "ollama pull qwen9:latest" in missing.value.message

    ollama.stop()
    for call in (backend.resident(), backend.load_model(CHAT), backend.unload_model(CHAT)):
        with pytest.raises(AistackError) as down:
            asyncio.run(call)
        assert down.value.kind is ErrorKind.NETWORK and down.value.provider == "ollama"
        assert "not reachable" in down.value.message and "ollama serve" in down.value.message
