"""Every command that reads a bundle takes a shipped model's name as well as a folder (through resolve_bundle)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from latent_ddpm.cli import build_parser
from latent_ddpm.runtime.bundle import load_bundle
from latent_ddpm.runtime.shipped import DATA_DIR


def _cli(*argv: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "latent_ddpm", *argv], capture_output=True, text=True, timeout=600, cwd=cwd
    )


def test_bench_takes_shipped_names(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)  # no ./digits folder to shadow the name
    args = build_parser().parse_args(["bench", "--bundle", "digits", "--also-bundle", "digits"])
    assert args.bundle == DATA_DIR / "digits" and args.also_bundle == [DATA_DIR / "digits"]
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(["bench", "--bundle", "nosuch"])
    assert exit_info.value.code == 2
    assert "argument --bundle: bundle directory not found: nosuch" in capsys.readouterr().err


def test_eval_takes_a_shipped_name(tmp_path: Path) -> None:
    report = tmp_path / "eval.json"
    proc = _cli(
        *("eval", "--bundle", "digits", "--per-class", "2", "--steps", "2", "--threads", "1"),
        *("--quiet", "--json", str(report)),
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(report.read_text())["report"]["bundle"].endswith("digits")


def test_quantize_takes_a_shipped_name(tmp_path: Path) -> None:
    proc = _cli(
        *("quantize", "digits", "int8", "--components", "unet", "--threads", "1"),
        *("--calibration-runs", "1", "--calibration-batch", "2", "--validation-images", "2"),
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert load_bundle(tmp_path / "int8").raw["source"]["quantized_from"] == str(DATA_DIR / "digits")


def test_an_unknown_name_is_one_line_before_any_work(tmp_path: Path) -> None:
    proc = _cli("quantize", "nosuch", "int8", cwd=tmp_path)
    assert proc.returncode == 2
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("latent-ddpm quantize: error: bundle directory not found: nosuch and no shipped")
    assert "digits" in line
    assert not (tmp_path / "int8").exists()


def test_build_engines_and_validate_precision_find_a_shipped_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    """Both check the bundle first; with the name found, each stops at its next check (no TensorRT here;
    --images 0), before writing anything into the package."""
    from latent_ddpm.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # as on a machine without TensorRT
    assert main(["build-engines", "digits"]) == 2
    assert "error: TensorRT engines need NVIDIA TensorRT" in capsys.readouterr().err
    assert main(["validate-precision", "digits", "--images", "0"]) == 2
    assert "error: images must be an integer >= 1, got 0" in capsys.readouterr().err
