"""``engines/manifest.json``, read side: which plan was built from what, and with which build settings.

The runtime only reads this file; ``latent_ddpm.export.tensorrt_write`` writes it. The settings a build was
asked for are part of the format because a stale plan is refused with the exact command that rebuilds it
as it was built (``rebuild_command``), and that command is only exact if it repeats those settings.
"""

from __future__ import annotations

import json
import math
import shlex
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from latent_ddpm.errors import BundleError, InputError
from latent_ddpm.runtime.bundle import ENGINES_DIR

MANIFEST_FILE = "manifest.json"
TIMING_CACHE_FILE = "timing.cache"
MANIFEST_FORMAT = "latent-ddpm-engines"
MANIFEST_VERSION = 1
ENGINE_PRECISIONS = ("fp32", "fp16", "bf16")


def plan_file(role: str) -> str:
    return f"{role}.plan"


def engines_dir(bundle_root: Path) -> Path:
    return Path(bundle_root) / ENGINES_DIR


@dataclass(frozen=True)
class BuildSettings:
    """The user's choices for ``latent-ddpm build-engines`` (one flag each); the manifest keeps them."""

    precision: str = "fp16"
    min_batch: int = 1
    opt_batch: int = 8
    max_batch: int = 16
    workspace_gb: float | None = None  # None: TensorRT's default (the GPU's memory)

    def __post_init__(self) -> None:
        if self.precision not in ENGINE_PRECISIONS:
            raise InputError(f"precision {self.precision!r} is not one of {', '.join(ENGINE_PRECISIONS)}")
        for name in ("min_batch", "opt_batch", "max_batch"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InputError(f"{name} must be an integer >= 1, got {value!r}")
        if not self.min_batch <= self.opt_batch <= self.max_batch:
            raise InputError(
                f"batch sizes must satisfy min <= opt <= max, got min_batch={self.min_batch}, "
                f"opt_batch={self.opt_batch}, max_batch={self.max_batch}"
            )
        if self.workspace_gb is not None and not (
            isinstance(self.workspace_gb, (int, float))
            and math.isfinite(self.workspace_gb)
            and self.workspace_gb > 0
        ):
            raise InputError(f"workspace_gb must be a positive number of GiB, got {self.workspace_gb!r}")

    @property
    def workspace_bytes(self) -> int | None:
        return None if self.workspace_gb is None else int(self.workspace_gb * (1 << 30))

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def rebuild_command(bundle_root: Path, settings: BuildSettings, *, force: bool = False) -> str:
    """The ``latent-ddpm build-engines`` command line that builds this bundle's plans with ``settings``."""
    words = ["latent-ddpm", "build-engines", str(bundle_root)]
    for name, value in asdict(settings).items():
        if value is not None:
            words += [f"--{name.replace('_', '-')}", str(value)]
    return shlex.join(words + (["--force"] if force else []))


@dataclass(frozen=True)
class EngineRecord:
    """One plan: its file, its cache key and the fields the key was computed from."""

    file: str
    key: str
    fields: Mapping[str, Any]
    plan_sha256: str
    plan_bytes: int
    build_seconds: float
    built_at: str

    def to_json(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "key": self.key,
            "fields": dict(self.fields),
            "plan_sha256": self.plan_sha256,
            "plan_bytes": self.plan_bytes,
            "build_seconds": round(self.build_seconds, 3),
            "built_at": self.built_at,
        }


@dataclass
class Manifest:
    settings: BuildSettings
    engines: dict[str, EngineRecord] = field(default_factory=dict)
    # The environment the timing cache was measured in; a cache from another GPU or TensorRT is dropped.
    timing_cache: dict[str, Any] | None = None
    created_by: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "format": MANIFEST_FORMAT,
            "format_version": MANIFEST_VERSION,
            "created_by": self.created_by,
            "settings": self.settings.to_json(),
            "timing_cache": self.timing_cache,
            "engines": {role: rec.to_json() for role, rec in sorted(self.engines.items())},
        }


def read_manifest(directory: Path) -> Manifest | None:
    """The manifest in ``directory`` (an engines folder), None if there is none; BundleError if unreadable."""
    path = Path(directory) / MANIFEST_FILE
    if not path.is_file():
        return None
    where = f"{ENGINES_DIR}/{MANIFEST_FILE}"
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleError(f"{where}: not valid JSON ({exc})") from None
    return parse_manifest(raw, where)


def parse_manifest(raw: Any, where: str = MANIFEST_FILE) -> Manifest:
    obj = _obj(raw, where)
    if obj.get("format") != MANIFEST_FORMAT:
        raise BundleError(f"{where}: 'format' is {obj.get('format')!r}, expected {MANIFEST_FORMAT!r}")
    if obj.get("format_version") != MANIFEST_VERSION:
        raise BundleError(f"{where}: format_version {obj.get('format_version')!r} is not {MANIFEST_VERSION}")
    settings_raw = _obj(_key(obj, "settings", where), f"{where}: settings")
    try:
        settings = BuildSettings(**settings_raw)
    except (TypeError, InputError) as exc:
        raise BundleError(f"{where}: bad settings {settings_raw}: {exc}") from None
    timing = obj.get("timing_cache")
    if timing is not None:
        timing = _obj(timing, f"{where}: timing_cache")
    engines = {
        str(role): _record(rec, f"{where}: engines.{role}")
        for role, rec in _obj(_key(obj, "engines", where), f"{where}: engines").items()
    }
    return Manifest(
        settings=settings, engines=engines, timing_cache=timing, created_by=str(obj.get("created_by", ""))
    )


def _record(raw: Any, where: str) -> EngineRecord:
    obj = _obj(raw, where)
    types: dict[str, type | tuple[type, ...]] = {
        "file": str,
        "key": str,
        "fields": dict,
        "plan_sha256": str,
        "plan_bytes": int,
        "build_seconds": (int, float),
        "built_at": str,
    }
    for key, typ in types.items():
        value = _key(obj, key, where)
        if isinstance(value, bool) or not isinstance(value, typ):
            raise BundleError(f"{where}: {key!r} has the wrong type ({value!r})")
    name = obj["file"]
    if "/" in name or "\\" in name or name.startswith("."):
        raise BundleError(f"{where}: file {name!r} must be a plain file name inside {ENGINES_DIR}/")
    return EngineRecord(**{k: obj[k] for k in types})


def _obj(raw: Any, where: str) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise BundleError(f"{where}: expected a JSON object, got {type(raw).__name__}")
    return raw


def _key(obj: Mapping[str, Any], key: str, where: str) -> Any:
    if key not in obj:
        raise BundleError(f"{where}: missing key {key!r}")
    return obj[key]
