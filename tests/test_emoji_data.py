"""The shipped emoji data set (latent_ddpm/data/emoji_32.npz) and the script that rebuilds it."""

from __future__ import annotations

import hashlib
import json
import shutil
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from latent_ddpm.errors import InputError
from latent_ddpm.train.config import DataConfig
from latent_ddpm.train.data import load_images
from latent_ddpm.train.datasets import emoji

DATA = resources.files("latent_ddpm.data")
GROUPS = {  # Unicode emoji 15.0, fully-qualified, no skin-tone modifier, no twin (docs/emoji.md)
    "Smileys & Emotion": 166,
    "People & Body": 362,
    "Animals & Nature": 152,
    "Food & Drink": 133,
    "Travel & Places": 218,
    "Activities": 85,
    "Objects": 261,
    "Symbols": 223,
    "Flags": 261,
}


@pytest.fixture(scope="module")
def shipped() -> dict[str, np.ndarray]:
    with resources.as_file(DATA / "emoji_32.npz") as path, np.load(path) as npz:
        return {name: npz[name] for name in npz.files}


def test_shipped_array(shipped: dict[str, np.ndarray]):
    images, labels = shipped["images"], shipped["labels"]
    assert images.shape == (1861, 32, 32, 3) and images.dtype == np.uint8
    assert labels.shape == (1861,) and labels.dtype == np.uint8
    assert shipped["class_names"].tolist() == list(GROUPS)
    assert np.bincount(labels).tolist() == list(GROUPS.values())
    assert np.all(np.diff(labels.astype(int)) >= 0)  # the file's order: grouped by class
    assert (images[:, 0, 0] == emoji.BACKGROUND).all()  # every corner is the one background
    assert len(np.unique(images.reshape(len(images), -1), axis=0)) == len(images)  # no two alike
    names = shipped["names"].tolist()
    assert names[0] == "grinning face" and shipped["emoji"][0] == "\U0001f600"
    assert names[-1] == "flag: Wales" and len(set(shipped["emoji"].tolist())) == 1861
    tones = [chr(p) for p in emoji.SKIN_TONES]
    assert not any(t in e for e in shipped["emoji"].tolist() for t in tones)


def test_sidecar_records_sources_and_hashes(shipped: dict[str, np.ndarray]):
    meta = json.loads((DATA / "emoji_32.json").read_text(encoding="utf-8"))
    assert meta["class_counts"] == GROUPS and meta["images"] == 1861
    assert meta["sha256"] == {n: hashlib.sha256(a.tobytes()).hexdigest() for n, a in shipped.items()}
    assert {s["package"] for s in meta["sources"].values()} == {"fonts-noto-color-emoji", "unicode-data"}
    assert all(s["version"] and len(s["sha256"]) == 64 for s in meta["sources"].values())
    assert "/" not in json.dumps(meta["sources"])  # files by name, no path of the machine that built it


def test_training_loads_it_with_its_class_names():
    data = load_images(DataConfig(source="emoji_32", channels=3, max_images=40), seed=0)
    assert data.images.shape == (40, 3, 32, 32) and data.class_names == list(GROUPS)
    assert len(set(data.labels.tolist())) > 4  # a random subset, not the first (all-smiley) rows


def test_read_emoji_test_keeps_one_of_each():
    text = """# group: Smileys & Emotion
1F600 ; fully-qualified # 😀 E1.0 grinning face
263A FE0F ; fully-qualified # ☺️ E0.6 smiling face
263A ; unqualified # ☺ E0.6 smiling face
# group: People & Body
1F44B ; fully-qualified # 👋 E0.6 waving hand
1F44B 1F3FB ; fully-qualified # 👋🏻 E1.0 waving hand: light skin tone
# group: Component
1F3FB ; component # 🏻 E1.0 light skin tone
"""
    kept, groups, skipped = emoji.read_emoji_test(text)
    assert [e.name for e in kept] == ["grinning face", "smiling face", "waving hand"]
    assert kept[1].sequence == "\u263a\ufe0f" and groups == ["Smileys & Emotion", "People & Body"]
    assert skipped == {"unqualified": 1, "skin-tone variant": 1, "component": 1}


def test_grid_of_the_shipped_array(tmp_path: Path):
    assert emoji.main(["--grid", str(tmp_path / "grid.png")]) == 0
    with Image.open(tmp_path / "grid.png") as im:
        assert im.mode == "RGB" and im.height == 2 * (9 * 34 + 2)  # 9 rows of 32 px + 2 px gaps, doubled


def test_bad_arguments_write_nothing(tmp_path: Path, capsys):
    assert emoji.main(["--out", str(tmp_path / "x.npy")]) == 2
    assert emoji.main(["--out", str(tmp_path / "x.npz"), "--size", "500"]) == 2
    assert emoji.main(["--out", str(tmp_path / "x.npz"), "--font", str(tmp_path / "none.ttf")]) == 2
    errors = capsys.readouterr().err.splitlines()
    assert [line.split(":")[1].strip() for line in errors] == ["error"] * 3
    assert "x.npy" in errors[0] and "500" in errors[1] and "none.ttf" in errors[2]
    assert list(tmp_path.iterdir()) == []


def _require_shipped_sources() -> None:
    """Skip, saying what is missing or different, unless the Debian files the array was built from are here."""
    if not shutil.which("dpkg"):
        pytest.skip("no dpkg: the rebuild reads Debian's fonts-noto-color-emoji and unicode-data")
    meta = json.loads((DATA / "emoji_32.json").read_text(encoding="utf-8"))
    for (package, name), key in ((emoji.FONT_SOURCE, "font"), (emoji.TEST_SOURCE, "emoji_test")):
        try:
            path = emoji.debian_file(package, name)
        except InputError:
            pytest.skip(f"Debian package {package} not installed (apt-get install {package})")
        recorded = meta["sources"][key]
        if hashlib.sha256(path.read_bytes()).hexdigest() != recorded["sha256"]:
            pytest.skip(f"installed {name} is not the one of {package} {recorded['version']} (shipped)")


def test_rebuild_reproduces_the_shipped_array(tmp_path: Path, shipped: dict[str, np.ndarray]):
    """Renders 1,870 emoji at 136 px and shrinks them: 7 s on this (shared, 2-core) machine."""
    _require_shipped_sources()
    out = tmp_path / "emoji_32.npz"
    assert emoji.main(["--out", str(out)]) == 0
    meta = json.loads(out.with_suffix(".json").read_text(encoding="utf-8"))
    shipped_meta = json.loads((DATA / "emoji_32.json").read_text(encoding="utf-8"))
    assert meta["sources"] == shipped_meta["sources"]
    renderers = f"renderer now {meta['renderer']}, shipped {shipped_meta['renderer']}"
    with np.load(out) as rebuilt:
        assert rebuilt.files == list(shipped)
        for name, array in shipped.items():
            assert rebuilt[name].dtype == array.dtype, name
            assert rebuilt[name].tobytes() == array.tobytes(), f"{name} differs; {renderers}"
    assert meta["sha256"] == shipped_meta["sha256"]
