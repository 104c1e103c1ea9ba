"""POST /v1/audio/speech streams by default, as OpenAI's does (`stream_format` defaults to `audio`);
`whole_file: true` asks for one file with a Content-Length; `voice` may be `{"id": ...}`; text that
is not text (lone surrogates, NUL) is refused by name.

A gateway in this process where a test holds the engine between sentences (`events.on_step`) to see
what the client has by then; one `aistack serve` for the module otherwise. Piper runs without noise,
so durations can be compared with Piper called directly.
"""

from __future__ import annotations

import io
import json
import struct
import threading
import wave
from collections.abc import Iterator
from pathlib import Path

import av
import httpx
import pytest
from openai import OpenAI

from conftest import Gateway, InProcessGateway, assert_envelope, start_gateway, stop_gateway

pytestmark = pytest.mark.slow

OUTPUT_RATE = 24_000
FORMATS = ("mp3", "opus", "aac", "flac", "wav", "pcm")
MEDIA_TYPES = {"mp3": "audio/mpeg", "opus": "audio/ogg", "aac": "audio/aac", "flac": "audio/flac", "wav": "audio/wav", "pcm": "audio/pcm"}
FOUR_SENTENCES = (
    "The first sentence is short. The second one is a little longer than that. "
    "Here comes the third sentence. And this is the fourth and last."
)
SHORT_TEXT = "Hello there, this is a short test."
# The 44-byte header OpenAI streams a WAV with: RIFF and data sizes 0xFFFFFFFF ("until the end"),
# PCM, mono, 24 kHz, 48000 bytes a second, 2-byte frames, 16 bits.
OPENAI_STREAMED_WAV_HEADER = bytes.fromhex(
    "52494646ffffffff57415645666d7420100000000100010"
    "0c05d000080bb00000200100064617461ffffffff"
)


NOISE_FREE = {"AISTACK_TTS__PIPER__NOISE_SCALE": "0", "AISTACK_TTS__PIPER__NOISE_W_SCALE": "0"}


@pytest.fixture(scope="module")
def tts(models_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    env = {**NOISE_FREE, "AISTACK_TTS__VOICE_ALIASES": json.dumps({"narrator": "en_US-joe-medium"})}
    running = start_gateway(models_cache, tmp_path_factory.mktemp("tts-streaming"), env)
    try:
        yield running
    finally:
        stop_gateway(running)


@pytest.fixture
def watched_tts(make_inprocess_gateway) -> InProcessGateway:
    from aistack.settings import PiperSettings, TtsSettings

    return make_inprocess_gateway(tts=TtsSettings(piper=PiperSettings(noise_scale=0.0, noise_w_scale=0.0)))


@pytest.fixture(scope="module")
def direct_seconds(piper_voice):
    """Seconds of speech Piper itself makes for a text (no noise, normal pace)."""
    from piper import SynthesisConfig

    still = SynthesisConfig(noise_scale=0.0, noise_w_scale=0.0)

    def seconds(text: str) -> float:
        chunks = list(piper_voice.synthesize(text, syn_config=still))
        return sum(c.audio_int16_array.size for c in chunks) / chunks[0].sample_rate

    return seconds


def seconds_of(audio: bytes, response_format: str) -> float:
    """Seconds of audio as PyAV decodes them (headerless pcm is 24 kHz s16le)."""
    if response_format == "pcm":
        container = av.open(io.BytesIO(audio), format="s16le", options={"sample_rate": str(OUTPUT_RATE), "ch_layout": "mono"})
    else:
        container = av.open(io.BytesIO(audio))
    with container:
        stream = container.streams.audio[0]
        samples = sum(frame.samples for frame in container.decode(stream))
        return samples / stream.codec_context.sample_rate


def raw_post(gateway: Gateway, json_text: str) -> httpx.Response:
    """A body sent as written: JSON escapes such as \\udcff reach the server as they are."""
    with gateway.client() as client:
        return client.post("/v1/audio/speech", content=json_text.encode("ascii"), headers={"content-type": "application/json"})


def assert_serving(gateway: Gateway) -> None:
    with gateway.client() as client:
        good = client.post("/v1/audio/speech", json={"input": "Still here.", "response_format": "pcm"})
        ready = client.get("/ready").json()
    assert good.status_code == 200 and seconds_of(good.content, "pcm") > 0.3
    assert ready["devices"]["cpu"]["busy"] == 0 and ready["devices"]["cpu"]["queued"] == 0


# -- streaming is the default ----------------------------------------------------------------------


@pytest.mark.parametrize("response_format", FORMATS)
def test_a_plain_request_streams_before_the_last_sentence_is_synthesized(watched_tts: InProcessGateway, direct_seconds,
                                                                        response_format: str) -> None:
    """No stream_format. The engine is held right after its second sentence, before that sentence's
    audio is handed over, until the client has bytes: a gateway that waited for the whole text would
    send nothing, the hold would run out, and the steps would say so."""
    first_bytes = threading.Event()
    synthesized: list[int] = []
    released: list[tuple[int, bool]] = []

    def hold_after_the_second_sentence(model_id: str, index: int) -> None:
        synthesized.append(index)
        released.append((index, first_bytes.wait(timeout=30) if index == 1 else True))

    remove = watched_tts.runtime.events.on_step(hold_after_the_second_sentence)
    try:
        body = {"model": "tts-1", "voice": "alloy", "input": FOUR_SENTENCES, "response_format": response_format}
        with watched_tts.client() as client, client.stream("POST", "/v1/audio/speech", json=body) as response:
            assert response.status_code == 200, response.read()
            assert response.headers["content-type"] == MEDIA_TYPES[response_format]
            assert "content-length" not in response.headers and response.headers["transfer-encoding"] == "chunked"
            received = b""
            for piece in response.iter_raw():
                if piece and not first_bytes.is_set():
                    synthesized_by_then = list(synthesized)
                    first_bytes.set()
                received += piece
    finally:
        first_bytes.set()
        remove()
    assert 2 not in synthesized_by_then and 3 not in synthesized_by_then, synthesized_by_then
    assert released == [(0, True), (1, True), (2, True), (3, True)]
    assert seconds_of(received, response_format) == pytest.approx(direct_seconds(FOUR_SENTENCES), rel=0.05)


def test_the_streamed_wav_has_openais_streaming_header_and_plays(tts: Gateway, direct_seconds) -> None:
    with tts.client() as client:
        response = client.post("/v1/audio/speech", json={"input": FOUR_SENTENCES, "response_format": "wav"})
    assert response.status_code == 200 and "content-length" not in response.headers
    audio = response.content
    assert audio[:44] == OPENAI_STREAMED_WAV_HEADER
    # Python's wave reads such a file up to its end, as browsers and FFmpeg do.
    with wave.open(io.BytesIO(audio)) as reader:
        assert (reader.getnchannels(), reader.getsampwidth(), reader.getframerate()) == (1, 2, OUTPUT_RATE)
        frames = reader.readframes(reader.getnframes())
    assert frames == audio[44:]
    assert len(frames) / 2 / OUTPUT_RATE == pytest.approx(direct_seconds(FOUR_SENTENCES), rel=0.05)
    assert seconds_of(audio, "wav") == pytest.approx(direct_seconds(FOUR_SENTENCES), rel=0.05)


# -- one whole file when asked ---------------------------------------------------------------------


@pytest.mark.parametrize("response_format", FORMATS)
def test_whole_file_comes_with_a_content_length(tts: Gateway, direct_seconds, response_format: str) -> None:
    body = {"input": FOUR_SENTENCES, "response_format": response_format, "whole_file": True}
    with tts.client() as client:
        response = client.post("/v1/audio/speech", json=body)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == MEDIA_TYPES[response_format]
    assert "transfer-encoding" not in response.headers
    assert int(response.headers["content-length"]) == len(response.content)
    assert seconds_of(response.content, response_format) == pytest.approx(direct_seconds(FOUR_SENTENCES), rel=0.05)
    if response_format == "wav":  # a whole WAV states its real sizes, so strict readers take it too
        audio = response.content
        assert struct.unpack_from("<I", audio, 4)[0] == len(audio) - 8
        assert struct.unpack_from("<I", audio, 40)[0] == len(audio) - 44
        with wave.open(io.BytesIO(audio)) as reader:
            assert reader.getnframes() == (len(audio) - 44) // 2


@pytest.mark.parametrize("stream_format", ["audio", "sse"])
def test_whole_file_with_a_stream_format_is_refused(tts: Gateway, stream_format: str) -> None:
    with tts.client() as client:
        response = client.post("/v1/audio/speech", json={"input": "Hi.", "whole_file": True, "stream_format": stream_format})
    assert_envelope(response, 400, "malformed", "whole_file", stream_format, "one of them")


# -- the official SDK ------------------------------------------------------------------------------


def test_openai_sdk_create_stream_to_file_and_whole_file(tts: Gateway, direct_seconds, tmp_path: Path) -> None:
    sdk = OpenAI(base_url=f"{tts.url}/v1", api_key="not-needed", max_retries=0, timeout=120)
    expected = direct_seconds(FOUR_SENTENCES)

    created = sdk.audio.speech.create(model="tts-1", voice="alloy", input=FOUR_SENTENCES, response_format="wav")
    assert seconds_of(created.content, "wav") == pytest.approx(expected, rel=0.05)

    target = tmp_path / "speech.opus"
    with sdk.audio.speech.with_streaming_response.create(
        model="gpt-4o-mini-tts", voice="nova", input=FOUR_SENTENCES, response_format="opus"
    ) as streamed:
        assert streamed.headers["transfer-encoding"] == "chunked"
        streamed.stream_to_file(target)
    assert seconds_of(target.read_bytes(), "opus") == pytest.approx(expected, rel=0.05)

    whole = sdk.audio.speech.with_raw_response.create(
        model="tts-1", voice="alloy", input=FOUR_SENTENCES, response_format="mp3", extra_body={"whole_file": True}
    )
    audio = whole.content
    assert int(whole.headers["content-length"]) == len(audio)
    assert seconds_of(audio, "mp3") == pytest.approx(expected, rel=0.05)


def test_openai_sdk_custom_voice_object(tts: Gateway) -> None:
    sdk = OpenAI(base_url=f"{tts.url}/v1", api_key="not-needed", max_retries=0, timeout=120)
    spoken = sdk.audio.speech.create(model="tts-1", voice={"id": "en_US-joe-medium"}, input=SHORT_TEXT, response_format="pcm")
    assert seconds_of(spoken.content, "pcm") > 1.0


# -- voice as an object ----------------------------------------------------------------------------


@pytest.mark.parametrize("voice_id", ["en_US-joe-medium", "EN_us-Joe-Medium", "narrator", "alloy", "nova"])
def test_voice_as_an_object_is_the_same_voice_as_its_name(tts: Gateway, voice_id: str) -> None:
    with tts.client() as client:
        by_object = client.post("/v1/audio/speech", json={"input": SHORT_TEXT, "voice": {"id": voice_id}, "response_format": "pcm"})
        by_name = client.post("/v1/audio/speech", json={"input": SHORT_TEXT, "voice": voice_id, "response_format": "pcm"})
    assert by_object.status_code == 200, by_object.text
    assert by_name.status_code == 200, by_name.text
    # Noise-free Piper gives the same samples for the same text and voice.
    assert by_object.content == by_name.content


def test_a_voice_object_naming_no_voice_is_refused_with_the_choices(tts: Gateway) -> None:
    with tts.client() as client:
        response = client.post("/v1/audio/speech", json={"input": "Hi.", "voice": {"id": "storyteller"}})
    assert_envelope(response, 400, "malformed", "voice", "storyteller", "en_US-joe-medium", "alloy")


@pytest.mark.parametrize(
    ("voice", "needle"),
    [({}, 'without an "id"'), ({"name": "alloy"}, 'without an "id"'), ({"id": 7}, "not a string"),
     ({"id": None}, "not a string"), ({"id": {"id": "alloy"}}, "not a string"), (["alloy"], "array"), (3, "number"), (True, "boolean")],
    ids=["empty-object", "name-not-id", "number-id", "null-id", "object-id", "array", "number", "boolean"],
)
def test_a_malformed_voice_says_what_to_send(tts: Gateway, voice, needle: str) -> None:
    with tts.client() as client:
        response = client.post("/v1/audio/speech", json={"input": "Hi.", "voice": voice})
    error = assert_envelope(response, 400, "malformed", "voice", needle, '{"id": "en_US-joe-medium"}', "as a string")
    assert "Input should be" not in error["message"]


# -- text that is not text -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("escaped_input", "needles"),
    [
        ("Hello \\udcff world.", ("lone surrogate", "U+DCFF", "character 6")),
        ("\\ud83d is half an emoji.", ("lone surrogate", "U+D83D", "character 0")),
        ("Hello\\u0000world.", ("NUL", "character 5")),
    ],
    ids=["lone-low-surrogate", "lone-high-surrogate", "nul"],
)
def test_input_that_is_not_text_is_refused_by_name(tts: Gateway, escaped_input: str, needles: tuple) -> None:
    response = raw_post(tts, f'{{"voice": "alloy", "input": "{escaped_input}"}}')
    assert_envelope(response, 400, "malformed", "input", *needles, "send the text to speak")
    assert_serving(tts)


def test_a_surrogate_pair_is_one_character_and_is_spoken(tts: Gateway) -> None:
    # JSON writes characters beyond U+FFFF as a pair of escapes; together they are one valid character.
    response = raw_post(tts, '{"input": "Hello \\ud83d\\ude00 world.", "response_format": "pcm"}')
    assert response.status_code == 200, response.text
    assert seconds_of(response.content, "pcm") > 0.5


@pytest.mark.parametrize(
    ("fields", "param"),
    [('"voice": "\\udcff"', "voice"), ('"voice": {"id": "joe\\udcff"}', "voice"), ('"voice": "alloy\\u0000"', "voice"),
     ('"model": "\\udcff"', "model"), ('"model": "tts-1\\u0000"', "model")],
    ids=["voice-surrogate", "voice-object-surrogate", "voice-nul", "model-surrogate", "model-nul"],
)
def test_a_voice_or_model_that_is_not_text_gets_the_envelope(tts: Gateway, fields: str, param: str) -> None:
    response = raw_post(tts, f'{{"input": "Hello.", {fields}}}')
    error = assert_envelope(response, 400, "malformed", param, param, "send a")
    json.dumps(error, ensure_ascii=False).encode("utf-8")  # the message itself is valid text
    assert_serving(tts)
