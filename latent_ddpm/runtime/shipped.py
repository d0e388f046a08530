"""The bundles that ship inside the package, and how a command-line ``--bundle`` value finds a bundle.

A ``--bundle`` value (or ``Pipeline.from_bundle`` argument) is a folder when one exists at that path, so a
bundle you exported into ``./digits`` is never shadowed; otherwise a shipped model's name (``digits``,
``emoji``) selects the copy inside the package. Nothing is downloaded: a name that is neither is an error that
lists the shipped names.
"""

from __future__ import annotations

from pathlib import Path

from latent_ddpm.errors import BundleError

DATA_DIR = Path(__file__).resolve().parent.parent / "data"
DEFAULT_MODEL = "digits"
# name -> folder under latent_ddpm/data; a name is listed only when its bundle is in this install.
_CANDIDATES = ("digits", "emoji")


def shipped_models() -> dict[str, Path]:
    """The shipped bundles present in this install, by name."""
    return {name: DATA_DIR / name for name in _CANDIDATES if (DATA_DIR / name / "bundle.json").is_file()}


def shipped_bundle_path(name: str = DEFAULT_MODEL) -> Path:
    """The folder of the shipped bundle ``name``."""
    found = shipped_models()
    if name not in found:
        raise BundleError(
            f"no shipped model named {name!r} in this install (shipped: {', '.join(found) or 'none'})"
        )
    return found[name]


def resolve_bundle(value: str | Path | None) -> Path:
    """A ``--bundle`` value -> a bundle folder: None is the default model, an existing path wins over a name."""
    if value is None:
        return shipped_bundle_path()
    path = Path(value).expanduser()
    try:
        if path.exists():
            return path
    except (OSError, ValueError):  # a name the OS cannot take: load_bundle says so
        return path
    name = str(value)
    found = shipped_models()
    if name in found:
        return found[name]
    if "/" in name or "\x00" in name:  # a path, not a name: load_bundle says what is wrong with it
        return path
    raise BundleError(
        f"bundle directory not found: {path} and no shipped model of that name "
        f"(shipped: {', '.join(found) or 'none'})"
    )
