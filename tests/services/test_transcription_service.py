"""The transcription service without HTTP. Which model serves a request is decided against a listing
of the real engines' cards (Whisper, Parakeet, SenseVoice, Piper); a run on the real whisper-tiny.en
shows the slot taken, the transcript and its SSE events, and the slot given back."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

import pytest

from aistack.audio.decode import decode_audio
from aistack.engines import sherpa, whisper
from aistack.engines.base import (
    BackendStatus,
    Capability,
    ModelCard,
    Task,
    TranscribeOptions,
    TranscriptionBackend,
    Unavailable,
)
from aistack.engines.piper import MODEL_ID as PIPER
from aistack.errors import AistackError, ErrorKind
from aistack.inventory import Inventory
from aistack.lifecycle import ModelLifecycle
from aistack.observability.events import EngineEvents
from aistack.scheduler import Lease, Scheduler
from aistack.services.transcription import TranscriptionService
from aistack.settings import ModelLifecycleSettings, SchedulerSettings, WhisperSettings
from aistack.weights.catalog import ONNX_ASR_MODELS, WHISPER_BY_ID
from aistack.weights.resolver import WeightResolver

TINY_EN = "whisper-tiny.en"
BASE = "whisper-base"
PARAKEET = "nvidia/parakeet-tdt-0.6b-v3"
SENSEVOICE = "iic/SenseVoiceSmall"


class Listed:
    """An engine's probe answer as a listing holds it: its cards and what it cannot serve."""

    def __init__(self, provider: str, capability: Capability, cards: Sequence[ModelCard],
                 unavailable: Sequence[Unavailable] = ()) -> None:
        self.provider = provider
        self.capability = capability
        self._status = BackendStatus(provider, capability, tuple(cards), tuple(unavailable))

    def probe(self) -> BackendStatus:
        return self._status


def whisper_cards(*ids: str) -> Listed:
    missing = Unavailable("whisper-small", "its weights package is not installed", "aistack pull whisper-small")
    return Listed(whisper.PROVIDER, "asr", [whisper.card_for(WHISPER_BY_ID[i], 0) for i in ids], [missing])


def onnx_cards(family: str) -> Listed:
    return Listed(family, "asr", [sherpa.card_for(spec, 0) for spec in ONNX_ASR_MODELS if spec.family == family])


EVERY_ENGINE = (
    whisper_cards(TINY_EN, BASE),
    onnx_cards("parakeet"),
    onnx_cards("sensevoice"),
    Listed("piper", "tts", [ModelCard(PIPER, "piper", ("tts",), "piper")]),
)


def service_over(listed: Sequence[Listed], backends: dict[str, TranscriptionBackend] | None = None,
                 scheduler: Scheduler | None = None) -> tuple[TranscriptionService, ModelLifecycle]:
    chosen = backends or {}
    lifecycle = ModelLifecycle(dict(chosen), ModelLifecycleSettings())
    service = TranscriptionService(Inventory(listed, probe_timeout_s=10, ttl_s=60), chosen,
                                   scheduler or Scheduler(SchedulerSettings()), lifecycle, EngineEvents(),
                                   default_whisper_id=BASE)
    return service, lifecycle


def select(model: str, language: str | None = None, *, task: Task = "transcribe",
           listed: Sequence[Listed] = EVERY_ENGINE) -> ModelCard:
    service, _ = service_over(listed)
    return asyncio.run(service.select(model, language, task))


def refused(model: str, language: str | None = None, *, task: Task = "transcribe",
            listed: Sequence[Listed] = EVERY_ENGINE) -> AistackError:
    with pytest.raises(AistackError) as error:
        select(model, language, task=task, listed=listed)
    return error.value


def test_whisper_1_is_the_default_whisper_whatever_the_language() -> None:
    assert [select("whisper-1", language).id for language in (None, "en", "de", "zh")] == [BASE] * 4


def test_auto_routes_by_language_to_the_family_that_transcribes_it() -> None:
    assert select("auto", "zh").id == SENSEVOICE
    assert select("auto", "ja").id == SENSEVOICE
    assert select("auto", "de").id == PARAKEET
    assert select("auto", None).id == BASE
    assert select("auto", "sw").id == BASE  # no rule for Swahili: any model that transcribes it


@pytest.mark.parametrize("openai_model", ["gpt-4o-transcribe", "gpt-4o-mini-transcribe"])
def test_openais_gpt_4o_transcription_models_are_served_as_auto(openai_model: str) -> None:
    assert [select(openai_model, language).id for language in ("zh", "de", None, "en")] == \
        [select("auto", language).id for language in ("zh", "de", None, "en")] == [SENSEVOICE, PARAKEET, BASE, PARAKEET]


def test_the_diarizing_openai_model_says_diarization_is_not_available() -> None:
    error = refused("gpt-4o-transcribe-diarize", "en")
    assert error.kind is ErrorKind.MALFORMED and error.param == "model"
    assert "diarization" in error.message and "gpt-4o-transcribe" in error.message


def test_auto_translation_goes_to_a_model_that_can_translate() -> None:
    assert select("auto", "de", task="translate").id == BASE
    assert select("auto", "zh", task="translate").id == BASE


def test_an_explicit_id_is_served_when_it_can_do_what_was_asked() -> None:
    assert select(TINY_EN, "en").id == TINY_EN
    assert select(PARAKEET, "fr").id == PARAKEET
    assert select(BASE, "de", task="translate").id == BASE


def test_an_unknown_id_is_not_found_and_lists_the_speech_to_text_models() -> None:
    error = refused("no-such-model")
    assert error.kind == ErrorKind.NOT_FOUND and error.param == "model"
    assert f"auto, {TINY_EN}, {BASE}, {PARAKEET}, {SENSEVOICE}, whisper-1" in error.message


def test_a_known_model_without_its_weights_is_unavailable_with_the_fix() -> None:
    error = refused("whisper-small")
    assert error.kind == ErrorKind.NETWORK and "aistack pull whisper-small" in error.message


def test_a_model_that_does_not_transcribe_is_malformed() -> None:
    error = refused(PIPER)
    assert error.kind == ErrorKind.MALFORMED and error.param == "model"
    assert f"model '{PIPER}' does not transcribe speech" in error.message


def test_a_model_that_cannot_translate_names_those_that_can() -> None:
    error = refused(TINY_EN, task="translate")
    assert error.kind == ErrorKind.MALFORMED and error.param == "model"
    assert "cannot translate to English; use one of: whisper-base" in error.message
    alone = refused(TINY_EN, task="translate", listed=[whisper_cards(TINY_EN)])
    assert "install multilingual Whisper weights" in alone.message


def test_a_language_the_model_does_not_speak_names_those_that_do() -> None:
    error = refused(TINY_EN, "de")
    assert error.kind == ErrorKind.MALFORMED and error.param == "language"
    assert f"use auto or one of: {BASE}, {PARAKEET}" in error.message


def test_a_language_no_engine_knows_is_malformed_whichever_model_was_asked_for() -> None:
    for model in ("auto", "whisper-1", BASE):
        error = refused(model, "xx")
        assert error.kind == ErrorKind.MALFORMED and error.param == "language" and "'xx'" in error.message


def test_whisper_1_without_any_whisper_is_unavailable_and_does_not_fall_through() -> None:
    error = refused("whisper-1", "de", listed=[onnx_cards("parakeet")])
    assert error.kind == ErrorKind.NETWORK
    assert select("auto", "de", listed=[onnx_cards("parakeet")]).id == PARAKEET


def test_nothing_installed_is_unavailable_with_the_doctor_command() -> None:
    error = refused("auto", listed=[])
    assert error.kind == ErrorKind.NETWORK and "aistack doctor" in error.message


@pytest.mark.slow
def test_a_job_on_the_real_tiny_model_transcribes_streams_and_gives_its_slot_back(models_cache: Path,
                                                                                  english_wav: Path) -> None:
    scheduler = Scheduler(SchedulerSettings())
    engine = whisper.WhisperBackend(WhisperSettings(worker_process=False), WeightResolver(models_cache, {}),
                                    scheduler.slots_on)
    engine.prepare()
    service, lifecycle = service_over([engine], {engine.provider: engine}, scheduler)
    audio = decode_audio(english_wav.read_bytes())

    async def body() -> None:
        card = await service.select(TINY_EN, "en", "transcribe")
        leases: list[Lease] = []
        job = await service.start(card, leases.append)
        assert len(leases) == 1 and scheduler.queue("cpu").busy == 1
        transcript = await service.transcribe(job, audio, TranscribeOptions(language="en"))
        leases[0].release()
        assert "fox" in transcript.text.lower() and transcript.model_id == TINY_EN
        assert scheduler.queue("cpu").busy == 0

        job = await service.start(card, leases.append)
        events = [part async for part in service.stream_events(job, audio, TranscribeOptions(language="en"))]
        leases[1].release()
        names = [event.split(b"\n", 1)[0] for event in events]
        assert names[-1] == b"event: transcript.text.done" and b"event: transcript.text.delta" in names
        done = json.loads(events[-1].split(b"data: ", 1)[1])
        assert "fox" in done["text"].lower() and done["usage"]["seconds"] > 0

    await_on_loop(body, lifecycle, scheduler)


def await_on_loop(body: Callable[[], Awaitable[None]], lifecycle: ModelLifecycle, scheduler: Scheduler) -> None:
    async def main() -> None:
        try:
            await asyncio.wait_for(body(), timeout=120)
        finally:
            for entry in lifecycle.entries():
                await lifecycle.unload(entry.card.id, "test over")
            await lifecycle.close()
            scheduler.shutdown()

    asyncio.run(main())
