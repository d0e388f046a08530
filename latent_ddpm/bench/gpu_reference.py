"""GPU reference figures at the LDM-CelebA-HQ-256 scale: PyTorch eager and torch.compile in fp16.

Prepared for a session that has an NVIDIA GPU (this project's CPU machine has none, so no GPU figures exist
yet). One call, sized to finish within about 8 minutes on an H100-class card, and it watches its own
clock: whatever no longer fits in ``--budget-s`` is skipped and recorded as skipped, never silently dropped.

    python -m latent_ddpm.bench.gpu_reference --out gpu_reference.json

It builds the CompVis LDM U-Net and VQ decoder (configs/ldm_celebahq_256.py) with random weights in fp16 on
the GPU, then times, with CUDA events: the U-Net call at each batch size, and DDIM sampling (diffusers'
scheduler in the project's torch reference sampler, decode included) from fixed latents, as per-step
milliseconds and images/s. ``--device cpu --dtype float32`` runs the same code on a CPU, for checking the script itself.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m latent_ddpm.bench.gpu_reference", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--out", type=Path, default=Path("gpu_reference.json"))
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--steps", type=int, default=50, help="DDIM steps of each sampling run")
    p.add_argument("--runs", type=int, default=5, help="timed repetitions (median, min, max)")
    p.add_argument("--budget-s", type=float, default=420.0, help="stop starting new measurements after this")
    p.add_argument("--no-compile", action="store_true", help="eager only")
    p.add_argument("--device", default="cuda")
    p.add_argument("--dtype", choices=["float16", "bfloat16", "float32"], default="float16")
    return p.parse_args(argv)


class _Clock:
    """Elapsed time on the device: CUDA events on a GPU, perf_counter elsewhere."""

    def __init__(self, torch: Any, device: str) -> None:
        self.torch, self.cuda = torch, device.startswith("cuda")

    def time(self, fn) -> float:
        if not self.cuda:
            t0 = time.perf_counter()
            fn()
            return time.perf_counter() - t0
        start, end = self.torch.cuda.Event(enable_timing=True), self.torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1000.0


def _summary(values: list[float]) -> dict[str, Any]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "runs": len(values)}


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    import torch
    from diffusers import UNet2DModel, VQModel

    from latent_ddpm.bench.configs import ldm_celebahq_256 as ldm
    from latent_ddpm.export import reference
    from latent_ddpm.provenance import cpu_model

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(
            "no CUDA device: this script measures the GPU reference (use --device cpu to check it)",
            file=sys.stderr,
        )
        return 2
    started = time.perf_counter()
    dtype = getattr(torch, args.dtype)
    device = torch.device(args.device)
    torch.manual_seed(0)
    unet = UNet2DModel(**ldm.UNET).to(device, dtype).eval().requires_grad_(False)
    vq = VQModel(**ldm.VQVAE).to(device, dtype).eval().requires_grad_(False)
    scheduler_config = {k: v for k, v in ldm.SCHEDULER.items() if not k.startswith("_")}
    clock = _Clock(torch, args.device)
    latent_shape = (ldm.UNET["in_channels"], ldm.UNET["sample_size"], ldm.UNET["sample_size"])
    result: dict[str, Any] = {
        "model": "CompVis LDM CelebA-HQ 256 architecture, random weights",
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model(),
        "dtype": args.dtype,
        "versions": {
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
            "python": platform.python_version(),
        },
        "steps": args.steps,
        "runs": args.runs,
        "budget_s": args.budget_s,
        "backends": {},
        "skipped": [],
    }

    def over_budget(what: str) -> bool:
        if time.perf_counter() - started > args.budget_s:
            result["skipped"].append(f"{what}: time budget of {args.budget_s:.0f} s spent")
            return True
        return False

    backends = {"eager": unet}
    if not args.no_compile:
        backends["compile"] = torch.compile(unet)
    for name, forward in backends.items():
        rows = []
        for batch in args.batches:
            if over_budget(f"{name} batch {batch}"):
                continue
            x = torch.randn((batch, *latent_shape), device=device, dtype=dtype)
            t = torch.full((batch,), 500, device=device, dtype=torch.long)

            def call(x=x, t=t, forward=forward):
                with torch.inference_mode():
                    forward(x, t)

            try:
                first = clock.time(call)  # eager: warm-up; compile: compilation + first run
                clock.time(call)
            except Exception as exc:  # torch.compile failures come in many types: record and move on
                result["skipped"].append(
                    f"{name} batch {batch}: {type(exc).__name__}: {str(exc).splitlines()[:1]}"
                )
                break
            calls = [clock.time(call) for _ in range(args.runs)]

            def sample(batch=batch, forward=forward):
                gen = torch.Generator(device="cpu").manual_seed(batch)
                z = torch.randn((batch, *latent_shape), generator=gen).to(device, dtype)

                def model(latents, step_t, _labels):
                    return forward(latents, step_t.to(device)).sample

                z = reference.generate(
                    model, reference.make_scheduler("ddim", scheduler_config), z, args.steps
                )
                decode(z)

            def decode(z):
                with torch.inference_mode():
                    vq.decode(z / vq.config.scaling_factor)

            runs, decodes = [], []
            if not over_budget(f"{name} batch {batch} sampling"):
                clock.time(sample)
                runs = [clock.time(sample) for _ in range(args.runs)]
                z = torch.randn((batch, *latent_shape), device=device, dtype=dtype)
                decodes = [clock.time(lambda z=z: decode(z)) for _ in range(args.runs)]
            row = {"batch": batch, "first_call_s": first, "unet_call_ms": _summary([1000 * c for c in calls])}
            if runs:
                row["sampling_s"] = _summary(runs)
                row["decode_ms"] = _summary([1000 * d for d in decodes])
                denoise = statistics.median(runs) - statistics.median(decodes)
                row["per_step_ms"] = 1000 * denoise / args.steps
                row["images_per_s"] = batch / statistics.median(runs)
            rows.append(row)
            print(f"{name} batch {batch}: U-Net {row['unet_call_ms']['median']:.1f} ms"
                  + (f", {row['images_per_s']:.2f} images/s" if runs else ""), file=sys.stderr)  # fmt: skip
        result["backends"][name] = rows
    result["elapsed_s"] = time.perf_counter() - started
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
