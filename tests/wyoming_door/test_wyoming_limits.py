"""What bounds one Wyoming request, as `max_upload_mb` bounds an HTTP upload: its audio, and the text
of a streamed synthesis. Past the bound the request ends with an `overflow` error event; the connection
goes on serving."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from wyoming.asr import Transcribe
from wyoming.error import Error
from wyoming.info import Describe
from wyoming.tts import SynthesizeChunk, SynthesizeStart, SynthesizeStop
from wyoming_harness import Pcm, WyomingServer, client, read_until, send_audio, talk

pytestmark = pytest.mark.slow

LIMIT_MB = 0.002  # 2,097 bytes


@pytest.fixture(scope="module")
def server(models_cache: Path) -> Iterator[WyomingServer]:
    from aistack.settings import Settings

    running = WyomingServer(Settings(cache_dir=models_cache, wyoming={"uri": "tcp://127.0.0.1:0"}, max_upload_mb=LIMIT_MB))
    try:
        yield running
    finally:
        running.close()


def until_info(connection) -> list:
    async def read() -> list:
        events: list = []
        while not events or events[-1].type != "info":
            events += await read_until(connection, "info")
        return events

    return read()  # type: ignore[return-value]


def test_audio_over_the_upload_limit_is_an_overflow(server: WyomingServer) -> None:
    async def scenario() -> list:
        async with client(server.uri) as connection:
            await send_audio(connection, Pcm(16000, 2, 1, bytes(4096)), Transcribe(name="whisper-tiny.en"))
            await connection.write_event(Describe().event())
            return await until_info(connection)

    events = talk(scenario)
    assert [e.type for e in events] == ["error", "info"]  # no transcript for the refused request
    error = Error.from_event(events[0])
    assert error.code == "overflow" and "0.002 MB" in error.text and "AISTACK_MAX_UPLOAD_MB" in error.text


def test_streamed_text_over_the_limit_ends_the_stream_with_an_overflow(server: WyomingServer) -> None:
    async def scenario() -> list:
        async with client(server.uri) as connection:
            await connection.write_event(SynthesizeStart().event())
            for _ in range(30):  # 30 x 100 bytes
                await connection.write_event(SynthesizeChunk(text="Say it. " + "x" * 92).event())
            await connection.write_event(SynthesizeStop().event())
            await connection.write_event(Describe().event())
            return await until_info(connection)

    events = talk(scenario)
    types = [e.type for e in events]
    # What was spoken before the bound may have come first; then the error, and nothing more for the stream.
    assert types[-2:] == ["error", "info"] and types.count("error") == 1, types
    assert "synthesize-stopped" not in types
    error = Error.from_event(events[-2])
    assert error.code == "overflow" and "streamed text" in error.text
    assert server.runtime.scheduler.total_running() == 0
