"""`latent-ddpm sample` end to end on a factory bundle: PNG grid, per-image files, printed seed, clear errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from bundle_factory import make_bundle
from PIL import Image

from latent_ddpm.cli import main


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_bundle(tmp_path_factory.mktemp("cli") / "b")


def test_writes_grid_and_images(bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "grid.png"
    rc = main(
        [
            "sample",
            "--bundle",
            str(bundle),
            "--num",
            "4",
            "--steps",
            "5",
            "--seed",
            "42",
            "--class",
            "3",
            "--guidance",
            "2",
            "--out",
            str(out),
            "--out-dir",
            str(tmp_path / "each"),
            "--quiet",
        ]
    )
    assert rc == 0
    grid = np.asarray(Image.open(out))
    assert grid.ndim == 2 and grid.shape[0] >= 32 and grid.shape[1] >= 4 * 32
    assert len(list((tmp_path / "each").glob("*.png"))) == 4
    printed = capsys.readouterr().out
    assert "seed=42" in printed and "classes=3,3,3,3" in printed and "per_step=" in printed


def test_same_seed_same_png(bundle: Path, tmp_path: Path) -> None:
    for name in ("a.png", "b.png"):
        assert (
            main(
                [
                    "sample",
                    "--bundle",
                    str(bundle),
                    "--num",
                    "2",
                    "--steps",
                    "4",
                    "--seed",
                    "7",
                    "--out",
                    str(tmp_path / name),
                    "--quiet",
                ]
            )
            == 0
        )
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--class", "12"], "class label 12 is outside 0..9"),
        (["--class", "cat"], "class 'cat' is not one of"),
        (["--steps", "0"], "steps must be an integer in 1..1000"),
        (["--num", "0"], "num_images must be an integer >= 1"),
        (["--eta", "-1"], "eta must be a finite number >= 0"),
        (["--backend", "nope"], "unknown backend 'nope'"),
        (["--providers", "NoSuchExecutionProvider"], "NoSuchExecutionProvider not available"),
    ],
)
def test_bad_arguments_exit_2_with_message(
    bundle: Path, tmp_path: Path, args: list[str], message: str
) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "latent_ddpm",
            "sample",
            "--bundle",
            str(bundle),
            "--out",
            str(tmp_path / "x.png"),
            "--quiet",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "x.png").exists()


def test_bad_bundle_path(tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "latent_ddpm",
            "sample",
            "--bundle",
            str(tmp_path / "missing"),
            "--out",
            str(tmp_path / "x.png"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and "bundle directory not found" in proc.stderr


def test_help_explains_every_flag() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "latent_ddpm", "sample", "--help"], capture_output=True, text=True
    )
    assert proc.returncode == 0
    for flag in (
        "--bundle",
        "--num",
        "--steps",
        "--sampler",
        "--eta",
        "--seed",
        "--class",
        "--guidance",
        "--backend",
        "--out",
        "--out-dir",
    ):
        assert flag in proc.stdout
