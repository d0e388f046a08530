"""Where export and quantize write: a bundle folder, published atomically, that may replace only a bundle.

A folder is a bundle when its bundle.json says ``"format": "latent-ddpm-bundle"``: only then may
``--force`` replace it (latent_ddpm/files.py has the rules and the atomic swap).
"""

from __future__ import annotations

from collections.abc import Iterable
from contextlib import AbstractContextManager
from pathlib import Path

from latent_ddpm.files import check_output, json_marker, publish_dir
from latent_ddpm.runtime.bundle import BUNDLE_FILE, FORMAT_NAME

WHAT = "latent-ddpm bundle"
is_bundle = json_marker(BUNDLE_FILE, "format", FORMAT_NAME)


def check_bundle_output(out: str | Path, *, force: bool, sources: Iterable[str | Path]) -> Path:
    """Refuse, before any work, an OUT that writing a bundle there would lose something in; returns it resolved."""
    return check_output(out, force=force, ours=is_bundle, what=WHAT, sources=sources)


def publish_bundle(
    out: str | Path, *, force: bool, sources: Iterable[str | Path]
) -> AbstractContextManager[Path]:
    """``with publish_bundle(out, ...) as tmp:`` write the bundle into ``tmp``; it becomes OUT at the end."""
    return publish_dir(out, force=force, ours=is_bundle, what=WHAT, sources=sources)
