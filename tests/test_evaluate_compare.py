"""The comparison tool on tiny factory bundles: JSON, table, plot, markers, parameter counts, refusals."""

from __future__ import annotations

import json

import onnx
import pytest
from bundle_factory import SCHEDULER, make_bundle

from latent_ddpm.evaluate.compare import main


def _params(bundle) -> int:
    """Counted independently: every initializer's values read as arrays."""
    model = onnx.load(str(bundle / "unet.onnx"))
    return sum(onnx.numpy_helper.to_array(t).size for t in model.graph.initializer)


def test_compare_writes_table_plot_and_replaces_markers(tmp_path, capsys) -> None:
    a = make_bundle(tmp_path / "a", scheduler={**SCHEDULER, "beta_schedule": "linear"})
    b = make_bundle(tmp_path / "b", scheduler={**SCHEDULER, "beta_schedule": "squaredcos_cap_v2"})
    out = tmp_path / "docs"
    out.mkdir()
    md = out / "evaluation.md"
    md.write_text("# Evaluation\n\nprose\n<!-- sweep:begin -->\nkept\n<!-- sweep:end -->\ntail\n")
    argv = ["--bundle", f"lin={a}", "--bundle", f"cos={b}", "--section", "sched", "--out", str(out),
            "--per-class", "2", "--steps", "3", "--batch", "10", "--timing-batch", "2",
            "--timing-rounds", "2", "--quiet"]  # fmt: skip
    assert main(argv) == 0
    doc = json.loads((out / "compare_sched.json").read_text())
    rows = doc["rows"]
    assert [r["label"] for r in rows] == ["lin", "cos"]
    assert [r["schedule"] for r in rows] == ["linear", "squaredcos_cap_v2"]
    assert rows[0]["unet_parameters"] == _params(a) > 0
    assert rows[1]["unet_parameters"] == _params(b)
    assert rows[0]["speed_ratio"] == 1.0 and all(len(r["images_per_s_rounds"]) == 2 for r in rows)
    assert all(r["steps"] == 3 and r["num_images"] == rows[0]["num_images"] for r in rows)
    assert len(doc["timing"]["loadavg_before"]) == 3
    assert (out / "images" / "compare_sched.png").stat().st_size > 0
    text = md.read_text()
    assert text.startswith("# Evaluation\n\nprose\n<!-- sweep:begin -->\nkept\n<!-- sweep:end -->\ntail\n")
    assert "<!-- compare:sched:begin -->" in text and "| lin | linear |" in text

    edited = text.replace("<!-- compare:sched:begin -->", "<!-- compare:sched:begin -->\nstale")
    md.write_text(edited + "after\n")
    assert main(argv) == 0
    again = md.read_text()
    assert "stale" not in again and again.count("<!-- compare:sched:begin -->") == 1
    assert again.startswith(text.split("<!-- compare:sched:begin -->")[0]) and again.endswith(
        "end -->\nafter\n"
    )


@pytest.mark.parametrize(
    "specs, extra, message",
    [
        (["x"], [], "--bundle must be LABEL=DIR"),
        (["a={a}", "a={b}"], [], "duplicate bundle label 'a'"),
        (["a={a}", "m={missing}"], [], "bundle directory not found"),
        (["a={a}", "u={uncond}"], [], "u: classes differ from a's"),
        (["a={a}", "b={b}"], ["--sampler", "euler"], "euler"),
        (["a={a}", "b={b}"], ["--steps", "0"], "steps"),
    ],
)
def test_compare_refuses_bad_input_writing_nothing(tmp_path, capsys, specs, extra, message) -> None:
    paths = {"a": make_bundle(tmp_path / "a"), "b": tmp_path / "a", "missing": tmp_path / "missing"}
    if "{uncond}" in "".join(specs):
        paths["uncond"] = make_bundle(tmp_path / "uncond", conditional=False)
    argv = [a for s in specs for a in ("--bundle", s.format(**paths))]
    out = tmp_path / "docs"
    assert main([*argv, *extra, "--section", "x", "--out", str(out), "--per-class", "2"]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not out.exists()
