"""Build TensorRT engines for a bundle into BUNDLE/engines/ (needs an NVIDIA GPU and latent-ddpm[tensorrt]).

One plan per model with one optimization profile covering --min-batch..--max-batch images (the U-Net of a
guided model gets twice that: classifier-free guidance doubles its batch), a timing cache that makes rebuilds
fast, and engines/manifest.json with each plan's cache key. Plans that are still valid for this GPU, this
TensorRT, the bundle's graphs and these settings are kept; others are rebuilt. The tensorrt backend
(`latent-ddpm sample --backend tensorrt`) checks the same key when it loads a plan, never writes into the
bundle, and refuses a stale plan with the build-engines command that rebuilds it.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path
from typing import Any

from latent_ddpm.json_output import add_json_flag, json_command

HELP = __doc__


def add_arguments(p: argparse.ArgumentParser) -> None:
    # One flag per BuildSettings field: the runtime's rebuild_command writes them back the same way.
    from latent_ddpm.runtime.backends.tensorrt_manifest import ENGINE_PRECISIONS

    p.add_argument(
        "bundle",
        type=Path,
        metavar="BUNDLE",
        help="bundle directory (written by latent-ddpm export), or a shipped model's name (digits)",
    )
    p.add_argument(
        "--precision",
        choices=ENGINE_PRECISIONS,
        default="fp16",
        help="engine precision; fp16/bf16 from an fp32 bundle need TensorRT 10 (TensorRT 11 keeps the graph's types)",
    )
    p.add_argument("--min-batch", type=int, default=1, help="smallest number of images per call")
    p.add_argument("--opt-batch", type=int, default=8, help="number of images per call to tune for")
    p.add_argument("--max-batch", type=int, default=16, help="largest number of images per call")
    p.add_argument(
        "--workspace-gb",
        type=float,
        default=None,
        help="builder scratch memory limit in GiB (default: TensorRT's)",
    )
    p.add_argument("--force", action="store_true", help="rebuild every plan even if it is still valid")
    add_json_flag(p)


def _build(args: argparse.Namespace) -> dict[str, Any]:
    """Build, print a summary for a person, and return the plans and their figures for ``--json``."""
    from latent_ddpm.export.tensorrt_build import build_engines
    from latent_ddpm.runtime.backends.tensorrt_manifest import BuildSettings
    from latent_ddpm.runtime.shipped import resolve_bundle

    # a shipped model's name: its engines go beside it, in the package
    args.bundle = resolve_bundle(args.bundle)

    start = time.perf_counter()

    def progress(message: str) -> None:
        if not args.quiet:
            print(f"[{time.perf_counter() - start:7.1f}s] {message}", file=sys.stderr, flush=True)

    chosen = {f.name: getattr(args, f.name) for f in dataclasses.fields(BuildSettings)}  # one flag each
    manifest = build_engines(args.bundle, **chosen, force=args.force, progress=progress)
    s = manifest.settings
    print(
        f"engines in {args.bundle / 'engines'}: {s.precision}, {s.min_batch}..{s.max_batch} images per call "
        f"(opt {s.opt_batch})"
    )
    for rec in manifest.engines.values():
        f = rec.fields
        print(
            f"  {rec.file:<18} {rec.plan_bytes / 2**20:8.1f} MiB  built {rec.built_at} in {rec.build_seconds:.1f}s  "
            f"TensorRT {f.get('tensorrt_version')} on {f.get('device_name')} (sm {f.get('compute_capability')})"
        )
    engines = args.bundle / "engines"
    return {
        "written": {
            "engines": engines,
            "manifest": engines / "manifest.json",
            "plans": [engines / rec.file for rec in manifest.engines.values()],
        },
        "seconds": time.perf_counter() - start,
        "settings": s.to_json(),
        "engines": {role: rec.to_json() for role, rec in manifest.engines.items()},
    }


run = json_command("build-engines", _build)
