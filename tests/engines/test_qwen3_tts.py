"""The Qwen3-TTS upstream on its own: the error-body reader, the request it sends, its probe and its
streaming call, against the loopback vLLM-Omni double (DESIGN §1, §4, §6). Its audio body decoder is
tested in tests/audio/test_wav_stream.py."""

from __future__ import annotations

import asyncio
import json
import math
import time
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pytest

from aistack.engines.base import SpeechOptions
from aistack.engines.qwen3_tts import (
    COMPOSE_COMMAND,
    ENABLE_SETTING,
    Qwen3TtsBackend,
)
from aistack.engines.upstream_errors import MAX_MESSAGE_CHARS, upstream_message
from aistack.errors import AistackError, ErrorKind
from aistack.settings import Qwen3TtsSettings
from conftest import refused_url
from doubles.qwen3_tts_server import DEFAULT_MODEL, Qwen3TtsDouble

# -- upstream_message -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "status", "expected"),
    [
        # vLLM's ErrorResponse (what vLLM-Omni sends).
        ({"error": {"message": "Invalid voice 'bob'.", "type": "BadRequestError", "param": "voice", "code": 400}},
         400, ("Invalid voice 'bob'.", "voice")),
        ({"error": {"message": "The model `x` does not exist.", "type": "NotFoundError", "param": None, "code": 404}},
         404, ("The model `x` does not exist.", None)),
        # Older vLLM: the same fields at the top level.
        ({"object": "error", "message": "input too long", "type": "BadRequestError", "param": "input", "code": 400},
         400, ("input too long", "input")),
        # vLLM's API-key middleware.
        ({"error": "Unauthorized"}, 401, ("Unauthorized", None)),
        # FastAPI's own answers, plain and as validation errors.
        ({"detail": "Not Found"}, 404, ("Not Found", None)),
        ({"detail": [{"loc": ["body", "input"], "msg": "Field required", "type": "missing"}, "odd item"]},
         422, ("Field required; odd item", None)),
        # A param that is not a string is not a field name.
        ({"error": {"message": "bad", "param": 3}}, 400, ("bad", None)),
    ],
)
def test_upstream_message_reads_every_known_error_shape(body: dict, status: int, expected: tuple) -> None:
    assert upstream_message(json.dumps(body).encode(), status) == expected


def test_upstream_message_quotes_anything_else_as_text() -> None:
    assert upstream_message(b"Internal Server Error\n", 500) == ("Internal Server Error", None)
    assert upstream_message(b"", 502) == ("HTTP 502 with an empty body", None)
    assert upstream_message(b"   ", 503) == ("HTTP 503 with an empty body", None)
    assert upstream_message(b'["a", "b"]', 500) == ('["a", "b"]', None)
    assert upstream_message(b'{"status": "unhealthy"}', 503) == ('{"status": "unhealthy"}', None)
    assert upstream_message(b"<html><body>Bad Gateway</body></html>", 502)[0] == "<html><body>Bad Gateway</body></html>"
    # Not UTF-8: replaced, never raised.
    message, _ = upstream_message(b"bad \xff\xfe bytes", 500)
    assert message.startswith("bad ") and message.endswith(" bytes")


def test_upstream_message_is_cut_to_a_readable_length() -> None:
    long = "x" * (MAX_MESSAGE_CHARS * 3)
    message, _ = upstream_message(json.dumps({"error": {"message": long}}).encode(), 500)
    assert len(message) == MAX_MESSAGE_CHARS + 1 and message.endswith("…")
    message, _ = upstream_message(long.encode(), 500)
    assert len(message) == MAX_MESSAGE_CHARS + 1


# -- request_body -----------------------------------------------------------------------------


def backend_for(url: str = "http://127.0.0.1:9", probe_timeout_s: float = 0.5, **overrides) -> Qwen3TtsBackend:
    return Qwen3TtsBackend(Qwen3TtsSettings(base_url=url, **overrides), probe_timeout_s)


def test_request_body_asks_for_streamed_pcm_and_passes_extension_fields_through() -> None:
    backend = backend_for()
    extra = {"task_type": "Base", "language": "English", "ref_audio": "data:audio/wav;base64,AAAA",
             "ref_text": "Hello.", "max_new_tokens": 77, "x_vector_only_mode": False}
    options = SpeechOptions(voice="vivian", speed=1.0, instructions="Speak softly", extra=extra)
    body = backend.request_body(backend.card(), "Say this.", options)
    assert body == {
        "input": "Say this.", "model": DEFAULT_MODEL, "voice": "vivian", "response_format": "pcm",
        "stream": True, "stream_format": "audio", "instructions": "Speak softly", **extra,
    }


def test_request_body_ignores_reserved_fields_in_extra_and_never_sends_speed() -> None:
    backend = backend_for()
    reserved = {"input": "other text", "model": "other", "voice": "ryan", "response_format": "mp3", "stream": False,
                "stream_format": "sse", "speed": 3.0, "instructions": "shout"}
    options = SpeechOptions(voice="vivian", speed=2.0, instructions=None, extra={**reserved, "language": "German"})
    body = backend.request_body(backend.card(), "Text.", options)
    assert body == {"input": "Text.", "model": DEFAULT_MODEL, "voice": "vivian", "response_format": "pcm",
                    "stream": True, "stream_format": "audio", "language": "German"}
    assert backend.native_speed is False  # the gateway time-stretches instead


# -- probe ------------------------------------------------------------------------------------


@pytest.fixture
def double():
    started: list[Qwen3TtsDouble] = []

    def make(**kwargs) -> Qwen3TtsDouble:
        server = Qwen3TtsDouble(**kwargs).start()
        started.append(server)
        return server

    yield make
    for server in started:
        server.close()


def test_probe_lists_the_model_while_health_answers_200(double) -> None:
    server = double(speakers=("alice", "Ryan"))
    backend = backend_for(server.url)
    status = backend.probe()
    assert status.unavailable == ()
    (card,) = status.cards
    assert card.id == DEFAULT_MODEL and card.provider == "qwen3-tts"
    assert card.capabilities == ("tts",) and card.supports_streaming
    assert card.created > 0
    # The speakers come from the server's own listing once it answers.
    assert [(v.id, v.name) for v in backend.voices(card)] == [("alice", "alice"), ("ryan", "Ryan")]
    assert [r.path for r in server.requests] == ["/health", "/v1/audio/voices"]


def test_probe_of_a_refused_port_says_nothing_answers_and_how_to_start_it() -> None:
    with refused_url() as url:  # bound, never listening: surely refused, and nobody else can take it
        status = backend_for(url).probe()
    assert status.cards == ()
    (missing,) = status.unavailable
    assert missing.subject == DEFAULT_MODEL
    assert f"nothing answers at {url}" in missing.reason
    assert COMPOSE_COMMAND in missing.fix


@pytest.mark.parametrize("mode", ["503", "refuse"])
def test_probe_while_the_server_warms_up_is_unavailable_then_visible(double, mode: str) -> None:
    # Warm (503, or bound but not listening) until the test ends the warm-up below.
    server = double(warmup_s=math.inf, warmup_mode=mode)
    backend = backend_for(server.url)
    status = backend.probe()
    assert status.cards == ()
    (missing,) = status.unavailable
    if mode == "503":
        assert "answered 503: No engine initialized" in missing.reason
    else:
        assert "nothing answers" in missing.reason
    assert COMPOSE_COMMAND in missing.fix
    assert not backend.probe().cards  # still warm: only end_warmup() ends it
    server.end_warmup()
    deadline = time.monotonic() + 30
    while not backend.probe().cards:
        assert time.monotonic() < deadline, "still not visible after the warm-up"
        time.sleep(0.05)


def test_probe_of_a_hung_health_check_answers_within_the_probe_timeout(double) -> None:
    # It would hang for a minute: only the probe's own budget ends the wait with this reason.
    server = double(hang_health=True, max_hang_s=60)
    backend = backend_for(server.url, probe_timeout_s=0.5)
    status = backend.probe()
    (missing,) = status.unavailable
    assert "did not answer within" in missing.reason
    assert COMPOSE_COMMAND in missing.fix


def test_disabled_backend_is_unavailable_without_touching_the_network(double) -> None:
    server = double()
    status = backend_for(server.url, enabled=False).probe()
    assert status.cards == ()
    (missing,) = status.unavailable
    assert "disabled" in missing.reason
    assert ENABLE_SETTING in missing.fix and COMPOSE_COMMAND in missing.fix
    assert server.requests == []


def test_voices_keep_the_builtin_speakers_when_the_server_cannot_list_them(double) -> None:
    server = double(voices_endpoint=False)
    backend = backend_for(server.url)
    (card,) = backend.probe().cards
    assert "vivian" in [v.id for v in backend.voices(card)]
    assert backend.default_voice(card) == "vivian"


# -- speak ------------------------------------------------------------------------------------


async def collect(backend: Qwen3TtsBackend, text: str, **options) -> np.ndarray:
    try:
        chunks = [c.samples async for c in backend.speak(backend.card(), text, SpeechOptions(voice="vivian", **options))]
    finally:
        await backend.aclose()
    return np.concatenate(chunks)


@pytest.mark.parametrize("odd", [False, True])
def test_speak_relays_the_whole_stream(double, odd: bool) -> None:
    server = double(odd_boundaries=odd, chunk_seconds=0.05)
    text = "A sentence of moderate length."
    samples = asyncio.run(asyncio.wait_for(collect(backend_for(server.url), text), 10))
    assert samples.size == server.samples_for(text)
    call = server.speech_calls[0]
    assert call.done.wait(5) and call.outcome == "complete"


def test_speak_reads_a_streamed_wav_body_too(double) -> None:
    server = double(odd_boundaries=True)
    backend = backend_for(server.url)
    backend.response_format = "wav"  # what releases that stream WAV are asked for
    samples = asyncio.run(asyncio.wait_for(collect(backend, "Hello there."), 10))
    assert samples.size == server.samples_for("Hello there.")
    assert server.speech_bodies[0]["response_format"] == "wav"


def test_speak_sends_the_api_key(double) -> None:
    server = double(api_key="sekrit")
    asyncio.run(asyncio.wait_for(collect(backend_for(server.url, api_key="sekrit"), "Hi there."), 10))
    assert server.requests[-1].headers["authorization"] == "Bearer sekrit"
    with pytest.raises(AistackError) as caught:
        asyncio.run(asyncio.wait_for(collect(backend_for(server.url, api_key="wrong"), "Hi there."), 10))
    assert caught.value.kind is ErrorKind.UNKNOWN
    assert "refused the gateway's credentials (401: Unauthorized)" in caught.value.message
    assert "AISTACK_TTS__QWEN3__API_KEY" in caught.value.message


@pytest.mark.parametrize(
    ("fault_kwargs", "kind", "words"),
    [
        ({"fault": "error_500"}, ErrorKind.UNKNOWN, "qwen3-tts failed (500): EngineCore encountered an issue"),
        ({"fault": "drop", "drop_after_chunks": 2}, ErrorKind.UNKNOWN, "dropped the connection after 0.4 s of audio"),
        ({"fault": "hang"}, ErrorKind.TIMEOUT, "did not answer within 0.3 s"),
        ({"fault": "stall"}, ErrorKind.TIMEOUT, "sent nothing for 0.3 s after 0.2 s of audio"),
        ({"warmup_s": math.inf}, ErrorKind.NETWORK, "still loading"),
    ],
)
def test_speak_failures_are_errors_of_the_right_kind(double, fault_kwargs: dict, kind: ErrorKind, words: str) -> None:
    server = double(max_hang_s=5, **fault_kwargs)
    backend = backend_for(server.url, read_timeout_s=0.3)
    with pytest.raises(AistackError) as caught:
        asyncio.run(asyncio.wait_for(collect(backend, "A long enough sentence to be split into chunks."), 10))
    assert caught.value.kind is kind, caught.value.message
    assert caught.value.provider == "qwen3-tts"
    assert words in caught.value.message


def test_speak_to_a_stopped_server_is_a_network_error_saying_how_to_start_it() -> None:
    with refused_url() as url, pytest.raises(AistackError) as caught:
        asyncio.run(asyncio.wait_for(collect(backend_for(url), "Hello."), 10))
    assert caught.value.kind is ErrorKind.NETWORK
    assert COMPOSE_COMMAND in caught.value.message


def test_speak_rejected_by_the_server_is_malformed_with_its_words(double) -> None:
    server = double()
    with pytest.raises(AistackError) as caught:
        asyncio.run(asyncio.wait_for(collect(backend_for(server.url), "Hallo.", extra={"language": "Klingon"}), 10))
    assert caught.value.kind is ErrorKind.MALFORMED
    assert "Invalid language 'Klingon'" in caught.value.message


def test_a_server_running_another_model_is_a_configuration_error_not_the_clients(double) -> None:
    server = double(model="Qwen/Qwen3-TTS-12Hz-1.7B-CustomVoice")
    with pytest.raises(AistackError) as caught:
        asyncio.run(asyncio.wait_for(collect(backend_for(server.url), "Hello."), 10))
    assert caught.value.kind is ErrorKind.UNKNOWN
    assert "does not serve Qwen/Qwen3-TTS-12Hz-0.6B-CustomVoice" in caught.value.message
    assert "AISTACK_TTS__QWEN3__MODEL" in caught.value.message


def test_closing_the_stream_early_closes_the_upstream_request(double) -> None:
    server = double(step=True)  # one chunk released: the double holds the second until the client has left
    server.release_next_chunk()
    backend = backend_for(server.url)

    async def first_chunk_then_leave() -> None:
        stream = backend.speak(backend.card(), "Long enough to take a few seconds to stream out. " * 2,
                               SpeechOptions(voice="vivian"))
        try:
            assert (await anext(stream)).samples.size > 0
        finally:
            await stream.aclose()
            await backend.aclose()

    asyncio.run(asyncio.wait_for(first_chunk_then_leave(), 10))
    call = server.speech_calls[0]
    assert call.done.wait(10)
    assert call.client_gone, call.outcome
    assert call.chunks_sent == 1 and call.audio_bytes_sent < call.audio_bytes_total


# -- the shipped compose file -----------------------------------------------------------------


def test_the_compose_file_the_messages_name_serves_the_configured_model_where_aistack_looks() -> None:
    root = Path(__file__).resolve().parents[2]
    path = root / COMPOSE_COMMAND.split(" -f ")[1].split()[0]
    text = path.read_text()
    defaults = Qwen3TtsSettings()
    address = urlsplit(defaults.base_url)
    assert address.hostname == "127.0.0.1"
    assert f'"{address.hostname}:{address.port}:' in text  # published on loopback only, at the default URL
    assert f"- {defaults.model}\n" in text and "--omni" in text
    assert "driver: nvidia" in text and "capabilities: [gpu]" in text
    assert "/health" in text
