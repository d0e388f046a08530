"""The emoji model as a first-class shipped model, beside the digits: by name in `latent-ddpm sample`,
``Pipeline.from_bundle``, the SamplingEngine and `latent-ddpm serve`'s model list.

Runs on ``shipped_emoji`` (tests/conftest.py): a tiny fp16 RGB factory bundle with the emoji data set's nine
group names installed as the shipped "emoji" model, so the day the trained bundle lands in
latent_ddpm/data/emoji these paths are already proven. Class names hold spaces and '&'.
"""

from __future__ import annotations

import shlex
from pathlib import Path

import numpy as np
import pytest
from bundle_factory import EMOJI_GROUPS
from PIL import Image

import latent_ddpm
from latent_ddpm.cli import main
from latent_ddpm.runtime.engine import SamplingEngine
from latent_ddpm.runtime.pipeline import Pipeline
from latent_ddpm.runtime.shipped import shipped_models

pytestmark = pytest.mark.usefixtures("shipped_emoji")
STEPS = 3


def _sample(*argv: str) -> int:
    return main(["sample", "--bundle", "emoji", "--steps", str(STEPS), "--threads", "1", "--quiet", *argv])


def test_both_models_ship_and_emoji_loads_by_name(shipped_emoji: Path) -> None:
    assert list(shipped_models()) == ["digits", "emoji"]
    pipe = Pipeline.from_bundle("emoji", threads=1)
    b = pipe.bundle
    assert (b.name, b.image_shape, b.root) == ("emoji", (3, 32, 32), (shipped_emoji / "emoji").resolve())
    assert b.conditioning is not None and b.conditioning.class_names == EMOJI_GROUPS
    assert {m.precision for m in b.models.values()} == {"fp16"}


def test_the_stand_in_has_the_emoji_data_sets_classes() -> None:
    with np.load(Path(latent_ddpm.__file__).parent / "data" / "emoji_32.npz") as data:
        assert data["class_names"].tolist() == list(EMOJI_GROUPS)


def test_sample_by_name_and_class_with_spaces_writes_rgb(tmp_path: Path) -> None:
    out, each = tmp_path / "x.png", tmp_path / "each"
    argv = shlex.split('--class "Animals & Nature" --num 4 --seed 5')  # as typed in a shell
    assert _sample(*argv, "--out", str(out), "--out-dir", str(each)) == 0
    assert Image.open(out).mode == "RGB"
    files = sorted(each.glob("*.png"))
    expected = Pipeline.from_bundle("emoji", threads=1).generate(
        num_images=4, steps=STEPS, seed=5, class_labels="Animals & Nature"
    )
    assert len(files) == 4
    for path, image in zip(files, expected.images, strict=True):
        assert np.array_equal(np.asarray(Image.open(path)), image)
    assert not np.array_equal(expected.images[..., 0], expected.images[..., 1])  # colour, not grey


def test_a_wrong_class_lists_the_names_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _sample("--class", "Animals", "--out", str(tmp_path / "x.png")) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "class 'Animals' is not one of " + ", ".join(EMOJI_GROUPS) in line
    assert list(tmp_path.iterdir()) == []


def test_help_lists_the_classes_quoted_for_a_shell(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["sample", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "digits: 0, 1, 2" in text
    assert "emoji: " + ", ".join(shlex.quote(n) for n in EMOJI_GROUPS) in text
    assert "'Animals & Nature'" in text


def test_init_image_rgb(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    picture = tmp_path / "in.png"
    Image.fromarray(rng.integers(0, 256, (48, 40, 3), dtype=np.uint8)).save(picture)
    out = tmp_path / "x.png"
    argv = ["--init-image", str(picture), "--strength", "0.5", "--num", "2", "--class", "Flags"]
    assert _sample(*argv, "--seed", "1", "--out", str(out)) == 0
    assert Image.open(out).mode == "RGB"


def test_the_engine_samples_emoji_as_the_pipeline_does() -> None:
    pipe = Pipeline.from_bundle("emoji", threads=1)
    args = {"num_images": 3, "steps": STEPS, "seed": 2, "class_labels": "Food & Drink"}
    engine = SamplingEngine(pipe)
    try:
        got = engine.submit(**args).result()
    finally:
        engine.close()
    assert got.images.shape == (3, 32, 32, 3)
    assert np.array_equal(got.images, pipe.generate(**args).images)


def test_serve_lists_both_shipped_models() -> None:
    """What `latent-ddpm serve --bundle digits --bundle emoji` answers on GET /v1/models."""
    from latent_ddpm.serve.cards import load_cards

    cards = load_cards(["digits", "emoji"])
    assert [(c.id, c.shipped, c.path) for c in cards] == [
        ("digits", "digits", None),
        ("emoji", "emoji", None),
    ]
    entry = cards[1].describe(0)
    assert (entry["id"], entry["size"], entry["channels"]) == ("emoji", "32x32", 3)
    assert entry["classes"] == list(EMOJI_GROUPS)
