"""Repeated timings reduced to median, min and max: the only summary the benchmark reports."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Samples:
    """Seconds (or any positive quantity) of repeated runs of one thing."""

    values: list[float] = field(default_factory=list)

    def add(self, value: float) -> None:
        self.values.append(float(value))

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    def to_json(self) -> dict[str, Any]:
        return {
            "median": self.median,
            "min": min(self.values),
            "max": max(self.values),
            "runs": len(self.values),
            "values": self.values,
        }


def time_calls(fn: Callable[[], object], warmup: int, runs: int) -> Samples:
    """Run ``fn`` ``warmup`` times untimed, then ``runs`` times timed (seconds per call)."""
    for _ in range(warmup):
        fn()
    out = Samples()
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        out.add(time.perf_counter() - t0)
    return out
