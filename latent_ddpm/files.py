"""Publishing outputs atomically, and never over something latent-ddpm did not write.

Every writer of the project (export, quantize, training outputs and checkpoints, the evaluation sweep,
small JSON files) goes through here, so the rules hold everywhere:

* An output is built in a hidden temporary sibling (same filesystem) and renamed into place, so readers see
  the old output or the new one, never half of one. The temporary is removed on every failure, Ctrl-C
  included. An existing output is moved aside only once the new one is complete, and put back if the swap
  fails.
* Replacing an existing folder (``force=True``, the CLI's ``--force``) is allowed only for a folder that
  ``ours`` recognises (a bundle, a training output) or an empty one. Never the current folder (or one
  holding it), the home folder, the filesystem root, the source being read, a folder holding the source,
  or a folder inside it. Each refusal is an ``OutputError`` naming the folder, raised before any work.
* Temporaries are named ``.NAME.KIND-HOST-PID-TOKEN``: the writer's host (hashed) and process id. A process
  killed with SIGKILL cannot clean up, so the next publish to the same output removes the temporaries whose
  writer is provably gone (same host, that pid no longer running); another live writer's are left alone.
  A kill between the two renames of a swap leaves the previous output in a stale ``old`` temporary; that
  is moved back, not deleted.

Use ``check_output`` before the slow work (to refuse early), then ``publish_dir`` around the writing::

    out = check_output(out, force=force, ours=is_bundle, what="latent-ddpm bundle", sources=[src])
    ...  # slow work that needs no output
    with publish_dir(out, force=force, ours=is_bundle, what="latent-ddpm bundle", sources=[src]) as tmp:
        write_everything_into(tmp)

and ``atomic_write(path, data)`` for a single file.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import secrets
import shutil
import socket
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from latent_ddpm.errors import LatentDDPMError

Ours = Callable[[Path], bool]  # does this existing folder hold an output this project wrote?
_MARKER_BYTES = 1 << 20  # a marker file is small; a huge one is not ours
_NAME_CHARS = 100  # of the output's name kept in a temporary's name (file names end at 255 bytes)
_TEMP = re.compile(r"^\.(?P<name>.+)\.(?P<kind>tmp|old)-(?P<host>[0-9a-f]{8})-(?P<pid>\d+)-[0-9a-f]{8}$")


class OutputError(LatentDDPMError):
    """An output path that cannot be written without losing something (or cannot be written at all)."""


def json_marker(file: str, key: str, *values: str) -> Ours:
    """``ours`` for folders marked by a JSON file whose ``key`` is one of ``values`` (bundle.json's format)."""

    def ours(folder: Path) -> bool:
        try:
            with open(folder / file, "rb") as f:
                data = json.loads(f.read(_MARKER_BYTES))
        except (OSError, ValueError, RecursionError):
            return False
        return isinstance(data, dict) and data.get(key) in values

    return ours


def check_output(
    out: str | Path, *, force: bool, ours: Ours, what: str, sources: Iterable[str | Path] = ()
) -> Path:
    """Refuse an output folder that publishing it could not safely create or replace; returns it resolved.

    ``what`` names the kind of output in messages ("latent-ddpm bundle"); ``sources`` are folders the
    writer reads, which the output must neither be, contain, nor lie inside.
    """
    out = Path(out).expanduser().resolve()
    cwd, home = Path.cwd().resolve(), Path.home().resolve()
    if out.parent == out:
        raise OutputError(f"{out} is the filesystem root; choose a new folder for the {what}")
    if cwd.is_relative_to(out):
        here = "the current folder" if cwd == out else f"a folder holding the current folder ({cwd})"
        raise OutputError(f"{out} is {here}; choose a new folder for the {what}")
    if out == home:
        raise OutputError(f"{out} is the home folder; choose a new folder for the {what}")
    for source in sources:
        src = Path(source).expanduser().resolve()
        if out == src:
            raise OutputError(f"{out} is the source itself; choose another folder for the {what}")
        if src.is_relative_to(out):
            raise OutputError(f"{out} holds the source {src}; replacing it would delete the source")
        if out.is_relative_to(src):
            raise OutputError(f"{out} is inside the source {src}; choose a folder outside it")
    _check_replaceable(out, force, ours, what)
    _check_parent(out)
    return out


def _check_replaceable(out: Path, force: bool, ours: Ours, what: str) -> None:
    if not out.exists():
        return
    if not out.is_dir():
        raise OutputError(f"{out} exists and is not a folder; choose a new folder for the {what}")
    if any(out.iterdir()) and not ours(out):
        raise OutputError(
            f"{out} is not empty and is not a {what}; latent-ddpm replaces only its own outputs"
            f"{', even with --force' if force else ''}: choose a new folder"
        )
    if not force:
        raise OutputError(f"{out} already exists; pass --force to replace it")


def _check_parent(out: Path) -> None:
    """The nearest existing ancestor must be a folder we can create entries in."""
    parent = out.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise OutputError(f"cannot write {out}: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"cannot write {out}: {parent} is not writable (permissions or read-only)")


@contextlib.contextmanager
def publish_dir(
    out: str | Path,
    *,
    force: bool = False,
    ours: Ours,
    what: str,
    sources: Iterable[str | Path] = (),
) -> Iterator[Path]:
    """Yield an empty hidden folder beside ``out``; when the block ends without error, swap it in as ``out``.

    Checks ``out`` as ``check_output`` does (again at the swap, in case it changed meanwhile) and removes
    provably stale temporaries of ``out`` first. On any exception the temporary is removed and an existing
    ``out`` is untouched.
    """
    sources = list(sources)
    out = check_output(out, force=force, ours=ours, what=what, sources=sources)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create {out.parent}: {exc.strerror or exc}") from None
    remove_stale_temporaries(out.parent, out.name)
    tmp = _temp_path(out, "tmp")
    tmp.mkdir()  # default permissions, unlike tempfile.mkdtemp's 0700: the output is meant to be shared
    try:
        yield tmp
        _check_replaceable(out, force, ours, what)
        _swap_in(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def atomic_write(path: str | Path, data: bytes | str) -> Path:
    """Write a file through a hidden temporary sibling and a rename (fsync'd first), so it is never partial."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path.parent, path.name)
    tmp = _temp_path(path, "tmp")
    payload = data.encode("utf-8") if isinstance(data, str) else data
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # umask applies, as for any file
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def remove_stale_temporaries(folder: str | Path, name: str | None = None) -> list[Path]:
    """Remove the temporaries in ``folder`` (of the output ``name`` only, if given) whose writer is provably
    gone; returns what was removed.

    A stale ``old`` temporary holds the previous output of a swap killed between its two renames: that
    output is moved back into place if nothing took its place, never deleted with the temporary.
    """
    folder = Path(folder)
    removed: list[Path] = []
    if not folder.is_dir():
        return removed
    for path in folder.iterdir():
        m = _TEMP.match(path.name)
        if not m or (name is not None and m["name"] != name[:_NAME_CHARS]):
            continue
        if not _writer_is_gone(m["host"], int(m["pid"])):
            continue
        if m["kind"] == "old" and path.is_dir() and not path.is_symlink():
            for previous in path.iterdir():
                if not (folder / previous.name).exists():
                    os.replace(previous, folder / previous.name)
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed.append(path)
    return removed


def _swap_in(tmp: Path, out: Path) -> None:
    """Rename ``tmp`` to ``out``; an existing ``out`` is removed only once the new one is in place."""
    if not out.exists():
        os.replace(tmp, out)
        return
    old = _temp_path(out, "old")
    old.mkdir()
    try:
        os.replace(out, old / out.name)
        os.replace(tmp, out)
    except BaseException:  # checked on disk, not with flags: Ctrl-C can land between a rename and its flag
        if not out.exists() and (old / out.name).exists():
            os.replace(old / out.name, out)  # put the previous output back
        if out.exists():  # the previous output is back, or the new one is in place: `old` is not needed
            shutil.rmtree(old, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _temp_path(out: Path, kind: str) -> Path:
    return out.with_name(
        f".{out.name[:_NAME_CHARS]}.{kind}-{_host_tag()}-{os.getpid()}-{secrets.token_hex(4)}"
    )


def _host_tag() -> str:
    return hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]


def _writer_is_gone(host: str, pid: int) -> bool:
    """True only when the writer provably no longer runs: this host, and no process with that pid."""
    if host != _host_tag() or os.name != "posix" or pid == os.getpid():
        return False  # another machine (shared filesystem), or no safe liveness probe: leave it
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, owned by another user
        return False
    return False
