"""Live transcription sessions without any transport: typed client events in, typed server events out,
on the real whisper-tiny.en; closing a session mid-decode gives back its slot and ends its tasks."""

from __future__ import annotations

import asyncio
import base64
import json
from pathlib import Path

import pytest

from aistack.protocol import realtime as wire
from aistack.runtime import build_runtime
from aistack.services.realtime import SessionEnd
from aistack.settings import Settings, WhisperSettings
from conftest import ENGLISH_SENTENCE, pcm16_24k, run_on_runtime, words

pytestmark = pytest.mark.slow


def event(payload: dict[str, object]) -> wire.SessionUpdate | wire.TranscriptionSessionUpdate | wire.InputAudioBufferAppend \
        | wire.InputAudioBufferCommit | wire.InputAudioBufferClear:
    return wire.parse_client_event(json.dumps(payload))


def appends(audio: bytes) -> list[wire.InputAudioBufferAppend]:
    frame = 24_000 * 2 // 25  # 40 ms
    return [wire.InputAudioBufferAppend(type="input_audio_buffer.append", audio=base64.b64encode(audio[i:i + frame]).decode())
            for i in range(0, len(audio), frame)]


def early_final_runtime(models_cache: Path):
    """No partial decodes (a long delta interval), so nothing but a turn's final can hold the slot."""
    from aistack.settings import RealtimeSettings

    runtime = build_runtime(Settings(cache_dir=models_cache, whisper=WhisperSettings(worker_process=False),
                                     realtime=RealtimeSettings(delta_interval_s=3600)))
    runtime.prepare_weights()
    return runtime


async def first_completed(runtime, speech: bytes) -> tuple[object, wire.TranscriptionCompleted | None]:
    """A GA session on whisper-tiny.en with server VAD, sent `speech`; the session and its first completed."""
    session = await runtime.realtime.open("ga")
    await session.receive(event({"type": "session.update", "session": {"type": "transcription", "audio": {"input": {
        "transcription": {"model": "whisper-tiny.en"}}}}}))
    for append in appends(speech):
        await session.receive(append)
    async for item in session.events():
        assert not isinstance(item, (SessionEnd, wire.TranscriptionFailed)), item
        if isinstance(item, wire.TranscriptionCompleted):
            return session, item
    return session, None


def test_a_session_turns_appended_speech_into_a_transcript_and_closes_clean(models_cache: Path, english_wav: Path) -> None:
    runtime = build_runtime(Settings(cache_dir=models_cache, whisper=WhisperSettings(worker_process=False)))
    runtime.prepare_weights()
    speech = bytes(24_000) + pcm16_24k(english_wav) + bytes(48_000)  # 0.5 s, the sentence, 1 s

    async def body() -> None:
        session = await runtime.realtime.open("legacy")
        await session.receive(event({"type": "transcription_session.update", "session": {
            "input_audio_transcription": {"model": "whisper-tiny.en"}}}))
        for append in appends(speech):
            await session.receive(append)
        seen = []
        async for item in session.events():
            assert not isinstance(item, SessionEnd)
            seen.append(item)
            if isinstance(item, wire.TranscriptionCompleted):
                break
        kinds = [type(item).__name__ for item in seen]
        assert kinds[:2] == ["TranscriptionSessionCreated", "TranscriptionSessionUpdated"]
        assert [k for k in kinds[2:] if k != "TranscriptionDelta"] == ["SpeechStarted", "SpeechStopped", "Committed",
                                                                      "TranscriptionCompleted"]
        assert isinstance(seen[-1], wire.TranscriptionCompleted)
        assert words(seen[-1].transcript) == words(ENGLISH_SENTENCE)
        assert session.stats.turns == 1 and abs(session.stats.audio_s - len(speech) / 48_000) < 0.05
        await session.close()

        # Manual commit, then close while the final decodes: its slot comes back, its tasks end.
        second = await runtime.realtime.open("ga")
        await second.receive(event({"type": "session.update", "session": {"type": "transcription", "audio": {"input": {
            "transcription": {"model": "whisper-tiny.en"}, "turn_detection": None}}}}))
        for append in appends(speech):
            await second.receive(append)
        await second.receive(event({"type": "input_audio_buffer.commit"}))
        for _ in range(200):  # until the final holds its slot
            if runtime.scheduler.total_running():
                break
            await asyncio.sleep(0.01)
        assert runtime.scheduler.total_running() == 1
        await second.close()
        for _ in range(3000):  # the decode that was running stops at the end of its piece
            if runtime.scheduler.total_running() == 0:
                break
            await asyncio.sleep(0.01)
        assert runtime.scheduler.total_running() == 0 and not runtime.realtime.sessions
        assert not [t for t in asyncio.all_tasks() if t.get_name().startswith("realtime-")]

    run_on_runtime(runtime, body, timeout=120)


def test_the_final_decode_starts_in_the_trailing_silence_and_is_the_turns_transcript(models_cache: Path, english_wav: Path) -> None:
    runtime = early_final_runtime(models_cache)
    speech = bytes(24_000) + pcm16_24k(english_wav) + bytes(48_000)  # 0.5 s, the sentence, 1 s

    async def body() -> None:
        session, completed = await first_completed(runtime, speech)
        assert completed is not None and words(completed.transcript) == words(ENGLISH_SENTENCE)
        assert (session.stats.turns, session.stats.early_finals, session.stats.deltas) == (1, 1, 0)
        await session.close()
        assert runtime.scheduler.total_running() == 0

    run_on_runtime(runtime, body)


def test_speech_that_resumes_in_a_short_pause_keeps_its_words_in_the_turn(models_cache: Path, english_wav: Path) -> None:
    runtime = early_final_runtime(models_cache)
    sentence = pcm16_24k(english_wav)
    # With the sentence's own edges a pause of about 0.33 s: past the 0.2 s after which the final starts
    # early, short of the 0.5 s that ends a turn.
    speech = bytes(24_000) + sentence + bytes(5_760) + sentence + bytes(48_000)

    async def body() -> None:
        session, completed = await first_completed(runtime, speech)
        assert completed is not None and words(completed.transcript) == words(ENGLISH_SENTENCE) * 2
        assert session.stats.turns == 1
        await session.close()

    run_on_runtime(runtime, body)


def test_after_a_clear_speech_is_placed_and_cut_in_the_sessions_own_time(models_cache: Path, english_wav: Path) -> None:
    runtime = early_final_runtime(models_cache)
    sentence = pcm16_24k(english_wav)
    before_clear = bytes(24_000) + sentence[:len(sentence) // 4 * 2]  # 0.5 s, then half the sentence
    after_clear = bytes(48_000) + sentence + bytes(48_000)  # 1 s, the whole sentence, 1 s

    async def body() -> None:
        session = await runtime.realtime.open("ga")
        await session.receive(event({"type": "session.update", "session": {"type": "transcription", "audio": {"input": {
            "transcription": {"model": "whisper-tiny.en"}}}}}))
        events = session.events()
        for append in appends(before_clear):
            await session.receive(append)
        first = await anext(item async for item in events if isinstance(item, wire.SpeechStarted))
        await session.receive(event({"type": "input_audio_buffer.clear"}))
        for append in appends(after_clear):
            await session.receive(append)
        seen: list[object] = []
        async for item in events:
            assert not isinstance(item, (SessionEnd, wire.TranscriptionFailed)), item
            seen.append(item)
            if isinstance(item, wire.TranscriptionCompleted):
                break
        assert [type(item).__name__ for item in seen] == ["Cleared", "SpeechStarted", "SpeechStopped", "Committed",
                                                          "TranscriptionCompleted"], seen
        started = seen[1]
        assert isinstance(started, wire.SpeechStarted) and isinstance(first, wire.SpeechStarted)
        # The sentence's onset, counted from the session's first sample: as far into the new audio as
        # the first onset was into the first, give or take a VAD window or two.
        onset_in_sentence_ms = first.audio_start_ms - 500
        expected_ms = len(before_clear) * 1000 // 48_000 + 1000 + onset_in_sentence_ms
        assert abs(started.audio_start_ms - expected_ms) <= 100, (started.audio_start_ms, expected_ms)
        completed = seen[-1]
        assert isinstance(completed, wire.TranscriptionCompleted) and words(completed.transcript) == words(ENGLISH_SENTENCE)
        await session.close()

    run_on_runtime(runtime, body)


def test_gpt_4o_transcribe_is_served_as_auto_and_the_update_names_the_model_serving(models_cache: Path) -> None:
    runtime = build_runtime(Settings(cache_dir=models_cache, whisper=WhisperSettings(worker_process=False)))
    runtime.prepare_weights()

    async def served(model: str) -> str:
        session = await runtime.realtime.open("ga")
        await session.receive(event({"type": "session.update", "session": {"type": "transcription", "audio": {"input": {
            "transcription": {"model": model, "language": "en"}}}}}))
        updated = None
        async for item in session.events():
            if isinstance(item, wire.SessionUpdated):
                updated = item
                break
        await session.close()
        assert updated is not None and updated.session.audio.input.transcription is not None
        return updated.session.audio.input.transcription.model

    async def body() -> None:
        assert await served("gpt-4o-transcribe") == await served("auto") != "auto"

    run_on_runtime(runtime, body)
