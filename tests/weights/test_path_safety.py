"""No model id, hub file name or link in a pulled tree leads `aistack pull` or the weight resolver
outside the cache folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from aistack.weights.pull import PullError, _check_contained, _check_relative
from aistack.weights.resolver import WeightResolver, contained, unsafe_relative

UNSAFE = ["../escape", "/etc/passwd", "a/../../b", "%2e%2e/x", "a/%2E%2E/%2e%2e/b", "a//b", "./a", "a\\..\\b",
          "a\x00b", "", "%2fetc/passwd"]
SAFE = ["whisper-base", "nvidia/parakeet-tdt-0.6b-v3", "iic/SenseVoiceSmall", "model.bin", "sub/dir/file.onnx"]


@pytest.mark.parametrize("name", UNSAFE)
def test_unsafe_names_are_refused_everywhere(name: str, tmp_path: Path) -> None:
    assert unsafe_relative(name) is not None
    with pytest.raises(ValueError):
        contained(tmp_path, name)
    with pytest.raises(PullError):
        _check_relative(name)
    resolver = WeightResolver(tmp_path / "models", {})
    with pytest.raises(ValueError):
        resolver.cache_folder(name)
    assert resolver.resolve(name, ["model.bin"]) is None


@pytest.mark.parametrize("name", SAFE)
def test_ordinary_names_pass(name: str, tmp_path: Path) -> None:
    assert unsafe_relative(name) is None
    assert contained(tmp_path, name) == tmp_path / name


def test_a_link_in_a_pulled_tree_that_points_out_of_it_is_not_served(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.bin").write_bytes(b"not weights")
    folder = tmp_path / "models" / "whisper-base"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    (folder / "model.bin").symlink_to(outside / "secret.bin")
    resolver = WeightResolver(tmp_path / "models", {})
    assert resolver.resolve("whisper-base", ["config.json", "model.bin"]) is None
    # A link that stays inside the folder is fine, and so is a model folder that is itself a link (another disk).
    (folder / "model.bin").unlink()
    (folder / "weights.bin").write_bytes(b"weights")
    (folder / "model.bin").symlink_to(folder / "weights.bin")
    found = resolver.resolve("whisper-base", ["config.json", "model.bin"])
    assert found is not None and found.path == folder and found.source == "cache"
    elsewhere = tmp_path / "models" / "whisper-tiny.en"
    elsewhere.symlink_to(folder, target_is_directory=True)
    assert resolver.resolve("whisper-tiny.en", ["config.json", "model.bin"]) is not None


def test_a_link_planted_in_a_staging_folder_does_not_lead_a_pull_out(tmp_path: Path) -> None:
    staging = tmp_path / ".whisper-base.pull"
    staging.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    (staging / "sub").symlink_to(outside, target_is_directory=True)
    with pytest.raises(PullError) as refused:
        _check_contained(staging, "sub/model.bin")
    assert "outside" in str(refused.value)
    _check_contained(staging, "model.bin")
