"""latent_ddpm/files.py on a real filesystem: what publishing may replace, and what it leaves behind.

The commands that use it (export, quantize, train) are tested through the CLI in their own files; here
are the rules themselves, including the cases a command cannot reach on purpose (a kill between the two
renames of a swap, another live writer).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from latent_ddpm.files import (
    _TEMP,
    OutputError,
    _host_tag,
    atomic_write,
    check_output,
    json_marker,
    publish_dir,
    remove_stale_temporaries,
)

OURS = json_marker("marker.json", "format", "ours")
RULES = {"ours": OURS, "what": "test output"}


def _ours(folder: Path, content: str = "old") -> Path:
    folder.mkdir(parents=True)
    (folder / "marker.json").write_text('{"format": "ours"}')
    (folder / "data.txt").write_text(content)
    return folder


def _tree(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): p.read_text() for p in sorted(folder.rglob("*")) if p.is_file()}


def _dead_pid() -> int:
    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True)
    return int(child.stdout)


def _temp(out: Path, kind: str, pid: int, host: str | None = None) -> Path:
    path = out.with_name(f".{out.name}.{kind}-{host or _host_tag()}-{pid}-0123abcd")
    assert _TEMP.match(path.name)
    return path


def test_publish_creates_then_replaces_only_ours(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with publish_dir(out, **RULES) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".out.tmp-") and not out.exists()
        (tmp / "marker.json").write_text('{"format": "ours"}')
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    with pytest.raises(OutputError, match="already exists; pass --force"):
        check_output(out, force=False, **RULES)
    with publish_dir(out, force=True, **RULES) as tmp:
        (tmp / "new.txt").write_text("new")
    assert sorted(p.name for p in out.iterdir()) == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


@pytest.mark.parametrize("error", [RuntimeError("boom"), KeyboardInterrupt()])
def test_a_failed_write_leaves_nothing_and_keeps_the_old_output(tmp_path: Path, error: BaseException) -> None:
    out = _ours(tmp_path / "out")
    before = _tree(out)
    with pytest.raises(type(error)), publish_dir(out, force=True, **RULES) as tmp:
        (tmp / "half.txt").write_text("half")
        raise error
    assert _tree(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_refuses_folders_that_are_not_ours(tmp_path: Path) -> None:
    mine = tmp_path / "thesis"
    mine.mkdir()
    (mine / "chapter1.tex").write_text("years of work")
    for force in (False, True):
        with pytest.raises(OutputError, match=f"^{mine} is not empty and is not a test output"):
            check_output(mine, force=force, **RULES)
    (mine / "marker.json").write_text('{"format": "someone else"}')
    with pytest.raises(OutputError, match="is not a test output"):
        check_output(mine, force=True, **RULES)
    file = tmp_path / "file.txt"
    file.write_text("x")
    with pytest.raises(OutputError, match="exists and is not a folder"):
        check_output(file, force=True, **RULES)
    with pytest.raises(OutputError, match=f"{file} is a file, not a folder"):
        check_output(file / "out", force=True, **RULES)
    assert (mine / "chapter1.tex").read_text() == "years of work"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert check_output(empty, force=True, **RULES) == empty  # nothing to lose


def test_refuses_current_home_root_and_source_relations(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bundle = _ours(tmp_path / "work" / "b")  # even a folder of ours
    monkeypatch.chdir(bundle)
    with pytest.raises(OutputError, match=f"^{bundle} is the current folder"):
        check_output(".", force=True, **RULES)
    with pytest.raises(OutputError, match="is a folder holding the current folder"):
        check_output("..", force=True, **RULES)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(bundle))
    with pytest.raises(OutputError, match=f"^{bundle} is the home folder"):
        check_output("~", force=True, **RULES)
    with pytest.raises(OutputError, match="is the filesystem root"):
        check_output("/", force=True, **RULES)
    source = _ours(tmp_path / "runs" / "x" / "src")
    with pytest.raises(OutputError, match=f"^{source} is the source itself"):
        check_output(source, force=True, sources=[source], **RULES)
    with pytest.raises(OutputError, match=f"{tmp_path / 'runs' / 'x'} holds the source {source}"):
        check_output(tmp_path / "runs" / "x", force=True, sources=[source], **RULES)
    with pytest.raises(OutputError, match=f"is inside the source {source}"):
        check_output(source / "int8", force=True, sources=[source], **RULES)


def test_stale_temporaries_of_dead_writers_go_live_ones_stay(tmp_path: Path) -> None:
    out = tmp_path / "out"
    dead = _temp(out, "tmp", _dead_pid())
    dead.mkdir()
    (dead / "half.onnx").write_text("half")
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        live = _temp(out, "tmp", sleeper.pid)
        other_host = _temp(
            out, "tmp", _dead_pid(), host="00000000" if _host_tag() != "00000000" else "11111111"
        )
        mine = _temp(out, "tmp", os.getpid())
        other_output = _temp(tmp_path / "other", "tmp", _dead_pid())
        for path in (live, other_host, mine, other_output):
            path.mkdir()
        with publish_dir(out, **RULES) as tmp:
            (tmp / "x").write_text("x")
        left = {p.name for p in tmp_path.iterdir()}
        assert left == {"out", live.name, other_host.name, mine.name, other_output.name}
    finally:
        sleeper.kill()
        sleeper.wait()
    removed = remove_stale_temporaries(tmp_path)  # any output's; the sleeper is gone now
    assert sorted(p.name for p in removed) == sorted([live.name, other_output.name])


def test_a_swap_killed_between_its_renames_is_undone(tmp_path: Path) -> None:
    """SIGKILL after OUT was moved into the `old` temporary and before the new one took its place."""
    old = _temp(tmp_path / "out", "old", _dead_pid())
    _ours(old / "out", content="the previous bundle")
    new = _temp(tmp_path / "out", "tmp", _dead_pid())
    new.mkdir()
    remove_stale_temporaries(tmp_path, "out")
    assert _tree(tmp_path) == {"out/marker.json": '{"format": "ours"}', "out/data.txt": "the previous bundle"}


def test_atomic_write(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "report.json"
    atomic_write(path, '{"a": 1}\n')
    atomic_write(path, b'{"a": 2}\n')
    assert path.read_text() == '{"a": 2}\n'
    assert sorted(p.name for p in path.parent.iterdir()) == ["report.json"]
    assert path.stat().st_mode & 0o777 == 0o666 & ~_umask()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
