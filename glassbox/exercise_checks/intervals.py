"""Confidence intervals for a rate, shared by the checks of chapters 08 and 09: the Wilson interval (the
reference), the Wald interval (the usual mistake) and a check that says which one a learner computed."""

from __future__ import annotations

import math
from collections.abc import Sequence

from glassbox.exercise_checks.feedback import close_number, fail

__all__ = ["check_interval", "wald_interval", "wilson_interval"]


def wilson_interval(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval for ``k`` successes out of ``n`` trials (reference)."""
    if n <= 0:
        raise ValueError("the Wilson interval needs at least one trial")
    p = k / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def wald_interval(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wald interval p ± z·sqrt(p(1-p)/n), the usual mistake: too narrow near 0 and 1; it can leave [0, 1]."""
    p = k / n
    half = z * math.sqrt(p * (1 - p) / n)
    return p - half, p + half


def check_interval(low: float, high: float, ref: tuple[float, float], where: str,
                   mistakes: Sequence[tuple[tuple[float, float], str]]) -> None:
    """Fail unless (low, high) is the Wilson interval ``ref``, naming the mistake whose interval it is."""
    if close_number(low, ref[0]) and close_number(high, ref[1]):
        return
    head = f"Your interval {where} is [{low:.4f}, {high:.4f}]; the Wilson interval is [{ref[0]:.4f}, {ref[1]:.4f}]."
    for (mistake_low, mistake_high), hint in mistakes:
        if close_number(low, mistake_low) and close_number(high, mistake_high):
            fail(head, hint)
    fail(head, "centre = (p + z²/2n) / (1 + z²/n); half-width = z·sqrt(p(1-p)/n + z²/4n²) / (1 + z²/n).")
