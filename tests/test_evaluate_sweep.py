"""The sweep on a tiny factory bundle: JSON, Markdown, plots, resuming."""

from __future__ import annotations

import json

import pytest
from bundle_factory import SCHEDULER, make_bundle

import latent_ddpm.evaluate.sweep as sweep
from latent_ddpm.evaluate.sweep import main


def test_sweep_writes_report_and_resumes(tmp_path, monkeypatch, capsys) -> None:
    linear = make_bundle(tmp_path / "linear", scheduler={**SCHEDULER, "beta_schedule": "linear"})
    out = tmp_path / "docs"
    out.mkdir()
    (out / "evaluation.md").write_text(
        "# Evaluation\n\nprose\n<!-- sweep:begin -->\nold\n<!-- sweep:end -->\ntail\n"
    )
    argv = [
        "--bundle",
        str(linear),
        "--out",
        str(out),
        "--per-class",
        "3",
        "--ddpm-per-class",
        "2",
        "--ddpm-steps",
        "20",
        "--ddim-steps",
        "2,5",
        "--dpm-steps",
        "2",
        "--guidance",
        "1,2",
        "--etas",
        "0,1",
        "--batch",
        "10",
        "--quiet",
    ]
    assert main(argv) == 0
    assert "recommended defaults:" in capsys.readouterr().out

    doc = json.loads((out / "evaluation.json").read_text())
    rows = {r["key"]: r for r in doc["rows"]}
    guidance = [rows[k] for k in doc["tables"]["guidance"]]
    steps = [rows[k] for k in doc["tables"]["steps"]]
    assert [(r["eta"], r["guidance_scale"]) for r in guidance] == [(0, 1), (0, 2), (1, 1), (1, 2)]
    reference = rows[doc["reference_row"]]
    assert reference in guidance and (reference["sampler"], reference["steps"]) == ("ddim", 50)
    assert all(r["eta"] == reference["eta"] for r in steps if r["sampler"] == "ddim")
    assert doc["recommended_defaults"]["guidance_scale"] == reference["guidance_scale"]
    assert [(r["sampler"], r["steps"], r["num_images"]) for r in steps] == [
        ("ddim", 2, 30),
        ("ddim", 5, 30),
        ("ddim", 50, 30),
        ("dpmsolver++", 2, 30),
        ("ddpm", 20, 20),
        ("ddim", 50, 20),
    ]
    assert set(doc["tables"]) == {"guidance", "steps"}  # bundles are compared by evaluate.compare
    assert doc["recommended_defaults"]["guidance_scale"] in (1.0, 2.0)
    assert set(doc["goals"]) == {"accuracy_ddim50", "cfid_ddim50_vs_ddpm"}
    assert doc["environment"]["machine"]["cores"] >= 1 and "numpy" in doc["environment"]["versions"]

    md = (out / "evaluation.md").read_text()
    assert md.startswith("# Evaluation\n\nprose\n<!-- sweep:begin -->") and md.endswith(
        "<!-- sweep:end -->\ntail\n"
    )
    assert "| blurred (Gaussian, radius 1 px) | 30 |" in md
    assert [c["num_images"] for c in doc["calibration"]] == [30] * 5
    assert "old" not in md and "| DPM-Solver++ | 2 | 30 |" in md and "linear" in md
    ddpm_cells = next(line for line in md.splitlines() if line.startswith("| DDPM | 20 | 20 |")).split(" | ")
    guided = doc["recommended_defaults"]["guidance_scale"] != 1.0
    assert ddpm_cells[6] == str(20 * (2 if guided else 1))  # U-Net calls per image
    for name in ("eval_guidance", "eval_steps", "eval_samples"):
        assert (out / "images" / f"{name}.png").stat().st_size > 1000

    # A rerun with the same settings samples nothing again except the sample grid.
    calls = []
    real = sweep.evaluate
    monkeypatch.setattr(sweep, "evaluate", lambda *a, **k: calls.append(1) or real(*a, **k))
    assert main(argv) == 0
    assert len(calls) == 1
    assert json.loads((out / "evaluation.json").read_text())["rows"] == doc["rows"]


def test_sweep_refuses_bad_bundle_before_sampling(tmp_path, capsys) -> None:
    assert main(["--bundle", str(tmp_path / "missing"), "--out", str(tmp_path / "docs")]) == 2
    assert "bundle directory not found" in capsys.readouterr().err
    assert not (tmp_path / "docs").exists()


@pytest.mark.parametrize("flag", ["--per-class", "--ddpm-per-class"])
def test_sweep_refuses_too_few_images(tmp_path, capsys, flag) -> None:
    b = make_bundle(tmp_path / "b")
    assert main(["--bundle", str(b), "--out", str(tmp_path / "docs"), flag, "1"]) == 2
    assert "per_class must be an integer >= 2" in capsys.readouterr().err
