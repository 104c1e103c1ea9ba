"""The door's pieces that need no engine: the Wyoming setting, sentences cut from streamed text, one
request's audio as it arrives, and language tags as Home Assistant sends them."""

from __future__ import annotations

import pytest
from wyoming.audio import AudioFormat

from aistack.errors import AistackError, ErrorKind
from aistack.settings import Settings
from aistack.wyoming_door.languages import language_hint, primary_language
from aistack.wyoming_door.listening import Listening
from aistack.wyoming_door.sentences import SentenceBuffer


def test_the_door_is_off_by_default_and_one_setting_turns_it_on(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings().wyoming.uri is None
    monkeypatch.setenv("AISTACK_WYOMING__URI", "tcp://0.0.0.0:10300")
    assert Settings().wyoming.uri == "tcp://0.0.0.0:10300"
    assert Settings(wyoming={"uri": "unix:///run/aistack.sock"}).wyoming.uri == "unix:///run/aistack.sock"


@pytest.mark.parametrize(("uri", "needle"), [
    ("tcp://127.0.0.1", "needs a host and a port"),
    ("tcp://:10300", "needs a host and a port"),
    ("tcp://127.0.0.1:99999", "needs a host and a port"),
    ("stdio://", "neither tcp://HOST:PORT nor unix:///PATH"),
    ("http://127.0.0.1:10300", "neither"),
])
def test_a_uri_it_cannot_listen_on_is_refused_at_start(uri: str, needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        Settings(wyoming={"uri": uri})


def test_sentences_come_out_once_whole() -> None:
    buffer = SentenceBuffer(max_chars=4096)
    assert buffer.add("Hello there") == []
    assert buffer.add(". It is 3") == ["Hello there."]
    assert buffer.add(".") == []  # a full stop with nothing after it may still become "3.14"
    assert buffer.add("14 degrees! And") == ["It is 3.14 degrees!"]
    assert buffer.add(" then\n") == ["And then"]
    assert buffer.add("今日は晴れ。明日") == ["今日は晴れ。"]
    assert buffer.add("「雨」") == []
    assert buffer.add('He said "stop." Then') == ['明日「雨」He said "stop."']
    assert buffer.finish() == "Then" and buffer.finish() == ""


def test_no_piece_is_longer_than_one_synthesis_takes() -> None:
    buffer = SentenceBuffer(max_chars=12)
    assert buffer.add("one two three four five") == ["one two", "three four"]
    assert buffer.add("x" * 30) == ["five" + "x" * 8, "x" * 12]
    assert buffer.finish() == "x" * 10
    # A whole sentence longer than that is cut the same way.
    assert buffer.add("alpha beta gamma delta epsilon. Next") == ["alpha beta", "gamma delta", "epsilon."]
    assert buffer.finish() == "Next"


def test_a_requests_audio_keeps_one_format_and_a_bound() -> None:
    listening = Listening()
    listening.add(AudioFormat(rate=16000, width=2, channels=1), bytes(100), max_bytes=300)
    with pytest.raises(AistackError) as changed:
        listening.add(AudioFormat(rate=16000, width=2, channels=2), bytes(100), max_bytes=300)
    assert changed.value.kind == ErrorKind.MALFORMED and "1 channel(s)" in changed.value.message
    listening.add(AudioFormat(rate=16000, width=2, channels=1), bytes(200), max_bytes=300)
    with pytest.raises(AistackError) as over:
        listening.add(AudioFormat(rate=16000, width=2, channels=1), bytes(1), max_bytes=300)
    assert over.value.kind == ErrorKind.OVERFLOW and "AISTACK_MAX_UPLOAD_MB" in over.value.message
    assert len(listening.audio) == 300


def test_language_tags_as_home_assistant_sends_them() -> None:
    assert [primary_language(tag) for tag in ("en", "en-US", "pt_BR", " DE ")] == ["en", "en", "pt", "de"]
    assert language_hint(None) is None and language_hint("") is None and language_hint("fr-CA") == "fr"
    with pytest.raises(AistackError) as refused:
        language_hint("klingon")
    assert refused.value.kind == ErrorKind.MALFORMED


def test_home_assistants_names_and_terms_become_keywords_where_they_can() -> None:
    from aistack.wyoming_door.listening import usable_keywords

    assert usable_keywords(["Living Room", "Kitchen"], ["Kitchen", "thermostat"]) == ("Living Room", "Kitchen", "thermostat")
    assert usable_keywords(None, ["<b>bold</b>", "two\nlines", " ", "lamp"]) == ("lamp",)
    assert usable_keywords(None, None) == ()
