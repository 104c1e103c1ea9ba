"""Qwen3-TTS served by vLLM-Omni (deploy/qwen3-tts/compose.yaml), reached over HTTP.

The server speaks vLLM-Omni's Speech API: `GET /health` (200 once the engine is up),
`GET /v1/audio/voices` (`{"voices": [...], "uploaded_voices": [...]}`), and
`POST /v1/audio/speech` with OpenAI's fields (`input`, `model`, `voice`, `response_format`,
`speed`, `instructions`) plus its own (`task_type`, `language`, `ref_audio`, `ref_text`,
`max_new_tokens`, ...). With `stream_format="audio"` (and `stream=true`, which older releases
key on) it sends the audio as it is decoded: a chunked body of raw 16-bit little-endian mono PCM
at the model's native 24 kHz (`response_format="pcm"`), or a WAV whose header carries
0xFFFFFFFF in place of the sizes (`"wav"`). Raw PCM is what every streaming release accepts;
a WAV body is recognised by its `RIFF` header either way. A streamed request refuses
`speed != 1`, so the gateway time-stretches (`native_speed = False`). Errors come back as
`{"error": {"message", "type", "param", "code"}}` (older vLLM: the same fields at the top level
with `"object": "error"`; FastAPI's own: `{"detail": ...}`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncGenerator
from typing import Any

import httpx

from ..audio.wav_stream import PcmStreamDecoder, WavError
from ..errors import AistackError, ErrorKind
from ..settings import Qwen3TtsSettings
from .base import PROBE_BUDGET_SHARE, BackendStatus, Capability, ModelCard, PcmChunk, SpeechOptions, Unavailable, VoiceInfo
from .http_upstream import (
    PooledClient,
    ProbeClient,
    bearer_headers,
    describe,
    request_timeout,
    transport_error,
    upstream_status_kind,
)
from .upstream_errors import MAX_MESSAGE_CHARS, error_message, upstream_message

log = logging.getLogger("aistack.engines.qwen3_tts")

PROVIDER = "qwen3-tts"
FAMILY = "qwen3-tts"
NATIVE_SAMPLE_RATE = 24_000
COMPOSE_COMMAND = "docker compose -f deploy/qwen3-tts/compose.yaml up -d"
START_FIX = f"{COMPOSE_COMMAND} (the first start downloads the model and warms up, which takes minutes)"
ENABLE_SETTING = "AISTACK_TTS__QWEN3__ENABLED"
READ_TIMEOUT_SETTING = "AISTACK_TTS__QWEN3__READ_TIMEOUT_S"
API_KEY_SETTING = "AISTACK_TTS__QWEN3__API_KEY"
MODEL_SETTING = "AISTACK_TTS__QWEN3__MODEL"
# Request fields this backend sets itself; an `extra` key with one of these names is ignored.
RESERVED_FIELDS = frozenset({"input", "model", "voice", "response_format", "stream", "stream_format", "speed", "instructions"})

# The speakers of the CustomVoice checkpoints, with each speaker's native language (every
# speaker can read all ten supported languages). Used until the server has listed its own.
CUSTOM_VOICE_SPEAKERS: tuple[VoiceInfo, ...] = (
    VoiceInfo("aiden", "Aiden", ("en",)),
    VoiceInfo("dylan", "Dylan", ("zh",)),
    VoiceInfo("eric", "Eric", ("zh",)),
    VoiceInfo("ono_anna", "Ono Anna", ("ja",)),
    VoiceInfo("ryan", "Ryan", ("en",)),
    VoiceInfo("serena", "Serena", ("zh",)),
    VoiceInfo("sohee", "Sohee", ("ko",)),
    VoiceInfo("uncle_fu", "Uncle Fu", ("zh",)),
    VoiceInfo("vivian", "Vivian", ("zh",)),
)
_KNOWN_SPEAKERS = {voice.id: voice for voice in CUSTOM_VOICE_SPEAKERS}


class Qwen3TtsBackend:
    provider = PROVIDER
    capability: Capability = "tts"
    # A streamed request refuses speed != 1.0 on vLLM-Omni, so the gateway time-stretches.
    native_speed = False
    pass_through_fields = frozenset({"task_type", "language", "ref_audio", "ref_text", "max_new_tokens"})
    # What `speak` asks for; "wav" works as well on releases that stream WAV.
    response_format = "pcm"

    def __init__(self, settings: Qwen3TtsSettings, probe_timeout_s: float) -> None:
        self._settings = settings
        self._probe_timeout_s = probe_timeout_s
        self._base_url = settings.base_url.rstrip("/")
        self._voices: tuple[VoiceInfo, ...] = CUSTOM_VOICE_SPEAKERS
        self._first_seen: int | None = None
        auth = bearer_headers(settings.api_key)
        budget = probe_timeout_s * PROBE_BUDGET_SHARE
        # httpx times each phase on its own, so the phases share the probe budget: connecting and
        # reading the answer together never take longer than it.
        self._probe_client = ProbeClient(httpx.Timeout(budget * 0.75, connect=budget * 0.25, pool=budget * 0.25), auth)
        self._client = PooledClient(
            request_timeout(settings.connect_timeout_s, settings.read_timeout_s, pool_s=settings.read_timeout_s), auth
        )

    # -- visibility -------------------------------------------------------------------------

    def card(self) -> ModelCard:
        return ModelCard(
            id=self._settings.model,
            provider=PROVIDER,
            capabilities=("tts",),
            family=FAMILY,
            supports_streaming=True,
            created=self._first_seen or 0,
        )

    def probe(self) -> BackendStatus:
        """Blocking: visible exactly when the server's /health answers 200 within the probe timeout."""
        settings = self._settings
        if not settings.enabled:
            reason = "Qwen3-TTS is disabled in the settings"
            fix = f"set {ENABLE_SETTING}=true (tts.qwen3.enabled in the config file), then start it: {START_FIX}"
            return BackendStatus(PROVIDER, "tts", unavailable=(Unavailable(settings.model, reason, fix),))
        # The inventory gives up on a probe after probe_timeout_s and keeps only a generic reason;
        # answering well inside that keeps this probe's own reason and fix.
        budget = self._probe_timeout_s * PROBE_BUDGET_SHARE
        deadline = time.monotonic() + budget
        health = f"{self._base_url}/health"
        try:
            client = self._probe_client.get()
            response = client.get(health)
            if response.status_code != 200:
                detail = _health_detail(response)
                return self._down(
                    f"{health} answered {response.status_code}{': ' + detail if detail else ''} "
                    "(still loading the model, or its engine stopped)"
                )
            self._refresh_voices(client, deadline)
        except httpx.ConnectError as error:
            return self._down(f"nothing answers at {self._base_url} ({describe(error)})")
        except httpx.TimeoutException:
            return self._down(f"{health} did not answer within {budget:.2g} s (starting up, or hung)")
        except httpx.HTTPError as error:
            return self._down(f"{health} failed: {describe(error)}")
        if self._first_seen is None:
            self._first_seen = int(time.time())
        return BackendStatus(PROVIDER, "tts", cards=(self.card(),))

    def _down(self, reason: str) -> BackendStatus:
        return BackendStatus(PROVIDER, "tts", unavailable=(Unavailable(self._settings.model, reason, START_FIX),))

    def _refresh_voices(self, client: httpx.Client, deadline: float) -> None:
        """Take the speaker list from the server's voices endpoint; keep the last one if it cannot say."""
        remaining = deadline - time.monotonic()
        if remaining <= 0.01:
            return
        try:
            # Halved: a new connection may be needed, and connect and read are timed separately.
            response = client.get(f"{self._base_url}/v1/audio/voices", timeout=remaining / 2)
        except httpx.HTTPError as error:
            log.debug("qwen3-tts voices listing failed: %s", error)
            return
        if response.status_code != 200:
            log.debug("qwen3-tts voices listing answered %s", response.status_code)
            return
        try:
            names = response.json().get("voices")
        except (ValueError, AttributeError):
            return
        if isinstance(names, list) and all(isinstance(name, str) for name in names):
            self._voices = tuple(_voice_info(name) for name in names)

    def voices(self, card: ModelCard) -> list[VoiceInfo]:
        return list(self._voices)

    def default_voice(self, card: ModelCard) -> str:
        return self._settings.default_voice

    # -- synthesis --------------------------------------------------------------------------

    def request_body(self, card: ModelCard, text: str, options: SpeechOptions) -> dict[str, Any]:
        body: dict[str, Any] = {
            "input": text,
            "model": card.id,
            "voice": options.voice,
            "response_format": self.response_format,
            "stream": True,
            "stream_format": "audio",
        }
        if options.instructions:
            body["instructions"] = options.instructions
        if self.native_speed and options.speed != 1.0:
            body["speed"] = options.speed
        for key, value in options.extra.items():
            if key in RESERVED_FIELDS:
                log.warning("ignoring extra field %r for qwen3-tts: the gateway sets it", key)
                continue
            body[key] = value
        return body

    async def speak(self, card: ModelCard, text: str, options: SpeechOptions) -> AsyncGenerator[PcmChunk, None]:
        """Audio as the server decodes it; failures raise AistackError. Closing the generator closes the connection."""
        body = self.request_body(card, text, options)
        requested_rate = body.get("sample_rate")
        raw_rate = requested_rate if isinstance(requested_rate, int) else NATIVE_SAMPLE_RATE
        client = self._client.get()
        request = client.build_request("POST", f"{self._base_url}/v1/audio/speech", json=body)
        try:
            response = await client.send(request, stream=True)
        except httpx.HTTPError as error:
            raise transport_error(
                error, PROVIDER, unreachable=self._unreachable, timed_out=self._timed_out_message(),
                dropped=lambda detail: f"qwen3-tts at {self._base_url} closed the connection without answering "
                                       f"({detail}); it may still be starting. Start or check it: {START_FIX}",
                dropped_kind=ErrorKind.NETWORK,
            ) from None
        decoder = PcmStreamDecoder(raw_rate)
        try:
            if response.status_code >= 400:
                raise await self._upstream_error(response)
            async for data in response.aiter_bytes():
                chunk = decoder.feed(data)
                if chunk is not None:
                    yield chunk
            decoder.finish()
        except httpx.HTTPError as error:
            raise transport_error(
                error, PROVIDER, unreachable=self._unreachable, timed_out=self._timed_out_message(decoder.seconds),
                dropped=lambda detail: f"qwen3-tts dropped the connection after {decoder.seconds:.1f} s of audio ({detail})",
            ) from None
        except WavError as error:
            raise AistackError(ErrorKind.UNKNOWN, f"qwen3-tts sent audio that cannot be read: {error}", provider=PROVIDER) from None
        finally:
            await response.aclose()
        if decoder.samples == 0:
            raise AistackError(ErrorKind.UNKNOWN, "qwen3-tts answered without any audio", provider=PROVIDER)

    async def aclose(self) -> None:
        await self._client.aclose()

    def _unreachable(self, error: httpx.HTTPError) -> str:
        if isinstance(error, httpx.ConnectTimeout):
            detail = f"no connection within {self._settings.connect_timeout_s:g} s"
        else:
            detail = describe(error)
        return f"qwen3-tts is not reachable at {self._base_url} ({detail}); start it: {START_FIX}"

    def _timed_out_message(self, audio_seconds: float | None = None) -> str:
        limit = self._settings.read_timeout_s
        if audio_seconds:
            what = f"qwen3-tts sent nothing for {limit:g} s after {audio_seconds:.1f} s of audio"
        else:
            what = f"qwen3-tts did not answer within {limit:g} s"
        return f"{what}; a cold server warms up on its first request, so raise {READ_TIMEOUT_SETTING} if it needs longer"

    async def _upstream_error(self, response: httpx.Response) -> AistackError:
        status = response.status_code
        message, param = await error_message(response)
        if status in (401, 403):
            return AistackError(
                ErrorKind.UNKNOWN,
                f"qwen3-tts refused the gateway's credentials ({status}: {message}); set {API_KEY_SETTING} to its --api-key",
                provider=PROVIDER,
            )
        if status == 404 and param == "model":
            # The server runs another checkpoint than the one configured here: not the client's doing.
            return AistackError(
                ErrorKind.UNKNOWN,
                f"qwen3-tts at {self._base_url} does not serve {self._settings.model} ({message}); set "
                f"{MODEL_SETTING} to the model it serves, or serve that model",
                provider=PROVIDER,
            )
        kind = upstream_status_kind(status)
        if status < 500:
            return AistackError(kind, f"qwen3-tts rejected the request: {message}", provider=PROVIDER, param=param)
        if status == 503:
            # vLLM answers 503 while its engine loads (or after it died): not reachable yet, not a failure of this request.
            return AistackError(
                kind,
                f"qwen3-tts at {self._base_url} cannot serve yet (503: {message}); it is still loading the model, "
                f"retry shortly, or check it: {START_FIX}",
                provider=PROVIDER,
            )
        return AistackError(kind, f"qwen3-tts failed ({status}): {message}", provider=PROVIDER)


def _voice_info(name: str) -> VoiceInfo:
    return _KNOWN_SPEAKERS.get(name.lower()) or VoiceInfo(name, name)


def _health_detail(response: httpx.Response) -> str:
    try:
        payload = response.json()
    except ValueError:
        return response.text.strip()[:MAX_MESSAGE_CHARS]
    reason = payload.get("reason") if isinstance(payload, dict) else None
    if isinstance(reason, str):
        return reason
    return upstream_message(response.content, response.status_code)[0] if response.content else ""
