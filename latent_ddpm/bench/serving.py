"""The serving scenario: concurrent clients against the SamplingEngine and against one request at a time.

Each client is a thread that sends one-image requests back to back (a closed loop: the next request leaves
when the previous answer arrives), with its own seeds and classes. The same clients run against

- ``engine``: one ``SamplingEngine`` (every running request's rows in one U-Net call per step), and
- ``one-at-a-time``: a server that runs ``Pipeline.generate`` for one request after the other, FIFO
  (what each request did before the engine, with a concurrency limit of 1),

at the bundle's default sampler and at DDIM with ``--steps`` steps, for each client count, the two servers
interleaved. Reported per run: images/s, request latency p50/p95 (from submission to the answer), U-Net
rows per call and the loop's overhead outside the U-Net. Also the U-Net alone at growing call sizes, the
curve the engine's row budget (``max_rows``) is read from: where rows/s stops growing.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from latent_ddpm.bench.stats import Samples, time_calls
from latent_ddpm.provenance import load_average, portable_path
from latent_ddpm.runtime import Pipeline, SamplingEngine
from latent_ddpm.runtime.results import GenerationResult

MODES = ("engine", "one-at-a-time")


def measure(
    bundle: Path,
    threads: int,
    clients: list[int],
    requests_per_client: int,
    steps: int,
    max_rows: int | None,
    log: Callable[[str], None],
) -> dict[str, Any]:
    pipe = Pipeline.from_bundle(
        bundle, threads=threads, **({} if max_rows is None else {"max_rows": max_rows})
    )
    d = pipe.bundle.defaults
    settings = {
        f"defaults ({d.sampler} {d.steps})": {},
        f"ddim {steps}": {"sampler": "ddim", "steps": steps, "eta": 0.0},
    }
    rows = []
    for setting, kwargs in settings.items():
        for n in clients:
            for mode in MODES:
                row = _serve(pipe, mode, n, requests_per_client, kwargs)
                row["setting"] = setting
                log(
                    f"  {setting}, {n} clients, {mode}: {row['images_per_s']:.2f} images/s, latency p50 "
                    f"{row['latency_s']['p50']:.2f} s p95 {row['latency_s']['p95']:.2f} s, "
                    f"{row['unet_rows_per_call']:.1f} rows/call, loop overhead {row['loop_overhead']:.2%}"
                )
                rows.append(row)
    return {
        "bundle": portable_path(bundle),
        "max_rows": pipe.max_rows,
        "requests_per_client": requests_per_client,
        "settings": list(settings),
        "rows": rows,
        "unet_scaling": unet_scaling(pipe, log),
        "load_average_after": load_average(),
    }


def _serve(
    pipe: Pipeline, mode: str, clients: int, per_client: int, kwargs: dict[str, Any]
) -> dict[str, Any]:
    """``clients`` threads, ``per_client`` requests each, against one server; one warm-up request first."""
    cond = pipe.bundle.conditioning
    num_classes = cond.num_classes if cond is not None else None
    latencies: list[float] = []
    results: list[GenerationResult] = []
    lock = threading.Lock()
    with _server(pipe, mode) as (generate, engine):
        generate({**kwargs, "seed": 0})
        before = engine.stats if engine is not None else None
        barrier = threading.Barrier(clients + 1)

        def client(k: int) -> None:
            barrier.wait()
            for j in range(per_client):
                seed = 1 + k * per_client + j
                labels = None if num_classes is None else seed % num_classes
                t0 = time.perf_counter()
                result = generate({**kwargs, "seed": seed, "class_labels": labels})
                with lock:
                    latencies.append(time.perf_counter() - t0)
                    results.append(result)

        workers = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
        for w in workers:
            w.start()
        barrier.wait()
        start = time.perf_counter()
        for w in workers:
            w.join()
        wall = time.perf_counter() - start
        after = engine.stats if engine is not None else None
    if after is not None and before is not None:
        calls, call_rows = after.unet_calls - before.unet_calls, after.unet_rows - before.unet_rows
        unet_s, step_s = after.unet_s - before.unet_s, after.step_s - before.step_s
    else:  # one request per U-Net call: its own rows, its own loop
        calls = sum(r.timings.steps for r in results)
        call_rows = sum(r.timings.steps * (2 if r.guidance_scale != 1.0 else 1) for r in results)
        unet_s = sum(r.timings.unet_s for r in results)
        step_s = sum(r.timings.denoise_s for r in results)
    lat = np.asarray(latencies)
    return {
        "mode": mode,
        "clients": clients,
        "requests": len(results),
        "seconds": wall,
        "images_per_s": len(results) / wall,
        "latency_s": {
            "p50": float(np.percentile(lat, 50)),
            "p95": float(np.percentile(lat, 95)),
            "max": float(lat.max()),
        },
        "unet_rows_per_call": call_rows / calls if calls else 0.0,
        "loop_overhead": 1.0 - unet_s / step_s if step_s > 0 else 0.0,
    }


@contextmanager
def _server(
    pipe: Pipeline, mode: str
) -> Iterator[tuple[Callable[[dict[str, Any]], GenerationResult], SamplingEngine | None]]:
    """(generate(kwargs) -> result, the engine or None) of one server, closed on exit."""
    if mode == "engine":
        with SamplingEngine(pipe) as engine:
            yield (lambda kw: engine.submit(**kw).result()), engine
    else:
        with ThreadPoolExecutor(1, thread_name_prefix="one-at-a-time") as pool:
            yield (lambda kw: pool.submit(pipe.generate, **kw).result()), None


def unet_scaling(pipe: Pipeline, log: Callable[[str], None], limit: int = 256) -> list[dict[str, Any]]:
    """U-Net rows/s at call sizes 1, 2, 4, ... up to ``limit`` rows (mean of a ~0.2 s burst, median of 3)."""
    names = pipe.bundle.unet_inputs
    rng = np.random.default_rng(0)
    out = []
    rows = 1
    while rows <= limit:
        feed = {
            names.sample.name: rng.standard_normal((rows, *pipe.bundle.latent_shape), dtype=np.float32),
            names.timestep.name: np.full((rows,), 500, np.dtype(names.timestep.dtype)),
        }
        if names.class_labels is not None:
            feed[names.class_labels.name] = np.zeros((rows,), np.dtype(names.class_labels.dtype))
        burst = max(1, int(0.2 / max(time_calls(lambda f=feed: pipe.unet.run(f), 1, 1).median, 1e-4)))
        per_call = Samples()
        for _ in range(3):
            t0 = time.perf_counter()
            for _ in range(burst):
                pipe.unet.run(feed)
            per_call.add((time.perf_counter() - t0) / burst)
        out.append({"rows": rows, "call_s": per_call.to_json(), "rows_per_s": rows / per_call.median})
        log(
            f"  U-Net call of {rows} rows: {1000 * per_call.median:.1f} ms, {rows / per_call.median:.0f} rows/s"
        )
        rows *= 2
    return out
