"""Language tags as Home Assistant sends them (`en`, `en-US`, `en_US`) to the codes aistack routes by."""

from __future__ import annotations

from ..languages import normalize_language


def primary_language(tag: str) -> str:
    """The lower-case primary subtag: `en-US` -> `en`."""
    return tag.strip().replace("_", "-").split("-", 1)[0].lower()


def language_hint(tag: str | None) -> str | None:
    """A speech-to-text hint, or None to detect; a tag whose language is no ISO 639-1 code is a 400."""
    return normalize_language(primary_language(tag)) if tag else None
