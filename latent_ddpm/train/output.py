"""The trained model directory, in diffusers format plus `latent_ddpm.json`, the contract with the exporter.

    OUT/vae/            AutoencoderKL (config.json with scaling_factor, diffusion_pytorch_model.safetensors)
    OUT/unet/           UNet2DModel, EMA weights
    OUT/scheduler/      DDIMScheduler config matching the training noise schedule
    OUT/latent_ddpm.json  class names, null class, image geometry, sampling defaults, the resolved recipe

Each part is written to a temporary folder and renamed into place, and `latent_ddpm.json` is written
last, so its presence means the directory is complete.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

METADATA = "latent_ddpm.json"


def replace_dir(target: Path, write: Callable[[Path], None]) -> None:
    """Write a folder under a temporary name with `write(tmp)`, then swap it in for `target`."""
    tmp, old = target.with_name(f".{target.name}.tmp"), target.with_name(f".{target.name}.old")
    for p in (tmp, old):
        shutil.rmtree(p, ignore_errors=True)
    write(tmp)
    if target.exists():
        os.replace(target, old)
    os.replace(tmp, target)
    shutil.rmtree(old, ignore_errors=True)


def write_metadata(
    run_dir: Path,
    class_names: list[str],
    image_size: int,
    image_channels: int,
    steps: int,
    guidance_scale: float,
    recipe: dict[str, Any],
) -> dict[str, Any]:
    meta = {
        "class_names": class_names,
        "null_class": len(class_names) if class_names else None,
        "image_size": [image_size, image_size],
        "image_channels": image_channels,
        "defaults": {
            "sampler": "ddim",
            "steps": steps,
            "guidance_scale": guidance_scale if class_names else 1.0,
            "eta": 0.0,
        },
        "recipe": recipe,
    }
    tmp = run_dir / f".{METADATA}.tmp"
    tmp.write_text(json.dumps(meta, indent=2) + "\n")
    os.replace(tmp, run_dir / METADATA)
    return meta
