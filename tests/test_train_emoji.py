"""The `emoji` recipe: what it builds, and a few training steps of it (at a tiny size) on the shipped emoji."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import numpy as np
from PIL import Image

from latent_ddpm.cli import main
from latent_ddpm.train.config import SCHEMA, load_recipe
from latent_ddpm.train.datasets.emoji import SHIPPED

with resources.as_file(resources.files("latent_ddpm.data") / SHIPPED) as _path, np.load(_path) as _npz:
    GROUPS = _npz["class_names"].tolist()  # checked against Unicode's groups in test_emoji_data.py


def test_recipe_sets_every_knob_and_builds_the_documented_models():
    from conftest import torch_single_thread

    from latent_ddpm.train.unet_stage import build_unet
    from latent_ddpm.train.vae_stage import build_vae

    recipe, path = load_recipe("emoji")
    text = path.read_text()
    assert all(f"\n{key.rsplit('.', 1)[-1]} =" in text for key in SCHEMA)  # no silent code default
    assert f"{recipe.data.source}.npz" == SHIPPED and recipe.data.channels == 3
    assert recipe.unet.label_dropout > 0 and recipe.unet.guidance_scale > 1  # classifier-free guidance
    with torch_single_thread():
        vae = build_vae(recipe)
        unet = build_unet(recipe, recipe.vae.latent_channels, 8, len(GROUPS))
    assert (vae.config.in_channels, vae.config.out_channels, vae.config.latent_channels) == (3, 3, 4)
    assert len(GROUPS) == 9 and unet.config.num_class_embeds == 10  # 9 groups + the null class
    millions = [round(sum(p.numel() for p in m.parameters()) / 1e6, 1) for m in (vae, unet)]
    assert millions == [2.7, 6.8]  # as the recipe's comments say


def test_a_few_steps_on_the_shipped_emoji(tmp_path: Path):
    """Both stages, 3 steps each, models shrunk as in the `tiny` recipe: class names and RGB reach the output."""
    shrink = {
        "data.max_images": 64,
        "vae.block_out_channels": "[8, 16, 16]",
        "vae.norm_num_groups": 4,
        "unet.block_out_channels": "[16, 32]",
        "unet.attention": "[false, true]",
        "unet.layers_per_block": 1,
        "unet.attention_head_dim": 8,
        "unet.norm_num_groups": 8,
        "unet.sample_steps": 2,
    }
    for stage in ("vae", "unet"):
        shrink |= {f"{stage}.{k}": v for k, v in (("steps", 3), ("batch_size", 8), ("warmup_steps", 1))}
        shrink |= {f"{stage}.checkpoint_every": 3, f"{stage}.sample_every": 0}
    out = tmp_path / "run"
    sets = [a for k, v in shrink.items() for a in ("--set", f"{k}={v}")]
    assert main(["train", "--config", "emoji", "--threads", "1", "--out", str(out), *sets]) == 0
    meta = json.loads((out / "latent_ddpm.json").read_text())
    assert meta["class_names"] == GROUPS and meta["null_class"] == 9
    assert meta["image_channels"] == 3 and meta["image_size"] == [32, 32]
    assert meta["recipe"]["data"]["source"] == "emoji_32"
    with Image.open(out / "samples" / "unet_final.png") as grid:
        assert grid.mode == "RGB"
    assert len((out / "logs" / "unet_loss.csv").read_text().splitlines()) == 1 + 3
