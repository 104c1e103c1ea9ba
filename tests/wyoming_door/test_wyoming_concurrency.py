"""Many Wyoming clients at once: two requests inside their engines together, and a third, with every slot
taken and no queue, refused as a `busy` error event while the server still answers describe."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from wyoming.asr import Transcribe, Transcript
from wyoming.error import Error
from wyoming.info import Describe
from wyoming.tts import Synthesize
from wyoming_harness import WyomingServer, client, read_until, read_wav, send_audio, talk

from conftest import ENGLISH_SENTENCE, wait_until, words

pytestmark = pytest.mark.slow

HOLD_LIMIT_S = 30


@pytest.fixture(scope="module")
def server(models_cache: Path) -> Iterator[WyomingServer]:
    from aistack.settings import Settings

    settings = Settings(cache_dir=models_cache, wyoming={"uri": "tcp://127.0.0.1:0"},
                        scheduler={"cpu_slots": 2, "queue_size": 0})
    running = WyomingServer(settings)
    try:
        yield running
    finally:
        running.close()


def test_two_clients_at_once_and_a_third_told_busy(server: WyomingServer, english_wav: Path) -> None:
    english = read_wav(english_wav)
    inside: list[str] = []
    both_inside, release = threading.Event(), threading.Event()
    lock = threading.Lock()

    def hold_first_steps(model_id: str, index: int) -> None:
        if index != 0:
            return
        with lock:
            inside.append(model_id)
            if len(inside) == 2:
                both_inside.set()
        release.wait(HOLD_LIMIT_S)

    async def transcribing() -> list:
        async with client(server.uri) as connection:
            await send_audio(connection, english, Transcribe(name="whisper-tiny.en"))
            return await read_until(connection, "transcript-stop")

    async def synthesizing(text: str) -> list:
        async with client(server.uri) as connection:
            await connection.write_event(Synthesize(text=text).event())
            return await read_until(connection, "audio-stop")

    async def describing() -> list:
        async with client(server.uri) as connection:
            await connection.write_event(Describe().event())
            return await read_until(connection, "info")

    async def scenario() -> tuple[list, list, list, list]:
        first = asyncio.create_task(transcribing())
        second = asyncio.create_task(synthesizing("The first sentence is here. The second one follows it."))
        try:
            assert await asyncio.to_thread(both_inside.wait, HOLD_LIMIT_S), inside
            refused = await synthesizing("Is there room for me?")
            described = await describing()
        finally:
            release.set()
        return await first, await second, refused, described

    remove = server.runtime.events.on_step(hold_first_steps)
    try:
        heard, spoken, refused, described = talk(scenario)
    finally:
        release.set()
        remove()
    assert sorted(inside) == ["piper", "whisper-tiny.en"]
    error = Error.from_event(refused[-1])
    assert refused[-1].type == "error" and error.code == "busy", refused[-1]
    assert [e.type for e in described] == ["info"]
    transcript = Transcript.from_event(next(e for e in heard if e.type == "transcript"))
    assert words(transcript.text) == words(ENGLISH_SENTENCE), transcript.text
    assert [e.type for e in spoken] == ["audio-start", "audio-chunk", "audio-chunk", "audio-stop"]
    assert wait_until(lambda: server.runtime.scheduler.total_running() == 0)
    assert wait_until(lambda: server.sessions() == 0) and server.wyoming_tasks() == []
