"""Word timings from the timed subword tokens sherpa-onnx returns (spaces mark word starts; CJK
characters are words of their own)."""

from __future__ import annotations

from aistack.engines.sherpa import _words


def test_subword_tokens_join_into_words_that_end_where_the_next_begins() -> None:
    tokens = [(" hel", 0.10), ("lo", 0.18), (" wor", 0.50), ("ld", 0.58)]
    words = _words(tokens, start_s=2.0, end_s=3.5, frame_s=0.08)
    assert [(w.word, w.start, w.end) for w in words] == [(" hello", 2.1, 2.5), (" world", 2.5, 2.9)]


def test_each_cjk_character_is_a_word() -> None:
    tokens = [("你", 0.0), ("好", 0.12), (" ok", 0.3)]
    words = _words(tokens, start_s=0.0, end_s=1.0, frame_s=0.06)
    assert [w.word for w in words] == [" 你", " 好", " ok"]
    assert [w.start for w in words] == [0.0, 0.12, 0.3] and words[-1].end == 0.54


def test_the_last_word_never_ends_after_its_segment() -> None:
    (word,) = _words([(" end", 0.95)], start_s=0.0, end_s=1.0, frame_s=0.08)
    assert word.end == 1.0
