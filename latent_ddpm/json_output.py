"""``--json`` for scripts: one JSON document on stdout, and everything meant for a person on stderr.

The commands that write outputs (sample, export, quantize, build-engines) take ``--json``. While such a
command runs, stdout is pointed at stderr, both Python's ``sys.stdout`` and file descriptor 1 (which native
libraries write to), so that nothing but the document reaches stdout. The document is printed only when the
command succeeds: a failure prints its one-line error on stderr, exits 2 and prints no document.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

JSON_HELP = (
    "print one JSON document on stdout (what was written, seeds, timings, gate figures) for scripts; "
    "messages go to stderr"
)


def add_json_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help=JSON_HELP)


def json_command(
    command: str, body: Callable[[argparse.Namespace], Mapping[str, Any]]
) -> Callable[[argparse.Namespace], int]:
    """A command's ``run(args)``: ``body`` does the work, prints for a person and returns the document's
    contents, which ``--json`` prints on stdout."""

    def run(args: argparse.Namespace) -> int:
        with json_output(command, args.json) as doc:
            doc.update(body(args))
        return 0

    return run


@contextlib.contextmanager
def json_output(command: str, enabled: bool) -> Iterator[dict[str, Any]]:
    """Yield the document for the command to fill; when ``enabled``, print it on stdout if the block succeeds.

    Paths become strings, NumPy scalars and arrays Python numbers and lists, and NaN or Inf ``null`` (JSON
    has no such numbers).
    """
    doc: dict[str, Any] = {"command": command}
    if not enabled:
        yield doc
        return
    with _stdout_to_stderr():
        yield doc
    sys.stdout.write(json.dumps(plain(doc), indent=2, allow_nan=False) + "\n")
    sys.stdout.flush()


def plain(value: Any) -> Any:
    """``value`` as JSON's types: str keys, lists for sequences, None for NaN/Inf, str for paths."""
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "tolist"):  # NumPy scalars and arrays, without importing NumPy here
        return plain(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


@contextlib.contextmanager
def _stdout_to_stderr() -> Iterator[None]:
    sys.stdout.flush()
    saved = None
    try:
        err = sys.stderr.fileno()
        if sys.stdout.fileno() == 1:
            saved = os.dup(1)
            os.dup2(err, 1)
    except (AttributeError, OSError, ValueError):  # a captured stream (tests) has no descriptor
        saved = None
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        sys.stderr.flush()
        if saved is not None:
            os.dup2(saved, 1)
            os.close(saved)
