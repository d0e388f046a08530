"""Where results will be written, checked before any sampling so that a bad path never costs the run.

The checks are what the write will need: a name the OS accepts (no NUL byte, components and whole path within
the file system's limits), a parent that is (or can become) a folder, and write permission on the first folder
that exists, tried by creating (and removing) a hidden file there: ``os.access`` alone says yes on pseudo file
systems such as /proc, which then refuse the file. They cannot rule out a disk that fills up.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from latent_ddpm.errors import CLIError


def check_output_file(path: Path, flag: str, suffix: str | None = None) -> Path:
    """``path`` can be created or overwritten as a file (and its missing parent folders created)."""
    _check_name(path, flag)
    if suffix is not None and path.suffix.lower() != suffix:
        raise CLIError(f"{flag} must name a {suffix} file, got {path}")
    if path.is_dir():
        raise CLIError(f"{flag} {path} is a folder; give a file name, e.g. {path / ('out' + (suffix or ''))}")
    if path.exists() and not path.is_file():
        raise CLIError(f"{flag} {path} exists and is not a regular file")
    if path.exists() and not os.access(path, os.W_OK):
        raise CLIError(f"{flag} {path} exists and is not writable")
    _check_parent(path.parent, path, flag)
    return path


def check_output_dir(path: Path, flag: str) -> Path:
    """``path`` is a writable folder, or one that can be created."""
    _check_name(path, flag)
    if path.exists():
        if not path.is_dir():
            raise CLIError(f"{flag} {path} exists and is not a folder")
        if not _can_create_in(path):
            raise CLIError(f"{flag} {path} is not writable{_read_only_hint(path)}")
        return path
    _check_parent(path.parent, path, flag)
    return path


def _check_name(path: Path, flag: str) -> None:
    text = os.fspath(path)
    if "\0" in text:
        raise CLIError(f"{flag} contains a NUL byte: {text!r}")
    if not text:
        raise CLIError(f"{flag} is empty")
    anchor = _existing_ancestor(path.absolute())
    name_max = _pathconf(anchor, "PC_NAME_MAX", 255)
    path_max = _pathconf(anchor, "PC_PATH_MAX", 4096)
    for part in path.parts:
        if len(os.fsencode(part)) > name_max:
            raise CLIError(
                f"{flag}: the name {part[:40]}... is {len(os.fsencode(part))} bytes; this file system allows "
                f"{name_max}"
            )
    if len(os.fsencode(path.absolute())) >= path_max:
        raise CLIError(
            f"{flag}: the path is {len(os.fsencode(path.absolute()))} bytes; the limit is {path_max}"
        )


def _check_parent(parent: Path, path: Path, flag: str) -> None:
    """The nearest existing ancestor of ``path`` must be a writable folder (missing ones get created)."""
    anchor = _existing_ancestor(parent.absolute())
    if not anchor.is_dir():
        raise CLIError(f"{flag} {path}: {anchor} is a file, not a folder")
    if not _can_create_in(anchor):
        raise CLIError(f"{flag} {path}: cannot write in {anchor}{_read_only_hint(anchor)}")


def _can_create_in(folder: Path) -> bool:
    if not os.access(folder, os.W_OK | os.X_OK):
        return False
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".latent-ddpm-probe-"):
            return True
    except OSError:
        return False


def _existing_ancestor(path: Path) -> Path:
    for candidate in (path, *path.parents):
        if os.path.lexists(candidate):
            return candidate
    return Path(path.anchor or ".")


def _read_only_hint(path: Path) -> str:
    try:
        if os.statvfs(path).f_flag & os.ST_RDONLY:
            return " (a read-only file system)"
    except OSError:
        pass
    return " (permission denied)"


def _pathconf(path: Path, name: str, default: int) -> int:
    try:
        return os.pathconf(path if path.is_dir() else path.parent, name)
    except (OSError, ValueError):
        return default
