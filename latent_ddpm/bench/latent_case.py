"""One latent model, every backend, every batch size: U-Net call latency, images/s, loop overhead, GFLOP/s.

Backends are interleaved run by run (onnxruntime, openvino, ..., eager, compiled, onnxruntime, ...) so that
a change in the machine's load hits all of them alike; each gets its own warm-up first (which also compiles
the shape-specialised ones). A backend that fails to warm up (typically ``torch.compile`` without a working
compiler) is dropped with the reason recorded.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from latent_ddpm.bench.backends import Backend, RunResult
from latent_ddpm.bench.flops import unet_flops
from latent_ddpm.bench.stats import Samples
from latent_ddpm.runtime.bundle import Bundle

Log = Callable[[str], None]
PROBE_TIMESTEP = 500  # any timestep costs the same; a mid-schedule one is typical
SETTLE_S = 0.05
BURST_S, MAX_BURST = 0.2, 50


@dataclass
class Plan:
    batches: list[int]
    steps: int
    sampler: str
    warmup: int
    runs: int


def _inputs(bundle: Bundle, batch: int, guidance: float, seed: int):
    rng = np.random.default_rng(seed)
    latents = rng.standard_normal((batch, *bundle.latent_shape), dtype=np.float32)
    cond = bundle.conditioning
    labels = None if cond is None else (np.arange(batch) % cond.num_classes).astype(np.int64)
    guided = labels is not None and guidance != 1.0
    unet_labels = labels
    if guided:
        unet_labels = np.concatenate([np.full_like(labels, cond.null_class), labels])
    unet_batch = 2 * batch if guided else batch
    sample = rng.standard_normal((unet_batch, *bundle.latent_shape), dtype=np.float32)
    return latents, labels, sample, unet_labels


def _warm(
    backends: list[Backend], fn: Callable[[Backend], Any], warmup: int, failed: dict[str, str], log: Log
):
    for b in list(backends):
        try:
            for _ in range(warmup):
                fn(b)
        except Exception as exc:  # torch.compile raises many kinds; record why and go on without it
            reason = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
            log(f"  {b.name} dropped: {reason}")
            failed[b.name] = reason
            backends.remove(b)


def _interleaved(backends: list[Backend], fn: Callable[[Backend], float], runs: int) -> dict[str, Samples]:
    """Runs alternate between backends; before each one the others' worker threads get SETTLE_S to stop
    spin-waiting (ONNX Runtime's and OpenMP's pools spin after a call and would steal the cores)."""
    out = {b.name: Samples() for b in backends}
    for _ in range(runs):
        for b in backends:
            time.sleep(SETTLE_S)
            out[b.name].add(fn(b))
    return out


def measure(
    bundle: Bundle,
    unet_config: dict[str, Any],
    backends: list[Backend],
    plan: Plan,
    peak_gflops: float,
    log: Log,
    dropped: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Measure every backend on ``bundle``'s model at each batch size; speed-ups are against torch-eager.
    ``dropped``: contenders that could not even be opened, and why (reported with those that fail here)."""
    guidance = bundle.defaults.guidance_scale
    conditional = bundle.conditioning is not None
    failed: dict[str, str] = dict(dropped or {})
    active = list(backends)
    rows = []
    for batch in plan.batches:
        rows += _measure_batch(bundle, unet_config, active, plan, batch, guidance, peak_gflops, failed, log)
    _add_speedups(rows)
    return {
        "guidance_scale": guidance,
        "sampler": plan.sampler,
        "steps": plan.steps,
        "warmup": plan.warmup,
        "runs": plan.runs,
        "unet_flops_per_image": unet_flops(unet_config, 1, bundle.latent_shape, conditional)["flops"],
        "rows": rows,
        "dropped_backends": failed,
    }


def _measure_batch(
    bundle: Bundle,
    unet_config: dict[str, Any],
    active: list[Backend],
    plan: Plan,
    batch: int,
    guidance: float,
    peak_gflops: float,
    failed: dict[str, str],
    log: Log,
) -> list[dict[str, Any]]:
    latents, labels, sample, unet_labels = _inputs(bundle, batch, guidance, seed=batch)
    flops = unet_flops(unet_config, sample.shape[0], bundle.latent_shape, bundle.conditioning is not None)
    log(f"  batch {batch} (U-Net batch {sample.shape[0]}, {flops['flops'] / 1e9:.2f} GFLOP per call)")

    burst: dict[str, int] = {}

    def call(b: Backend) -> float:
        """Seconds per call, averaged over a burst of back-to-back calls (about BURST_S long): a lone call
        after the settling pause would pay for waking idle threads, which no sampling loop does."""
        n = burst.get(b.name, 1)
        t0 = time.perf_counter()
        for _ in range(n):
            b.unet_call(sample, PROBE_TIMESTEP, unet_labels)
        seconds = (time.perf_counter() - t0) / n
        burst.setdefault(b.name, max(1, min(MAX_BURST, int(BURST_S / max(seconds, 1e-6)))))
        return seconds

    _warm(active, call, max(plan.warmup, 1) + 1, failed, log)
    calls = _interleaved(active, call, plan.runs)

    results: dict[str, list[RunResult]] = {b.name: [] for b in active}

    def sample_run(b: Backend) -> float:
        r = b.generate(latents, labels, plan.steps, guidance)
        results[b.name].append(r)
        return r.total_s

    _warm(active, lambda b: b.generate(latents, labels, plan.steps, guidance), plan.warmup, failed, log)
    totals = _interleaved(active, sample_run, plan.runs)
    reference = results["torch-eager"][0] if results.get("torch-eager") else None
    rows = []
    for b in active:
        call_s, total_s = calls[b.name], totals[b.name]
        overhead = Samples([r.loop_overhead for r in results[b.name]])
        achieved = flops["flops"] / call_s.median / 1e9
        row = {
            "backend": b.name,
            "precision": b.precision,
            "batch": batch,
            "unet_batch": int(sample.shape[0]),
            "steps": plan.steps,
            "unet_flops": flops["flops"],
            "unet_call_s": call_s.to_json(),
            "unet_calls_per_run": burst.get(b.name, 1),
            "run_s": total_s.to_json(),
            "images_per_s": batch / total_s.median,
            "loop_overhead": overhead.to_json(),
            "unet_gflops": achieved,
            "fraction_of_peak": achieved / peak_gflops,
            "unet_padding_flops": flops["padding_flops"],
            "fraction_of_peak_without_padding": (flops["flops"] - flops["padding_flops"])
            / call_s.median
            / 1e9
            / peak_gflops,
        }
        if reference is not None:
            diff = np.abs(results[b.name][0].images.astype(np.int16) - reference.images.astype(np.int16))
            row["max_abs_diff_vs_eager_uint8"] = int(diff.max())
        rows.append(row)
        log(
            f"    {b.name:14s} call {1000 * call_s.median:9.2f} ms  {achieved:7.1f} GFLOP/s "
            f"({achieved / peak_gflops:5.1%} of peak)  {batch / total_s.median:8.3f} images/s  "
            f"loop overhead {overhead.median:6.2%}"
        )
    return rows


def _add_speedups(rows: list[dict[str, Any]]) -> None:
    eager = {r["batch"]: r for r in rows if r["backend"] == "torch-eager"}
    for r in rows:
        ref = eager.get(r["batch"])
        if ref is not None:
            r["speedup_images_per_s_vs_eager"] = r["images_per_s"] / ref["images_per_s"]
            r["speedup_unet_call_vs_eager"] = ref["unet_call_s"]["median"] / r["unet_call_s"]["median"]
