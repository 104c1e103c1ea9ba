"""`model=auto` routing (docs/models.md), checked against a plainly written oracle of the rules.

The oracle below is written from docs/models.md alone, not from `aistack.routing`:
  1. a hint in zh / yue / ja / ko goes to SenseVoice, if a SenseVoice model is visible;
  2. a hint in Parakeet's 25 languages goes to Parakeet, if visible;
  3. anything else, or no hint, goes to faster-whisper: the configured default size when it is
     visible and can transcribe the hint, else the best (highest-rank) Whisper model that can;
  4. a preferred backend that cannot serve falls through to the next rule; after the last rule,
     any visible model that transcribes the hint serves; with none, 503 `network`.
A model "can serve" a hint when its languages include it (no hint: any model), and, for
translation, only models that translate are considered at all.
"""

from __future__ import annotations

import itertools
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aistack.engines.base import ModelCard
from aistack.engines.whisper import card_for
from aistack.errors import AistackError, ErrorKind
from aistack.languages import (
    CJK_LANGUAGES,
    ISO_639_1,
    PARAKEET_LANGUAGES,
    SENSEVOICE_LANGUAGES,
    WHISPER_LANGUAGES,
)
from aistack.routing import WHISPER_ONLY, route
from aistack.weights.catalog import WHISPER_BY_ID

SENSEVOICE = ModelCard(
    id="iic/SenseVoiceSmall",
    provider="sensevoice",
    capabilities=("asr",),
    family="sensevoice",
    languages=SENSEVOICE_LANGUAGES,
    supports_streaming=True,
)
PARAKEET = ModelCard(
    id="nvidia/parakeet-tdt-0.6b-v3",
    provider="parakeet",
    capabilities=("asr",),
    family="parakeet",
    languages=PARAKEET_LANGUAGES,
)
# Non-speech models that must never be picked.
TTS = ModelCard(id="piper-joe", provider="piper", capabilities=("tts",), family="piper", rank=999)
LLM = ModelCard(id="smollm2", provider="ollama", capabilities=("llm",), family="llm", rank=999)


def whisper(size: str) -> ModelCard:
    return card_for(WHISPER_BY_ID[f"whisper-{size}"])


# Which Whisper models are installed, when the whisper family is visible at all.
WHISPER_SETS: dict[str, tuple[ModelCard, ...]] = {
    "small": (whisper("small"),),
    "tiny.en": (whisper("tiny.en"),),
    "tiny.en+base": (whisper("tiny.en"), whisper("base")),
    "small.en+base": (whisper("small.en"), whisper("base")),
    "many": (whisper("tiny.en"), whisper("base"), whisper("small"), whisper("medium.en"), whisper("large-v3")),
}
PREFERRED: tuple[tuple[str, ...], ...] = ((), ("whisper-small",), ("whisper-base",), ("whisper-small.en",))

# Codes no engine lists: a real ISO 639-1 code Whisper lacks, and codes that are not ISO at all.
UNLISTED_CODES = ("zu", "aa", "xx", "klingon")
WHISPER_SAMPLE = ("en", "de", "zh", "ja", "sw", "hi", "ar", "cy", "jv", "la", "yi", "tl", "su")
HINTS: tuple[str | None, ...] = tuple(
    dict.fromkeys(
        [None, *sorted(SENSEVOICE_LANGUAGES), *sorted(PARAKEET_LANGUAGES), *sorted(CJK_LANGUAGES)]
        + [c for c in WHISPER_SAMPLE if c in WHISPER_LANGUAGES]
        + list(UNLISTED_CODES)
    )
)


def all_card_sets() -> list[tuple[str, list[ModelCard]]]:
    """Every subset of {sensevoice, parakeet, whisper}; whisper in each of its installed variants."""
    out = []
    for size in range(4):
        for families in itertools.combinations(("sensevoice", "parakeet", "whisper"), size):
            base = [TTS, LLM]
            if "sensevoice" in families:
                base.append(SENSEVOICE)
            if "parakeet" in families:
                base.append(PARAKEET)
            if "whisper" in families:
                for name, cards in WHISPER_SETS.items():
                    out.append((f"{'+'.join(families)}[{name}]", [*base, *cards]))
            else:
                out.append(("+".join(families) or "nothing", base))
    return out


CARD_SETS = all_card_sets()


# ----------------------------------------------------------------------------- the oracle


def can_serve(card: ModelCard, hint: str | None) -> bool:
    if hint is None:
        return True
    return card.languages is not None and hint in card.languages


def oracle(
    hint: str | None,
    cards: list[ModelCard],
    preferred: tuple[str, ...],
    task: str = "transcribe",
    whisper_only: bool = False,
) -> set[str] | None:
    """The ids that may answer (a set only where docs/models.md leaves a tie open), None for 503, or
    "malformed" for a language no engine lists at all (the request is wrong, not the install)."""
    if hint is not None and hint not in (*WHISPER_LANGUAGES, *PARAKEET_LANGUAGES, *SENSEVOICE_LANGUAGES):
        return "malformed"
    speech = [c for c in cards if "asr" in c.capabilities]
    if task == "translate":
        speech = [c for c in speech if c.can_translate]
    able = [c for c in speech if can_serve(c, hint)]

    sensevoice = [c for c in able if c.family == "sensevoice"]
    parakeet = [c for c in able if c.family == "parakeet"]
    whispers = [c for c in able if c.family == "whisper"]

    def best_whisper() -> set[str]:
        for model_id in preferred:
            if any(c.id == model_id for c in whispers):
                return {model_id}
        top = max(c.rank for c in whispers)
        return {c.id for c in whispers if c.rank == top}

    if whisper_only:
        return best_whisper() if whispers else None
    if hint in CJK_LANGUAGES and sensevoice:
        return {c.id for c in sensevoice}
    if hint in PARAKEET_LANGUAGES and parakeet:
        return {c.id for c in parakeet}
    if whispers:
        return best_whisper()
    # Fall-through: whatever is left that can transcribe it. Where both SenseVoice and Parakeet
    # could (no hint and no Whisper), docs/models.md does not say which, so either is right.
    leftovers = {c.id for c in able}
    return leftovers or None


def check(hint, cards, preferred, **kwargs) -> str | None:
    """A description of the mismatch between `route` and the oracle, or None when they agree."""
    task = kwargs.get("task", "transcribe")
    whisper_only = kwargs.pop("whisper_only", False)
    if whisper_only:
        kwargs.update(rules=WHISPER_ONLY, fall_through=False)
    expected = oracle(hint, cards, preferred, task=task, whisper_only=whisper_only)
    try:
        got = route(hint, cards, preferred_ids=preferred, **kwargs)
    except AistackError as error:
        if expected is None and error.kind is ErrorKind.NETWORK and error.status_code == 503 and error.message:
            return None
        if expected == "malformed" and error.kind is ErrorKind.MALFORMED and error.param == "language":
            return None
        return f"raised {error.kind.value}/{error.status_code} ({error.message}), expected {expected}"
    if expected is None or expected == "malformed":
        return f"picked {got.id}, expected {expected or '503 network'}"
    if got.id not in expected:
        return f"picked {got.id}, expected {sorted(expected)}"
    if got not in cards:
        return f"returned a card that was not offered: {got}"
    return None


def mismatches(hint, **kwargs) -> list[str]:
    found = []
    for name, cards in CARD_SETS:
        for preferred in PREFERRED:
            problem = check(hint, cards, preferred, **kwargs)
            if problem:
                found.append(f"hint={hint!r} visible={name} preferred={preferred}: {problem}")
    return found


# ----------------------------------------------------------------------------- the sweep


def test_the_sweep_covers_what_it_claims():
    assert set(SENSEVOICE_LANGUAGES) <= set(HINTS)
    assert set(PARAKEET_LANGUAGES) <= set(HINTS)
    assert CJK_LANGUAGES <= set(HINTS)
    assert None in HINTS
    assert sum(1 for h in HINTS if h in WHISPER_LANGUAGES and h not in PARAKEET_LANGUAGES and h not in CJK_LANGUAGES) >= 8
    # 8 family subsets, whisper in each of its variants.
    assert len(CARD_SETS) == 4 + 4 * len(WHISPER_SETS)
    families = {frozenset(c.family for c in cards if "asr" in c.capabilities) for _, cards in CARD_SETS}
    assert len(families) == 8


@pytest.mark.parametrize("hint", HINTS, ids=repr)
def test_auto_transcription_matches_the_design_rules(hint):
    assert mismatches(hint) == []


@pytest.mark.parametrize("hint", HINTS, ids=repr)
def test_auto_translation_only_picks_models_that_translate(hint):
    assert mismatches(hint, task="translate") == []
    for _, cards in CARD_SETS:
        try:
            chosen = route(hint, cards, preferred_ids=("whisper-small",), task="translate")
        except AistackError:
            continue
        assert chosen.can_translate and chosen.family == "whisper"


@pytest.mark.parametrize("hint", HINTS, ids=repr)
@pytest.mark.parametrize("task", ["transcribe", "translate"])
def test_whisper_alias_never_leaves_the_whisper_family(hint, task):
    assert mismatches(hint, task=task, whisper_only=True) == []
    for _, cards in CARD_SETS:
        try:
            chosen = route(hint, cards, preferred_ids=("whisper-small",), rules=WHISPER_ONLY, fall_through=False, task=task)
        except AistackError as error:
            assert error.kind in (ErrorKind.NETWORK, ErrorKind.MALFORMED)
            continue
        assert chosen.family == "whisper"


# ----------------------------------------------------------------------------- spot checks


ALL = [TTS, LLM, SENSEVOICE, PARAKEET, whisper("tiny.en"), whisper("base"), whisper("small")]


@pytest.mark.parametrize(
    ("hint", "cards", "expected"),
    [
        ("zh", ALL, SENSEVOICE.id),
        ("yue", ALL, SENSEVOICE.id),
        ("ja", ALL, SENSEVOICE.id),
        ("ko", ALL, SENSEVOICE.id),
        ("de", ALL, PARAKEET.id),
        ("en", ALL, PARAKEET.id),  # en is SenseVoice's too, but it is not a CJK hint
        ("sw", ALL, "whisper-small"),
        (None, ALL, "whisper-small"),
        # SenseVoice gone: Chinese falls through to Whisper, English to Parakeet.
        ("zh", [PARAKEET, whisper("small")], "whisper-small"),
        ("en", [SENSEVOICE, whisper("tiny.en")], "whisper-tiny.en"),
        # Nothing but SenseVoice: it serves English and undirected requests, as the last resort.
        ("en", [SENSEVOICE], SENSEVOICE.id),
        (None, [SENSEVOICE], SENSEVOICE.id),
        (None, [PARAKEET], PARAKEET.id),
        # The default size is missing: the best Whisper that can do the language.
        ("de", [whisper("tiny.en"), whisper("base")], "whisper-base"),
        ("en", [whisper("tiny.en"), whisper("base"), whisper("large-v3")], "whisper-large-v3"),
    ],
)
def test_spot_checks(hint, cards, expected):
    assert route(hint, cards, preferred_ids=("whisper-small",)).id == expected


def test_preferred_whisper_wins_over_a_higher_ranked_one():
    cards = [whisper("large-v3"), whisper("small"), whisper("base")]
    assert route("de", cards, preferred_ids=("whisper-small",)).id == "whisper-small"
    assert route(None, cards, preferred_ids=("whisper-base",)).id == "whisper-base"
    assert route("de", cards).id == "whisper-large-v3"


def test_an_english_only_default_is_skipped_for_other_languages():
    cards = [whisper("tiny.en"), whisper("small.en"), whisper("base")]
    assert route("en", cards, preferred_ids=("whisper-small.en",)).id == "whisper-small.en"
    assert route("de", cards, preferred_ids=("whisper-small.en",)).id == "whisper-base"
    assert route("de", cards, preferred_ids=("whisper-tiny.en",)).id == "whisper-base"


def test_tiny_en_cannot_take_german_and_nothing_else_can():
    with pytest.raises(AistackError) as caught:
        route("de", [whisper("tiny.en"), SENSEVOICE, TTS], preferred_ids=("whisper-small",))
    assert caught.value.kind is ErrorKind.NETWORK
    assert caught.value.status_code == 503
    assert "'de'" in caught.value.message


def test_translation_skips_english_only_and_non_whisper_models():
    cards = [SENSEVOICE, PARAKEET, whisper("tiny.en"), whisper("base")]
    assert route("zh", cards, task="translate").id == "whisper-base"
    assert route("de", cards, task="translate").id == "whisper-base"
    assert route(None, cards, task="translate").id == "whisper-base"
    with pytest.raises(AistackError) as caught:
        route("de", [SENSEVOICE, PARAKEET, whisper("tiny.en")], task="translate")
    assert caught.value.kind is ErrorKind.NETWORK and caught.value.status_code == 503
    assert "translate" in caught.value.message


def test_whisper_alias_does_not_fall_back_to_other_families():
    with pytest.raises(AistackError) as caught:
        route("en", [SENSEVOICE, PARAKEET], rules=WHISPER_ONLY, fall_through=False)
    assert caught.value.kind is ErrorKind.NETWORK
    assert route("en", [SENSEVOICE, PARAKEET, whisper("base")], rules=WHISPER_ONLY, fall_through=False).id == "whisper-base"


@pytest.mark.parametrize("hint", [None, "en", "zh"])
def test_nothing_visible_is_503_network_with_a_fix(hint):
    with pytest.raises(AistackError) as caught:
        route(hint, [TTS, LLM], preferred_ids=("whisper-small",))
    error = caught.value
    assert error.kind is ErrorKind.NETWORK
    assert error.status_code == 503
    assert error.envelope()["error"]["code"] == "network"
    assert "aistack doctor" in error.message


@pytest.mark.parametrize("hint", UNLISTED_CODES)
def test_a_language_no_engine_lists_is_refused_even_with_everything_visible(hint):
    with pytest.raises(AistackError) as caught:
        route(hint, ALL, preferred_ids=("whisper-small",))
    assert caught.value.kind is ErrorKind.MALFORMED and caught.value.status_code == 400
    assert caught.value.param == "language" and hint in caught.value.message


def test_unlisted_codes_really_are_unlisted():
    for code in UNLISTED_CODES:
        assert code not in WHISPER_LANGUAGES and code not in PARAKEET_LANGUAGES and code not in SENSEVOICE_LANGUAGES
    assert "zu" in ISO_639_1 and "aa" in ISO_639_1


# ----------------------------------------------------------------------------- properties

ASR_POOL = [SENSEVOICE, PARAKEET, *(card_for(spec) for spec in WHISPER_BY_ID.values())]
HINT_POOL = [None, *sorted(ISO_639_1), "yue", "xx"]


@settings(max_examples=300, deadline=None)
@given(
    picked=st.lists(st.sampled_from(ASR_POOL), unique_by=lambda c: c.id),
    hint=st.sampled_from(HINT_POOL),
    preferred=st.sampled_from([(), *((spec_id,) for spec_id in WHISPER_BY_ID)]),
    task=st.sampled_from(["transcribe", "translate"]),
    seed=st.integers(0, 2**16),
)
def test_any_installed_mix_in_any_listing_order_matches_the_oracle(picked, hint, preferred, task, seed):
    cards = [TTS, LLM, *picked]
    random.Random(seed).shuffle(cards)
    assert check(hint, cards, preferred, task=task) is None
    assert check(hint, cards, preferred, task=task, whisper_only=True) is None
