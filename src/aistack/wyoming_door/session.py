"""One Wyoming connection: its events in, calls on the services, their results out as events.

Events are read (by the wyoming library's handler loop) while earlier requests are still being
served, so a client that goes away is noticed at once: the work in progress is cancelled, which
stops the engine at its next step and gives its slot back. Everything the session sends is sent
by one worker, in the order the requests came.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

from wyoming.asr import Transcribe
from wyoming.audio import AudioChunk, AudioFormat, AudioStart, AudioStop
from wyoming.error import Error
from wyoming.event import Event
from wyoming.info import Describe
from wyoming.ping import Ping, Pong
from wyoming.server import AsyncEventHandler
from wyoming.tts import Synthesize, SynthesizeChunk, SynthesizeStart, SynthesizeStop, SynthesizeStopped, SynthesizeVoice

from ..errors import AistackError, ErrorKind, encodable, malformed
from ..inventory import AUTO_ID
from ..services.models import ModelsService
from ..services.speech import SpeechPlan, SpeechService
from ..services.transcription import TranscriptionService
from .describe import describe
from .listening import Listening, transcribe, usable_keywords
from .sentences import SentenceBuffer
from .speaking import plan_for, speak

log = logging.getLogger("aistack.wyoming")

Job = Callable[[], Awaitable[None]]
_Format = TypeVar("_Format", bound=AudioFormat)


@dataclass(frozen=True)
class Services:
    """What a session calls on, and the limits it keeps: `max_upload_bytes` bounds one request's audio
    and one streamed synthesis's text, as it bounds an HTTP upload."""

    transcription: TranscriptionService
    speech: SpeechService
    models: ModelsService
    stream_transcripts: bool
    max_upload_bytes: int
    max_text_chars: int


@dataclass
class SpeechStream:
    """A synthesize-start ... synthesize-stop request: its voice, chosen by its first sentence's job,
    and the text not yet a whole sentence."""

    voice: SynthesizeVoice | None
    sentences: SentenceBuffer
    plan: SpeechPlan | None = None
    # Set once an error event ended the request: nothing more is said or sent for it.
    failed: bool = False
    # UTF-8 bytes of text received so far.
    received: int = 0


class WyomingSession(AsyncEventHandler):
    def __init__(self, services: Services, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        super().__init__(reader, writer)
        self._services = services
        self._jobs: asyncio.Queue[Job] = asyncio.Queue()
        self._worker = asyncio.create_task(self._work(), name="aistack-wyoming-worker")
        self._transcribe: Transcribe | None = None
        self._listening: Listening | None = None
        self._speaking: SpeechStream | None = None

    async def handle_event(self, event: Event) -> bool:
        try:
            self._dispatch(event)
        except AistackError as error:
            self._send_error(error)
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            # The library's from_event reads the fields a well-formed event has.
            self._send_error(malformed(f"the {event.type} event is malformed ({type(error).__name__}: {error}); "
                                       "send the fields the Wyoming protocol defines for it", param=event.type))
        return True

    async def disconnect(self) -> None:
        """The client went away (or the server is stopping): stop whatever is being served for it."""
        self._worker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._worker

    def _dispatch(self, event: Event) -> None:
        kind = event.type
        if Describe.is_type(kind):
            self._jobs.put_nowait(self._describe)
        elif Transcribe.is_type(kind):
            asked = Transcribe.from_event(event)
            _texts(kind, name=asked.name, language=asked.language)
            self._transcribe = asked
        elif AudioStart.is_type(kind):
            start = _audio_format(kind, AudioStart.from_event(event))
            self._listening = self._new_listening()
            self._listening.audio_format = start
        elif AudioChunk.is_type(kind):
            self._on_audio(_audio_format(kind, AudioChunk.from_event(event)))
        elif AudioStop.is_type(kind):
            self._on_audio_stop()
        elif Synthesize.is_type(kind):
            # Inside a stream it repeats the streamed text for clients that do not stream: already said.
            if self._speaking is None:
                request = Synthesize.from_event(event)
                _texts(kind, text=request.text)
                _voice(kind, request.voice)
                self._synthesize(request)
        elif SynthesizeStart.is_type(kind):
            start_stream = SynthesizeStart.from_event(event)
            _voice(kind, start_stream.voice)
            self._on_synthesize_start(start_stream)
        elif SynthesizeChunk.is_type(kind):
            piece = SynthesizeChunk.from_event(event)
            _texts(kind, text=piece.text)
            self._on_synthesize_chunk(piece)
        elif SynthesizeStop.is_type(kind):
            self._on_synthesize_stop()
        elif Ping.is_type(kind):
            pong = Pong(text=Ping.from_event(event).text).event()
            self._jobs.put_nowait(lambda: self.write_event(pong))
        else:
            log.debug("ignoring a %s event", kind)

    # -- speech-to-text ------------------------------------------------------------------------

    def _new_listening(self) -> Listening:
        asked, self._transcribe = self._transcribe, None
        if asked is None:
            return Listening()
        return Listening(model=asked.name or AUTO_ID, language=asked.language,
                         keywords=usable_keywords(asked.transcript_names, asked.transcript_terms))

    def _on_audio(self, chunk: AudioChunk) -> None:
        if self._listening is None:  # no audio-start: the chunk's own format is the stream's
            self._listening = self._new_listening()
        listening = self._listening
        if listening.refused:
            return
        try:
            listening.add(chunk, chunk.audio, self._services.max_upload_bytes)
        except AistackError as error:
            listening.refused = True
            listening.audio.clear()
            self._send_error(error)

    def _on_audio_stop(self) -> None:
        listening, self._listening = self._listening or self._new_listening(), None
        if listening.refused:
            return
        services = self._services
        self._jobs.put_nowait(lambda: transcribe(services.transcription, listening, services.stream_transcripts, self.write_event))

    # -- text-to-speech ------------------------------------------------------------------------

    def _synthesize(self, request: Synthesize) -> None:
        speech = self._services.speech

        async def job() -> None:
            speech.check_input(request.text)
            plan = await plan_for(speech, request.voice)
            await speak(speech, plan, request.text, self.write_event)

        self._jobs.put_nowait(job)

    def _on_synthesize_start(self, start: SynthesizeStart) -> None:
        if self._speaking is not None:
            raise malformed("synthesize-start came while a synthesis stream is open; send synthesize-stop first",
                            param="synthesize-start")
        self._speaking = SpeechStream(start.voice, SentenceBuffer(self._services.max_text_chars))

    def _on_synthesize_chunk(self, chunk: SynthesizeChunk) -> None:
        stream = self._speaking
        if stream is None:
            raise malformed("synthesize-chunk came outside a synthesis stream; send synthesize-start first",
                            param="synthesize-chunk")
        if stream.failed:
            return
        stream.received += len(chunk.text.encode("utf-8", "surrogatepass"))
        limit = self._services.max_upload_bytes
        if stream.received > limit:
            stream.failed = True
            raise AistackError(
                ErrorKind.OVERFLOW,
                f"the streamed text is over the {limit / 2**20:.3g} MB limit; end the stream sooner or raise AISTACK_MAX_UPLOAD_MB",
                param="synthesize-chunk",
            )
        for sentence in stream.sentences.add(chunk.text):
            self._jobs.put_nowait(partial(self._say, stream, sentence))

    def _on_synthesize_stop(self) -> None:
        stream, self._speaking = self._speaking, None
        if stream is None:
            raise malformed("synthesize-stop came outside a synthesis stream; send synthesize-start first",
                            param="synthesize-stop")
        rest = stream.sentences.finish()

        async def finish() -> None:
            if rest:
                await self._say(stream, rest)
            if not stream.failed:
                await self.write_event(SynthesizeStopped().event())

        self._jobs.put_nowait(finish)

    async def _say(self, stream: SpeechStream, text: str) -> None:
        """A whole sentence of a stream, as audio-start, chunks, audio-stop."""
        if stream.failed or not any(character.isalnum() for character in text):
            return  # punctuation alone makes no sound, and is no reason to end the stream
        speech = self._services.speech
        try:
            speech.check_input(text)
            if stream.plan is None:
                stream.plan = await plan_for(speech, stream.voice)
            await speak(speech, stream.plan, text, self.write_event)
        except AistackError:
            stream.failed = True
            raise

    # -- the worker ----------------------------------------------------------------------------

    async def _describe(self) -> None:
        services = self._services
        info = await describe(services.models, services.speech, services.stream_transcripts)
        await self.write_event(info.event())

    def _send_error(self, error: AistackError) -> None:
        self._jobs.put_nowait(lambda: self._write_error(error))

    async def _write_error(self, error: AistackError) -> None:
        # A message may quote what the client sent, lone surrogates included, which UTF-8 cannot carry.
        await self.write_event(Error(text=encodable(error.message), code=error.kind.value).event())

    async def _work(self) -> None:
        while True:
            job = await self._jobs.get()
            try:
                try:
                    await job()
                except AistackError as error:
                    await self._write_error(error)
                except ConnectionError:
                    raise
                except Exception as error:
                    log.exception("a Wyoming request failed")
                    await self._write_error(AistackError(ErrorKind.UNKNOWN, f"aistack failed unexpectedly: {error}"))
            except ConnectionError as gone:
                # Writing to a client that has gone: nothing more can reach it.
                log.debug("wyoming client gone while answering: %s", gone)
                await self.stop()
                return


# The library takes each field as the JSON had it; what the services are handed must be of its type.

def _texts(event_type: str, **fields: Any) -> None:
    for name, value in fields.items():
        if value is not None and not isinstance(value, str):
            raise malformed(f"{event_type} field '{name}' is {type(value).__name__}; send a string", param=f"{event_type}.{name}")


def _voice(event_type: str, voice: SynthesizeVoice | None) -> None:
    if voice is not None:
        _texts(event_type, **{"voice.name": voice.name, "voice.language": voice.language, "voice.speaker": voice.speaker})


def _audio_format(event_type: str, audio: _Format) -> _Format:
    for name in ("rate", "width", "channels"):
        value = getattr(audio, name)
        if isinstance(value, bool) or not isinstance(value, int):
            raise malformed(f"{event_type} field '{name}' is {type(value).__name__}; send a whole number", param=f"{event_type}.{name}")
    return audio
