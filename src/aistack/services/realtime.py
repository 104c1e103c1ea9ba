"""Live transcription sessions (the Realtime API's transcription intent), independent of the transport.

A session takes typed client events (`receive`), turns appended audio into 16 kHz samples, finds turns
with server VAD (or waits for the client's commit), and yields typed server events (`events`). While a
turn is spoken it is decoded again as audio grows, taking a slot only when one is free at once, and
only the words two consecutive decodes agree on go out as deltas (so none is ever taken back); at the
turn's end one last decode, which may wait a while for a slot, gives the whole transcript; with server
VAD that decode starts early, once the trailing silence has lasted a while, so it is ready about when
the silence ends the turn (and is dropped if speech resumes). Each decode holds its slot only for its
own duration. `close` stops whatever is still running and gives back
every slot it holds. When the gateway stops, `RealtimeService.wind_down` lets each session transcribe
what it was given (within the grace period), then say so in an error event and end.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import logging
import math
import time
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np

from ..audio import vad
from ..audio.decode import SAMPLE_RATE
from ..audio.formats import Transcript
from ..audio.live import PCM16_24K, PCMA_8K, PCMU_8K, LiveDecoder, LiveFormat
from ..engines.base import ModelCard, TranscribeOptions
from ..errors import AistackError, ErrorKind, malformed
from ..inventory import AUTO_ID
from ..languages import normalize_language
from ..protocol import realtime as wire
from ..scheduler import Lease
from ..settings import RealtimeSettings
from .transcription import TranscriptionService

log = logging.getLogger("aistack.realtime")

Dialect = Literal["ga", "legacy"]

GA_FORMATS: dict[str, LiveFormat] = {"audio/pcm": PCM16_24K, "audio/pcmu": PCMU_8K, "audio/pcma": PCMA_8K}
LEGACY_FORMATS: dict[str, LiveFormat] = {"pcm16": PCM16_24K, "g711_ulaw": PCMU_8K, "g711_alaw": PCMA_8K}
# OpenAI refuses to commit less than this; a shorter buffer is almost surely a client mistake.
MIN_COMMIT_MS = 100
# The share of the silence duration after which the final decode starts early (it is ready about
# the rest of the silence duration sooner than a decode started when the turn ends).
EARLY_FINAL_AFTER = 0.4
STOPPING_MESSAGE = "the gateway is stopping; open a new session once it is back"
# After the last session is told to end, how long its door may take to send that and close.
DOOR_CLOSE_S = 5.0


@dataclass(frozen=True)
class SessionEnd:
    """Not a wire event: the session is over, and why (for the close frame and the access log)."""

    reason: str
    by_limit: bool = False
    stopping: bool = False  # the gateway is stopping (the door says: come back later)


@dataclass
class Settled:
    """What a session is configured to do; changed only as a whole, once an update has been checked."""

    format: LiveFormat = PCM16_24K
    model: str = AUTO_ID
    card: ModelCard | None = None
    language: str | None = None
    prompt: str | None = None
    turn_detection: vad.VadParams | None = field(default_factory=vad.VadParams)
    include: tuple[str, ...] = ()


@dataclass
class Turn:
    item_id: str
    start: int  # first sample, counted from the session's first
    chunks: list[np.ndarray] = field(default_factory=list)
    samples: int = 0
    finalizing: bool = False
    sent: list[str] = field(default_factory=list)
    last_partial: list[str] | None = None
    decoded_samples: int = 0
    # The final decode started early, when the trailing silence began: ready by the time the silence
    # has lasted long enough to end the turn, unless speech resumed (then it is dropped).
    early: asyncio.Task[Transcript] | None = None

    def audio(self) -> np.ndarray:
        return np.concatenate(self.chunks) if self.chunks else np.zeros(0, dtype=np.float32)


@dataclass
class SessionStats:
    started: float = field(default_factory=time.monotonic)
    audio_samples: int = 0
    turns: int = 0
    deltas: int = 0
    early_finals: int = 0  # finals whose decode had started in the turn's trailing silence

    @property
    def audio_s(self) -> float:
        return self.audio_samples / SAMPLE_RATE


class RealtimeService:
    def __init__(self, transcription: TranscriptionService, settings: RealtimeSettings) -> None:
        self._transcription = transcription
        self._settings = settings
        self.max_event_bytes = settings.max_event_bytes
        self.sessions: set[RealtimeSession] = set()  # open ones, until their close
        self._all_closed: asyncio.Future[None] | None = None

    async def open(self, dialect: Dialect) -> RealtimeSession:
        """A new session, its created event already queued."""
        await asyncio.to_thread(vad.load_model)
        session = RealtimeSession(self._transcription, self._settings, dialect, on_close=self._closed)
        self.sessions.add(session)
        try:
            await session.start()
        except BaseException:
            await session.close()
            raise
        return session

    async def wind_down(self, grace_s: float) -> None:
        """The gateway is stopping: each open session transcribes what it was given within `grace_s`,
        then ends with an error event saying so; this returns once their doors have closed them."""
        sessions = list(self.sessions)
        if not sessions:
            return
        self._all_closed = asyncio.get_running_loop().create_future()
        await asyncio.gather(*(session.wind_down(grace_s) for session in sessions))
        if self.sessions:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._all_closed), DOOR_CLOSE_S)

    def _closed(self, session: RealtimeSession) -> None:
        self.sessions.discard(session)
        if not self.sessions and self._all_closed is not None and not self._all_closed.done():
            self._all_closed.set_result(None)


class RealtimeSession:
    def __init__(self, transcription: TranscriptionService, settings: RealtimeSettings, dialect: Dialect,
                 on_close: Callable[[RealtimeSession], None] = lambda session: None) -> None:
        self._on_close = on_close
        self.id = wire.session_id()
        self.dialect = dialect
        self.stats = SessionStats()
        self._transcription = transcription
        self._settings = settings
        self._expires_at = int(time.time() + settings.max_session_s)
        self._config = Settled()
        self._outbox: asyncio.Queue[wire.ServerEvent | SessionEnd] = asyncio.Queue()
        self._decoder = LiveDecoder(self._config.format)
        self._detector: vad.SpeechDetector | None = vad.SpeechDetector(vad.VadParams())
        self._received = 0  # samples since the session started
        self._buffer: list[np.ndarray] = []  # uncommitted audio outside a turn (the padding kept before speech)
        self._buffer_start = 0
        self._turn: Turn | None = None
        self._previous_item: str | None = None
        self._finals: asyncio.Queue[tuple[Turn, np.ndarray]] = asyncio.Queue()
        self._finals_waiting = 0
        self._finals_pending = 0  # committed turns whose completed (or failed) is not yet sent
        self._finals_idle: asyncio.Future[None] | None = None
        self._winding_down = False
        self._delta_task: asyncio.Task[None] | None = None
        self._early_tasks: set[asyncio.Task[Transcript]] = set()
        self._tasks: list[asyncio.Task[None]] = []
        self._leases: set[Lease] = set()
        self._ended = False

    @property
    def model(self) -> str:
        return self._config.card.id if self._config.card is not None else self._config.model

    async def start(self) -> None:
        try:
            self._config.card = await self._transcription.select(AUTO_ID, None, "transcribe")
        except AistackError as error:  # no ASR model yet: the first decode reports it
            log.info("realtime session %s has no model yet: %s", self.id, error.message)
        self._emit(self._session_event(self.dialect, created=True))
        self._tasks.append(asyncio.create_task(self._run_finals(), name=f"realtime-finals-{self.id}"))
        self._tasks.append(asyncio.create_task(self._limit_length(), name=f"realtime-limit-{self.id}"))

    async def events(self) -> AsyncGenerator[wire.ServerEvent | SessionEnd, None]:
        """Server events as they come, ending with the SessionEnd."""
        while True:
            event = await self._outbox.get()
            yield event
            if isinstance(event, SessionEnd):
                return

    def end(self, reason: str, by_limit: bool = False, stopping: bool = False) -> None:
        if not self._ended:
            self._ended = True
            self._outbox.put_nowait(SessionEnd(reason, by_limit, stopping))

    async def wind_down(self, grace_s: float) -> None:
        """The gateway is stopping. The turn being spoken is committed (its audio was sent to be
        transcribed), later input is dropped, committed turns get `grace_s` to be transcribed, and
        then an error event says the gateway is stopping and the session ends."""
        if self._ended or self._winding_down:
            return
        self._winding_down = True
        turn = self._turn
        if turn is not None and turn.samples * 1000 >= MIN_COMMIT_MS * SAMPLE_RATE:
            if self._detector is not None:
                self._emit(wire.SpeechStopped(audio_end_ms=_ms(self._received), item_id=turn.item_id))
            self._commit_turn()
        else:
            self._drop_turn()
        if self._finals_pending:
            self._finals_idle = asyncio.get_running_loop().create_future()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._finals_idle), grace_s)
        self._emit(wire.error_event(AistackError(ErrorKind.BUSY, STOPPING_MESSAGE)))
        self.end("server stopping", stopping=True)

    def reject(self, error: wire.BadEvent) -> None:
        self._emit(wire.error_event(error, error.client_event_id))

    async def receive(self, event: wire.SessionUpdate | wire.TranscriptionSessionUpdate | wire.InputAudioBufferAppend
                      | wire.InputAudioBufferCommit | wire.InputAudioBufferClear) -> None:
        if self._winding_down:
            return  # the session is ending: what arrives now would not be transcribed
        try:
            if isinstance(event, wire.InputAudioBufferAppend):
                self._append(event.audio)
            elif isinstance(event, wire.InputAudioBufferCommit):
                self._commit()
            elif isinstance(event, wire.InputAudioBufferClear):
                self._clear()
            elif isinstance(event, wire.SessionUpdate):
                await self._update_ga(event.session)
            else:
                await self._update_legacy(event.session)
        except AistackError as error:
            self._emit(wire.error_event(error, event.event_id))
        except Exception as error:  # a fault here must not end the session silently
            log.exception("realtime session %s failed on %s", self.id, event.type)
            self._emit(wire.error_event(AistackError(ErrorKind.UNKNOWN, f"{event.type} failed: {error}"), event.event_id))

    async def close(self) -> None:
        """Stop every decode and task of this session and give back every slot it holds."""
        self.end("closed")
        for lease in list(self._leases):
            lease.abandon()
        tasks: list[asyncio.Task[Any]] = [*self._tasks, *self._early_tasks,
                                          *([self._delta_task] if self._delta_task is not None else [])]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        self._delta_task = None
        self._buffer.clear()
        self._turn = None
        self._on_close(self)

    # --- configuration -----------------------------------------------------------------------

    async def _update_ga(self, session: wire.TranscriptionSessionConfig) -> None:
        new = replace(self._config)
        audio_input = session.audio.input if session.audio is not None else None
        if audio_input is not None:
            given = audio_input.model_fields_set
            if "format" in given and audio_input.format is not None:
                new.format = GA_FORMATS[audio_input.format.type]
            if "transcription" in given:
                await self._choose_model(new, audio_input.transcription, "session.audio.input.transcription")
            if "turn_detection" in given:
                new.turn_detection = _vad_params(audio_input.turn_detection, "session.audio.input.turn_detection")
        if "include" in session.model_fields_set:
            new.include = tuple(session.include or ())
        self._apply(new)
        self._emit(self._session_event("ga", created=False))

    async def _update_legacy(self, session: wire.LegacySessionConfig) -> None:
        new = replace(self._config)
        given = session.model_fields_set
        if "input_audio_format" in given and session.input_audio_format is not None:
            new.format = LEGACY_FORMATS[session.input_audio_format]
        if "input_audio_transcription" in given:
            await self._choose_model(new, session.input_audio_transcription, "session.input_audio_transcription")
        if "turn_detection" in given:
            new.turn_detection = _vad_params(session.turn_detection, "session.turn_detection")
        if "include" in given:
            new.include = tuple(session.include or ())
        self._apply(new)
        self._emit(self._session_event("legacy", created=False))

    async def _choose_model(self, new: Settled, transcription: wire.TranscriptionConfig | None, where: str) -> None:
        transcription = transcription or wire.TranscriptionConfig()
        try:
            language = normalize_language(transcription.language)
            model = transcription.model or AUTO_ID
            card = await self._transcription.select(model, language, "transcribe")
        except AistackError as error:
            param = f"{where}.{error.param}" if error.param else where
            raise AistackError(error.kind, error.message, provider=error.provider, param=param) from None
        new.model, new.card, new.language, new.prompt = model, card, language, transcription.prompt or None

    def _apply(self, new: Settled) -> None:
        old = self._config
        self._config = new
        if new.format != old.format:
            self._decoder = LiveDecoder(new.format)
        if new.turn_detection != old.turn_detection:
            self._detector = self._new_detector(new.turn_detection)
            if self._turn is not None and new.turn_detection is not None:
                self._drop_turn()  # a turn the old settings began cannot end by the new ones' rules

    def _session_event(self, dialect: Dialect, created: bool) -> wire.ServerEvent:
        config = self._config
        transcription = wire.TranscriptionView(model=self.model, language=config.language, prompt=config.prompt)
        turn_detection = None
        if config.turn_detection is not None:
            params = config.turn_detection
            turn_detection = wire.ServerVadView(threshold=params.threshold, prefix_padding_ms=params.prefix_padding_ms,
                                                silence_duration_ms=params.silence_duration_ms)
        if dialect == "ga":
            ga_type = next(name for name, fmt in GA_FORMATS.items() if fmt == config.format)
            audio_format = wire.AudioFormat(type=ga_type, rate=config.format.rate)
            session = wire.TranscriptionSession(
                id=self.id, expires_at=self._expires_at, include=list(config.include),
                audio=wire.AudioView(input=wire.AudioInputView(format=audio_format, transcription=transcription,
                                                               turn_detection=turn_detection)),
            )
            return wire.SessionCreated(session=session) if created else wire.SessionUpdated(session=session)
        legacy_format = next(name for name, fmt in LEGACY_FORMATS.items() if fmt == config.format)
        legacy = wire.LegacyTranscriptionSession(
            id=self.id, expires_at=self._expires_at, input_audio_format=legacy_format,
            input_audio_transcription=transcription, turn_detection=turn_detection, include=list(config.include),
        )
        return wire.TranscriptionSessionCreated(session=legacy) if created else wire.TranscriptionSessionUpdated(session=legacy)

    # --- the input buffer --------------------------------------------------------------------

    def _append(self, audio_b64: str) -> None:
        try:
            data = base64.b64decode(audio_b64, validate=True)
        except (binascii.Error, ValueError):
            raise malformed("`audio` is not valid base64; send the audio bytes base64-encoded", param="audio") from None
        live_format = self._config.format
        if len(data) % live_format.bytes_per_sample:
            raise malformed(f"{len(data)} bytes is not a whole number of 16-bit samples; audio/pcm is 16-bit "
                            "little-endian mono at 24 kHz, 2 bytes a sample", param="audio")
        held_s = (self._turn.samples if self._turn is not None else 0) / SAMPLE_RATE
        if self._detector is None and held_s + live_format.seconds(len(data)) > self._settings.max_buffer_s:
            raise AistackError(ErrorKind.OVERFLOW, f"the input buffer would hold over {self._settings.max_buffer_s:g} s of "
                               "audio; commit it (input_audio_buffer.commit) or clear it before appending more",
                               param="audio")
        samples = self._decoder.decode(data)
        if samples.size == 0:
            return
        first = self._received
        self._received += samples.size
        self.stats.audio_samples += samples.size
        if self._detector is None:
            turn = self._turn or self._open_turn(first)
            self._extend(turn, samples)
        else:
            self._follow_speech(samples, first)
        self._maybe_decode_delta()

    def _follow_speech(self, samples: np.ndarray, first: int) -> None:
        assert self._detector is not None and self._config.turn_detection is not None
        params = self._config.turn_detection
        edges = self._detector.feed(samples)
        position = first
        for edge in edges:
            if edge.kind == "started":
                self._hold(samples[position - first:edge.sample - first] if edge.sample > position else samples[:0], position)
                position = max(position, edge.sample)
                padding = params.prefix_padding_ms * SAMPLE_RATE // 1000
                start = max(self._buffer_start, edge.sample - padding)
                turn = self._open_turn(start)
                held = np.concatenate(self._buffer) if self._buffer else np.zeros(0, dtype=np.float32)
                self._extend(turn, held[start - self._buffer_start:])
                self._buffer.clear()
                self._buffer_start = position
                self._emit(wire.SpeechStarted(audio_start_ms=_ms(edge.sample), item_id=turn.item_id))
            elif self._turn is not None:
                end = max(position, min(edge.detected_at, first + samples.size))
                self._extend(self._turn, samples[position - first:end - first])
                position = end
                self._emit(wire.SpeechStopped(audio_end_ms=_ms(edge.sample), item_id=self._turn.item_id))
                self._commit_turn()
                self._buffer_start = position
        rest = samples[position - first:]
        if self._turn is not None:
            self._extend(self._turn, rest)
            if self._turn.samples / SAMPLE_RATE >= self._settings.max_buffer_s:
                # A turn this long is cut here and the speech goes on in a new one.
                cut = self._received
                self._emit(wire.SpeechStopped(audio_end_ms=_ms(cut), item_id=self._turn.item_id))
                self._commit_turn()
                turn = self._open_turn(cut)
                self._emit(wire.SpeechStarted(audio_start_ms=_ms(cut), item_id=turn.item_id))
        else:
            self._hold(rest, position)

    def _hold(self, samples: np.ndarray, at: int) -> None:
        """Keep the audio before speech, but only as much as the prefix padding needs."""
        if not self._buffer:
            self._buffer_start = at
        self._buffer.append(samples)
        params = self._config.turn_detection
        keep = (params.prefix_padding_ms if params is not None else 0) * SAMPLE_RATE // 1000 + vad.WINDOW
        held = sum(chunk.size for chunk in self._buffer)
        if held > 2 * keep:
            merged = np.concatenate(self._buffer)[-keep:]
            self._buffer = [merged]
            self._buffer_start = at + samples.size - merged.size

    def _new_detector(self, params: vad.VadParams | None) -> vad.SpeechDetector | None:
        """A detector that starts listening at the next sample to arrive, or None for manual commits."""
        return vad.SpeechDetector(params, origin=self._received) if params is not None else None

    def _open_turn(self, start: int) -> Turn:
        self._turn = Turn(wire.item_id(), start)
        return self._turn

    @staticmethod
    def _extend(turn: Turn, samples: np.ndarray) -> None:
        if samples.size:
            turn.chunks.append(samples)
            turn.samples += samples.size

    def _commit(self) -> None:
        turn = self._turn
        if turn is None or turn.samples * 1000 < MIN_COMMIT_MS * SAMPLE_RATE:
            held_ms = (turn.samples if turn is not None else 0) * 1000 // SAMPLE_RATE
            raise malformed(f"the input buffer holds {held_ms} ms of audio; commit needs at least {MIN_COMMIT_MS} ms "
                            "(append audio first)")
        self._commit_turn()
        self._detector = self._new_detector(self._config.turn_detection)

    def _commit_turn(self) -> None:
        turn = self._turn
        assert turn is not None
        self._turn = None
        turn.finalizing = True
        if self._delta_task is not None and not self._delta_task.done():
            # The final must not wait behind a partial decode of the same audio.
            self._delta_task.cancel()
        self._emit(wire.Committed(item_id=turn.item_id, previous_item_id=self._previous_item))
        self._previous_item = turn.item_id
        self.stats.turns += 1
        self._finals_waiting += 1
        self._finals_pending += 1
        self._finals.put_nowait((turn, turn.audio()))

    def _clear(self) -> None:
        self._drop_turn()
        self._buffer.clear()
        self._detector = self._new_detector(self._config.turn_detection)
        self._emit(wire.Cleared())

    def _drop_turn(self) -> None:
        if self._turn is not None:
            self._turn.finalizing = True  # a delta decode still running for it sends nothing
            self._drop_early(self._turn)
            self._turn = None

    @staticmethod
    def _drop_early(turn: Turn) -> None:
        if turn.early is not None:
            turn.early.cancel()
            turn.early = None

    # --- decoding ----------------------------------------------------------------------------

    def _options(self, card: ModelCard, logprobs: bool = False) -> TranscribeOptions:
        """With logprobs: the model's per-token log probabilities, as HTTP's include[]=logprobs gives them;
        from a model that has none, its word probabilities (word timestamps) stand in."""
        token_logprobs = logprobs and "logprobs" in card.asr_features
        return TranscribeOptions(self._config.language, "transcribe", self._config.prompt, None,
                                 word_timestamps=logprobs and not token_logprobs, logprobs=token_logprobs)

    def _maybe_decode_delta(self) -> None:
        self._maybe_finalize_early()
        turn, card = self._turn, self._config.card
        if turn is None or card is None or self._finals_waiting or (self._delta_task and not self._delta_task.done()):
            return
        if turn.samples - turn.decoded_samples < self._settings.delta_interval_s * SAMPLE_RATE:
            return
        if self._detector is not None and self._detector.trailing_silence:
            return  # the turn may end in a moment; its final should find the slot free
        # Deltas are a courtesy: under load they are skipped, so that no final waits behind them.
        if not self._transcription.slot_free_now(card):
            return
        turn.decoded_samples = turn.samples
        self._delta_task = asyncio.create_task(self._decode_delta(turn, card, turn.audio()), name=f"realtime-delta-{self.id}")

    def _maybe_finalize_early(self) -> None:
        """Start the turn's final decode as soon as its trailing silence begins (when a slot is free at
        once), so the final is ready when the silence ends the turn; drop it if speech resumes."""
        turn, card, detector = self._turn, self._config.card, self._detector
        if turn is None or card is None or detector is None:
            return
        if not detector.trailing_silence:
            self._drop_early(turn)  # speech went on: that decode missed the words since
            return
        # Not at the first quiet window: a pause inside a sentence would start (and waste) a decode
        # that holds the slot the turn's deltas need.
        if detector.silence_ms < detector.params.silence_duration_ms * EARLY_FINAL_AFTER:
            return
        if turn.early is not None or self._finals_waiting or (self._delta_task and not self._delta_task.done()):
            return
        if not self._transcription.slot_free_now(card):
            return
        options = self._options(card, wire.LOGPROBS_INCLUDE in self._config.include)
        # The rest of the silence as zeros: the audio the final would decode, were the silence silent.
        audio = np.concatenate([turn.audio(), np.zeros(detector.silence_to_come, dtype=np.float32)])
        early = asyncio.create_task(self._decode(card, audio, options, wait_s=None), name=f"realtime-early-{self.id}")
        self._early_tasks.add(early)
        early.add_done_callback(self._early_tasks.discard)
        turn.early = early

    async def _decode_delta(self, turn: Turn, card: ModelCard, audio: np.ndarray) -> None:
        try:
            text = (await self._decode(card, audio, self._options(card), wait_s=None)).text
        except AistackError as error:
            log.debug("realtime session %s skipped a delta: %s", self.id, error.message)
            return
        if turn.finalizing:
            return
        words = text.split()
        if turn.last_partial is not None:
            stable = _common_prefix(turn.last_partial, words)
            if len(stable) > len(turn.sent) and stable[:len(turn.sent)] == turn.sent:
                fresh = stable[len(turn.sent):]
                turn.sent = stable
                self.stats.deltas += 1
                self._emit(wire.TranscriptionDelta(item_id=turn.item_id, delta=(" " if len(stable) > len(fresh) else "")
                                                   + " ".join(fresh)))
        turn.last_partial = words

    async def _run_finals(self) -> None:
        while True:
            turn, audio = await self._finals.get()
            waiting = True

            def granted() -> None:
                # Once the final holds its slot, partial decodes of the next turn may use any other.
                nonlocal waiting
                if waiting:
                    waiting = False
                    self._finals_waiting -= 1

            try:
                self._emit(await self._final(turn, audio, granted))
            except Exception as error:  # the next turns must still get their finals
                log.exception("realtime session %s: the final of %s failed", self.id, turn.item_id)
                failure = AistackError(ErrorKind.UNKNOWN, f"the transcription failed: {error}")
                self._emit(wire.TranscriptionFailed(item_id=turn.item_id, error=wire.failure_detail(failure)))
            finally:
                granted()
                self._finals_pending -= 1
                if not self._finals_pending and self._finals_idle is not None and not self._finals_idle.done():
                    self._finals_idle.set_result(None)

    async def _final(self, turn: Turn, audio: np.ndarray, granted: Callable[[], None]) -> wire.ServerEvent:
        card = self._config.card
        logprobs_wanted = wire.LOGPROBS_INCLUDE in self._config.include
        try:
            transcript = await self._early_final(turn, granted)
            if transcript is None:
                if card is None:
                    card = await self._transcription.select(AUTO_ID, self._config.language, "transcribe")
                transcript = await self._decode(card, audio, self._options(card, logprobs_wanted),
                                                wait_s=self._settings.final_slot_wait_s, on_granted=granted)
        except AistackError as error:
            return wire.TranscriptionFailed(item_id=turn.item_id, error=wire.failure_detail(error))
        logprobs = _logprobs(transcript) if logprobs_wanted else None
        return wire.TranscriptionCompleted(item_id=turn.item_id, transcript=transcript.text, logprobs=logprobs,
                                           usage=wire.DurationUsage(seconds=round(audio.size / SAMPLE_RATE, 3)))

    async def _early_final(self, turn: Turn, granted: Callable[[], None]) -> Transcript | None:
        """The early decode's transcript, or None when there was none or it could not finish."""
        early, turn.early = turn.early, None
        if early is None:
            return None
        granted()  # this final waits for no slot of its own
        try:
            transcript = await early
            self.stats.early_finals += 1
            return transcript
        except (AistackError, asyncio.CancelledError) as error:
            if isinstance(error, asyncio.CancelledError) and self._ended:
                raise
            log.debug("realtime session %s: the early final of %s did not finish; decoding again", self.id, turn.item_id)
            return None

    async def _decode(self, card: ModelCard, audio: np.ndarray, options: TranscribeOptions, wait_s: float | None,
                      on_granted: Callable[[], None] = lambda: None) -> Transcript:
        """One decode on a slot held only for it: taken at once (wait_s None) or within wait_s, else busy."""
        leases: list[Lease] = []
        granted = asyncio.Event()

        def hold(lease: Lease) -> None:
            leases.append(lease)
            self._leases.add(lease)
            granted.set()
            on_granted()

        starting = asyncio.ensure_future(self._transcription.start(card, on_lease=hold))
        try:
            if wait_s is not None:
                # The wait is for the slot only: loading the model once it is granted may take longer.
                slot = asyncio.ensure_future(granted.wait())
                done, _ = await asyncio.wait({starting, slot}, timeout=wait_s, return_when=asyncio.FIRST_COMPLETED)
                slot.cancel()
                if not done:
                    raise AistackError(ErrorKind.BUSY, f"no slot came free within {wait_s:g} s for this turn's "
                                       "transcription; the session goes on (fewer sessions at once, or a larger "
                                       "realtime.final_slot_wait_s, would let it through)")
            job = await starting
            return await self._transcription.transcribe(job, audio, options)
        finally:
            if not starting.done():
                starting.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await starting
            for lease in leases:
                lease.abandon()
                self._leases.discard(lease)

    async def _limit_length(self) -> None:
        await asyncio.sleep(self._settings.max_session_s)  # a timer: the session's length limit
        limit = f"the session reached its maximum length of {self._settings.max_session_s:g} s; open a new one to go on"
        self._emit(wire.error_event(AistackError(ErrorKind.OVERFLOW, limit)))
        self.end(limit, by_limit=True)

    def _emit(self, event: wire.ServerEvent) -> None:
        if not self._ended:
            self._outbox.put_nowait(event)


def _vad_params(config: wire.TurnDetectionConfig | None, param: str) -> vad.VadParams | None:
    if config is None:
        return None
    if config.type != "server_vad":
        raise malformed(f"turn detection '{config.type}' is not served here; use server_vad, or null to commit yourself",
                        param=f"{param}.type")
    defaults = vad.VadParams()
    return vad.VadParams(
        threshold=config.threshold if config.threshold is not None else defaults.threshold,
        prefix_padding_ms=config.prefix_padding_ms if config.prefix_padding_ms is not None else defaults.prefix_padding_ms,
        silence_duration_ms=config.silence_duration_ms if config.silence_duration_ms is not None else defaults.silence_duration_ms,
    )


def _logprobs(transcript: Transcript) -> list[wire.LogProb]:
    tokens = [wire.LogProb(token=p.token, bytes=list(p.bytes), logprob=p.logprob)
              for segment in transcript.segments for p in segment.logprobs]
    if tokens:
        return tokens
    return [wire.LogProb(token=word.word, bytes=list(word.word.encode()), logprob=math.log(max(word.probability, 1e-12)))
            for segment in transcript.segments for word in segment.words if word.probability is not None]


def _common_prefix(first: list[str], second: list[str]) -> list[str]:
    common: list[str] = []
    for a, b in zip(first, second, strict=False):
        if a != b:
            break
        common.append(a)
    return common


def _ms(sample: int) -> int:
    return sample * 1000 // SAMPLE_RATE
