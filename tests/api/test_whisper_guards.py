"""Whisper through the gateway: near-silence costs no decoding, and a client that leaves stops the
engine within one bounded piece. Proofs by what the engine was asked to decode, never by wall time."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import threading
import wave
from collections.abc import Callable
from pathlib import Path

import pytest

from aistack.settings import WhisperSettings
from conftest import Gateway

pytestmark = pytest.mark.slow

HOLD_LIMIT_S = 30  # a held engine is released after this, so a failing test cannot hang
GARBAGE_PROMPT = b"\x80\x81\xfe"  # not UTF-8: the gateway reads it as U+FFFD


def silent_wav(seconds: float) -> bytes:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(16000)
        out.writeframes(b"\x00\x00" * int(16000 * seconds))
    return buffer.getvalue()


@pytest.mark.parametrize("seconds", [0.01, 2.0])
@pytest.mark.parametrize("model", ["whisper-tiny.en", "whisper-base"])
def test_near_silence_with_a_garbage_prompt_is_an_empty_transcript(gateway: Gateway, model: str, seconds: float) -> None:
    with gateway.client() as client:
        response = client.post(
            "/v1/audio/transcriptions",
            files={"file": ("quiet.wav", silent_wav(seconds), "audio/wav")},
            data={"model": model, "prompt": GARBAGE_PROMPT, "response_format": "verbose_json"},
        )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["text"] == "" and body["segments"] == []
    assert body["duration"] == pytest.approx(seconds, abs=0.001)


class PieceRecorder:
    """The loaded faster-whisper model, recording each piece it decodes and whether the client had
    already gone; it holds the second piece until the gateway has seen the client leave."""

    def __init__(self, model, client_gone: threading.Event) -> None:
        self._model = model
        self._client_gone = client_gone
        self.pieces: list[tuple[int, bool]] = []  # (samples, started after the client left)

    def transcribe(self, audio, **options):
        if len(self.pieces) == 1:
            self._client_gone.wait(HOLD_LIMIT_S)
        self.pieces.append((int(audio.shape[0]), self._client_gone.is_set()))
        return self._model.transcribe(audio, **options)

    def __getattr__(self, name: str):
        return getattr(self._model, name)


class Disconnects(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.seen = threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if " 499 " in record.getMessage():
            self.seen.set()


@contextlib.contextmanager
def watching_disconnects():
    """An event set when the gateway logs a client that left (499)."""
    disconnects = Disconnects()
    access = logging.getLogger("aistack.access")
    previous_level = access.level
    access.addHandler(disconnects)
    access.setLevel(logging.INFO)
    try:
        yield disconnects.seen
    finally:
        disconnects.seen.set()
        access.removeHandler(disconnects)
        access.setLevel(previous_level)


def load_base(gateway, english_wav: Path) -> None:
    with gateway.client() as client, open(english_wav, "rb") as audio:
        assert client.post("/v1/audio/transcriptions", files={"file": audio}, data={"model": "whisper-base"}).status_code == 200


def gateway_with_base_loaded(make_inprocess_gateway, english_wav: Path, *, worker_process: bool):
    gateway = make_inprocess_gateway(whisper=WhisperSettings(worker_process=worker_process))
    load_base(gateway, english_wav)
    return gateway


def stream_and_leave_at_the_first_words(gateway, long_wav: Path) -> None:
    with gateway.client() as client, open(long_wav, "rb") as audio:
        with client.stream("POST", "/v1/audio/transcriptions", files={"file": audio},
                           data={"model": "whisper-base", "stream": "true"}) as response:
            assert response.status_code == 200
            for line in response.iter_lines():
                if line.startswith("data: ") and json.loads(line[6:])["type"] == "transcript.text.delta":
                    break


def leave_the_stream_until_the_slot_is_back(gateway, long_wav: Path, client_gone: threading.Event,
                                            restore_model: Callable[[], None]) -> None:
    """Stream, leave at the first words, and wait until the gateway saw the client go and gave the slot
    back; then let the decoder go on and put the model the test swapped in back with `restore_model`."""
    from conftest import wait_until

    try:
        stream_and_leave_at_the_first_words(gateway, long_wav)
        assert client_gone.wait(HOLD_LIMIT_S)
        assert wait_until(lambda: gateway.runtime.scheduler.total_running() == 0)
    finally:
        client_gone.set()
        restore_model()


def test_streaming_client_that_leaves_stops_whisper_base_within_one_bounded_piece(
    make_inprocess_gateway, english_wav: Path, long_wav: Path
) -> None:
    # In-process, so the decoder itself can be watched (the worker process's test is below).
    gateway = gateway_with_base_loaded(make_inprocess_gateway, english_wav, worker_process=False)
    transcriber = gateway.runtime.lifecycle.entry("whisper-base").model
    with watching_disconnects() as client_gone:
        recorder = PieceRecorder(transcriber._model, client_gone)
        transcriber._model = recorder

        def restore_model() -> None:
            transcriber._model = recorder._model

        leave_the_stream_until_the_slot_is_back(gateway, long_wav, client_gone, restore_model)
    limit = transcriber._settings.max_piece_s * 16000
    started_after_leaving = [samples for samples, after in recorder.pieces if after]
    assert len(started_after_leaving) <= 1, recorder.pieces
    assert len(recorder.pieces) <= 2, recorder.pieces  # the clip has at least six pieces
    assert all(samples <= limit for samples, _ in recorder.pieces), recorder.pieces


class HeldAfterFirstSegment:
    """The hosted model as the gateway sees it; the pull after the first segment waits until the
    gateway has seen the client leave (the worker decodes a segment only when one is pulled)."""

    def __init__(self, hosted, client_gone: threading.Event) -> None:
        self.hosted = hosted
        self.card = hosted.card
        self._client_gone = client_gone

    def close(self) -> None:
        self.hosted.close()

    def transcribe(self, audio, options):
        info, segments = self.hosted.transcribe(audio, options)
        return info, self._held(segments)

    def _held(self, segments):
        try:
            for number, segment in enumerate(segments):
                yield segment
                if number == 0:
                    self._client_gone.wait(HOLD_LIMIT_S)
        finally:
            segments.close()


def test_streaming_client_that_leaves_stops_the_whisper_worker_within_one_piece(
    make_inprocess_gateway, english_wav: Path, long_wav: Path
) -> None:
    from aistack.engines.worker_process import HostedTranscriber

    gateway = gateway_with_base_loaded(make_inprocess_gateway, english_wav, worker_process=True)
    entry = gateway.runtime.lifecycle.entry("whisper-base")
    hosted = entry.model
    assert isinstance(hosted, HostedTranscriber)
    with watching_disconnects() as client_gone:
        entry.model = HeldAfterFirstSegment(hosted, client_gone)

        def restore_model() -> None:
            entry.model = hosted

        leave_the_stream_until_the_slot_is_back(gateway, long_wav, client_gone, restore_model)
    report = hosted.reports[-1]  # the streamed job's, told by the worker before the slot came back
    assert not report.ran_to_end
    assert report.progress["pieces"] >= 6
    assert report.progress["pieces_decoded"] <= 2, report  # the piece being decoded and at most one more


class KillsWorkerAfterFirstSegment:
    """The hosted model as the gateway sees it; once the first segment is out, its worker is killed."""

    def __init__(self, hosted) -> None:
        self.hosted = hosted
        self.card = hosted.card
        self.killed: list[int] = []

    def close(self) -> None:
        self.hosted.close()

    def transcribe(self, audio, options):
        info, segments = self.hosted.transcribe(audio, options)
        return info, self._killing(segments)

    def _killing(self, segments):
        import os
        import signal

        for segment in segments:
            yield segment
            if not self.killed:
                self.killed.append(self.hosted.pid)
                os.kill(self.hosted.pid, signal.SIGKILL)


def test_a_whisper_worker_that_dies_mid_request_is_a_500_naming_the_engine_and_the_next_request_works(
    make_inprocess_gateway, english_wav: Path, long_wav: Path
) -> None:
    from conftest import assert_envelope, wait_until

    gateway = make_inprocess_gateway(whisper=WhisperSettings(worker_process=True))
    with gateway.client() as client:
        assert client.post("/admin/models/whisper-tiny.en/load").status_code == 200
    entry = gateway.runtime.lifecycle.entry("whisper-tiny.en")
    hosted = entry.model
    entry.model = killer = KillsWorkerAfterFirstSegment(hosted)
    try:
        with gateway.client() as client, open(long_wav, "rb") as audio:
            response = client.post("/v1/audio/transcriptions", files={"file": audio}, data={"model": "whisper-tiny.en"})
    finally:
        entry.model = hosted
    (pid,) = killer.killed
    assert_envelope(response, 500, "unknown", None, "faster-whisper", f"worker process {pid} died during this job",
                    provider="faster-whisper")
    assert wait_until(lambda: gateway.runtime.scheduler.total_running() == 0)  # the slot came back
    with gateway.client() as client, open(english_wav, "rb") as audio:
        again = client.post("/v1/audio/transcriptions", files={"file": audio}, data={"model": "whisper-tiny.en"})
    assert again.status_code == 200 and "fox" in again.json()["text"].lower()
    assert hosted.pid not in (None, pid)  # a fresh worker
