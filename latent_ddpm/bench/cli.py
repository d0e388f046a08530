"""Benchmark the runtime against the PyTorch reference (diffusers) on the same models, steps and latents.

Measures, per model and batch size: U-Net call latency, images/s end to end, the loop's overhead outside
the U-Net, achieved U-Net GFLOP/s against this machine's measured fp32 matmul peak, cold start and peak
memory (fresh processes). Writes NAME.json, NAME.md and NAME.png into --out (default: the current folder);
the models it builds (random weights, and their bundles: about 60 MB) go into a temporary folder removed at
the end, unless --cache names a folder to keep them in for the next run.

Models: `digits` (the shipped bundle, against PyTorch on the weights it was exported from; or --bundle /
--source; failing those, runs/digits or the digits architecture with random weights), `ldm-celebahq-256` (CompVis's LDM scale, random weights, batch 1 and fewer steps by
default: a U-Net call takes seconds on CPU) and `pixel-256` (that U-Net in pixel space: a few single calls).
`serving`: the digits bundle served to --clients concurrent clients by the SamplingEngine and by a server
that runs one request at a time (images/s, latency p50/p95, U-Net rows per call, loop overhead), at the
bundle's defaults and at DDIM --steps, plus the U-Net's rows/s by call size (where the engine's --max-rows
is read from).
This is a benchmark, not a test: run it on a quiet machine (it prints the load average) and compare
numbers within one run only.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from latent_ddpm.provenance import portable_path

HELP = __doc__
TRAINING_OUTPUT = Path("runs/digits")


def add_arguments(p: argparse.ArgumentParser) -> None:
    from latent_ddpm.bench.models import MODELS
    from latent_ddpm.bench.runtimes import RUNTIMES

    p.add_argument(
        "--models",
        nargs="+",
        default=[*MODELS, "serving"],
        choices=[*MODELS, "serving"],
        help="which models (and the serving scenario) to measure",
    )
    p.add_argument(
        "--source",
        type=Path,
        default=None,
        help="diffusers weights of the digits model (default: the ones the bundle was exported from)",
    )
    p.add_argument(
        "--bundle",
        type=_bundle,
        default=None,
        help="its bundle, a folder or a shipped model's name (default: the shipped digits bundle, else "
        "exported from --source)",
    )
    p.add_argument(
        "--also-bundle",
        type=_bundle,
        action="append",
        default=[],
        help="another bundle of the same model to time beside it (e.g. an int8 one), a folder or a shipped "
        "model's name; repeatable",
    )
    p.add_argument(
        "--runtimes",
        nargs="+",
        choices=list(RUNTIMES),
        default=list(RUNTIMES),
        help="runtime contenders (each --also-bundle runs on every one that keeps the bundle's precision); "
        "one that cannot run here (OpenVINO not installed, no passed bf16 gate) is reported as dropped",
    )
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32], help="digits batch sizes (images)")
    p.add_argument("--steps", type=int, default=50, help="digits denoising steps")
    p.add_argument("--sampler", choices=["ddim", "dpmsolver++"], default="ddim", help="sampling loop")
    p.add_argument(
        "--clients", type=int, nargs="+", default=[1, 4, 16, 64], help="serving: concurrent clients"
    )
    p.add_argument(
        "--serving-requests", type=int, default=4, help="serving: one-image requests per client, back to back"
    )
    p.add_argument(
        "--max-rows", type=int, default=None, help="serving: the engine's row budget (default: the runtime's)"
    )
    p.add_argument("--ldm-batches", type=int, nargs="+", default=[1], help="ldm-celebahq-256 batch sizes")
    p.add_argument("--ldm-steps", type=int, default=10, help="ldm-celebahq-256 denoising steps")
    p.add_argument("--pixel-calls", type=int, default=2, help="timed pixel-space U-Net calls (minutes each)")
    p.add_argument("--warmup", type=int, default=1, help="untimed warm-up runs per backend")
    p.add_argument("--runs", type=int, default=5, help="timed runs per backend (median, min, max reported)")
    p.add_argument("--threads", type=int, default=None, help="threads for every backend (default: all cores)")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile reference")
    p.add_argument("--no-cold-start", action="store_true", help="skip cold-start and memory probes")
    p.add_argument("--no-validate", action="store_true", help="export bundles without the validation gate")
    p.add_argument(
        "--cache",
        type=Path,
        default=None,
        metavar="DIR",
        help="keep the models bench builds (random weights and their bundles, about 60 MB) in DIR and reuse "
        "them next time, e.g. ~/.cache/latent-ddpm/bench (delete DIR to clear it); default: a temporary "
        "folder, removed at the end",
    )
    p.add_argument(
        "--out", type=Path, default=Path("."), help="folder for the results (default: the current folder)"
    )
    p.add_argument("--name", default="bench", help="file name stem of the results")


def _bundle(value: str) -> Path:
    """A --bundle value as a folder (shipped names resolved), or argparse's one-line usage error."""
    from latent_ddpm.errors import LatentDDPMError
    from latent_ddpm.runtime.shipped import resolve_bundle

    try:
        return resolve_bundle(value)
    except LatentDDPMError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def run(args: argparse.Namespace) -> int:
    from latent_ddpm.extras import require_extra

    require_extra("bench", "bench")
    from latent_ddpm.runtime.limits import check_threads

    check_threads(args.threads, "--threads")  # before any work: more threads than cores only contend
    from latent_ddpm.errors import CLIError
    from latent_ddpm.runtime.outputs import check_output_dir

    for flag in ("runs", "warmup", "steps", "ldm_steps", "pixel_calls", "serving_requests"):
        value = getattr(args, flag)
        if value < (0 if flag == "warmup" else 1):
            raise CLIError(
                f"--{flag.replace('_', '-')} must be at least {0 if flag == 'warmup' else 1}, got {value}"
            )
    for flag in ("batches", "ldm_batches", "clients"):
        if min(getattr(args, flag)) < 1:
            raise CLIError(f"--{flag.replace('_', '-')} must be positive, got {getattr(args, flag)}")
    check_output_dir(args.out, "--out")
    if args.cache is not None:
        check_output_dir(args.cache, "--cache")
        return _measure(args)
    with tempfile.TemporaryDirectory(prefix="latent-ddpm-bench-") as scratch:
        args.cache = Path(scratch)
        return _measure(args)


def _measure(args: argparse.Namespace) -> int:
    from latent_ddpm.bench.machine import matmul_peak, torch_matmul_gflops
    from latent_ddpm.bench.report import write_all
    from latent_ddpm.provenance import load_average, machine_info, usable_cores

    threads = args.threads or usable_cores()
    log = _log
    log(f"machine: load average {load_average()}, {threads} threads")
    result = {
        "created": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "command": "latent-ddpm bench "
        + shlex.join(sys.argv[2:] if sys.argv[1:2] == ["bench"] else sys.argv[1:]),
        "machine": machine_info(),
        "threads": threads,
        "protocol": f"{args.warmup} warm-up run(s) per backend, then {args.runs} timed runs interleaved across "
        "backends; medians with [min-max]",
    }
    result["matmul_peak"] = peak = matmul_peak(threads)
    result["torch_matmul_gflops"] = torch_matmul_gflops(threads)
    log(
        f"fp32 matmul peak (ONNX Runtime): {peak['gflops']:.1f} GFLOP/s; torch a@b {result['torch_matmul_gflops']:.1f}"
    )
    result["models"] = []
    for name in args.models:
        if name in ("pixel-256", "serving"):
            continue
        log(f"== {name}")
        result["models"].append(_latent_model(name, args, threads, peak["gflops"], log))
    if "pixel-256" in args.models:
        from latent_ddpm.bench import pixel_case
        from latent_ddpm.bench.configs import ldm_celebahq_256 as ldm
        from latent_ddpm.bench.models import pixel_unet_config

        log("== pixel-256 vs latent (eager PyTorch, batch 1)")
        result["pixel"] = pixel_case.measure(
            ldm.UNET, pixel_unet_config(), threads, 1, args.pixel_calls, args.runs, log
        )
    if "serving" in args.models:
        from latent_ddpm.bench import serving
        from latent_ddpm.runtime.shipped import shipped_models

        # --bundle, else the shipped model as users get it (unless --source names another), else the digits
        # model the latency benchmark uses
        shipped = shipped_models().get("digits") if args.source is None else None
        bundle = args.bundle or shipped or _prepare("digits", args, log)[1]
        log(f"== serving {bundle}: {args.clients} clients, engine vs one request at a time")
        result["serving"] = serving.measure(
            bundle, threads, args.clients, args.serving_requests, args.steps, args.max_rows, log
        )
    result["load_average_after"] = load_average()
    result["matmul_peak_after"] = matmul_peak(threads)
    for path in write_all(result, args.out, args.name):
        log(f"wrote {path}")
    return 0


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _latent_model(name: str, args: argparse.Namespace, threads: int, peak: float, log) -> dict:
    from latent_ddpm.bench import coldstart, latent_case
    from latent_ddpm.bench.backends import torch_backend
    from latent_ddpm.bench.reference import TorchReference
    from latent_ddpm.bench.runtimes import RUNTIMES
    from latent_ddpm.runtime.bundle import load_bundle

    source, bundle_path, description = _prepare(name, args, log)
    bundle = load_bundle(bundle_path)
    ref = TorchReference(source, bundle, threads)
    dropped: dict[str, str] = {}
    backends = _runtimes(bundle_path, args.runtimes, "", args.sampler, threads, dropped, log)
    for extra in args.also_bundle if name == "digits" else []:
        models = load_bundle(extra, verify_hashes=False).models
        precisions = "+".join(dict.fromkeys(m.precision for r, m in models.items() if r != "vae_encoder"))
        same_precision = [r for r in args.runtimes if "precision" not in RUNTIMES[r]]
        backends += _runtimes(extra, same_precision, f"-{precisions}", args.sampler, threads, dropped, log)
    backends.append(torch_backend(ref, args.sampler, "torch-eager"))
    if not args.no_compile:
        backends.append(torch_backend(ref.compiled(), args.sampler, "torch-compile"))
    digits = name == "digits"
    plan = latent_case.Plan(
        batches=args.batches if digits else args.ldm_batches,
        steps=args.steps if digits else args.ldm_steps,
        sampler=args.sampler,
        warmup=args.warmup,
        runs=args.runs,
    )
    latency = latent_case.measure(bundle, dict(ref.unet.config), backends, plan, peak, log, dropped)
    model = {
        "name": name,
        "description": description,
        "source": portable_path(source),
        "bundle": portable_path(bundle_path),
        "latent_shape": list(bundle.latent_shape),
        "image_shape": list(bundle.image_shape),
        "latency": latency,
    }
    if not args.no_cold_start:
        log(f"  cold start and memory of {name} (fresh processes)")
        guidance = bundle.defaults.guidance_scale
        model["cold_start"] = coldstart.measure(bundle_path, source, plan.batches, guidance, threads, log)
    return model


def _runtimes(
    bundle: Path, names: list[str], suffix: str, sampler: str, threads: int, dropped: dict[str, str], log
) -> list:
    """The runtime contenders on ``bundle`` that can run here; the others go into ``dropped`` with why."""
    from latent_ddpm.bench.backends import runtime_backend
    from latent_ddpm.bench.runtimes import RUNTIMES, open_runtime
    from latent_ddpm.errors import LatentDDPMError

    out = []
    for name in names:
        try:
            pipe = open_runtime(name, bundle, threads)
        except LatentDDPMError as exc:
            log(f"  {name}{suffix} dropped: {exc}")
            dropped[name + suffix] = str(exc)
            continue
        execution = RUNTIMES[name].get("precision", "fp32")
        out.append(runtime_backend(pipe, sampler, name + suffix, execution))
    return out


def _prepare(name: str, args: argparse.Namespace, log) -> tuple[Path, Path, str]:
    """The model's diffusers source and its bundle, building or exporting whichever is missing."""
    from latent_ddpm.bench import models
    from latent_ddpm.runtime.shipped import shipped_models

    if name == "ldm-celebahq-256":
        work = args.cache / name
        source = work / "source"
        _write_once(
            source,
            "model_index.json",
            models.write_ldm_source,
            log,
            "writing random-weight LDM-CelebA-HQ-256",
        )
        description = (
            "CompVis LDM CelebA-HQ 256 architecture (274M-parameter U-Net on 3x64x64 latents, VQ-f4 decoder to "
            "256x256 RGB; configs in latent_ddpm/bench/configs/ldm_celebahq_256.py) with random weights."
        )
        return source, _bundle_for(source, work / "bundle", args.no_validate, log), description
    bundle = args.bundle
    if bundle is None and args.source is None:
        bundle = shipped_models().get("digits")
    recorded = _recorded_source(bundle) if bundle is not None else None
    if args.source is not None:
        source, description = args.source, f"digits model from {args.source}"
    elif recorded is not None:
        source = recorded
        description = f"bundle {bundle}, PyTorch reference from the weights it was exported from ({source})"
    elif (TRAINING_OUTPUT / "latent_ddpm.json").is_file():
        source, description = TRAINING_OUTPUT, f"the trained digits model ({TRAINING_OUTPUT})"
        bundle = args.bundle
    else:
        source = args.cache / name / "random" / "source"
        what = "no trained digits model: writing the digits architecture with random weights"
        _write_once(source, "latent_ddpm.json", models.write_digits_arch_source, log, what)
        description = (
            "digits architecture (train/configs/digits.toml) with random weights: no trained model was "
            "available; speed does not depend on weight values"
        )
        bundle = args.bundle
    if bundle is not None:
        return source, bundle, description
    work = args.cache / name / _slug(source)
    return source, _bundle_for(source, work / "bundle", args.no_validate, log), description


def _write_once(source: Path, marker: str, write: Callable[[Path], None], log, what: str) -> None:
    """A random-weight source is written by the first run and reused (``marker`` is its last file)."""
    if not (source / marker).is_file():
        log(f"  {what} to {source}")
        write(source)


def _recorded_source(bundle: Path) -> Path | None:
    """The diffusers directory a bundle says it was exported from (relative to the bundle; older bundles
    recorded it absolute), if it is still there."""
    import json

    try:
        path = bundle / json.loads((bundle / "bundle.json").read_text(encoding="utf-8"))["source"]["path"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return path.resolve() if (path / "unet" / "config.json").is_file() else None


def _bundle_for(source: Path, out: Path, no_validate: bool, log) -> Path:
    """The cached export of ``source`` in ``out``, exported again when the source changed since."""
    from latent_ddpm.export.exporter import export_bundle

    marker = next(
        (source / f for f in ("latent_ddpm.json", "model_index.json") if (source / f).is_file()), source
    )
    if (out / "bundle.json").is_file() and (out / "bundle.json").stat().st_mtime >= marker.stat().st_mtime:
        return out
    log(f"  exporting {source} -> {out}{' (no validation gate)' if no_validate else ''}")
    export_bundle(source, out, validate=not no_validate, force=True, progress=False)
    return out


def _slug(path: Path) -> str:
    """A folder name per source directory, so that caches of different models never mix."""
    import hashlib

    return hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]
