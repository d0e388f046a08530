"""Pipeline.generate / img2img on a factory bundle: reproducibility, guidance batching and argument checks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from bundle_factory import make_bundle

from latent_ddpm.runtime import InputError, Pipeline


@pytest.fixture(scope="module")
def pipe(tmp_path_factory: pytest.TempPathFactory) -> Pipeline:
    return Pipeline.from_bundle(make_bundle(tmp_path_factory.mktemp("cond") / "b"))


@pytest.fixture(scope="module")
def uncond(tmp_path_factory: pytest.TempPathFactory) -> Pipeline:
    return Pipeline.from_bundle(make_bundle(tmp_path_factory.mktemp("uncond") / "b", conditional=False))


@pytest.mark.parametrize("sampler", ["ddim", "ddpm", "dpmsolver++"])
def test_generate_shapes_and_seed_reproducibility(pipe: Pipeline, sampler: str) -> None:
    a = pipe.generate(num_images=3, steps=8, sampler=sampler, seed=123, class_labels=[1, 2, 3])
    b = pipe.generate(num_images=3, steps=8, sampler=sampler, seed=123, class_labels=[1, 2, 3])
    assert a.images.shape == (3, 32, 32, 1) and a.images.dtype == np.uint8
    assert a.latents.shape == (3, 4, 8, 8) and a.latents.dtype == np.float32
    np.testing.assert_array_equal(a.images, b.images)
    np.testing.assert_array_equal(a.latents, b.latents)
    c = pipe.generate(num_images=3, steps=8, sampler=sampler, seed=124, class_labels=[1, 2, 3])
    assert not np.array_equal(a.latents, c.latents)
    assert a.timings.steps == 8 and a.timings.total_s > 0


def test_defaults_come_from_the_bundle(pipe: Pipeline) -> None:
    r = pipe.generate(seed=0)
    d = pipe.bundle.defaults
    assert (r.sampler, r.steps, r.guidance_scale, r.eta) == (d.sampler, d.steps, d.guidance_scale, d.eta)
    assert r.images.shape[0] == 1 and r.class_labels is not None and 0 <= r.class_labels[0] < 10


def test_random_classes_follow_the_seed(pipe: Pipeline) -> None:
    a = pipe.generate(num_images=6, steps=2, seed=5)
    b = pipe.generate(num_images=6, steps=2, seed=5)
    np.testing.assert_array_equal(a.class_labels, b.class_labels)


def test_class_names_and_indices_agree(pipe: Pipeline) -> None:
    a = pipe.generate(num_images=2, steps=3, seed=1, class_labels="7")
    b = pipe.generate(num_images=2, steps=3, seed=1, class_labels=7)
    np.testing.assert_array_equal(a.latents, b.latents)
    np.testing.assert_array_equal(a.class_labels, [7, 7])


class _CountingEngine:
    """Wraps an engine and records the batch size of every call."""

    def __init__(self, engine) -> None:
        self.engine, self.batches = engine, []
        self.model, self.backend = engine.model, engine.backend

    @property
    def providers(self) -> list[str]:
        return self.engine.providers

    def run(self, feed):
        self.batches.append(feed["sample"].shape[0])
        return self.engine.run(feed)


def test_guidance_is_one_batched_call_per_step(pipe: Pipeline) -> None:
    counting = _CountingEngine(pipe.unet)
    guided = Pipeline(pipe.bundle, counting, pipe.decoder, pipe.encoder)
    guided.generate(num_images=3, steps=5, seed=0, class_labels=4, guidance_scale=3.0)
    assert counting.batches == [6] * 5
    counting.batches.clear()
    guided.generate(num_images=3, steps=5, seed=0, class_labels=4, guidance_scale=1.0)
    assert counting.batches == [3] * 5


def test_guidance_formula(pipe: Pipeline) -> None:
    """The factory U-Net adds label/10, so guided output = uncond + g * (cond - uncond) is checkable exactly."""
    x = np.zeros((1, 4, 8, 8), np.float32)
    out = pipe._model_output(x, 500, np.array([10, 3], np.int64), 2.5)
    # uncond (label 10): 0.5 + 1.0 ; cond (label 3): 0.5 + 0.3 ; guided = 1.5 + 2.5 * (0.8 - 1.5)
    np.testing.assert_allclose(out, np.full_like(x, 1.5 + 2.5 * (0.8 - 1.5)), atol=1e-6)


def test_latents_are_used_as_given(pipe: Pipeline) -> None:
    x = np.random.default_rng(0).standard_normal((2, 4, 8, 8), dtype=np.float32)
    a = pipe.generate(latents=x, steps=4, seed=1, class_labels=0)
    b = pipe.generate(latents=x, steps=4, seed=2, class_labels=0)
    np.testing.assert_array_equal(a.latents, b.latents)  # DDIM eta=0: the seed no longer matters


def test_callback_and_previews(pipe: Pipeline) -> None:
    seen = []
    r = pipe.generate(
        num_images=2,
        steps=6,
        seed=0,
        class_labels=1,
        callback=lambda i, t, x: seen.append((i, t, x.shape)),
        preview_steps=[0, 5],
    )
    assert [s[0] for s in seen] == list(range(6))
    assert all(s[2] == (2, 4, 8, 8) for s in seen)
    assert [p.step_index for p in r.previews] == [0, 5]
    assert r.previews[0].images.shape == (2, 32, 32, 1)


def test_unconditional_model(uncond: Pipeline) -> None:
    r = uncond.generate(num_images=2, steps=3, seed=0)
    assert r.class_labels is None and r.guidance_scale == 1.0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"steps": 0}, r"steps must be an integer in 1\.\.1000"),
        ({"steps": 1001}, r"steps must be an integer in 1\.\.1000"),
        ({"steps": 2.5}, "steps must be an integer"),
        ({"num_images": 0}, "num_images must be an integer >= 1"),
        ({"eta": -0.1}, "eta must be a finite number >= 0"),
        ({"eta": 0.5, "sampler": "ddpm"}, "applies to the ddim sampler only"),
        ({"sampler": "euler"}, "sampler 'euler' is not one of"),
        ({"class_labels": 10}, r"class label 10 is outside 0\.\.9"),
        ({"class_labels": -1}, r"class label -1 is outside 0\.\.9"),
        ({"class_labels": "cat"}, "class 'cat' is not one of"),
        ({"class_labels": [1, 2], "num_images": 3}, "got 2 class labels for 3 images"),
        ({"guidance_scale": float("nan")}, "guidance_scale must be a finite number"),
        ({"guidance_scale": -1.0}, "guidance_scale must be a finite number >= 0"),
        ({"seed": -3}, "seed must be a non-negative integer"),
        ({"latents": np.zeros((1, 4, 8, 9), np.float32)}, r"latents must have shape \(N, 4, 8, 8\)"),
        ({"latents": np.zeros((1, 4, 8, 8), np.float64)}, "latents must be float32"),
        ({"latents": np.full((1, 4, 8, 8), np.nan, np.float32)}, "latents contain NaN or Inf"),
        ({"latents": np.zeros((2, 4, 8, 8), np.float32), "num_images": 3}, "num_images=3 but latents hold 2"),
    ],
)
def test_bad_arguments(pipe: Pipeline, kwargs: dict, message: str) -> None:
    with pytest.raises(InputError, match=message):
        pipe.generate(**kwargs)


def test_guidance_on_unconditional_model_is_refused(uncond: Pipeline) -> None:
    with pytest.raises(
        InputError, match="needs classifier-free guidance, but this is an unconditional model"
    ):
        uncond.generate(guidance_scale=3.0)
    with pytest.raises(InputError, match="this model is unconditional"):
        uncond.generate(class_labels=1)


def test_engine_checks_the_feed(pipe: Pipeline) -> None:
    x = np.zeros((1, 4, 8, 8), np.float32)
    t = np.zeros((1,), np.int64)
    with pytest.raises(InputError, match="'timestep' must be int64, got float32"):
        pipe.unet.run({"sample": x, "timestep": t.astype(np.float32), "class_labels": t})
    with pytest.raises(InputError, match="'sample' must have rank 4"):
        pipe.unet.run({"sample": x[0], "timestep": t, "class_labels": t})
    with pytest.raises(InputError, match="missing"):
        pipe.unet.run({"sample": x, "timestep": t})
    with pytest.raises(InputError, match=r"'sample' dimension 1 must be 4"):
        pipe.unet.run({"sample": np.zeros((1, 3, 8, 8), np.float32), "timestep": t, "class_labels": t})


def test_img2img_strength_zero_is_reconstruction(pipe: Pipeline) -> None:
    img = np.zeros((32, 32, 1), np.uint8)
    img[8:24, 12:20] = 255
    r = pipe.img2img(img, strength=0.0, steps=10, seed=0, class_labels=3)
    np.testing.assert_array_equal(r.images, pipe.decode(pipe.encode(img)))
    assert r.steps == 0


def test_img2img_runs_the_last_steps(pipe: Pipeline) -> None:
    img = np.full((64, 48, 3), 128, np.uint8)  # any size and channel count: resized and converted
    seen = []
    r = pipe.img2img(
        [img, img],
        strength=0.5,
        steps=10,
        seed=0,
        class_labels=[1, 2],
        callback=lambda i, t, x: seen.append(t),
    )
    assert r.images.shape == (2, 32, 32, 1) and r.steps == 5
    scheduler_ts = [901, 801, 701, 601, 501, 401, 301, 201, 101, 1]
    assert seen == scheduler_ts[5:]


def test_img2img_bad_strength(pipe: Pipeline, tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"strength must be in \[0, 1\]"):
        pipe.img2img(np.zeros((32, 32), np.uint8), strength=1.5)
    noenc = Pipeline.from_bundle(make_bundle(tmp_path / "noenc", with_encoder=False))
    with pytest.raises(InputError, match=r"has no vae_encoder\.onnx"):
        noenc.img2img(np.zeros((32, 32), np.uint8))
