"""Retraining the judge writes where asked (the current folder by default), never into the package unasked."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest

from latent_ddpm.evaluate.classifier import CLASSIFIER_ONNX, DigitClassifier

pytest.importorskip("torch")


def _digest(folder: Path) -> dict[str, str]:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()
    }


def test_one_epoch_lands_in_the_current_folder(tmp_path: Path) -> None:
    package_data = _digest(CLASSIFIER_ONNX.parent)
    proc = subprocess.run(
        [sys.executable, "-m", "latent_ddpm.evaluate.train_classifier", "--epochs", "1", "--threads", "1"],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["digit_classifier.json", "digit_classifier.onnx"]
    assert _digest(CLASSIFIER_ONNX.parent) == package_data
    held_out = DigitClassifier(tmp_path / "digit_classifier.onnx").held_out_accuracy
    assert held_out is not None and held_out > 0.5  # a real judge, read back by the runtime's loader
