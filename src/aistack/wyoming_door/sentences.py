"""Text that arrives in pieces (an LLM's answer as it is written), cut into sentences as soon as each is whole."""

from __future__ import annotations

import re

# A sentence is whole at its final punctuation (and any closing quotes or brackets) once whitespace
# follows, since "3." may still become "3.14"; CJK full stops end it at once, and so does a line break.
_BOUNDARY = re.compile(r"[.!?…]+[\"'”’)\]»]*(?=\s)|[。！？]+[」』”’)\]]*|\n")


class SentenceBuffer:
    """`add` each piece of text, getting back the sentences it completed; `finish` gives the rest.

    A run of text longer than `max_chars` with no sentence end is cut at its last space before that
    length (or at the length itself), so what is held back stays bounded and each piece stays speakable.
    """

    def __init__(self, max_chars: int) -> None:
        self._max_chars = max_chars
        self._pending = ""

    def add(self, text: str) -> list[str]:
        self._pending += text
        sentences: list[str] = []
        while (found := _BOUNDARY.search(self._pending)) is not None:
            self._take(found.end(), sentences)
        while len(self._pending) > self._max_chars:
            space = self._pending.rfind(" ", 0, self._max_chars)
            self._take(space if space > 0 else self._max_chars, sentences)
        return sentences

    def finish(self) -> str:
        rest, self._pending = self._pending.strip(), ""
        return rest

    def _take(self, end: int, into: list[str]) -> None:
        sentence, self._pending = self._pending[:end].strip(), self._pending[end:]
        if sentence:
            into.append(sentence)
