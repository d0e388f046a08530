"""``engines/`` as the runtime sees it: plans are read and checked, never written.

A plan is loaded only if the manifest lists it, its bytes are the ones the manifest recorded, and it was built
for this TensorRT, this GPU and the bundle's graph (``tensorrt_cache``). Otherwise loading stops with a
BundleError that says why, field by field, and gives the exact ``latent-ddpm build-engines`` command that
rebuilds it with the settings it was built with. Building takes TensorRT's builder, minutes of GPU time and a
writable bundle: that is the export stage's job (``latent_ddpm.export.tensorrt_builder``), never a side effect
of loading. The builder checks its plans with ``plan_status`` too, so the two agree on what is stale.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from latent_ddpm.errors import BundleError
from latent_ddpm.runtime.backends.tensorrt_cache import (
    Environment,
    environment_fields,
    runnable_fields,
    stale_reason,
)
from latent_ddpm.runtime.backends.tensorrt_manifest import (
    BuildSettings,
    EngineRecord,
    Manifest,
    engines_dir,
    plan_file,
    read_manifest,
    rebuild_command,
)
from latent_ddpm.runtime.bundle import ENGINES_DIR, Bundle, ModelFile


def plan_status(
    directory: Path, role: str, onnx_file: str, record: EngineRecord | None, expected: Mapping[str, Any]
) -> tuple[bytes | None, str | None]:
    """The plan's bytes (None when the file is absent) and why it cannot be used as it is (None when it can)."""
    path = Path(directory) / (record.file if record else plan_file(role))
    data = path.read_bytes() if path.is_file() else None
    digest = hashlib.sha256(data).hexdigest() if data is not None else None
    return data, stale_reason(f"{ENGINES_DIR}/{plan_file(role)}", onnx_file, record, expected, digest)


class Plans:
    """The plans of one bundle, checked against this TensorRT and GPU (``env``); read once, never written."""

    def __init__(self, bundle: Bundle, env: Environment) -> None:
        self.bundle, self.env = bundle, env
        self.dir = engines_dir(bundle.root)
        self.manifest: Manifest | None = None
        self.problem: str | None = None
        try:
            self.manifest = read_manifest(self.dir)
        except BundleError as exc:
            self.problem = str(exc)

    @property
    def settings(self) -> BuildSettings:
        """The settings the plans were built with (build-engines' defaults when there is no readable manifest)."""
        return self.manifest.settings if self.manifest is not None else BuildSettings()

    def command(self, *, force: bool = False) -> str:
        """The exact ``latent-ddpm build-engines`` command that rebuilds these plans as they were built."""
        return rebuild_command(self.bundle.root, self.settings, force=force)

    def load(self, model: ModelFile) -> tuple[EngineRecord, bytes]:
        """The manifest record and bytes of ``model``'s plan; BundleError (with the command) if it is stale."""
        if self.problem is not None:
            raise BundleError(f"{self.problem}; rebuild the engines with: {self.command()}")
        record = self.manifest.engines.get(model.role) if self.manifest is not None else None
        here = environment_fields(
            onnx_sha256=model.sha256, external_data_sha256=model.external_data_sha256, environment=self.env
        )
        expected = runnable_fields(record.fields if record is not None else {}, here)
        data, reason = plan_status(self.dir, model.role, model.path.name, record, expected)
        if reason is not None:
            verb = "build" if record is None else "rebuild"
            raise BundleError(f"{reason}; {verb} it with: {self.command()}")
        assert record is not None and data is not None  # no reason: the plan is listed and present
        return record, data
