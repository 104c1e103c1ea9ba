"""POST /v1/audio/speech on the embedded Piper voice, end to end through a real gateway.

Piper runs without its noise here (`AISTACK_TTS__PIPER__NOISE_SCALE=0`, `..._NOISE_W_SCALE=0`), so the same text gives the
same samples every time and durations can be compared with the engine called directly.
"""

from __future__ import annotations

import base64
import io
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import av
import httpx
import numpy as np
import pytest
from openai import OpenAI

from conftest import ENGLISH_SENTENCE, LONG_PARAGRAPH, Gateway, assert_envelope, start_gateway, stop_gateway, wait_until, words

pytestmark = pytest.mark.slow

OUTPUT_RATE = 24_000
THREE_SENTENCES = "The first sentence is short. The second one is a little longer than that. Here is the third and last."
FORMATS = ("mp3", "opus", "aac", "flac", "wav", "pcm")
MEDIA_TYPES = {"mp3": "audio/mpeg", "opus": "audio/ogg", "aac": "audio/aac", "flac": "audio/flac", "wav": "audio/wav", "pcm": "audio/pcm"}


@pytest.fixture(scope="module")
def tts_gateway(models_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    still = {"AISTACK_TTS__PIPER__NOISE_SCALE": "0", "AISTACK_TTS__PIPER__NOISE_W_SCALE": "0"}
    running = start_gateway(models_cache, tmp_path_factory.mktemp("tts"), still)
    try:
        yield running
    finally:
        stop_gateway(running)


@pytest.fixture(scope="module")
def direct_seconds(piper_voice) -> callable:
    """Seconds of speech Piper itself makes for a text (no noise, normal pace)."""
    from piper import SynthesisConfig

    still = SynthesisConfig(noise_scale=0.0, noise_w_scale=0.0)

    def seconds(text: str) -> float:
        chunks = list(piper_voice.synthesize(text, syn_config=still))
        return sum(c.audio_int16_array.size for c in chunks) / chunks[0].sample_rate

    return seconds


def speak(gateway: Gateway, **fields) -> httpx.Response:
    body = {"model": "tts-1", "voice": "alloy", **fields}
    with gateway.client() as client:
        return client.post("/v1/audio/speech", json=body)


def decoded(audio: bytes, response_format: str) -> tuple[np.ndarray, int]:
    """Mono samples and their rate, decoded back with PyAV (headerless pcm is 24 kHz s16le)."""
    if response_format == "pcm":
        return np.frombuffer(audio, dtype="<i2").astype(np.float32) / 32768, OUTPUT_RATE
    with av.open(io.BytesIO(audio)) as container:
        stream = container.streams.audio[0]
        frames = [frame.to_ndarray().reshape(-1) for frame in container.decode(stream)]
        rate = stream.codec_context.sample_rate
    return np.concatenate(frames).astype(np.float32), rate


def seconds_of(audio: bytes, response_format: str) -> float:
    samples, rate = decoded(audio, response_format)
    return samples.size / rate


def sse_events(text: str) -> list[tuple[str, dict]]:
    events = []
    for block in text.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines())
        events.append((lines["event"], json.loads(lines["data"])))
    return events


# -- discovery -----------------------------------------------------------------------------------


def test_piper_is_listed_as_a_streaming_tts_model(tts_gateway: Gateway) -> None:
    with tts_gateway.client() as client:
        models = {m["id"]: m for m in client.get("/v1/models").json()["data"]}
        audio_models = client.get("/v1/audio/models").json()
        voices = client.get("/v1/audio/voices").json()
        voices_by_alias = client.get("/v1/audio/voices", params={"model": "tts-1"}).json()
        not_tts = client.get("/v1/audio/voices", params={"model": "whisper-tiny.en"})
    piper = models["piper"]
    assert piper["capabilities"] == ["tts"] and piper["supports_streaming"] is True
    assert "languages" not in piper and piper["is_routing_alias"] is False
    assert {"id": "piper"} in audio_models["models"]
    assert all("tts" in models[m["id"]]["capabilities"] for m in audio_models["models"])
    assert voices == voices_by_alias
    assert voices["model"] == "piper" and {"id": "en_US-joe-medium", "name": "en_US-joe-medium"} in voices["voices"]
    assert_envelope(not_tts, 400, "malformed", "model", "does not speak", "piper")


# -- audio ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("response_format", FORMATS)
def test_every_format_decodes_to_the_duration_piper_makes(tts_gateway: Gateway, direct_seconds, response_format: str) -> None:
    response = speak(tts_gateway, input=ENGLISH_SENTENCE, response_format=response_format)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == MEDIA_TYPES[response_format]
    assert response.headers["x-aistack-model"] == "piper"
    expected = direct_seconds(ENGLISH_SENTENCE)
    assert seconds_of(response.content, response_format) == pytest.approx(expected, rel=0.05)


def test_speech_transcribed_by_whisper_comes_back_word_for_word(tts_gateway: Gateway) -> None:
    spoken = speak(tts_gateway, input=ENGLISH_SENTENCE, response_format="wav")
    assert spoken.status_code == 200, spoken.text
    with tts_gateway.client() as client:
        heard = client.post(
            "/v1/audio/transcriptions",
            data={"model": "whisper-tiny.en"},
            files={"file": ("speech.wav", spoken.content, "audio/wav")},
        )
    assert heard.status_code == 200, heard.text
    assert words(heard.json()["text"]) == words(ENGLISH_SENTENCE)


@pytest.mark.parametrize("speed", [2.0, 0.5])
def test_speed_scales_the_duration(tts_gateway: Gateway, speed: float) -> None:
    normal = speak(tts_gateway, input=ENGLISH_SENTENCE, response_format="pcm")
    changed = speak(tts_gateway, input=ENGLISH_SENTENCE, response_format="pcm", speed=speed)
    assert normal.status_code == 200 and changed.status_code == 200, changed.text
    ratio = seconds_of(changed.content, "pcm") / seconds_of(normal.content, "pcm")
    assert ratio == pytest.approx(1 / speed, rel=0.10)


@pytest.mark.parametrize("response_format", ["mp3", "pcm"])
def test_sse_deltas_are_the_non_streamed_audio(tts_gateway: Gateway, direct_seconds, response_format: str) -> None:
    whole = speak(tts_gateway, input=THREE_SENTENCES, response_format=response_format, whole_file=True)
    streamed = speak(tts_gateway, input=THREE_SENTENCES, response_format=response_format, stream_format="sse")
    assert whole.status_code == 200 and streamed.status_code == 200, streamed.text
    assert streamed.headers["content-type"].startswith("text/event-stream")
    events = sse_events(streamed.text)
    names = [name for name, _ in events]
    assert names[-1] == "speech.audio.done" and set(names[:-1]) == {"speech.audio.delta"} and len(names) >= 3
    audio = b"".join(base64.b64decode(data["audio"]) for name, data in events if name == "speech.audio.delta")
    assert audio == whole.content
    usage = events[-1][1]["usage"]
    assert usage["input_characters"] == len(THREE_SENTENCES)
    assert usage["output_audio_seconds"] == pytest.approx(direct_seconds(THREE_SENTENCES), rel=0.05)


def test_audio_stream_is_chunked_and_is_the_same_speech(tts_gateway: Gateway) -> None:
    whole = speak(tts_gateway, input=THREE_SENTENCES, response_format="pcm", whole_file=True)
    pieces = []
    with tts_gateway.client() as client, client.stream(
        "POST", "/v1/audio/speech",
        json={"model": "tts-1", "voice": "alloy", "input": THREE_SENTENCES, "response_format": "pcm", "stream_format": "audio"},
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"] == "audio/pcm"
        assert "content-length" not in response.headers and response.headers["transfer-encoding"] == "chunked"
        pieces = [piece for piece in response.iter_raw() if piece]
    assert len(pieces) >= 2
    assert b"".join(pieces) == whole.content


@pytest.mark.parametrize("voice", ["EN_us-Joe-Medium", "Alloy", "NOVA"])
def test_voice_names_are_not_case_sensitive(tts_gateway: Gateway, voice: str) -> None:
    response = speak(tts_gateway, input="Hello.", voice=voice, response_format="wav")
    assert response.status_code == 200, response.text
    assert seconds_of(response.content, "wav") > 0.3


def test_a_configured_voice_alias_names_an_engine_voice(make_inprocess_gateway) -> None:
    from aistack.settings import TtsSettings

    gateway = make_inprocess_gateway(tts=TtsSettings(voice_aliases={"narrator": "en_US-joe-medium"}))
    with gateway.client() as client:
        aliased = client.post("/v1/audio/speech", json={"input": "Hello.", "voice": "narrator", "response_format": "wav"})
        unknown = client.post("/v1/audio/speech", json={"input": "Hello.", "voice": "storyteller"})
    assert aliased.status_code == 200 and seconds_of(aliased.content, "wav") > 0.3
    assert_envelope(unknown, 400, "malformed", "voice", "storyteller")


# -- bad input -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "status", "kind", "param", "needles"),
    [
        ({"input": ""}, 400, "malformed", "input", ("empty",)),
        ({"input": "   \n"}, 400, "malformed", "input", ("empty",)),
        ({"input": "..."}, 400, "malformed", "input", ("nothing to say",)),
        ({"input": "x" * 4097}, 413, "overflow", "input", ("4097", "4096", "AISTACK_TTS__MAX_INPUT_CHARS")),
        ({"input": "Hello", "voice": "nobody"}, 400, "malformed", "voice", ("nobody", "en_US-joe-medium", "alloy")),
        ({"input": "Hello", "response_format": "ogg"}, 400, "malformed", "response_format", ("mp3", "pcm")),
        ({"input": "Hello", "speed": 0.1}, 400, "malformed", "speed", ("0.25",)),
        ({"input": "Hello", "speed": 4.5}, 400, "malformed", "speed", ("4",)),
        ({"input": "Hello", "model": "no-such-voice-model"}, 404, "not_found", "model", ("piper", "tts-1")),
        ({"input": "Hello", "model": "whisper-tiny.en"}, 400, "malformed", "model", ("piper",)),
        ({"voice": "alloy"}, 400, "malformed", "input", ()),
    ],
    ids=["empty", "blank", "punctuation-only", "too-long", "unknown-voice", "unknown-format", "too-slow", "too-fast", "unknown-model",
         "asr-model", "no-input"],
)
def test_bad_input_gets_the_envelope(tts_gateway: Gateway, fields: dict, status: int, kind: str, param: str, needles: tuple) -> None:
    body = {"model": "tts-1", **fields}
    with tts_gateway.client() as client:
        response = client.post("/v1/audio/speech", json=body)
    assert_envelope(response, status, kind, param, *needles)


def test_the_gateway_keeps_serving_after_bad_input(tts_gateway: Gateway) -> None:
    with tts_gateway.client() as client:
        for body in ({"input": ""}, {"input": "Hi", "voice": "nobody"}, {"input": "Hi", "speed": 9}):
            assert client.post("/v1/audio/speech", json=body).status_code == 400
        assert client.post("/v1/audio/speech", content=b"{not json", headers={"content-type": "application/json"}).status_code == 400
        good = client.post("/v1/audio/speech", json={"input": "Still here.", "voice": "alloy", "response_format": "wav"})
        ready = client.get("/ready").json()
    assert good.status_code == 200 and seconds_of(good.content, "wav") > 0.3
    assert ready["devices"]["cpu"]["busy"] == 0 and ready["devices"]["cpu"]["queued"] == 0


# -- the official SDK ----------------------------------------------------------------------------


def test_openai_sdk_speech_create_and_streaming_response(tts_gateway: Gateway, direct_seconds) -> None:
    sdk = OpenAI(base_url=f"{tts_gateway.url}/v1", api_key="not-needed", max_retries=0, timeout=120)
    created = sdk.audio.speech.create(model="tts-1", voice="alloy", input=ENGLISH_SENTENCE, response_format="wav")
    assert seconds_of(created.content, "wav") == pytest.approx(direct_seconds(ENGLISH_SENTENCE), rel=0.05)

    with sdk.audio.speech.with_streaming_response.create(
        model="gpt-4o-mini-tts", voice="nova", input=THREE_SENTENCES, response_format="mp3"
    ) as response:
        assert response.headers["content-type"] == "audio/mpeg"
        audio = b"".join(response.iter_bytes())
    assert seconds_of(audio, "mp3") == pytest.approx(direct_seconds(THREE_SENTENCES), rel=0.05)


# -- streaming, cancellation and the event loop (a gateway in this process, to watch the engine) --


@pytest.mark.parametrize("response_format", ["pcm", "mp3"])
def test_first_audio_arrives_before_the_last_sentence_is_synthesized(make_inprocess_gateway, response_format: str) -> None:
    """Piper synthesizes THREE_SENTENCES one sentence at a time. The engine is held right after its
    second sentence (before the third starts) until the client has its first audio: if the gateway
    waited for the whole text, the client would get nothing and the hold would time out."""
    gateway = make_inprocess_gateway()
    first_audio = threading.Event()
    steps: list[tuple[int, bool]] = []

    def hold_before_the_last_sentence(model_id: str, index: int) -> None:
        released = first_audio.wait(timeout=20) if index == 1 else True
        steps.append((index, released))

    remove = gateway.runtime.events.on_step(hold_before_the_last_sentence)
    try:
        body = {"model": "tts-1", "input": THREE_SENTENCES, "response_format": response_format, "stream_format": "audio"}
        with gateway.client() as client, client.stream("POST", "/v1/audio/speech", json=body) as response:
            assert response.status_code == 200
            received = b""
            for piece in response.iter_raw():
                if piece and not first_audio.is_set():
                    assert all(index < 2 for index, _ in steps), steps  # the last sentence has not started
                    first_audio.set()
                received += piece
    finally:
        remove()
    assert steps == [(0, True), (1, True), (2, True)]
    assert seconds_of(received, response_format) > 3


def test_a_client_that_leaves_stops_synthesis_and_frees_the_slot(make_inprocess_gateway) -> None:
    gateway = make_inprocess_gateway()
    runtime = gateway.runtime
    client_left = threading.Event()
    steps: list[int] = []

    def hold_until_the_client_left(model_id: str, index: int) -> None:
        steps.append(index)
        if index == 1:
            client_left.wait(timeout=20)

    remove = runtime.events.on_step(hold_until_the_client_left)
    try:
        body = {"model": "tts-1", "input": LONG_PARAGRAPH, "response_format": "pcm", "stream_format": "audio"}
        with gateway.client() as client:
            with client.stream("POST", "/v1/audio/speech", json=body) as response:
                assert response.status_code == 200
                assert next(response.iter_raw())
            # The connection is closed; the engine goes on only once the server has noticed (it then
            # tells the held job's lease to stop).
            cpu = runtime.scheduler.queue("cpu")
            assert wait_until(lambda: cpu.stopping == 1, timeout=20)
            client_left.set()
            assert wait_until(lambda: runtime.scheduler.total_running() == 0, timeout=20)
            assert cpu.stopping == 0  # the stopped job gave its slot back
            assert max(steps) <= 2, steps  # LONG_PARAGRAPH has ten sentences; it stopped at the next one
            assert all(e.in_use == 0 for e in runtime.lifecycle.entries())
            again = client.post("/v1/audio/speech", json={"input": "Served again.", "response_format": "wav"})
        assert again.status_code == 200
    finally:
        client_left.set()
        remove()


def test_health_is_prompt_during_a_long_synthesis(make_inprocess_gateway) -> None:
    gateway = make_inprocess_gateway()
    runtime = gateway.runtime
    results: list[httpx.Response] = []
    text = LONG_PARAGRAPH + " " + LONG_PARAGRAPH

    def synthesize() -> None:
        with gateway.client() as client:
            results.append(client.post("/v1/audio/speech", json={"input": text, "response_format": "pcm"}))

    worker = threading.Thread(target=synthesize)
    worker.start()
    try:
        assert wait_until(lambda: runtime.scheduler.describe()["cpu"]["running"].get("tts") == 1)
        # Each /health that answers while the synthesis still runs is counted: a /health that waited
        # for the engine would answer only after it, and the count would stay short.
        answered_while_synthesizing = 0
        with gateway.client(timeout=5) as client:
            while worker.is_alive() and answered_while_synthesizing < 20:
                assert client.get("/health").status_code == 200
                if runtime.scheduler.describe()["cpu"]["running"].get("tts") == 1:
                    answered_while_synthesizing += 1
                time.sleep(0.05)
    finally:
        worker.join(timeout=120)
    assert results and results[0].status_code == 200
    assert answered_while_synthesizing >= 3, "/health did not answer while the synthesis ran"
