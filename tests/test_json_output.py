"""``--json``: one JSON document on stdout and nothing else, messages on stderr, no document on failure.

The helper is run in a real process (Python prints and a native write to file descriptor 1 must both land on
stderr); `latent-ddpm sample --json` runs as a subprocess on a factory bundle. export, quantize and
build-engines are covered in their own test files, where their fixtures are.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from bundle_factory import make_bundle

HELPER = """
import os, sys
from pathlib import Path
import numpy as np
from latent_ddpm.json_output import json_output
with json_output("demo", {enabled}) as doc:
    print("for a person")
    os.write(1, b"native library text\\n")
    doc.update(path=Path("a/b.png"), n=np.int64(3), xs=np.arange(2), psnr=float("inf"), t=(1, 2.5))
"""


def _python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)


def test_only_the_document_reaches_stdout() -> None:
    proc = _python(HELPER.format(enabled=True))
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc == {"command": "demo", "path": "a/b.png", "n": 3, "xs": [0, 1], "psnr": None, "t": [1, 2.5]}
    assert "for a person" in proc.stderr and "native library text" in proc.stderr


def test_without_json_messages_stay_on_stdout() -> None:
    proc = _python(HELPER.format(enabled=False))
    assert proc.returncode == 0, proc.stderr
    assert sorted(proc.stdout.splitlines()) == ["for a person", "native library text"]  # print is buffered


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_bundle(tmp_path_factory.mktemp("json") / "b")


def _sample(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "latent_ddpm", "sample", "--steps", "3", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_sample_json(bundle: Path, tmp_path: Path) -> None:
    out, each = tmp_path / "grid.png", tmp_path / "each"
    proc = _sample(
        "--bundle", str(bundle), "--num", "3", "--seed", "40", "--class", "2", "--guidance", "2",
        "--out", str(out), "--out-dir", str(each), "--json",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["command"] == "sample"
    assert doc["written"] == {"out": str(out), "images": [str(each / f"{i:04d}.png") for i in range(3)]}
    assert all(Path(p).is_file() for p in [doc["written"]["out"], *doc["written"]["images"]])
    assert doc["seed"] == 40 and doc["seeds"] == [40, 41, 42] and doc["class_labels"] == [2, 2, 2]
    assert doc["steps"] == 3 and doc["guidance_scale"] == 2.0 and doc["backend"] == "onnxruntime"
    assert doc["bundle"]["name"] == "factory" and doc["bundle"]["path"] == str(bundle)
    assert doc["timings"]["total_s"] > 0 and doc["timings"]["images_per_s"] > 0
    assert "wrote" in proc.stderr and "seed=40" in proc.stderr


def test_sample_json_failure_prints_no_document(bundle: Path, tmp_path: Path) -> None:
    out = tmp_path / "x.png"
    proc = _sample("--bundle", str(bundle), "--out", str(out), "--class", "99", "--json")
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and "class label 99 is outside" in proc.stderr
    assert not out.exists()
