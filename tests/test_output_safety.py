"""Issue 9's data-loss cases through the real CLI: `--force` replaces a bundle and nothing else, and a
SIGKILL mid-export leaves nothing the next export does not clean up.

Every refusal is checked the way a user meets it: exit status 2, one line naming the folder, and the
folders involved byte-identical afterwards (hidden files included), nothing written beside them.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("diffusers")

ROOT = Path(__file__).resolve().parents[1]


def _cli(*args: str, cwd: Path, home: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    if home is not None:
        env["HOME"] = str(home)
    cmd = [sys.executable, "-m", "latent_ddpm", *args]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def _snapshot(folder: Path) -> dict[str, bytes | None]:
    """Every entry under `folder`, hidden ones included (None for folders)."""
    return {
        p.relative_to(folder).as_posix(): (p.read_bytes() if p.is_file() else None)
        for p in sorted(folder.rglob("*"))
    }


def _refused(proc: subprocess.CompletedProcess, *expected: str) -> None:
    assert proc.returncode == 2, proc.stderr
    err = proc.stderr.strip()
    assert len(err.splitlines()) == 1, err
    for text in expected:
        assert text in err, err


@pytest.fixture
def user_folder(tmp_path: Path) -> Path:
    """Someone's work: a thesis and a source tree, nothing latent-ddpm wrote."""
    folder = tmp_path / "work"
    (folder / "src").mkdir(parents=True)
    (folder / "thesis.tex").write_text("years of work")
    (folder / "src" / "main.c").write_text("int main() { return 0; }")
    (folder / ".git").mkdir()
    (folder / ".git" / "HEAD").write_text("ref: refs/heads/main")
    return folder


def test_export_force_into_the_current_non_bundle_folder(tiny_model_dir: Callable, user_folder: Path) -> None:
    before = _snapshot(user_folder.parent)
    proc = _cli("export", str(tiny_model_dir("kl_cond")), ".", "--force", "--quiet", cwd=user_folder)
    _refused(proc, f"{user_folder} is the current folder")
    assert _snapshot(user_folder.parent) == before


def test_export_force_into_a_non_bundle_folder(tiny_model_dir: Callable, user_folder: Path) -> None:
    before = _snapshot(user_folder.parent)
    proc = _cli("export", str(tiny_model_dir("kl_cond")), str(user_folder), "--force", "--quiet", cwd=ROOT)
    _refused(proc, f"{user_folder} is not empty and is not a latent-ddpm bundle", "even with --force")
    assert _snapshot(user_folder.parent) == before


def test_export_force_into_the_home_folder(
    tiny_model_dir: Callable, user_folder: Path, tmp_path: Path
) -> None:
    before = _snapshot(user_folder.parent)
    proc = _cli("export", str(tiny_model_dir("kl_cond")), "~", "--force", cwd=tmp_path, home=user_folder)
    _refused(proc, f"{user_folder} is the home folder")
    assert _snapshot(user_folder.parent) == before


def test_quantize_force_into_a_folder_with_a_user_file(tiny_bundle: Path, user_folder: Path) -> None:
    before = _snapshot(user_folder.parent)
    proc = _cli("quantize", str(tiny_bundle), str(user_folder), "--force", cwd=ROOT)
    _refused(proc, f"{user_folder} is not empty and is not a latent-ddpm bundle")
    assert _snapshot(user_folder.parent) == before


def test_quantize_force_over_a_folder_holding_the_source(tiny_bundle: Path, tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    shutil.copytree(tiny_bundle, runs / "x" / "bundle")
    before = _snapshot(tmp_path)
    proc = _cli("quantize", "runs/x/bundle", "runs/x", "--force", cwd=tmp_path)
    _refused(proc, f"{runs / 'x'} holds the source {runs / 'x' / 'bundle'}")
    assert _snapshot(tmp_path) == before
    proc = _cli("quantize", "runs/x/bundle", "runs/x/bundle", "--force", cwd=tmp_path)
    _refused(proc, "is the source itself")
    assert _snapshot(tmp_path) == before


def test_force_still_replaces_a_bundle(tiny_model_dir: Callable, tiny_bundle: Path, tmp_path: Path) -> None:
    out = tmp_path / "b"
    shutil.copytree(tiny_bundle, out)
    (out / "README.md").write_text("the old bundle")
    proc = _cli(
        "export",
        str(tiny_model_dir("kl_cond")),
        str(out),
        "--force",
        "--no-validate",
        "--quiet",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert "the old bundle" not in (out / "README.md").read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]


def test_sigkill_mid_export_then_export_again(tiny_model_dir: Callable, user_folder: Path) -> None:
    """A real export killed with SIGKILL while it writes: its hidden temporary stays (it cannot clean up);
    the next export to the same OUT removes it, and the user's files beside OUT are untouched."""
    src, out = tiny_model_dir("kl_cond"), user_folder / "bundle"
    before = _snapshot(user_folder)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "latent_ddpm", "export", str(src), str(out), "--quiet", "--threads", "1"]
    writer = subprocess.Popen(
        cmd, cwd=user_folder, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + 300
        temps: list[Path] = []
        while not any(t.joinpath(".work").is_dir() for t in temps):  # writing graphs: mid-way
            assert writer.poll() is None, f"export ended before it could be killed: {writer.stderr.read()}"
            assert time.monotonic() < deadline
            time.sleep(0.02)
            temps = list(user_folder.glob(".bundle.tmp-*"))
        writer.send_signal(signal.SIGKILL)
    finally:
        writer.kill()
        writer.wait()
    assert writer.returncode == -signal.SIGKILL
    assert [t.name for t in user_folder.glob(".bundle.*")] == [temps[0].name]  # left behind by the kill
    assert not out.exists()

    proc = _cli("export", str(src), str(out), "--quiet", "--no-validate", cwd=user_folder)
    assert proc.returncode == 0, proc.stderr
    assert not list(user_folder.glob(".bundle*")), "stale temporaries left"
    after = _snapshot(user_folder)
    assert {k: v for k, v in after.items() if not k.startswith("bundle")} == before
