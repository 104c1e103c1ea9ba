"""The Qwen3-TTS upstream on its own: the audio body decoder, the error-body reader, the request it
sends, its probe and its streaming call, against the loopback vLLM-Omni double (DESIGN §1, §4, §6)."""

from __future__ import annotations

import asyncio
import json
import math
import struct
import time
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aistack.engines.base import SpeechOptions
from aistack.engines.qwen3_tts import (
    COMPOSE_COMMAND,
    ENABLE_SETTING,
    NATIVE_SAMPLE_RATE,
    PcmStreamDecoder,
    Qwen3TtsBackend,
    WavError,
)
from aistack.engines.upstream_errors import MAX_MESSAGE_CHARS, upstream_message
from aistack.errors import AistackError, ErrorKind
from aistack.settings import Qwen3TtsSettings
from conftest import refused_url
from doubles.qwen3_tts_server import DEFAULT_MODEL, Qwen3TtsDouble, wav_header

RATE = 24_000


def tone(count: int, seed: int = 0) -> np.ndarray:
    """Distinct int16 samples covering the whole range, so a shifted or dropped byte shows."""
    return np.random.default_rng(seed).integers(-32768, 32767, size=count, dtype=np.int16)


def wav(samples: bytes, *, rate: int = RATE, channels: int = 1, bits: int = 16, tag: int = 1,
        data_size: int | None = None, before_data: bytes = b"", fmt_extra: bytes = b"", riff_size: int | None = None,
        after_data: bytes = b"") -> bytes:
    """A WAV body built by hand: `data_size` None is the streamed 0xFFFFFFFF placeholder."""
    fmt = struct.pack("<HHIIHH", tag, channels, rate, rate * channels * bits // 8, channels * bits // 8, bits) + fmt_extra
    size = 0xFFFFFFFF if data_size is None else data_size
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + (b"\0" if len(fmt) % 2 else b"")
    body += before_data + b"data" + struct.pack("<I", size) + samples + after_data
    riff = 0xFFFFFFFF if riff_size is None else riff_size
    return b"RIFF" + struct.pack("<I", riff) + body


def decode(pieces: list[bytes], raw_rate: int = RATE) -> tuple[np.ndarray, PcmStreamDecoder]:
    decoder = PcmStreamDecoder(raw_rate)
    out: list[np.ndarray] = []
    for piece in pieces:
        chunk = decoder.feed(piece)
        if chunk is not None:
            assert chunk.samples.dtype == np.int16 and chunk.samples.ndim == 1
            assert chunk.samples.size > 0
            assert chunk.sample_rate == decoder.sample_rate
            out.append(chunk.samples)
    decoder.finish()
    joined = np.concatenate(out) if out else np.zeros(0, dtype=np.int16)
    assert decoder.samples == joined.size
    return joined, decoder


def split_at(data: bytes, cuts: list[int]) -> list[bytes]:
    bounds = [0, *sorted(set(c for c in cuts if 0 < c < len(data))), len(data)]
    return [data[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]


# -- PcmStreamDecoder --------------------------------------------------------------------------


def test_wav_header_split_at_every_byte_offset_decodes_the_same_samples() -> None:
    samples = tone(300)
    body = wav_header(RATE, None) + samples.tobytes()
    for cut in range(1, 60):  # every split inside the 44-byte header and into the first samples
        got, decoder = decode([body[:cut], body[cut:]])
        assert decoder.sample_rate == RATE, cut
        np.testing.assert_array_equal(got, samples, err_msg=f"split at {cut}")


def test_wav_fed_one_byte_at_a_time() -> None:
    samples = tone(101)
    got, decoder = decode([bytes([b]) for b in wav(samples.tobytes(), rate=16_000)])
    assert decoder.sample_rate == 16_000
    np.testing.assert_array_equal(got, samples)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cuts=st.lists(st.integers(min_value=1, max_value=700), max_size=12), count=st.integers(0, 300))
def test_any_split_of_a_streamed_wav_gives_the_same_samples(cuts: list[int], count: int) -> None:
    samples = tone(count, seed=count)
    body = wav_header(RATE, None) + samples.tobytes()
    got, _ = decode(split_at(body, cuts))
    np.testing.assert_array_equal(got, samples)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cuts=st.lists(st.integers(min_value=1, max_value=700), max_size=12))
def test_any_split_of_raw_pcm_keeps_samples_whole(cuts: list[int]) -> None:
    samples = tone(333, seed=7)
    got, decoder = decode(split_at(samples.tobytes(), cuts), raw_rate=22_050)
    assert decoder.sample_rate == 22_050
    np.testing.assert_array_equal(got, samples)


def test_streamed_unknown_sizes_mean_until_the_end() -> None:
    samples = tone(5000)
    # 0xFFFFFFFF (what vLLM-Omni and OpenAI stream) and 0 (what some encoders write) are both "unknown".
    for size in (None, 0):
        got, _ = decode([wav(samples[:10].tobytes(), data_size=size), samples[10:].tobytes()])
        np.testing.assert_array_equal(got, samples)


def test_known_data_size_stops_at_the_end_of_data_and_ignores_trailing_chunks() -> None:
    samples = tone(200)
    trailer = b"LIST" + struct.pack("<I", 9) + b"INFOabcde\0"  # odd size, padded
    body = wav(samples.tobytes(), data_size=len(samples) * 2, riff_size=0, after_data=trailer)
    for cut in (44, 45, len(body) - len(trailer) - 1, len(body) - 3):
        got, _ = decode([body[:cut], body[cut:]])
        np.testing.assert_array_equal(got, samples)


def test_odd_data_size_leaves_its_pad_byte_out() -> None:
    samples = tone(50)
    data = samples.tobytes() + b"\x7f"  # a stray byte: not a whole sample
    got, _ = decode([wav(data, data_size=len(data), after_data=b"\0")])
    np.testing.assert_array_equal(got, samples)


def test_raw_pcm_is_taken_as_16_bit_mono_at_the_given_rate() -> None:
    samples = tone(480)
    got, decoder = decode([samples.tobytes()], raw_rate=NATIVE_SAMPLE_RATE)
    assert decoder.sample_rate == NATIVE_SAMPLE_RATE
    assert decoder.seconds == pytest.approx(480 / NATIVE_SAMPLE_RATE)
    np.testing.assert_array_equal(got, samples)


def test_odd_byte_splits_keep_a_half_sample_for_the_next_read() -> None:
    samples = tone(9)
    data = samples.tobytes()
    decoder = PcmStreamDecoder(RATE)
    first = decoder.feed(data[:5])  # sniffing needs 4 bytes; 2 whole samples and half a third
    assert first is not None
    np.testing.assert_array_equal(first.samples, samples[:2])
    assert decoder.feed(data[5:6]) is not None  # the third sample completes
    assert decoder.feed(data[6:7]) is None  # half a sample: nothing yet
    rest = decoder.feed(data[7:])
    assert rest is not None
    np.testing.assert_array_equal(rest.samples, samples[3:])
    assert decoder.samples == 9


def test_extra_chunks_before_data_are_skipped() -> None:
    samples = tone(64)
    before = (b"LIST" + struct.pack("<I", 5) + b"INFOx\0"  # odd size with its pad byte
              + b"fact" + struct.pack("<I", 4) + struct.pack("<I", 64))
    body = wav(samples.tobytes(), before_data=before, fmt_extra=struct.pack("<H", 0))  # an 18-byte fmt chunk
    for cut in range(1, 90, 3):
        got, _ = decode([body[:cut], body[cut:]])
        np.testing.assert_array_equal(got, samples, err_msg=f"split at {cut}")


def test_float32_stereo_is_mixed_down_to_int16_mono() -> None:
    left = np.array([0.5, -1.0, 1.0, 0.0, 2.0], dtype="<f4")
    right = np.array([0.25, -1.0, 0.0, -0.5, 2.0], dtype="<f4")  # 2.0 is clipped to 1.0
    frames = np.stack([left, right], axis=1).astype("<f4").tobytes()
    body = wav(frames, rate=44_100, channels=2, bits=32, tag=3)
    got, decoder = decode([body[:47], body[47:53], body[53:]])  # a frame split across reads
    assert decoder.sample_rate == 44_100
    expected = np.rint((np.clip(left, -1, 1) * 32767 + np.clip(right, -1, 1) * 32767) / 2).astype(np.int16)
    np.testing.assert_array_equal(got, expected)


def test_int16_stereo_and_32_bit_extensible_pcm() -> None:
    stereo = np.array([[1000, 3000], [-2000, -4000], [32767, 32767]], dtype="<i2")
    got, _ = decode([wav(stereo.tobytes(), channels=2)])
    np.testing.assert_array_equal(got, [2000, -3000, 32767])
    wide = np.array([65536 * 100, -65536 * 200, 2**31 - 1], dtype="<i4")
    # WAVE_FORMAT_EXTENSIBLE: cbSize, valid bits, channel mask, then the sub-format GUID (PCM = 1).
    extensible = struct.pack("<HHI", 22, 32, 4) + struct.pack("<H", 1) + bytes(14)
    got, _ = decode([wav(wide.tobytes(), bits=32, tag=0xFFFE, fmt_extra=extensible)])
    np.testing.assert_array_equal(got, [100, -200, 32767])


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        (b"RIFF\xff\xff\xff\xffAVI LIST", "not WAVE"),
        (wav(b"\0\0", bits=8), "unsupported WAV encoding"),
        (wav(b"\0\0", tag=6), "unsupported WAV encoding"),  # A-law
        (b"RIFF" + struct.pack("<I", 0) + b"WAVE" + b"data" + struct.pack("<I", 4) + b"\0" * 4, "before its fmt"),
        (b"RIFF" + struct.pack("<I", 0) + b"WAVE" + b"fmt " + struct.pack("<I", 8) + b"\0" * 8, "shorter than 16"),
    ],
)
def test_bodies_that_are_not_readable_audio_raise(body: bytes, problem: str) -> None:
    with pytest.raises(WavError, match=problem):
        decode([body])


@pytest.mark.parametrize("cut", [4, 11, 20, 43])
def test_a_body_that_ends_inside_the_header_raises_on_finish(cut: int) -> None:
    decoder = PcmStreamDecoder(RATE)
    assert decoder.feed(wav_header(RATE, None)[:cut]) is None
    with pytest.raises(WavError, match="ended inside the WAV header"):
        decoder.finish()


def test_a_tiny_raw_body_is_no_audio_rather_than_an_error() -> None:
    decoder = PcmStreamDecoder(RATE)
    assert decoder.feed(b"\x01\x02\x03") is None
    decoder.finish()
    assert decoder.samples == 0


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
