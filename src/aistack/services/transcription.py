"""Serving logic for /v1/audio/transcriptions and /v1/audio/translations.

Picks the model (an id, `whisper-1` or `auto`), checks that it can do what was asked, takes a
slot on the model's device and the loaded model (`start`), runs it there, and shapes the result
as a whole transcript or as SSE events.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, Callable, Collection, Iterator, Mapping, Sequence
from contextlib import aclosing
from dataclasses import dataclass

import numpy as np

from .. import sse
from ..audio.formats import Transcript, join_text, usage
from ..engines.base import (
    AsrFeature,
    ModelCard,
    Segment,
    Task,
    TranscribeOptions,
    Transcriber,
    TranscriptionBackend,
    TranscriptionInfo,
)
from ..errors import AistackError, ErrorKind, malformed
from ..inventory import AUTO_ID, Inventory, Snapshot
from ..languages import KNOWN_ASR_LANGUAGES
from ..lifecycle import ModelLifecycle
from ..observability import tracing
from ..observability.events import EngineEvents
from ..protocol.errors import ErrorEvent
from ..protocol.transcription import (
    DurationUsage,
    StreamWarning,
    TranscriptTextDelta,
    TranscriptTextDone,
    TranscriptTextSegment,
    logprob_entries,
)
from ..routing import WHISPER_ONLY, best_of, route, transcribes, unsupported_language
from ..scheduler import Lease, Scheduler
from .claims import claim_transcriber

log = logging.getLogger("aistack.transcription")

WHISPER_ALIAS = "whisper-1"
# OpenAI's newer transcription models take any language, as `auto` does here, and are served as it is
# (the Realtime API's examples name gpt-4o-transcribe). There is no speaker diarization to serve.
OPENAI_AUTO_ALIASES = ("gpt-4o-transcribe", "gpt-4o-mini-transcribe")
OPENAI_DIARIZE_MODEL = "gpt-4o-transcribe-diarize"


@dataclass(frozen=True)
class Job:
    """A slot on the model's device and the loaded model, both held until the engine stops."""

    lease: Lease
    transcriber: Transcriber


class TranscriptionService:
    def __init__(
        self,
        inventory: Inventory,
        backends: Mapping[str, TranscriptionBackend],
        scheduler: Scheduler,
        lifecycle: ModelLifecycle,
        events: EngineEvents,
        default_whisper_id: str,
        detect_for_auto: bool = False,
    ) -> None:
        self._inventory = inventory
        self._backends = backends
        self._scheduler = scheduler
        self._lifecycle = lifecycle
        self._events = events
        self._default_whisper_id = default_whisper_id
        self._detect_for_auto = detect_for_auto

    async def select(self, model: str, language: str | None, task: Task, languages: Sequence[str] = (),
                     needs: Collection[AsrFeature] = ()) -> ModelCard:
        """The card that will serve `model` for this language (or these possible `languages`) and task,
        able to do what `needs` names, or the envelope saying why none."""
        if language is not None and languages:
            raise malformed("language names the speech's language and languages[] its possible ones; send one of them",
                            param="languages")
        if model == OPENAI_DIARIZE_MODEL:
            raise malformed(f"speaker diarization ({OPENAI_DIARIZE_MODEL}) is not available here; use gpt-4o-transcribe, "
                            f"{AUTO_ID} or a speech-to-text id from /v1/models", param="model")
        model = served_as(model)
        snapshot = await self._inventory.snapshot()
        preferred = (self._default_whisper_id,)
        if model == AUTO_ID:
            card = route(language, snapshot.cards, preferred_ids=preferred, task=task, languages=languages)
        elif model == WHISPER_ALIAS:
            card = route(language, snapshot.cards, preferred_ids=preferred, rules=WHISPER_ONLY, fall_through=False, task=task,
                         languages=languages)
        else:
            card = self._named(snapshot, model, language, languages, task)
        return _able(card, snapshot, needs)

    def _named(self, snapshot: Snapshot, model: str, language: str | None, languages: Sequence[str], task: Task) -> ModelCard:
        card = snapshot.card(model)
        if card is None:
            raise snapshot.unknown_model_error(model, f"available speech-to-text models: {_asr_ids(snapshot)}")
        if "asr" not in card.capabilities:
            raise malformed(f"model '{model}' does not transcribe speech; pick one of: {_asr_ids(snapshot)}", param="model")
        if task == "translate" and not card.can_translate:
            translators = [c.id for c in snapshot.asr_cards() if c.can_translate]
            hint = f"use one of: {', '.join(translators)}" if translators else "install multilingual Whisper weights (see `aistack doctor`)"
            raise malformed(f"model '{model}' cannot translate to English; {hint}", param="model")
        param = "language" if language is not None else "languages"
        for code in [language] if language is not None else languages:
            if code not in KNOWN_ASR_LANGUAGES:
                raise unsupported_language(code, param=param)
        if not transcribes(card, language, languages):
            able = [c.id for c in snapshot.asr_cards() if transcribes(c, language, languages)]
            hint = f"use {AUTO_ID} or one of: {', '.join(able)}" if able else "install a multilingual model (see `aistack doctor`)"
            asked = f"language '{language}'" if language is not None else f"all of the languages {', '.join(languages)}"
            raise malformed(f"model '{model}' does not transcribe {asked}; {hint}", param=param)
        return card

    async def route_by_detection(self, model: str, card: ModelCard, language: str | None, languages: Sequence[str], task: Task,
                                 needs: Collection[AsrFeature], audio: np.ndarray,
                                 on_lease: Callable[[Lease], None]) -> tuple[ModelCard, str | None]:
        """For `auto` without a language: the language detected first (by a multilingual Whisper, among
        `languages` when given) and the model routed by it; (card, None) where detection is off or
        could not change the choice (one family of models visible, or no detector)."""
        if served_as(model) != AUTO_ID or language is not None or not self._detect_for_auto:
            return card, None
        snapshot = await self._inventory.snapshot()
        candidates = [c for c in snapshot.asr_cards() if c.id != AUTO_ID and (task == "transcribe" or c.can_translate)]
        if len({c.family for c in candidates}) < 2:
            return card, None
        detectors = [c for c in candidates if "language_detection" in c.asr_features]
        detector = best_of(detectors, (self._default_whisper_id,))
        if detector is None:
            return card, None
        job = await self.start(detector, on_lease)
        transcript = await self.transcribe(job, audio, TranscribeOptions(languages=tuple(languages), task=task, detect_only=True))
        detected = transcript.info.language
        try:
            routed = await self.select(AUTO_ID, detected, task, (), needs)
        except AistackError as error:
            log.info("detected %s with %s, which routes nowhere (%s); serving with %s", detected, detector.id, error.message, card.id)
            return card, detected
        log.debug("detected %s with %s: routed to %s", detected, detector.id, routed.id)
        return routed, detected

    async def start(self, card: ModelCard, on_lease: Callable[[Lease], None]) -> Job:
        """A slot on the model's device and the loaded model (see `claim`)."""
        lease, transcriber = await claim_transcriber(self._scheduler, self._lifecycle, self._backends[card.provider], card, on_lease)
        return Job(lease, transcriber)

    def slot_free_now(self, card: ModelCard) -> bool:
        """Whether `start` would get a slot on the model's device without queueing (for work that is
        skipped rather than delayed under load)."""
        queue = self._scheduler.queue(self._backends[card.provider].device(card))
        return queue.busy < queue.slots and queue.queued == 0

    async def run(self, job: Job, audio: np.ndarray, options: TranscribeOptions) -> AsyncGenerator[TranscriptionInfo | Segment, None]:
        """The detected info first, then each segment as the engine decodes it."""
        transcriber = job.transcriber
        card = transcriber.card
        events = self._events

        def produce() -> Iterator[TranscriptionInfo | Segment]:
            info, segments = transcriber.transcribe(audio, options)
            yield info
            for segment in segments:
                events.step_done(card.id, segment.id)
                yield segment

        duration = 0.0
        try:
            with tracing.engine_step("transcription", card.provider, card.id) as traced:
                async with aclosing(self._scheduler.stream(job.lease, produce)) as items:
                    async for item in items:
                        if isinstance(item, TranscriptionInfo):
                            duration = item.duration
                            traced.set("aistack.audio_s", duration)
                        yield item
            events.audio_done("transcribed", card.id, duration)
        except AistackError:
            raise
        except Exception as error:
            log.exception("%s failed on %s", card.provider, card.id)
            raise AistackError(ErrorKind.UNKNOWN, f"{card.provider} failed while decoding: {error}", provider=card.provider) from None

    async def transcribe(self, job: Job, audio: np.ndarray, options: TranscribeOptions) -> Transcript:
        info: TranscriptionInfo | None = None
        segments: list[Segment] = []
        async with aclosing(self.run(job, audio, options)) as items:
            async for item in items:
                if isinstance(item, TranscriptionInfo):
                    info = item
                else:
                    segments.append(item)
        assert info is not None
        return Transcript(job.transcriber.card.id, options.task, info, tuple(segments))

    async def stream_events(self, job: Job, audio: np.ndarray, options: TranscribeOptions) -> AsyncGenerator[bytes, None]:
        """SSE: a delta and a segment event per decoded segment, then done; an error event if decoding fails."""
        pieces: list[str] = []
        duration = 0.0
        card = job.transcriber.card
        if not card.supports_streaming:
            yield sse.event(StreamWarning(
                code="streaming_not_supported",
                message=f"{card.id} does not decode incrementally; its segments follow as they are ready",
            ))
        try:
            async with aclosing(self.run(job, audio, options)) as items:
                async for item in items:
                    if isinstance(item, TranscriptionInfo):
                        duration = item.duration
                        continue
                    pieces.append(item.text)
                    logprobs = logprob_entries(item.logprobs) if options.logprobs else None
                    yield sse.event(TranscriptTextDelta(delta=item.text, logprobs=logprobs))
                    yield sse.event(TranscriptTextSegment(
                        id=item.id, start=round(item.start, 3), end=round(item.end, 3), text=item.text.strip()
                    ))
        except AistackError as error:
            yield sse.event(ErrorEvent.of(error))
            return
        yield sse.event(TranscriptTextDone(text=join_text(pieces), usage=DurationUsage.model_validate(usage(duration))))


# Where a refusal names each feature: (as the request spells it, the form field it is sent in).
FEATURE_FIELDS: dict[AsrFeature, tuple[str, str]] = {
    "keywords": ("keywords[]", "keywords"),
    "logprobs": ("include[]=logprobs", "include"),
    "chunking": ("chunking_strategy", "chunking_strategy"),
}


def _able(card: ModelCard, snapshot: Snapshot, needs: Collection[AsrFeature]) -> ModelCard:
    for feature in needs:
        if feature not in card.asr_features:
            able = [c.id for c in snapshot.asr_cards() if feature in c.asr_features and c.id != AUTO_ID]
            spelled, param = FEATURE_FIELDS[feature]
            hint = f"use one of: {', '.join(able)}" if able else "no model here can; drop the field"
            raise malformed(f"model '{card.id}' cannot take {spelled}; {hint}", param=param)
    return card


def served_as(model: str) -> str:
    """The model id that serves a request naming `model`: `auto` for OpenAI's gpt-4o transcription models."""
    return AUTO_ID if model in OPENAI_AUTO_ALIASES else model


def _asr_ids(snapshot: Snapshot) -> str:
    ids = [c.id for c in snapshot.listing() if "asr" in c.capabilities]
    return ", ".join(ids + [WHISPER_ALIAS]) if ids else "none (run `aistack doctor`)"
