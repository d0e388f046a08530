"""Sample images from a bundle with the torch-free runtime and write a PNG grid.

Arguments left out take the bundle's recommended defaults (sampler, steps, guidance scale), which export
records in bundle.json. Without --bundle the digits model that ships with the package is used.
--init-image starts from a picture instead of noise (img2img, SDEdit): --num variations of it.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from latent_ddpm.errors import CLIError
from latent_ddpm.json_output import add_json_flag, json_command
from latent_ddpm.runtime.limits import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_MAX_IMAGES,
    DEFAULT_STRENGTH,
    MAX_ETA,
    MAX_GUIDANCE_SCALE,
    MIN_GUIDANCE_SCALE,
    check_strength,
)
from latent_ddpm.runtime.png_record import MAX_SCALE

if TYPE_CHECKING:
    import numpy as np

    from latent_ddpm.runtime.bundle import Conditioning
    from latent_ddpm.runtime.png_record import InitImage, SampleRecord
from latent_ddpm.runtime.schedulers import SAMPLERS

HELP = __doc__
DEFAULT_NUM = 8
GRID_COLUMNS = 10  # images per row of the grid
# An enlarged grid is built in memory, so it is bounded: 64 megapixels is 1024 digits at scale 4, or 64 RGB
# 256x256 images at scale 3.
MAX_SCALED_PIXELS = 64_000_000


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--bundle",
        type=Path,
        default=None,
        help="bundle directory or shipped model name (default: the shipped digits model)",
    )
    p.add_argument(
        "--num",
        type=int,
        default=None,
        help=f"number of images, at most --max-images; with --init-image, variations of it (default: {DEFAULT_NUM})",
    )
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
    p.add_argument("--sampler", choices=SAMPLERS, default=None, help="sampling loop (default: bundle's)")
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
        help="class name or index for every image (class-conditional models; default: a random class per "
        f"image). {_shipped_classes()}",
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
    p.add_argument(
        "--scale",
        type=int,
        default=None,
        metavar="N",
        help=f"enlarge the PNGs N times with nearest neighbour for viewing (every model pixel an NxN square), "
        f"1..{MAX_SCALE} (default: 1)",
    )
    p.add_argument(
        "--init-image",
        type=Path,
        default=None,
        metavar="PATH",
        help="img2img: start from this picture (PNG, JPEG, ...; resized to the model's size) instead of noise",
    )
    p.add_argument(
        "--strength",
        type=float,
        default=None,
        metavar="S",
        help="img2img: how much of the schedule runs, 0..1: 0 returns the picture as the autoencoder "
        f"reconstructs it, 1 keeps almost nothing of it (default: {DEFAULT_STRENGTH})",
    )
    p.add_argument(
        "--from-png",
        type=Path,
        default=None,
        metavar="FILE",
        help="make again the images of a PNG that latent-ddpm sample wrote (grid or one image), from the "
        "generation parameters it carries; --bundle only if its bundle is not found by name, --init-image only "
        "if its picture moved",
    )
    add_json_flag(p)


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


def _shipped_classes() -> str:
    """The shipped models' class names, quoted as a shell needs them ('Animals & Nature'), for --help."""
    import shlex

    from latent_ddpm.errors import LatentDDPMError
    from latent_ddpm.runtime.bundle import load_bundle
    from latent_ddpm.runtime.shipped import shipped_models

    lines = []
    for name, path in shipped_models().items():
        try:
            cond = load_bundle(path, verify_hashes=False).conditioning
        except LatentDDPMError:  # a broken install: `sample --bundle` names the problem, --help still works
            continue
        if cond is not None:
            lines.append(f"{name}: {', '.join(shlex.quote(c) for c in cond.class_names)}")
    # argparse formats help with %: a class name may hold one.
    return ("Classes of the shipped models: " + "; ".join(lines)).replace("%", "%%") if lines else ""


def _class_label(value: str | None, class_names: tuple[str, ...] | None) -> int | str | None:
    if value is None or (class_names and value in class_names):
        return value
    try:
        return int(value)
    except ValueError:
        return value  # the pipeline reports the unknown name with the list of valid ones


@dataclass(frozen=True)
class _Plan:
    """What to sample, from the flags or from a --from-png record, checked before any model loads."""

    source: SampleRecord | None  # the --from-png record
    num: int
    layout: str  # of --out: "grid", or "image" when --from-png makes one image again
    scale: int
    picture: np.ndarray | None  # img2img's starting picture
    init: InitImage | None  # ... its strength, path and sha256


def _plan(args: argparse.Namespace, max_images: int) -> _Plan:
    from latent_ddpm.runtime.bundle import sha256_file
    from latent_ddpm.runtime.limits import check_count
    from latent_ddpm.runtime.png_record import InitImage, read_record

    source = None if args.from_png is None else read_record(args.from_png)
    if source is None:
        num, layout, scale = DEFAULT_NUM if args.num is None else args.num, "grid", _check_scale(args.scale)
        init_path, strength = args.init_image, args.strength
    else:
        _refuse_flags_the_record_sets(args)
        num, layout = len(source.seeds), source.layout
        scale = source.scale if args.scale is None else _check_scale(args.scale)
        init_path, strength = _init_image_of(source, args)
    check_count(num, "--num", max_images, "raise --max-images if you have the memory")
    picture, strength = _init_image(init_path, strength)
    init = None
    if init_path is not None:
        init = InitImage(strength, str(init_path), sha256_file(init_path))
        if source is not None and source.init_image is not None and init.sha256 != source.init_image.sha256:
            raise CLIError(
                f"--init-image {init_path} is not the picture {args.from_png} was made from (its sha256 "
                "differs): pass that picture with --init-image"
            )
    return _Plan(source, num, layout, scale, picture, init)


def _sampling(plan: _Plan, args: argparse.Namespace, cond: Conditioning | None) -> dict[str, Any]:
    """generate's and img2img's keyword arguments (None: the bundle's default)."""
    if plan.source is None:
        return {
            "steps": args.steps,
            "sampler": args.sampler,
            "eta": args.eta,
            "seed": args.seed,
            "class_labels": _class_label(args.class_label, cond.class_names if cond else None),
            "guidance_scale": args.guidance,
        }
    r = plan.source
    return {
        "steps": r.steps,
        "sampler": r.sampler,
        "eta": r.eta,
        "seed": list(r.seeds),
        "class_labels": None if r.class_labels is None else list(r.class_labels),
        "guidance_scale": r.guidance_scale,
    }


def _sample(args: argparse.Namespace) -> dict[str, Any]:
    """Sample, write the PNGs, print a summary for a person and return the ``--json`` document."""
    from latent_ddpm.runtime.bundle import bundle_hash
    from latent_ddpm.runtime.limits import check_count, check_threads
    from latent_ddpm.runtime.outputs import check_output_dir, check_output_file
    from latent_ddpm.runtime.pipeline import Pipeline
    from latent_ddpm.runtime.png_record import SampleRecord
    from latent_ddpm.runtime.progress import ProgressBar

    check_threads(args.threads, "--threads")
    max_images = check_count(args.max_images, "--max-images", 2**31 - 1)
    check_output_file(args.out, "--out", ".png")
    if args.out_dir is not None:
        check_output_dir(args.out_dir, "--out-dir")
    plan = _plan(args, max_images)
    t0 = time.perf_counter()
    providers = [p.strip() for p in args.providers.split(",")] if args.providers else None
    pipe = Pipeline.from_bundle(
        _bundle_of(plan.source, args),
        backend=args.backend,
        providers=providers,
        threads=args.threads,
        precision=args.precision,
        max_images=max_images,
    )
    load_s = time.perf_counter() - t0
    b_hash = bundle_hash(pipe.bundle)
    if plan.source is not None and b_hash != plan.source.bundle_hash:
        raise CLIError(
            f"--from-png {args.from_png} was made with the bundle {plan.source.bundle_name!r} of hash "
            f"{plan.source.bundle_hash}; {pipe.bundle.root} has hash {b_hash}: pass the bundle that made it with "
            "--bundle"
        )
    _check_scaled_size(plan.num if plan.layout == "grid" else 1, pipe.bundle.image_shape, plan.scale)
    cond = pipe.bundle.conditioning
    sampling = _sampling(plan, args, cond)
    steps = pipe.bundle.defaults.steps if sampling["steps"] is None else sampling["steps"]
    init = plan.init
    runs = steps if init is None else min(int(steps * init.strength), steps)  # img2img: diffusers' rule
    with ProgressBar(total=runs, desc="denoising", disable=args.quiet) as bar:
        progress = lambda i, t, x: bar.update(1)  # noqa: E731
        if init is None:
            result = pipe.generate(num_images=plan.num, callback=progress, **sampling)
        else:
            pictures = [plan.picture] * plan.num
            result = pipe.img2img(pictures, strength=init.strength, callback=progress, **sampling)
    labels = None if result.class_labels is None else tuple(int(k) for k in result.class_labels)
    record = SampleRecord(
        bundle_name=pipe.bundle.name,
        bundle_hash=b_hash,
        sampler=result.sampler,
        steps=steps,
        guidance_scale=result.guidance_scale,
        eta=result.eta,
        seeds=result.seeds,
        class_labels=labels if sampling["class_labels"] is not None else None,
        init_image=init,
        layout=plan.layout,
        scale=plan.scale,
        classes=None if labels is None or cond is None else tuple(cond.class_names[k] for k in labels),
        backend=pipe.backend,
        precision=args.precision,
    )
    _write(result.images, record, args.out)
    written = []
    if args.out_dir is not None:
        for i in range(plan.num):
            written.append(_write(result.images[i : i + 1], record.image(i), args.out_dir / f"{i:04d}.png"))
    t = result.timings
    names = "" if record.classes is None else " classes=" + ",".join(record.classes)
    img2img = "" if init is None else f" strength={init.strength:g} ran={result.steps}"
    print(
        f"wrote {args.out} ({len(result.images)} images{', and ' + str(args.out_dir) if args.out_dir else ''})\n"
        f"seed={result.seed} sampler={result.sampler} steps={steps} guidance={result.guidance_scale:g} "
        f"eta={result.eta:g}{names}{img2img}\n"
        f"backend={pipe.backend} providers={','.join(pipe.providers)} load={load_s:.2f}s "
        f"total={t.total_s:.2f}s per_step={t.per_step_ms:.1f}ms decode={t.decode_s * 1000:.1f}ms "
        f"images/s={len(result.images) / t.total_s:.2f}"
    )
    return {
        "written": {"out": args.out.absolute(), "images": [p.absolute() for p in written]},
        "bundle": {"name": pipe.bundle.name, "hash": b_hash, "path": pipe.bundle.root},
        "seed": result.seed,
        "seeds": result.seeds,
        "class_labels": result.class_labels,
        "sampler": result.sampler,
        "steps": steps,
        "steps_run": result.steps,
        "guidance_scale": result.guidance_scale,
        "eta": result.eta,
        "strength": None if init is None else init.strength,
        "scale": plan.scale,
        "backend": pipe.backend,
        "providers": pipe.providers,
        "timings": {
            "load_s": load_s,
            "total_s": t.total_s,
            "denoise_s": t.denoise_s,
            "unet_s": t.unet_s,
            "decode_s": t.decode_s,
            "encode_s": t.encode_s,
            "per_step_ms": t.per_step_ms,
            "images_per_s": len(result.images) / t.total_s,
        },
        "parameters": record.to_json(),
    }


run = json_command("sample", _sample)


def _write(images: np.ndarray, record: SampleRecord, path: Path) -> Path:
    """The PNG ``record`` describes (a grid of ``images``, or its one image), enlarged, with the record in it."""
    from latent_ddpm.runtime.images import make_grid, save_png, upscale

    picture = (
        images[0] if record.layout == "image" else make_grid(images, nrow=min(len(images), GRID_COLUMNS))
    )
    return save_png(upscale(picture, record.scale), path, text=record.png_text())


# --from-png FILE takes these from FILE's record (dest -> flag); giving them too is a contradiction.
SET_BY_RECORD = {
    "num": "--num",
    "steps": "--steps",
    "sampler": "--sampler",
    "eta": "--eta",
    "seed": "--seed",
    "class_label": "--class",
    "guidance": "--guidance",
    "strength": "--strength",
}


def _refuse_flags_the_record_sets(args: argparse.Namespace) -> None:
    given = [flag for dest, flag in SET_BY_RECORD.items() if getattr(args, dest) is not None]
    if given:
        raise CLIError(
            f"--from-png takes {', '.join(given)} from {args.from_png}: leave {'it' if len(given) == 1 else 'them'} "
            "out, or sample without --from-png"
        )


def _init_image_of(source: SampleRecord, args: argparse.Namespace) -> tuple[Path | None, float | None]:
    """--from-png: the picture an img2img PNG started from (--init-image, where it moved) and its strength."""
    init = source.init_image
    if init is None:
        if args.init_image is not None:
            raise CLIError(f"--init-image: {args.from_png} was not made from a picture (no img2img)")
        return None, None
    return (Path(init.path) if args.init_image is None else args.init_image), init.strength


def _bundle_of(source: SampleRecord | None, args: argparse.Namespace) -> str | Path | None:
    """--bundle, else the bundle the --from-png record names (a folder here or a shipped model)."""
    from latent_ddpm.errors import BundleError
    from latent_ddpm.runtime.shipped import resolve_bundle

    if args.bundle is not None or source is None:
        return args.bundle
    try:
        return resolve_bundle(source.bundle_name)
    except BundleError:
        raise CLIError(
            f"--from-png {args.from_png} was made with the bundle {source.bundle_name!r}, which is neither a "
            "folder here nor a shipped model: pass it with --bundle"
        ) from None


def _check_scale(scale: int | None) -> int:
    if scale is None:
        return 1
    if not 1 <= scale <= MAX_SCALE:
        raise CLIError(f"--scale must be an integer in 1..{MAX_SCALE}, got {scale}")
    return scale


def _check_scaled_size(num: int, image_shape: tuple[int, int, int], scale: int) -> None:
    """An enlarged grid is built in memory: refuse one beyond MAX_SCALED_PIXELS before sampling."""
    from latent_ddpm.runtime.images import grid_size

    height, width = grid_size(num, image_shape[1], image_shape[2], min(num, GRID_COLUMNS))
    pixels = height * width * scale * scale
    if scale > 1 and pixels > MAX_SCALED_PIXELS:
        raise CLIError(
            f"--scale {scale} makes a {width * scale}x{height * scale} grid ({pixels / 1e6:.0f} megapixels); "
            f"at most {MAX_SCALED_PIXELS / 1e6:.0f} are written: lower --scale or --num"
        )


def _init_image(path: Path | None, strength: float | None) -> tuple[np.ndarray | None, float]:
    """(the --init-image picture or None, the checked --strength), read and checked before any model loads."""
    from latent_ddpm.runtime.images import open_picture

    if path is None:
        if strength is not None:
            raise CLIError("--strength is for img2img: give the picture to start from with --init-image")
        return None, DEFAULT_STRENGTH
    strength = check_strength(DEFAULT_STRENGTH if strength is None else strength, "--strength")
    try:
        is_file = path.is_file()
    except (OSError, ValueError):  # a name the OS cannot take (a NUL byte, too long)
        is_file = False
    if not is_file:
        raise CLIError(f"--init-image {path!s:.200}: no such file")
    return open_picture(path, f"--init-image {path}", "latent-ddpm sample"), strength
