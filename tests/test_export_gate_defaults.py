"""The export gate samples the bundle's default sampler, steps and eta too: the run users get by default.

Today's DDIM check stays as it is (``sampling`` in validation.json); the default run is ``sampling_default``,
held to the same thresholds, with the runtime's step noise replayed into the torch reference for the
stochastic samplers (DDPM, DDIM with eta > 0).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("diffusers")

from conftest import torch_single_thread  # noqa: E402

from latent_ddpm.export import validate  # noqa: E402
from latent_ddpm.export.errors import GateFailedError  # noqa: E402
from latent_ddpm.export.exporter import export_bundle  # noqa: E402
from latent_ddpm.export.validate import GateSettings  # noqa: E402

SMALL = GateSettings(batch_sizes=(1,), images=2, steps=4)


def _source_with_defaults(tiny_model_dir: Callable, root: Path, **defaults: object) -> Path:
    src = root / "src"
    shutil.copytree(tiny_model_dir("kl_cond"), src)
    meta = json.loads((src / "latent_ddpm.json").read_text())
    meta["defaults"] = {**meta["defaults"], **defaults}
    (src / "latent_ddpm.json").write_text(json.dumps(meta))
    return src


@pytest.mark.parametrize(
    ("sampler", "steps", "eta"), [("dpmsolver++", 10, 0.0), ("ddim", 7, 1.0), ("ddpm", 12, 0.0)]
)
def test_gate_samples_the_bundle_default(
    tiny_model_dir: Callable, tmp_path: Path, sampler: str, steps: int, eta: float
) -> None:
    src = _source_with_defaults(tiny_model_dir, tmp_path, sampler=sampler, steps=steps, eta=eta)
    with torch_single_thread():
        result = export_bundle(src, tmp_path / "b", settings=SMALL, progress=False)
    ddim, default = result.report["sampling"], result.report["sampling_default"]
    assert (ddim["sampler"], ddim["steps"], ddim["eta"]) == ("ddim", 4, 0.0)  # what the gate checked before
    assert (default["sampler"], default["steps"], default["eta"]) == (sampler, steps, eta)
    assert default["passed"] and default["nonfinite"] == 0 and default["max_abs_diff"] <= 2
    assert default["guidance_scale"] == ddim["guidance_scale"] != 1.0
    on_disk = json.loads((result.path / "validation.json").read_text())
    assert on_disk["sampling_default"] == default
    summary = json.loads((result.path / "bundle.json").read_text())["validation"]["summary"]
    assert summary["sampling_default"]["sampler"] == sampler
    assert summary["sampling_default"]["max_abs_diff"] == default["max_abs_diff"]
    assert (
        f"at the bundle's default sampler ({sampler} {steps} steps" in (result.path / "README.md").read_text()
    )


def test_a_default_sampler_that_fails_fails_the_gate(
    tiny_model_dir: Callable, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = _source_with_defaults(tiny_model_dir, tmp_path, sampler="dpmsolver++", steps=10)
    reference = validate._reference_images

    def wrong_at_dpmsolver(*args: object) -> object:
        images = reference(*args)
        return -images if args[3] == "dpmsolver++" else images  # the sampler argument

    monkeypatch.setattr(validate, "_reference_images", wrong_at_dpmsolver)
    with pytest.raises(GateFailedError) as info, torch_single_thread():
        export_bundle(src, tmp_path / "b", settings=SMALL, progress=False)
    assert "images at the default sampler (dpmsolver++, 10 steps) differ from diffusers" in str(info.value)
    assert info.value.report["sampling"]["passed"] and not info.value.report["sampling_default"]["passed"]
    assert not (tmp_path / "b").exists()
