"""Settings: defaults, `AISTACK_*` env (nested with `__`), a TOML file; overrides > env > file > defaults."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from aistack.settings import Settings, load_settings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in list(os.environ):
        if name.upper().startswith("AISTACK_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    monkeypatch.chdir(tmp_path)


def write_toml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "aistack.toml"
    path.write_text(text)
    return path


FILE = """
port = 12000
max_upload_mb = 50

[whisper]
default_size = "base"
beam_size = 3
"""


def test_defaults(tmp_path):
    s = load_settings()
    assert (s.host, s.port) == ("127.0.0.1", 11500)
    assert s.max_upload_mb == 25
    assert s.max_upload_bytes == 25 * 1024 * 1024
    assert s.probe_timeout_s == 0.5
    assert s.inventory_ttl_s == 2.0
    assert s.whisper.default_size == "small"
    assert s.api_key is None
    assert s.model_paths == {}
    assert s.cache_dir == tmp_path / "xdg-cache" / "aistack"
    assert s.models_cache_dir == tmp_path / "xdg-cache" / "aistack" / "models"


def test_cache_dir_without_xdg(monkeypatch, tmp_path):
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert load_settings().cache_dir == tmp_path / "home" / ".cache" / "aistack"


def test_env(monkeypatch):
    monkeypatch.setenv("AISTACK_PORT", "12345")
    monkeypatch.setenv("AISTACK_WHISPER__DEFAULT_SIZE", "tiny.en")
    monkeypatch.setenv("AISTACK_API_KEY", "sekret")
    s = load_settings()
    assert s.port == 12345
    assert s.whisper.default_size == "tiny.en"
    assert s.whisper.beam_size == 5  # the rest of the nested table keeps its defaults
    assert s.api_key == "sekret"


def test_env_is_validated(monkeypatch):
    monkeypatch.setenv("AISTACK_PORT", "not-a-port")
    with pytest.raises(ValidationError):
        load_settings()
    monkeypatch.setenv("AISTACK_PORT", "70000")
    with pytest.raises(ValidationError):
        load_settings()


def test_toml_file(tmp_path):
    s = load_settings(write_toml(tmp_path, FILE))
    assert s.port == 12000
    assert s.max_upload_bytes == 50 * 1024 * 1024
    assert s.whisper.default_size == "base"
    assert s.whisper.beam_size == 3
    assert s.whisper.device == "cpu"
    assert s.host == "127.0.0.1"


def test_toml_file_named_by_env(monkeypatch, tmp_path):
    monkeypatch.setenv("AISTACK_CONFIG", str(write_toml(tmp_path, FILE)))
    s = load_settings()
    assert s.port == 12000 and s.whisper.default_size == "base"


def test_env_beats_file_key_by_key(monkeypatch, tmp_path):
    monkeypatch.setenv("AISTACK_PORT", "13000")
    monkeypatch.setenv("AISTACK_WHISPER__DEFAULT_SIZE", "medium")
    s = load_settings(write_toml(tmp_path, FILE))
    assert s.port == 13000
    assert s.whisper.default_size == "medium"
    # Keys the env does not name still come from the file, also inside [whisper].
    assert s.whisper.beam_size == 3
    assert s.max_upload_mb == 50


def test_explicit_overrides_beat_env_and_file(monkeypatch, tmp_path):
    monkeypatch.setenv("AISTACK_PORT", "13000")
    monkeypatch.setenv("AISTACK_HOST", "0.0.0.0")
    s = load_settings(write_toml(tmp_path, FILE), port=14000, host=None)
    assert s.port == 14000
    assert s.host == "0.0.0.0"  # None means "not given", so the env still counts
    assert load_settings(port=15000).port == 15000


def test_nested_override_merges_with_env(monkeypatch):
    monkeypatch.setenv("AISTACK_WHISPER__DEFAULT_SIZE", "medium")
    s = load_settings(whisper={"device": "cuda"})
    assert (s.whisper.device, s.whisper.default_size) == ("cuda", "medium")


def test_a_missing_file_raises(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.toml"):
        load_settings(tmp_path / "nope.toml")


def test_a_missing_file_named_by_env_raises(monkeypatch, tmp_path):
    monkeypatch.setenv("AISTACK_CONFIG", str(tmp_path / "gone.toml"))
    with pytest.raises(FileNotFoundError):
        load_settings()


def test_a_misspelt_key_in_the_file_is_an_error(tmp_path):
    with pytest.raises(ValidationError, match="prot"):
        load_settings(write_toml(tmp_path, "prot = 1\n"))


def test_model_paths_from_file(tmp_path):
    s = load_settings(write_toml(tmp_path, '[model_paths]\n"whisper-small" = "/srv/weights/small"\n'))
    assert s.model_paths == {"whisper-small": Path("/srv/weights/small")}


def test_settings_without_load_settings_ignore_any_file(tmp_path):
    write_toml(tmp_path, FILE)  # in the working directory, but never named
    assert Settings().port == 11500


def test_an_unknown_whisper_default_size_is_refused_with_the_choices():
    from pydantic import ValidationError

    from aistack.settings import WhisperSettings

    with pytest.raises(ValidationError) as raised:
        WhisperSettings(default_size="huge")
    assert "large-v3" in str(raised.value) and "tiny.en" in str(raised.value)
    assert WhisperSettings(default_size="whisper-base").default_size == "whisper-base"


def test_scheduler_and_model_lifecycle_defaults(monkeypatch):
    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    s = load_settings()
    assert (s.scheduler.cpu_slots, s.scheduler.gpu_slots, s.scheduler.queue_size, s.scheduler.max_wait_s) == (4, 1, 8, 30.0)
    assert s.scheduler.serialized_upstreams == [] and s.scheduler.unload_asr_before_llm is False
    assert s.models.keep_alive_s == 300 and s.models.max_resident is None and s.models.pinned == []
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    assert load_settings().scheduler.cpu_slots == 1  # never zero slots


def test_scheduler_and_model_lifecycle_from_env_and_file(monkeypatch, tmp_path):
    path = write_toml(tmp_path, '[scheduler]\nqueue_size = 16\n\n[models]\nkeep_alive_s = 600\npinned = ["whisper-base"]\n')
    monkeypatch.setenv("AISTACK_SCHEDULER__MAX_WAIT_S", "5")
    monkeypatch.setenv("AISTACK_MODELS__PRELOAD", '["whisper-tiny.en"]')
    s = load_settings(path)
    assert s.scheduler.queue_size == 16 and s.scheduler.max_wait_s == 5
    assert s.models.keep_alive_s == 600 and s.models.pinned == ["whisper-base"] and s.models.preload == ["whisper-tiny.en"]


def test_scheduler_settings_are_validated(monkeypatch):
    monkeypatch.setenv("AISTACK_SCHEDULER__CPU_SLOTS", "0")
    with pytest.raises(ValidationError):
        load_settings()
