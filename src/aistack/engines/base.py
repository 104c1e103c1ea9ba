"""The contract between engines and the rest of the gateway.

An engine backend knows which of its models can be served right now (`probe`), on which device
each runs, and how to load and unload one; when to load and unload is the model lifecycle's
business, and where jobs run is the scheduler's. Each in-process capability has its backend:
a `TranscriptionBackend` loads a `Transcriber` (a blocking call that returns what it detected and
a lazy iterator of segments, so the caller decides where and how fast decoding runs and can stop
it between segments); a `SpeechBackend` loads a `Synthesizer` (one chunk per sentence) and, like
every text-to-speech engine, tells about its voices (`VoiceCatalog`); an `EmbeddingBackend` loads
an `Embedder` (a batch of inputs to a batch of vectors).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, TypeVar, runtime_checkable

import numpy as np

from ..errors import AistackError

# The share of the inventory's probe timeout an HTTP backend's probe may spend, so that a slow server
# is reported with the backend's own reason and fix rather than as a bare timeout.
PROBE_BUDGET_SHARE = 0.8

# "embeddings" is additive: a model that only embeds (Ollama's embedding models) is not "llm".
Capability = Literal["asr", "tts", "llm", "embeddings"]
Task = Literal["transcribe", "translate"]
# What a speech-to-text model can do beyond transcribing, for the request fields that need it:
# keywords (favoured words), logprobs (per-token log probabilities), chunking (VAD-cut chunks decoded
# in a batch), language_detection (detection alone, limited to given languages).
AsrFeature = Literal["keywords", "logprobs", "chunking", "language_detection"]

_Item_co = TypeVar("_Item_co", covariant=True)
# What a backend's `load` gives: a Transcriber, a Synthesizer.
_Loaded_co = TypeVar("_Loaded_co", covariant=True)


class ClosableAsyncIterator(Protocol[_Item_co]):
    """An async iterator its consumer can end early (an async generator, or a wrapper around one):
    `aclose` stops whatever produces it, so `contextlib.aclosing` can guarantee that."""

    def __aiter__(self) -> AsyncIterator[_Item_co]: ...

    async def __anext__(self) -> _Item_co: ...

    async def aclose(self) -> None: ...


@dataclass(frozen=True)
class ModelCard:
    """One servable model as the inventory lists it."""

    id: str
    provider: str
    capabilities: tuple[Capability, ...]
    family: str
    languages: tuple[str, ...] | None = None
    supports_streaming: bool = False
    can_translate: bool = False
    # Higher is better within a family; picks the fallback when the default is not visible.
    rank: int = 0
    created: int = 0
    # The id the provider itself knows the model by, where the listing had to qualify it
    # (`provider/id`, when two upstreams offer the same id).
    upstream_id: str | None = None
    asr_features: frozenset[AsrFeature] = frozenset()

    @property
    def provider_model_id(self) -> str:
        return self.upstream_id or self.id


@dataclass(frozen=True)
class Unavailable:
    """Why a model or a whole backend cannot be served, and the command that fixes it."""

    subject: str
    reason: str
    fix: str


@dataclass(frozen=True)
class BackendStatus:
    provider: str
    capability: Capability
    cards: tuple[ModelCard, ...] = ()
    unavailable: tuple[Unavailable, ...] = ()


@dataclass(frozen=True)
class VadChunking:
    """Cut the audio at speech pauses and decode the chunks in a batch (OpenAI's chunking_strategy)."""

    threshold: float | None = None
    prefix_padding_ms: int | None = None
    silence_duration_ms: int | None = None


@dataclass(frozen=True)
class TranscribeOptions:
    language: str | None = None
    task: Task = "transcribe"
    prompt: str | None = None
    temperature: float | None = None
    word_timestamps: bool = False
    # The possible languages when `language` is not given: detection picks among them.
    languages: tuple[str, ...] = ()
    # Words to favour (needs the "keywords" feature).
    keywords: tuple[str, ...] = ()
    chunking: VadChunking | None = None
    # Per-token log probabilities on each segment (needs "logprobs").
    logprobs: bool = False
    # Only find the language (TranscriptionInfo), decode nothing (needs "language_detection").
    detect_only: bool = False

    @property
    def needs(self) -> frozenset[AsrFeature]:
        """The model features these options ask for."""
        asked: dict[AsrFeature, bool] = {"keywords": bool(self.keywords), "logprobs": self.logprobs,
                                         "chunking": self.chunking is not None, "language_detection": self.detect_only}
        return frozenset(feature for feature, wanted in asked.items() if wanted)


@dataclass(frozen=True)
class Word:
    start: float
    end: float
    word: str
    probability: float | None = None


@dataclass(frozen=True)
class TokenLogprob:
    token: str
    logprob: float
    bytes: tuple[int, ...]


@dataclass(frozen=True)
class Segment:
    id: int
    start: float
    end: float
    text: str
    seek: int | None = None
    tokens: tuple[int, ...] = ()
    temperature: float | None = None
    avg_logprob: float | None = None
    compression_ratio: float | None = None
    no_speech_prob: float | None = None
    words: tuple[Word, ...] = field(default=())
    logprobs: tuple[TokenLogprob, ...] = field(default=())


@dataclass(frozen=True)
class TranscriptionInfo:
    language: str
    duration: float
    language_probability: float | None = None


@runtime_checkable
class LoadedModel(Protocol):
    """What any in-process backend loads: the model it serves, and a way to free what it holds."""

    card: ModelCard

    def close(self) -> None:
        """Blocking: free the model's weights and buffers (its backend's `unload` calls it)."""
        ...


@runtime_checkable
class Transcriber(LoadedModel, Protocol):
    """A loaded in-process speech-to-text model."""

    def transcribe(
        self, audio: np.ndarray, options: TranscribeOptions
    ) -> tuple[TranscriptionInfo, Iterator[Segment]]:
        """Blocking. `audio` is 16 kHz mono float32; segments decode lazily as they are pulled."""
        ...


@dataclass(frozen=True)
class VoiceInfo:
    id: str
    name: str
    languages: tuple[str, ...] = ()


@dataclass(frozen=True)
class SpeechOptions:
    """What to say it with: the engine's own voice id (aliases already resolved) and the knobs."""

    voice: str
    speed: float = 1.0
    instructions: str | None = None
    # Engine-specific request fields passed through untouched (e.g. Qwen3-TTS `task_type`, `ref_audio`).
    extra: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class PcmChunk:
    """Synthesized speech: 16-bit signed mono samples (numpy int16, 1-D) at `sample_rate`."""

    samples: np.ndarray
    sample_rate: int


@runtime_checkable
class Synthesizer(LoadedModel, Protocol):
    """A loaded in-process text-to-speech model (its backend says whether it honours `speed` itself)."""

    def synthesize(self, text: str, options: SpeechOptions) -> Iterator[PcmChunk]:
        """Blocking and lazy: one chunk per sentence, each made when pulled, so a stop lands between sentences."""
        ...


@runtime_checkable
class Embedder(LoadedModel, Protocol):
    """A loaded in-process embedding model: text to its tokenizer's ids, ids to unit vectors."""

    dimensions: int
    # The most tokens it reads per input, its special tokens included; longer inputs are cut.
    max_tokens: int
    vocabulary_size: int

    def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        """Blocking: each text's token ids, without the special tokens that `embed` adds."""
        ...

    def embed(self, token_ids: Sequence[Sequence[int]]) -> tuple[np.ndarray, int]:
        """Blocking: one float32 row per id sequence (float32 [n, dimensions]), and the tokens it read."""
        ...


class VoiceCatalog(Protocol):
    """What every text-to-speech engine, in-process or upstream, tells about its voices and pace."""

    # True when the engine honours `speed` itself; otherwise the encoder time-stretches.
    native_speed: bool
    # Request fields beyond OpenAI's that the engine takes; they reach it untouched (SpeechOptions.extra).
    pass_through_fields: frozenset[str]

    def voices(self, card: ModelCard) -> list[VoiceInfo]: ...

    def default_voice(self, card: ModelCard) -> str: ...


class SpeechUpstream(VoiceCatalog, Protocol):
    """A text-to-speech server reached over HTTP; it schedules its own work."""

    provider: str
    capability: Capability

    def probe(self) -> BackendStatus: ...

    def speak(self, card: ModelCard, text: str, options: SpeechOptions) -> ClosableAsyncIterator[PcmChunk]:
        """Audio as the server sends it; failures raise AistackError (network, timeout, unknown)."""
        ...

    async def aclose(self) -> None:
        """Close pooled connections."""
        ...


class ChatUpstream(Protocol):
    """An OpenAI-compatible LLM server (Ollama's /v1, llama.cpp, vLLM, LM Studio) that the gateway relays to."""

    provider: str
    capability: Capability
    # Whether it takes OpenAI's `developer` role; where not, the relay sends such messages as `system`.
    accepts_developer_role: bool

    def probe(self) -> BackendStatus:
        """Blocking, within the probe timeout: the models it serves now, or why it cannot be reached."""
        ...

    def root_url(self) -> str | None:
        """The OpenAI-compatible root (`.../v1`), None while it is not running."""
        ...

    def auth_headers(self) -> dict[str, str]: ...

    def unreachable(self, detail: str) -> Unavailable:
        """Why it cannot be reached and how to start it (the 503 network message)."""
        ...

    def missing_model_fix(self, model_id: str) -> str | None:
        """The command that makes `model_id` available here (`ollama pull NAME`), if there is one."""
        ...

    def canonical_ids(self, model: str) -> tuple[str, ...]:
        """Other ids this server would list a requested `model` under (Ollama: `NAME:latest` for `NAME`),
        tried when no model has the id itself."""
        ...

    def retry_after_s(self) -> float | None:
        """While it is down for a moment (a supervised server restarting): when to try again; else None."""
        ...

    def unservable(self, endpoint: str, payload: dict[str, Any]) -> AistackError | None:
        """The refusal (400, saying what to send instead) of a request this server is known to fail on
        (an empty 500) rather than refuse; None when nothing is known against it. The relay sends it then."""
        ...


ResidencyState = Literal["loading", "loaded", "unloading", "unloaded"]


@dataclass(frozen=True)
class Residency:
    """What an upstream server says it holds in memory for one of its models (None: it does not say)."""

    state: ResidencyState
    device: str | None = None
    size_bytes: int | None = None
    # Wall-clock seconds; None when the server will keep it until told otherwise, or does not say.
    expires_at: float | None = None


@runtime_checkable
class ResidencyControl(Protocol):
    """An upstream server that says which of its models are in memory and can be told to load or free one.

    An upstream without this leaves its models' memory to itself: /admin/models shows them as "remote".
    """

    async def resident(self) -> dict[str, Residency]:
        """Its models in memory, by the id the server knows them by; absent ones are unloaded.
        Raises AistackError (network, timeout, unknown) when the server cannot say."""
        ...

    async def load_model(self, card: ModelCard) -> None:
        """Have the server load it now; AistackError when it cannot or will not."""
        ...

    async def unload_model(self, card: ModelCard) -> None:
        """Have the server free it; AistackError when it cannot or will not."""
        ...


class ProbedEngine(Protocol):
    """Anything the inventory lists: an in-process backend, a speech or a chat upstream."""

    provider: str
    capability: Capability

    def probe(self) -> BackendStatus:
        """Blocking, within the probe timeout: the models it can serve now, or why not."""
        ...


class Backend(ProbedEngine, Protocol[_Loaded_co]):
    """An in-process engine; `probe` is cheap here (file checks, no imports of heavy libraries, no loading)."""

    def device(self, card: ModelCard) -> str:
        """Where the model runs: `cpu` or `cuda:N`; jobs queue per device."""
        ...

    def footprint(self, card: ModelCard) -> int:
        """Approximate bytes the loaded model holds (for the resident budget and /admin/models)."""
        ...

    def load(self, card: ModelCard) -> _Loaded_co:
        """Blocking: load the model's weights."""
        ...

    def unload(self, model: LoadedModel) -> None:
        """Blocking: free what the engine holds outside Python objects (device memory, native buffers)
        for a model this backend loaded."""
        ...


class TranscriptionBackend(Backend[Transcriber], Protocol):
    """An in-process speech-to-text engine (Whisper, the sherpa-onnx models)."""


class SpeechBackend(Backend[Synthesizer], VoiceCatalog, Protocol):
    """An in-process text-to-speech engine (Piper): it loads a synthesizer and tells about its voices."""


class EmbeddingBackend(Backend[Embedder], Protocol):
    """An in-process embedding engine (all-MiniLM-L6-v2 on numpy)."""


# What the model lifecycle loads and unloads in this process, whatever the capability.
InProcessBackend = TranscriptionBackend | SpeechBackend | EmbeddingBackend


@runtime_checkable
class ServerBackend(Protocol):
    """An engine whose model lives in a server process that aistack starts on first use (the embedded
    llama.cpp server on its packaged default): the model lifecycle "loads" it by starting the server and
    "unloads" it by stopping the process, so keep-alive, budget, pins and /admin/models apply as to a model
    run in this process. Everything here runs on the event loop."""

    provider: str
    capability: Capability

    def probe(self) -> BackendStatus: ...

    def device(self, card: ModelCard) -> str: ...

    def footprint(self, card: ModelCard) -> int: ...

    async def start_serving(self, card: ModelCard) -> LoadedModel:
        """Start the server and wait until it is healthy; AistackError (network) when it does not become so."""
        ...

    async def stop_serving(self, model: LoadedModel) -> None:
        """Stop the server process (its memory goes back to the system with it)."""
        ...


# Whatever the model lifecycle loads and unloads.
ManagedBackend = InProcessBackend | ServerBackend
