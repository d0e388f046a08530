"""The SamplingEngine: many requests batched step by step, each giving exactly the images it gives alone.

Real ONNX Runtime sessions on factory bundles (tests/bundle_factory.py), whose U-Net works row by row, so
the engine's images are compared bitwise with ``Pipeline.generate``/``img2img`` of the same arguments. The
U-Net is wrapped only to record the rows of each call (instrumentation, not a stand-in).
"""

from __future__ import annotations

import asyncio
import gc
import random
import threading
import time
from concurrent.futures import CancelledError
from pathlib import Path

import numpy as np
import pytest
from bundle_factory import make_bundle

from latent_ddpm.errors import BusyError, InputError, NumericalError
from latent_ddpm.runtime import (
    Cancelled,
    Failed,
    Finished,
    Pipeline,
    Preview,
    Progress,
    SamplingEngine,
)

WAIT = 120  # seconds: a generous bound on any one request, so that a bug fails the test instead of hanging


class Recording:
    """The real U-Net engine, recording the rows of every call (and optionally slowed to widen a window)."""

    def __init__(self, engine, delay_s: float = 0.0) -> None:
        self.engine, self.model, self.backend = engine, engine.model, engine.backend
        self.calls: list[list[tuple[int, int]]] = []  # per call: (timestep, class label) of each row
        self.delay_s = delay_s
        self.gate: threading.Event | None = (
            None  # every call waits for it: holds the engine mid-run until the test lets it go on
        )

    @property
    def providers(self) -> list[str]:
        return self.engine.providers

    def run(self, feed):
        rows = list(zip(feed["timestep"].tolist(), feed["class_labels"].tolist(), strict=True))
        self.calls.append(rows)
        if self.gate is not None:
            assert self.gate.wait(WAIT), "the test never opened the gate"
        if self.delay_s:
            time.sleep(self.delay_s)
        return self.engine.run(feed)


@pytest.fixture(scope="module")
def pipe(tmp_path_factory: pytest.TempPathFactory) -> Pipeline:
    return Pipeline.from_bundle(make_bundle(tmp_path_factory.mktemp("engine") / "b"), threads=1)


@pytest.fixture(autouse=True)
def no_leaked_threads():
    """Every test ends with the threads it started: the engine's worker stops on close."""
    before = set(threading.enumerate())
    yield
    gc.collect()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        leaked = [t for t in threading.enumerate() if t not in before and t.name == "latent-ddpm-engine"]
        if not leaked:
            return
        time.sleep(0.05)
    pytest.fail(f"threads leaked: {leaked}")


def recorded(pipe: Pipeline, delay_s: float = 0.0, **kwargs) -> tuple[Pipeline, Recording]:
    unet = Recording(pipe.unet, delay_s)
    return Pipeline(pipe.bundle, unet, pipe.decoder, pipe.encoder, **kwargs), unet


def assert_same(result, alone) -> None:
    np.testing.assert_array_equal(result.images, alone.images)
    np.testing.assert_array_equal(result.latents, alone.latents)
    np.testing.assert_array_equal(result.class_labels, alone.class_labels)
    assert result.seeds == alone.seeds and result.steps == alone.steps


MIXED = [
    {"sampler": "ddim", "steps": 12, "seed": 1, "class_labels": 3, "guidance_scale": 2.0},
    {"sampler": "ddpm", "steps": 7, "seed": [4, 9], "guidance_scale": 1.0},
    {"sampler": "dpmsolver++", "steps": 9, "seed": 5, "num_images": 3, "class_labels": [0, 5, 9]},
    {"sampler": "ddim", "steps": 10, "eta": 0.6, "seed": 8, "num_images": 2, "guidance_scale": 4.0},
    {"sampler": "ddpm", "steps": 15, "seed": 2, "class_labels": "7", "guidance_scale": 3.0},
    {"img2img": 0.6, "sampler": "ddim", "steps": 10, "seed": 6, "class_labels": 1},
    {"img2img": 0.8, "sampler": "dpmsolver++", "steps": 8, "seed": [3, 11], "guidance_scale": 1.0},
    {"img2img": 0.0, "steps": 5, "seed": 0, "class_labels": 2},  # no step at all: the reconstruction
    {"sampler": "dpmsolver++", "steps": 4, "seed": 12, "preview_steps": [0, 3], "class_labels": 4},
]


def _picture(k: int) -> np.ndarray:
    img = np.zeros((32, 32, 1), np.uint8)
    img[4 + k : 20 + k, 8:24] = 200
    return img


def _call(target: Pipeline | SamplingEngine, kwargs: dict):
    """The MIXED request through ``target``: its engine handle, or Pipeline.generate/img2img's result."""
    kwargs = dict(kwargs)
    strength = kwargs.pop("img2img", None)
    engine = isinstance(target, SamplingEngine)
    if strength is None:
        return target.submit(**kwargs) if engine else target.generate(**kwargs)
    n = len(kwargs["seed"]) if isinstance(kwargs["seed"], list) else 1
    pictures = [_picture(k) for k in range(n)]
    if engine:
        return target.submit_img2img(pictures, strength=strength, **kwargs)
    return target.img2img(pictures, strength=strength, **kwargs)


def test_mixed_requests_from_several_threads_give_the_images_they_give_alone(pipe: Pipeline) -> None:
    """Different samplers, steps, guidance, eta, seeds, image counts and img2img, submitted at staggered
    times from four threads, share U-Net calls, and each gets bitwise what Pipeline.generate gives it.

    The engine's first U-Net call is held until two requests are in, so that on any machine, however
    loaded, a request joins one that is already running (rows at different timesteps in one call); each
    call is slowed a little so that the later, staggered submissions join mid-run too."""
    batched, unet = recorded(pipe, delay_s=0.005)
    gate = unet.gate = threading.Event()  # after the Pipeline's own load check, which calls the U-Net
    handles: dict[int, object] = {}
    lock = threading.Lock()
    with SamplingEngine(batched) as engine:

        def client(indices: list[int], seed: int) -> None:
            rng = random.Random(seed)
            for i in indices:
                time.sleep(rng.uniform(0.0, 0.03))
                handle = _call(engine, MIXED[i])
                with lock:
                    handles[i] = handle
                    if len(handles) >= 2:
                        gate.set()

        threads = [threading.Thread(target=client, args=(list(range(k, len(MIXED), 4)), k)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        results = {i: h.result(WAIT) for i, h in handles.items()}
    for i, kwargs in enumerate(MIXED):
        alone = _call(pipe, kwargs)
        assert_same(results[i], alone)
        assert [p.step_index for p in results[i].previews] == [p.step_index for p in alone.previews]
        for a, b in zip(results[i].previews, alone.previews, strict=True):
            np.testing.assert_array_equal(a.images, b.images)
    # batching happened: some call held rows of several requests, at different timesteps
    assert max(len(c) for c in unet.calls) > 3
    assert any(len({t for t, _ in c}) > 1 for c in unet.calls)


def test_image_k_of_a_batch_is_its_seed_alone(pipe: Pipeline) -> None:
    """Per-image seeds: an int seed gives image k the seed seed + k; a list gives each its own. Any image of a
    batch can be regenerated alone, for every sampler (DDPM's step noise included)."""
    with SamplingEngine(pipe) as engine:
        for sampler in ("ddim", "ddpm", "dpmsolver++"):
            batch = engine.submit(num_images=4, seed=100, sampler=sampler, steps=6).result(WAIT)
            listed = engine.submit(seed=[7, 101, 3], sampler=sampler, steps=6).result(WAIT)
            assert batch.seeds == (100, 101, 102, 103) and listed.seeds == (7, 101, 3)
            for k, s in enumerate(batch.seeds):
                alone = pipe.generate(seed=s, sampler=sampler, steps=6)
                np.testing.assert_array_equal(batch.images[k : k + 1], alone.images)
                np.testing.assert_array_equal(batch.class_labels[k : k + 1], alone.class_labels)
            np.testing.assert_array_equal(listed.images[1], batch.images[1])  # seed 101 both times
    with pytest.raises(InputError, match="got 2 seeds for 3 images"):
        pipe.generate(num_images=3, seed=[1, 2])
    with pytest.raises(InputError, match=r"seed\[1\] must be a non-negative integer"):
        pipe.generate(seed=[1, -2])


def test_a_request_larger_than_the_row_budget_is_split_without_changing_an_image(pipe: Pipeline) -> None:
    small, unet = recorded(pipe, max_rows=6)
    kwargs = {"num_images": 7, "seed": 40, "sampler": "ddpm", "steps": 5, "guidance_scale": 2.0}
    with SamplingEngine(small) as engine:
        result = engine.submit(**kwargs).result(WAIT)
    assert max(len(c) for c in unet.calls) <= 6  # 3 guided images per call
    assert_same(result, pipe.generate(**kwargs))
    assert_same(small.generate(**kwargs), result)


def test_cancelling_takes_the_rows_out_at_the_next_step(pipe: Pipeline) -> None:
    slow, unet = recorded(pipe, delay_s=0.01)
    with SamplingEngine(slow) as engine:
        long = engine.submit(seed=1, class_labels=9, steps=400, guidance_scale=1.0)
        short = engine.submit(seed=2, class_labels=4, steps=30, guidance_scale=1.0)
        events = long.events(timeout=WAIT)
        assert isinstance(next(events), Progress)
        assert long.cancel()
        seen = list(events)
        assert isinstance(seen[-1], Cancelled)
        calls_at_cancel = len(unet.calls)
        with pytest.raises(CancelledError):
            long.result(WAIT)
        assert_same(short.result(WAIT), pipe.generate(seed=2, class_labels=4, steps=30, guidance_scale=1.0))
    # the long request's rows (class 9) appear in at most one call after the cancel, then never again
    assert sum(1 for c in unet.calls[calls_at_cancel:] if (9 in {y for _, y in c})) <= 1
    assert len(unet.calls) < 100


def test_a_failing_request_fails_alone(tmp_path: Path) -> None:
    """Class 7's U-Net rows overflow (a real ONNX graph): that request fails with NumericalError naming the
    step, its neighbours in the same calls finish with their normal images, and the engine keeps serving."""
    bad = Pipeline.from_bundle(make_bundle(tmp_path / "b", overflow_class=7), threads=1)
    good_args = [
        {"seed": 1, "class_labels": 3, "steps": 8},
        {"seed": 2, "num_images": 2, "class_labels": [0, 1], "steps": 6},
    ]
    with SamplingEngine(bad) as engine:
        good = [engine.submit(**kw) for kw in good_args]
        failing = engine.submit(seed=3, num_images=2, class_labels=[2, 7], steps=8)
        with pytest.raises(NumericalError, match=r"the U-Net output \(unet\.onnx\) at step 1/8 \(t=\d+\)"):
            failing.result(WAIT)
        assert isinstance(list(failing.events(timeout=WAIT))[-1], Failed)
        for handle, kw in zip(good, good_args, strict=True):
            assert_same(handle.result(WAIT), bad.generate(**kw))
        after = engine.submit(seed=4, class_labels=5, steps=3).result(WAIT)  # still serving
        assert_same(after, bad.generate(seed=4, class_labels=5, steps=3))


def test_a_full_engine_refuses_with_busy_and_memory_stays_bounded(pipe: Pipeline) -> None:
    slow, _ = recorded(pipe, delay_s=0.01, max_images=8)
    with SamplingEngine(slow, max_pending_images=10) as engine:
        first = engine.submit(num_images=8, seed=0, steps=50)
        with pytest.raises(BusyError, match=r"busy: it holds 8 images .* at most 10; 3 more do not fit"):
            engine.submit(num_images=3, seed=1, steps=2)
        second = engine.submit(num_images=2, seed=2, steps=2)  # fits beside the first
        first.cancel()
        second.result(WAIT)
        # the cancelled request's images are released: a full-size request fits again
        engine.submit(num_images=8, seed=3, steps=2).result(WAIT)
    with pytest.raises(InputError, match="max_pending_images=4 is below the pipeline's max_images=8"):
        SamplingEngine(slow, max_pending_images=4)


def test_bad_arguments_are_refused_at_submission(pipe: Pipeline) -> None:
    with SamplingEngine(pipe) as engine:
        for kwargs, message in [
            ({"steps": 0}, "steps must be an integer"),
            ({"eta": 0.5, "sampler": "ddpm"}, "applies to the ddim sampler only"),
            ({"guidance_scale": 1e20}, "guidance_scale must be a number"),
            ({"num_images": 10**6}, "more than the limit of 1024"),
            ({"preview_steps": [-1]}, "preview_steps must hold step indices"),
            ({"callback": print}, "callback is for Pipeline.generate/img2img; an engine request reports"),
        ]:
            with pytest.raises(InputError, match=message):
                engine.submit(**kwargs)
        with pytest.raises(InputError, match=r"strength must be in \[0, 1\]"):
            engine.submit_img2img(_picture(0), strength=2.0)
        assert engine.stats.ticks == 0  # nothing ran


def test_first_come_first_served_nobody_overtakes_the_head(pipe: Pipeline) -> None:
    """With 6 rows: A (4 rows) runs; B (4 rows) does not fit beside it and waits; C (1 row) would fit but
    must not overtake B. Once A is done, B and C run together."""
    slow, unet = recorded(pipe, delay_s=0.005, max_rows=6)
    with SamplingEngine(slow) as engine:
        a = engine.submit(seed=1, num_images=2, class_labels=1, steps=6, guidance_scale=2.0)
        while not unet.calls:
            time.sleep(0.001)
        b = engine.submit(seed=2, num_images=2, class_labels=2, steps=4, guidance_scale=2.0)
        c = engine.submit(seed=3, class_labels=3, steps=4, guidance_scale=1.0)
        for h in (a, b, c):
            h.result(WAIT)
    classes = [{y for _, y in call} for call in unet.calls]
    first_b = next(i for i, ys in enumerate(classes) if 2 in ys)
    first_c = next(i for i, ys in enumerate(classes) if 3 in ys)
    assert first_c >= first_b and all(1 not in ys for ys in classes[first_b:])


def test_streaming_events_and_asyncio(pipe: Pipeline) -> None:
    kwargs = {"seed": 5, "class_labels": 6, "steps": 5, "preview_steps": [1, 4]}
    alone = pipe.generate(**kwargs)

    async def main() -> tuple[list, object]:
        with SamplingEngine(pipe) as engine:
            handle = engine.submit(**kwargs)
            events = [event async for event in handle]
            return events, await handle

    events, result = asyncio.run(main())
    progress = [e.done for e in events if isinstance(e, Progress)]
    previews = [e for e in events if isinstance(e, Preview)]
    assert progress == [1, 2, 3, 4, 5] and isinstance(events[-1], Finished)
    assert [p.step_index for p in previews] == [1, 4]
    np.testing.assert_array_equal(previews[1].images, alone.previews[1].images)
    assert_same(result, alone)
    assert_same(events[-1].result, alone)


def test_close_cancels_or_drains_and_a_dropped_engine_stops(pipe: Pipeline) -> None:
    slow, _ = recorded(pipe, delay_s=0.01)
    engine = SamplingEngine(slow)
    running = engine.submit(seed=1, steps=300)
    queued = engine.submit(seed=2, steps=300)
    engine.close(cancel=True)
    assert running.future.cancelled() and queued.future.cancelled()
    with pytest.raises(RuntimeError, match="closed"):
        engine.submit(seed=3)
    engine.close()  # idempotent

    with SamplingEngine(pipe) as drained:
        handles = [drained.submit(seed=s, steps=3) for s in range(3)]
    assert all(h.done() and not h.future.cancelled() for h in handles)  # exiting waits for them

    dropped = SamplingEngine(pipe)
    dropped.submit(seed=4, steps=2).result(WAIT)
    del dropped  # the finalizer stops its thread (no_leaked_threads checks)


def test_the_shipped_model_gives_the_same_images_through_the_engine() -> None:
    """The real digits U-Net (ONNX Runtime): mixed requests sharing calls of up to ~20 rows equal their
    Pipeline.generate images. Measured bitwise on this machine; allowed: 1/255 per pixel (an ONNX Runtime
    build may compute a row differently depending on the batch it is in)."""
    pipe = Pipeline.from_bundle("digits", threads=1)
    requests = [
        {"seed": s, "class_labels": s, "num_images": 1 + s % 3, "sampler": sampler, "steps": steps}
        for s, (sampler, steps) in enumerate([("dpmsolver++", 6), ("ddpm", 8), ("ddim", 5), ("ddim", 7)])
    ]
    requests[2]["eta"] = 0.5
    requests[3]["guidance_scale"] = 1.0
    with SamplingEngine(pipe) as engine:
        handles = [engine.submit(**kw) for kw in requests]
        results = [h.result(WAIT) for h in handles]
        assert engine.stats.rows_per_call > 4  # they did share calls
    for kwargs, result in zip(requests, results, strict=True):
        alone = pipe.generate(**kwargs)
        diff = np.abs(result.images.astype(int) - alone.images.astype(int)).max()
        assert diff <= 1, f"{kwargs}: images differ by {diff}/255"
        np.testing.assert_allclose(result.latents, alone.latents, rtol=0, atol=1e-3)
