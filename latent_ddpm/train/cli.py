"""`latent-ddpm train`: the command-line face of the two training stages."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

HELP = """Train a latent DDPM: an AutoencoderKL (--stage vae), then a class-conditional UNet2DModel on its latents (--stage unet).

A recipe is a short commented TOML file with [data], [vae] and [unet] sections; the shipped `digits`
recipe trains the package's default model (32x32 MNIST digits, 4x8x8 latents) on two CPU cores in about
half an hour. Any key can be overridden with --set, e.g. --set unet.lr=2e-4 --set unet.prediction_type=v_prediction.

The run directory (--out) ends up in diffusers format, ready for `latent-ddpm export`:
  vae/, unet/ (EMA weights), scheduler/, latent_ddpm.json (class names, sampling defaults, recipe),
plus checkpoints/, logs/ (loss CSV and curve) and samples/ (preview grids) for people to look at.

Checkpoints are atomic, hold tensors and JSON only (--resume never unpickles, so a run folder from
someone else cannot run code), and --resume continues a killed run exactly where the uninterrupted run
would be.

The same command runs on one CPU, one GPU, or several processes. Four GPUs:
  accelerate launch --multi_gpu --num_processes 4 -m latent_ddpm train --config digits
Two CPU processes:
  python -m torch.distributed.run --nproc_per_node 2 -m latent_ddpm train --config digits --cpu
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--stage",
        choices=("vae", "unet", "all"),
        default="all",
        help="vae: train the autoencoder into OUT/vae; unet: train the latent U-Net on the autoencoder in "
        "OUT/vae and write the rest of OUT; all: both, one after the other",
    )
    parser.add_argument(
        "--config",
        default="digits",
        metavar="RECIPE",
        help="a recipe .toml file, or the name of one shipped with the package: digits (grey 32x32 digits), "
        "emoji (RGB 32x32 emoji, 9 classes) or tiny (a few-second smoke test)",
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one recipe key, e.g. unet.lr=2e-4 or unet.block_out_channels=[32,64]; repeatable; "
        "values are TOML literals, bare words are strings",
    )
    parser.add_argument("--out", type=Path, default=None, help="run directory (default: runs/<recipe name>)")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue from the newest checkpoint in OUT/checkpoints/<stage> (a finished stage is only "
        "re-finalized); without it, a run directory that already holds a stage's checkpoints is refused",
    )
    parser.add_argument(
        "--max-steps",
        type=int,
        default=None,
        metavar="N",
        help="stop each stage after its optimizer step N and save a checkpoint, without changing the LR "
        "schedule; finish later with --resume. With --stage all it applies to each stage: an autoencoder "
        "stopped early is written to OUT/vae as it is, so the U-Net trains its N steps on it (--resume then "
        "finishes the autoencoder and trains the U-Net again on the finished one)",
    )
    parser.add_argument(
        "--mixed-precision",
        choices=("no", "fp16", "bf16"),
        default=None,
        help="passed to Accelerate (fp16 needs a GPU); default: what `accelerate launch` or its config says, "
        "else full precision",
    )
    parser.add_argument("--cpu", action="store_true", help="train on the CPU even if a GPU is present")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        metavar="N",
        help="torch CPU threads per process (default: torch's)",
    )


def run(args: argparse.Namespace) -> int:
    from latent_ddpm.runtime.limits import check_threads

    check_threads(args.threads, "--threads")  # before any work: more threads than cores only contend
    from latent_ddpm.errors import CLIError
    from latent_ddpm.extras import require_extra

    require_extra("train", "train")
    from latent_ddpm.train.config import load_recipe

    if args.max_steps is not None and args.max_steps <= 0:
        raise CLIError(f"--max-steps must be positive, got {args.max_steps}")
    if args.threads is not None and args.threads <= 0:
        raise CLIError(f"--threads must be positive, got {args.threads}")
    recipe, path = load_recipe(args.config, args.overrides)
    run_dir = args.out if args.out is not None else Path("runs") / path.stem
    stages = ("vae", "unet") if args.stage == "all" else (args.stage,)
    for stage in stages:
        _refuse_to_overwrite(run_dir, stage, args.resume)

    import torch
    from accelerate import Accelerator

    from latent_ddpm.train import unet_stage, vae_stage
    from latent_ddpm.train.data import load_images
    from latent_ddpm.train.loop import run_stage

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    data = load_images(recipe.data, recipe.seed)
    t0, accelerator, stopped = time.perf_counter(), None, []
    for stage in stages:
        if args.resume and _kept_without_checkpoints(run_dir, stage):
            print(f"{stage}: keeping the finished {run_dir / stage} (no checkpoints to resume from)")
            continue
        # A fresh Accelerator per stage: save_state stores every model an Accelerator prepared.
        accelerator = Accelerator(cpu=args.cpu, mixed_precision=args.mixed_precision)
        if accelerator.is_main_process:
            run_dir.mkdir(parents=True, exist_ok=True)
        accelerator.print(
            f"{stage}: {len(data)} images from {recipe.data.source}, "
            f"{len(data.class_names) or 'no'} classes, {accelerator.num_processes} process(es) on "
            f"{accelerator.device}, run directory {run_dir}"
        )
        if stage == "vae":
            spec = vae_stage.build_stage(recipe, data, accelerator.device)
        else:
            spec = unet_stage.build_stage(recipe, data, accelerator.device, run_dir)
        last = stage == stages[-1]
        complete = run_stage(
            accelerator, spec, run_dir, recipe.to_dict(), args.resume, args.max_steps, finish_early=not last
        )
        accelerator.free_memory()
        if not complete:
            stopped.append(stage)
    if accelerator is None or accelerator.is_main_process:
        if stopped:
            print(f"train: stopped {' + '.join(stopped)} at --max-steps {args.max_steps} -> {run_dir}")
        else:
            print(f"train: finished {' + '.join(stages)} in {time.perf_counter() - t0:.0f} s -> {run_dir}")
    return 0


def _refuse_to_overwrite(run_dir: Path, stage: str, resume: bool) -> None:
    """Never replace a finished model or a run in progress unless asked to continue it."""
    from latent_ddpm.train.errors import TrainError
    from latent_ddpm.train.output import check_parts

    output = run_dir / stage
    ckpts = run_dir / "checkpoints" / stage
    check_parts(run_dir, stage)
    if resume:
        return
    if ckpts.is_dir() and any(p.name.startswith("step_") for p in ckpts.iterdir()):
        raise TrainError(
            f"{ckpts} holds a {stage} run; pass --resume to continue it, or choose another --out"
        )
    if output.exists():
        raise TrainError(f"{output} already exists; pass --resume to keep it, or choose another --out")


def _kept_without_checkpoints(run_dir: Path, stage: str) -> bool:
    """--resume on a finished stage whose checkpoints were deleted: keep its output, do not retrain."""
    from latent_ddpm.train import checkpoint

    finished = run_dir / ("vae/config.json" if stage == "vae" else "latent_ddpm.json")
    return finished.is_file() and checkpoint.latest(run_dir / "checkpoints" / stage) is None
