"""A stand-in for the vLLM-Omni server running Qwen3-TTS: a real HTTP/1.1 server on loopback.

No Docker engine is available here, so tests talk to this instead (DESIGN §6). It speaks the
protocol of vLLM-Omni's Speech API as its docs and serving code describe it, byte for byte
where a client could tell: keep-alive connections, `Content-Length` or hand-written chunked
bodies, vLLM's error envelope `{"error": {"message", "type", "param", "code"}}`, FastAPI's
`{"detail": "Not Found"}` for unknown routes, vLLM's `{"error": "Unauthorized"}` for a wrong key.

- `GET /health` -> 200 `{"status": "healthy"}`; 503 `{"status": "unhealthy", "reason": ...}`.
- `GET /v1/models` -> the one served model, vLLM's list shape.
- `GET /v1/audio/voices` -> `{"voices": [lower-case speakers], "uploaded_voices": []}`.
- `POST /v1/audio/speech` -> the request validated like the real one (the common rules), then
  audio: a whole WAV (or raw PCM) with `Content-Length`; with `stream_format="audio"` a chunked
  body of raw PCM, or a WAV whose header has 0xFFFFFFFF for the sizes; with `stream=true` alone,
  OpenAI `speech.audio.*` server-sent events.

The audio is a voiced, syllable-shaped tone at 24 kHz whose length grows with the input text.

Faults, per instance (`fault=`) or for the next speech requests (`queue_fault()`):
`"error_500"` (the engine fails: 500 with vLLM's body), `"hang"` (reads the request, never
answers, for at most `max_hang_s`), `"stall"` (headers and the first audio chunk, then nothing),
`"drop"` (closes the connection after `drop_after_chunks` audio chunks). A slow start:
`warmup_s` with `warmup_mode="503"` (health 503, speech 503) or `"refuse"` (the port is bound
but not listening, so connections are refused); `warmup_s=math.inf` warms until `end_warmup()`,
which ends a warm-up of either mode at once. `first_audio_delay_s` delays the first audio of every
request. `step=True` holds each audio chunk of a response (the first included; a whole-file body
is one chunk) until `release_next_chunk()` lets it go; `release_all()` leaves step mode;
`wait_for_chunks()` waits until a number of chunks went out. A refused connection: `stop()` the
server (its port stays held; `start()` serves there again). Every request is recorded
(`requests`, `speech_calls`, `speech_bodies`), including whether the client went away early.

    with Qwen3TtsDouble(chunk_interval_s=0.1) as server:
        settings = Qwen3TtsSettings(base_url=server.url)
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import json
import math
import struct
import threading
import time
import uuid
from dataclasses import dataclass, field
from email.utils import formatdate
from http import HTTPStatus
from typing import Any

import numpy as np

from doubles.loopback import ClientWatch, LoopbackServer, ReleaseGate

DEFAULT_MODEL = "Qwen/Qwen3-TTS-12Hz-0.6B-CustomVoice"
CUSTOM_VOICE_SPEAKERS = ("aiden", "dylan", "eric", "ono_anna", "ryan", "serena", "sohee", "uncle_fu", "vivian")
LANGUAGES = ("Auto", "Chinese", "English", "Japanese", "Korean", "German", "French", "Russian", "Portuguese",
             "Spanish", "Italian")
RESPONSE_FORMATS = ("wav", "pcm", "flac", "mp3", "opus")
FAULTS = ("error_500", "hang", "stall", "drop")
MAX_INSTRUCTIONS = 500
MAX_NEW_TOKENS = 4096
ENGINE_ERROR = "EngineCore encountered an issue. See stack trace (above) for the root cause."


@dataclass
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    at: float
    # The client's (host, port): one port for several requests means a reused connection.
    peer: tuple[str, int]

    @property
    def json(self) -> Any:
        return json.loads(self.body) if self.body else None


@dataclass
class SpeechCall:
    """One `POST /v1/audio/speech` as the double handled it (times are `time.monotonic()`)."""

    body: dict[str, Any]
    fault: str | None
    started_at: float
    status: int | None = None
    headers_at: float | None = None
    first_audio_at: float | None = None
    finished_at: float | None = None
    audio_bytes_sent: int = 0
    audio_bytes_total: int = 0
    chunks_sent: int = 0
    # complete | rejected | failed | hung | stalled | dropped | client_gone | stopped
    outcome: str = "pending"
    done: threading.Event = field(default_factory=threading.Event)

    @property
    def client_gone(self) -> bool:
        return self.outcome == "client_gone"


def synthesize(text: str, sample_rate: int, seconds_per_char: float, min_seconds: float, speed: float = 1.0) -> np.ndarray:
    """A speech-like signal: a gliding voiced tone with harmonics, shaped into ~4 syllables a second."""
    seconds = max(min_seconds, len(text) * seconds_per_char) / speed
    count = int(round(seconds * sample_rate))
    t = np.arange(count, dtype=np.float64) / sample_rate
    pitch = 140.0 + 30.0 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(pitch) / sample_rate
    voiced = np.sin(phase) + 0.5 * np.sin(2 * phase) + 0.25 * np.sin(3 * phase)
    syllables = np.abs(np.sin(np.pi * 4.0 * t)) ** 0.6
    signal = 0.3 * voiced * syllables / 1.75
    return np.round(signal * 32767).astype("<i2")


def wav_header(sample_rate: int, data_bytes: int | None) -> bytes:
    """44-byte mono 16-bit PCM header; `None` gives the streaming placeholders (0xFFFFFFFF)."""
    unknown = 0xFFFFFFFF
    riff = unknown if data_bytes is None else 36 + data_bytes
    data = unknown if data_bytes is None else data_bytes
    return struct.pack("<4sI4s4sIHHIIHH4sI", b"RIFF", riff, b"WAVE", b"fmt ", 16, 1, 1, sample_rate,
                       sample_rate * 2, 2, 16, b"data", data)


def error_body(message: str, err_type: str, code: int, param: str | None = None, **extra: Any) -> dict[str, Any]:
    """vLLM's ErrorResponse: the error object nested under "error"."""
    return {"error": {"message": message, "type": err_type, "param": param, "code": code, **extra}}


class _Rejection(Exception):
    def __init__(self, status: int, body: dict[str, Any]) -> None:
        super().__init__(body)
        self.status = status
        self.body = body


def _bad_request(message: str, param: str | None = None) -> _Rejection:
    """What the serving code's own checks send (create_error_response defaults)."""
    return _Rejection(400, error_body(message, "BadRequestError", 400, param))


def _invalid(message: str) -> _Rejection:
    """What vLLM's RequestValidationError handler sends for a body the pydantic model refuses."""
    text = f"1 validation error for OpenAICreateSpeechRequest\n  {message}"
    return _Rejection(400, error_body(text, HTTPStatus.BAD_REQUEST.phrase, 400))


class Qwen3TtsDouble(LoopbackServer):
    thread_name = "qwen3-tts-double"
    label = "Qwen3-TTS double"

    def __init__(
        self,
        *,
        model: str = DEFAULT_MODEL,
        checkpoint: str = "CustomVoice",
        speakers: tuple[str, ...] | None = None,
        sample_rate: int = 24_000,
        seconds_per_char: float = 0.04,
        min_seconds: float = 0.3,
        chunk_seconds: float = 0.2,
        chunk_interval_s: float = 0.0,
        first_audio_delay_s: float = 0.0,
        warmup_s: float = 0.0,
        warmup_mode: str = "503",
        fault: str | None = None,
        max_hang_s: float = 10.0,
        drop_after_chunks: int = 1,
        odd_boundaries: bool = False,
        hang_health: bool = False,
        voices_endpoint: bool = True,
        api_key: str | None = None,
        step: bool = False,
    ) -> None:
        if fault is not None and fault not in FAULTS:
            raise ValueError(f"unknown fault {fault!r}; one of {FAULTS}")
        if warmup_mode not in ("503", "refuse"):
            raise ValueError("warmup_mode is '503' or 'refuse'")
        if checkpoint not in ("CustomVoice", "VoiceDesign", "Base"):
            raise ValueError("checkpoint is CustomVoice, VoiceDesign or Base")
        super().__init__()
        self.model = model
        self.checkpoint = checkpoint
        default_speakers = CUSTOM_VOICE_SPEAKERS if checkpoint == "CustomVoice" else ()
        self.speakers = tuple(s.lower() for s in (default_speakers if speakers is None else speakers))
        self.sample_rate = sample_rate
        self.seconds_per_char = seconds_per_char
        self.min_seconds = min_seconds
        self.chunk_seconds = chunk_seconds
        self.chunk_interval_s = chunk_interval_s
        self.first_audio_delay_s = first_audio_delay_s
        self.warmup_s = warmup_s
        self.warmup_mode = warmup_mode
        self.fault = fault
        self.max_hang_s = max_hang_s
        self.drop_after_chunks = drop_after_chunks
        self.odd_boundaries = odd_boundaries
        self.hang_health = hang_health
        self.voices_endpoint = voices_endpoint
        self.api_key = api_key
        self.step = step
        self.port = 0  # until the first start() binds one
        self.requests: list[RecordedRequest] = []
        self.speech_calls: list[SpeechCall] = []
        self.listening = threading.Event()
        self._faults: collections.deque[str] = collections.deque()
        self._started_at = 0.0
        self._warmup_over: asyncio.Event | None = None
        self._chunk_gate = ReleaseGate()
        self._chunks_sent = 0
        self._chunk_cond = threading.Condition()

    # -- control ----------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def speech_bodies(self) -> list[dict[str, Any]]:
        return [call.body for call in self.speech_calls]

    def queue_fault(self, fault: str, times: int = 1) -> None:
        """The next `times` speech requests fail this way, then the instance's `fault` applies again."""
        if fault not in FAULTS:
            raise ValueError(f"unknown fault {fault!r}; one of {FAULTS}")
        self._faults.extend([fault] * times)

    def samples_for(self, text: str, speed: float = 1.0) -> int:
        return int(synthesize(text, self.sample_rate, self.seconds_per_char, self.min_seconds, speed).size)

    def end_warmup(self) -> None:
        """The model has loaded: health answers 200 and, in "refuse" mode, the port starts listening."""
        self.warmup_s = 0
        self._wake(self._warmup_over)

    def release_next_chunk(self, count: int = 1) -> None:
        """Step mode: let `count` more audio chunks go out (a release given early is kept)."""
        self._chunk_gate.release(count)

    def release_all(self) -> None:
        """Leave step mode: every held and later chunk goes out without waiting."""
        self.step = False
        self._chunk_gate.wake()

    def wait_for_chunks(self, count: int, timeout: float = 10.0) -> bool:
        """Block until `count` audio chunks went out in all (True) or `timeout` passes (False)."""
        with self._chunk_cond:
            return self._chunk_cond.wait_for(lambda: self._chunks_sent >= count, timeout)

    def _wake(self, event: asyncio.Event | None) -> None:
        loop = self._loop
        if loop is not None and event is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(event.set)

    # -- serving ----------------------------------------------------------------------------

    async def _main(self) -> None:
        self._warmup_over = asyncio.Event()
        self._chunk_gate.bind()
        try:
            sock = self._listening_socket()
        except BaseException as error:
            self._startup_failed(error)
            return
        self.port = sock.getsockname()[1]
        self._started_at = time.monotonic()
        self._ready.set()
        assert self._stopping is not None
        try:
            if self.warmup_s > 0 and self.warmup_mode == "refuse":
                # Bound but not listening: a connect is refused, as while the container starts.
                waits = {asyncio.ensure_future(self._stopping.wait()), asyncio.ensure_future(self._warmup_over.wait())}
                _, pending = await asyncio.wait(waits, timeout=None if math.isinf(self.warmup_s) else self.warmup_s,
                                                return_when=asyncio.FIRST_COMPLETED)
                for waiter in pending:
                    waiter.cancel()
                if self._stopping.is_set():
                    return
            server = await self._start_server(self._connection, sock)
            self.listening.set()
            await self._serve_until_stopped(server)
        finally:
            sock.close()

    def _warming(self) -> bool:
        return self.warmup_s > 0 and time.monotonic() - self._started_at < self.warmup_s

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
                    return
                lines = head.decode("latin-1").split("\r\n")
                method, target, _version = lines[0].split(" ", 2)
                headers: dict[str, str] = {}
                for line in lines[1:]:
                    if ":" in line:
                        name, _, value = line.partition(":")
                        headers[name.strip().lower()] = value.strip()
                length = int(headers.get("content-length") or 0)
                body = await reader.readexactly(length) if length else b""
                path = target.split("?", 1)[0]
                peer = writer.get_extra_info("peername")
                self.requests.append(RecordedRequest(method, path, headers, body, time.monotonic(), tuple(peer[:2])))
                reusable = await self._route(method, path, headers, body, reader, writer)
                if not reusable or headers.get("connection", "").lower() == "close":
                    return
        except (ConnectionError, asyncio.IncompleteReadError):
            return

    async def _route(self, method: str, path: str, headers: dict[str, str], body: bytes,
                     reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        routes = {"/health": "GET", "/v1/models": "GET", "/v1/audio/voices": "GET", "/v1/audio/speech": "POST"}
        if path == "/v1/audio/voices" and not self.voices_endpoint:
            routes.pop(path)
        if path not in routes:
            return await self._json(writer, 404, {"detail": "Not Found"})
        if routes[path] != method:
            return await self._json(writer, 405, {"detail": "Method Not Allowed"}, {"allow": routes[path]})
        if self.api_key and path.startswith("/v1") and headers.get("authorization") != f"Bearer {self.api_key}":
            return await self._json(writer, 401, {"error": "Unauthorized"})
        if path == "/health":
            if self.hang_health:
                watch = ClientWatch(reader, self._stopping)  # type: ignore[arg-type]
                try:
                    await watch.pause(self.max_hang_s)
                finally:
                    await watch.close()
                return False
            if self._warming():
                return await self._json(writer, 503, {"status": "unhealthy", "reason": "No engine initialized"})
            return await self._json(writer, 200, {"status": "healthy"})
        if self._warming():
            return await self._json(writer, 503, error_body("The engine is still loading the model.",
                                                            HTTPStatus.SERVICE_UNAVAILABLE.phrase, 503))
        if path == "/v1/models":
            card = {"id": self.model, "object": "model", "created": int(time.time()), "owned_by": "vllm",
                    "root": self.model, "parent": None, "max_model_len": 32768,
                    "permission": [{"id": f"modelperm-{uuid.uuid4().hex}", "object": "model_permission",
                                    "created": int(time.time()), "allow_create_engine": False,
                                    "allow_sampling": True, "allow_logprobs": True,
                                    "allow_search_indices": False, "allow_view": True,
                                    "allow_fine_tuning": False, "organization": "*", "group": None,
                                    "is_blocking": False}]}
            return await self._json(writer, 200, {"object": "list", "data": [card]})
        if path == "/v1/audio/voices":
            return await self._json(writer, 200, {"voices": sorted(self.speakers), "uploaded_voices": []})
        return await self._speech(body, reader, writer)

    # -- /v1/audio/speech -------------------------------------------------------------------

    def _validate(self, payload: Any) -> dict[str, Any]:
        """The checks the real server makes, in its order (pydantic first, then the serving code)."""
        if not isinstance(payload, dict):
            raise _invalid("Input should be a valid dictionary or object to extract fields from")
        if not isinstance(payload.get("input"), str):
            raise _invalid("input\n    Field required" if "input" not in payload else "input\n    Input should be a valid string")
        request = dict(payload)
        response_format = request.setdefault("response_format", "wav")
        if response_format not in RESPONSE_FORMATS:
            raise _invalid(f"response_format\n    Input should be {', '.join(repr(f) for f in RESPONSE_FORMATS)}")
        speed = request.get("speed", 1.0)
        if speed is not None and not 0.25 <= float(speed) <= 4.0:
            raise _invalid("speed\n    Input should be between 0.25 and 4.0")
        stream_format = request.get("stream_format")
        if stream_format not in (None, "sse", "audio"):
            raise _invalid("stream_format\n    Input should be 'sse' or 'audio'")
        streaming = stream_format is not None or bool(request.get("stream"))
        if streaming and response_format not in ("pcm", "wav"):
            raise _invalid("Value error, Streaming (stream=true, stream_format='audio', or stream_format='sse') "
                           f"requires response_format='pcm' or 'wav'. Got response_format='{response_format}'.")
        max_new_tokens = request.get("max_new_tokens")
        if max_new_tokens is not None and (not isinstance(max_new_tokens, int) or max_new_tokens < 1):
            raise _invalid("max_new_tokens\n    Input should be greater than or equal to 1")
        model = request.get("model")
        if model is not None and model != self.model:
            raise _Rejection(404, error_body(f"The model `{model}` does not exist.", "NotFoundError", 404, "model"))
        if streaming and speed not in (None, 1.0, 1):
            raise _bad_request("Streaming is not supported with speed adjustment. "
                               "Use a non-streaming request or remove the speed parameter.")
        task_type = request.get("task_type")
        if task_type is None and (request.get("ref_audio") is not None or request.get("ref_text") is not None):
            task_type = "Base"
        task_type = task_type or "CustomVoice"
        if task_type != self.checkpoint:
            raise _bad_request(f"Qwen3-TTS {self.checkpoint} checkpoint does not support task_type='{task_type}'. "
                               f"Use task_type='{self.checkpoint}' or load the matching {task_type} checkpoint.")
        voice = request.get("voice")
        if isinstance(voice, str):
            voice = request["voice"] = voice.lower()
        if not request["input"].strip():
            raise _bad_request("Input text cannot be empty")
        language = request.get("language")
        if isinstance(language, str):
            # Matched case-insensitively: the server title-cases it to the config's form first.
            language = request["language"] = language.title()
        if language is not None and language not in LANGUAGES:
            raise _bad_request(f"Invalid language '{language}'. Supported: {', '.join(sorted(LANGUAGES))}")
        if task_type == "CustomVoice":
            if not self.speakers:
                raise _bad_request("This model does not support CustomVoice task (no speakers configured). "
                                   "Use task_type='Base' with ref_audio/ref_text for voice cloning, or use a CustomVoice model.")
            if voice is not None and voice not in self.speakers:
                raise _bad_request(f"Invalid voice '{voice}'. Supported: {', '.join(sorted(self.speakers))}")
        if task_type == "Base":
            ref_audio = request.get("ref_audio")
            if ref_audio is None and voice is not None:
                raise _bad_request(f"Base task with built-in speaker '{voice}' requires 'ref_audio' for voice cloning")
            if ref_audio is None:
                raise _bad_request("Base task requires 'ref_audio' or 'speaker_embedding' for voice cloning")
            if not isinstance(ref_audio, str) or not ref_audio.startswith(("http://", "https://", "data:", "file://")):
                raise _bad_request("ref_audio must be a URL (http/https), base64 data URL (data:...), or file URI (file://...)")
            ref_text = request.get("ref_text")
            if not request.get("x_vector_only_mode") and (not isinstance(ref_text, str) or not ref_text.strip()):
                raise _bad_request("Base task requires non-empty 'ref_text' (transcript of the reference audio) "
                                   "unless 'x_vector_only_mode' is enabled")
        elif request.get("ref_text") is not None:
            raise _bad_request("'ref_text' is only valid for Base task")
        elif request.get("x_vector_only_mode") is not None:
            raise _bad_request("'x_vector_only_mode' is only valid for Base task")
        if task_type == "VoiceDesign" and not request.get("instructions"):
            raise _bad_request("VoiceDesign task requires 'instructions' to describe the voice")
        instructions = request.get("instructions")
        if isinstance(instructions, str) and len(instructions) > MAX_INSTRUCTIONS:
            raise _bad_request(f"Instructions too long (max {MAX_INSTRUCTIONS} characters)")
        if max_new_tokens is not None and max_new_tokens > MAX_NEW_TOKENS:
            raise _bad_request(f"max_new_tokens cannot exceed {MAX_NEW_TOKENS}")
        return request

    async def _speech(self, body: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        try:
            payload = json.loads(body) if body else None
        except ValueError as error:
            payload = None
            parse_error: str | None = f"JSON decode error: {error}"
        else:
            parse_error = None
        fault = self._faults.popleft() if self._faults else self.fault
        call = SpeechCall(payload if isinstance(payload, dict) else {}, fault, time.monotonic())
        self.speech_calls.append(call)
        watch = ClientWatch(reader, self._stopping)  # type: ignore[arg-type]
        try:
            return await self._answer(call, payload, parse_error, watch, writer)
        except (ConnectionError, OSError):
            call.outcome = "client_gone"
            return False
        finally:
            await watch.close()
            call.done.set()

    async def _answer(self, call: SpeechCall, payload: Any, parse_error: str | None, watch: ClientWatch,
                      writer: asyncio.StreamWriter) -> bool:
        if parse_error is not None:
            call.status, call.outcome = 400, "rejected"
            await watch.close()  # before answering, so a keep-alive client's next request is not read here
            return await self._json(writer, 400, error_body(parse_error, HTTPStatus.BAD_REQUEST.phrase, 400))
        try:
            request = self._validate(payload)
        except _Rejection as rejection:
            call.status, call.outcome = rejection.status, "rejected"
            await watch.close()
            return await self._json(writer, rejection.status, rejection.body)
        request_id = f"speech-{uuid.uuid4().hex}"
        if call.fault == "hang":
            return await self._hang(call, watch)
        stream_format = request.get("stream_format")
        raw_stream = stream_format == "audio"
        sse = not raw_stream and (stream_format == "sse" or bool(request.get("stream")))
        if call.fault == "error_500":
            # The engine failed: vLLM-Omni's engine error handler answers with the request and stage ids.
            if await watch.pause(self.first_audio_delay_s):
                return self._ended_early(call, watch)
            call.status, call.outcome = 500, "failed"
            body = error_body(ENGINE_ERROR, "InternalServerError", 500, request_id=request_id, error_stage_id=0)
            await watch.close()
            return await self._json(writer, 500, body)
        response_format = request["response_format"]
        speed = 1.0 if raw_stream or sse else float(request.get("speed") or 1.0)
        samples = synthesize(request["input"], self.sample_rate, self.seconds_per_char, self.min_seconds, speed)
        pcm = samples.tobytes()
        if raw_stream:
            return await self._stream_raw(call, pcm, response_format, watch, writer)
        if sse:
            return await self._stream_sse(call, pcm, response_format, request_id, watch, writer)
        return await self._whole(call, request, pcm, watch, writer)

    def _pieces(self, pcm: bytes) -> list[bytes]:
        size = max(2, int(round(self.chunk_seconds * self.sample_rate)) * 2)
        if self.odd_boundaries:
            size += 1  # splits samples between chunks, as any network may
        return [pcm[i:i + size] for i in range(0, len(pcm), size)] or [b""]

    async def _stream_raw(self, call: SpeechCall, pcm: bytes, response_format: str, watch: ClientWatch,
                          writer: asyncio.StreamWriter) -> bool:
        media = "audio/wav" if response_format == "wav" else "audio/pcm"
        # Starlette's StreamingResponse sends the head before the first body chunk exists.
        await self._head(writer, 200, {"content-type": media, "transfer-encoding": "chunked"})
        call.status, call.headers_at = 200, time.monotonic()
        call.audio_bytes_total = len(pcm)
        if await watch.pause(self.first_audio_delay_s):
            return self._ended_early(call, watch)
        if response_format == "wav":
            if self.odd_boundaries:
                pieces = self._pieces(wav_header(self.sample_rate, None) + pcm)
                call.audio_bytes_total += 44
            else:
                await self._chunk(writer, wav_header(self.sample_rate, None))
                pieces = self._pieces(pcm)
        else:
            pieces = self._pieces(pcm)
        for index, piece in enumerate(pieces):
            if call.fault == "drop" and index == self.drop_after_chunks:
                return self._drop(call, writer)
            if await self._wait_release(watch) or watch.gone:
                return self._ended_early(call, watch)
            await self._chunk(writer, piece)
            call.audio_bytes_sent += len(piece)
            call.first_audio_at = call.first_audio_at or time.monotonic()
            self._count_chunk(call)
            if call.fault == "stall":
                return await self._hang(call, watch, outcome="stalled")
            if index + 1 < len(pieces) and await watch.pause(self.chunk_interval_s):
                return self._ended_early(call, watch)
        await watch.close()  # before the last chunk, so a keep-alive client's next request is not read here
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        call.finished_at, call.outcome = time.monotonic(), "complete"
        return True

    async def _stream_sse(self, call: SpeechCall, pcm: bytes, response_format: str, request_id: str,
                          watch: ClientWatch, writer: asyncio.StreamWriter) -> bool:
        await self._head(writer, 200, {"content-type": "text/event-stream; charset=utf-8", "transfer-encoding": "chunked"})
        call.status, call.headers_at = 200, time.monotonic()
        call.audio_bytes_total = len(pcm)
        if await watch.pause(self.first_audio_delay_s):
            return self._ended_early(call, watch)
        pieces = self._pieces(pcm)
        if response_format == "wav":
            pieces[0] = wav_header(self.sample_rate, None) + pieces[0]
        for index, piece in enumerate(pieces):
            if call.fault == "drop" and index == self.drop_after_chunks:
                return self._drop(call, writer)
            if await self._wait_release(watch) or watch.gone:
                return self._ended_early(call, watch)
            delta = {"type": "speech.audio.delta", "audio": base64.b64encode(piece).decode("ascii"),
                     "response_format": response_format}
            await self._chunk(writer, f"event: speech.audio.delta\ndata: {json.dumps(delta)}\n\n".encode())
            call.audio_bytes_sent += len(piece)
            call.first_audio_at = call.first_audio_at or time.monotonic()
            self._count_chunk(call)
            if call.fault == "stall":
                return await self._hang(call, watch, outcome="stalled")
            if index + 1 < len(pieces) and await watch.pause(self.chunk_interval_s):
                return self._ended_early(call, watch)
        words = len(call.body.get("input", "").split())
        output = len(pcm) // 2 // 2000
        done = {"type": "speech.audio.done", "usage": {"input_tokens": words, "output_tokens": output,
                                                       "total_tokens": words + output,
                                                       "input_token_details": {"text_tokens": words, "audio_tokens": 0}}}
        await watch.close()
        await self._chunk(writer, f"event: speech.audio.done\ndata: {json.dumps(done)}\n\n".encode())
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        call.finished_at, call.outcome = time.monotonic(), "complete"
        return True

    async def _whole(self, call: SpeechCall, request: dict[str, Any], pcm: bytes, watch: ClientWatch,
                     writer: asyncio.StreamWriter) -> bool:
        if await watch.pause(self.first_audio_delay_s) or await self._wait_release(watch):
            return self._ended_early(call, watch)
        # The double encodes only wav and pcm; other formats get a WAV body, as if encoded.
        body = (wav_header(self.sample_rate, len(pcm)) + pcm) if request["response_format"] != "pcm" else pcm
        media = {"pcm": "audio/pcm", "flac": "audio/flac", "mp3": "audio/mpeg", "opus": "audio/ogg"}.get(
            request["response_format"], "audio/wav")
        words = len(request["input"].split())
        output = len(pcm) // 2 // 2000
        headers = {"content-type": media,
                   "content-length": str(len(body)),
                   "x-vllm-omni-input-tokens": str(words), "x-vllm-omni-output-tokens": str(output),
                   "x-vllm-omni-total-tokens": str(words + output), "x-vllm-omni-input-text-tokens": str(words),
                   "x-vllm-omni-input-audio-tokens": "0"}
        await self._head(writer, 200, headers)
        call.status, call.headers_at = 200, time.monotonic()
        call.audio_bytes_total = len(body)
        if call.fault in ("drop", "stall"):
            half = body[: len(body) // 2]
            writer.write(half)
            await writer.drain()
            call.audio_bytes_sent = len(half)
            call.first_audio_at = time.monotonic()
            self._count_chunk(call)
            if call.fault == "drop":
                return self._drop(call, writer)
            return await self._hang(call, watch, outcome="stalled")
        await watch.close()
        writer.write(body)
        await writer.drain()
        call.audio_bytes_sent = len(body)
        call.first_audio_at = call.finished_at = time.monotonic()
        self._count_chunk(call)
        call.outcome = "complete"
        return True

    async def _wait_release(self, watch: ClientWatch) -> str | None:
        """Step mode: wait for a release_next_chunk(); "gone"/"stopping" if the client or the server ended first."""
        return await self._chunk_gate.wait(watch, closed=lambda: self.step)

    def _count_chunk(self, call: SpeechCall) -> None:
        call.chunks_sent += 1
        with self._chunk_cond:
            self._chunks_sent += 1
            self._chunk_cond.notify_all()

    async def _hang(self, call: SpeechCall, watch: ClientWatch, outcome: str = "hung") -> bool:
        ended = await watch.pause(self.max_hang_s)
        call.outcome = {"gone": "client_gone", "stopping": "stopped"}.get(ended or "", outcome)
        return False

    def _ended_early(self, call: SpeechCall, watch: ClientWatch) -> bool:
        call.outcome = "client_gone" if watch.gone else "stopped"
        return False

    def _drop(self, call: SpeechCall, writer: asyncio.StreamWriter) -> bool:
        writer.transport.abort()
        call.outcome = "dropped"
        return False

    # -- bytes on the wire ------------------------------------------------------------------

    async def _head(self, writer: asyncio.StreamWriter, status: int, headers: dict[str, str]) -> None:
        lines = [f"HTTP/1.1 {status} {HTTPStatus(status).phrase}", f"date: {formatdate(usegmt=True)}", "server: uvicorn"]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        await writer.drain()

    async def _chunk(self, writer: asyncio.StreamWriter, data: bytes) -> None:
        if data:
            writer.write(b"%x\r\n%s\r\n" % (len(data), data))
            await writer.drain()

    async def _json(self, writer: asyncio.StreamWriter, status: int, payload: Any,
                    extra_headers: dict[str, str] | None = None) -> bool:
        body = json.dumps(payload).encode()
        headers = {"content-length": str(len(body)), "content-type": "application/json", **(extra_headers or {})}
        await self._head(writer, status, headers)
        writer.write(body)
        await writer.drain()
        return True
