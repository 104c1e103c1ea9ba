"""The speech service without HTTP, on the real Piper voice: which model a request gets, how its voice
and speed are resolved, what input is refused, and a synthesis that starts past its first sound and
gives its slot back when closed."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path

import numpy as np
import pytest

from aistack.engines.base import PcmChunk, SpeechUpstream
from aistack.engines.piper import MODEL_ID, PiperBackend
from aistack.engines.qwen3_tts import Qwen3TtsBackend
from aistack.errors import AistackError, ErrorKind
from aistack.inventory import Inventory
from aistack.lifecycle import ModelLifecycle
from aistack.observability.events import EngineEvents
from aistack.scheduler import Lease, Scheduler
from aistack.scheduler.upstreams import UpstreamGate
from aistack.services.speech import SpeechService, whole_audio
from aistack.settings import ModelLifecycleSettings, PiperSettings, Qwen3TtsSettings, SchedulerSettings, TtsSettings
from aistack.weights.resolver import WeightResolver

JOE = "en_US-joe-medium"


def run_with_service(tmp_path: Path, body: Callable[[SpeechService, Scheduler], Awaitable[None]],
                     settings: TtsSettings | None = None, upstreams: Mapping[str, SpeechUpstream] | None = None) -> None:
    """Build the service over the real Piper backend, run `body` on a fresh loop, then stop everything."""
    tts = settings or TtsSettings(piper=PiperSettings(noise_scale=0, noise_w_scale=0))
    piper = PiperBackend(tts.piper, WeightResolver(tmp_path / "cache", {}))
    scheduler = Scheduler(SchedulerSettings())
    lifecycle = ModelLifecycle({piper.provider: piper}, ModelLifecycleSettings())
    service = SpeechService(tts, Inventory((piper,), probe_timeout_s=10, ttl_s=60), {piper.provider: piper}, upstreams or {},
                            scheduler, lifecycle, UpstreamGate(SchedulerSettings(), scheduler, lifecycle), EngineEvents())

    async def main() -> None:
        try:
            await asyncio.wait_for(body(service, scheduler), timeout=60)
        finally:
            await service.aclose()
            await lifecycle.close()
            scheduler.shutdown()

    asyncio.run(main())


def refusal(error: pytest.ExceptionInfo[AistackError], kind: ErrorKind, param: str | None, *needles: str) -> None:
    assert error.value.kind == kind and error.value.param == param
    for needle in needles:
        assert needle in error.value.message, error.value.message


def test_no_model_or_an_openai_name_gets_the_default_and_an_id_gets_itself(tmp_path: Path) -> None:
    async def body(service: SpeechService, _: Scheduler) -> None:
        for name in (None, "tts-1", "tts-1-hd", "gpt-4o-mini-tts", MODEL_ID):
            assert (await service.select(name)).id == MODEL_ID
        assert [card.id for card in await service.models()] == [MODEL_ID]

    run_with_service(tmp_path, body)


def test_an_unknown_model_is_not_found_and_names_the_choices(tmp_path: Path) -> None:
    async def body(service: SpeechService, _: Scheduler) -> None:
        with pytest.raises(AistackError) as error:
            await service.select("no-such-voice-model")
        refusal(error, ErrorKind.NOT_FOUND, "model", "no-such-voice-model", "piper, tts-1, tts-1-hd")
        with pytest.raises(AistackError) as error:
            await service.select("bad\x00name")
        refusal(error, ErrorKind.MALFORMED, "model", "NUL")

    run_with_service(tmp_path, body)


def test_input_that_no_engine_can_speak_is_refused_before_a_slot_is_taken(tmp_path: Path) -> None:
    async def body(service: SpeechService, scheduler: Scheduler) -> None:
        with pytest.raises(AistackError) as error:
            service.check_input("   ")
        refusal(error, ErrorKind.MALFORMED, "input", "empty")
        with pytest.raises(AistackError) as error:
            service.check_input("x" * 11)
        refusal(error, ErrorKind.OVERFLOW, "input", "11 characters", "10 limit", "AISTACK_TTS__MAX_INPUT_CHARS")
        with pytest.raises(AistackError) as error:
            service.check_input("a b \udcff")
        refusal(error, ErrorKind.MALFORMED, "input", "lone surrogate (U+DCFF) at character 4")
        service.check_input("Ten chars.")

    run_with_service(tmp_path, body, TtsSettings(max_input_chars=10))


def test_voices_resolve_by_name_alias_or_openai_name_and_unknown_ones_name_the_choices(tmp_path: Path) -> None:
    async def body(service: SpeechService, _: Scheduler) -> None:
        card = await service.select(None)
        assert [voice.id for voice in service.voices(card)] == [JOE]

        def voice_for(name: str | None) -> str:
            return service.plan(card, name, 1.0, None, {}).options.voice

        assert voice_for(None) == JOE
        assert voice_for("EN_us-Joe-Medium") == JOE  # names are not case-sensitive
        assert voice_for("nova") == JOE  # the configured alias
        assert voice_for("alloy") == JOE  # an OpenAI voice without an alias: the default voice
        with pytest.raises(AistackError) as error:
            voice_for("nobody")
        refusal(error, ErrorKind.MALFORMED, "voice", "voice 'nobody' does not exist for piper", JOE, "alloy")

    settings = TtsSettings(voice_aliases={"nova": JOE.upper()}, piper=PiperSettings(noise_scale=0, noise_w_scale=0))
    run_with_service(tmp_path, body, settings)


def test_speed_is_a_stretch_unless_the_engine_paces_itself(tmp_path: Path) -> None:
    async def stretched(service: SpeechService, _: Scheduler) -> None:
        plan = service.plan(await service.select(None), None, 1.5, "calm", {"extra": 1})
        assert plan.stretch == 1.5 and plan.options.speed == 1.0
        assert plan.options.instructions == "calm" and plan.options.extra == {}  # Piper takes no fields beyond OpenAI's

    async def native(service: SpeechService, _: Scheduler) -> None:
        plan = service.plan(await service.select(None), None, 1.5, None, {})
        assert plan.stretch == 1.0 and plan.options.speed == 1.5

    run_with_service(tmp_path, stretched)
    run_with_service(tmp_path, native, TtsSettings(piper=PiperSettings(native_speed=True)))


def test_a_synthesis_starts_past_its_first_sound_and_gives_its_slot_back_once_closed(tmp_path: Path) -> None:
    async def body(service: SpeechService, scheduler: Scheduler) -> None:
        card = await service.select(None)
        leases: list[Lease] = []
        primed = await service.start(service.plan(card, None, 1.0, None, {}), "Good morning. See you at six.", leases.append)
        assert len(leases) == 1 and scheduler.queue("cpu").busy == 1
        chunks: list[PcmChunk] = [chunk async for chunk in primed]
        await primed.aclose()
        assert len(chunks) == 2 and all(c.samples.dtype == np.int16 and c.samples.size for c in chunks)
        assert scheduler.queue("cpu").busy == 0

        audio = await whole_audio(await service.start(service.plan(card, None, 1.0, None, {}), "Hello.", leases.append),
                                  "wav", stretch=1.0)
        assert audio[:4] == b"RIFF" and audio[8:12] == b"WAVE" and len(audio) > 44
        assert scheduler.queue("cpu").busy == 0

    run_with_service(tmp_path, body)


def test_input_with_nothing_to_say_is_refused_and_its_slot_goes_back(tmp_path: Path) -> None:
    async def body(service: SpeechService, scheduler: Scheduler) -> None:
        card = await service.select(None)
        with pytest.raises(AistackError) as error:
            await service.start(service.plan(card, None, 1.0, None, {}), "...", lambda lease: None)
        refusal(error, ErrorKind.MALFORMED, "input", "piper found nothing to say")
        assert scheduler.queue("cpu").busy == 0

    run_with_service(tmp_path, body)


def test_fields_beyond_openais_reach_only_an_engine_that_takes_them(tmp_path: Path) -> None:
    qwen3 = Qwen3TtsBackend(Qwen3TtsSettings(base_url="http://127.0.0.1:9"), probe_timeout_s=1)
    extra = {"task_type": "Base", "ref_text": "The words of the clip.", "not_a_qwen3_field": 1}

    async def body(service: SpeechService, _: Scheduler) -> None:
        piper_card = await service.select(MODEL_ID)
        assert service.plan(piper_card, None, 1.0, None, extra).options.extra == {}
        qwen3_plan = service.plan(qwen3.card(), "vivian", 1.0, None, extra)
        assert qwen3_plan.options.extra == {"task_type": "Base", "ref_text": "The words of the clip."}

    run_with_service(tmp_path, body, upstreams={qwen3.provider: qwen3})
