"""`latent-ddpm eval` end to end on factory bundles (garbage images: the figures only need to be well-formed)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from bundle_factory import EMOJI_GROUPS, make_bundle, rewrite_meta

from latent_ddpm.cli import main


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return make_bundle(tmp_path_factory.mktemp("cond") / "bundle")


def test_eval_prints_and_writes_every_figure(bundle, tmp_path, capsys) -> None:
    out = tmp_path / "sub" / "eval.json"
    rc = main(
        [
            "eval",
            "--bundle",
            str(bundle),
            "--per-class",
            "3",
            "--steps",
            "4",
            "--batch",
            "7",
            "--guidance",
            "1.5",
            "--seed",
            "5",
            "--json",
            str(out),
        ]
    )
    assert rc == 0
    text = capsys.readouterr()
    for needle in (
        "conditional accuracy:",
        "classifier FID:",
        "real-vs-real floor",
        "s/image",
        "digits judge's held-out accuracy:",
        "sampler=ddim steps=4 guidance=1.5 eta=0 seed=5",
    ):
        assert needle in text.out
    assert "sampling" in text.err  # the progress bar
    doc = json.loads(out.read_text())
    r = doc["report"]
    assert r["num_images"] == 30 and r["conditional"] and r["batch"] == 7
    assert 0.0 <= r["accuracy"] <= 1.0 and set(r["per_class_accuracy"]) == {str(d) for d in range(10)}
    assert all(0.0 <= v <= 1.0 for v in r["per_class_accuracy"].values())
    assert [sum(row) for row in r["confusion"]] == [3] * 10
    assert r["cfid"] > 0 and r["cfid_std"] >= 0 and r["cfid_floor"] > 0
    assert r["floor_images"] == 30 and r["reference_images"] == 1000
    assert r["seconds_per_image"] > 0 and r["classifier_held_out_accuracy"] >= 0.97
    assert doc["environment"]["machine"]["cores"] >= 1


def test_eval_is_repeatable_with_a_seed(bundle, tmp_path) -> None:
    figures = []
    for name in ("a", "b"):
        out = tmp_path / f"{name}.json"
        assert (
            main(
                [
                    "eval",
                    "--bundle",
                    str(bundle),
                    "--per-class",
                    "2",
                    "--steps",
                    "3",
                    "--quiet",
                    "--json",
                    str(out),
                ]
            )
            == 0
        )
        r = json.loads(out.read_text())["report"]
        figures.append((r["cfid"], r["accuracy"], r["confusion"]))
    assert figures[0] == figures[1]


def test_unconditional_bundle_gets_cfid_only(tmp_path, capsys) -> None:
    b = make_bundle(tmp_path / "uncond", conditional=False)
    out = tmp_path / "u.json"
    assert (
        main(["eval", "--bundle", str(b), "--per-class", "2", "--steps", "3", "--quiet", "--json", str(out)])
        == 0
    )
    assert "conditional accuracy" not in capsys.readouterr().out
    r = json.loads(out.read_text())["report"]
    assert r["accuracy"] is None and not r["conditional"] and r["num_images"] == 20 and r["cfid"] > 0


def _error(argv, capsys) -> str:
    assert main(argv) == 2
    return capsys.readouterr().err


def test_missing_bundle(tmp_path, capsys) -> None:
    err = _error(["eval", "--bundle", str(tmp_path / "nope")], capsys)
    assert "bundle directory not found" in err and "nope" in err


def test_too_few_images_per_class(bundle, capsys, tmp_path) -> None:
    out = tmp_path / "never.json"
    err = _error(["eval", "--bundle", str(bundle), "--per-class", "1", "--json", str(out)], capsys)
    assert "per_class must be an integer >= 2, got 1" in err
    assert not out.exists()


def test_image_size_the_classifier_cannot_take(tmp_path, capsys) -> None:
    b = make_bundle(tmp_path / "big")
    rewrite_meta(b, image={"channels": 3, "height": 64, "width": 64, "value_range": [-1.0, 1.0]})
    err = _error(["eval", "--bundle", str(b)], capsys)
    assert "3x64x64" in err and "the judges know only" in err and "1x32x32 with classes 0, 1" in err


def test_classes_that_are_not_digits(tmp_path, capsys) -> None:
    b = make_bundle(tmp_path / "names")
    names = [f"c{i}" for i in range(10)]
    rewrite_meta(b, conditioning={"num_classes": 10, "class_names": names, "null_class": 10})
    assert "'c0'" in _error(["eval", "--bundle", str(b)], capsys)


def test_bad_sampling_setting_names_the_value(bundle, capsys) -> None:
    assert "steps must be an integer in 1..1000" in _error(
        ["eval", "--bundle", str(bundle), "--steps", "0"], capsys
    )


def test_eval_needs_no_torch(bundle, tmp_path) -> None:
    # None in sys.modules makes any import of these packages fail, as on a runtime-only install.
    code = (
        "import sys\n"
        "for name in ('torch', 'diffusers', 'scipy'): sys.modules[name] = None\n"
        "from latent_ddpm.cli import main\n"
        f"sys.exit(main(['eval', '--bundle', {str(bundle)!r}, '--per-class', '2', '--steps', '2', '--quiet']))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "classifier FID" in proc.stdout


def test_a_colour_emoji_bundle_is_judged_by_the_emoji_judge(emoji_bundle, tmp_path, capsys) -> None:
    out = tmp_path / "e.json"
    argv = ["eval", "--bundle", str(emoji_bundle), "--per-class", "2", "--steps", "3", "--quiet"]
    assert main([*argv, "--json", str(out)]) == 0
    assert "emoji judge's held-out accuracy" in capsys.readouterr().out
    r = json.loads(out.read_text())["report"]
    assert r["judge"] == "emoji" and r["num_images"] == 18 and r["conditional"]
    assert list(r["per_class_accuracy"]) == list(EMOJI_GROUPS)
    assert [sum(row) for row in r["confusion"]] == [2] * 9 and len(r["confusion"][0]) == 9
    assert r["reference_images"] == 135 and r["floor_images"] == 18 and r["cfid"] > 0


def test_memorisation_is_reported_with_its_real_yardstick_and_picture(bundle, tmp_path, capsys) -> None:
    out, png = tmp_path / "m.json", tmp_path / "pics" / "pairs.png"
    argv = ["eval", "--bundle", str(bundle), "--per-class", "2", "--steps", "3", "--quiet"]
    assert main([*argv, "--json", str(out), "--memorisation", str(png)]) == 0
    text = capsys.readouterr().out
    assert "memorisation:" in text and "real held-out images" in text
    m = json.loads(out.read_text())["memorisation"]
    gen, real = m["generated"], m["held_out_real"]
    assert gen["num_generated"] == 20 and gen["num_training"] == 5000
    assert 0.0 <= gen["share_below"] <= 1.0 and set(gen["per_class_share"]) == {str(d) for d in range(10)}
    # held-out digits against the judge's 3,000 training ones: about half by construction
    assert real["num_generated"] == 2000 and real["num_training"] == 3000 and 0.3 < real["share_below"] < 0.7
    feats = m["judge_features_share_below"]
    assert 0.3 < feats["held_out_real"] < 0.7 and 0.0 <= feats["generated"] <= 1.0
    from PIL import Image

    with Image.open(png) as picture:
        assert picture.mode == "RGB" and picture.width >= 8 * 64 and picture.height >= 2 * 64


def test_memorisation_picture_must_be_a_png_and_is_checked_before_sampling(bundle, tmp_path, capsys) -> None:
    out = tmp_path / "never.json"
    argv = ["eval", "--bundle", str(bundle), "--json", str(out), "--memorisation", str(tmp_path / "m.jpg")]
    err = _error(argv, capsys)
    assert "--memorisation must name a .png file" in err and "m.jpg" in err
    assert list(tmp_path.iterdir()) == []
