"""Qwen3-TTS through the real gateway, against the loopback double of vLLM-Omni (DESIGN §1, §4, §5, §6).

The gateway runs in this process on a free loopback port; the double is a real HTTP server that
records every request and how each one ended, so a test can tell what reached the upstream and
whether the gateway closed it.
"""

from __future__ import annotations

import base64
import io
import json
import math

import av
import httpx
import numpy as np
import pytest

from aistack.engines.qwen3_tts import COMPOSE_COMMAND
from aistack.settings import Qwen3TtsSettings, TtsSettings
from conftest import wait_until
from doubles.qwen3_tts_server import DEFAULT_MODEL, Qwen3TtsDouble, synthesize

MODEL = DEFAULT_MODEL
BASE_MODEL = "Qwen/Qwen3-TTS-12Hz-0.6B-Base"
RATE = 24_000
# About 4 s of audio from the double (0.04 s a character): long enough for mp3's padding to stay within 5 %.
PARAGRAPH = ("The quick brown fox jumps over the lazy dog near the river bank, "
             "and then it runs back home across the wide green fields.")


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


@pytest.fixture
def gateway_for(make_inprocess_gateway):
    """A gateway whose Qwen3-TTS upstream is `server`, with a short inventory cache."""

    def make(server: Qwen3TtsDouble, ttl: float = 0.05, **qwen3):
        return make_inprocess_gateway(
            inventory_ttl_s=ttl, tts=TtsSettings(qwen3=Qwen3TtsSettings(base_url=server.url, **qwen3))
        )

    return make


def speech(client: httpx.Client, text: str = "Hello there, how are you?", **fields) -> httpx.Response:
    body = {"model": MODEL, "input": text, "voice": "vivian", **fields}
    return client.post("/v1/audio/speech", json={k: v for k, v in body.items() if v is not None})


def listed(client: httpx.Client) -> tuple[bool, bool]:
    models = [m["id"] for m in client.get("/v1/models").json()["data"]]
    audio_models = [m["id"] for m in client.get("/v1/audio/models").json()["models"]]
    return MODEL in models, MODEL in audio_models


def decoded_seconds(data: bytes) -> float:
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.audio[0]
        samples = sum(frame.samples for frame in container.decode(stream))
        return samples / stream.codec_context.sample_rate


def assert_envelope(response: httpx.Response, status: int, kind: str, provider: str = "qwen3-tts") -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["kind"] == kind and error["code"] == kind
    assert error["provider"] == provider
    assert error["message"]
    return error


# -- visibility -------------------------------------------------------------------------------


def test_listed_with_tts_capability_only_while_health_answers_200(double, gateway_for) -> None:
    server = double()
    gateway = gateway_for(server)
    with gateway.client(timeout=10) as client:
        entry = next(m for m in client.get("/v1/models").json()["data"] if m["id"] == MODEL)
        assert entry["capabilities"] == ["tts"]
        assert entry["supports_streaming"] is True
        assert entry["is_routing_alias"] is False
        assert entry["owned_by"] == "qwen3-tts"
        assert "languages" not in entry
        assert listed(client) == (True, True)
        voices = client.get("/v1/audio/voices", params={"model": MODEL}).json()
        assert {"id": "vivian", "name": "Vivian"} in voices["voices"]

        server.stop()  # refused from now on; the double keeps its port bound, so nobody else takes it
        assert wait_until(lambda: listed(client) == (False, False), timeout=5)

        server.start()  # back on the same address
        assert wait_until(lambda: listed(client) == (True, True), timeout=5)


@pytest.mark.parametrize("mode", ["503", "refuse"])
def test_slow_start_is_not_listed_then_listed_and_served(double, gateway_for, mode: str) -> None:
    # Warm (503, or bound but not listening) until the test ends the warm-up below.
    server = double(warmup_s=math.inf, warmup_mode=mode)
    gateway = gateway_for(server)
    with gateway.client(timeout=10) as client:
        assert listed(client) == (False, False)
        error = assert_envelope(speech(client), 503, "network")
        assert COMPOSE_COMMAND in error["message"]
        server.end_warmup()
        assert wait_until(lambda: listed(client) == (True, True), timeout=30)
        response = speech(client, response_format="wav")
        assert response.status_code == 200, response.text
        assert decoded_seconds(response.content) > 0.5


def test_stopped_upstream_is_503_network_saying_how_to_start_it(double, gateway_for) -> None:
    server = double()
    gateway = gateway_for(server)
    with gateway.client(timeout=10) as client:
        assert speech(client).status_code == 200
        server.stop()
        # Not listed any more: the inventory says why and how to start it.
        assert wait_until(lambda: not listed(client)[0], timeout=5)
        error = assert_envelope(speech(client), 503, "network")
        assert COMPOSE_COMMAND in error["message"]
        assert error["type"] == "server_error"


def test_upstream_gone_while_still_listed_is_503_network_too(double, gateway_for) -> None:
    server = double()
    gateway = gateway_for(server, ttl=60)  # the listing outlives the server
    with gateway.client(timeout=10) as client:
        assert speech(client).status_code == 200
        server.stop()
        assert listed(client)[0]
        error = assert_envelope(speech(client), 503, "network")
        assert COMPOSE_COMMAND in error["message"]


# -- audio ------------------------------------------------------------------------------------


@pytest.mark.parametrize("response_format", ["wav", "mp3"])
def test_speech_decodes_to_the_expected_duration(double, gateway_for, response_format: str) -> None:
    server = double()
    gateway = gateway_for(server)
    with gateway.client(timeout=30) as client:
        response = speech(client, PARAGRAPH, response_format=response_format)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == {"wav": "audio/wav", "mp3": "audio/mpeg"}[response_format]
    assert response.headers["x-aistack-model"] == MODEL
    expected = server.samples_for(PARAGRAPH) / RATE
    assert decoded_seconds(response.content) == pytest.approx(expected, rel=0.05)
    (body,) = server.speech_bodies
    # Asked for streamed raw PCM whatever the client wants: the gateway encodes.
    assert body["response_format"] == "pcm" and body["stream_format"] == "audio"


def test_pcm_response_is_the_upstream_samples(double, gateway_for) -> None:
    server = double(odd_boundaries=True)
    gateway = gateway_for(server)
    with gateway.client(timeout=30) as client:
        response = speech(client, PARAGRAPH, response_format="pcm")
    assert response.status_code == 200
    assert len(response.content) == 2 * server.samples_for(PARAGRAPH)


def test_openai_names_map_to_the_configured_voice(double, gateway_for) -> None:
    server = double()
    gateway = gateway_for(server, default_voice="ryan")
    with gateway.client(timeout=10) as client:
        assert speech(client, voice="alloy", response_format="wav").status_code == 200
        assert speech(client, voice="aiden", response_format="wav").status_code == 200
        bad = speech(client, voice="nobody")
    assert [b["voice"] for b in server.speech_bodies] == ["ryan", "aiden"]
    error = assert_envelope(bad, 400, "malformed", provider="aistack")
    assert error["param"] == "voice" and "vivian" in error["message"]


def test_speed_two_halves_the_duration_by_time_stretching(double, gateway_for) -> None:
    server = double()
    gateway = gateway_for(server)
    with gateway.client(timeout=30) as client:
        normal = speech(client, PARAGRAPH, response_format="wav")
        fast = speech(client, PARAGRAPH, response_format="wav", speed=2.0)
    assert normal.status_code == 200 and fast.status_code == 200, fast.text
    assert decoded_seconds(fast.content) == pytest.approx(decoded_seconds(normal.content) / 2, rel=0.10)
    # A streamed request with speed != 1 is refused by vLLM-Omni: the upstream never sees it.
    assert all("speed" not in body for body in server.speech_bodies)


def test_extension_fields_reach_the_upstream_untouched(double, gateway_for) -> None:
    server = double(checkpoint="Base", model=BASE_MODEL)  # voice cloning: no built-in speakers
    gateway = gateway_for(server, model=BASE_MODEL)
    fields = {
        "task_type": "Base",
        "language": "English",
        "instructions": "Warm and slow, like a story at bedtime.",
        "ref_audio": "data:audio/wav;base64," + base64.b64encode(b"RIFF0000WAVE").decode(),
        "ref_text": "The exact words of the reference clip.",
        "max_new_tokens": 321,
    }
    with gateway.client(timeout=10) as client:
        response = speech(client, "Cloned voice, speaking.", model=BASE_MODEL, voice=None, response_format="wav", **fields)
    assert response.status_code == 200, response.text
    (body,) = server.speech_bodies
    for name, value in fields.items():
        assert body[name] == value, name
    assert body["input"] == "Cloned voice, speaking."


def test_upstream_rejection_is_400_with_its_own_words(double, gateway_for) -> None:
    server = double()  # a CustomVoice checkpoint
    gateway = gateway_for(server)
    with gateway.client(timeout=10) as client:
        wrong_task = speech(client, task_type="VoiceDesign", instructions="A deep voice.")
        wrong_language = speech(client, language="Klingon")
        # The gateway still serves.
        assert speech(client, response_format="wav").status_code == 200
    error = assert_envelope(wrong_task, 400, "malformed")
    assert "does not support task_type='VoiceDesign'" in error["message"]
    error = assert_envelope(wrong_language, 400, "malformed")
    assert "Invalid language 'Klingon'" in error["message"]


# -- streaming --------------------------------------------------------------------------------


def test_stream_format_audio_relays_chunks_as_they_come(double, gateway_for) -> None:
    # 1.4 s of audio in 7 chunks; the double sends only the chunks the test releases.
    server = double(step=True, chunk_seconds=0.2)
    gateway = gateway_for(server)
    text = "Six chunks of audio, one at a time."
    server.release_next_chunk(2)
    with gateway.client(timeout=30) as client:
        with client.stream("POST", "/v1/audio/speech", json={"model": MODEL, "input": text, "voice": "vivian",
                                                             "response_format": "wav", "stream_format": "audio"}) as response:
            assert response.status_code == 200
            assert response.headers["content-type"] == "audio/wav"
            parts = response.iter_bytes()
            body = b""
            while len(body) <= 44:  # past the WAV header: audio the upstream sent
                body += next(parts)
            call = server.speech_calls[0]
            # The client holds audio while the upstream has sent at most the two released chunks of seven.
            assert call.chunks_sent <= 2 and call.finished_at is None
            assert call.audio_bytes_sent < call.audio_bytes_total
            server.release_all()
            body += b"".join(parts)
    assert call.done.wait(5) and call.outcome == "complete"
    assert body[:4] == b"RIFF"
    assert decoded_seconds(body) == pytest.approx(server.samples_for(text) / RATE, rel=0.05)


def test_stream_format_sse_sends_deltas_then_done(double, gateway_for) -> None:
    server = double(chunk_seconds=0.5)
    gateway = gateway_for(server)
    with gateway.client(timeout=30) as client:
        response = speech(client, PARAGRAPH, response_format="pcm", stream_format="sse")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    events = [json.loads(line[6:]) for line in response.text.splitlines() if line.startswith("data: ")]
    deltas = [e for e in events if e["type"] == "speech.audio.delta"]
    assert len(deltas) >= 2
    assert events[-1]["type"] == "speech.audio.done"
    audio = b"".join(base64.b64decode(e["audio"]) for e in deltas)
    assert len(audio) == 2 * server.samples_for(PARAGRAPH)
    usage = events[-1]["usage"]
    assert usage["input_characters"] == len(PARAGRAPH)
    assert usage["output_audio_seconds"] == pytest.approx(server.samples_for(PARAGRAPH) / RATE, rel=0.01)


# -- failures ---------------------------------------------------------------------------------


def test_upstream_500_is_the_envelope_with_its_message(double, gateway_for) -> None:
    server = double()
    server.queue_fault("error_500")
    gateway = gateway_for(server)
    with gateway.client(timeout=10) as client:
        error = assert_envelope(speech(client), 500, "unknown")
        assert "EngineCore encountered an issue" in error["message"]
        assert error["type"] == "server_error"
        assert speech(client, response_format="wav").status_code == 200


def test_hung_upstream_past_the_read_timeout_is_504(double, gateway_for) -> None:
    # The upstream hangs far longer than the gateway's read timeout, and the client waits longer still:
    # only the gateway's own timeout can end the request with a 504.
    server = double(fault="hang", max_hang_s=60)
    gateway = gateway_for(server, read_timeout_s=0.4)
    with gateway.client(timeout=30) as client:
        error = assert_envelope(speech(client), 504, "timeout")
    assert "did not answer within 0.4 s" in error["message"]
    assert "AISTACK_TTS__QWEN3__READ_TIMEOUT_S" in error["message"]
    call = server.speech_calls[0]
    assert call.done.wait(5) and call.client_gone  # the gateway let go of the upstream request


def test_drop_mid_stream_fails_each_response_kind_and_the_gateway_keeps_serving(double, gateway_for) -> None:
    server = double(chunk_seconds=0.2)
    gateway = gateway_for(server)
    with gateway.client(timeout=10) as client:
        # A whole file: the envelope.
        server.queue_fault("drop")
        error = assert_envelope(speech(client, PARAGRAPH, response_format="wav", whole_file=True), 500, "unknown")
        assert "dropped the connection" in error["message"]

        # SSE: an error event in place of done.
        server.queue_fault("drop")
        response = speech(client, PARAGRAPH, response_format="pcm", stream_format="sse")
        assert response.status_code == 200
        events = [json.loads(line[6:]) for line in response.text.splitlines() if line.startswith("data: ")]
        assert events[0]["type"] == "speech.audio.delta"
        assert "speech.audio.done" not in [e.get("type") for e in events]
        assert events[-1]["error"]["kind"] == "unknown" and events[-1]["error"]["provider"] == "qwen3-tts"
        assert "dropped the connection" in events[-1]["error"]["message"]

        # Streamed audio: the body is cut short, not completed.
        server.queue_fault("drop")
        received = bytearray()
        with pytest.raises(httpx.RemoteProtocolError):
            with client.stream("POST", "/v1/audio/speech", json={"model": MODEL, "input": PARAGRAPH, "voice": "vivian",
                                                                 "response_format": "pcm", "stream_format": "audio"}) as streamed:
                assert streamed.status_code == 200
                for part in streamed.iter_bytes():
                    received += part
        assert 0 < len(received) < 2 * server.samples_for(PARAGRAPH)

        # And then a new request is served in full.
        response = speech(client, PARAGRAPH, response_format="pcm")
        assert response.status_code == 200
        assert len(response.content) == 2 * server.samples_for(PARAGRAPH)
    assert all(c.done.wait(5) for c in server.speech_calls)
    assert [c.outcome for c in server.speech_calls] == ["dropped", "dropped", "dropped", "complete"]


def test_client_that_leaves_mid_stream_closes_the_upstream_request(double, gateway_for) -> None:
    # 4.6 s of audio in 46 chunks; the double sends only the chunks the test releases.
    server = double(step=True, chunk_seconds=0.1)
    gateway = gateway_for(server)
    server.release_next_chunk(1)
    with gateway.client(timeout=10) as client:
        with client.stream("POST", "/v1/audio/speech", json={"model": MODEL, "input": PARAGRAPH, "voice": "vivian",
                                                             "response_format": "pcm", "stream_format": "audio"}) as response:
            assert response.status_code == 200
            parts = response.iter_raw()
            assert next(parts)
            call = server.speech_calls[0]
            # While the client holds the connection, the relay goes on.
            server.release_next_chunk(2)
            assert server.wait_for_chunks(3)
            assert call.outcome == "pending"
            parts.close()  # the client leaves: its connection is closed with the body unread
        # Ended by the gateway hanging up: the double was still holding the fourth chunk.
        assert call.done.wait(15)
        assert call.client_gone, call.outcome
        assert call.chunks_sent == 3 and call.finished_at is None
        # The gateway serves the next request.
        server.release_all()
        response = speech(client, "Hi.", response_format="pcm")
        assert response.status_code == 200
        assert len(response.content) == 2 * server.samples_for("Hi.")


def test_client_that_leaves_before_the_first_audio_closes_the_upstream_request(double, gateway_for) -> None:
    server = double(step=True)  # no chunk released: the first audio never comes
    gateway = gateway_for(server)
    with gateway.client(timeout=0.5) as client:
        with pytest.raises(httpx.ReadTimeout):
            speech(client, response_format="wav")
    call = server.speech_calls[0]
    assert call.done.wait(10)
    assert call.client_gone, call.outcome
    assert call.audio_bytes_sent == 0


def test_pcm_chunks_decode_to_the_upstream_signal(double, gateway_for) -> None:
    """The relay changes nothing: samples out equal the double's signal, sample for sample."""
    server = double(odd_boundaries=True, chunk_seconds=0.05)
    gateway = gateway_for(server)
    text = "Exactly these samples."
    with gateway.client(timeout=10) as client:
        response = speech(client, text, response_format="pcm", stream_format="audio")
    got = np.frombuffer(response.content, dtype="<i2")
    expected = synthesize(text, RATE, server.seconds_per_char, server.min_seconds)
    np.testing.assert_array_equal(got, expected)
