"""A dependency-free progress bar (the runtime may not have tqdm): one line on stderr, redrawn in place."""

from __future__ import annotations

import sys
import time
from types import TracebackType


class ProgressBar:
    def __init__(self, total: int, desc: str = "", disable: bool = False, width: int = 30) -> None:
        self.total, self.desc, self.disable, self.width = max(total, 1), desc, disable, width
        self.n = 0
        self._start = time.perf_counter()

    def update(self, n: int = 1) -> None:
        self.n += n
        if self.disable:
            return
        done = min(self.n / self.total, 1.0)
        filled = int(done * self.width)
        elapsed = time.perf_counter() - self._start
        rate = self.n / elapsed if elapsed > 0 else 0.0
        sys.stderr.write(
            f"\r{self.desc} |{'#' * filled}{'.' * (self.width - filled)}| {self.n}/{self.total} {rate:.1f} it/s"
        )
        sys.stderr.flush()

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if not self.disable and self.n:
            sys.stderr.write("\n")
            sys.stderr.flush()
