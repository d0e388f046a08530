"""Turn sweep rows into the bundle's recommended ``defaults`` (guidance scale, then sampler and steps).

Rules, so the choice is repeatable rather than eyeballed:
- guidance: the lowest cFID among scales whose conditional accuracy meets the data set's goal (evaluate/
  judged.py: 97% for digits, 80% for emoji groups); if none does, the
  lowest cFID among scales within ACCURACY_SLACK of the most accurate (guidance trades variety, which cFID
  rewards, for fidelity to the class);
- sampler and steps: among rows measured on the most images (cFID depends on the count) whose accuracy is
  within ACCURACY_SLACK of the best, the fewest steps whose cFID is within CFID_TOLERANCE of their best.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

CFID_TOLERANCE = 0.10
ACCURACY_SLACK = 0.01  # ~1.5 standard errors of an accuracy near 95% measured on 1,000 images

Row = dict[str, Any]  # a Report as JSON


def pick_guidance(rows: Sequence[Row], accuracy_goal: float) -> Row:
    if not rows:
        raise ValueError("no guidance rows to choose from")
    accs = [r["accuracy"] for r in rows if r["accuracy"] is not None]
    if not accs:  # unconditional
        return min(rows, key=lambda r: r["cfid"])
    good = [r for r in rows if r["accuracy"] is not None and r["accuracy"] >= accuracy_goal]
    if not good:
        good = [r for r in rows if r["accuracy"] is not None and r["accuracy"] >= max(accs) - ACCURACY_SLACK]
    return min(good, key=lambda r: (r["cfid"], r["guidance_scale"]))


def pick_steps(rows: Sequence[Row]) -> Row:
    """Among rows with the most images (so cFIDs are comparable), the cheapest good enough one."""
    if not rows:
        raise ValueError("no sampler rows to choose from")
    n = max(r["num_images"] for r in rows)
    same = [r for r in rows if r["num_images"] == n]
    accs = [r["accuracy"] for r in same if r["accuracy"] is not None]
    if accs:
        same = [r for r in same if r["accuracy"] >= max(accs) - ACCURACY_SLACK]
    best_cfid = min(r["cfid"] for r in same)
    ok = [r for r in same if r["cfid"] <= best_cfid * (1 + CFID_TOLERANCE)]
    return min(ok, key=lambda r: (r["steps"], r["seconds_per_image"]))
