"""``--bundle`` values: a folder wins over a shipped model's name; names list what ships; nothing else works."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from latent_ddpm.errors import BundleError
from latent_ddpm.runtime.pipeline import Pipeline
from latent_ddpm.runtime.shipped import DATA_DIR, resolve_bundle, shipped_bundle_path, shipped_models


def test_the_default_and_names_are_the_shipped_folders() -> None:
    assert "digits" in shipped_models()
    assert resolve_bundle(None) == DATA_DIR / "digits" == shipped_bundle_path()
    assert resolve_bundle("digits") == DATA_DIR / "digits"


def test_an_existing_folder_wins_over_a_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "digits").mkdir()
    assert resolve_bundle("digits") == Path("digits")


def test_an_unknown_name_lists_the_shipped_models(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(
        BundleError, match=r"bundle directory not found: nosuch and no shipped model .*digits"
    ):
        resolve_bundle("nosuch")
    assert resolve_bundle("a/b") == Path("a/b")  # a path: load_bundle reports it as not found
    with pytest.raises(BundleError, match="no shipped model named 'nosuch'"):
        shipped_bundle_path("nosuch")


@pytest.mark.parametrize("name", ["digits", "emoji"])
def test_each_shipped_model_is_validated_and_samples_by_name(name: str) -> None:
    """What ships is what export validated, with its attribution, and samples by its name; the emoji model's
    classes are the emoji data set's groups, in its label order (skipped until it is exported)."""
    if name not in shipped_models():
        pytest.skip(f"latent_ddpm/data/{name} is not exported in this checkout yet")
    pipe = Pipeline.from_bundle(name, threads=1)
    b = pipe.bundle
    assert b.name == name and b.raw["validation"]["passed"] is True
    assert (DATA_DIR / name / "README.md").is_file()
    cond = b.conditioning
    assert cond is not None
    if name == "emoji":
        with np.load(DATA_DIR / "emoji_32.npz") as data:
            assert list(cond.class_names) == data["class_names"].tolist()
        assert b.image_shape[0] == 3
    label = cond.class_names[-1]
    images = pipe.generate(num_images=1, steps=2, seed=0, class_labels=label).images
    assert images.shape == (1, *b.image_shape[1:], b.image_shape[0])
