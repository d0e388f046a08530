"""Retraining the judge writes where asked (the current folder by default), never into the package unasked."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest

from latent_ddpm.evaluate.classifier import Judge
from latent_ddpm.evaluate.judged import DATA_DIR, DIGITS, EMOJI

pytest.importorskip("torch")


def _digest(folder: Path) -> dict[str, str]:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()
    }


def test_one_epoch_lands_in_the_current_folder(tmp_path: Path) -> None:
    package_data = _digest(DATA_DIR)
    proc = subprocess.run(
        [sys.executable, "-m", "latent_ddpm.evaluate.train_classifier", "--epochs", "1", "--threads", "1"],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["digit_classifier.json", "digit_classifier.onnx"]
    assert _digest(DATA_DIR) == package_data
    held_out = Judge(DIGITS, tmp_path / "digit_classifier.onnx").held_out_accuracy
    assert held_out is not None and held_out > 0.5  # a real judge, read back by the runtime's loader


def test_an_emoji_judge_takes_colour_and_records_its_data(tmp_path: Path) -> None:
    out = tmp_path / "judge" / "e.onnx"
    proc = subprocess.run(
        [sys.executable, "-m", "latent_ddpm.evaluate.train_classifier", "--data", "emoji", "--epochs", "1"]
        + ["--threads", "1", "--flip", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    judge = Judge(EMOJI, out)
    assert judge.meta["data"] == "emoji" and judge.meta["classes"] == list(EMOJI.class_names)
    assert judge.meta["input"]["shape"] == ["batch", 3, 32, 32]
    assert judge.meta["split"]["held_out"] == 9 * EMOJI.held_out_per_class
    images, _ = EMOJI.load()
    logits, features = judge.run(images[:5])
    assert logits.shape == (5, 9) and features.shape == (5, EMOJI.feature_dim)


def test_an_out_path_that_is_not_onnx_is_refused_before_training(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "latent_ddpm.evaluate.train_classifier", "--out", "judge.json"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert proc.returncode == 2 and "judge.json" in proc.stderr and "Traceback" not in proc.stderr
    assert proc.stdout == "" and list(tmp_path.iterdir()) == []
