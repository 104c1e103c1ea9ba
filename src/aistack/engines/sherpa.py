"""Parakeet TDT v3 and SenseVoice Small on their int8 ONNX exports, run by sherpa-onnx, in-process.

One light runtime for both engines and for the voice activity detector (Silero VAD): long audio
is cut into speech segments first, so memory stays bounded whatever the length, and each segment
is decoded when the caller pulls it, which is where a stop lands and what SenseVoice streams.
Segment and word times come from the token timings. No torch.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..settings import OnnxAsrSettings
from ..weights.catalog import ONNX_ASR_MODELS, SILERO_VAD, SILERO_VAD_ID, OnnxAsrSpec
from ..weights.resolver import WeightResolver, is_complete_folder
from .base import BackendStatus, Capability, LoadedModel, ModelCard, Segment, TranscribeOptions, TranscriptionInfo, Unavailable, Word

log = logging.getLogger("aistack.engines.sherpa")

SAMPLE_RATE = 16_000
INSTALL_FIX = "pip install sherpa-onnx"
VAD_FILE = SILERO_VAD.files[0]
# Silero VAD's window at 16 kHz.
VAD_WINDOW = 512
# Parakeet's TDT frames are 80 ms apart; SenseVoice's 60 ms. A word's last token ends one frame later.
FRAME_S = {"parakeet": 0.08, "sensevoice": 0.06}
# SenseVoice marks its detected language, emotion and event as `<|...|>` tags.
SENSEVOICE_LANGUAGE_TAGS = {"zh", "en", "yue", "ja", "ko"}
WORD_START = "▁"

BY_ID: dict[str, OnnxAsrSpec] = {spec.id: spec for spec in ONNX_ASR_MODELS}


def card_for(spec: OnnxAsrSpec, created: int = 0) -> ModelCard:
    return ModelCard(
        id=spec.id,
        provider=spec.family,
        capabilities=("asr",),
        family=spec.family,
        languages=spec.languages,
        # SenseVoice streams a delta per speech segment as it is decoded; Parakeet's would be faked.
        supports_streaming=spec.family == "sensevoice",
        can_translate=False,
        rank=spec.rank,
        created=created,
    )


@dataclass(frozen=True)
class SpeechSpan:
    start_s: float
    samples: np.ndarray


class SherpaTranscriber:
    def __init__(self, card: ModelCard, recognizer: Any, vad_path: Path, settings: OnnxAsrSettings) -> None:
        self.card = card
        self._recognizer = recognizer
        self._vad_path = vad_path
        self._settings = settings

    def close(self) -> None:
        self._recognizer = None

    def transcribe(self, audio: np.ndarray, options: TranscribeOptions) -> tuple[TranscriptionInfo, Iterator[Segment]]:
        detected: list[str] = []
        segments = self._segments(audio, options, detected)
        first = next(segments, None)  # the language is known once the first speech is decoded
        info = TranscriptionInfo(language=self._language(detected, options), duration=len(audio) / SAMPLE_RATE)
        return info, _chain(first, segments)

    # -- inside -------------------------------------------------------------------------------------

    def _segments(self, audio: np.ndarray, options: TranscribeOptions, detected: list[str]) -> Iterator[Segment]:
        index = 0
        for span in self._speech(audio):
            decoded = self._decode(index, span, options)
            if decoded is None:
                continue
            segment, language = decoded
            if language and not detected:
                detected.append(language)
            yield segment
            index += 1

    def _speech(self, audio: np.ndarray) -> Iterator[SpeechSpan]:
        """Speech spans in order, each as soon as its end is heard."""
        import sherpa_onnx

        s = self._settings
        silero = sherpa_onnx.SileroVadModelConfig(
            model=str(self._vad_path),
            threshold=s.vad_threshold,
            min_silence_duration=s.min_silence_s,
            min_speech_duration=0.25,
            window_size=VAD_WINDOW,
            max_speech_duration=s.max_segment_s,
        )
        config = sherpa_onnx.VadModelConfig(silero_vad=silero, sample_rate=SAMPLE_RATE, num_threads=1)
        vad = sherpa_onnx.VoiceActivityDetector(config, buffer_size_in_seconds=s.max_segment_s + 5)
        # One VAD window per call: sherpa-onnx judges speech once per call and dates a segment from the
        # end of what it was given, so larger feeds merge segments and misplace their starts.
        for offset in range(0, len(audio), VAD_WINDOW):
            vad.accept_waveform(audio[offset : offset + VAD_WINDOW])
            if not vad.empty():
                yield from _drain(vad)
        vad.flush()
        yield from _drain(vad)

    def _decode(self, index: int, span: SpeechSpan, options: TranscribeOptions) -> tuple[Segment, str] | None:
        stream = self._recognizer.create_stream()
        stream.accept_waveform(SAMPLE_RATE, span.samples)
        self._recognizer.decode_stream(stream)
        result = stream.result
        kept = [(token, float(at)) for token, at in zip(result.tokens, result.timestamps, strict=False) if not _is_tag(token)]
        text = _clean(result.text).strip()
        if not text:
            return None
        span_end = span.start_s + len(span.samples) / SAMPLE_RATE
        words = _words(kept, span.start_s, span_end, FRAME_S[self.card.family]) if options.word_timestamps else []
        segment = Segment(id=index, start=round(span.start_s, 3), end=round(span_end, 3), text=" " + text, words=tuple(words))
        return segment, _language_tag(getattr(result, "lang", ""))

    def _language(self, detected: list[str], options: TranscribeOptions) -> str:
        if detected:
            return detected[0]
        if options.language:
            return options.language
        # Parakeet names no language: without a hint the transcript is reported in the family's first
        # language (English), never as "auto".
        return self.card.languages[0] if self.card.languages else "en"


class SherpaBackend:
    """The ONNX ASR engines of one family (provider `parakeet` or `sensevoice`)."""

    capability: Capability = "asr"

    def __init__(self, family: str, settings: OnnxAsrSettings, resolver: WeightResolver) -> None:
        self.provider = family
        self._specs = [spec for spec in ONNX_ASR_MODELS if spec.family == family]
        self._settings = settings
        self._resolver = resolver
        self._provider_name: str | None = None

    def library_missing(self) -> Unavailable | None:
        if importlib.util.find_spec("sherpa_onnx") is None:
            return Unavailable(self.provider, "the Python module sherpa_onnx is not installed", INSTALL_FIX)
        return None

    def model_folder(self, spec: OnnxAsrSpec) -> Path | None:
        explicit = self._resolver.explicit_paths.get(spec.id)
        folder = Path(explicit).expanduser() if explicit is not None else self._resolver.cache_folder(spec.id)
        return folder if is_complete_folder(folder, spec.required) else None

    def vad_path(self, folder: Path | None = None) -> Path | None:
        """Silero VAD: configured, pulled (`aistack pull silero-vad`), or beside the model's files."""
        candidates = []
        explicit = self._resolver.explicit_paths.get(SILERO_VAD_ID)
        if explicit is not None:
            explicit = Path(explicit).expanduser()
            candidates.append(explicit if explicit.suffix == ".onnx" else explicit / VAD_FILE)
        candidates.append(self._resolver.cache_folder(SILERO_VAD_ID) / VAD_FILE)
        if folder is not None:
            candidates.append(folder / VAD_FILE)
        return next((path for path in candidates if path.is_file()), None)

    def probe(self) -> BackendStatus:
        missing = self.library_missing()
        if missing is not None:
            return BackendStatus(self.provider, "asr", unavailable=(missing,))
        cards: list[ModelCard] = []
        unavailable: list[Unavailable] = []
        for spec in self._specs:
            folder = self.model_folder(spec)
            if folder is None:
                unavailable.append(self._why_missing(spec))
            elif (broken := _broken(spec, folder)) is not None:
                unavailable.append(Unavailable(spec.id, broken, f"aistack pull --force {spec.id}"))
            elif self.vad_path(folder) is None:
                unavailable.append(Unavailable(spec.id, "no Silero VAD model (silero_vad.onnx) to cut long audio with",
                                               f"aistack pull {SILERO_VAD_ID}"))
            else:
                cards.append(card_for(spec, int(folder.stat().st_mtime)))
        return BackendStatus(self.provider, "asr", tuple(cards), tuple(unavailable))

    def _why_missing(self, spec: OnnxAsrSpec) -> Unavailable:
        explicit = self._resolver.explicit_paths.get(spec.id)
        if explicit is not None:
            return Unavailable(spec.id, f"the configured folder {explicit} lacks one of {', '.join(spec.required)}",
                               f"point model_paths['{spec.id}'] at the sherpa-onnx export of {spec.hub.repo}")
        return Unavailable(spec.id, f"no weights in {self._resolver.cache_folder(spec.id)}", f"aistack pull {spec.id}")

    def device(self, card: ModelCard) -> str:
        return "cuda:0" if self._provider() == "cuda" else "cpu"

    def footprint(self, card: ModelCard) -> int:
        spec = BY_ID[card.id]
        folder = self.model_folder(spec)
        if folder is None:
            return 0
        return sum((folder / name).stat().st_size for name in spec.required if (folder / name).is_file())

    def load(self, card: ModelCard) -> SherpaTranscriber:
        import sherpa_onnx

        spec = BY_ID[card.id]
        folder = self.model_folder(spec)
        if folder is None:
            raise FileNotFoundError(f"the weights of {card.id} are gone; {self._why_missing(spec).fix}")
        check_folder(spec, folder)
        vad = self.vad_path(folder)
        if vad is None:
            raise FileNotFoundError(f"no Silero VAD model; run `aistack pull {SILERO_VAD_ID}`")
        common = {"num_threads": self._threads(), "provider": self._provider(), "debug": False}
        started = time.perf_counter()
        if spec.family == "sensevoice":
            recognizer = sherpa_onnx.OfflineRecognizer.from_sense_voice(
                model=str(folder / "model.int8.onnx"), tokens=str(folder / "tokens.txt"), use_itn=True, language="auto",
                **common,
            )
        else:
            recognizer = sherpa_onnx.OfflineRecognizer.from_transducer(
                encoder=str(folder / "encoder.int8.onnx"), decoder=str(folder / "decoder.int8.onnx"),
                joiner=str(folder / "joiner.int8.onnx"), tokens=str(folder / "tokens.txt"),
                model_type="nemo_transducer", feature_dim=128, **common,
            )
        log.info("loaded %s from %s in %.2f s (%s)", card.id, folder, time.perf_counter() - started, common["provider"])
        return SherpaTranscriber(card, recognizer, vad, self._settings)

    def unload(self, model: LoadedModel) -> None:
        model.close()

    def _threads(self) -> int:
        return self._settings.num_threads or max(1, len(os.sched_getaffinity(0)))

    def _provider(self) -> str:
        if self._provider_name is None:  # asked per request (device()); the answer does not change
            wanted = self._settings.provider
            self._provider_name = wanted if wanted != "auto" else ("cuda" if _gpu_present() and _runtime_has_cuda() else "cpu")
        return self._provider_name


def _drain(vad: Any) -> Iterator[SpeechSpan]:
    while not vad.empty():
        front = vad.front
        yield SpeechSpan(front.start / SAMPLE_RATE, np.asarray(front.samples, dtype=np.float32))
        vad.pop()


def _chain(first: Segment | None, rest: Iterator[Segment]) -> Iterator[Segment]:
    if first is not None:
        yield first
    yield from rest


def _is_tag(token: str) -> bool:
    return token.startswith("<|") and token.endswith("|>")


def _language_tag(lang: str) -> str:
    code = lang.strip().removeprefix("<|").removesuffix("|>")
    return code if code in SENSEVOICE_LANGUAGE_TAGS else ""


def _clean(text: str) -> str:
    while text.startswith("<|"):
        end = text.find("|>")
        if end < 0:
            break
        text = text[end + 2 :]
    return text


def _words(tokens: list[tuple[str, float]], start_s: float, end_s: float, frame_s: float) -> list[Word]:
    """Words from timed subword tokens: a token starting with `▁` (or a space) begins one, and each
    CJK character is one; a word ends where the next begins, the last a few frames after its last token."""
    words: list[tuple[str, float, float]] = []  # text, first token time, last token time
    for token, at in tokens:
        piece = token.replace(WORD_START, " ")
        if not words or piece.startswith(" ") or _is_cjk(piece) or _is_cjk(words[-1][0][-1:]):
            words.append((piece.strip(), at, at))
        else:
            text, begin, _ = words[-1]
            words[-1] = (text + piece, begin, at)
    result = []
    for i, (text, begin, last) in enumerate(words):
        end = words[i + 1][1] if i + 1 < len(words) else last + 4 * frame_s
        begin_s, end_s_word = start_s + begin, min(end_s, start_s + end)
        if text:
            result.append(Word(round(begin_s, 3), round(max(end_s_word, begin_s), 3), " " + text))
    return result


def _is_cjk(text: str) -> bool:
    """Written without spaces between words: Han, kana, Hangul."""
    return bool(text) and any(
        0x3040 <= ord(ch) <= 0x30FF or 0x3400 <= ord(ch) <= 0x9FFF or 0xAC00 <= ord(ch) <= 0xD7AF or 0xF900 <= ord(ch) <= 0xFAFF
        for ch in text.strip()[:1]
    )


def check_folder(spec: OnnxAsrSpec, folder: Path) -> None:
    """Refuse a folder sherpa-onnx would die on: it ends the whole process on a broken model folder
    rather than raising, so what can be checked cheaply is checked before it is handed the files."""
    for name in spec.required:
        if (folder / name).stat().st_size == 0:
            raise ValueError(f"{folder / name} is empty; pull the model again: aistack pull --force {spec.id}")
    tokens = (folder / "tokens.txt").read_text(encoding="utf-8", errors="replace").splitlines()
    malformed = [line for line in tokens[:50] if len(line.rsplit(" ", 1)) != 2 or not line.rsplit(" ", 1)[1].isdigit()]
    if not tokens or malformed:
        raise ValueError(f"{folder / 'tokens.txt'} is not a sherpa-onnx token list; aistack pull --force {spec.id}")
    if spec.family == "parakeet" and not any(line.startswith("<blk> ") for line in tokens[-3:]):
        raise ValueError(f"{folder / 'tokens.txt'} lacks the blank token <blk>; aistack pull --force {spec.id}")
    for name in spec.required:
        if name.endswith(".onnx"):
            with open(folder / name, "rb") as model:
                if model.read(1) != b"\x08":  # an ONNX ModelProto starts with its ir_version field
                    raise ValueError(f"{folder / name} is not an ONNX model; aistack pull --force {spec.id}")


def _broken(spec: OnnxAsrSpec, folder: Path) -> str | None:
    try:
        check_folder(spec, folder)
    except (ValueError, OSError) as error:
        return str(error).split("; ")[0]
    return None


def _gpu_present() -> bool:
    return Path("/dev/nvidia0").exists()


def _runtime_has_cuda() -> bool:
    spec = importlib.util.find_spec("sherpa_onnx")
    if spec is None or not spec.submodule_search_locations:
        return False
    return any(
        "providers_cuda" in path.name for location in spec.submodule_search_locations for path in Path(location).rglob("*.so*")
    )
