"""Speech-to-text over Wyoming: the audio of one request as it arrives, then its transcript as events."""

from __future__ import annotations

import asyncio
import logging
from contextlib import aclosing
from dataclasses import dataclass, field

from wyoming.asr import Transcript, TranscriptChunk, TranscriptStart, TranscriptStop
from wyoming.audio import AudioFormat

from ..audio.decode import SAMPLE_RATE, decode_pcm
from ..audio.formats import join_text
from ..engines.base import TranscribeOptions, TranscriptionInfo
from ..errors import AistackError, ErrorKind, malformed
from ..inventory import AUTO_ID
from ..protocol.transcription import MAX_KEYWORDS
from ..scheduler import Lease
from ..services.transcription import TranscriptionService
from .languages import language_hint
from .speaking import Write

log = logging.getLogger("aistack.wyoming")


@dataclass
class Listening:
    """One `transcribe` request: the model and language it named, and its audio in the format the client
    declared (in audio-start, or the first audio-chunk when it sent none), kept as it came until audio-stop."""

    model: str = AUTO_ID
    language: str | None = None
    # Home Assistant's names and terms that should bias recognition: keywords for a model that takes them.
    keywords: tuple[str, ...] = ()
    audio_format: AudioFormat | None = None
    audio: bytearray = field(default_factory=bytearray)
    # Set once the request was refused (an error event is on its way): the rest of its audio is dropped.
    refused: bool = False

    def add(self, chunk_format: AudioFormat, data: bytes, max_bytes: int) -> None:
        if self.audio_format is None:
            self.audio_format = chunk_format
        elif (chunk_format.rate, chunk_format.width, chunk_format.channels) != (
                self.audio_format.rate, self.audio_format.width, self.audio_format.channels):
            declared = self.audio_format
            raise malformed(
                f"an audio-chunk is {_describe(chunk_format)} but the audio started as {_describe(declared)}; "
                "send one format per audio stream",
                param="audio-chunk",
            )
        if len(self.audio) + len(data) > max_bytes:
            raise AistackError(
                ErrorKind.OVERFLOW,
                f"the audio is over the {max_bytes / 2**20:.3g} MB limit; send a shorter recording or raise AISTACK_MAX_UPLOAD_MB",
                param="audio-chunk",
            )
        self.audio += data


def usable_keywords(*lists: list[str] | None) -> tuple[str, ...]:
    """The names and terms a client sent that can be keywords (words, not markup or several lines)."""
    kept = [k.strip() for names in lists for k in names or () if k.strip() and not any(ch in k for ch in "<>\r\n")]
    return tuple(dict.fromkeys(kept))[:MAX_KEYWORDS]


def _describe(audio_format: AudioFormat) -> str:
    return f"{audio_format.rate} Hz, {audio_format.width} bytes, {audio_format.channels} channel(s)"


async def transcribe(service: TranscriptionService, request: Listening, stream: bool, write: Write) -> None:
    """The transcript, and with `stream` transcript-start, a transcript-chunk per decoded segment and
    transcript-stop around it. Leaving early (the client went away) stops decoding and frees the slot."""
    language = language_hint(request.language)
    card = await service.select(request.model, language, "transcribe")
    audio_format = request.audio_format
    if audio_format is None or not request.audio:
        # Nothing was said (a client's voice detection heard no speech): an empty transcript, no engine.
        await _answer(write, [], language, stream, started=False)
        return
    audio = await asyncio.to_thread(
        decode_pcm, bytes(request.audio), audio_format.rate, audio_format.width, audio_format.channels, param="audio"
    )
    request.audio.clear()
    leases: list[Lease] = []
    try:
        card, _ = await service.route_by_detection(request.model, card, language, (), "transcribe", (), audio, leases.append)
        keywords = request.keywords if "keywords" in card.asr_features else ()
        job = await service.start(card, on_lease=leases.append)
        pieces: list[str] = []
        started = False
        async with aclosing(service.run(job, audio, TranscribeOptions(language, "transcribe", keywords=keywords))) as items:
            async for item in items:
                if isinstance(item, TranscriptionInfo):
                    language = item.language
                    if stream:
                        await write(TranscriptStart(language=language).event())
                        started = True
                    continue
                if stream:
                    # Appended, the chunks are the transcript: only the first loses its leading space.
                    await write(TranscriptChunk(text=item.text if pieces else item.text.lstrip()).event())
                pieces.append(item.text)
        await _answer(write, pieces, language, stream, started)
        log.info("wyoming transcribe model=%s %.1f s of audio, %d segment(s)", card.id, audio.size / SAMPLE_RATE, len(pieces))
    finally:
        for lease in leases:
            lease.abandon()


async def _answer(write: Write, pieces: list[str], language: str | None, stream: bool, started: bool) -> None:
    if stream and not started:
        await write(TranscriptStart(language=language).event())
    # Sent in the streaming form too: clients that do not stream read only this.
    await write(Transcript(text=join_text(pieces), language=language).event())
    if stream:
        await write(TranscriptStop().event())

