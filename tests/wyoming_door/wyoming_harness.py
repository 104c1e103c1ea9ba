"""A gateway runtime with its Wyoming door on a loop of its own (a thread), for tests that talk to it
with the wyoming package's own client as Home Assistant does, and look inside the server meanwhile."""

from __future__ import annotations

import asyncio
import threading
import wave
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from wyoming.asr import Transcribe
from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.client import AsyncClient
from wyoming.event import Event

T = TypeVar("T")

CHUNK_BYTES = 1024
# Generous: a deadline against a hung server, never a synchronisation.
READ_TIMEOUT_S = 120.0


class WyomingServer:
    """`build_runtime(settings)` started, and its door listening on 127.0.0.1 port 0."""

    def __init__(self, settings: Any) -> None:
        from aistack.runtime import build_runtime

        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="test-wyoming-loop", daemon=True)
        self.thread.start()
        self.runtime = build_runtime(settings)
        self.runtime.prepare_weights()
        self.door = self.call(self._up())
        self.uri = self.door.address

    def call(self, coroutine: Coroutine[Any, Any, T], timeout: float = 60.0) -> T:
        """Run `coroutine` on the server's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def sessions(self) -> int:
        async def count() -> int:
            return len(self.door.sessions)

        return self.call(count())

    def wyoming_tasks(self) -> list[str]:
        """The door's tasks still alive on the server loop (sessions and their workers)."""

        async def names() -> list[str]:
            return sorted(t.get_name() for t in asyncio.all_tasks() if t.get_name().startswith("aistack-wyoming") and not t.done())

        return self.call(names())

    def close(self) -> None:
        try:
            self.call(self._down())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(timeout=15)
            self.loop.close()

    async def _up(self) -> Any:
        from aistack.wyoming_door import wyoming_door

        await self.runtime.start()
        door = wyoming_door(self.runtime, self.runtime.settings.wyoming.uri)
        await door.start()
        return door

    async def _down(self) -> None:
        await self.door.stop()
        await self.runtime.stop()


def client(uri: str) -> AsyncClient:
    return AsyncClient.from_uri(uri, connect_timeout=10, read_timeout=READ_TIMEOUT_S)


def talk(scenario: Callable[[], Awaitable[T]]) -> T:
    """Run a client scenario on a loop of the test's own."""
    return asyncio.run(scenario())


@dataclass(frozen=True)
class Pcm:
    rate: int
    width: int
    channels: int
    data: bytes


def read_wav(path: Path) -> Pcm:
    with wave.open(str(path), "rb") as wav:
        return Pcm(wav.getframerate(), wav.getsampwidth(), wav.getnchannels(), wav.readframes(wav.getnframes()))


async def send_audio(connection: AsyncClient, pcm: Pcm, transcribe: Transcribe | None = None) -> None:
    """transcribe (if given), audio-start, the audio in 1,024-byte chunks, audio-stop."""
    if transcribe is not None:
        await connection.write_event(transcribe.event())
    await connection.write_event(AudioStart(rate=pcm.rate, width=pcm.width, channels=pcm.channels).event())
    for offset in range(0, len(pcm.data), CHUNK_BYTES):
        piece = pcm.data[offset:offset + CHUNK_BYTES]
        await connection.write_event(AudioChunk(rate=pcm.rate, width=pcm.width, channels=pcm.channels, audio=piece).event())
    await connection.write_event(AudioStop().event())


async def read_until(connection: AsyncClient, *last_types: str) -> list[Event]:
    """Events up to and including the first of `last_types` (or an error)."""
    events: list[Event] = []
    while True:
        event = await connection.read_event()
        assert event is not None, f"the server closed the connection after {[e.type for e in events]}"
        events.append(event)
        if event.type in last_types or event.type == "error":
            return events


def audio_of(events: list[Event]) -> Pcm:
    """The audio of one audio-start ... audio-stop answer."""
    start = next(e for e in events if e.type == "audio-start")
    data = b"".join(e.payload or b"" for e in events if e.type == "audio-chunk")
    return Pcm(start.data["rate"], start.data["width"], start.data["channels"], data)
