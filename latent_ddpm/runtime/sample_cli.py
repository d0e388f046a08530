"""Sample images from a bundle with the torch-free runtime and write a PNG grid.

Arguments left out take the bundle's recommended defaults (sampler, steps, guidance scale), which export
records in bundle.json. Without --bundle the digits model that ships with the package is used.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from latent_ddpm.runtime.limits import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_MAX_IMAGES,
    MAX_ETA,
    MAX_GUIDANCE_SCALE,
    MIN_GUIDANCE_SCALE,
)

HELP = __doc__


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--bundle", type=Path, default=None, help="bundle directory (default: the shipped digits model)"
    )
    p.add_argument("--num", type=int, default=8, help="number of images (at most --max-images)")
    p.add_argument(
        "--max-images",
        type=int,
        default=DEFAULT_MAX_IMAGES,
        help="refuse larger --num; all images, latents and step noise are held in memory, so raise it "
        f"knowingly (engine calls still run in batches of {DEFAULT_BATCH_SIZE} images)",
    )
    p.add_argument(
        "--steps", type=int, default=None, help="denoising steps (default: the bundle's recommendation)"
    )
    p.add_argument(
        "--sampler",
        choices=["ddim", "ddpm", "dpmsolver++"],
        default=None,
        help="sampling loop (default: bundle's)",
    )
    p.add_argument(
        "--eta",
        type=float,
        default=None,
        help=f"DDIM stochasticity in 0..{MAX_ETA:g}: 0 deterministic, 1 DDPM-like (default: bundle's)",
    )
    p.add_argument("--seed", type=int, default=None, help="random seed; printed so a run can be repeated")
    p.add_argument(
        "--class",
        dest="class_label",
        default=None,
        help="class name or index for every image (class-conditional models; default: a random class per image)",
    )
    p.add_argument(
        "--guidance",
        type=float,
        default=None,
        help=f"classifier-free guidance scale in {MIN_GUIDANCE_SCALE:g}..{MAX_GUIDANCE_SCALE:g} "
        "(1 = none; default: bundle's)",
    )
    add_backend_arguments(p)
    p.add_argument(
        "--out", type=Path, default=Path("samples.png"), help="PNG file for the grid of all images"
    )
    p.add_argument("--out-dir", type=Path, default=None, help="also write each image as its own PNG here")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def add_backend_arguments(p: argparse.ArgumentParser) -> None:
    """--backend, --precision, --providers and --threads: how a command that loads a Pipeline runs it
    (``sample`` and ``demo`` alike)."""
    from latent_ddpm.runtime.backends import BACKENDS, DEFAULT_BACKEND, EXECUTION_PRECISIONS

    p.add_argument("--backend", default=DEFAULT_BACKEND, help=f"inference backend: {', '.join(BACKENDS)}")
    p.add_argument(
        "--precision",
        default="fp32",
        choices=EXECUTION_PRECISIONS,
        help="bf16: openvino only, for a bundle whose bf16 gate passed (latent-ddpm validate-precision)",
    )
    p.add_argument(
        "--providers",
        default=None,
        help="comma-separated ONNX Runtime execution providers, e.g. CUDAExecutionProvider,CPUExecutionProvider",
    )
    p.add_argument(
        "--threads", type=int, default=None, help="intra-op threads, at most the usable cores (default: all)"
    )


def _class_label(value: str | None, class_names: tuple[str, ...] | None) -> int | str | None:
    if value is None or (class_names and value in class_names):
        return value
    try:
        return int(value)
    except ValueError:
        return value  # the pipeline reports the unknown name with the list of valid ones


def run(args: argparse.Namespace) -> int:
    from latent_ddpm.runtime.images import make_grid, save_png
    from latent_ddpm.runtime.limits import check_count, check_threads
    from latent_ddpm.runtime.outputs import check_output_dir, check_output_file
    from latent_ddpm.runtime.pipeline import Pipeline
    from latent_ddpm.runtime.progress import ProgressBar

    check_threads(args.threads, "--threads")
    max_images = check_count(args.max_images, "--max-images", 2**31 - 1)
    check_count(args.num, "--num", max_images, "raise --max-images if you have the memory")
    check_output_file(args.out, "--out", ".png")
    if args.out_dir is not None:
        check_output_dir(args.out_dir, "--out-dir")
    t0 = time.perf_counter()
    providers = [p.strip() for p in args.providers.split(",")] if args.providers else None
    pipe = Pipeline.from_bundle(
        args.bundle,
        backend=args.backend,
        providers=providers,
        threads=args.threads,
        precision=args.precision,
        max_images=max_images,
    )
    load_s = time.perf_counter() - t0
    cond = pipe.bundle.conditioning
    steps = args.steps if args.steps is not None else pipe.bundle.defaults.steps
    with ProgressBar(total=steps, desc="denoising", disable=args.quiet) as bar:
        result = pipe.generate(
            num_images=args.num,
            steps=args.steps,
            sampler=args.sampler,
            eta=args.eta,
            seed=args.seed,
            class_labels=_class_label(args.class_label, cond.class_names if cond else None),
            guidance_scale=args.guidance,
            callback=lambda i, t, x: bar.update(1),
        )
    ncol = min(len(result.images), 10)
    save_png(make_grid(result.images, nrow=ncol), args.out)
    if args.out_dir is not None:
        for i, img in enumerate(result.images):
            save_png(img, args.out_dir / f"{i:04d}.png")
    t = result.timings
    labels = ""
    if result.class_labels is not None and cond is not None:
        labels = " classes=" + ",".join(cond.class_names[k] for k in result.class_labels)
    print(
        f"wrote {args.out} ({len(result.images)} images{', and ' + str(args.out_dir) if args.out_dir else ''})\n"
        f"seed={result.seed} sampler={result.sampler} steps={result.steps} guidance={result.guidance_scale:g} "
        f"eta={result.eta:g}{labels}\n"
        f"backend={pipe.backend} providers={','.join(pipe.providers)} load={load_s:.2f}s "
        f"total={t.total_s:.2f}s per_step={t.per_step_ms:.1f}ms decode={t.decode_s * 1000:.1f}ms "
        f"images/s={len(result.images) / t.total_s:.2f}"
    )
    return 0
