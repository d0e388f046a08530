"""The runtime (and `latent-ddpm sample`) must work where torch, diffusers and CuPy cannot be imported."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from bundle_factory import make_bundle

BLOCKER = textwrap.dedent(
    """
    import sys
    BLOCKED = ("torch", "diffusers", "cupy", "transformers", "accelerate")
    class Blocker:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError(f"{name} is blocked: the runtime must not import it")
            return None
    sys.meta_path.insert(0, Blocker())
    """
)


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", BLOCKER + textwrap.dedent(code)], capture_output=True, text=True, timeout=300
    )


# appended to the code a test runs: what it imported, whether or not an import failed along the way
NOTHING_LOADED = """
loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "diffusers", "cupy"))
assert not loaded, loaded
print("ok")
"""


def _runs_torch_free(code: str) -> None:
    proc = _run(textwrap.dedent(code) + NOTHING_LOADED)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"


def test_blocker_really_blocks() -> None:
    proc = _run("import torch")
    assert proc.returncode != 0 and "torch is blocked" in proc.stderr


def test_runtime_imports_and_samples_without_torch(tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path / "b")
    _runs_torch_free(
        f"""
        from latent_ddpm.runtime import Pipeline
        pipe = Pipeline.from_bundle({str(bundle)!r})
        for sampler in ("ddim", "ddpm", "dpmsolver++"):
            r = pipe.generate(num_images=2, steps=5, sampler=sampler, seed=0, class_labels=3, guidance_scale=2.0)
            assert r.images.shape == (2, 32, 32, 1), r.images.shape
        r = pipe.img2img(r.images, strength=0.5, steps=6, seed=0, class_labels=1)
        """
    )


def test_sample_cli_without_torch(tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path / "b")
    out = tmp_path / "grid.png"
    proc = _run(
        f"""
        import sys
        from latent_ddpm.cli import main
        sys.exit(main(["sample", "--bundle", {str(bundle)!r}, "--num", "2", "--steps", "3", "--out", {str(out)!r},
                       "--quiet", "--seed", "1"]))
        """
    )
    assert proc.returncode == 0, proc.stderr
    assert out.is_file()


def test_openvino_backend_without_torch(tmp_path: Path) -> None:
    pytest.importorskip("openvino")
    bundle = make_bundle(tmp_path / "b")
    _runs_torch_free(
        f"""
        from latent_ddpm.runtime import Pipeline
        pipe = Pipeline.from_bundle({str(bundle)!r}, backend="openvino", threads=1)
        r = pipe.generate(num_images=2, steps=3, seed=0, class_labels=3, guidance_scale=2.0)
        assert r.images.shape == (2, 32, 32, 1), r.images.shape
        """
    )
