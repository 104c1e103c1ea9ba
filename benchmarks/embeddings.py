"""Embeddings throughput: all-MiniLM-L6-v2 on numpy, sentences per second at batch 1 and batch 32.

Run it with `.venv/bin/python benchmarks/embeddings.py [--runs N] [--sentences N] [--no-http]`.

The sentences are made here (deterministic, 8 to 24 words each, about 15 word pieces on average).
Two rows per batch size:
  engine   the loaded model's `embed` called directly in this process (tokenizing included): the
           forward pass alone, no HTTP, no scheduler
  http     POST /v1/embeddings on `aistack serve` (a subprocess on a loopback port it binds itself,
           with a temporary AISTACK_CACHE_DIR, no Ollama, and the packaged SmolLM2 off), one request
           per batch, `encoding_format` float, measured by the client: the whole path, JSON included
For each row, --sentences sentences are embedded in batches of 1 or 32 per run, after one untimed
warm-up (the lazy model load); the figure is sentences / wall time, median over --runs runs (and the
slowest and fastest run). Progress goes to stderr; the figures go to stdout. The numpy BLAS threads
are numpy's own: on a machine whose cores other work keeps busy, OpenBLAS's threads wait on each other
and a single thread (OPENBLAS_NUM_THREADS=1 in this command's environment, which the gateway inherits)
is faster; the figures say which was in force.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx

WORDS = ("the river morning city small quiet old bright people village market bread coffee garden train station "
         "window music evening story house light road dog children school friend water winter summer book table "
         "walks sings reads opens finds carries builds watches remembers closes follows waits chooses").split()
ANNOUNCED_URL = re.compile(r"aistack \S+ on (http://\S+) \(OpenAI base URL")
MODEL = "all-minilm-l6-v2"


def make_sentences(count: int) -> list[str]:
    rng = random.Random(14)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 24))).capitalize() + "." for _ in range(count)]


def timed(work: Callable[[list[str]], None], sentences: list[str], batch: int, runs: int) -> list[float]:
    rates = []
    for _ in range(runs):
        started = time.perf_counter()
        for start in range(0, len(sentences), batch):
            work(sentences[start:start + batch])
        rates.append(len(sentences) / (time.perf_counter() - started))
    return rates


def engine_row() -> Callable[[list[str]], None]:
    from aistack.engines.base import ModelCard
    from aistack.engines.minilm import MODEL_ID, PROVIDER, MiniLmBackend
    from aistack.weights.resolver import WeightResolver

    backend = MiniLmBackend(WeightResolver(Path(tempfile.mkdtemp()), {}))
    model = backend.load(ModelCard(MODEL_ID, PROVIDER, ("embeddings",), "bert"))

    def embed(texts: list[str]) -> None:
        model.embed(model.tokenize(texts))

    return embed


def start_gateway(workdir: Path) -> tuple[subprocess.Popen[bytes], str, Path]:
    log_path = workdir / "gateway.log"
    env = {**os.environ, "AISTACK_CACHE_DIR": str(workdir / "cache"), "TMPDIR": str(workdir),
           "AISTACK_LLM__OLLAMA__ENABLED": "false", "AISTACK_LLM__EMBEDDED__PACKAGED_DEFAULT": "false"}
    with log_path.open("wb") as log:
        process = subprocess.Popen([sys.executable, "-m", "aistack", "serve", "--port", "0"], env=env, stdout=log,
                                   stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the gateway exited:\n{log_path.read_text()}")
        found = ANNOUNCED_URL.search(log_path.read_text(errors="replace"))
        if found:
            try:
                if httpx.get(f"{found.group(1)}/health", timeout=1).status_code == 200:
                    return process, found.group(1), log_path
            except httpx.HTTPError:
                pass
        time.sleep(0.1)
    process.send_signal(signal.SIGTERM)
    raise RuntimeError("the gateway did not come up")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--sentences", type=int, default=64)
    parser.add_argument("--no-http", action="store_true", help="measure the engine alone")
    args = parser.parse_args()
    sentences = make_sentences(args.sentences)
    rows: list[tuple[str, int, list[float]]] = []

    print("loading all-MiniLM-L6-v2 ...", file=sys.stderr)
    embed = engine_row()
    for batch in (1, 32):
        embed(sentences[:batch])
        print(f"engine, batch {batch} ...", file=sys.stderr)
        rows.append(("engine", batch, timed(embed, sentences, batch, args.runs)))

    if not args.no_http:
        with tempfile.TemporaryDirectory() as folder:
            process, url, _ = start_gateway(Path(folder))
            try:
                with httpx.Client(base_url=url, timeout=300) as client:

                    def post(texts: list[str]) -> None:
                        response = client.post("/v1/embeddings", json={"model": MODEL, "input": texts, "encoding_format": "float"})
                        response.raise_for_status()

                    for batch in (1, 32):
                        post(sentences[:batch])
                        print(f"http, batch {batch} ...", file=sys.stderr)
                        rows.append(("http", batch, timed(post, sentences, batch, args.runs)))
            finally:
                process.send_signal(signal.SIGTERM)
                process.wait(30)

    threads = os.environ.get("OPENBLAS_NUM_THREADS", "OpenBLAS's default")
    print(f"all-MiniLM-L6-v2, {len(sentences)} sentences per run, {args.runs} runs (sentences per second); "
          f"{os.cpu_count()} cores, OPENBLAS_NUM_THREADS={threads}")
    print(f"{'path':8} {'batch':>5} {'median':>8} {'min':>8} {'max':>8}")
    for path, batch, rates in rows:
        print(f"{path:8} {batch:>5} {statistics.median(rates):>8.1f} {min(rates):>8.1f} {max(rates):>8.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
