"""Parakeet and SenseVoice through the gateway, on the real sherpa-onnx runtime.

The models are generated (tests/onnx_models.py): random weights in the exact layout of the real
exports, so decoding, VAD, features, timestamps, every response format and streaming run for real;
the text itself is not asserted. With the real weights in AISTACK_MODELS_DIR an accuracy test runs.
"""

from __future__ import annotations

import io
import itertools
import json
import os
import subprocess
import sys
import wave
from pathlib import Path

import numpy as np
import pytest

from aistack.languages import PARAKEET_LANGUAGES, SENSEVOICE_LANGUAGES, WHISPER_LANGUAGES
from aistack.settings import WhisperSettings
from conftest import GERMAN_SENTENCE, assert_envelope, words
from onnx_models import (  # noqa: F401 - fixtures
    generated_onnx_models,
    parakeet_folder,
    sensevoice_folder,
    silence,
    silero_vad_path,
    speech_like,
)

pytestmark = pytest.mark.slow

PARAKEET = "nvidia/parakeet-tdt-0.6b-v3"
SENSEVOICE = "iic/SenseVoiceSmall"
VAD = "silero-vad"
CJK = ("zh", "yue", "ja", "ko")


def wav_bytes(audio: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(16_000)
        out.writeframes((np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes())
    return buffer.getvalue()


# Two bursts of speech-like sound with silence around and between them: two VAD segments.
TWO_BURSTS = wav_bytes(np.concatenate([silence(0.3), speech_like(1.5, seed=1), silence(1.0), speech_like(2.0, seed=2),
                                       silence(0.5)]))


def onnx_paths(parakeet: Path | None, sensevoice: Path | None, vad: Path | None) -> dict[str, Path]:
    paths = {PARAKEET: parakeet, SENSEVOICE: sensevoice, VAD: vad}
    return {model_id: path for model_id, path in paths.items() if path is not None}


@pytest.fixture(scope="module")
def hello(speech) -> bytes:
    """A short real word: routing needs only the answer's header, and Whisper decodes this quickly
    (noise or silence make it hallucinate through its whole temperature schedule)."""
    return speech.piper("hello", "Hello.").read_bytes()


@pytest.fixture
def both(make_inprocess_gateway, parakeet_folder, sensevoice_folder, silero_vad_path):  # noqa: F811
    return make_inprocess_gateway(model_paths=onnx_paths(parakeet_folder, sensevoice_folder, silero_vad_path),
                                  whisper=WhisperSettings(beam_size=1))


def transcribe(gateway, audio: bytes = TWO_BURSTS, **fields):
    data = {key: value for key, value in fields.items() if value is not None}
    with gateway.client() as client:
        return client.post("/v1/audio/transcriptions", data=data, files={"file": ("clip.wav", audio, "audio/wav")})


# -- visibility ----------------------------------------------------------------------------------


def test_both_engines_are_listed_with_their_languages_and_streaming(both) -> None:
    with both.client() as client:
        models = {m["id"]: m for m in client.get("/v1/models").json()["data"]}
    assert models[PARAKEET]["languages"] == list(PARAKEET_LANGUAGES) and models[PARAKEET]["owned_by"] == "parakeet"
    assert models[SENSEVOICE]["languages"] == list(SENSEVOICE_LANGUAGES) and models[SENSEVOICE]["owned_by"] == "sensevoice"
    assert models[PARAKEET]["supports_streaming"] is False and models[SENSEVOICE]["supports_streaming"] is True
    assert models["auto"]["supports_streaming"] is False  # the AND over the visible speech-to-text engines


def test_without_their_folders_they_are_absent_and_doctor_says_how_to_get_them(make_inprocess_gateway, silero_vad_path,  # noqa: F811
                                                                               parakeet_folder, tmp_path) -> None:  # noqa: F811
    without_models = make_inprocess_gateway(model_paths={VAD: silero_vad_path})
    without_vad = make_inprocess_gateway(model_paths={PARAKEET: parakeet_folder})  # no VAD configured or pulled
    with without_models.client() as client:
        models = {m["id"]: m for m in client.get("/v1/models").json()["data"]}
        engines = client.get("/ready").json()["engines"]
    assert PARAKEET not in models and SENSEVOICE not in models
    assert models["auto"]["supports_streaming"] is True  # Whisper alone streams
    assert engines["parakeet"]["unavailable"][0]["fix"] == f"aistack pull {PARAKEET}"
    assert engines["sensevoice"]["unavailable"][0]["fix"] == f"aistack pull {SENSEVOICE}"
    with without_vad.client() as client:
        why = client.get("/ready").json()["engines"]["parakeet"]["unavailable"]
    assert [(u["model"], u["fix"]) for u in why] == [(PARAKEET, f"aistack pull {VAD}")]
    doctor = subprocess.run([sys.executable, "-m", "aistack", "doctor"], capture_output=True, text=True, timeout=60,
                            env={**os.environ, "AISTACK_CACHE_DIR": str(tmp_path / "empty")})
    assert f"aistack pull {PARAKEET}" in doctor.stdout and f"aistack pull {SENSEVOICE}" in doctor.stdout


# -- transcription -------------------------------------------------------------------------------


@pytest.mark.parametrize("model", [PARAKEET, SENSEVOICE])
def test_verbose_json_has_vad_segments_monotonic_timestamps_and_a_real_language(both, model: str) -> None:
    response = transcribe(both, model=model, response_format="verbose_json", **{"timestamp_granularities[]": ["word", "segment"]})
    assert response.status_code == 200, response.text
    assert response.headers["x-aistack-model"] == model
    body = response.json()
    assert body["language"] != "auto" and body["language"] in (PARAKEET_LANGUAGES if model == PARAKEET else SENSEVOICE_LANGUAGES)
    assert body["duration"] == pytest.approx(5.3, abs=0.01)
    segments = body["segments"]
    assert len(segments) == 2  # one per burst of sound
    assert segments[0]["start"] == pytest.approx(0.3, abs=0.2) and segments[1]["start"] == pytest.approx(2.8, abs=0.2)
    for segment in segments:
        assert 0 <= segment["start"] < segment["end"] <= body["duration"] + 0.01 and segment["text"].strip()
    assert segments[0]["end"] <= segments[1]["start"]
    starts = [w["start"] for w in body["words"]]
    assert body["words"] and starts == sorted(starts)
    assert all(w["start"] <= w["end"] for w in body["words"])
    assert all(segments[0]["start"] - 0.01 <= w["start"] <= segments[-1]["end"] + 0.01 for w in body["words"])
    assert body["text"] == " ".join(s["text"].strip() for s in segments)


@pytest.mark.parametrize(("model", "response_format"), list(itertools.product([PARAKEET, SENSEVOICE], ["json", "text", "srt", "vtt"])))
def test_every_response_format(both, model: str, response_format: str) -> None:
    response = transcribe(both, model=model, response_format=response_format)
    assert response.status_code == 200, response.text
    body = response.text
    if response_format == "json":
        assert response.json()["text"].strip() and response.json()["usage"]["seconds"] == 6  # whole seconds, rounded up
    elif response_format == "text":
        assert body.strip() and response.headers["content-type"].startswith("text/plain")
    elif response_format == "srt":
        assert body.startswith("1\n00:00:00,") and "\n\n2\n00:00:02," in body
    else:
        assert body.startswith("WEBVTT") and "00:00:02." in body


def test_sensevoice_streams_a_delta_per_segment_as_it_is_decoded(both) -> None:
    response = transcribe(both, model=SENSEVOICE, stream="true")
    events = sse(response.text)
    assert [name for name, _ in events] == ["transcript.text.delta", "transcript.text.segment"] * 2 + ["transcript.text.done"]
    assert events[-1][1]["text"] == " ".join(data["text"] for name, data in events if name == "transcript.text.segment")


def test_parakeet_warns_that_it_does_not_stream_then_sends_its_segments(both) -> None:
    events = sse(transcribe(both, model=PARAKEET, stream="true").text)
    name, warning = events[0]
    assert name == "warning" and warning["code"] == "streaming_not_supported"
    assert [name for name, _ in events[1:]] == ["transcript.text.delta", "transcript.text.segment"] * 2 + ["transcript.text.done"]


@pytest.mark.parametrize("model", [PARAKEET, SENSEVOICE])
def test_translation_is_refused_naming_the_models_that_translate(both, hello: bytes, model: str) -> None:
    with both.client() as client:
        response = client.post("/v1/audio/translations", data={"model": model},
                               files={"file": ("clip.wav", hello, "audio/wav")})
    assert_envelope(response, 400, "malformed", "model", "cannot translate", "whisper-base")


def test_long_audio_is_cut_into_many_segments_in_order(both) -> None:
    bursts = [np.concatenate([speech_like(1.2, seed=i), silence(0.8)]) for i in range(45)]  # 90 s
    response = transcribe(both, audio=wav_bytes(np.concatenate(bursts)), model=SENSEVOICE, response_format="verbose_json")
    segments = response.json()["segments"]
    assert len(segments) == 45
    assert [s["id"] for s in segments] == list(range(45))
    assert all(a["end"] <= b["start"] for a, b in itertools.pairwise(segments))
    assert segments[-1]["start"] == pytest.approx(44 * 2.0, abs=0.3)


@pytest.mark.parametrize("damage", ["no-blank-token", "not-onnx", "empty"])
def test_a_broken_model_folder_is_not_listed_says_how_to_fix_it_and_the_gateway_lives_on(make_inprocess_gateway, parakeet_folder,  # noqa: F811
                                                                 silero_vad_path, tmp_path, damage: str) -> None:  # noqa: F811
    """sherpa-onnx ends the whole process on some broken folders instead of raising; they are refused first."""
    import shutil

    broken = tmp_path / "parakeet"
    shutil.copytree(parakeet_folder, broken)
    if damage == "no-blank-token":
        tokens = (broken / "tokens.txt").read_text().splitlines()
        (broken / "tokens.txt").write_text("\n".join(line for line in tokens if not line.startswith("<blk>")) + "\n")
    elif damage == "not-onnx":
        (broken / "joiner.int8.onnx").write_text("<html>a login page, not a model</html>")
    else:
        (broken / "encoder.int8.onnx").write_bytes(b"")
    gateway = make_inprocess_gateway(model_paths={PARAKEET: broken, VAD: silero_vad_path})
    response = transcribe(gateway, model=PARAKEET)
    assert_envelope(response, 503, "network", None, "cannot be served now", f"aistack pull --force {PARAKEET}",
                    provider="parakeet")
    with gateway.client() as client:
        assert PARAKEET not in [m["id"] for m in client.get("/v1/models").json()["data"]]
        assert client.get("/health").status_code == 200
        assert client.get("/ready").json()["devices"]["cpu"]["busy"] == 0


# -- routing (docs/models.md) -------------------------------------------------------------------------


def expected_route(hint: str | None, visible: set[str], detected: str | None = None) -> str:
    """docs/models.md, written out: CJK → SenseVoice, Parakeet's languages → Parakeet, else Whisper; a
    preferred engine that is not visible falls through. Whisper here is base (multilingual) or tiny.en.
    Without a hint the language `detected` first routes, where another engine than Whisper is visible."""
    if hint is None and visible and detected is not None:
        hint = detected
    if hint in CJK and SENSEVOICE in visible:
        return SENSEVOICE
    if hint in PARAKEET_LANGUAGES and PARAKEET in visible:
        return PARAKEET
    if hint is None or hint in WHISPER_LANGUAGES:
        return "whisper-base"
    return SENSEVOICE  # yue: no Whisper here transcribes it; SenseVoice, if visible, still can


ROUTED_HINTS = sorted(set(PARAKEET_LANGUAGES) | set(SENSEVOICE_LANGUAGES)) + [None, "th"]


@pytest.mark.parametrize("subset", [(), (PARAKEET,), (SENSEVOICE,), (PARAKEET, SENSEVOICE)], ids=["none", "parakeet",
                                                                                                   "sensevoice", "both"])
def test_auto_routes_every_language_by_the_design(make_inprocess_gateway, parakeet_folder, sensevoice_folder,  # noqa: F811
                                                  silero_vad_path, hello: bytes, subset: tuple[str, ...]) -> None:  # noqa: F811
    folders = {PARAKEET: parakeet_folder, SENSEVOICE: sensevoice_folder}
    gateway = make_inprocess_gateway(model_paths={VAD: silero_vad_path, **{m: folders[m] for m in subset}},
                                     whisper=WhisperSettings(beam_size=1))
    visible = set(subset)
    for hint in ROUTED_HINTS:
        response = transcribe(gateway, audio=hello, model="auto", language=hint, temperature="0")
        if hint == "yue" and SENSEVOICE not in visible:  # nothing visible transcribes Cantonese
            assert response.status_code == 503 and response.json()["error"]["kind"] == "network", response.text
            continue
        assert response.status_code == 200, (hint, response.text)
        # "Hello." is English: without a hint, base detects en first and routes by it.
        assert response.headers["x-aistack-model"] == expected_route(hint, visible, detected="en"), hint
        if hint is None:
            assert response.headers["x-aistack-language"] == "en"
    unknown = transcribe(gateway, audio=hello, model="auto", language="xx")
    assert_envelope(unknown, 400, "malformed", "language", "xx")


# -- accuracy on the real weights, where they are -------------------------------------------------


REAL_MODELS_DIR = os.environ.get("AISTACK_MODELS_DIR")


@pytest.mark.skipif(not REAL_MODELS_DIR, reason="AISTACK_MODELS_DIR is not set: the real Parakeet and SenseVoice "
                    "weights cannot be downloaded here; set it to a folder holding nvidia/parakeet-tdt-0.6b-v3, "
                    "iic/SenseVoiceSmall and silero-vad (as `aistack pull` lays them out) to run this test")
def test_accuracy_on_the_real_weights(make_inprocess_gateway, speech, english_wav) -> None:
    root = Path(REAL_MODELS_DIR or "")
    paths = {model_id: root / model_id for model_id in (PARAKEET, SENSEVOICE, VAD)}
    missing = [str(path) for path in paths.values() if not path.exists()]
    assert not missing, f"AISTACK_MODELS_DIR lacks {missing}"
    gateway = make_inprocess_gateway(model_paths={**paths, VAD: paths[VAD] / "silero_vad.onnx"})
    german = speech.espeak("german", GERMAN_SENTENCE, "de").read_bytes()
    heard = transcribe(gateway, audio=german, model="auto", language="de")
    assert heard.headers["x-aistack-model"] == PARAKEET
    assert len(set(words(heard.json()["text"])) & set(words(GERMAN_SENTENCE))) >= len(words(GERMAN_SENTENCE)) // 2
    english = transcribe(gateway, audio=english_wav.read_bytes(), model=SENSEVOICE, response_format="verbose_json")
    assert english.json()["language"] == "en" and len(words(english.json()["text"])) >= 8


def sse(text: str) -> list[tuple[str, dict]]:
    events = []
    for block in text.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines())
        events.append((lines["event"], json.loads(lines["data"])))
    return events


# -- the 2026 transcription fields beside models that cannot take them ------------------------------


def test_auto_without_a_hint_detects_the_language_first_and_routes_by_it(make_inprocess_gateway, parakeet_folder,  # noqa: F811
                                                                         silero_vad_path, speech) -> None:  # noqa: F811
    german = speech.espeak("german", GERMAN_SENTENCE, "de").read_bytes()
    paths = {PARAKEET: parakeet_folder, VAD: silero_vad_path}
    gateway = make_inprocess_gateway(model_paths=paths, whisper=WhisperSettings(beam_size=1))
    routed = transcribe(gateway, audio=german, model="auto", response_format="verbose_json")
    assert routed.status_code == 200, routed.text
    assert (routed.headers["x-aistack-model"], routed.headers["x-aistack-language"]) == (PARAKEET, "de")
    # Limited to languages Parakeet does not hear, detection routes to Whisper.
    limited = transcribe(gateway, audio=german, model="auto", **{"languages[]": ["ja", "th"]})
    assert limited.status_code == 200, limited.text
    assert limited.headers["x-aistack-model"] == "whisper-base"

    undetected = make_inprocess_gateway(model_paths=paths, whisper=WhisperSettings(beam_size=1),
                                        transcription={"detect_language_for_auto": False})
    plain = transcribe(undetected, audio=german, model="auto", response_format="verbose_json")
    assert plain.status_code == 200, plain.text
    assert plain.headers["x-aistack-model"] == "whisper-base"
    assert plain.json()["language"] == "de" and plain.headers["x-aistack-language"] == "de"


@pytest.mark.parametrize(("fields", "param", "named"), [
    ({"keywords[]": ["Zorbatek"]}, "keywords", "keywords[]"),
    ({"include[]": ["logprobs"]}, "include", "include[]=logprobs"),
    ({"chunking_strategy": "auto"}, "chunking_strategy", "chunking_strategy"),
], ids=["keywords", "logprobs", "chunking"])
def test_fields_a_model_cannot_take_are_refused_naming_the_models_that_can(both, hello: bytes, fields: dict, param: str,
                                                                             named: str) -> None:
    response = transcribe(both, audio=hello, model=SENSEVOICE, **fields)
    error = assert_envelope(response, 400, "malformed", param, f"model '{SENSEVOICE}' cannot take {named}", "whisper-base")
    assert PARAKEET not in error["message"]
