"""The optimisation loop both stages share: AdamW, cosine LR with warm-up, gradient accumulation and
clipping, optional EMA, atomic checkpoints, exact resume, loss log, progress bar and preview grids.

A stage (see `vae_stage`, `unet_stage`) only says what its model is, how one micro-batch's loss is
computed, how to draw a preview and how to write its final output.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from latent_ddpm.runtime.progress import ProgressBar
from latent_ddpm.train import checkpoint
from latent_ddpm.train.config import OptimConfig
from latent_ddpm.train.determinism import BatchPlan, micro_generator, seed_step
from latent_ddpm.train.errors import TrainError
from latent_ddpm.train.logs import LossLog, plot_loss

# Knobs that change what a run looks at, never its weights: they may differ on --resume.
RESUME_MAY_CHANGE = {"checkpoint_every", "sample_every", "guidance_scale", "sample_steps"}


@dataclass
class Stage:
    name: str  # "vae" or "unet"
    cfg: OptimConfig
    model: torch.nn.Module  # trained; its forward() must run the whole loss graph (DDP syncs there)
    num_samples: int
    loss: Callable[[torch.nn.Module, np.ndarray, torch.Generator], torch.Tensor]
    preview: Callable[[Path], None]  # main process only: draw a PNG from the current (EMA) weights
    finalize: Callable[[Path], None]  # main process only: write the stage's output into the run dir
    ema: Any = None  # diffusers.training_utils.EMAModel, stepped after every optimizer step
    # Fingerprints of what the stage reads from the run directory (the U-Net: the autoencoder); a checkpoint
    # made from other inputs cannot be continued.
    inputs: dict[str, str] = field(default_factory=dict)


def run_stage(
    accelerator,
    stage: Stage,
    run_dir: Path,
    recipe: dict,
    resume: bool,
    max_steps: int | None,
    finish_early: bool = False,
) -> bool:
    """Train `stage` to `cfg.steps` (or stop after `max_steps`); True when the stage is complete.

    `finish_early`: when stopped by `max_steps`, write the stage's output anyway (from the weights it has),
    so that the next stage can train on it; --resume later finishes the stage and replaces that output.
    """
    from diffusers.optimization import get_cosine_schedule_with_warmup

    cfg, seed, main = stage.cfg, recipe["seed"], accelerator.is_main_process
    ckpt_root = run_dir / "checkpoints" / stage.name
    optimizer = torch.optim.AdamW(stage.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    lr_schedule = get_cosine_schedule_with_warmup(optimizer, cfg.warmup_steps, cfg.steps)
    model, optimizer = accelerator.prepare(stage.model, optimizer)
    # The LR schedule is not prepared: a prepared one steps once per process per step.
    stateful: dict[str, Any] = {"optimizer": optimizer, "lr_schedule": lr_schedule}
    if stage.ema is not None:
        stage.ema.to(accelerator.device)
        stateful["ema"] = stage.ema
    if accelerator.scaler is not None:  # fp16 mixed precision: the loss scale
        stateful["scaler"] = accelerator.scaler

    start, elapsed = 0, 0.0
    found = checkpoint.latest(ckpt_root)
    if found is not None:
        if not resume:
            raise TrainError(
                f"{found} already holds a {stage.name} run; pass --resume to continue it or choose another --out"
            )
        resumed = checkpoint.resume(
            accelerator,
            ckpt_root,
            model,
            stateful,
            stage.inputs,
            log=lambda message: accelerator.print(f"{stage.name}: {message}"),
            check=lambda info, path: _check_same_recipe(info["recipe"], recipe, stage.name, path),
        )
        if stage.ema is not None:
            stage.ema.to(accelerator.device)  # loaded onto the CPU
        if resumed is not None:
            state, found = resumed
            start, elapsed = state["step"], state["elapsed_s"]
            accelerator.print(f"{stage.name}: resumed from {found} (step {start} of {cfg.steps})")
    elif resume:
        accelerator.print(f"{stage.name}: no checkpoint in {ckpt_root}; starting from step 0")

    stop = cfg.steps if max_steps is None else min(cfg.steps, max_steps)
    plan = BatchPlan(
        stage.num_samples, seed, stage.name, cfg.batch_size, cfg.grad_accum, accelerator.num_processes,
        accelerator.process_index,
    )  # fmt: skip
    log = LossLog(run_dir / "logs" / f"{stage.name}_loss.csv", start) if main else None
    bar = ProgressBar(total=cfg.steps, initial=start, desc=stage.name, disable=not main)
    running, t0 = None, time.perf_counter()

    def save(step: int) -> None:
        info = {
            "stage": stage.name,
            "elapsed_s": elapsed + time.perf_counter() - t0,
            "recipe": recipe,
            "inputs": stage.inputs,
        }
        checkpoint.save(accelerator, ckpt_root, step, model, stateful, info)

    model.train()
    for step in range(start, stop):
        seed_step(seed, stage.name, step, accelerator.process_index)
        total = torch.zeros((), device=accelerator.device)
        for micro in range(cfg.grad_accum):
            gen = micro_generator(seed, stage.name, step, micro, accelerator.process_index)
            # Only the last micro-batch all-reduces gradients; the others accumulate locally.
            sync = micro == cfg.grad_accum - 1
            with contextlib.nullcontext() if sync else accelerator.no_sync(model):
                loss = stage.loss(model, plan.indices(step, micro), gen) / cfg.grad_accum
                accelerator.backward(loss)
            total += loss.detach()
        grad_norm = accelerator.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
        optimizer.step()
        lr_schedule.step()
        optimizer.zero_grad(set_to_none=True)
        if stage.ema is not None:
            stage.ema.step(accelerator.unwrap_model(model).parameters())

        done = step + 1
        value = accelerator.reduce(total, "mean").item()
        if not np.isfinite(value):
            raise TrainError(f"{stage.name}: loss became {value} at step {done}; lower {stage.name}.lr")
        running = value if running is None else 0.98 * running + 0.02 * value
        if main:
            log.write(done, value, lr_schedule.get_last_lr()[0], float(grad_norm))
            bar.set_postfix(loss=f"{running:.4f}", lr=f"{lr_schedule.get_last_lr()[0]:.2e}")
            bar.update(1)
        if done % cfg.checkpoint_every == 0 or done == stop:
            save(done)
        if cfg.sample_every and done % cfg.sample_every == 0 and done < cfg.steps:
            if main:
                with _eval(model):
                    stage.preview(run_dir / "samples" / f"{stage.name}_step_{done:07d}.png")
            accelerator.wait_for_everyone()
    bar.close()
    if log is not None:
        log.close()

    if start >= stop and start < cfg.steps:
        accelerator.print(
            f"{stage.name}: checkpoint is already at step {start}; nothing to do before step {stop}"
        )
    if stop < cfg.steps:
        accelerator.print(
            f"{stage.name}: stopped at step {stop} of {cfg.steps} (--max-steps); continue with --resume"
        )
        if not finish_early:
            return False
        accelerator.print(
            f"{stage.name}: writing its step-{stop} weights to {run_dir / stage.name} for the next stage; "
            f"--resume finishes the {stage.name} and then trains the next stage again on the finished one"
        )

    _check_ranks_agree(accelerator, stage, run_dir)
    if main:
        with _eval(model):
            stage.finalize(run_dir)
        log_path = run_dir / "logs" / f"{stage.name}_loss.csv"
        plot_loss(log_path, run_dir / "logs" / f"{stage.name}_loss.png", f"{stage.name} training loss")
        summary = _summary(log_path, elapsed + time.perf_counter() - t0, accelerator)
        (run_dir / "logs" / f"{stage.name}_summary.json").write_text(json.dumps(summary, indent=2))
        accelerator.print(
            f"{stage.name}: done, {summary['steps']} steps, final loss {summary['final_loss']:.4f} "
            f"(mean of the last 100 steps), {summary['wall_s']:.0f} s"
        )
    accelerator.wait_for_everyone()
    return stop == cfg.steps


@contextlib.contextmanager
def _eval(model: torch.nn.Module):
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train()


def _check_same_recipe(saved: dict, current: dict, stage: str, where: Path) -> None:
    """A resumed run must train the same thing, or it would not end where the uninterrupted one would."""
    diffs = [
        f"{section}.{k}: {saved.get(section, {}).get(k)!r} -> {v!r}"
        for section in ("data", stage)
        for k, v in current[section].items()
        if saved.get(section, {}).get(k) != v and k not in RESUME_MAY_CHANGE
    ]
    if saved.get("seed") != current["seed"]:
        diffs.append(f"seed: {saved.get('seed')} -> {current['seed']}")
    if diffs:
        raise TrainError(f"cannot resume {where}: the recipe changed ({'; '.join(diffs)})")


def weights_digest(params) -> str:
    h = hashlib.sha256()
    for p in params:
        h.update(p.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _check_ranks_agree(accelerator, stage: Stage, run_dir: Path) -> None:
    """Every process must end with the same weights (and EMA); a divergence would be silently saved."""
    from accelerate.utils import gather_object

    digests = {"model": weights_digest(accelerator.unwrap_model(stage.model).parameters())}
    if stage.ema is not None:
        digests["ema"] = weights_digest(stage.ema.shadow_params)
    per_rank = gather_object([digests]) if accelerator.num_processes > 1 else [digests]
    if accelerator.is_main_process:
        path = run_dir / "logs" / f"{stage.name}_rank_weights.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"sha256_per_rank": per_rank}, indent=2))
    if any(d != per_rank[0] for d in per_rank):
        raise TrainError(f"{stage.name}: processes ended with different weights: {per_rank}")


def _summary(log_path: Path, wall_s: float, accelerator) -> dict[str, Any]:
    from latent_ddpm.train.logs import read_log

    rows = read_log(log_path)
    tail = [r["loss"] for r in rows[-100:]]
    return {
        "steps": rows[-1]["step"] if rows else 0,
        "final_loss": float(np.mean(tail)) if tail else float("nan"),
        "wall_s": round(wall_s, 1),
        "device": str(accelerator.device),
        "num_processes": accelerator.num_processes,
        "mixed_precision": accelerator.mixed_precision,
        "torch_threads": torch.get_num_threads(),
    }
