"""Writing ``engines/manifest.json`` through the project's one atomic write (``latent_ddpm.files``).

A reader (the runtime, another build) sees the old file or the new one, never half of one, and a crash
mid-build leaves the previous engines usable. Only the build writes here; the runtime reads the manifest
through ``latent_ddpm.runtime.backends.tensorrt_manifest``.
"""

from __future__ import annotations

import json
from pathlib import Path

from latent_ddpm.files import atomic_write
from latent_ddpm.runtime.backends.tensorrt_manifest import MANIFEST_FILE, Manifest


def write_manifest(directory: Path, manifest: Manifest) -> Path:
    path = Path(directory) / MANIFEST_FILE
    atomic_write(path, (json.dumps(manifest.to_json(), indent=2, sort_keys=False) + "\n").encode("utf-8"))
    return path
