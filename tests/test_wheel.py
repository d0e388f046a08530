"""The wheel users install: at most 64 MB, only the package, no machine's paths, every shipped bundle whole.

Built once per module from a copy of the source tree (setuptools writes build/ and *.egg-info next to the
sources, so never in the checkout), offline with this environment's setuptools: no download.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_shipped_files import MACHINE_PREFIXES

import latent_ddpm
from latent_ddpm.runtime.shipped import DATA_DIR

ROOT = Path(latent_ddpm.__file__).resolve().parent.parent
MAX_WHEEL_BYTES = 64_000_000  # issue 14: the wheel stays <= 64 MB with both models in it
# What a training or evaluation run leaves behind, which must never ride along in data/**.
RUN_LEFTOVERS = {"runs", "checkpoints", "test-artifacts", "__pycache__", ".ipynb_checkpoints"}
RUN_SUFFIXES = (".pt", ".pth", ".ckpt", ".safetensors", ".pyc", ".log")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[zipfile.ZipFile]:
    src = tmp_path_factory.mktemp("source")
    for name in ("pyproject.toml", "README.md", "LICENSE", "NOTICE"):
        shutil.copy2(ROOT / name, src / name)
    shutil.copytree(
        ROOT / "latent_ddpm", src / "latent_ddpm", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info")
    )
    out = tmp_path_factory.mktemp("wheel")
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q"]
        + ["--wheel-dir", str(out), str(src)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    (path,) = out.glob("latent_ddpm-*.whl")
    with zipfile.ZipFile(path) as zf:
        yield zf


def test_the_wheel_is_small_and_holds_only_the_package(wheel: zipfile.ZipFile) -> None:
    size = Path(str(wheel.filename)).stat().st_size
    assert size <= MAX_WHEEL_BYTES, f"wheel is {size / 1e6:.1f} MB"
    names = wheel.namelist()
    dist_info = f"latent_ddpm-{latent_ddpm.__version__}.dist-info/"
    assert [n for n in names if not n.startswith(("latent_ddpm/", dist_info))] == []
    leftovers = [n for n in names if RUN_LEFTOVERS & set(n.split("/")) or n.endswith(RUN_SUFFIXES)]
    assert leftovers == []
    assert "latent_ddpm/data/emoji_32.npz" in names and f"{dist_info}licenses/NOTICE" in names


def test_no_file_in_the_wheel_names_a_folder_of_this_machine(wheel: zipfile.ZipFile) -> None:
    found = {n: [p for p in MACHINE_PREFIXES if p.encode() in wheel.read(n)] for n in wheel.namelist()}
    assert {n: prefixes for n, prefixes in found.items() if prefixes} == {}


@pytest.mark.parametrize("model", ["digits", "emoji"])
def test_every_shipped_bundle_is_in_the_wheel_whole(wheel: zipfile.ZipFile, model: str) -> None:
    """Each file bundle.json lists, byte for byte; emoji from the day its bundle is exported into the package."""
    bundle = DATA_DIR / model
    if not (bundle / "bundle.json").is_file():
        pytest.skip(f"latent_ddpm/data/{model} is not exported in this checkout yet")
    meta = json.loads((bundle / "bundle.json").read_text())
    files = ["bundle.json"] + [
        f for m in meta["models"].values() for f in (m["file"], m.get("external_data")) if f
    ]
    for name in files:
        assert wheel.read(f"latent_ddpm/data/{model}/{name}") == (bundle / name).read_bytes(), name
