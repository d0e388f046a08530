"""The shipped model's sampling defaults are one fact: the sweep recommended them (docs/evaluation.json),
`latent-ddpm eval --write-defaults` wrote them into bundle.json and its README, the precision gates sampled
them, and the recipe's guidance is theirs. Also: the command itself on a factory bundle."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import pytest
from bundle_factory import make_bundle

from latent_ddpm.cli import main
from latent_ddpm.evaluate.defaults import bundle_identity, readme_line
from latent_ddpm.runtime import load_bundle
from latent_ddpm.runtime.bundle import VALIDATION_FILE
from latent_ddpm.runtime.shipped import shipped_bundle_path

DOCS = Path(__file__).parents[1] / "docs"
# each shipped model and the sweep that set its defaults
SWEEPS = {"digits": DOCS / "evaluation.json", "emoji": DOCS / "emoji-evaluation" / "evaluation.json"}


def _sampling(settings: dict) -> dict:
    return {k: settings[k] for k in ("sampler", "steps", "guidance_scale", "eta")}


@pytest.mark.parametrize("model", sorted(SWEEPS))
def test_shipped_defaults_agree_everywhere(model: str) -> None:
    bundle = load_bundle(shipped_bundle_path(model))
    defaults = asdict(bundle.defaults)
    sweep = json.loads(SWEEPS[model].read_text(encoding="utf-8"))
    assert sweep["recommended_defaults"] == defaults
    assert sweep["recommended_row"].split("|")[0] == bundle_identity(bundle)  # measured on this model
    assert readme_line(bundle.defaults) in (bundle.root / "README.md").read_text(encoding="utf-8")

    validation = json.loads((bundle.root / VALIDATION_FILE).read_text(encoding="utf-8"))
    for name, gate in validation.get("precision_gates", {}).items():  # gates sample at the defaults
        assert _sampling(gate["settings"]) == defaults, name
        summary = bundle.raw["precision_gates"][name]["summary"]
        assert (summary["sampler"], summary["steps"], summary["guidance_scale"]) == (
            bundle.defaults.sampler,
            bundle.defaults.steps,
            bundle.defaults.guidance_scale,
        )
    # validation.json's "sampling_default" is not checked: it records the settings the export gate compared
    # with diffusers at export (the emoji model's eta 0), which a later --write-defaults does not rewrite


def test_digits_recipe_guidance_and_gates_are_the_defaults() -> None:
    bundle = load_bundle(shipped_bundle_path("digits"))
    assert bundle.raw["source"]["recipe"]["unet"]["guidance_scale"] == bundle.defaults.guidance_scale
    validation = json.loads((bundle.root / VALIDATION_FILE).read_text(encoding="utf-8"))
    assert validation["precision_gates"]


def test_the_recipe_is_the_one_the_bundle_was_trained_with() -> None:
    from latent_ddpm.train.config import load_recipe

    recipe, _ = load_recipe("digits")
    assert load_bundle(shipped_bundle_path()).raw["source"]["recipe"] == recipe.to_dict()


def _evaluation(tmp_path: Path, bundle: Path, **defaults: object) -> Path:
    identity = bundle_identity(load_bundle(bundle))
    doc = {
        "recommended_defaults": {"sampler": "dpmsolver++", "steps": 7, "guidance_scale": 2.0, "eta": 0.0}
        | defaults,
        "recommended_row": f"{identity}|dpmsolver++|7|2.0|None|30|0|100",
    }
    path = tmp_path / "evaluation.json"
    path.write_text(json.dumps(doc), encoding="utf-8")
    return path


def test_write_defaults_sets_bundle_json_and_readme(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    bundle = make_bundle(tmp_path / "b")
    (bundle / "README.md").write_text("# b\n\nSampling defaults (old): ddim\n\nmore\n", encoding="utf-8")
    assert (
        main(["eval", "--bundle", str(bundle), "--write-defaults", str(_evaluation(tmp_path, bundle))]) == 0
    )
    assert '"sampler": "dpmsolver++", "steps": 7' in capsys.readouterr().out
    loaded = load_bundle(bundle)
    assert (loaded.defaults.sampler, loaded.defaults.steps, loaded.defaults.guidance_scale) == (
        "dpmsolver++",
        7,
        2.0,
    )
    readme = (bundle / "README.md").read_text(encoding="utf-8")
    assert readme == f"# b\n\n{readme_line(loaded.defaults)}\n\nmore\n"  # replaced in place, once


@pytest.mark.parametrize(
    "case, message",
    [
        ("other model", "was measured on another model"),
        ("bad steps", "steps 0 is outside"),
        ("not a sweep", "no recommended_defaults"),
    ],
)
def test_write_defaults_refuses_and_writes_nothing(
    case: str, message: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    bundle = make_bundle(tmp_path / "b")
    evaluation = _evaluation(tmp_path, bundle, steps=0 if case == "bad steps" else 7)
    if case == "other model":
        evaluation = _evaluation(
            tmp_path, make_bundle(tmp_path / "other", conditional=False), guidance_scale=1.0
        )
    elif case == "not a sweep":
        evaluation.write_text("{}", encoding="utf-8")
    before = {p.name: p.read_bytes() for p in bundle.iterdir()}
    assert main(["eval", "--bundle", str(bundle), "--write-defaults", str(evaluation)]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert {p.name: p.read_bytes() for p in bundle.iterdir()} == before
