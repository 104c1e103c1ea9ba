"""Comparing transcripts word by word (tests and benchmarks/asr.py)."""

from __future__ import annotations


def word_error_rate(reference: list[str], hypothesis: list[str]) -> float:
    """Word-level edit distance (substitutions, insertions, deletions) over the reference's length."""
    previous = list(range(len(hypothesis) + 1))
    for i, ref in enumerate(reference, 1):
        current = [i]
        for j, hyp in enumerate(hypothesis, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ref != hyp)))
        previous = current
    return previous[-1] / max(1, len(reference))
