"""A clock the test moves, standing for the `time` module of the module under test.

A test that is about durations (a TTL, a keep-alive, how long a slot was held) moves this clock
instead of sleeping, so the outcome never depends on how busy the machine is.
"""

from __future__ import annotations

from types import ModuleType

import pytest

# `time()` is `now` past this epoch, so wall-clock stamps look like real ones (2023-11-14).
EPOCH_S = 1_700_000_000.0


class SteppedClock:
    """`monotonic()`, `perf_counter()` and `time()` move only when the test adds to `now`.

    `now` starts at a round number so that steps which are binary fractions (0.25, 0.125) add up
    exactly and a test can step a clock onto a boundary.
    """

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now

    def perf_counter(self) -> float:
        return self.now

    def time(self) -> float:
        return EPOCH_S + self.now


def stepped_clock_fixture(module: ModuleType):
    """A `clock` fixture: a SteppedClock standing for `module.time` for the length of one test."""

    @pytest.fixture
    def clock(monkeypatch: pytest.MonkeyPatch) -> SteppedClock:
        stepped = SteppedClock()
        monkeypatch.setattr(module, "time", stepped)
        return stepped

    return clock
