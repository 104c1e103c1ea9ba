"""Real incremental SSE, stopping work when the client leaves, and a free event loop during inference.

These run an in-process gateway so the test can watch the engine's progress (segment events) and
hold it at a chosen segment: the proofs are by order of events, not by wall time.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from conftest import ENGLISH_SENTENCE, wait_until, words

pytestmark = pytest.mark.slow

HOLD_LIMIT_S = 30  # a held engine is released after this, so a failing test cannot hang


class AccessLogWatcher(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []
        self.cancelled = threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        line = record.getMessage()
        self.lines.append(line)
        if " 499 " in line:
            self.cancelled.set()


@pytest.fixture
def access_log():
    watcher = AccessLogWatcher()
    logger = logging.getLogger("aistack.access")
    logger.addHandler(watcher)
    previous = logger.level
    logger.setLevel(logging.INFO)
    yield watcher
    logger.removeHandler(watcher)
    logger.setLevel(previous)


def hold_second_segment_until_cancelled(gateway, access_log: AccessLogWatcher):
    """Record decoded segments, holding the engine after the second until the access log shows 499."""
    decoded: list[int] = []

    def hold(model_id: str, index: int) -> None:
        decoded.append(index)
        if index == 1:
            access_log.cancelled.wait(HOLD_LIMIT_S)

    return decoded, gateway.runtime.events.on_step(hold)


def test_first_delta_reaches_the_client_before_the_last_segment_is_decoded(make_inprocess_gateway, long_wav: Path) -> None:
    gateway = make_inprocess_gateway()
    first_delta_seen = threading.Event()
    decoded: list[int] = []
    held_until_delta: list[bool] = []

    def hold_second_segment(model_id: str, index: int) -> None:
        decoded.append(index)
        if index == 1:
            # The engine may not go on until the client holds the first delta.
            held_until_delta.append(first_delta_seen.wait(HOLD_LIMIT_S))

    remove = gateway.runtime.events.on_step(hold_second_segment)
    try:
        with gateway.client() as client, open(long_wav, "rb") as audio:
            with client.stream("POST", "/v1/audio/transcriptions", files={"file": audio},
                               data={"model": "whisper-tiny.en", "stream": "true"}) as response:
                assert response.status_code == 200
                events = []
                decoded_at_first_delta = None
                for line in response.iter_lines():
                    if not line.startswith("data: "):
                        continue
                    event = json.loads(line[6:])
                    if event["type"] == "transcript.text.delta" and decoded_at_first_delta is None:
                        decoded_at_first_delta = len(decoded)
                        first_delta_seen.set()
                    events.append(event)
    finally:
        remove()
    total_segments = sum(1 for e in events if e["type"] == "transcript.text.segment")
    assert held_until_delta == [True]
    assert decoded_at_first_delta is not None and decoded_at_first_delta < total_segments
    assert total_segments >= 3
    assert events[-1]["type"] == "transcript.text.done"


def test_streaming_client_that_leaves_stops_decoding(make_inprocess_gateway, long_wav: Path, access_log) -> None:
    gateway = make_inprocess_gateway()
    decoded, remove = hold_second_segment_until_cancelled(gateway, access_log)
    try:
        with gateway.client() as client, open(long_wav, "rb") as audio:
            with client.stream("POST", "/v1/audio/transcriptions", files={"file": audio},
                               data={"model": "whisper-tiny.en", "stream": "true"}) as response:
                for line in response.iter_lines():
                    if line.startswith("data: "):
                        break  # leave after the first event
        assert access_log.cancelled.wait(HOLD_LIMIT_S), access_log.lines
        assert wait_until(lambda: gateway.runtime.scheduler.total_running() == 0)
    finally:
        remove()
    assert decoded == [0, 1]  # nothing decoded after the client left
    assert any("POST /v1/audio/transcriptions 499 model=whisper-tiny.en" in line for line in access_log.lines)


def test_waiting_client_that_leaves_stops_decoding(make_inprocess_gateway, long_wav: Path, access_log) -> None:
    gateway = make_inprocess_gateway()
    reached_first = threading.Event()
    decoded: list[int] = []

    def hold_first_until_cancelled(model_id: str, index: int) -> None:
        decoded.append(index)
        if index == 0:
            reached_first.set()
            access_log.cancelled.wait(HOLD_LIMIT_S)

    remove = gateway.runtime.events.on_step(hold_first_until_cancelled)
    try:
        # A client waiting for the whole transcript, which leaves once the engine is provably busy on it.
        with raw_transcription_request(gateway.url, long_wav, "whisper-tiny.en"):
            assert reached_first.wait(HOLD_LIMIT_S)
        assert access_log.cancelled.wait(HOLD_LIMIT_S), access_log.lines
        assert wait_until(lambda: gateway.runtime.scheduler.total_running() == 0)
    finally:
        remove()
    assert decoded in ([0], [0, 1])  # stopped at the next segment after the client left
    with gateway.client() as client, open(long_wav, "rb") as audio:
        assert client.post("/v1/audio/transcriptions", files={"file": audio}, data={"model": "whisper-tiny.en"}).status_code == 200


@contextmanager
def raw_transcription_request(url: str, wav: Path, model: str) -> Iterator[socket.socket]:
    """A non-streaming transcription sent whole on a plain socket, which is closed when the block ends."""
    address = urlsplit(url)
    boundary = "aistack-test-boundary"
    body = (
        f"--{boundary}\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\n{model}\r\n"
        f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"speech.wav\"\r\n"
        "Content-Type: audio/wav\r\n\r\n"
    ).encode() + wav.read_bytes() + f"\r\n--{boundary}--\r\n".encode()
    head = (
        f"POST /v1/audio/transcriptions HTTP/1.1\r\nHost: {address.hostname}\r\n"
        f"Content-Type: multipart/form-data; boundary={boundary}\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    with socket.create_connection((address.hostname, address.port)) as client:
        client.sendall(head + body)
        yield client


def test_health_answers_while_the_engine_is_busy(make_inprocess_gateway, long_wav: Path) -> None:
    gateway = make_inprocess_gateway()
    engine_inside = threading.Event()
    release = threading.Event()

    def hold_first_segment(model_id: str, index: int) -> None:
        if index == 0:
            engine_inside.set()
            release.wait(HOLD_LIMIT_S)

    remove = gateway.runtime.events.on_step(hold_first_segment)
    try:
        with ThreadPoolExecutor(1) as pool, gateway.client() as client:
            def transcribe() -> httpx.Response:
                with open(long_wav, "rb") as audio:
                    return client.post("/v1/audio/transcriptions", files={"file": audio}, data={"model": "whisper-base"})

            pending = pool.submit(transcribe)
            assert engine_inside.wait(HOLD_LIMIT_S)
            # The engine's worker is mid-transcription; the event loop must still answer.
            health = client.get("/health", timeout=5)
            assert health.status_code == 200 and gateway.runtime.scheduler.total_running() == 1
            release.set()
            # And during real decoding, with nothing held:
            answered_while_running = 0
            while not pending.done():
                if client.get("/health", timeout=5).status_code == 200 and not pending.done():
                    answered_while_running += 1
                time.sleep(0.1)
            assert pending.result().status_code == 200
            assert answered_while_running >= 1
    finally:
        release.set()
        remove()


def test_concurrent_first_requests_load_the_model_once(make_inprocess_gateway, english_wav: Path, caplog) -> None:
    caplog.set_level(logging.INFO, logger="aistack.engines.whisper")
    gateway = make_inprocess_gateway()
    with ThreadPoolExecutor(3) as pool, gateway.client() as client:
        def transcribe(_: int) -> httpx.Response:
            with open(english_wav, "rb") as audio:
                return client.post("/v1/audio/transcriptions", files={"file": audio}, data={"model": "whisper-tiny.en"})

        responses = list(pool.map(transcribe, range(3)))
    assert [r.status_code for r in responses] == [200, 200, 200]
    # Each against the sentence spoken, not against each other (two runs of a model are not the reference).
    assert all(words(r.json()["text"]) == words(ENGLISH_SENTENCE) for r in responses), [r.json()["text"] for r in responses]
    loads = [r for r in caplog.records if r.getMessage().startswith("loaded whisper-tiny.en")]
    assert len(loads) == 1
