"""Faults on a real gateway (`aistack serve` as a subprocess on the real engines): clients that
trickle, and a stop (SIGTERM) in the middle of work."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import select
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest
import websockets

from conftest import ENGLISH_SENTENCE, Gateway, pcm16_24k, start_gateway, stop_gateway, wait_until, words

pytestmark = pytest.mark.slow

MODEL = "whisper-tiny.en"


@pytest.fixture
def strict_gateway(models_cache: Path, tmp_path: Path) -> Iterator[Gateway]:
    gateway = start_gateway(models_cache, tmp_path, {"AISTACK_SERVER__HEADER_TIMEOUT_S": "1",
                                                     "AISTACK_SERVER__BODY_TIMEOUT_S": "2"})
    try:
        yield gateway
    finally:
        stop_gateway(gateway)


def connect(url: str) -> socket.socket:
    address = httpx.URL(url)
    sock = socket.create_connection((address.host, address.port), timeout=60)
    return sock


def read_until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (the socket's timeout bounds the wait)."""
    received = b""
    while chunk := sock.recv(65536):
        received += chunk
    return received


def test_clients_that_trickle_are_closed_and_do_not_delay_others(strict_gateway: Gateway, english_wav: Path) -> None:
    # Before: 50 connections sending a byte a second were never closed.
    trickling_headers = [connect(strict_gateway.url) for _ in range(20)]
    for sock in trickling_headers:
        sock.sendall(b"POST /v1/audio/transcriptions HTTP/1.1\r\nHo")
    trickling_body = connect(strict_gateway.url)
    trickling_body.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                           b"Content-Length: 1000\r\n\r\n{")
    try:
        with strict_gateway.client() as client, open(english_wav, "rb") as audio:
            assert client.get("/health").status_code == 200
            answer = client.post("/v1/audio/transcriptions", files={"file": audio}, data={"model": MODEL})
            assert answer.status_code == 200 and "fox" in answer.json()["text"].lower()
        for sock in trickling_headers:
            assert read_until_closed(sock) == b""  # closed by the header time limit, without an answer
        refused = read_until_closed(trickling_body)
        assert refused.startswith(b"HTTP/1.1 400")
        body = json.loads(refused.partition(b"\r\n\r\n")[2])
        assert body["error"]["kind"] == "malformed" and "BODY_TIMEOUT_S" in body["error"]["message"]
    finally:
        for sock in (*trickling_headers, trickling_body):
            sock.close()


def trickle_until_closed(sock: socket.socket, limit_s: float = 60.0) -> tuple[bytes, bool]:
    """Send a byte every quarter second (the slow client itself) until the server closes the connection
    or `limit_s` passes; what the server sent, and whether it closed."""
    received = b""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        try:
            sock.sendall(b"z")
        except OSError:  # reset: closed
            return received, True
        readable, _, _ = select.select([sock], [], [], 0.25)
        if readable:
            try:
                chunk = sock.recv(65536)
            except OSError:
                return received, True
            if not chunk:
                return received, True
            received += chunk
    return received, False


def test_a_body_still_trickling_after_its_answer_is_closed(strict_gateway: Gateway) -> None:
    # Before: a body the app never reads (a route without one, a refusal) was read and dropped by the
    # server for as long as it came, each byte putting off the keep-alive limit: never closed.
    sock = connect(strict_gateway.url)
    try:
        sock.sendall(b"GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100000\r\n\r\n{")
        received, closed = trickle_until_closed(sock)
        assert received.startswith(b"HTTP/1.1 200"), received[:200]
        assert closed, "the connection was still open after 60 s of a body trickling"
    finally:
        sock.close()


def running_jobs(client: httpx.Client) -> int:
    return sum(engine["running"] for engine in client.get("/ready").json()["engines"].values())


def transcription_running(gateway: Gateway, long_wav: Path) -> tuple[threading.Thread, dict[str, httpx.Response]]:
    """A transcription of `long_wav` sent from a thread, once its job runs; its response lands in the dict."""
    outcome: dict[str, httpx.Response] = {}

    def transcribe() -> None:
        with httpx.Client(base_url=gateway.url, timeout=180) as client, open(long_wav, "rb") as audio:
            outcome["response"] = client.post("/v1/audio/transcriptions", files={"file": audio}, data={"model": MODEL})

    worker = threading.Thread(target=transcribe)
    worker.start()
    with gateway.client() as client:
        assert wait_until(lambda: running_jobs(client) >= 1, timeout=60)
    return worker, outcome


def test_sigterm_lets_a_running_transcription_finish_within_the_grace_period(
        models_cache: Path, tmp_path: Path, long_wav: Path) -> None:
    # The stop's ordinary case: what runs when SIGTERM comes is answered in full, then the gateway exits.
    gateway = start_gateway(models_cache, tmp_path, {"AISTACK_SERVER__SHUTDOWN_GRACE_S": "120"})
    try:
        worker, outcome = transcription_running(gateway, long_wav)
        gateway.process.send_signal(signal.SIGTERM)
        gateway.process.wait(timeout=150)
        worker.join(timeout=30)
    finally:
        stop_gateway(gateway)
    response = outcome["response"]
    assert response.status_code == 200, response.text
    text = response.json()["text"].lower()
    assert "baker" in text and text.rstrip(".").endswith("goes to bed early")  # the whole of it, to its end


def test_sigterm_ends_a_running_transcription_with_the_envelope_and_leaves_no_child(
        models_cache: Path, tmp_path: Path, long_wav: Path) -> None:
    # No grace: whatever runs when the stop comes is ended by the drain. Before: a plain-text 500.
    gateway = start_gateway(models_cache, tmp_path, {"AISTACK_SERVER__SHUTDOWN_GRACE_S": "0"})
    try:
        worker, outcome = transcription_running(gateway, long_wav)
        children = psutil.Process(gateway.process.pid).children(recursive=True)
        gateway.process.send_signal(signal.SIGTERM)
        gateway.process.wait(timeout=30)
        worker.join(timeout=30)
    finally:
        stop_gateway(gateway)
    response = outcome["response"]
    assert response.headers["content-type"].startswith("application/json"), response.text
    if response.status_code != 200:  # it may have finished in the moment before the stop
        assert response.status_code == 503 and response.json()["error"]["kind"] == "busy"
        assert "stopping" in response.json()["error"]["message"] and int(response.headers["retry-after"]) >= 1
    assert wait_until(lambda: not any(child.is_running() and child.status() != psutil.STATUS_ZOMBIE
                                      for child in children), timeout=15), children


def test_sigterm_ends_an_open_event_stream_with_one_error_event(models_cache: Path, tmp_path: Path, long_wav: Path) -> None:
    # Before: a 200 event stream that just stopped.
    gateway = start_gateway(models_cache, tmp_path, {"AISTACK_SERVER__SHUTDOWN_GRACE_S": "0"})
    events: list[str] = []
    try:
        with gateway.client() as client, open(long_wav, "rb") as audio:
            with client.stream("POST", "/v1/audio/transcriptions", files={"file": audio},
                               data={"model": MODEL, "stream": "true"}) as stream:
                assert stream.status_code == 200
                lines = stream.iter_lines()
                for line in lines:
                    if line.startswith("data: "):
                        events.append(line)
                        gateway.process.send_signal(signal.SIGTERM)
                        break
                events += [line for line in lines if line.startswith("data: ")]
        gateway.process.wait(timeout=30)
    finally:
        stop_gateway(gateway)
    last = json.loads(events[-1].removeprefix("data: "))
    # The stream ends with a terminal event: the error (the stop came first) or the transcript's end.
    assert last["type"] in ("error", "transcript.text.done"), events[-3:]
    if last["type"] == "error":
        assert last["error"]["kind"] == "busy" and "stopping" in last["error"]["message"]
        assert sum('"type": "error"' in e or '"type":"error"' in e for e in events) == 1


@pytest.mark.parametrize("grace_s", [60, 0])
def test_sigterm_ends_a_realtime_session_with_one_error_event_and_close_1012(
        models_cache: Path, tmp_path: Path, english_wav: Path, grace_s: int) -> None:
    # Before: uvicorn dropped the socket at once (1012, nothing said); the audio sent was never transcribed.
    gateway = start_gateway(models_cache, tmp_path, {"AISTACK_SERVER__SHUTDOWN_GRACE_S": str(grace_s)})
    speech = pcm16_24k(english_wav)
    manual = {"type": "session.update", "session": {"type": "transcription", "audio": {"input": {
        "transcription": {"model": MODEL}, "turn_detection": None}}}}

    async def session() -> tuple[list[dict], int | None]:
        async with websockets.connect(gateway.url.replace("http://", "ws://", 1) + "/v1/realtime") as ws:
            assert json.loads(await ws.recv())["type"] == "session.created"
            await ws.send(json.dumps(manual))
            assert json.loads(await ws.recv())["type"] == "session.updated"
            for i in range(0, len(speech), 9600):
                await ws.send(json.dumps({"type": "input_audio_buffer.append",
                                          "audio": base64.b64encode(speech[i:i + 9600]).decode()}))
            await ws.send(json.dumps(manual))  # answered once every append before it is in the buffer
            assert json.loads(await ws.recv())["type"] == "session.updated"
            gateway.process.send_signal(signal.SIGTERM)  # the speech is in the buffer, never committed
            events = []
            with contextlib.suppress(websockets.ConnectionClosed):
                async for frame in ws:
                    events.append(json.loads(frame))
            return events, ws.close_code

    try:
        events, close_code = asyncio.run(session())
        gateway.process.wait(timeout=60)
    finally:
        stop_gateway(gateway)
    kinds = [event["type"] for event in events]
    if grace_s:  # what was sent is transcribed within the grace period, then the session ends
        assert kinds == ["input_audio_buffer.committed", "conversation.item.input_audio_transcription.completed", "error"]
        assert words(events[1]["transcript"]) == words(ENGLISH_SENTENCE)
    else:
        assert kinds == ["input_audio_buffer.committed", "error"]
    assert events[-1]["error"]["code"] == "busy" and "stopping" in events[-1]["error"]["message"]
    assert close_code == 1012
    assert "close='server stopping'" in gateway.log(), gateway.log()
