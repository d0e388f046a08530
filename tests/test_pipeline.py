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
    assert counting.batches == [1]  # the class-table check at construction (runtime/load_checks.py)
    counting.batches.clear()
    guided.generate(num_images=3, steps=5, seed=0, class_labels=4, guidance_scale=3.0)
    assert counting.batches == [6] * 5
    counting.batches.clear()
    guided.generate(num_images=3, steps=5, seed=0, class_labels=4, guidance_scale=1.0)
    assert counting.batches == [3] * 5


def test_guidance_formula(pipe: Pipeline) -> None:
    """The factory U-Net adds label/10, so guided output = uncond + g * (cond - uncond) is checkable exactly."""
    x = np.zeros((1, 4, 8, 8), np.float32)
    batches = pipe._unet_batches(x.shape, np.array([3], np.int64), 2.5)
    out = pipe._model_output(x, 500, batches, 2.5)
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
        ({"eta": -0.1}, r"eta must be a number in 0\.\.1"),
        ({"eta": 1.5, "sampler": "ddim"}, r"eta must be a number in 0\.\.1 .*got 1\.5"),
        ({"eta": float("inf"), "sampler": "ddim"}, r"eta must be a number in 0\.\.1"),
        ({"eta": 0.5, "sampler": "ddpm"}, "applies to the ddim sampler only"),
        ({"sampler": "euler"}, "sampler 'euler' is not one of"),
        ({"class_labels": 10}, r"class label 10 is outside 0\.\.9"),
        ({"class_labels": -1}, r"class label -1 is outside 0\.\.9"),
        ({"class_labels": "cat"}, "class 'cat' is not one of"),
        ({"class_labels": [1, 2], "num_images": 3}, "got 2 class labels for 3 images"),
        ({"guidance_scale": float("nan")}, r"guidance_scale must be a number in 0\.\.20"),
        ({"guidance_scale": -1.0}, r"guidance_scale must be a number in 0\.\.20"),
        ({"guidance_scale": 20.5}, r"guidance_scale must be a number in 0\.\.20 .*got 20\.5"),
        ({"guidance_scale": 1e20}, r"guidance_scale must be a number in 0\.\.20"),
        ({"guidance_scale": 3.4e38}, r"guidance_scale must be a number in 0\.\.20"),
        (
            {"class_labels": 3.0},
            "class_labels must be a class index, a class name or a list of them, got 3.0",
        ),
        ({"class_labels": [1.0, 2], "num_images": 2}, "class label 1.0 must be an integer index or a class"),
        ({"class_labels": True}, "class_labels must be a class index"),
        ({"class_labels": {"a": 1}}, "class_labels must be a class index"),
        ({"callback": "print"}, "callback must be callable"),
        ({"num_images": 10**6}, "num_images=1000000 is more than the limit of 1024 per call"),
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


def test_ddim_scheduler_refuses_eta_above_one() -> None:
    """Above 1, DDIM's step 6 takes the square root of a negative number: NaN, black images, exit 0."""
    from latent_ddpm.runtime.schedulers import DDIMScheduler

    scheduler = DDIMScheduler()
    scheduler.set_timesteps(10)
    x = np.zeros((1, 4, 8, 8), np.float32)
    with pytest.raises(InputError, match=r"eta must be a number in 0\.\.1 .*got 1\.01"):
        scheduler.step(x, 901, x, eta=1.01, generator=np.random.default_rng(0))
    scheduler.step(x, 901, x, eta=1.0, generator=np.random.default_rng(0))  # DDPM's variance: allowed


def test_a_huge_request_is_refused_before_anything_is_allocated(pipe: Pipeline) -> None:
    """10**6 images used to allocate 3 GB of latents before failing inside ONNX Runtime."""
    import tracemalloc

    tracemalloc.start()
    try:
        with pytest.raises(
            InputError, match=r"num_images=1000000 is more than the limit of 1024.*max_images"
        ):
            pipe.generate(num_images=10**6, steps=2, seed=0)
        with pytest.raises(InputError, match="2000 images is more than the limit of 1024"):
            pipe.img2img([np.zeros((32, 32), np.uint8)] * 2000, steps=2, seed=0)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 2**20, f"refusing the request allocated {peak / 2**20:.1f} MB"


class _BatchRecorder(_CountingEngine):
    def run(self, feed):
        self.batches.append(next(iter(feed.values())).shape[0])
        return self.engine.run(feed)


def test_the_limit_can_be_raised_and_engines_run_in_batches(pipe: Pipeline) -> None:
    unet, decoder = _BatchRecorder(pipe.unet), _BatchRecorder(pipe.decoder)
    big = Pipeline(pipe.bundle, unet, decoder, pipe.encoder, max_images=1100, batch_size=64)
    unet.batches.clear()
    r = big.generate(num_images=1100, steps=2, seed=0, class_labels=1, guidance_scale=2.0)
    assert r.images.shape == (1100, 32, 32, 1)
    assert max(unet.batches) == 128 and sum(unet.batches) == 2 * 2 * 1100  # 64 images x 2 guidance halves
    assert max(decoder.batches) == 64 and sum(decoder.batches) == 1100
    with pytest.raises(InputError, match="num_images=1101 is more than the limit of 1100"):
        big.generate(num_images=1101, steps=2, seed=0)


@pytest.mark.parametrize(("sampler", "eta"), [("ddpm", 0.0), ("ddim", 0.5), ("dpmsolver++", 0.0)])
def test_engine_batches_do_not_change_the_images(pipe: Pipeline, sampler: str, eta: float) -> None:
    """A request sampled in engine batches equals the same request in one batch, noise and all: the random
    numbers are drawn for the whole request, so a seed gives the same images whatever the batch size."""
    kwargs = {"num_images": 70, "steps": 6, "sampler": sampler, "eta": eta, "seed": 3, "guidance_scale": 2.0}
    one = Pipeline(pipe.bundle, pipe.unet, pipe.decoder, pipe.encoder, batch_size=70).generate(**kwargs)
    for batch_size in (64, 8):
        split = Pipeline(pipe.bundle, pipe.unet, pipe.decoder, pipe.encoder, batch_size=batch_size)
        r = split.generate(**kwargs)
        np.testing.assert_array_equal(r.latents, one.latents)
        np.testing.assert_array_equal(r.images, one.images)
        np.testing.assert_array_equal(r.class_labels, one.class_labels)
    img = np.zeros((32, 32), np.uint8)
    a = Pipeline(pipe.bundle, pipe.unet, pipe.decoder, pipe.encoder, batch_size=3)
    b = Pipeline(pipe.bundle, pipe.unet, pipe.decoder, pipe.encoder, batch_size=10)
    np.testing.assert_array_equal(
        a.img2img([img] * 10, strength=0.7, steps=5, seed=1).images,
        b.img2img([img] * 10, strength=0.7, steps=5, seed=1).images,
    )


def test_thread_counts_above_the_usable_cores_are_refused(tmp_path: Path) -> None:
    from latent_ddpm.runtime.limits import usable_cores

    bundle = make_bundle(tmp_path / "b")
    cores = usable_cores()
    for threads, message in (
        (1000, f"threads 1000 is more than the {cores} usable cores"),
        (cores + 1, f"threads {cores + 1} is more than the {cores} usable cores"),
        (0, "threads must be a positive integer, got 0"),
        (2.0, "threads must be a positive integer, got 2.0"),
    ):
        with pytest.raises(InputError, match=message):
            Pipeline.from_bundle(bundle, threads=threads)
    assert Pipeline.from_bundle(bundle, threads=cores).unet is not None


@pytest.mark.parametrize(
    ("overflow", "message"),
    [
        ("unet", r"the U-Net output \(unet\.onnx\) at step 1/4 \(t=751\) holds NaN or Inf"),
        ("scheduler", r"the latents after step 1/4 \(t=751\) holds NaN or Inf"),
        ("decoder", r"the decoded images of the final latents \(vae_decoder\.onnx\) holds NaN or Inf"),
    ],
)
def test_a_model_that_overflows_raises_naming_the_step(tmp_path: Path, overflow: str, message: str) -> None:
    """NaN becomes 0 and Inf 255 in uint8: without the guard these were black or white images, returned."""
    from latent_ddpm.errors import NumericalError

    bad = Pipeline.from_bundle(make_bundle(tmp_path / overflow, overflow=overflow))
    with pytest.raises(NumericalError, match=message):
        bad.generate(num_images=2, steps=4, sampler="ddim", seed=0, class_labels=1)
    with pytest.raises(NumericalError, match=message):
        bad.img2img(np.zeros((32, 32), np.uint8), strength=1.0, steps=4, seed=0, class_labels=1)
    with pytest.raises(NumericalError, match="holds NaN or Inf"):  # later steps: smaller, still too big
        bad.img2img(np.zeros((32, 32), np.uint8), strength=0.5, steps=4, seed=0, class_labels=1)


def test_an_engine_that_takes_no_batch_of_one_still_builds(pipe: Pipeline) -> None:
    """The class-table check runs at batch 1; an engine whose profile starts higher (TensorRT built with
    min_batch 2) refuses that feed with InputError, which says nothing about the class table."""

    class FromTwo(_CountingEngine):
        def run(self, feed):
            if feed["sample"].shape[0] < 2:
                raise InputError("batch 1 is outside the engine's profile 2..32")
            return self.engine.run(feed)

    built = Pipeline(pipe.bundle, FromTwo(pipe.unet), pipe.decoder, pipe.encoder)
    assert built.generate(num_images=2, steps=2, seed=0).images.shape[0] == 2
