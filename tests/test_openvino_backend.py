"""The openvino backend: f32 unless bf16 is asked for, one compiled model per shape (bounded), the same checks
as ONNX Runtime, thread-safe, and never a byte written into the bundle.

The precision test runs the shipped digits U-Net (a real model, where bf16 visibly differs); the rest run
the millisecond graphs of tests/bundle_factory.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from bundle_factory import make_bundle, rewrite_meta
from thread_safety import assert_thread_safe

pytest.importorskip("openvino")

from latent_ddpm.errors import BackendUnavailableError, BundleError, InputError  # noqa: E402
from latent_ddpm.runtime import Pipeline, load_bundle  # noqa: E402
from latent_ddpm.runtime.backends import EngineOptions, open_engine  # noqa: E402
from latent_ddpm.runtime.backends.openvino_backend import native_bf16  # noqa: E402
from latent_ddpm.runtime.shipped import DATA_DIR  # noqa: E402

SHIPPED_BUNDLE = DATA_DIR / "digits"


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_bundle(tmp_path_factory.mktemp("ov") / "b")


def _unet_feed(batch: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "sample": rng.standard_normal((batch, 4, 8, 8), dtype=np.float32),
        "timestep": rng.integers(0, 1000, batch).astype(np.int64),
        "class_labels": rng.integers(0, 11, batch).astype(np.int64),
    }


@pytest.mark.skipif(not (SHIPPED_BUNDLE / "bundle.json").is_file(), reason="no shipped bundle")
def test_default_precision_is_f32_on_a_real_unet() -> None:
    """OpenVINO's CPU plugin would pick bf16 on this CPU by itself; the engine must ask for f32."""
    bundle = load_bundle(SHIPPED_BUNDLE)
    feed = _unet_feed(2)
    reference = open_engine(bundle, "unet", threads=1).run(feed)["model_output"]
    engine = open_engine(bundle, "unet", backend="openvino", threads=1)
    assert str(engine.compiled_model(feed).get_property("INFERENCE_PRECISION_HINT")) == "<Type: 'float32'>"
    out = engine.run(feed)["model_output"]
    assert np.abs(out - reference).max() < 1e-5
    if native_bf16():  # the trap: left to itself, OpenVINO computes visibly differently
        unset = open_engine(bundle, "unet", backend="openvino", threads=1)
        del unset.config["INFERENCE_PRECISION_HINT"]
        assert np.abs(unset.run(feed)["model_output"] - reference).max() > 1e-3


def test_threads_are_honoured(bundle_dir: Path) -> None:
    bundle = load_bundle(bundle_dir)
    engine = open_engine(bundle, "unet", backend="openvino", threads=1)
    assert engine.compiled_model(_unet_feed(1)).get_property("INFERENCE_NUM_THREADS") == 1


def test_one_compiled_model_per_shape_least_recent_dropped(bundle_dir: Path) -> None:
    bundle = load_bundle(bundle_dir)
    ort = open_engine(bundle, "unet", threads=1)
    engine = open_engine(bundle, "unet", "openvino", threads=1, options=EngineOptions(max_shapes=2))
    for batch in (1, 2, 3, 2):
        feed = _unet_feed(batch, seed=batch)
        np.testing.assert_allclose(
            engine.run(feed)["model_output"], ort.run(feed)["model_output"], rtol=0, atol=1e-6
        )
    assert engine.cached_shapes == [(("batch", 3),), (("batch", 2),)]  # the factory's U-Net fixes h and w
    same = _unet_feed(2)
    assert engine.compiled_model(same) is engine.compiled_model(same)


def test_the_same_input_checks_as_onnxruntime(bundle_dir: Path) -> None:
    bundle = load_bundle(bundle_dir)
    for backend in ("onnxruntime", "openvino"):
        engine = open_engine(bundle, "unet", backend)
        feed = _unet_feed(2)
        with pytest.raises(InputError, match=r"unet.onnx: input 'timestep' must be int64, got int32"):
            engine.run({**feed, "timestep": feed["timestep"].astype(np.int32)})
        with pytest.raises(InputError, match=r"inputs disagree on 'batch': 'sample' has 2, 'timestep' has 3"):
            engine.run({**feed, "timestep": np.zeros(3, np.int64)})
        with pytest.raises(InputError, match=r"missing \['class_labels'\]"):
            engine.run({k: v for k, v in feed.items() if k != "class_labels"})


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_a_graph_that_is_not_the_declared_one_is_refused(tmp_path: Path, backend: str) -> None:
    root = make_bundle(tmp_path / "b")
    meta = json.loads((root / "bundle.json").read_text())
    meta["models"]["unet"]["inputs"][1]["name"] = "t"
    rewrite_meta(root, models=meta["models"])
    with pytest.raises(BundleError, match=r"unet.onnx: bundle.json declares input 't', the ONNX graph has"):
        open_engine(load_bundle(root), "unet", backend)


def test_concurrent_calls_get_their_own_results(tmp_path: Path) -> None:
    """Several threads, three shapes (compiled while other calls run), one engine."""
    engine = open_engine(load_bundle(make_bundle(tmp_path / "b")), "unet", "openvino", threads=1)
    assert_thread_safe(engine, [_unet_feed(1 + i % 3, seed=i) for i in range(8)], "model_output")


def test_pipeline_on_openvino_samples_what_onnxruntime_samples(bundle_dir: Path) -> None:
    args = {"num_images": 3, "steps": 4, "seed": 3, "class_labels": [1, 2, 3], "guidance_scale": 2.0}
    ours = Pipeline.from_bundle(bundle_dir, backend="openvino", threads=1)
    assert ours.backend == "openvino" and ours.providers == ["OpenVINO CPU (f32)"]
    a = ours.generate(**args)
    b = Pipeline.from_bundle(bundle_dir, threads=1).generate(**args)
    np.testing.assert_allclose(a.latents, b.latents, rtol=0, atol=1e-5)
    assert np.abs(a.images.astype(int) - b.images.astype(int)).max() <= 1


def test_compile_cache_goes_where_asked_and_never_into_the_bundle(tmp_path: Path) -> None:
    root = make_bundle(tmp_path / "b")
    bundle = load_bundle(root)
    with pytest.raises(InputError, match=r"cache_dir .* is inside bundle"):
        open_engine(bundle, "unet", "openvino", options=EngineOptions(cache_dir=root / "cache"))
    before = sorted(p.name for p in root.rglob("*"))
    cache = tmp_path / "ov-cache"
    engine = open_engine(bundle, "unet", "openvino", options=EngineOptions(cache_dir=cache))
    engine.run(_unet_feed(1))
    assert any(cache.iterdir()), "OpenVINO wrote no compiled blob into the cache folder"
    assert sorted(p.name for p in root.rglob("*")) == before
    # A second engine (another process, in real use) loads the blob and computes the same.
    again = open_engine(bundle, "unet", "openvino", options=EngineOptions(cache_dir=cache))
    np.testing.assert_array_equal(
        again.run(_unet_feed(1))["model_output"], engine.run(_unet_feed(1))["model_output"]
    )


def test_options_and_arguments_it_does_not_take_are_refused(bundle_dir: Path) -> None:
    bundle = load_bundle(bundle_dir)
    with pytest.raises(InputError, match=r"static_shapes=True does not apply to the openvino backend"):
        open_engine(bundle, "unet", "openvino", options=EngineOptions(static_shapes=True))
    with pytest.raises(InputError, match=r"the openvino backend takes none"):
        open_engine(bundle, "unet", "openvino", providers=["CPUExecutionProvider"])
    with pytest.raises(InputError, match=r"max_shapes must be an integer >= 1"):
        open_engine(bundle, "unet", "openvino", options=EngineOptions(max_shapes=0))


def test_missing_openvino_names_the_extra(bundle_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(__import__("sys").modules, "openvino", None)  # makes `import openvino` fail
    with pytest.raises(BackendUnavailableError, match=r"pip install 'latent-ddpm\[openvino\]'"):
        Pipeline.from_bundle(bundle_dir, backend="openvino")
