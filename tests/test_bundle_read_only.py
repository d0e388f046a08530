"""Loading a bundle is read-only for every backend: a read-only copy loads and samples, and nothing in it changes.

The permission bits alone prove nothing when the tests run as root (root writes through them), so every test
also compares a listing of the bundle (each path with its type, mode, size, mtime and sha256) before and
after. The tensorrt backend runs against the CPU stand-ins of tests/fake_tensorrt.py, with plans built by
``build_engines`` before the copy is made read-only.
"""

from __future__ import annotations

import hashlib
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from bundle_factory import make_bundle
from fake_tensorrt import install, make_cudart, make_tensorrt

from latent_ddpm.export.tensorrt_build import build_engines
from latent_ddpm.runtime import BundleError, Pipeline
from latent_ddpm.runtime.backends import BACKENDS

WRITE_BITS = stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH


def _fake_tensorrt(monkeypatch: pytest.MonkeyPatch, version: str = "10.7.0") -> None:
    cudart = make_cudart()
    install(monkeypatch, make_tensorrt(cudart, version=version), cudart)


def _listing(root: Path) -> dict[str, tuple]:
    """Every path under ``root`` (and root itself): type, mode, size, mtime and the bytes' sha256."""
    out = {}
    for p in [root, *sorted(root.rglob("*"))]:
        st = p.lstat()
        digest = hashlib.sha256(p.read_bytes()).hexdigest() if stat.S_ISREG(st.st_mode) else None
        out[str(p.relative_to(root))] = (
            stat.S_IFMT(st.st_mode),
            st.st_mode,
            st.st_size,
            st.st_mtime_ns,
            digest,
        )
    return out


def _chmod_tree(root: Path, read_only: bool) -> None:
    for p in [root, *root.rglob("*")]:
        mode = p.stat().st_mode
        p.chmod(mode & ~WRITE_BITS if read_only else mode | stat.S_IWUSR)


@pytest.fixture()
def read_only_bundle(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A bundle with TensorRT plans, copied (mtimes kept) and made read-only, as ``chmod -R a-w`` does."""
    _fake_tensorrt(monkeypatch)
    source = make_bundle(tmp_path / "source")
    build_engines(source, min_batch=1, opt_batch=2, max_batch=4)
    root = tmp_path / "read-only"
    shutil.copytree(source, root)
    _chmod_tree(root, read_only=True)
    try:
        yield root
    finally:
        _chmod_tree(root, read_only=False)  # so that pytest can remove it


def test_the_copy_is_read_only(read_only_bundle: Path) -> None:
    listing = _listing(read_only_bundle)
    assert {"bundle.json", "unet.onnx", "engines/manifest.json", "engines/unet.plan"} <= set(listing)
    assert all(mode & WRITE_BITS == 0 for _, mode, *_ in listing.values())


@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_loading_and_sampling_writes_nothing(read_only_bundle: Path, backend: str) -> None:
    before = _listing(read_only_bundle)
    pipe = Pipeline.from_bundle(read_only_bundle, backend=backend)
    assert pipe.backend == backend
    out = pipe.generate(num_images=2, steps=3, seed=0, class_labels=[1, 2], guidance_scale=2.0)
    again = pipe.img2img(out.images, strength=0.5, steps=4, seed=1, class_labels=1)
    assert out.images.shape == again.images.shape == (2, 32, 32, 1)
    assert np.isfinite(again.latents).all()
    assert _listing(read_only_bundle) == before


def test_a_stale_plan_in_a_read_only_bundle_is_refused_and_nothing_is_written(
    read_only_bundle: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fake_tensorrt(monkeypatch, version="10.8.0")  # a newer TensorRT than the one that built the plans
    before = _listing(read_only_bundle)
    with pytest.raises(
        BundleError, match=r"this is TensorRT 10\.8\.0; rebuild it with: latent-ddpm build-engines"
    ):
        Pipeline.from_bundle(read_only_bundle, backend="tensorrt")
    assert _listing(read_only_bundle) == before


def test_bf16_loading_and_sampling_writes_nothing(tmp_path: Path) -> None:
    """The bf16 gate writes its record (export stage); loading the recorded bundle in bf16 writes nothing."""
    pytest.importorskip("openvino")
    from latent_ddpm.export.precision_gate import GateSettings, validate_precision
    from latent_ddpm.runtime.backends.openvino_backend import native_bf16

    if not native_bf16():
        pytest.skip("this CPU has no native bf16")
    source = make_bundle(tmp_path / "source")
    validate_precision(source, settings=GateSettings(images=4, batch=2, threads=1), log=lambda _: None)
    root = tmp_path / "read-only"
    shutil.copytree(source, root)
    _chmod_tree(root, read_only=True)
    try:
        before = _listing(root)
        pipe = Pipeline.from_bundle(root, backend="openvino", precision="bf16", threads=1)
        out = pipe.generate(num_images=2, steps=3, seed=0, class_labels=[1, 2], guidance_scale=2.0)
        pipe.img2img(out.images, strength=0.5, steps=4, seed=1, class_labels=1)
        assert _listing(root) == before
    finally:
        _chmod_tree(root, read_only=False)
