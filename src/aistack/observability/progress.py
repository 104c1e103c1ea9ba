"""Progress for long work (joins, pulls): a bar on a terminal, a few log lines otherwise."""

from __future__ import annotations

import logging
import sys
from types import TracebackType

from tqdm import tqdm

log = logging.getLogger("aistack.progress")


class Progress:
    """Counts bytes towards `total`; on a terminal draws a bar, elsewhere logs every 25%."""

    def __init__(self, total: int, description: str) -> None:
        self.total = max(total, 1)
        self.description = description
        self.done = 0
        self._next_log_quarter = 1
        self._bar = (
            tqdm(total=total, desc=description, unit="B", unit_scale=True, unit_divisor=1024, leave=False)
            if sys.stderr.isatty()
            else None
        )
        if self._bar is None:
            log.info("%s: 0%% of %.1f MB", description, total / 1e6)

    def update(self, amount: int) -> None:
        self.done += amount
        if self._bar is not None:
            self._bar.update(amount)
            return
        while self._next_log_quarter <= 4 and self.done * 4 >= self.total * self._next_log_quarter:
            log.info("%s: %d%%", self.description, self._next_log_quarter * 25)
            self._next_log_quarter += 1

    def __enter__(self) -> Progress:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._bar is not None:
            self._bar.close()
