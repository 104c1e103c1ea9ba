"""GET /v1/realtime: live transcription over the WebSocket, with the official `openai` SDK's realtime client
and a raw `websockets` client, on Piper speech of three sentences with 1 s pauses, against the real
whisper-tiny.en; each turn's transcript is compared with the HTTP transcription of the same audio."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import logging
import re
import time
import wave
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import av
import httpx
import numpy as np
import pytest
import websockets

from conftest import _serve_in_thread, bound_socket, wait_until, words

pytestmark = pytest.mark.slow

MODEL = "whisper-tiny.en"
SENTENCES = (
    "Every morning the baker opens his small shop at six o'clock and bakes fresh bread for the people of the village.",
    "The quick brown fox jumps over the lazy dog near the river bank.",
    "Children stop by on their way to school.",
)
RATE = 24_000
FRAME_BYTES = RATE * 2 * 40 // 1000  # 40 ms of PCM16
GA_UPDATE = {"type": "session.update", "event_id": "evt_update",
             "session": {"type": "transcription", "audio": {"input": {"transcription": {"model": MODEL}}}}}


def to_pcm16_24k(samples: np.ndarray, rate: int) -> np.ndarray:
    resampler = av.AudioResampler(format="s16", layout="mono", rate=RATE)
    frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
    frame.sample_rate = rate
    frame.pts = 0
    return np.concatenate([out.to_ndarray().reshape(-1) for out in [*resampler.resample(frame), *resampler.resample(None)]])


def wav_bytes(pcm: np.ndarray, rate: int = RATE) -> bytes:
    out = io.BytesIO()
    with wave.open(out, "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(rate)
        wav.writeframes(pcm.astype("<i2").tobytes())
    return out.getvalue()


@dataclass(frozen=True)
class Speech:
    sentences: tuple[np.ndarray, ...]  # each sentence alone, PCM16 at 24 kHz
    stream: bytes  # 0.5 s of silence, the three sentences with 1 s of silence after each, then 1 s more


@pytest.fixture(scope="module")
def three_sentences(piper_voice) -> Speech:
    from piper import SynthesisConfig

    still = SynthesisConfig(noise_scale=0.0, noise_w_scale=0.0)
    sentences = []
    for text in SENTENCES:
        chunks = list(piper_voice.synthesize(text, syn_config=still))
        sentences.append(to_pcm16_24k(np.concatenate([c.audio_int16_array for c in chunks]), chunks[0].sample_rate))
    second = np.zeros(RATE, dtype=np.int16)
    parts = [second[: RATE // 2]]
    for sentence in sentences:
        parts += [sentence, second]
    parts.append(second)
    return Speech(tuple(sentences), np.concatenate(parts).astype("<i2").tobytes())


@dataclass
class RealtimeGateway:
    url: str
    runtime: Any
    server: Any

    @property
    def ws_url(self) -> str:
        return self.url.replace("http://", "ws://") + "/v1/realtime"

    def run_on_loop(self, coroutine_function: Any) -> Any:
        """Run a coroutine on the gateway's own event loop (to read its tasks)."""
        loop = self.runtime._background[0].get_loop()
        return asyncio.run_coroutine_threadsafe(coroutine_function(), loop).result(timeout=10)

    def session_tasks(self) -> list[str]:
        async def names() -> list[str]:
            return [t.get_name() for t in asyncio.all_tasks() if t.get_name().startswith("realtime-")]

        result: list[str] = self.run_on_loop(names)
        return result

    def leaves_nothing(self) -> bool:
        scheduler = self.runtime.scheduler
        return (scheduler.total_running() == 0 and scheduler.total_queued() == 0 and not self.runtime.realtime.sessions
                and not self.session_tasks())



@contextmanager
def realtime_gateway(models_cache, **overrides) -> Iterator[RealtimeGateway]:
    """An in-process gateway with these setting overrides, stopped when the block ends."""
    from aistack.settings import Settings

    sock = bound_socket()
    settings = Settings(cache_dir=models_cache, port=sock.getsockname()[1], **overrides)
    gateway = _serve_in_thread(settings, sock)
    try:
        yield RealtimeGateway(gateway.url, gateway.runtime, gateway.server)
    finally:
        gateway.server.should_exit = True  # type: ignore[attr-defined]
        gateway.thread.join(timeout=15)
        sock.close()


@pytest.fixture(scope="module")
def live(models_cache) -> Iterator[RealtimeGateway]:
    with realtime_gateway(models_cache) as gateway:
        yield gateway


@pytest.fixture(scope="module")
def strict(models_cache) -> Iterator[RealtimeGateway]:
    """Small limits, for the hostile cases."""
    from aistack.settings import RealtimeSettings

    with realtime_gateway(models_cache, realtime=RealtimeSettings(max_event_mb=0.05, max_buffer_s=5.0,
                                                                  final_slot_wait_s=1.5)) as gateway:
        yield gateway


@pytest.fixture(scope="module")
def http_transcripts(live: RealtimeGateway, three_sentences: Speech) -> list[str]:
    """What POST /v1/audio/transcriptions makes of each sentence, as the same 24 kHz samples."""
    texts = []
    with httpx.Client(base_url=live.url, timeout=120) as client:
        for pcm in three_sentences.sentences:
            response = client.post("/v1/audio/transcriptions", data={"model": MODEL},
                                   files={"file": ("turn.wav", wav_bytes(pcm), "audio/wav")})
            assert response.status_code == 200, response.text
            texts.append(response.json()["text"])
    return texts


def append(chunk: bytes) -> str:
    return json.dumps({"type": "input_audio_buffer.append", "audio": base64.b64encode(chunk).decode()})


async def send_audio(send: Any, audio: bytes, paced: bool) -> None:
    """40 ms frames, at real-time pace or as fast as the socket takes them."""
    started = time.perf_counter()
    for index, offset in enumerate(range(0, len(audio), FRAME_BYTES)):
        await send(append(audio[offset:offset + FRAME_BYTES]))
        if paced:
            await asyncio.sleep(max(0.0, started + (index + 1) * 0.04 - time.perf_counter()))


async def events_until(receive: Any, done: Any, timeout: float = 120.0) -> list[dict[str, Any]]:
    """Server events as dicts until `done(events)` holds."""
    seen: list[dict[str, Any]] = []

    async def collect() -> None:
        while not done(seen):
            seen.append(await receive())

    await asyncio.wait_for(collect(), timeout)
    return seen


def finals(seen: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in seen if e["type"].startswith("conversation.item.input_audio_transcription.") and e["type"][-6:] in
            ("pleted", "failed")]


def three_finals(seen: list[dict[str, Any]]) -> bool:
    return len(finals(seen)) >= 3


def check_three_turns(seen: list[dict[str, Any]], http_transcripts: list[str]) -> None:
    types = [e["type"] for e in seen]
    for kind in ("input_audio_buffer.speech_started", "input_audio_buffer.speech_stopped", "input_audio_buffer.committed",
                 "conversation.item.input_audio_transcription.completed"):
        assert types.count(kind) == 3, (kind, types)
    items = [e["item_id"] for e in seen if e["type"] == "input_audio_buffer.committed"]
    assert len(set(items)) == 3
    completed = {e["item_id"]: e for e in seen if e["type"] == "conversation.item.input_audio_transcription.completed"}
    for item, expected in zip(items, http_transcripts, strict=True):
        order = [e["type"].rsplit(".", 1)[-1] for e in seen if e.get("item_id") == item and not e["type"].endswith("delta")]
        assert order == ["speech_started", "speech_stopped", "committed", "completed"]
        assert words(completed[item]["transcript"]) == words(expected)
        usage = completed[item]["usage"]
        assert usage["type"] == "duration" and 1.0 < usage["seconds"] < 9.0
        deltas = [e for e in seen if e["type"] == "conversation.item.input_audio_transcription.delta" and e["item_id"] == item]
        # Deltas are never taken back: all of them arrive before the turn's final transcript, and each
        # adds words to the ones before it (the first without a leading space, the others with one).
        assert all(seen.index(d) < seen.index(completed[item]) for d in deltas)
        pieces = [d["delta"] for d in deltas]
        assert all(piece.strip() for piece in pieces)
        assert not pieces or (not pieces[0].startswith(" ") and all(p.startswith(" ") for p in pieces[1:]))
    started = [e["audio_start_ms"] for e in seen if e["type"] == "input_audio_buffer.speech_started"]
    stopped = [e["audio_end_ms"] for e in seen if e["type"] == "input_audio_buffer.speech_stopped"]
    assert started[0] < stopped[0] < started[1] < stopped[1] < started[2] < stopped[2]


def delta_before_stop(seen: list[dict[str, Any]], item: str) -> bool:
    for event in seen:
        if event.get("item_id") != item:
            continue
        if event["type"] == "conversation.item.input_audio_transcription.delta":
            return bool(event["delta"].strip())
        if event["type"] == "input_audio_buffer.speech_stopped":
            return False
    return False


def test_sdk_realtime_client_with_intent_transcription_at_real_time_pace(
    live: RealtimeGateway, three_sentences: Speech, http_transcripts: list[str]
) -> None:
    from openai import AsyncOpenAI

    async def run() -> list[dict[str, Any]]:
        client = AsyncOpenAI(base_url=f"{live.url}/v1", api_key="unused")
        async with client.realtime.connect(extra_query={"intent": "transcription"}) as connection:
            async def receive() -> dict[str, Any]:
                event = await connection.recv()  # the SDK's own typed events
                dumped: dict[str, Any] = event.model_dump(exclude_unset=True)
                return dumped

            created = await receive()
            assert created["type"] == "session.created" and created["session"]["type"] == "transcription"
            await connection.session.update(session={
                "type": "transcription",
                "audio": {"input": {"format": {"type": "audio/pcm", "rate": 24000},
                                    "transcription": {"model": MODEL, "language": "en"},
                                    "turn_detection": {"type": "server_vad", "silence_duration_ms": 500}}},
            })
            updated = await receive()
            assert updated["type"] == "session.updated", updated
            assert updated["session"]["audio"]["input"]["transcription"]["model"] == MODEL
            assert updated["session"]["audio"]["input"]["turn_detection"]["silence_duration_ms"] == 500

            async def send(frame: str) -> None:
                await connection.input_audio_buffer.append(audio=json.loads(frame)["audio"])

            sender = asyncio.create_task(send_audio(send, three_sentences.stream, paced=True))
            seen = await events_until(receive, three_finals)
            await sender
            return seen

    seen = asyncio.run(run())
    check_three_turns(seen, http_transcripts)
    items = [e["item_id"] for e in seen if e["type"] == "input_audio_buffer.committed"]
    longest = max(range(3), key=lambda i: len(three_sentences.sentences[i]))
    assert delta_before_stop(seen, items[longest]), [e["type"] for e in seen]
    assert wait_until(live.leaves_nothing)


async def ga_session(url: str, audio: bytes, paced: bool, update: dict[str, Any] = GA_UPDATE,
                     done: Any = three_finals) -> list[dict[str, Any]]:
    async with websockets.connect(url) as ws:
        async def receive() -> dict[str, Any]:
            return json.loads(await ws.recv())

        created = await receive()
        assert created["type"] == "session.created" and created["session"]["type"] == "transcription"
        await ws.send(json.dumps(update))
        updated = await receive()
        assert updated["type"] == "session.updated", updated
        assert updated["session"]["audio"]["input"]["transcription"]["model"] == MODEL
        assert updated["session"]["audio"]["input"]["format"] == {"type": "audio/pcm", "rate": 24000}
        sender = asyncio.create_task(send_audio(ws.send, audio, paced))
        seen = await events_until(receive, done)
        await sender
        return seen


async def beta_sdk_session(base_url: str, audio: bytes) -> list[dict[str, Any]]:
    """The SDK's earlier (beta) realtime client: `transcription_session.*` events."""
    from openai import AsyncOpenAI

    # The beta client goes to wss:// unless told the WebSocket base URL.
    client = AsyncOpenAI(base_url=f"{base_url}/v1", websocket_base_url=f"{base_url.replace('http://', 'ws://')}/v1",
                         api_key="unused")
    async with client.beta.realtime.connect(model=MODEL, extra_query={"intent": "transcription"}) as connection:
        async def receive() -> dict[str, Any]:
            return json.loads(await connection.recv_bytes())

        created = await receive()
        assert created["type"] == "transcription_session.created", created
        await connection.send({  # type: ignore[arg-type]
            "type": "transcription_session.update",
            "session": {"input_audio_format": "pcm16", "input_audio_transcription": {"model": MODEL},
                        "turn_detection": {"type": "server_vad", "threshold": 0.5}},
        })
        updated = await receive()
        assert updated["type"] == "transcription_session.updated", updated
        assert updated["session"]["input_audio_transcription"]["model"] == MODEL
        assert updated["session"]["input_audio_format"] == "pcm16"

        async def send(frame: str) -> None:
            await connection.input_audio_buffer.append(audio=json.loads(frame)["audio"])

        sender = asyncio.create_task(send_audio(send, audio, paced=False))
        seen = await events_until(receive, three_finals)
        await sender
        return seen


def test_two_sessions_at_once_in_both_dialects_sent_as_fast_as_possible(
    live: RealtimeGateway, three_sentences: Speech, http_transcripts: list[str]
) -> None:
    """A raw `websockets` client in the GA form and the SDK's beta client (`transcription_session.update`)."""
    async def both() -> list[list[dict[str, Any]]]:
        return list(await asyncio.gather(ga_session(live.ws_url, three_sentences.stream, paced=False),
                                         beta_sdk_session(live.url, three_sentences.stream)))

    for seen in asyncio.run(both()):
        check_three_turns(seen, http_transcripts)
    assert wait_until(live.leaves_nothing)


MANUAL_UPDATE = {"type": "session.update", "session": {"type": "transcription", "audio": {"input": {
    "transcription": {"model": MODEL}, "turn_detection": None}}}}


def test_manual_commit_and_clear(live: RealtimeGateway, three_sentences: Speech, http_transcripts: list[str],
                                 caplog: pytest.LogCaptureFixture) -> None:
    first, second = (pcm.astype("<i2").tobytes() for pcm in three_sentences.sentences[:2])
    session_ids = []

    async def run() -> list[dict[str, Any]]:
        async with websockets.connect(live.ws_url) as ws:
            async def receive() -> dict[str, Any]:
                return json.loads(await ws.recv())

            session_ids.append((await receive())["session"]["id"])
            await ws.send(json.dumps(MANUAL_UPDATE))
            updated = await receive()
            assert updated["session"]["audio"]["input"]["turn_detection"] is None
            await send_audio(ws.send, second, paced=False)
            await ws.send(json.dumps({"type": "input_audio_buffer.clear"}))
            assert (await receive())["type"] == "input_audio_buffer.cleared"
            await ws.send(json.dumps({"type": "input_audio_buffer.commit", "event_id": "evt_empty"}))
            empty = await receive()
            assert empty["type"] == "error" and empty["error"]["event_id"] == "evt_empty"
            assert "100 ms" in empty["error"]["message"]
            await send_audio(ws.send, first, paced=False)
            await ws.send(json.dumps({"type": "input_audio_buffer.commit"}))
            return await events_until(receive, lambda seen: len(finals(seen)) >= 1)

    caplog.set_level(logging.INFO, logger="aistack.access")
    seen = asyncio.run(run())
    assert [e["type"] for e in seen] == ["input_audio_buffer.committed", "conversation.item.input_audio_transcription.completed"]
    # The cleared sentence is gone: only the one sent after the clear is in the transcript.
    assert words(seen[1]["transcript"]) == words(http_transcripts[0])
    assert seen[0]["item_id"] == seen[1]["item_id"] and seen[0]["previous_item_id"] is None
    assert wait_until(live.leaves_nothing)
    # One access line for the session: its duration, audio seconds (both sentences), turns and why it closed.
    def access_lines() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.name == "aistack.access" and session_ids[0] in r.getMessage()]

    assert wait_until(access_lines)
    lines = access_lines()
    assert len(lines) == 1, lines
    assert f"WS /v1/realtime ga model={MODEL} " in lines[0] and " turns=1 " in lines[0]
    assert "close='client closed'" in lines[0]
    audio_s = float(re.search(r" audio=([\d.]+)s ", lines[0]).group(1))  # type: ignore[union-attr]
    assert audio_s == pytest.approx((len(first) + len(second)) / 2 / RATE, abs=0.1)


def test_hostile_events_get_an_error_event_and_the_socket_stays_open(strict: RealtimeGateway) -> None:
    silence = bytes(FRAME_BYTES)
    cases: list[tuple[str, str, str | None, str]] = [
        ("{not json", "malformed", None, "not JSON"),
        ("[1, 2]", "malformed", None, "not a JSON object"),
        (json.dumps({"type": "response.create", "event_id": "e1"}), "malformed", "type", "input_audio_buffer.append"),
        (json.dumps({"event_id": "e2"}), "malformed", "type", "no string `type`"),
        (json.dumps({"type": "input_audio_buffer.append", "audio": "!!not base64!!", "event_id": "e3"}), "malformed",
         "audio", "base64"),
        (json.dumps({"type": "input_audio_buffer.append", "audio": base64.b64encode(b"\x00\x01\x02").decode()}), "malformed",
         "audio", "16-bit"),
        (json.dumps({"type": "input_audio_buffer.append"}), "malformed", "audio", "audio"),
        (json.dumps({"type": "session.update", "session": {"type": "transcription", "audio": {"input": {
            "format": {"type": "audio/wav"}}}}}), "malformed", "session.audio.input.format.type", "audio/pcm"),
        (json.dumps({"type": "session.update", "session": {"type": "transcription", "audio": {"input": {
            "format": {"type": "audio/pcm", "rate": 16000}}}}}), "malformed", "session.audio.input.format.rate", "24000"),
        (json.dumps({"type": "session.update", "session": {"type": "realtime"}}), "malformed", "session.type", "transcription"),
        (json.dumps({"type": "session.update", "session": {"type": "transcription", "audio": {"input": {
            "turn_detection": {"type": "semantic_vad"}}}}}), "malformed", "session.audio.input.turn_detection.type", "server_vad"),
        (json.dumps({"type": "session.update", "session": {"type": "transcription", "audio": {"input": {
            "transcription": {"model": "no-such-model"}}}}}), "not_found", "session.audio.input.transcription.model",
         "no-such-model"),
        (json.dumps({"type": "input_audio_buffer.commit", "event_id": "e4"}), "malformed", None, "100 ms"),
        (append(bytes(60_000)), "overflow", None, "bytes"),
    ]

    async def run() -> list[dict[str, Any]]:
        async with websockets.connect(strict.ws_url) as ws:
            async def receive() -> dict[str, Any]:
                return json.loads(await ws.recv())

            await receive()
            errors = []
            for frame, *_ in cases:
                await ws.send(frame)
                errors.append(await receive())
            await ws.send(b"\x00binary")
            errors.append(await receive())
            # Manual commit: a buffer over max_buffer_s (5 s) refuses the append that would pass it.
            await ws.send(json.dumps(MANUAL_UPDATE))
            assert (await receive())["type"] == "session.updated"
            for _ in range(125):  # 5.0 s in 40 ms frames: all fit
                await ws.send(append(silence))
            await ws.send(json.dumps({"type": "input_audio_buffer.append", "event_id": "e5",
                                      "audio": base64.b64encode(silence).decode()}))
            errors.append(await receive())
            # Still serving after all of it.
            await ws.send(json.dumps({"type": "input_audio_buffer.clear"}))
            errors.append(await receive())
            return errors

    answers = asyncio.run(run())
    for (_, kind, param, needle), answer in zip(cases, answers, strict=False):
        assert answer["type"] == "error", answer
        error = answer["error"]
        assert error["code"] == kind and error["kind"] == kind, answer
        assert error["param"] == param, answer
        assert needle in error["message"], answer
    assert [a["error"].get("event_id") for a in answers[2:5]] == ["e1", "e2", "e3"]
    assert answers[len(cases)]["error"]["message"].startswith("binary frames")
    buffer_full = answers[len(cases) + 1]["error"]
    assert buffer_full["code"] == "overflow" and buffer_full["event_id"] == "e5" and "5 s" in buffer_full["message"]
    assert answers[-1]["type"] == "input_audio_buffer.cleared"
    assert wait_until(strict.leaves_nothing)


def test_a_session_past_its_maximum_length_is_closed_with_the_reason(models_cache) -> None:
    from aistack.settings import RealtimeSettings

    async def run(url: str) -> tuple[list[dict[str, Any]], Any]:
        async with websockets.connect(url) as ws:
            seen = []
            with pytest.raises(websockets.ConnectionClosed) as closed:
                while True:
                    seen.append(json.loads(await asyncio.wait_for(ws.recv(), 60)))
            return seen, closed.value

    with realtime_gateway(models_cache, realtime=RealtimeSettings(max_session_s=1.0)) as short:
        seen, closed = asyncio.run(run(short.ws_url))
        assert wait_until(short.leaves_nothing)
    assert seen[0]["type"] == "session.created"
    assert seen[-1]["type"] == "error" and seen[-1]["error"]["code"] == "overflow"
    assert "maximum length of 1 s" in seen[-1]["error"]["message"]
    assert closed.rcvd.code == 1008 and "maximum length" in closed.rcvd.reason


def test_a_client_gone_mid_turn_leaves_no_slot_task_or_session(live: RealtimeGateway, three_sentences: Speech) -> None:
    audio = three_sentences.stream
    scheduler = live.runtime.scheduler

    async def run() -> None:
        async with websockets.connect(live.ws_url) as ws:
            await ws.recv()
            await ws.send(json.dumps(GA_UPDATE))
            await ws.recv()
            # The first sentence and its pause (its final starts), then half the second (a turn in progress).
            cut = (RATE // 2 + len(three_sentences.sentences[0]) + RATE + len(three_sentences.sentences[1]) // 2) * 2
            await send_audio(ws.send, audio[:cut], paced=False)
            while True:
                event = json.loads(await ws.recv())
                if event["type"] == "input_audio_buffer.speech_started" and event["audio_start_ms"] > 3000:
                    break
            assert wait_until(lambda: scheduler.total_running() >= 1, timeout=30)  # the first turn's final holds a slot
        # The socket is closed here, mid-turn and mid-decode.

    asyncio.run(run())
    assert wait_until(live.leaves_nothing, timeout=60)
    assert scheduler.queue("cpu").stopping == 0


def g711(pcm: np.ndarray, codec: str) -> bytes:
    """8 kHz G.711 bytes of 24 kHz PCM16, encoded by FFmpeg."""
    resampler = av.AudioResampler(format="s16", layout="mono", rate=8000)
    frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1).astype(np.int16), format="s16", layout="mono")
    frame.sample_rate = RATE
    frame.pts = 0
    encoder = av.CodecContext.create(codec, "w")
    encoder.sample_rate, encoder.layout, encoder.format = 8000, "mono", "s16"  # type: ignore[attr-defined]
    encoder.open()
    out = b""
    for piece in [*resampler.resample(frame), *resampler.resample(None)]:
        out += b"".join(bytes(packet) for packet in encoder.encode(piece))  # type: ignore[attr-defined]
    out += b"".join(bytes(packet) for packet in encoder.encode(None))  # type: ignore[attr-defined]
    return out


@pytest.mark.parametrize(("ga_format", "legacy_format", "codec"), [("audio/pcmu", "g711_ulaw", "pcm_mulaw"),
                                                                   ("audio/pcma", "g711_alaw", "pcm_alaw")])
def test_g711_input(live: RealtimeGateway, three_sentences: Speech, ga_format: str, legacy_format: str, codec: str) -> None:
    sentence = three_sentences.sentences[1]
    silence = np.zeros(RATE, dtype=np.int16)
    audio = g711(np.concatenate([silence[: RATE // 2], sentence, silence]), codec)
    update = {"type": "session.update", "session": {"type": "transcription", "audio": {"input": {
        "format": {"type": ga_format}, "transcription": {"model": MODEL}}}}}

    async def run() -> list[dict[str, Any]]:
        async with websockets.connect(live.ws_url) as ws:
            async def receive() -> dict[str, Any]:
                return json.loads(await ws.recv())

            await receive()
            await ws.send(json.dumps(update))
            updated = await receive()
            assert updated["session"]["audio"]["input"]["format"] == {"type": ga_format, "rate": 8000}
            for offset in range(0, len(audio), 320):  # 40 ms at 8 kHz, one byte a sample
                await ws.send(append(audio[offset:offset + 320]))
            return await events_until(receive, lambda seen: len(finals(seen)) >= 1)

    seen = asyncio.run(run())
    completed = finals(seen)[0]
    assert completed["type"] == "conversation.item.input_audio_transcription.completed"
    assert words(completed["transcript"]) == words(SENTENCES[1])

    async def legacy() -> dict[str, Any]:
        # A browser on the earlier dialect says so with a subprotocol (it cannot set the OpenAI-Beta header).
        async with websockets.connect(live.ws_url + "?intent=transcription",
                                      subprotocols=["realtime", "openai-beta.realtime-v1"]) as ws:  # type: ignore[list-item]
            assert ws.subprotocol == "realtime"
            assert json.loads(await ws.recv())["type"] == "transcription_session.created"
            await ws.send(json.dumps({"type": "transcription_session.update", "session": {"input_audio_format": legacy_format}}))
            answer: dict[str, Any] = json.loads(await ws.recv())
            return answer

    assert asyncio.run(legacy())["session"]["input_audio_format"] == legacy_format


async def _first_event_type(url: str, **options: Any) -> str:
    async with websockets.connect(url, **options) as ws:
        return str(json.loads(await ws.recv())["type"])


def test_api_key_by_bearer_header_or_subprotocol(models_cache) -> None:
    with realtime_gateway(models_cache, api_key="sesame") as gateway:
        url = gateway.ws_url
        assert asyncio.run(_first_event_type(url, additional_headers={"Authorization": "Bearer sesame"})) == "session.created"
        subprotocols = ["realtime", "openai-insecure-api-key.sesame"]
        assert asyncio.run(_first_event_type(url, subprotocols=subprotocols)) == "session.created"
        for wrong in ({"additional_headers": {"Authorization": "Bearer nope"}},
                      {"subprotocols": ["realtime", "openai-insecure-api-key.nope"]}, {}):
            with pytest.raises(websockets.InvalidStatus) as refused:
                asyncio.run(_first_event_type(url, **wrong))
            assert refused.value.response.status_code == 401
            body = json.loads(refused.value.response.body)
            assert body["error"]["kind"] == "unauthorized" and "openai-insecure-api-key" in body["error"]["message"]


def test_a_final_without_a_slot_in_time_fails_busy_and_the_session_goes_on(strict: RealtimeGateway, three_sentences: Speech,
                                                                           http_transcripts: list[str]) -> None:
    sentence = three_sentences.sentences[1].astype("<i2").tobytes()  # shorter than strict's 5 s buffer
    scheduler = strict.runtime.scheduler

    async def take_the_slot() -> Any:
        return await scheduler.admit("cpu", "asr")

    async def run() -> list[dict[str, Any]]:
        async with websockets.connect(strict.ws_url) as ws:
            async def receive() -> dict[str, Any]:
                return json.loads(await ws.recv())

            await receive()
            await ws.send(json.dumps(MANUAL_UPDATE))
            await receive()
            lease = strict.run_on_loop(take_the_slot)  # every slot of this gateway (cpu_slots is 1 here) is taken
            assert scheduler.queue("cpu").slots == 1
            try:
                await send_audio(ws.send, sentence, paced=False)
                await ws.send(json.dumps({"type": "input_audio_buffer.commit"}))
                seen = await events_until(receive, lambda seen: len(finals(seen)) >= 1)
            finally:
                async def give_back() -> None:
                    lease.release()

                strict.run_on_loop(give_back)
            await send_audio(ws.send, sentence, paced=False)
            await ws.send(json.dumps({"type": "input_audio_buffer.commit"}))
            return seen + await events_until(receive, lambda seen: len(finals(seen)) >= 1)

    seen = asyncio.run(run())
    types = [e["type"] for e in seen]
    # While no slot was free no delta decode ran; the final waited 1.5 s, then failed as busy.
    assert types == ["input_audio_buffer.committed", "conversation.item.input_audio_transcription.failed",
                     "input_audio_buffer.committed", "conversation.item.input_audio_transcription.completed"]
    failed = seen[1]
    assert failed["item_id"] == seen[0]["item_id"] and failed["error"]["code"] == "busy"
    assert failed["error"]["type"] == "server_error" and "1.5 s" in failed["error"]["message"]
    assert words(seen[3]["transcript"]) == words(http_transcripts[1])
    assert seen[2]["previous_item_id"] == seen[0]["item_id"]
    assert wait_until(strict.leaves_nothing)


def test_a_server_vad_turn_longer_than_the_buffer_is_cut_and_goes_on(strict: RealtimeGateway, three_sentences: Speech) -> None:
    # A 10 s silence duration makes the whole stream one long turn; max_buffer_s (5 s here) cuts it.
    update = {"type": "session.update", "session": {"type": "transcription", "include": [
        "item.input_audio_transcription.logprobs"], "audio": {"input": {
            "transcription": {"model": MODEL}, "turn_detection": {"type": "server_vad", "silence_duration_ms": 10_000}}}}}

    def two_finals(seen: list[dict[str, Any]]) -> bool:
        return len(finals(seen)) >= 2

    seen = asyncio.run(ga_session(strict.ws_url, three_sentences.stream, paced=False, update=update, done=two_finals))
    kinds = [e["type"] for e in seen]
    assert kinds[:4] == ["input_audio_buffer.speech_started", "input_audio_buffer.speech_stopped",
                         "input_audio_buffer.committed", "input_audio_buffer.speech_started"]
    cut_at = seen[1]["audio_end_ms"]
    assert seen[3]["audio_start_ms"] == cut_at  # the speech goes on in the next turn, from where it was cut
    completed = [e for e in seen if e["type"] == "conversation.item.input_audio_transcription.completed"]
    assert len(completed) == 2
    assert all(e["usage"]["seconds"] <= 5.0 + 0.05 for e in completed)
    assert words(completed[0]["transcript"])[:4] == words(SENTENCES[0])[:4]
    # include: logprobs come with each final, one a token (as HTTP's include[]=logprobs): more of them
    # than words, since a sentence's full stop is a token of its own.
    for event in completed:
        assert event["logprobs"] and all(p["logprob"] <= 0 and bytes(p["bytes"]).decode() == p["token"]
                                         for p in event["logprobs"])
        assert words("".join(p["token"] for p in event["logprobs"])) == words(event["transcript"])
        assert len(event["logprobs"]) > len(event["transcript"].split())
    assert wait_until(strict.leaves_nothing)
