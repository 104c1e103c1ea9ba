"""Text-to-speech over Wyoming: which voice a `synthesize` names, and its audio as Wyoming events."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Awaitable, Callable
from contextlib import aclosing
from dataclasses import dataclass

from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.event import Event
from wyoming.tts import SynthesizeVoice

from ..engines.base import ModelCard, VoiceInfo
from ..errors import malformed, not_found
from ..scheduler import Lease
from ..services.speech import SpeechPlan, SpeechService
from .languages import primary_language

log = logging.getLogger("aistack.wyoming")

Write = Callable[[Event], Awaitable[None]]

# What every engine's chunks are (engines/base.py PcmChunk): 16-bit mono.
_SAMPLE_WIDTH = 2
_CHANNELS = 1


@dataclass(frozen=True)
class NamedVoice:
    """A voice as Wyoming lists it: the engine's voice id, or MODEL/VOICE where two models share that id."""

    name: str
    card: ModelCard
    voice: VoiceInfo


async def named_voices(speech: SpeechService) -> list[NamedVoice]:
    pairs = [(card, voice) for card in await speech.models() for voice in speech.voices(card)]
    uses = Counter(voice.id.lower() for _, voice in pairs)
    return [NamedVoice(voice.id if uses[voice.id.lower()] == 1 else f"{card.id}/{voice.id}", card, voice) for card, voice in pairs]


async def plan_for(speech: SpeechService, wanted: SynthesizeVoice | None) -> SpeechPlan:
    """What `synthesize` asks for: a voice by the name `describe` gave it, a text-to-speech model by id
    (then `speaker` is that model's voice), a language (the first voice that speaks it, the default
    model's first), or nothing (the default model's default voice)."""
    card, voice = await _choose(speech, wanted or SynthesizeVoice())
    return speech.plan(card, voice, 1.0, None, {})


async def _choose(speech: SpeechService, wanted: SynthesizeVoice) -> tuple[ModelCard, str | None]:
    if wanted.name is None and wanted.language is None:
        return await speech.select(None), None
    voices = await named_voices(speech)
    if wanted.name is not None:
        by_name = {named.name.lower(): named for named in voices}
        named = by_name.get(wanted.name.lower())
        if named is not None:
            if wanted.speaker is not None:
                raise malformed(f"voice '{named.name}' has no speakers; leave speaker out, or name the model "
                                f"'{named.card.id}' as the voice and the speaker as its voice", param="voice.speaker")
            return named.card, named.voice.id
        if any(named.card.id == wanted.name for named in voices):
            return await speech.select(wanted.name), wanted.speaker
        raise not_found(f"voice '{wanted.name}' does not exist here; voices: {_names(voices)}", param="voice.name")
    assert wanted.language is not None
    language = primary_language(wanted.language)
    default = await speech.select(None)
    speaking = sorted((named for named in voices if language in named.voice.languages), key=lambda named: named.card != default)
    if not speaking:
        raise not_found(f"no voice here speaks language '{wanted.language}'; voices: {_names(voices)}", param="voice.language")
    return speaking[0].card, speaking[0].voice.id


def _names(voices: list[NamedVoice]) -> str:
    return ", ".join(named.name for named in voices) or "none (run `aistack doctor`)"


async def speak(speech: SpeechService, plan: SpeechPlan, text: str, write: Write) -> None:
    """audio-start, an audio-chunk per sentence as the engine makes it, audio-stop. Leaving early
    (the client went away) stops the engine and gives its slot back."""
    leases: list[Lease] = []
    try:
        chunks = await speech.start(plan, text, on_lease=leases.append)
        async with aclosing(chunks) as pcm:
            started = False
            async for chunk in pcm:
                if not started:
                    await write(AudioStart(rate=chunk.sample_rate, width=_SAMPLE_WIDTH, channels=_CHANNELS).event())
                    started = True
                if chunk.samples.size:
                    audio = chunk.samples.astype("<i2", copy=False).tobytes()
                    await write(AudioChunk(rate=chunk.sample_rate, width=_SAMPLE_WIDTH, channels=_CHANNELS, audio=audio).event())
        await write(AudioStop().event())
        log.info("wyoming synthesize model=%s voice=%s %d character(s)", plan.card.id, plan.options.voice, len(text))
    finally:
        for lease in leases:
            lease.abandon()
