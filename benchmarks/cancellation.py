"""How soon a Whisper slot is free again after a streaming client leaves.

Run it with `.venv/bin/python benchmarks/cancellation.py [--runs N] [--model ID] [--leave-after K]`.

It synthesizes the ASR benchmark's meeting text with Piper (about a minute of speech) and starts
`aistack serve` in a subprocess on a free loopback port with a private cache and TMPDIR (the
environment of benchmarks/scheduler.py). After one untimed warm-up request (the lazy model load),
each run posts the clip with `stream=true`, reads the SSE events until the K-th
`transcript.text.delta` (default 1), closes the connection, and polls GET /ready every 10 ms until
the CPU device has no busy slot. Reported: seconds from closing the connection to the slot being
free (median, min, max over the runs), and the same for a whole transcription for scale. Before the
engine decoded in pieces this was 17.8-28.1 s on whisper-base (it stopped only between 30 s windows).

Progress goes to stderr; the figures go to stdout. Only 127.0.0.1 is contacted; the gateway is
stopped by its PID in a `finally`.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/ is not a package
import asr
import scheduler

POLL_S = 0.01
FREE_TIMEOUT_S = 120.0


def leave_and_time(gateway: scheduler.Gateway, audio: bytes, model: str, leave_after: int) -> float:
    """Seconds from closing a streaming transcription after `leave_after` deltas to no busy CPU slot."""
    deltas = 0
    with gateway.client.stream("POST", "/v1/audio/transcriptions",
                               files={"file": ("clip.wav", audio, "audio/wav")},
                               data={"model": model, "stream": "true"}) as response:
        if response.status_code != 200:
            raise RuntimeError(f"the gateway answered {response.status_code}\n{gateway.log_tail()}")
        for line in response.iter_lines():
            if line.startswith("data: ") and json.loads(line[6:])["type"] == "transcript.text.delta":
                deltas += 1
                if deltas >= leave_after:
                    break
    left = time.perf_counter()  # the context above has closed the connection
    if deltas < leave_after:
        raise RuntimeError(f"the transcription ended after {deltas} deltas; use a smaller --leave-after")
    deadline = left + FREE_TIMEOUT_S
    while gateway.get_json("/ready")["devices"]["cpu"]["busy"]:
        if time.perf_counter() > deadline:
            raise RuntimeError(f"the slot was still busy {FREE_TIMEOUT_S:.0f} s after the client left\n{gateway.log_tail()}")
        time.sleep(POLL_S)
    return time.perf_counter() - left


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=7, help="disconnects to time (default 7); the median is reported")
    parser.add_argument("--model", default="whisper-base", help="Whisper model id (default whisper-base)")
    parser.add_argument("--leave-after", type=int, default=1, help="deltas read before leaving (default 1)")
    args = parser.parse_args(argv)
    if args.runs < 1 or args.leave_after < 1:
        parser.error("--runs and --leave-after must be at least 1")

    workdir = Path(tempfile.mkdtemp(prefix="aistack-bench-cancellation-"))
    gateway: scheduler.Gateway | None = None
    try:
        clip = workdir / "clip.wav"
        asr.progress("synthesizing speech with Piper ...")
        clip_s = asr.synthesize_clip(clip)
        audio = clip.read_bytes()
        gateway = scheduler.Gateway(workdir, "cancellation", scheduler.gateway_env(workdir, {}))
        gateway.wait_healthy()
        asr.progress(f"gateway pid {gateway.process.pid} healthy; warm-up request to {args.model} ...")
        whole_s, _ = gateway.transcribe(audio, args.model)
        asr.progress(f"warm-up (includes the load): {whole_s:.2f} s")
        whole_s, _ = gateway.transcribe(audio, args.model)
        waits = []
        for run in range(1, args.runs + 1):
            waits.append(leave_and_time(gateway, audio, args.model, args.leave_after))
            asr.progress(f"run {run}/{args.runs}: slot free {waits[-1]:.2f} s after the client left")
    finally:
        asr.stop_and_report(gateway)
        shutil.rmtree(workdir, ignore_errors=True)

    print(f"clip: {clip_s:.1f} s of Piper speech; model {args.model}; a whole transcription takes {whole_s:.2f} s")
    print(f"client leaves after {args.leave_after} delta(s); {args.runs} runs")
    print(asr.table([
        ("slot free after the client left", "s"),
        ("median", f"{statistics.median(waits):.2f}"),
        ("min", f"{min(waits):.2f}"),
        ("max", f"{max(waits):.2f}"),
    ]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
