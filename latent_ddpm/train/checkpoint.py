"""Atomic training checkpoints: Accelerate's full state plus a small JSON of our own.

A checkpoint directory `step_0001234/` holds what `Accelerator.save_state` writes (model, optimizer,
LR scheduler, EMA, every process's RNG states) and `trainer_state.json` (step, elapsed time, recipe).
It is written under a temporary name and renamed into place with `os.replace`, so a run killed while
saving leaves the previous checkpoint intact and never a half-written one that `--resume` would pick up.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

STATE_FILE = "trainer_state.json"
_NAME = re.compile(r"^step_(\d+)$")


def latest(root: Path) -> Path | None:
    """The newest complete checkpoint under `root`, or None."""
    if not root.is_dir():
        return None
    done = [
        (int(m.group(1)), p)
        for p in root.iterdir()
        if (m := _NAME.match(p.name)) and (p / STATE_FILE).is_file()
    ]
    return max(done)[1] if done else None


def save(accelerator, root: Path, step: int, state: dict[str, Any]) -> Path:
    """Collective: every process must call it. Keeps only the newest checkpoint."""
    final = root / f"step_{step:07d}"
    tmp = root / f".tmp-step_{step:07d}"
    if accelerator.is_main_process:
        root.mkdir(parents=True, exist_ok=True)
        for stale in root.glob(".tmp-step_*"):  # left by a run killed while saving
            shutil.rmtree(stale)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (tmp / STATE_FILE).write_text(json.dumps({**state, "step": step}, indent=2))
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        for old in root.iterdir():
            if _NAME.match(old.name) and old != final:
                shutil.rmtree(old)
    accelerator.wait_for_everyone()
    return final


def load(accelerator, path: Path) -> dict[str, Any]:
    """Collective: restores everything `save` stored and returns the trainer state."""
    accelerator.load_state(str(path))
    return json.loads((path / STATE_FILE).read_text())
