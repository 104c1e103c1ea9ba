"""/admin/models with upstream models listed: Ollama (its loopback double), an OpenAI-compatible server
(the real llama.cpp server on SmolLM2), Qwen3-TTS (its loopback double) and the embedded llama.cpp
server. Every listed model is a row; a server that says what it holds gives the state, and loads and
unloads go through it; any other server's models are "remote" and a load or unload names that server."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from aistack.settings import (
    EmbeddedLlmSettings,
    LlmSettings,
    OllamaSettings,
    OpenAIUpstreamSettings,
    Qwen3TtsSettings,
    TtsSettings,
)
from conftest import assert_envelope, wait_until
from doubles.ollama_server import OllamaDouble
from doubles.qwen3_tts_server import DEFAULT_MODEL as QWEN3_MODEL
from doubles.qwen3_tts_server import Qwen3TtsDouble
from llm_fixtures import llama_server, smollm2_gguf  # noqa: F401 - the session fixture

ROW_FIELDS = ["id", "object", "owned_by", "capabilities", "device", "state", "resident", "size_bytes", "loaded_at",
              "last_used", "in_use", "pinned", "expires_in_s"]
CHAT_MODEL = "llama3.2:latest"
EMBED_MODEL = "nomic-embed-text:latest"
NO_OLLAMA = OllamaSettings(enabled=False)


@pytest.fixture
def ollama() -> Iterator[OllamaDouble]:
    with OllamaDouble() as server:
        yield server


@pytest.fixture
def qwen3() -> Iterator[Qwen3TtsDouble]:
    server = Qwen3TtsDouble().start()
    try:
        yield server
    finally:
        server.close()


def rows(client: httpx.Client) -> dict[str, dict]:
    listing = client.get("/admin/models")
    assert listing.status_code == 200, listing.text
    found = {row["id"]: row for row in listing.json()["data"]}
    for row in found.values():
        assert list(row) == ROW_FIELDS
    return found


def remote_row(row: dict, owner: str, capabilities: list[str]) -> None:
    """A model whose server does not say what it holds: the fields are there, unknown ones null."""
    assert row["owned_by"] == owner and row["capabilities"] == capabilities and row["object"] == "model"
    assert row["state"] == "remote"
    assert {k: row[k] for k in ROW_FIELDS[4:] if k not in ("state", "pinned")} == {
        "device": None, "resident": None, "size_bytes": None, "loaded_at": None, "last_used": None, "in_use": None,
        "expires_in_s": None}
    assert row["pinned"] is False


# -- Ollama: state from /api/ps, loads and unloads by keep_alive -----------------------------------------


def test_ollama_models_are_rows_with_ollamas_state_and_load_and_unload_through_it(make_inprocess_gateway,
                                                                                    ollama) -> None:
    gateway = make_inprocess_gateway(llm=LlmSettings(ollama=OllamaSettings(base_url=ollama.url)), inventory_ttl_s=0.2)
    with gateway.client() as client:
        listed = rows(client)
        assert listed[CHAT_MODEL]["owned_by"] == "ollama" and listed[EMBED_MODEL]["capabilities"] == ["embeddings"]
        assert listed[CHAT_MODEL]["state"] == "unloaded" and listed[CHAT_MODEL]["resident"] is False
        assert listed["whisper-tiny.en"]["state"] == "unloaded"  # the in-process rows are still there

        loaded = client.post(f"/admin/models/{CHAT_MODEL}/load")
        assert loaded.status_code == 200, loaded.text
        row = loaded.json()
        assert ollama.loaded() == [CHAT_MODEL]
        assert (row["state"], row["resident"], row["device"]) == ("loaded", True, "cpu")
        assert row["size_bytes"] == ollama.model(CHAT_MODEL).loaded_size  # /api/ps's size, not the file's
        assert 0 < row["expires_in_s"] <= 300  # Ollama's own keep-alive
        assert rows(client)[CHAT_MODEL] | {"expires_in_s": None} == row | {"expires_in_s": None}

        embedder = client.post(f"/admin/models/{EMBED_MODEL}/load")
        assert embedder.status_code == 200 and embedder.json()["state"] == "loaded"
        assert sorted(ollama.loaded()) == [CHAT_MODEL, EMBED_MODEL]

        unloaded = client.post(f"/admin/models/{CHAT_MODEL}/unload")
        assert unloaded.status_code == 200, unloaded.text
        assert (unloaded.json()["state"], unloaded.json()["resident"]) == ("unloaded", False)
        assert ollama.loaded() == [EMBED_MODEL]
        assert rows(client)[CHAT_MODEL]["state"] == "unloaded"
        assert ollama.requests_to("/api/generate")[-1].json == {"model": CHAT_MODEL, "keep_alive": 0}


def test_a_chat_through_the_gateway_shows_the_model_loaded_in_ollama(make_inprocess_gateway, ollama) -> None:
    gateway = make_inprocess_gateway(llm=LlmSettings(ollama=OllamaSettings(base_url=ollama.url)), inventory_ttl_s=0.2)
    with gateway.client() as client:
        chat = client.post("/v1/chat/completions", json={"model": "llama3.2", "messages": [{"role": "user", "content": "hi"}]})
        assert chat.status_code == 200, chat.text
        assert rows(client)[CHAT_MODEL]["state"] == "loaded"


def test_an_ollama_that_stopped_answering_gets_envelopes_and_its_rows_say_remote(make_inprocess_gateway,
                                                                                  ollama) -> None:
    # A long inventory cache keeps its models listed, so the admin calls reach the stopped server.
    gateway = make_inprocess_gateway(llm=LlmSettings(ollama=OllamaSettings(base_url=ollama.url)), inventory_ttl_s=60)
    with gateway.client() as client:
        assert rows(client)[CHAT_MODEL]["state"] == "unloaded"
        ollama.stop()
        remote_row(rows(client)[CHAT_MODEL], "ollama", ["llm"])
        for action in ("load", "unload"):
            refused = client.post(f"/admin/models/{CHAT_MODEL}/{action}")
            assert_envelope(refused, 503, "network", None, "Ollama is not reachable", "ollama serve", provider="ollama")
        assert client.get("/health").status_code == 200


# -- servers that do not say what they hold --------------------------------------------------------------


def test_an_openai_compatible_upstreams_models_are_remote_and_cannot_be_loaded_here(make_inprocess_gateway,
                                                                                     llama_server) -> None:  # noqa: F811
    upstream = OpenAIUpstreamSettings(name="local-llama", base_url=llama_server.base_url)
    gateway = make_inprocess_gateway(llm=LlmSettings(ollama=NO_OLLAMA, upstreams=[upstream]))
    with gateway.client() as client:
        remote_row(rows(client)[llama_server.model_id], "local-llama", ["llm"])
        for action in ("load", "unload"):
            refused = client.post(f"/admin/models/{llama_server.model_id}/{action}")
            assert_envelope(refused, 400, "malformed", None, f"local-llama manages {llama_server.model_id}",
                            "load and unload it on that server")


def test_qwen3_tts_is_remote_and_a_load_names_its_server(make_inprocess_gateway, qwen3) -> None:
    gateway = make_inprocess_gateway(llm=LlmSettings(ollama=NO_OLLAMA),
                                     tts=TtsSettings(qwen3=Qwen3TtsSettings(base_url=qwen3.url)))
    with gateway.client() as client:
        remote_row(rows(client)[QWEN3_MODEL], "qwen3-tts", ["tts"])
        for action in ("load", "unload"):
            refused = client.post(f"/admin/models/{QWEN3_MODEL}/{action}")
            assert_envelope(refused, 400, "malformed", None, f"qwen3-tts manages {QWEN3_MODEL}",
                            "load and unload it on that server")
    assert not qwen3.speech_bodies  # nothing was synthesized to "load" it


# -- the embedded llama.cpp server: loaded while it runs ---------------------------------------------------


@pytest.mark.slow
def test_the_embedded_servers_model_is_loaded_while_it_runs_and_is_not_unloaded_on_its_own(make_inprocess_gateway) -> None:
    gguf = smollm2_gguf()
    embedded = EmbeddedLlmSettings(gguf=gguf, model_alias="smollm2")
    gateway = make_inprocess_gateway(llm=LlmSettings(ollama=NO_OLLAMA, embedded=embedded), inventory_ttl_s=0.2)
    with gateway.client() as client:
        assert wait_until(lambda: "smollm2" in rows(client), timeout=120), client.get("/ready").json()
        row = rows(client)["smollm2"]
        assert (row["owned_by"], row["state"], row["resident"]) == ("llama-cpp", "loaded", True)
        assert row["size_bytes"] == gguf.stat().st_size and row["expires_in_s"] is None

        loaded = client.post("/admin/models/smollm2/load")  # it is loaded already: nothing to do
        assert loaded.status_code == 200 and loaded.json() == row
        refused = client.post("/admin/models/smollm2/unload")
        assert_envelope(refused, 400, "malformed", None, "llama-cpp", "manages smollm2", "AISTACK_LLM__EMBEDDED__GGUF")
        assert client.get("/ready").json()["embedded_llm"]["state"] == "running"  # the refusal stopped nothing
        assert rows(client)["smollm2"]["state"] == "loaded"
