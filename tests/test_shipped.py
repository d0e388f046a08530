"""``--bundle`` values: a folder wins over a shipped model's name; names list what ships; nothing else works."""

from __future__ import annotations

from pathlib import Path

import pytest

from latent_ddpm.errors import BundleError
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
