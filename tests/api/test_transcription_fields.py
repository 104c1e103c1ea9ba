"""The transcription fields OpenAI added in 2026, on the real Whisper engines: keywords[], languages[],
chunking_strategy, include[]=logprobs, and the diarization fields (refused with the reason)."""

from __future__ import annotations

from pathlib import Path

import pytest
from openai import OpenAI

from conftest import GERMAN_SENTENCE, LONG_PARAGRAPH, Gateway, Speech, assert_envelope, words
from transcripts import word_error_rate as wer

pytestmark = pytest.mark.slow

# Two made-up names that Whisper spells its own way unless told (whisper-base, measured once).
RARE_NAMES_TEXT = "Please send the report to Zorbatek before noon. Then call Marvella about the shipment."
# Six tellings of the paragraph (about 33 s each), each about another trade.
THREE_MINUTES = " ".join(LONG_PARAGRAPH.replace("baker", trade) for trade in ("baker", "miller", "tailor", "potter", "weaver", "painter"))


def post(gateway: Gateway, path: Path, **fields):
    with gateway.client(timeout=300) as client, open(path, "rb") as audio:
        return client.post("/v1/audio/transcriptions", data=fields, files={"file": (path.name, audio, "audio/wav")})


@pytest.fixture(scope="module")
def rare_names_wav(speech: Speech) -> Path:
    return speech.piper("rare-names", RARE_NAMES_TEXT)


@pytest.fixture(scope="module")
def three_minutes_wav(speech: Speech) -> Path:
    return speech.piper("three-minutes", THREE_MINUTES)


def test_keywords_make_whisper_spell_the_rare_words_as_given(gateway: Gateway, rare_names_wav: Path) -> None:
    plain = post(gateway, rare_names_wav, model="whisper-base")
    assert plain.status_code == 200, plain.text
    assert "zorbatek" not in words(plain.json()["text"]) and "marvella" not in words(plain.json()["text"])
    favoured = post(gateway, rare_names_wav, model="whisper-base", **{"keywords[]": ["Zorbatek", "Marvella"]})
    assert favoured.status_code == 200, favoured.text
    heard = words(favoured.json()["text"])
    assert "zorbatek" in heard and "marvella" in heard


@pytest.mark.parametrize("keyword", ["<|endoftext|>", "two\nlines", "a > b"])
def test_a_keyword_with_angle_brackets_or_a_line_break_is_refused(gateway: Gateway, rare_names_wav: Path, keyword: str) -> None:
    response = post(gateway, rare_names_wav, model="whisper-base", **{"keywords[]": [keyword]})
    assert_envelope(response, 400, "malformed", "keywords", "'<', '>' or a line break")


def test_languages_limit_detection_and_conflict_with_language(gateway: Gateway, german_wav: Path) -> None:
    response = post(gateway, german_wav, model="whisper-base", response_format="verbose_json", **{"languages[]": ["de", "fr"]})
    assert response.status_code == 200, response.text
    assert response.json()["language"] == "de"
    assert len(set(words(response.json()["text"])) & set(words(GERMAN_SENTENCE))) >= 5
    both = post(gateway, german_wav, model="whisper-base", language="de", **{"languages[]": ["de", "fr"]})
    assert_envelope(both, 400, "malformed", "languages", "send one of them")
    english_only = post(gateway, german_wav, model="whisper-tiny.en", **{"languages[]": ["de", "fr"]})
    assert_envelope(english_only, 400, "malformed", "languages", "whisper-tiny.en", "does not transcribe", "whisper-base")


def test_chunking_strategy_auto_gives_the_same_words_on_three_minutes(gateway: Gateway, three_minutes_wav: Path) -> None:
    plain = post(gateway, three_minutes_wav, model="whisper-tiny.en")
    chunked = post(gateway, three_minutes_wav, model="whisper-tiny.en", chunking_strategy="auto")
    assert plain.status_code == 200 and chunked.status_code == 200, (plain.text, chunked.text)
    assert chunked.json()["usage"]["seconds"] >= 180
    # Both hear the speech (Whisper writes "six" as "6", so the spoken text is a loose reference) ...
    assert wer(words(THREE_MINUTES), words(plain.json()["text"])) <= 0.10
    # ... and the chunked decode says what the whole-file decode says.
    between = wer(words(plain.json()["text"]), words(chunked.json()["text"]))
    assert between <= 0.05, (between, plain.json()["text"], chunked.json()["text"])


def test_chunking_strategy_server_vad_from_the_openai_sdk(gateway: Gateway, rare_names_wav: Path) -> None:
    sdk = OpenAI(base_url=f"{gateway.url}/v1", api_key="not-needed", max_retries=0, timeout=120)
    with open(rare_names_wav, "rb") as audio:
        result = sdk.audio.transcriptions.create(
            file=audio, model="whisper-base", keywords=["Zorbatek"],
            chunking_strategy={"type": "server_vad", "threshold": 0.5, "silence_duration_ms": 300, "prefix_padding_ms": 200},
        )
    assert "zorbatek" in words(result.text)


@pytest.mark.parametrize("strategy", ["sometimes", '{"type": "semantic_vad"}', "{not json"])
def test_an_unknown_chunking_strategy_is_refused(gateway: Gateway, rare_names_wav: Path, strategy: str) -> None:
    response = post(gateway, rare_names_wav, model="whisper-base", chunking_strategy=strategy)
    assert_envelope(response, 400, "malformed", "chunking_strategy", "server_vad")


def test_logprobs_come_one_per_token_of_the_text(gateway: Gateway, rare_names_wav: Path) -> None:
    response = post(gateway, rare_names_wav, model="whisper-base", **{"include[]": ["logprobs"]})
    assert response.status_code == 200, response.text
    body = response.json()
    entries = body["logprobs"]
    assert len(entries) >= len(words(body["text"]))  # at least one token per word
    assert "".join(entry["token"] for entry in entries).strip() == body["text"]
    for entry in entries:
        assert entry["logprob"] <= 0.0 and bytes(entry["bytes"]).decode("utf-8") == entry["token"]
    assert list(body) == ["text", "logprobs", "usage"]


def test_logprobs_need_response_format_json(gateway: Gateway, rare_names_wav: Path) -> None:
    response = post(gateway, rare_names_wav, model="whisper-base", response_format="verbose_json", **{"include[]": ["logprobs"]})
    assert_envelope(response, 400, "malformed", "include", "response_format=json")


@pytest.mark.parametrize(("fields", "param"), [
    ({"response_format": "diarized_json"}, "response_format"),
    ({"known_speaker_names[]": ["agent"]}, "known_speaker_names"),
    ({"known_speaker_references[]": ["data:audio/wav;base64,AAAA"]}, "known_speaker_references"),
], ids=["diarized_json", "known_speaker_names", "known_speaker_references"])
def test_diarization_fields_say_it_is_not_available(gateway: Gateway, rare_names_wav: Path, fields: dict, param: str) -> None:
    response = post(gateway, rare_names_wav, model="whisper-base", **fields)
    assert_envelope(response, 400, "malformed", param, "speaker diarization is not available here")
