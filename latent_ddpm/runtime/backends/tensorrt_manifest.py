"""``engines/manifest.json``: which plan was built from what, so a stale plan is recognised before it is loaded.

Every write goes through a temporary file and a rename, so a reader sees the old manifest or the new one,
never half of one, and a crash mid-build leaves the previous engines usable.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from latent_ddpm.errors import BundleError, InputError
from latent_ddpm.runtime.backends.tensorrt_settings import BuildSettings
from latent_ddpm.runtime.bundle import ENGINES_DIR

MANIFEST_FILE = "manifest.json"
TIMING_CACHE_FILE = "timing.cache"
MANIFEST_FORMAT = "latent-ddpm-engines"
MANIFEST_VERSION = 1


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


def engines_dir(bundle_root: Path) -> Path:
    return Path(bundle_root) / ENGINES_DIR


def read_manifest(directory: Path) -> Manifest | None:
    """The manifest in ``directory`` (an engines folder), None if there is none; BundleError if unreadable."""
    path = Path(directory) / MANIFEST_FILE
    if not path.is_file():
        return None
    where = f"{ENGINES_DIR}/{MANIFEST_FILE}"
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleError(
            f"{where}: not valid JSON ({exc}); rebuild with latent-ddpm build-engines --force"
        ) from None
    return parse_manifest(raw, where)


def parse_manifest(raw: Any, where: str = MANIFEST_FILE) -> Manifest:
    obj = _obj(raw, where)
    if obj.get("format") != MANIFEST_FORMAT:
        raise BundleError(f"{where}: 'format' is {obj.get('format')!r}, expected {MANIFEST_FORMAT!r}")
    if obj.get("format_version") != MANIFEST_VERSION:
        raise BundleError(
            f"{where}: format_version {obj.get('format_version')!r} is not {MANIFEST_VERSION}; "
            f"rebuild with latent-ddpm build-engines --force"
        )
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
    types = {
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
