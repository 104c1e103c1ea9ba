"""Bad input gets the envelope with the right kind and a message that says what to do; nothing leaks."""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Iterator
from pathlib import Path

import av
import numpy as np
import pytest

from conftest import Gateway, assert_envelope, start_gateway, stop_gateway

pytestmark = pytest.mark.slow

ONNXRUNTIME_SESSION_FILE = ".ses"


@pytest.fixture(scope="module")
def small_limit_gateway(models_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    running = start_gateway(models_cache, tmp_path_factory.mktemp("limited"), {"AISTACK_MAX_UPLOAD_MB": "0.1"})
    try:
        yield running
    finally:
        stop_gateway(running)


def video_without_audio() -> bytes:
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="mp4") as container:
        stream = container.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for i in range(10):
            frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), i * 20, dtype=np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buffer.getvalue()


def transcribe(gateway: Gateway, content: bytes | None, **fields):
    files = {"file": ("upload.wav", content, "application/octet-stream")} if content is not None else None
    with gateway.client() as client:
        return client.post("/v1/audio/transcriptions", data={"model": "whisper-tiny.en", **fields}, files=files)


def test_empty_file(gateway: Gateway) -> None:
    assert_envelope(transcribe(gateway, b""), 400, "malformed", "file", "empty")


def test_random_bytes(gateway: Gateway) -> None:
    noise = np.random.default_rng(7).integers(0, 256, 20_000, dtype=np.uint8).tobytes()
    assert_envelope(transcribe(gateway, noise), 400, "malformed", "file", "could not read")


def test_wav_cut_in_the_data(gateway: Gateway, english_wav: Path) -> None:
    data = english_wav.read_bytes()
    assert_envelope(transcribe(gateway, data[: len(data) // 3]), 400, "malformed", "file", "cut off", "complete file")


def test_wav_cut_in_the_header(gateway: Gateway, english_wav: Path) -> None:
    assert_envelope(transcribe(gateway, english_wav.read_bytes()[:30]), 400, "malformed", "file")


def test_file_with_no_audio_stream(gateway: Gateway) -> None:
    assert_envelope(transcribe(gateway, video_without_audio()), 400, "malformed", "file", "no audio stream")


def test_missing_file(gateway: Gateway) -> None:
    with gateway.client() as client:
        response = client.post("/v1/audio/transcriptions", data={"model": "auto"}, files={"other": ("x", b"x")})
    assert_envelope(response, 400, "malformed", "file", "'file' is required")


def test_unknown_response_format(gateway: Gateway, english_wav: Path) -> None:
    error = assert_envelope(transcribe(gateway, english_wav.read_bytes(), response_format="xml"), 400, "malformed", "response_format")
    assert "verbose_json" in error["message"]


def test_unknown_model_lists_the_visible_ids(gateway: Gateway, english_wav: Path) -> None:
    response = transcribe(gateway, english_wav.read_bytes(), model="whisper-huge")
    assert_envelope(response, 404, "not_found", "model", "whisper-huge", "auto", "whisper-tiny.en", "whisper-base")


def test_known_but_not_installed_model_says_how_to_install(gateway: Gateway, english_wav: Path) -> None:
    response = transcribe(gateway, english_wav.read_bytes(), model="whisper-small")
    assert response.status_code == 503
    error = response.json()["error"]
    assert error["kind"] == "network" and "faster-whisper-small" in error["message"]


def test_language_not_iso_639_1(gateway: Gateway, english_wav: Path) -> None:
    assert_envelope(transcribe(gateway, english_wav.read_bytes(), language="english"), 400, "malformed", "language", "ISO 639-1")


def test_temperature_out_of_range(gateway: Gateway, english_wav: Path) -> None:
    assert_envelope(transcribe(gateway, english_wav.read_bytes(), temperature="3"), 400, "malformed", "temperature")


def test_granularities_without_verbose_json(gateway: Gateway, english_wav: Path) -> None:
    response = transcribe(gateway, english_wav.read_bytes(), **{"timestamp_granularities[]": "word"})
    assert_envelope(response, 400, "malformed", "timestamp_granularities", "verbose_json")


def test_upload_over_the_limit_with_content_length(small_limit_gateway: Gateway, english_wav: Path) -> None:
    assert english_wav.stat().st_size > 0.1 * 1024 * 1024
    assert_envelope(transcribe(small_limit_gateway, english_wav.read_bytes()), 413, "overflow", None, "0.1 MB")


def test_upload_over_the_limit_without_content_length(small_limit_gateway: Gateway, english_wav: Path) -> None:
    data = english_wav.read_bytes()
    boundary = "aistackboundary"
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\n"
            "Content-Type: audio/wav\r\n\r\n").encode()
    tail = f"\r\n--{boundary}--\r\n".encode()
    sent = 0

    def chunked() -> Iterator[bytes]:
        nonlocal sent
        for part in [head] + [data[i : i + 16384] for i in range(0, len(data), 16384)] + [tail]:
            sent += len(part)
            yield part

    with small_limit_gateway.client() as client:
        response = client.post("/v1/audio/transcriptions", content=chunked(),
                               headers={"content-type": f"multipart/form-data; boundary={boundary}"})
    assert "content-length" not in response.request.headers
    assert_envelope(response, 413, "overflow", None, "0.1 MB")


def test_unknown_route_and_wrong_method(gateway: Gateway) -> None:
    with gateway.client() as client:
        assert_envelope(client.get("/v1/nothing-here"), 404, "not_found", None, "/v1/nothing-here")
        assert_envelope(client.get("/v1/audio/transcriptions"), 400, "malformed", None, "GET", "use POST")


def test_after_bad_input_the_server_serves_and_left_no_temp_files(
    gateway: Gateway, english_wav: Path, request: pytest.FixtureRequest
) -> None:
    # Runs last in this module: every bad request above went to the same gateway process.
    # Over 1 MB an upload is spooled to a file on disk; an undecodable one must not leave it open.
    big_noise = np.random.default_rng(3).integers(0, 256, 2 * 1024 * 1024, dtype=np.uint8).tobytes()
    assert_envelope(transcribe(gateway, big_noise), 400, "malformed", "file")
    response = transcribe(gateway, english_wav.read_bytes())
    assert response.status_code == 200 and response.json()["text"]
    with gateway.client() as client:
        assert client.get("/health").json()["status"] == "ok"
    # onnxruntime (Piper, Silero VAD) writes its telemetry session id to TMPDIR/.ses once per process.
    assert [name for name in os.listdir(gateway.tmpdir) if name != ONNXRUNTIME_SESSION_FILE] == []
    # Anonymous temp files are unlinked at once, so look at what the process still holds open.
    held = []
    for fd in os.listdir(f"/proc/{gateway.process.pid}/fd"):
        with contextlib.suppress(FileNotFoundError):  # closed between the listing and the look (a socket)
            held.append(os.readlink(f"/proc/{gateway.process.pid}/fd/{fd}"))
    assert [target for target in held if str(gateway.tmpdir) in target or "(deleted)" in target] == []


@pytest.mark.parametrize("value", [0, 1, "true"])
def test_speech_whole_file_is_a_boolean_not_a_guess(gateway: Gateway, value) -> None:
    with gateway.client() as client:
        response = client.post("/v1/audio/speech", json={"input": "Hello.", "whole_file": value})
    assert_envelope(response, 400, "malformed", "whole_file", "whole_file: Input should be a valid boolean")
