"""The embedded llama.cpp server: llama_cpp.server's real app on SmolLM2-135M (run by
`aistack.engines.llama_child` on a socket the supervisor bound), supervised."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import httpx
import psutil
import pytest
import uvloop

from aistack.engines import llama_server as llama_server_module
from aistack.engines.llama_server import EmbeddedLlamaServer, unservable_request
from aistack.settings import EmbeddedLlmSettings
from llm_fixtures import llama_server, smollm2_gguf  # noqa: F401 (llama_server is a fixture)

pytestmark = pytest.mark.timeout(120)

# The gateway runs on uvloop (uvicorn picks it when installed); plain asyncio must work too.
LOOPS = [pytest.param(asyncio.run, id="asyncio"), pytest.param(uvloop.run, id="uvloop")]


def make(tmp_path: Path, **overrides) -> EmbeddedLlamaServer:
    fields = {"gguf": smollm2_gguf(), "model_alias": "smollm2", "start_timeout_s": 60.0}
    fields.update(overrides)
    return EmbeddedLlamaServer(EmbeddedLlmSettings(**fields), log_dir=tmp_path / "logs")


async def chat(base_url: str, model: str, api_key: str | None = None) -> str:
    # The supervised child answers only with the key its supervisor made for it.
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else None
    async with httpx.AsyncClient(trust_env=False, timeout=30, headers=headers) as client:
        response = await client.post(
            f"{base_url}/chat/completions",
            json={"model": model, "messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 8, "temperature": 0},
        )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == model
    return body["choices"][0]["message"]["content"]


# llama.cpp servers this process ran before the test began (the session's shared `llama_server`).
_BEFORE_THE_TEST: set[int] = set()


@pytest.fixture(autouse=True)
def _servers_started_before_the_test() -> None:
    _BEFORE_THE_TEST.clear()
    _BEFORE_THE_TEST.update(child.pid for child in llama_children())


def llama_children() -> list[psutil.Process]:
    """The llama.cpp servers this process started since the test began."""
    found = []
    for child in psutil.Process().children(recursive=True):
        if child.pid in _BEFORE_THE_TEST:
            continue
        try:
            cmdline = child.cmdline()
        except psutil.Error:
            continue
        if llama_server_module.CHILD_MODULE in cmdline:
            found.append(child)
    return found


def listening_ports(pid: int) -> set[int]:
    """The TCP ports process `pid` listens on."""
    return {c.laddr.port for c in psutil.Process(pid).net_connections(kind="tcp") if c.status == psutil.CONN_LISTEN}


def never_healthy(server: EmbeddedLlamaServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make `server` start a child that holds the inherited socket and never answers on it: a hung load."""

    def command(listening_fd: int) -> list[str]:
        return [sys.executable, "-c", "import time; time.sleep(3600)", llama_server_module.CHILD_MODULE]

    monkeypatch.setattr(server, "_command", command)


async def wait_for(predicate, timeout: float, interval: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(interval)
    return predicate()


@pytest.mark.slow
def test_start_is_health_gated_answers_and_stop_reaps_the_child(tmp_path: Path) -> None:
    async def scenario() -> None:
        server = make(tmp_path)
        assert server.state == "stopped" and server.base_url is None and server.pid is None
        assert server.model_id == "smollm2" and server.provider == "llama-cpp"
        await server.start()
        # start() returns at once; not "running" until /v1/models has answered 200.
        assert server.state == "starting" and server.base_url is None
        try:
            assert await wait_for(lambda: server.pid is not None, 5)
            pid = server.pid
            assert psutil.Process(pid).ppid() == os.getpid()
            assert server.state == "starting" and server.base_url is None
            assert await server.wait_ready(60), server.describe()
            assert server.state == "running" and server.pid == pid
            port = server.port
            assert server.base_url == f"http://127.0.0.1:{port}/v1"
            # The child serves on the socket the supervisor bound and handed down.
            assert port in listening_ports(pid)
            assert await chat(server.base_url, "smollm2", server.api_key)
            info = server.describe()
            assert info["state"] == "running" and info["pid"] == pid and info["port"] == port
            assert info["model"] == "smollm2" and info["restarts"] == 0 and info["last_exit"] is None
            assert Path(info["log"]).is_file() and Path(info["log"]).parent == tmp_path / "logs"
        finally:
            await server.stop()
        assert server.state == "stopped" and server.pid is None and server.base_url is None
        assert not psutil.pid_exists(pid)
        assert llama_children() == []
        assert not await server.wait_ready(0.1)

    asyncio.run(asyncio.wait_for(scenario(), 90))


@pytest.mark.slow
@pytest.mark.parametrize("run", LOOPS)
def test_a_killed_child_is_restarted_on_the_same_port(tmp_path: Path, run) -> None:
    async def scenario() -> None:
        server = make(tmp_path)
        await server.start()
        try:
            assert await server.wait_ready(60), server.describe()
            first_pid, port = server.pid, server.port
            assert first_pid is not None
            os.kill(first_pid, signal.SIGKILL)
            assert await wait_for(lambda: server.state != "running", 15), "the supervisor did not notice the death"
            assert server.state == "restarting" and server.base_url is None
            assert await server.wait_ready(60), server.describe()
            assert server.state == "running" and server.restarts == 1
            assert server.pid is not None and server.pid != first_pid
            assert server.last_exit == -signal.SIGKILL
            assert server.describe()["last_exit_text"] == "killed by SIGKILL"
            assert server.port == port  # the supervisor kept the socket, so the new child serves on it
            assert port in listening_ports(server.pid)
            assert not psutil.pid_exists(first_pid)  # reaped, not a zombie
            assert await chat(server.base_url, "smollm2", server.api_key)
            second_pid = server.pid
        finally:
            await server.stop()
        assert not psutil.pid_exists(second_pid)
        assert llama_children() == []

    run(asyncio.wait_for(scenario(), 100))


@pytest.mark.parametrize("run", LOOPS)
def test_stop_or_shutdown_at_any_moment_of_a_start_leaves_no_child(tmp_path: Path, run) -> None:
    # Stopping (or a loop shutdown cancelling the supervisor) while the child is being created
    # must neither hang nor orphan it.
    async def scenario(delay: float, stop: bool) -> None:
        server = make(tmp_path)
        await server.start()
        await asyncio.sleep(delay)
        if stop:
            await server.stop()
            assert server.state == "stopped" and server.pid is None

    # The delays only vary the moment of the stop; a hang shows as wait_for's TimeoutError.
    for stop in (True, False):
        for delay in (0, 0.0005, 0.001, 0.002, 0.005, 0.02, 0.2):
            run(asyncio.wait_for(scenario(delay, stop), 15))
            assert llama_children() == [], (stop, delay)


def test_a_missing_gguf_fails_clearly_without_a_child(tmp_path: Path) -> None:
    async def scenario() -> None:
        missing = tmp_path / "nope.gguf"
        server = make(tmp_path, gguf=missing, model_alias=None)
        assert server.model_id == "nope"
        await server.start()
        assert server.state == "failed" and server.pid is None and server.base_url is None
        assert str(missing) in server.error and "AISTACK_LLM__EMBEDDED__GGUF" in server.error
        assert server.describe()["retrying"] is False
        # No retry can fix it, so wait_ready answers False without suspending even once.
        waiting = server.wait_ready(3600)
        with pytest.raises(StopIteration) as returned:
            waiting.send(None)
        assert returned.value.value is False
        await server.stop()
        assert server.state == "stopped"

        unset = EmbeddedLlamaServer(EmbeddedLlmSettings(), log_dir=tmp_path)
        await unset.start()
        assert unset.state == "failed" and "AISTACK_LLM__EMBEDDED__GGUF" in unset.error
        await unset.stop()

    asyncio.run(asyncio.wait_for(scenario(), 10))
    assert llama_children() == []


def test_a_log_folder_that_cannot_be_made_is_a_failed_start_not_a_crash(tmp_path: Path) -> None:
    async def scenario() -> None:
        blocker = tmp_path / "a-file"
        blocker.write_text("")
        server = EmbeddedLlamaServer(EmbeddedLlmSettings(gguf=smollm2_gguf()), log_dir=blocker / "logs")
        await server.start()
        try:
            assert await wait_for(lambda: server.state == "failed", 5), server.describe()
            assert "could not start the server" in server.error and server.retrying and server.pid is None
        finally:
            await server.stop()
        assert server.state == "stopped"

    asyncio.run(asyncio.wait_for(scenario(), 20))
    assert llama_children() == []


def test_a_missing_library_is_named_with_the_install_command_without_importing_it(tmp_path: Path) -> None:
    # The gateway process never imports llama_cpp (its native library is the child's business).
    assert "llama_cpp" not in sys.modules
    assert llama_server_module.library_missing() is None  # installed here: `make test` installs it
    message = llama_server_module.library_missing(search_path=[str(tmp_path)])  # a path without it
    assert message is not None and "(llama_cpp, uvicorn" in message
    assert "pip install 'llama-cpp-python[server]" in message
    assert "llama_cpp" not in sys.modules


@pytest.mark.slow
def test_a_child_that_exits_at_once_backs_off_without_a_busy_loop(tmp_path: Path) -> None:
    async def scenario() -> None:
        server = make(tmp_path, extra_args=["--no-such-flag"], max_restart_delay_s=2.0)
        await server.start()
        try:
            # Each failed start is followed by a wait of 1 s, then 2 s, then 2 s (the cap). The test
            # polls on the supervisor's own loop, and its short poll timer comes due before the
            # supervisor's back-off timer, so it sees every failed state before the next attempt.
            delays = []
            for attempt in range(3):
                assert await wait_for(lambda a=attempt: server.state == "failed" and server.restarts == a, 30), server.describe()
                delays.append(server.describe()["retry_delay_s"])
                assert server.last_exit == 2  # argparse refused the flag
                assert server.describe()["retrying"] is True and server.base_url is None
            assert delays == [1.0, 2.0, 2.0]
            assert "exited before it was healthy" in server.error and str(server.log_path) in server.error
            log_text = server.log_path.read_text()
            assert "--no-such-flag" in log_text
            assert log_text.count("aistack starts:") == 3  # one start per attempt, no more
            assert not await server.wait_ready(0.2)
        finally:
            await server.stop()
        assert server.state == "stopped"

    asyncio.run(asyncio.wait_for(scenario(), 60))
    assert llama_children() == []


@pytest.mark.slow
def test_a_start_that_is_not_healthy_in_time_is_killed_and_retried(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async def scenario() -> None:
        server = make(tmp_path, start_timeout_s=0.3)
        never_healthy(server, monkeypatch)
        await server.start()
        try:
            assert await wait_for(lambda: server.pid is not None, 5)
            first_pid = server.pid
            assert await wait_for(lambda: server.state == "failed", 15), server.describe()
            assert "not healthy within 0.3 s" in server.error
            assert not psutil.pid_exists(first_pid)  # killed and reaped
            assert server.pid is None and server.base_url is None
            info = server.describe()
            assert info["retrying"] is True and info["retry_delay_s"] == 1.0
            # After the 1 s backoff it tries again (and fails again: this child never answers).
            assert await wait_for(lambda: server.restarts == 1, 30), server.describe()
        finally:
            await server.stop()
        assert llama_children() == []

    asyncio.run(asyncio.wait_for(scenario(), 60))


@pytest.mark.parametrize(("payload", "needle"), [
    ({"model": "m"}, "'prompt' is required"),
    ({"prompt": ""}, "empty"),
    ({"prompt": []}, "empty"),
    ({"prompt": [""]}, "empty"),
    ({"prompt": [[]]}, "empty"),
    ({"prompt": ["one", "two"]}, "holds 2 prompts"),
    ({"prompt": [[1, 2], [3]]}, "holds 2 prompts"),
])
def test_completions_llama_cpp_fails_on_are_refused_before_it_is_sent_them(payload: dict, needle: str) -> None:
    refusal = unservable_request("completions", payload)
    assert refusal is not None and refusal.status_code == 400 and refusal.param == "prompt", refusal
    assert needle in refusal.message and refusal.provider == "llama-cpp"


@pytest.mark.parametrize("payload", [{"prompt": "hi"}, {"prompt": ["hi"]}, {"prompt": [1, 2, 3]}, {"prompt": [[1, 2]]},
                                     {"prompt": None}, {"prompt": 5}])
def test_one_prompt_or_one_llama_cpp_refuses_itself_is_sent(payload: dict) -> None:
    assert unservable_request("completions", payload) is None
    assert unservable_request("chat/completions", {}) is None


@pytest.mark.slow
def test_the_shared_fixture_serves_smollm2(llama_server) -> None:  # noqa: F811
    assert llama_server.base_url.endswith("/v1") and llama_server.model_id == "smollm2"
    assert psutil.Process(llama_server.pid).ppid() == os.getpid()
    with httpx.Client(trust_env=False, timeout=10) as client:
        models = client.get(f"{llama_server.base_url}/models").json()
    assert [m["id"] for m in models["data"]] == ["smollm2"]
    assert asyncio.run(chat(llama_server.base_url, "smollm2"))


CHILD_SCRIPT = textwrap.dedent(
    """
    import asyncio, json, sys
    from pathlib import Path
    from aistack.engines.llama_server import EmbeddedLlamaServer, unservable_request
    from aistack.settings import EmbeddedLlmSettings

    async def main():
        server = EmbeddedLlamaServer(
            EmbeddedLlmSettings(gguf=sys.argv[1], model_alias="smollm2"), log_dir=Path(sys.argv[2])
        )
        await server.start()
        ok = await server.wait_ready(60)
        print(json.dumps({"ok": ok, "pid": server.pid}), flush=True)
        await asyncio.sleep(3600)

    asyncio.run(main())
    """
)


@pytest.mark.slow
def test_the_child_dies_when_the_gateway_is_killed_hard(tmp_path: Path) -> None:
    gateway = subprocess.Popen(
        [sys.executable, "-c", CHILD_SCRIPT, str(smollm2_gguf()), str(tmp_path / "logs")],
        stdout=subprocess.PIPE, text=True,
    )
    child: psutil.Process | None = None
    try:
        line = gateway.stdout.readline()
        info = json.loads(line)
        assert info["ok"] and info["pid"]
        child = psutil.Process(info["pid"])
        assert child.ppid() == gateway.pid
        gateway.kill()  # SIGKILL: no chance to stop the child in order
        gateway.wait(10)
        # PR_SET_PDEATHSIG sends it SIGTERM; as an orphan it is reaped by init (or a subreaper).
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and dying_or_gone(child) is False:
            time.sleep(0.05)
        assert dying_or_gone(child), "the llama.cpp server outlived the gateway that started it"
    finally:
        if gateway.poll() is None:
            gateway.kill()
            gateway.wait()
        gateway.stdout.close()
        if child is not None and not dying_or_gone(child):
            child.kill()


def dying_or_gone(process: psutil.Process) -> bool:
    try:
        return process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True
