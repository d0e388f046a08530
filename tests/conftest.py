"""Session fixtures: tiny random diffusers models and their exported bundles, built once per test session.

Bundles are shared: treat them as read-only (copy one before changing it). torch and diffusers are
imported only when a fixture is used, so runtime-only tests never load them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest


@contextmanager
def torch_single_thread() -> Iterator[None]:
    """Tiny models on a shared 2-core machine: one torch thread is ~100x faster than contended threads."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """``tiny_model_dir(kind)``: the source directory of a tiny model (tests/tiny_models.py KINDS)."""
    pytest.importorskip("diffusers")
    from tiny_models import build_tiny_model

    root = tmp_path_factory.mktemp("tiny_models")
    built: dict[str, Path] = {}

    def get(kind: str) -> Path:
        if kind not in built:
            with torch_single_thread():
                built[kind] = build_tiny_model(kind, root / kind)
        return built[kind]

    return get


@pytest.fixture(scope="session")
def exported_bundle(
    tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Callable[[str], Path]
) -> Callable:
    """``exported_bundle(kind, precision="fp32")``: the ExportResult of a validated export of a tiny model."""
    from latent_ddpm.export.exporter import export_bundle

    root = tmp_path_factory.mktemp("tiny_bundles")
    done: dict[tuple[str, str], Any] = {}

    def get(kind: str, precision: str = "fp32") -> Any:
        key = (kind, precision)
        if key not in done:
            with torch_single_thread():
                done[key] = export_bundle(
                    tiny_model_dir(kind), root / f"{kind}-{precision}", precision=precision, progress=False
                )
        return done[key]

    return get


@pytest.fixture(scope="session")
def tiny_bundle(exported_bundle: Callable) -> Path:
    """A validated fp32 bundle of the class-conditional AutoencoderKL tiny model (16x16 grey, 3 classes)."""
    return exported_bundle("kl_cond").path


@pytest.fixture(scope="session")
def emoji_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny stand-in for the shipped emoji model: 32x32 RGB, the 9 emoji groups, fp16 as it ships."""
    from bundle_factory import EMOJI_GROUPS, make_bundle

    root = tmp_path_factory.mktemp("emoji") / "emoji"
    return make_bundle(root, channels=3, class_names=EMOJI_GROUPS, name="emoji", precision="fp16")


@pytest.fixture(scope="module")
def shipped_emoji(tmp_path_factory: pytest.TempPathFactory, emoji_bundle: Path) -> Iterator[Path]:
    """The package's data folder as it is once the emoji bundle ships beside the digits: a temporary folder
    with this checkout's digits bundle (linked; a factory one where none is trained yet) and ``emoji_bundle``,
    put in place of ``latent_ddpm.runtime.shipped.DATA_DIR`` for the module; nothing is written into the
    package. Yields that folder."""
    from bundle_factory import make_bundle

    from latent_ddpm.runtime import shipped

    data = tmp_path_factory.mktemp("shipped")
    digits = shipped.DATA_DIR / "digits"
    if (digits / "bundle.json").is_file():
        (data / "digits").symlink_to(digits, target_is_directory=True)
    else:
        make_bundle(data / "digits", name="digits")
    (data / "emoji").symlink_to(emoji_bundle, target_is_directory=True)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(shipped, "DATA_DIR", data)
        yield data


@pytest.fixture(scope="module")
def bomb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 13000x13000 PNG of a few hundred kB: decoded, it would take 676 MB."""
    from demo_server import bomb_png

    return bomb_png(tmp_path_factory.mktemp("bomb") / "bomb.png")


@pytest.fixture()
def no_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to decode pixels fails (the demo server runs in the test's process): size checks must
    come from the header alone."""
    from PIL import ImageFile

    def refuse(self: Any, *args: Any, **kwargs: Any) -> None:
        raise AssertionError(f"decoded a {self.size} image")

    monkeypatch.setattr(ImageFile.ImageFile, "load", refuse)
