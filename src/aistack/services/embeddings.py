"""POST /v1/embeddings for models run in this process: OpenAI's request and answer, batched through
the scheduler (one slot per batch of inputs) on a model the lifecycle loads and unloads.

Input is a string, a list of strings, one token array or a list of token arrays; token ids are the
model's own tokenizer's, without its special tokens (they are added as for text). Inputs longer
than the model reads are cut, as sentence-transformers does. `encoding_format` is `float` (JSON
numbers) or `base64` (the little-endian float32 bytes, as OpenAI sends them).
"""

from __future__ import annotations

import base64
import contextlib
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from ..engines.base import Embedder, EmbeddingBackend, ModelCard
from ..errors import malformed
from ..lifecycle import ModelLifecycle
from ..observability import tracing
from ..scheduler import Lease, Scheduler
from ..settings import EmbeddingSettings
from .claims import claim_embedder

# One input: text, or token ids.
EmbeddingInput = str | list[int]
INPUT_SHAPES = "a string, a list of strings, a list of token ids, or a list of token-id lists"
ENCODING_FORMATS = ("float", "base64")


class EmbeddingService:
    def __init__(self, settings: EmbeddingSettings, backends: Mapping[str, EmbeddingBackend], scheduler: Scheduler,
                 lifecycle: ModelLifecycle) -> None:
        self._settings = settings
        self._backends = backends
        self._scheduler = scheduler
        self._lifecycle = lifecycle

    def serves(self, card: ModelCard) -> bool:
        """Whether `card` is a model embedded here (not relayed to a server)."""
        return card.provider in self._backends

    async def create(self, card: ModelCard, payload: Mapping[str, Any]) -> dict[str, Any]:
        """The OpenAI embeddings answer for `payload` (already known to name `card`)."""
        inputs = self.parse_input(payload.get("input"))
        encoding = payload.get("encoding_format")
        if encoding is None:
            encoding = "float"
        if encoding not in ENCODING_FORMATS:
            raise malformed(f"'encoding_format' must be 'float' or 'base64', not {encoding!r}", param="encoding_format")
        dimensions = payload.get("dimensions")
        if dimensions is not None and not _is_token_id(dimensions):
            raise malformed("'dimensions' must be a whole number", param="dimensions")
        rows: list[np.ndarray] = []
        tokens = 0
        size = self._settings.batch_size
        for start in range(0, len(inputs), size):
            vectors, read = await self._embed_batch(card, inputs[start:start + size], dimensions)
            rows.extend(vectors)
            tokens += read
        return {
            "object": "list",
            "data": [{"object": "embedding", "index": index, "embedding": _encoded(row, encoding)}
                     for index, row in enumerate(rows)],
            "model": card.id,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }

    def parse_input(self, value: Any) -> list[EmbeddingInput]:
        """The inputs as a list, each a string or a token-id list; 400 saying what to send otherwise."""
        if value is None:
            raise malformed(f"the field 'input' is required: {INPUT_SHAPES}", param="input")
        if isinstance(value, str):
            inputs: list[EmbeddingInput] = [value]
        elif not isinstance(value, list):
            raise malformed(f"'input' must be {INPUT_SHAPES}, not a JSON {_json_type(value)}", param="input")
        elif not value:
            raise malformed("'input' is an empty list: send at least one string or token array", param="input")
        elif all(_is_token_id(item) for item in value):
            inputs = [list(value)]
        elif all(isinstance(item, str) for item in value):
            inputs = list(value)
        elif all(isinstance(item, list) for item in value):
            for index, item in enumerate(value):
                if not all(_is_token_id(token) for token in item):
                    raise malformed(f"input[{index}] must be a list of token ids (whole numbers >= 0)", param="input")
            inputs = [list(item) for item in value]
        else:
            raise malformed(f"'input' must be {INPUT_SHAPES}, all of one kind (not mixed)", param="input")
        limit = self._settings.max_inputs
        if len(inputs) > limit:
            raise malformed(f"'input' has {len(inputs)} inputs; at most {limit} go in one request: split them over "
                            "several requests", param="input")
        for index, item in enumerate(inputs):
            if len(item) == 0:
                what = "an empty string" if isinstance(item, str) else "an empty token array"
                where = "'input'" if isinstance(value, str) else f"input[{index}]"
                raise malformed(f"{where} is {what}: send text (or token ids) to embed", param="input")
        return inputs

    async def _embed_batch(self, card: ModelCard, batch: Sequence[EmbeddingInput],
                           dimensions: int | None) -> tuple[np.ndarray, int]:
        leases: list[Lease] = []
        try:
            lease, embedder = await claim_embedder(self._scheduler, self._lifecycle, self._backends[card.provider], card,
                                                   leases.append)

            def work() -> Iterator[tuple[np.ndarray, int]]:
                yield _run(embedder, batch, dimensions)

            with tracing.engine_step("embeddings", card.provider, card.id) as traced:
                traced.set("aistack.inputs", len(batch))
                async for result in self._scheduler.stream(lease, work):
                    return result
                raise RuntimeError("the embedding job ended without a result")  # the worker stopped before the batch
        finally:
            for held in leases:
                with contextlib.suppress(Exception):
                    held.abandon()


def _run(embedder: Embedder, batch: Sequence[EmbeddingInput], dimensions: int | None) -> tuple[np.ndarray, int]:
    """Blocking, on the device's worker: check the request against the model, tokenize the texts, embed."""
    if dimensions is not None and dimensions != embedder.dimensions:
        # Only models trained for it (Matryoshka) keep their meaning when cut short; this one is not.
        raise malformed(f"model '{embedder.card.id}' makes {embedder.dimensions}-dimensional vectors and cannot "
                        f"shorten them: leave out 'dimensions' or send {embedder.dimensions}", param="dimensions")
    texts = [item for item in batch if isinstance(item, str)]
    tokenized = iter(embedder.tokenize(texts)) if texts else iter(())
    ids: list[list[int]] = []
    for item in batch:
        if isinstance(item, str):
            ids.append(next(tokenized))
            continue
        bad = next((token for token in item if token >= embedder.vocabulary_size), None)
        if bad is not None:
            raise malformed(f"token id {bad} is not in the vocabulary of '{embedder.card.id}' (ids 0 to "
                            f"{embedder.vocabulary_size - 1}); send ids from its own tokenizer, or send the text",
                            param="input")
        ids.append(item)
    return embedder.embed(ids)


def _encoded(row: np.ndarray, encoding: str) -> list[float] | str:
    if encoding == "base64":
        return base64.b64encode(row.astype("<f4").tobytes()).decode("ascii")
    values: list[float] = row.astype(np.float64).tolist()
    return values


def _is_token_id(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__
