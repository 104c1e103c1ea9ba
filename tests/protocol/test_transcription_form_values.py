"""The form values of the 2026 transcription fields as OpenAI's clients send them: chunking_strategy
("auto", a JSON object, or the SDK's bracketed fields) and keywords[]."""

from __future__ import annotations

import pytest

from aistack.engines.base import TranscribeOptions, VadChunking
from aistack.errors import AistackError, ErrorKind
from aistack.protocol.transcription import MAX_KEYWORDS, checked_keywords, chunking_strategy


def test_auto_a_json_object_and_bracketed_fields_are_the_same_strategy() -> None:
    assert chunking_strategy(None, None, None, None, None) is None
    assert chunking_strategy("auto", None, None, None, None) == VadChunking()
    tuned = VadChunking(threshold=0.6, prefix_padding_ms=200, silence_duration_ms=300)
    assert chunking_strategy('{"type": "server_vad", "threshold": 0.6, "prefix_padding_ms": 200, "silence_duration_ms": 300}',
                             None, None, None, None) == tuned
    assert chunking_strategy(None, "server_vad", 0.6, 200, 300) == tuned


@pytest.mark.parametrize(("value", "fields", "needle"), [
    ("semantic", (None, None, None, None), "is not known"),
    ('{"type": "semantic_vad"}', (None, None, None, None), "type 'semantic_vad'"),
    ('{"type": "server_vad", "threshold": 2}', (None, None, None, None), "between 0 and 1"),
    ('{"type": "server_vad", "silence_duration_ms": "long"}', (None, None, None, None), "whole milliseconds"),
    ("[1, 2]", (None, None, None, None), "send \"auto\""),
    (None, (None, 0.5, None, None), "need chunking_strategy[type]=server_vad"),
])
def test_a_strategy_that_is_not_openais_is_refused_saying_what_to_send(value, fields, needle) -> None:
    with pytest.raises(AistackError) as error:
        chunking_strategy(value, *fields)
    assert error.value.kind == ErrorKind.MALFORMED and error.value.param == "chunking_strategy"
    assert needle in error.value.message


def test_keywords_are_trimmed_and_checked_as_openai_does() -> None:
    assert checked_keywords(None) == ()
    assert checked_keywords([" Zorbatek ", "", "Marvella"]) == ("Zorbatek", "Marvella")
    for bad in ("<b>", "x>y", "two\nlines", "cr\rhere"):
        with pytest.raises(AistackError):
            checked_keywords([bad])
    with pytest.raises(AistackError) as error:
        checked_keywords([f"w{i}" for i in range(MAX_KEYWORDS + 1)])
    assert f"at most {MAX_KEYWORDS}" in error.value.message


def test_options_say_which_model_features_they_need() -> None:
    assert TranscribeOptions().needs == frozenset()
    asked = TranscribeOptions(keywords=("a",), logprobs=True, chunking=VadChunking(), detect_only=True)
    assert asked.needs == {"keywords", "logprobs", "chunking", "language_detection"}
