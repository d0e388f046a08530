"""ONNX Runtime engine options: shape-specialised sessions (bounded, thread-safe, same results) and spinning."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from bundle_factory import make_bundle
from thread_safety import assert_thread_safe

from latent_ddpm.errors import InputError
from latent_ddpm.runtime import Pipeline, load_bundle
from latent_ddpm.runtime.backends import EngineOptions, open_engine


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_bundle(tmp_path_factory.mktemp("ort") / "b")


def _decoder_feed(batch: int) -> dict[str, np.ndarray]:
    return {"latent": np.random.default_rng(batch).standard_normal((batch, 4, 8, 8), dtype=np.float32)}


def test_static_sessions_per_shape_give_the_same_outputs(bundle_dir: Path) -> None:
    bundle = load_bundle(bundle_dir)
    dynamic = open_engine(bundle, "vae_decoder", threads=1)
    static = open_engine(
        bundle, "vae_decoder", threads=1, options=EngineOptions(static_shapes=True, max_shapes=2)
    )
    for batch in (1, 2, 3, 1):
        feed = _decoder_feed(batch)
        np.testing.assert_array_equal(static.run(feed)["image"], dynamic.run(feed)["image"])
    assert static.cached_shapes == [(("batch", 3),), (("batch", 1),)]
    assert dynamic.cached_shapes == []


def test_a_static_session_fixes_the_free_dimensions(bundle_dir: Path) -> None:
    """The override is what makes it static: a session built for batch 2 refuses batch 3."""
    bundle = load_bundle(bundle_dir)
    engine = open_engine(bundle, "vae_decoder", threads=1, options=EngineOptions(static_shapes=True))
    session = engine._open((("batch", 2),))
    assert session.get_inputs()[0].shape == [2, 4, 8, 8]
    with pytest.raises(Exception, match="(?i)dimension|shape"):
        session.run(None, _decoder_feed(3))


def test_concurrent_calls_with_static_shapes(tmp_path: Path) -> None:
    """Several threads, three shapes (sessions built while other calls run), one engine."""
    options = EngineOptions(static_shapes=True)
    engine = open_engine(load_bundle(make_bundle(tmp_path / "b")), "vae_decoder", threads=1, options=options)
    assert_thread_safe(engine, [_decoder_feed(1 + i % 3) for i in range(9)], "image")


def test_spinning_switch_reaches_the_session(bundle_dir: Path) -> None:
    bundle = load_bundle(bundle_dir)
    off = open_engine(bundle, "unet", options=EngineOptions(allow_spinning=False))._session
    assert off.get_session_options().get_session_config_entry("session.intra_op.allow_spinning") == "0"
    default = open_engine(bundle, "unet")._session  # ONNX Runtime's own default (spinning) is left alone
    with pytest.raises(RuntimeError, match="does not have configuration"):
        default.get_session_options().get_session_config_entry("session.intra_op.allow_spinning")


def test_pipeline_takes_engine_options(bundle_dir: Path) -> None:
    args = {"num_images": 2, "steps": 3, "seed": 1, "class_labels": 4, "guidance_scale": 2.0}
    options = EngineOptions(static_shapes=True, allow_spinning=False)
    a = Pipeline.from_bundle(bundle_dir, threads=1, engine_options=options).generate(**args)
    b = Pipeline.from_bundle(bundle_dir, threads=1).generate(**args)
    np.testing.assert_array_equal(a.images, b.images)


@pytest.mark.parametrize(
    ("backend", "options", "message"),
    [
        ("onnxruntime", {"cache_dir": Path("c")}, r"cache_dir=.* does not apply to the onnxruntime backend"),
        ("tensorrt", {"static_shapes": True}, r"static_shapes=True does not apply to the tensorrt backend"),
        ("tensorrt", {"allow_spinning": False}, r"\(it honours: none\)"),
    ],
)
def test_options_a_backend_does_not_honour_are_refused(
    bundle_dir: Path, backend: str, options: dict, message: str
) -> None:
    with pytest.raises(InputError, match=message):
        Pipeline.from_bundle(bundle_dir, backend=backend, engine_options=EngineOptions(**options))
