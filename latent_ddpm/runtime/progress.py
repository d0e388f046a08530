"""The project's one progress bar (the runtime may not have tqdm): sampling, evaluation, export and training.

On a terminal it is one line on stderr, redrawn in place with ``\\r``. In a log (stderr not a TTY: CI, a
file, ``docker logs``, a job scheduler) carriage returns would pile up into one unreadable line, so there it
prints a whole line at most every ``interval`` seconds, and the last one.
"""

from __future__ import annotations

import sys
import time
from types import TracebackType
from typing import TextIO

TTY_REDRAW_S = 0.1  # a terminal redraw at most this often
LOG_INTERVAL_S = 10.0  # a log line at most this often


class ProgressBar:
    def __init__(
        self,
        total: int,
        desc: str = "",
        disable: bool = False,
        width: int = 30,
        initial: int = 0,
        stream: TextIO | None = None,
        interval: float | None = None,
    ) -> None:
        self.total, self.desc, self.disable, self.width = max(total, 1), desc, disable, width
        self.n = self._start_n = initial
        self.postfix = ""
        self.stream = stream if stream is not None else sys.stderr
        isatty = getattr(self.stream, "isatty", None)
        self.tty = bool(isatty and isatty())
        self.interval = interval if interval is not None else TTY_REDRAW_S if self.tty else LOG_INTERVAL_S
        self._start = time.perf_counter()
        self._last_draw: float | None = None
        self._drawn_n: int | None = None

    def set_description(self, desc: str) -> None:
        self.desc = desc

    def set_postfix(self, **values: object) -> None:
        """Figures shown after the count (e.g. the training loss), from the next line drawn on."""
        self.postfix = " ".join(f"{k}={v}" for k, v in values.items())

    def update(self, n: int = 1) -> None:
        self.n += n
        if self.disable:
            return
        now = time.perf_counter()
        if self._last_draw is None or now - self._last_draw >= self.interval or self.n >= self.total:
            self._draw(now)

    def _draw(self, now: float) -> None:
        done = min(self.n / self.total, 1.0)
        filled = int(done * self.width)
        elapsed = now - self._start
        rate = (self.n - self._start_n) / elapsed if elapsed > 0 else 0.0
        line = (
            f"{self.desc} |{'#' * filled}{'.' * (self.width - filled)}| {self.n}/{self.total} "
            f"[{elapsed:.0f}s, {rate:.2f} it/s]{' ' + self.postfix if self.postfix else ''}"
        )
        # On a terminal: back to the line's start, and blank out what a longer previous line left behind.
        self.stream.write(f"\r{line}\x1b[K" if self.tty else f"{line}\n")
        self.stream.flush()
        self._last_draw, self._drawn_n = now, self.n

    def clear(self) -> None:
        """Blank the terminal's bar line so that a message can take it; the next update draws the bar again."""
        if self.tty and self._drawn_n is not None and not self.disable:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self._last_draw = None

    def close(self) -> None:
        """Draws the final count if it was not drawn yet; ends the terminal's line."""
        if self.disable or self._drawn_n is None and self.n == self._start_n:
            return
        if self._drawn_n != self.n:
            self._draw(time.perf_counter())
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
