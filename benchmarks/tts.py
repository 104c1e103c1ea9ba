"""Text-to-speech speed: Piper on its own versus the same voice through `aistack serve`.

Run it with `.venv/bin/python benchmarks/tts.py [--runs N] [--format pcm|mp3|...]` (or `make bench`).

Two texts are spoken: one sentence, and one paragraph of five sentences. For each, and for --runs
repetitions (default 5, medians reported), four timings are taken one at a time, so they never
compete for the CPU; which of the two sides goes first alternates between repetitions, so slow
spells of this shared machine fall on both alike. Each side gets one untimed warm-up first (on the
gateway it includes the lazy load of the voice).

  direct stream   aistack's own PiperBackend in this process, built as build_runtime builds it
                  (settings.tts.piper and a WeightResolver over the same cache and model_paths),
                  probe() -> load(card) -> synthesizer.synthesize(text, SpeechOptions(voice)), each
                  PcmChunk (one per sentence) fed at once to SpeechEncoder(format), the encoder the
                  gateway streams with, then finish(). So both sides do the same work: synthesis,
                  resampling to 24 kHz and encoding.
                    TTFB: the first non-empty encoded bytes (the first PCM chunk's time, engine only,
                    is shown too).  total: the encoder's last bytes.
  direct whole    the gateway's non-streamed path in this process: every chunk synthesized first,
                  then encode_speech(chunks, format) once; total only.
  gateway stream  POST /v1/audio/speech {"model": "tts-1", "voice": "alloy"} (streams by default, as OpenAI's)
                  read with httpx on a kept-alive connection, measured by the client.
                    TTFB: the first non-empty body chunk.  total: the whole body read.
  gateway whole   the same POST with "whole_file": true (one Response, encoded after synthesis ends);
                  total only, compared with direct whole.
RTF (real-time factor) = total wall seconds / seconds of audio; below 1 is faster than real time.
"alloy" is an OpenAI voice name; the gateway maps it to the configured alias or Piper's default voice,
and the direct side resolves it the same way.

Why --format defaults to pcm: headerless 16-bit samples are what the gateway streams with the least
codec work (only the 22.05 -> 24 kHz resample), so the figures show the gateway's own cost (HTTP,
scheduling, threads) and Piper's, not LAME's; and the gateway's pcm byte count is a direct check of
the audio length. `--format mp3` (the API's default, what `curl` without response_format gets) times
the same comparison with MP3 encoding on both sides.

Progress goes to stderr; the figures go to stdout. Only 127.0.0.1 is contacted; the gateway is
stopped by its PID in a `finally`.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/ is not a package
import asr  # the gateway process wrapper, progress and table helpers

SENTENCE = "The quick brown fox jumps over the lazy dog near the bank of the river."
PARAGRAPH = (
    "Good morning, and thank you all for joining the weekly planning meeting. "
    "Before we start, a quick reminder that the office will be closed on Friday for maintenance. "
    "First on the agenda is the release of the new mobile application. "
    "The design team finished the last screens yesterday, and testing begins on Monday. "
    "We expect about two weeks of testing before the public launch."
)
TEXTS = (("sentence", SENTENCE), ("paragraph", PARAGRAPH))
VOICE = "alloy"
FORMATS = ("pcm", "wav", "mp3", "opus", "aac", "flac")
OUTPUT_SAMPLE_RATE = 24_000  # what every gateway format carries (aistack.audio.encode)


def gateway_env(workdir: Path) -> dict[str, str]:
    """This process's environment (so both sides read the same AISTACK_* settings), a private TMPDIR,
    and no network for the hub."""
    tmp = workdir / "tmp"
    tmp.mkdir(exist_ok=True)
    return {**os.environ, "TMPDIR": str(tmp), "HF_HUB_OFFLINE": "1"}


# -- direct ----------------------------------------------------------------------------------------


@dataclass
class Timing:
    first_s: float | None  # first audio bytes (None for a non-streamed response)
    total_s: float
    audio_s: float
    first_pcm_s: float | None = None  # direct only: the engine's first chunk, before encoding


class Direct:
    """aistack's PiperBackend in this process, as build_runtime makes it and the gateway calls it."""

    def __init__(self, settings: Any, response_format: str) -> None:
        from aistack.engines.base import SpeechOptions
        from aistack.engines.piper import PiperBackend
        from aistack.weights.resolver import WeightResolver

        self.response_format = response_format
        resolver = WeightResolver(settings.models_cache_dir, settings.model_paths)
        backend = PiperBackend(settings.tts.piper, resolver)
        status = backend.probe()
        if not status.cards:
            reasons = "; ".join(f"{u.reason} (fix: {u.fix})" for u in status.unavailable)
            raise SystemExit(f"Piper is not available here: {reasons}")
        self.card = status.cards[0]
        # What SpeechService._resolve_voice does with an OpenAI voice name.
        known = [v.id for v in backend.voices(self.card)]
        alias = settings.tts.voice_aliases.get(VOICE)
        self.voice = alias if alias in known else backend.default_voice(self.card)
        started = time.perf_counter()
        self.synthesizer = backend.load(self.card)
        self.load_s = time.perf_counter() - started
        self.options = SpeechOptions(voice=self.voice)
        self._backend = backend

    def run(self, text: str) -> Timing:
        from aistack.audio.encode import SpeechEncoder

        started = time.perf_counter()
        encoder = SpeechEncoder(self.response_format, 1.0)
        first_pcm: float | None = None
        first: float | None = None
        samples = rate = 0
        for chunk in self.synthesizer.synthesize(text, self.options):
            if first_pcm is None:
                first_pcm = time.perf_counter() - started
            samples, rate = samples + chunk.samples.size, chunk.sample_rate
            if encoder.feed(chunk) and first is None:
                first = time.perf_counter() - started
        if encoder.finish() and first is None:
            first = time.perf_counter() - started
        total = time.perf_counter() - started
        return Timing(first, total, samples / rate if rate else 0.0, first_pcm)

    def run_whole(self, text: str) -> Timing:
        """What the gateway does with whole_file: every chunk first, then encode_speech once."""
        from aistack.audio.encode import encode_speech

        started = time.perf_counter()
        chunks = list(self.synthesizer.synthesize(text, self.options))
        encode_speech(chunks, self.response_format, 1.0)
        total = time.perf_counter() - started
        return Timing(None, total, sum(c.samples.size / c.sample_rate for c in chunks))

    def close(self) -> None:
        self._backend.unload(self.synthesizer)


# -- gateway ---------------------------------------------------------------------------------------


class Gateway(asr.Gateway):
    """asr.Gateway with its own environment; health checks, log tail and stop are inherited."""

    def __init__(self, workdir: Path, env: dict[str, str], api_key: str | None) -> None:
        super().__init__(workdir, api_key, env)
        self.served_by: str | None = None

    def speak(self, text: str, response_format: str, stream: bool) -> tuple[Timing, bytes]:
        body: dict[str, Any] = {"model": "tts-1", "voice": VOICE, "input": text, "response_format": response_format}
        if not stream:
            body["whole_file"] = True  # aistack's way to one file with a Content-Length; streaming is the default
        parts: list[bytes] = []
        first: float | None = None
        started = time.perf_counter()
        with self.client.stream("POST", "/v1/audio/speech", json=body) as response:
            if response.status_code != 200:
                response.read()
                raise RuntimeError(f"the gateway answered {response.status_code}: {response.text}\n{self.log_tail()}")
            for part in response.iter_bytes():
                if part and first is None:
                    first = time.perf_counter() - started
                parts.append(part)
        total = time.perf_counter() - started
        self.served_by = response.headers.get("x-aistack-model")
        audio = b"".join(parts)
        return Timing(first if stream else None, total, audio_seconds(audio, response_format)), audio


def audio_seconds(audio: bytes, response_format: str) -> float:
    """Seconds of speech in a gateway response (24 kHz mono s16 for pcm and wav)."""
    if response_format == "pcm":
        return len(audio) / 2 / OUTPUT_SAMPLE_RATE
    if response_format == "wav":
        return (len(audio) - 44) / 2 / OUTPUT_SAMPLE_RATE
    from aistack.audio.decode import decode_audio  # the gateway's own PyAV decoder, to 16 kHz mono

    return len(decode_audio(audio)) / 16_000


# -- main ------------------------------------------------------------------------------------------


@dataclass
class TextResult:
    direct: list[Timing] = field(default_factory=list)
    direct_whole: list[Timing] = field(default_factory=list)
    stream: list[Timing] = field(default_factory=list)
    whole: list[Timing] = field(default_factory=list)


def median(values: list[float | None]) -> float:
    return statistics.median(v for v in values if v is not None)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="timed runs per side and text (default 5); medians are reported")
    parser.add_argument("--format", default="pcm", choices=FORMATS,
                        help="response_format on both sides (default pcm: least codec work, see the docstring)")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be at least 1")

    from aistack.settings import load_settings

    settings = load_settings()
    workdir = Path(tempfile.mkdtemp(prefix="aistack-bench-tts-"))
    gateway: Gateway | None = None
    direct: Direct | None = None
    results = {name: TextResult() for name, _ in TEXTS}
    started = time.monotonic()
    try:
        asr.progress("loading Piper in this process (aistack.engines.piper.PiperBackend) ...")
        direct = Direct(settings, args.format)
        asr.progress(f"direct: voice {direct.voice} loaded in {direct.load_s:.2f} s")

        asr.progress("starting the gateway ...")
        gateway = Gateway(workdir, gateway_env(workdir), settings.api_key)
        gateway.wait_healthy()
        asr.progress(f"gateway pid {gateway.process.pid} healthy on {gateway.base_url}")

        asr.progress("warm-up: direct ...")
        warm = direct.run(SENTENCE)
        asr.progress(f"warm-up: direct {warm.total_s:.2f} s")
        asr.progress("warm-up: gateway (includes its lazy voice load) ...")
        warm, _ = gateway.speak(SENTENCE, args.format, stream=True)
        asr.progress(f"warm-up: gateway {warm.total_s:.2f} s (served by {gateway.served_by})")
        if gateway.served_by != direct.card.id:
            raise RuntimeError(f"tts-1 is served by {gateway.served_by} on the gateway, not {direct.card.id}; "
                               "the two sides would not compare the same engine")

        for run in range(1, args.runs + 1):
            for name, text in TEXTS:
                r = results[name]
                order = ("direct", "gateway") if run % 2 else ("gateway", "direct")
                for side in order:
                    if side == "direct":
                        t = direct.run(text)
                        r.direct.append(t)
                        asr.progress(f"{name:9s} run {run}/{args.runs}  direct stream   "
                                     f"TTFB {t.first_s * 1000:6.0f} ms  total {t.total_s:6.3f} s  RTF {t.total_s / t.audio_s:.3f}")
                        t = direct.run_whole(text)
                        r.direct_whole.append(t)
                        asr.progress(f"{name:9s} run {run}/{args.runs}  direct whole    "
                                     f"                total {t.total_s:6.3f} s  RTF {t.total_s / t.audio_s:.3f}")
                    else:
                        t, _ = gateway.speak(text, args.format, stream=True)
                        r.stream.append(t)
                        asr.progress(f"{name:9s} run {run}/{args.runs}  gateway stream  "
                                     f"TTFB {t.first_s * 1000:6.0f} ms  total {t.total_s:6.3f} s  RTF {t.total_s / t.audio_s:.3f}")
                        t, _ = gateway.speak(text, args.format, stream=False)
                        r.whole.append(t)
                        asr.progress(f"{name:9s} run {run}/{args.runs}  gateway whole   "
                                     f"                total {t.total_s:6.3f} s  RTF {t.total_s / t.audio_s:.3f}")
    finally:
        asr.stop_and_report(gateway)
        if direct is not None:
            direct.close()
        shutil.rmtree(workdir, ignore_errors=True)

    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"engine: Piper {direct.voice} (aistack PiperBackend, onnxruntime CPU); voice '{VOICE}' on the gateway "
          f"(model tts-1 -> {direct.card.id}); response_format {args.format}; {args.runs} timed runs each, "
          "interleaved, medians")
    print(f"CPUs: {os.cpu_count()} (usable by this process: {usable})")
    print()
    rows: list[tuple[str, ...]] = [(
        "text", "audio s", "1st PCM ms", "TTFB direct ms", "TTFB gw ms", "gw/direct",
        "RTF direct", "RTF gw stream", "gw/direct", "RTF direct whole", "RTF gw whole", "gw/direct",
    )]
    notes: list[str] = []
    for name, text in TEXTS:
        r = results[name]
        audio = median([t.audio_s for t in r.direct])
        for label, timings in (("gateway stream", r.stream), ("gateway whole", r.whole)):
            other = median([t.audio_s for t in timings])
            if abs(other - audio) > 0.05 * audio:
                notes.append(f"warning: {name}: the {label} response holds {other:.2f} s of audio, direct {audio:.2f} s")
        ttfb_d, ttfb_g = median([t.first_s for t in r.direct]), median([t.first_s for t in r.stream])
        rtf_d = median([t.total_s / t.audio_s for t in r.direct])
        rtf_s = median([t.total_s / t.audio_s for t in r.stream])
        rtf_w = median([t.total_s / t.audio_s for t in r.whole])
        rtf_dw = median([t.total_s / t.audio_s for t in r.direct_whole])
        rows.append((
            f"{name} ({len(text)} chars)", f"{audio:.2f}", f"{median([t.first_pcm_s for t in r.direct]) * 1000:.0f}",
            f"{ttfb_d * 1000:.0f}", f"{ttfb_g * 1000:.0f}", f"{ttfb_g / ttfb_d:.2f}x",
            f"{rtf_d:.3f}", f"{rtf_s:.3f}", f"{rtf_s / rtf_d:.2f}x", f"{rtf_dw:.3f}", f"{rtf_w:.3f}", f"{rtf_w / rtf_dw:.2f}x",
        ))
        notes.append(f"{name}: gateway - direct, medians: TTFB {(ttfb_g - ttfb_d) * 1000:+.0f} ms, "
                     f"streamed total {(median([t.total_s for t in r.stream]) - median([t.total_s for t in r.direct])) * 1000:+.0f} ms, "
                     f"whole total {(median([t.total_s for t in r.whole]) - median([t.total_s for t in r.direct_whole])) * 1000:+.0f} ms")
    print(asr.table(rows))
    print()
    print("1st PCM: direct, the engine's first sentence before encoding. TTFB: first encoded bytes (direct) or first "
          "body chunk (gateway, stream_format=audio). RTF: total wall / audio seconds; 'whole': the non-streamed POST, "
          "and direct synthesis of every chunk then encode_speech.")
    for note in notes:
        print(note)
    asr.progress(f"done in {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
