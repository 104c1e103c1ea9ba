"""Everything a running gateway holds, built once from settings and kept on the app (no module globals)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Collection
from dataclasses import dataclass, field

from .engines.base import (
    ChatUpstream,
    EmbeddingBackend,
    InProcessBackend,
    ManagedBackend,
    Residency,
    ResidencyState,
    SpeechUpstream,
    TranscriptionBackend,
)
from .engines.llama_server import (
    GGUF_SETTING,
    PACKAGED_DEFAULT_SETTING,
    PACKAGED_FIX,
    EmbeddedLlamaServer,
    describe_exit,
    packaged_gguf,
    unservable_request,
)
from .engines.llama_server import PROVIDER as LLAMA_PROVIDER
from .engines.minilm import MiniLmBackend
from .engines.ollama import OllamaBackend
from .engines.openai_compatible import OnDemandServerBackend, OpenAICompatibleBackend, SupervisedServerBackend
from .engines.piper import PiperBackend
from .engines.qwen3_tts import Qwen3TtsBackend
from .engines.sherpa import SherpaBackend
from .engines.whisper import WhisperBackend
from .inventory import AUTO_PROVIDER, Inventory
from .lifecycle import ModelLifecycle
from .observability.events import EngineEvents
from .scheduler import Scheduler
from .scheduler.upstreams import UpstreamGate
from .services.embeddings import EmbeddingService
from .services.llm import LlmProxy
from .services.models import ModelsService
from .services.realtime import RealtimeService
from .services.speech import SpeechService
from .services.transcription import TranscriptionService
from .settings import Settings
from .weights.catalog import whisper_id_for_size
from .weights.resolver import WeightResolver

log = logging.getLogger("aistack.runtime")

# The embedded server's states as what it holds: its model is in memory exactly while it runs.
EMBEDDED_RESIDENCY: dict[str, ResidencyState] = {"running": "loaded", "starting": "loading", "restarting": "loading"}


@dataclass
class Runtime:
    settings: Settings
    resolver: WeightResolver
    whisper: WhisperBackend
    # Every engine the model lifecycle loads and unloads: in-process ones, and servers started on demand.
    backends: dict[str, ManagedBackend]
    inventory: Inventory
    scheduler: Scheduler
    lifecycle: ModelLifecycle
    upstream_gate: UpstreamGate
    events: EngineEvents
    transcription: TranscriptionService
    speech: SpeechService
    llm: LlmProxy
    models: ModelsService
    realtime: RealtimeService
    # The llama.cpp server aistack runs itself: on `llm.embedded.gguf`, else on the packaged SmolLM2.
    embedded_llm: EmbeddedLlamaServer | None = None
    _background: list[asyncio.Task[None]] = field(default_factory=list)

    def prepare_weights(self) -> list[str]:
        """Blocking set-up done before serving: joins packaged weight pieces (with progress)."""
        return self.whisper.prepare()

    async def start(self) -> None:
        """On the serving loop: the keep-alive reaper, each device's queue (so /ready lists it from the
        start), and the pinned and preloaded models (in the background)."""
        self._background.append(asyncio.create_task(self.lifecycle.run_reaper(), name="aistack-reaper"))
        if self.embedded_llm is not None and not self.embedded_llm.on_demand:
            await self.embedded_llm.start()  # returns at once; its models appear once it is healthy
        snapshot = await self.inventory.snapshot()
        in_process = [(self.backends[c.provider], c) for c in snapshot.cards if c.provider in self.backends]
        # Off the loop: finding a device may initialise a GPU runtime.
        devices = await asyncio.to_thread(lambda: {backend.device(card) for backend, card in in_process})
        if self.settings.scheduler.serialized_upstreams:
            devices.add(self.settings.scheduler.shared_gpu)
        for device in sorted(devices):
            self.scheduler.queue(device)
        wanted = list(dict.fromkeys([*self.settings.models.pinned, *self.settings.models.preload]))
        if wanted:
            self._background.append(asyncio.create_task(self._preload(wanted), name="aistack-preload"))

    async def _preload(self, model_ids: list[str]) -> None:
        snapshot = await self.inventory.snapshot()
        cards = []
        for model_id in model_ids:
            card = snapshot.card(model_id)
            if card is None:
                log.error("cannot preload %s: it is not servable here (run `aistack doctor`)", model_id)
            else:
                cards.append(card)
        await self.lifecycle.preload(cards)

    async def stop(self) -> None:
        for task in self._background:
            task.cancel()
        for task in self._background:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._background.clear()
        if self.embedded_llm is not None:
            await self.embedded_llm.stop()
        await self.lifecycle.close()
        await self.speech.aclose()
        await self.llm.aclose()
        self.scheduler.shutdown()


def build_runtime(settings: Settings) -> Runtime:
    resolver = WeightResolver(settings.models_cache_dir, settings.model_paths)
    scheduler = Scheduler(settings.scheduler)
    whisper = WhisperBackend(settings.whisper, resolver, scheduler.slots_on)
    parakeet = SherpaBackend("parakeet", settings.onnx_asr, resolver)
    sensevoice = SherpaBackend("sensevoice", settings.onnx_asr, resolver)
    piper = PiperBackend(settings.tts.piper, resolver)
    transcribers: tuple[TranscriptionBackend, ...] = (whisper, parakeet, sensevoice)
    embedders: tuple[EmbeddingBackend, ...] = (MiniLmBackend(resolver),) if settings.embeddings.enabled else ()
    backends: tuple[InProcessBackend, ...] = (*transcribers, piper, *embedders)
    qwen3 = Qwen3TtsBackend(settings.tts.qwen3, settings.probe_timeout_s)
    upstreams: dict[str, SpeechUpstream] = {qwen3.provider: qwen3}
    by_provider: dict[str, ManagedBackend] = {b.provider: b for b in backends}
    embedded_settings = settings.llm.embedded
    packaged = packaged_gguf() if embedded_settings.gguf is None and embedded_settings.packaged_default else None
    embedded = None
    if embedded_settings.gguf is not None or packaged is not None:
        embedded = EmbeddedLlamaServer(embedded_settings, log_dir=settings.cache_dir / "logs", packaged=packaged)
    chat = chat_upstreams(settings, embedded, taken={AUTO_PROVIDER, *by_provider, *upstreams})
    # A server started on demand is loaded and unloaded by the lifecycle, like a model in this process.
    by_provider.update({p: u for p, u in chat.items() if isinstance(u, OnDemandServerBackend)})
    inventory = Inventory((*backends, *upstreams.values(), *chat.values()), settings.probe_timeout_s, settings.inventory_ttl_s,
                          in_process=[b.provider for b in backends])
    if embedded is not None:
        # Once it runs (or dies), requests see it at once rather than after the listing's TTL.
        embedded.state_listeners.append(inventory.invalidate)
    lifecycle = ModelLifecycle(by_provider, settings.models)
    gate = UpstreamGate(settings.scheduler, scheduler, lifecycle)
    events = EngineEvents()
    transcription = TranscriptionService(
        inventory,
        {b.provider: b for b in transcribers},
        scheduler,
        lifecycle,
        events,
        default_whisper_id=whisper_id_for_size(settings.whisper.default_size),
        detect_for_auto=settings.transcription.detect_language_for_auto,
    )
    speech = SpeechService(settings.tts, inventory, {piper.provider: piper}, upstreams, scheduler, lifecycle, gate, events)
    embeddings = EmbeddingService(settings.embeddings, {b.provider: b for b in embedders}, scheduler, lifecycle)
    llm = LlmProxy(settings.llm, inventory, chat, gate, embeddings, lifecycle)
    servers = {b.provider: b for b in inventory.backends if b.provider not in by_provider}
    models = ModelsService(inventory, lifecycle, scheduler, by_provider, servers, settings.models.pinned,
                           embedded.describe if embedded is not None else None)
    realtime = RealtimeService(transcription, settings.realtime)
    return Runtime(settings, resolver, whisper, by_provider, inventory, scheduler, lifecycle, gate, events, transcription,
                   speech, llm, models, realtime, embedded)


def chat_upstreams(settings: Settings, embedded: EmbeddedLlamaServer | None, taken: Collection[str]) -> dict[str, ChatUpstream]:
    """The LLM servers by provider name, most preferred first (`llm.priority`, then Ollama, the
    configured upstreams, the embedded server): the inventory gives a shared id to the first.
    `taken`: the names of the other engines, which no configured upstream may reuse."""
    ollama = OllamaBackend(settings.llm.ollama, settings.probe_timeout_s, load_timeout_s=settings.llm.read_timeout_s)
    found: dict[str, ChatUpstream] = {ollama.provider: ollama}
    reserved = {*taken, ollama.provider, LLAMA_PROVIDER}
    for upstream in settings.llm.upstreams:
        if upstream.name in reserved:
            raise ValueError(f"the LLM upstream name '{upstream.name}' is taken (by another upstream or an engine); "
                             "give each upstream its own name")
        reserved.add(upstream.name)
        found[upstream.name] = OpenAICompatibleBackend.fixed(
            upstream.name, upstream.base_url, upstream.api_key, settings.probe_timeout_s
        )
    if embedded is not None:
        found[embedded.provider] = (on_demand_upstream(embedded, settings.probe_timeout_s) if embedded.on_demand
                                    else embedded_upstream(embedded, settings.probe_timeout_s))
    preferred = [name for name in settings.llm.priority if name in found]
    return {name: found[name] for name in [*preferred, *(n for n in found if n not in preferred)]}


def _not_running(server: EmbeddedLlamaServer) -> str:
    detail = server.error or (f"last exit: {describe_exit(server.last_exit)}" if server.last_exit is not None else "")
    return f"the embedded llama.cpp server is {server.state}" + (f" ({detail})" if detail else "")


def on_demand_upstream(server: EmbeddedLlamaServer, probe_timeout_s: float) -> OnDemandServerBackend:
    """The embedded server started on first use and stopped by the model lifecycle (the packaged default)."""
    fix = f"send the request again (it starts the server), or read its log: {server.log_path}"
    problem_fix = (f"`{PACKAGED_FIX}`, set {GGUF_SETTING}=/path/to/model.gguf, or turn the packaged default off: "
                   f"{PACKAGED_DEFAULT_SETTING}=false" if server.packaged else f"fix {GGUF_SETTING}")
    return OnDemandServerBackend(server.provider, server, weights=server.gguf, start_timeout_s=server.settings.start_timeout_s,
                                 probe_timeout_s=probe_timeout_s, start_fix=fix, problem_fix=problem_fix,
                                 not_running=lambda: _not_running(server), api_key=server.api_key,
                                 unservable=unservable_request)


def embedded_upstream(server: EmbeddedLlamaServer, probe_timeout_s: float) -> SupervisedServerBackend:
    """The embedded server as one more OpenAI-compatible upstream, reachable while it is healthy, which
    holds its model in memory while it runs."""

    def not_running() -> str:
        return _not_running(server)

    def residency() -> dict[str, Residency]:
        # llama.cpp maps the whole GGUF at start and keeps it: its size is the model's footprint.
        state: ResidencyState = EMBEDDED_RESIDENCY.get(server.state, "unloaded")
        try:
            size = server.gguf.stat().st_size if state == "loaded" and server.gguf is not None else None
        except OSError:
            size = None
        return {server.model_id: Residency(state, size_bytes=size)}

    fix = f"wait for it to start, or read its log: {server.log_path}"
    refusal = (f"{server.provider} (the llama.cpp server aistack runs on {server.gguf}) manages {server.model_id} and "
               f"holds it for as long as the gateway runs; to free it, stop the gateway, or unset {GGUF_SETTING} "
               "and start it again")
    return SupervisedServerBackend(server.provider, lambda: server.base_url, probe_timeout_s, fix, not_running,
                                   residency, refusal, api_key=server.api_key, retry_after=server.retry_after_s,
                                   unservable=unservable_request)
