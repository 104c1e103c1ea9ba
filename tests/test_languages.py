"""The `language` field: ISO 639-1 codes (and Cantonese's 'yue'), anything else a 400 that says what to send."""

from __future__ import annotations

import pytest

from aistack.errors import AistackError, ErrorKind
from aistack.languages import (
    CJK_LANGUAGES,
    ISO_639_1,
    PARAKEET_LANGUAGES,
    SENSEVOICE_LANGUAGES,
    WHISPER_LANGUAGES,
    normalize_language,
)


@pytest.mark.parametrize("value", ["en", "EN", "En", " de ", "fr", "ZH", "ja", "ko", "uk", "jv"])
def test_iso_codes_are_accepted_in_any_case(value):
    assert normalize_language(value) == value.strip().lower()


def test_every_iso_639_1_code_is_accepted_lower_and_upper():
    assert len(ISO_639_1) == 183
    for code in sorted(ISO_639_1):
        assert len(code) == 2 and code.isalpha() and code.islower()
        assert normalize_language(code) == code
        assert normalize_language(code.upper()) == code


@pytest.mark.parametrize("value", ["yue", "YUE", "Yue"])
def test_cantonese_has_its_iso_639_3_code(value):
    assert normalize_language(value) == "yue"


@pytest.mark.parametrize("value", [None, "", "   ", "auto", "AUTO", "Auto"])
def test_no_hint(value):
    assert normalize_language(value) is None


@pytest.mark.parametrize("value", ["english", "eng", "e", "xx", "en-US", "en_us", "zho", "deu", "jw", "12"])
def test_anything_else_is_a_400_on_language_that_says_what_to_send(value):
    with pytest.raises(AistackError) as caught:
        normalize_language(value)
    error = caught.value
    assert error.kind is ErrorKind.MALFORMED
    assert error.status_code == 400
    assert error.param == "language"
    body = error.envelope()["error"]
    assert body["param"] == "language" and body["code"] == "malformed" and body["type"] == "invalid_request_error"
    # Names what was sent and what to send instead.
    assert f"'{value}'" in error.message
    assert "ISO 639-1" in error.message
    assert "'en'" in error.message
    assert "leave it out" in error.message


def test_every_code_an_engine_routes_on_is_accepted():
    for code in (*WHISPER_LANGUAGES, *PARAKEET_LANGUAGES, *SENSEVOICE_LANGUAGES, *CJK_LANGUAGES):
        assert normalize_language(code) == code


def test_engine_language_lists():
    assert len(PARAKEET_LANGUAGES) == len(set(PARAKEET_LANGUAGES)) == 25
    assert len(WHISPER_LANGUAGES) == len(set(WHISPER_LANGUAGES))
    assert set(PARAKEET_LANGUAGES) <= set(WHISPER_LANGUAGES)
    assert set(SENSEVOICE_LANGUAGES) == {"zh", "yue", "ja", "ko", "en"}
    assert CJK_LANGUAGES == {"zh", "yue", "ja", "ko"}
    assert "en" not in CJK_LANGUAGES
