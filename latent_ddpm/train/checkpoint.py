"""Training checkpoints: tensors in safetensors and everything else in JSON, so resuming never unpickles.

A checkpoint `checkpoints/<stage>/step_0001234/` holds

    model.safetensors    the trained model's weights
    state.safetensors    every tensor of the optimizer and EMA states (moments, step counts, shadow weights)
    trainer_state.json   step, elapsed time, recipe, and the rest of those states (LR schedule, EMA decay,
                         optimizer hyper-parameters) with each tensor replaced by its key in state.safetensors

and nothing else. A run folder is something people hand around, and a pickle (what Accelerate's
`save_state` writes: `optimizer.bin`, `custom_checkpoint_*.pkl`, `random_states_*.pkl`) runs code when it
is loaded, so `--resume` refuses any other file, naming it. No random state is saved: every draw of a step
is seeded from (seed, stage, step) (determinism.py), so the step number is all a resumed run needs.

A checkpoint is published atomically (latent_ddpm/files.py) and the newest two are kept: when the newest
cannot be loaded (truncated, edited), resume says why and falls back to the one before.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from latent_ddpm.files import publish_dir, remove_stale_temporaries
from latent_ddpm.train.errors import TrainError

STATE_FILE = "trainer_state.json"
MODEL_FILE = "model.safetensors"
TENSORS_FILE = "state.safetensors"
FILES = (MODEL_FILE, TENSORS_FILE, STATE_FILE)
FORMAT = "latent-ddpm-checkpoint"
FORMAT_VERSION = 1
KEEP = 2
_NAME = re.compile(r"^step_(\d+)$")
_TENSOR, _INT_KEYS = "__tensor__", "__int_keys__"  # markers in the JSON skeleton of a state dict


class CheckpointError(TrainError):
    """A checkpoint that cannot be loaded; the message names the file."""


def candidates(root: Path) -> list[Path]:
    """Complete checkpoints under `root` (those with their trainer_state.json), newest first."""
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _NAME.match(p.name)) and _is_checkpoint(p)]
    return [p for _, p in sorted(found, reverse=True)]


def latest(root: Path) -> Path | None:
    """The newest complete checkpoint under `root`, or None."""
    found = candidates(root)
    return found[0] if found else None


def _is_checkpoint(path: Path) -> bool:
    return path.is_dir() and (path / STATE_FILE).is_file()


def _holds_only_checkpoint_files(path: Path) -> bool:
    """What `save` may replace: a checkpoint of this step, complete or not (a fallback abandoned it)."""
    return all(entry.name in FILES for entry in path.iterdir())


def save(
    accelerator, root: Path, step: int, model: torch.nn.Module, stateful: Mapping[str, Any], info: dict
) -> Path:
    """Collective: every process must call it; the main process writes. Keeps the newest two checkpoints.

    `stateful` maps names to objects with `state_dict()` / `load_state_dict()` (optimizer, LR schedule,
    EMA); `info` is JSON-able (elapsed time, recipe) and comes back from `resume`.
    """
    final = root / f"step_{step:07d}"
    if accelerator.is_main_process:
        root.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(root)  # left by runs killed while saving, at whatever step
        from safetensors.torch import save_file

        ours = _holds_only_checkpoint_files
        with publish_dir(final, force=True, ours=ours, what="latent-ddpm checkpoint") as tmp:
            weights = accelerator.unwrap_model(model).state_dict()
            save_file({k: v.detach().cpu().contiguous() for k, v in weights.items()}, tmp / MODEL_FILE)
            tensors: dict[str, torch.Tensor] = {}
            skeleton = {name: _split(obj.state_dict(), name, tensors) for name, obj in stateful.items()}
            save_file(tensors, tmp / TENSORS_FILE)
            doc = {
                "format": FORMAT,
                "format_version": FORMAT_VERSION,
                **info,
                "step": step,
                "state": skeleton,
            }
            (tmp / STATE_FILE).write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
        _prune(root, final)
    accelerator.wait_for_everyone()
    return final


def _prune(root: Path, final: Path) -> None:
    """Keep `final` and the newest checkpoint before it; later ones were abandoned by a fallback."""
    step = int(_NAME.match(final.name).group(1))
    older = [p for p in candidates(root) if int(_NAME.match(p.name).group(1)) < step]
    for path in candidates(root):
        if path != final and path not in older[: KEEP - 1]:
            shutil.rmtree(path)


def resume(
    accelerator,
    root: Path,
    model: torch.nn.Module,
    stateful: Mapping[str, Any],
    inputs: Mapping[str, str],
    log: Callable[[str], None],
    check: Callable[[dict, Path], None],
) -> tuple[dict, Path] | None:
    """Collective: load the newest checkpoint that loads, falling back (and saying so) past broken ones.

    Returns the saved `info` (with its "step") and the checkpoint used, or None when every checkpoint was
    made from other `inputs` (the stage's fingerprints of what it reads: it must start again). `check(info,
    path)` may refuse a checkpoint by raising (a changed recipe) before anything is loaded. Raises
    CheckpointError naming the file when no checkpoint loads.
    """
    errors, other_inputs = [], []
    for path in candidates(root):
        try:
            info, weights, states = _read(path, inputs, check, list(stateful))
            _apply(path / MODEL_FILE, accelerator.unwrap_model(model).load_state_dict, weights)
            for name, obj in stateful.items():
                _apply(path / TENSORS_FILE, obj.load_state_dict, states[name])
        except _OtherInputs as exc:
            other_inputs.append(str(exc))
            continue
        except CheckpointError as exc:
            errors.append(exc)
            log(f"cannot resume from {path.name}: {exc}; trying the checkpoint before it")
            continue
        if errors or other_inputs:
            log(f"resuming from {path.name}; the newer checkpoints will be replaced as training goes on")
        return info, path
    if errors:
        more = f" (and {len(errors) - 1} older checkpoint(s) failed too)" if len(errors) > 1 else ""
        raise CheckpointError(f"{errors[0]}{more}")
    log(f"{other_inputs[0]}; starting again from step 0")
    return None


class _OtherInputs(Exception):
    """A sound checkpoint of this stage, trained on inputs the run directory no longer holds."""


def _read(
    path: Path, inputs: Mapping[str, str], check: Callable[[dict, Path], None], names: list[str]
) -> tuple[dict, dict, dict]:
    """Read and check every file (the info, the model's weights, the ``names``' states) before anything is
    loaded into an object: a broken file changes nothing."""
    for entry in sorted(path.iterdir()):
        if entry.name not in FILES:
            raise CheckpointError(
                f"{entry}: not part of a latent-ddpm checkpoint (only {', '.join(FILES)}); resume never "
                "unpickles files, which can run code (a checkpoint in the Accelerate format of older latent-ddpm "
                "versions cannot be resumed: start the stage again)"
            )
    doc = _read_json(path / STATE_FILE)
    step = int(_NAME.match(path.name).group(1))
    if (
        doc.get("format") != FORMAT
        or doc.get("step") != step
        or not isinstance(doc.get("state"), dict)
        or not isinstance(doc.get("recipe"), dict)
    ):
        raise CheckpointError(
            f"{path / STATE_FILE}: not the trainer state of a {FORMAT} at step {step} "
            f"(format {doc.get('format')!r}, step {doc.get('step')!r})"
        )
    info = {k: v for k, v in doc.items() if k not in ("format", "format_version", "state")}
    saved_inputs = doc.get("inputs") or {}
    changed = sorted(k for k in inputs if saved_inputs.get(k) != inputs[k])
    if changed:
        raise _OtherInputs(f"{path.name} was trained on another {', '.join(changed)} than the run holds now")
    check(info, path)
    weights = _read_tensors(path / MODEL_FILE)
    tensors = _read_tensors(path / TENSORS_FILE)
    states = {}
    for name in names:
        if name not in doc["state"]:
            raise CheckpointError(f"{path / STATE_FILE}: holds no {name} state")
        states[name] = _join(doc["state"][name], tensors, path / TENSORS_FILE)
    return info, weights, states


def _apply(path: Path, load: Callable[[Any], Any], state: Any) -> None:
    try:
        load(state)
    except (RuntimeError, ValueError, KeyError, TypeError, IndexError) as exc:
        raise CheckpointError(f"{path}: does not fit this model ({_why(exc)})") from None


def _read_json(path: Path) -> dict:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as exc:
        raise CheckpointError(f"{path}: cannot be read as JSON ({_why(exc)})") from None
    if not isinstance(doc, dict):
        raise CheckpointError(f"{path}: expected a JSON object, got {type(doc).__name__}")
    return doc


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(path)
    except Exception as exc:  # safetensors raises its own SafetensorError, OSError, or ValueError
        raise CheckpointError(f"{path}: cannot be read as safetensors ({_why(exc)})") from None


def _split(value: Any, key: str, tensors: dict[str, torch.Tensor]) -> Any:
    """A state dict as JSON, each tensor moved to `tensors` under its path (int dict keys kept as ints)."""
    if isinstance(value, torch.Tensor):
        tensors[key] = value.detach().cpu().contiguous()
        return {_TENSOR: key}
    if isinstance(value, Mapping):
        items = {str(k): _split(v, f"{key}.{k}", tensors) for k, v in value.items()}
        return {_INT_KEYS: items} if value and all(isinstance(k, int) for k in value) else items
    if isinstance(value, list | tuple):
        return [_split(v, f"{key}.{i}", tensors) for i, v in enumerate(value)]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    raise TypeError(f"{key}: cannot store a {type(value).__name__} in a checkpoint")


def _join(value: Any, tensors: dict[str, torch.Tensor], where: Path) -> Any:
    """Inverse of `_split`."""
    if isinstance(value, dict):
        if set(value) == {_TENSOR}:
            if value[_TENSOR] not in tensors:
                raise CheckpointError(f"{where}: has no tensor {value[_TENSOR]!r}")
            return tensors[value[_TENSOR]]
        if set(value) == {_INT_KEYS} and isinstance(value[_INT_KEYS], dict):
            try:
                return {int(k): _join(v, tensors, where) for k, v in value[_INT_KEYS].items()}
            except ValueError:
                raise CheckpointError(f"{where.with_name(STATE_FILE)}: a non-integer state key") from None
        return {k: _join(v, tensors, where) for k, v in value.items()}
    if isinstance(value, list):
        return [_join(v, tensors, where) for v in value]
    return value


def _why(exc: BaseException) -> str:
    """An exception as one short line (torch's load errors span many)."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:300]}" if text else type(exc).__name__
