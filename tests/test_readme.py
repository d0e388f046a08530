"""The README works word for word: its commands parse, the runnable ones run, its test command is .ci/run's."""

from __future__ import annotations

import itertools
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from latent_ddpm.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")


def _blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, flags=re.S)


def _commands() -> list[str]:
    """Every command line of the bash blocks, comments dropped."""
    lines = []
    for block in _blocks("bash"):
        for line in block.splitlines():
            command = line.split("  #")[0].strip()
            if command:
                lines.append(command)
    return lines


def test_quick_start_begins_with_the_clone() -> None:
    quick_start = README.split("## Quick start", 1)[1]
    first = quick_start.split("```bash\n", 1)[1].splitlines()[0].split("  #")[0].strip()
    assert first.startswith("git clone ") and first.endswith("&& cd latent-ddpm")


def test_the_test_command_is_what_ci_runs() -> None:
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    (command,) = [c for c in _commands() if "pytest" in c]
    assert command in ci.splitlines()


def test_nothing_is_installed_by_a_name_the_package_index_lacks() -> None:
    for command in _commands():
        if "pip install" in command:
            assert "latent-ddpm[" not in command and "latent_ddpm[" not in command, command


def test_every_latent_ddpm_command_parses() -> None:
    """Flags renamed or removed since the README was written fail here, not on a reader's machine."""
    parts = [p.strip() for c in _commands() for p in c.split("&&")]
    commands = [p for p in parts if p.startswith("latent-ddpm ")]
    assert len(commands) >= 10
    for command in commands:
        words = list(
            itertools.takewhile(lambda w: w not in {">", "|", "2>"}, shlex.split(command))
        )  # no redirection
        build_parser().parse_args(words[1:])  # SystemExit(2) with argparse's message if not


def test_pictures_and_links_exist() -> None:
    targets = re.findall(r'src="([^"]+)"', README) + re.findall(r"\]\(([^)#]+)\)", README)
    assert "docs/images/demo.png" in targets  # the demo, near the top
    for target in targets:
        if not target.startswith("http"):
            assert (ROOT / target).exists(), target


def test_embed_the_runtime_runs_as_written(tmp_path: Path) -> None:
    (code,) = _blocks("python")
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr


def test_the_sample_commands_run_as_written(tmp_path: Path) -> None:
    """Every ``latent-ddpm sample`` line, in order, in one folder; the reader's own picture for img2img is the
    grid the first line wrote."""
    commands = [c for c in _commands() if c.startswith("latent-ddpm sample ")]
    assert commands[0].endswith("--out threes.png")
    bin_dir = Path(sys.executable).parent
    if not (bin_dir / "latent-ddpm").exists():
        pytest.skip("the latent-ddpm script is not installed beside this Python")
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    for command in commands:
        if "--init-image my-digit.png" in command:
            shutil.copyfile(tmp_path / "threes.png", tmp_path / "my-digit.png")
        proc = subprocess.run(
            command, shell=True, capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env
        )
        assert proc.returncode == 0, (command, proc.stderr)
    assert (tmp_path / "threes.png").stat().st_size > 0
    assert (tmp_path / "big.png").read_bytes() == (
        tmp_path / "same.png"
    ).read_bytes()  # --from-png, as it says
