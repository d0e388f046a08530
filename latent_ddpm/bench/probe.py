"""Cold start and peak memory, measured in a fresh process (``python -m latent_ddpm.bench.probe ...``).

A warm benchmark process has everything imported and cached, so start-up cost and peak RSS can only be
measured in a process of their own. The parent passes its launch time; this prints one JSON line with
seconds since launch at each milestone (interpreter up, imports done, models loaded, first denoising step
done) and the peak RSS after sampling ``--batch`` images.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path


def _peak_rss_mb() -> float:
    """VmHWM: the peak RSS of this process image. (ru_maxrss survives exec on Linux, so a child started
    by a big parent would report the parent's peak.)"""
    try:
        with open("/proc/self/status", encoding="utf-8") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m latent_ddpm.bench.probe")
    p.add_argument("--launched", type=float, required=True, help="time.time() when the parent started us")
    p.add_argument("--backend", choices=["runtime", "torch"], required=True)
    p.add_argument("--bundle", type=Path, required=True)
    p.add_argument("--source", type=Path, default=None, help="diffusers weights (torch backend)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--steps", type=int, default=2, help="steps of the sampling run whose peak RSS is read")
    p.add_argument("--guidance", type=float, default=1.0)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    marks = {"interpreter_s": time.time() - args.launched}
    first_step: dict[str, float] = {}

    def on_step(i: int, *_: object) -> None:
        if i == 0 and not first_step:
            first_step["t"] = time.time() - args.launched

    if args.backend == "runtime":
        import numpy as np

        from latent_ddpm.runtime import Pipeline

        marks["import_s"] = time.time() - args.launched
        pipe = Pipeline.from_bundle(args.bundle, threads=args.threads)
        marks["load_s"] = time.time() - args.launched
        bundle = pipe.bundle

        def sample(n: int, steps: int, callback=None) -> None:
            latents = np.random.default_rng(0).standard_normal((n, *bundle.latent_shape), dtype=np.float32)
            labels = [0] * n if bundle.conditioning else None
            guidance = args.guidance if bundle.conditioning else 1.0
            pipe.generate(
                latents=latents,
                steps=steps,
                sampler="ddim",
                class_labels=labels,
                guidance_scale=guidance,
                seed=0,
                callback=callback,
            )
    else:
        import numpy as np
        import torch  # noqa: F401  (the import is part of the reference's start-up cost)

        from latent_ddpm.bench.reference import TorchReference
        from latent_ddpm.runtime.bundle import load_bundle

        marks["import_s"] = time.time() - args.launched
        bundle = load_bundle(args.bundle)
        ref = TorchReference(args.source, bundle, threads=args.threads)
        marks["load_s"] = time.time() - args.launched

        def sample(n: int, steps: int, callback=None) -> None:
            latents = np.random.default_rng(0).standard_normal((n, *bundle.latent_shape), dtype=np.float32)
            labels = np.zeros(n, np.int64) if bundle.conditioning else None
            guidance = args.guidance if bundle.conditioning else 1.0
            ref.generate(latents, labels, steps, guidance, callback=callback)

    sample(1, 1, on_step)
    marks["first_step_s"] = first_step["t"]
    sample(args.batch, args.steps)
    print(json.dumps({**marks, "batch": args.batch, "peak_rss_mb": _peak_rss_mb()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
