"""Before the long part, export says what it will make (sizes, parameters, expected bundle size) and warns when
the images will not have the size the autoencoder's config claims."""

from __future__ import annotations

import json
import logging
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

pytest.importorskip("diffusers")


def _expected_mb(text: str) -> float:
    return float(re.search(r"expected bundle about ([\d.]+) MB \(fp32\)", text).group(1))


def test_a_consistent_model_gets_its_summary_and_no_warning(
    tiny_model_dir: Callable, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from conftest import torch_single_thread

    from latent_ddpm.export.exporter import export_bundle

    with caplog.at_level(logging.INFO, logger="latent_ddpm"), torch_single_thread():
        result = export_bundle(tiny_model_dir("kl_cond"), tmp_path / "b", validate=False, progress=False)
    (summary,) = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert "4x8x8 latents -> 1x16x16 images" in summary and "unet " in summary and "M parameters" in summary
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    onnx_mb = sum(p.stat().st_size for p in result.path.rglob("*.onnx*")) / 1e6
    # the weights, plus the graphs' structure: a few hundred kB, which only a tiny model notices
    assert _expected_mb(summary) - 0.05 <= onnx_mb <= _expected_mb(summary) + 0.5


def test_an_autoencoder_that_does_not_downsample_as_its_config_says_is_named(
    tiny_model_dir: Callable, tmp_path: Path
) -> None:
    """The issue's case: a VAE config claiming 32x32 images whose blocks make 16x16 ones from these latents."""
    src = tmp_path / "src"
    shutil.copytree(tiny_model_dir("kl_cond"), src)
    config = json.loads((src / "vae" / "config.json").read_text())
    (src / "vae" / "config.json").write_text(json.dumps({**config, "sample_size": 32}))
    meta = json.loads((src / "latent_ddpm.json").read_text())
    proc = subprocess.run(
        [sys.executable, "-m", "latent_ddpm", "export", str(src), str(tmp_path / "b"), "--no-validate"]
        + ["--threads", "1"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    assert meta["image_size"] == [16, 16]  # what the bundle makes, as before: only the warning is new
    lines = proc.stderr.splitlines()
    summary = next(i for i, line in enumerate(lines) if "latents -> 1x16x16 images" in line)
    warning = next(i for i, line in enumerate(lines) if line.startswith("warning: "))
    assert summary < warning  # both before the export's work is done, the warning after the summary
    assert "will make 16x16 images, but vae/config.json says sample_size 32" in lines[warning]
    assert "unet/config.json's sample_size is 8x8" in lines[warning]
    assert "\r" not in proc.stderr  # a pipe, not a terminal
