"""Writing ``engines/``: plans, the timing cache and ``manifest.json``, each through a temporary file and a rename.

A reader (the runtime, another build) sees the old file or the new one, never half of one, and a crash
mid-build leaves the previous engines usable. Only the build writes here; the runtime reads the manifest
through ``latent_ddpm.runtime.backends.tensorrt_manifest``.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from latent_ddpm.runtime.backends.tensorrt_manifest import MANIFEST_FILE, Manifest


def write_manifest(directory: Path, manifest: Manifest) -> Path:
    path = Path(directory) / MANIFEST_FILE
    atomic_write(path, (json.dumps(manifest.to_json(), indent=2, sort_keys=False) + "\n").encode("utf-8"))
    return path


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary sibling and a rename (durable: fsync before rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
