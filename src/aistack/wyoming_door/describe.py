"""`describe` -> `info`: the visible speech-to-text models and voices, asked of the services each time,
so a model that appears or goes away shows in the next answer."""

from __future__ import annotations

from wyoming.info import AsrModel, AsrProgram, Attribution, Info, TtsProgram, TtsVoice

from .. import __version__
from ..engines.base import ModelCard
from ..inventory import AUTO_ID
from ..languages import KNOWN_ASR_LANGUAGES
from ..services.models import ModelsService
from ..services.speech import SpeechService
from .speaking import NamedVoice, named_voices

# Home Assistant names the service (and its entities) after the first program it finds.
PROGRAM_NAME = "aistack"
_AISTACK = Attribution(name="aistack", url="")


async def describe(models: ModelsService, speech: SpeechService, stream_transcripts: bool) -> Info:
    listing = [card for card in await models.listing() if "asr" in card.capabilities]
    voices = await named_voices(speech)
    asr = [] if not listing else [AsrProgram(
        name=PROGRAM_NAME,
        attribution=_AISTACK,
        installed=True,
        description=f"speech-to-text on aistack {__version__}: {', '.join(c.id for c in listing)}",
        version=__version__,
        models=[_asr_model(card, listing) for card in listing],
        supports_transcript_streaming=stream_transcripts,
    )]
    tts = [] if not voices else [TtsProgram(
        name=PROGRAM_NAME,
        attribution=_AISTACK,
        installed=True,
        description=f"text-to-speech on aistack {__version__}: {len(voices)} voice(s)",
        version=__version__,
        voices=[_tts_voice(named) for named in voices],
        supports_synthesize_streaming=True,
    )]
    return Info(asr=asr, tts=tts)


def _asr_model(card: ModelCard, listing: list[ModelCard]) -> AsrModel:
    if card.id == AUTO_ID:
        description = "picks the best visible model for the spoken language"
        languages = sorted({code for other in listing if other.id != AUTO_ID for code in _languages(other)})
    else:
        description = f"{card.id} on {card.provider}"
        languages = _languages(card)
    return AsrModel(
        name=card.id,
        attribution=Attribution(name=card.provider, url=""),
        installed=True,
        description=description,
        version=None,
        languages=languages,
    )


def _languages(card: ModelCard) -> list[str]:
    # A card that names no languages takes any the engines know (its engine detects them).
    return list(card.languages) if card.languages is not None else sorted(KNOWN_ASR_LANGUAGES)


def _tts_voice(named: NamedVoice) -> TtsVoice:
    return TtsVoice(
        name=named.name,
        attribution=Attribution(name=named.card.provider, url=""),
        installed=True,
        description=f"{named.voice.name} ({named.card.id} on {named.card.provider})",
        version=None,
        languages=list(named.voice.languages),
    )
