"""The trained model directory, in diffusers format plus `latent_ddpm.json`, the contract with the exporter.

    OUT/vae/            AutoencoderKL (config.json with scaling_factor, diffusion_pytorch_model.safetensors)
    OUT/unet/           UNet2DModel, EMA weights
    OUT/scheduler/      DDIMScheduler config matching the training noise schedule
    OUT/latent_ddpm.json  class names, null class, image geometry, sampling defaults, the resolved recipe

Each part is published atomically (latent_ddpm/files.py) and `latent_ddpm.json` is written last, so its
presence means the directory is complete. A part may replace only a folder of the class training writes
there (its diffusers config names it), never a user's folder of the same name.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from latent_ddpm.files import atomic_write, check_output, json_marker, publish_dir

METADATA = "latent_ddpm.json"
# The folders training writes into the run directory, and the diffusers class each one's config names.
PARTS = {
    "vae": ("config.json", "AutoencoderKL"),
    "unet": ("config.json", "UNet2DModel"),
    "scheduler": ("scheduler_config.json", "DDIMScheduler"),
}
STAGE_PARTS = {"vae": ("vae",), "unet": ("unet", "scheduler")}


def _rules(part: str) -> dict[str, Any]:
    config, cls = PARTS[part]
    return {"force": True, "ours": json_marker(config, "_class_name", cls), "what": f"diffusers {cls} folder"}


def check_parts(run_dir: Path, stage: str) -> None:
    """Refuse, before training, a run directory whose `stage` outputs are folders training did not write."""
    for part in STAGE_PARTS[stage]:
        check_output(run_dir / part, **_rules(part))


def replace_dir(run_dir: Path, part: str, write: Callable[[Path], None]) -> None:
    """Write `run_dir/part` under a temporary name with `write(tmp)`, then swap it in."""
    with publish_dir(run_dir / part, **_rules(part)) as tmp:
        write(tmp)


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
    atomic_write(run_dir / METADATA, json.dumps(meta, indent=2) + "\n")
    return meta
