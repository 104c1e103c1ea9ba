"""Building the runtime from settings: an LLM upstream may not take the name of another engine."""

from __future__ import annotations

from pathlib import Path

import pytest

from aistack.runtime import build_runtime
from aistack.settings import Settings


@pytest.mark.parametrize("name", ["piper", "faster-whisper", "sensevoice", "qwen3-tts", "ollama", "llama-cpp", "aistack"])
def test_an_llm_upstream_named_like_another_engine_is_refused(tmp_path: Path, name: str) -> None:
    settings = Settings(cache_dir=tmp_path, llm={"upstreams": [{"name": name, "base_url": "http://127.0.0.1:9/v1"}]})
    with pytest.raises(ValueError, match=f"the LLM upstream name '{name}' is taken"):
        build_runtime(settings)


def test_two_llm_upstreams_with_one_name_are_refused(tmp_path: Path) -> None:
    upstream = {"name": "lab", "base_url": "http://127.0.0.1:9/v1"}
    with pytest.raises(ValueError, match="the LLM upstream name 'lab' is taken"):
        build_runtime(Settings(cache_dir=tmp_path, llm={"upstreams": [upstream, upstream]}))


def test_an_upstream_with_its_own_name_is_a_provider(tmp_path: Path) -> None:
    settings = Settings(cache_dir=tmp_path, llm={"upstreams": [{"name": "lab", "base_url": "http://127.0.0.1:9/v1"}]})
    runtime = build_runtime(settings)
    assert "lab" in {backend.provider for backend in runtime.inventory.backends}
