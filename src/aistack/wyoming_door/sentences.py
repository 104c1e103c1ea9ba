"""Text that arrives in pieces (an LLM's answer as it is written), cut into sentences as soon as each is whole."""

from __future__ import annotations

import re

# A sentence is whole at its final punctuation (and any closing quotes or brackets) once whitespace
# follows, since "3." may still become "3.14"; CJK full stops end it at once, and so does a line break.
_BOUNDARY = re.compile(r"[.!?…]+[\"'”’)\]»]*(?=\s)|[。！？]+[」』”’)\]]*|\n")


class SentenceBuffer:
    """`add` each piece of text, getting back the sentences it completed; `finish` gives the rest.

    No piece is longer than `max_chars` (what one synthesis takes): a longer sentence, or a longer run
    of text with no sentence end yet, is cut at its last space before that length (or at the length
    itself), so what is held back stays bounded too.
    """

    def __init__(self, max_chars: int) -> None:
        self._max_chars = max_chars
        self._pending = ""

    def add(self, text: str) -> list[str]:
        self._pending += text
        sentences: list[str] = []
        while (found := _BOUNDARY.search(self._pending)) is not None:
            whole, self._pending = self._pending[:found.end()], self._pending[found.end():]
            sentences += self._fitting(whole, keep_last=False)
        if len(self._pending) > self._max_chars:
            *cut, self._pending = self._fitting(self._pending, keep_last=True)
            sentences += cut
        return sentences

    def finish(self) -> str:
        rest, self._pending = self._pending.strip(), ""
        return rest

    def _fitting(self, text: str, keep_last: bool) -> list[str]:
        """`text` in pieces of at most `max_chars`; with `keep_last` the last piece is left as it is
        (unstripped, even if empty), to be continued."""
        pieces: list[str] = []
        while len(text := text.lstrip()) > self._max_chars:
            space = text.rfind(" ", 0, self._max_chars)
            end = space if space > 0 else self._max_chars
            pieces.append(text[:end])
            text = text[end:]
        pieces.append(text)
        done = pieces[:-1] if keep_last else pieces
        kept = [piece.strip() for piece in done if piece.strip()]
        return [*kept, pieces[-1]] if keep_last else kept
