"""Write a sweep's recommended sampling defaults into a bundle: ``latent-ddpm eval --write-defaults``.

A bundle's ``defaults`` start as training's preview settings (DDIM, ``sample_steps``, the recipe's guidance)
and are then replaced by the sweep's recommendation (evaluate/recommend.py), by this command rather than by
hand, so that bundle.json and the bundle's README say the same and name the measurement behind them. The
sweep must have measured this very model: its rows are keyed by ``bundle_identity``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from latent_ddpm.errors import InputError
from latent_ddpm.files import atomic_write
from latent_ddpm.runtime.bundle import BUNDLE_FILE, Bundle, SamplingDefaults, load_bundle, parse_bundle

README_FILE = "README.md"
README_PREFIX = "Sampling defaults"


def bundle_identity(bundle: Bundle) -> str:
    """What fixes a bundle's samples: its graphs and sampling config (not its name, path or defaults)."""
    raw = bundle.raw
    what = {
        "models": {role: m.sha256 for role, m in bundle.models.items()},
        **{k: raw.get(k) for k in ("scheduler", "prediction_type", "latent", "image", "conditioning")},
    }
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:16]


def readme_line(defaults: SamplingDefaults) -> str:
    """The README's line about the defaults; the exporter writes it and ``write_defaults`` replaces it."""
    return (
        f"{README_PREFIX} (bundle.json `defaults`): {defaults.sampler}, {defaults.steps} steps, guidance "
        f"{defaults.guidance_scale:g}, eta {defaults.eta:g}; `latent-ddpm eval --write-defaults` sets them "
        "from a sweep's recommendation."
    )


def recommended_defaults(evaluation: Path, bundle: Bundle) -> dict[str, Any]:
    """The sweep's ``recommended_defaults``, refused unless its recommended row was measured on ``bundle``."""
    try:
        doc = json.loads(evaluation.read_text(encoding="utf-8"))
        defaults, row = doc["recommended_defaults"], doc["recommended_row"]
    except (OSError, ValueError) as exc:
        raise InputError(f"{evaluation}: cannot read a sweep's evaluation.json: {exc}") from None
    except (KeyError, TypeError):
        raise InputError(
            f"{evaluation}: no recommended_defaults/recommended_row; is it a finished sweep's evaluation.json "
            "(python -m latent_ddpm.evaluate.sweep)?"
        ) from None
    measured, ours = str(row).split("|")[0], bundle_identity(bundle)
    if measured != ours:
        raise InputError(
            f"{evaluation} was measured on another model (identity {measured}); {bundle.root} is {ours}"
        )
    if not isinstance(defaults, dict) or set(defaults) != set(asdict(SamplingDefaults())):
        raise InputError(f"{evaluation}: recommended_defaults must hold {sorted(asdict(SamplingDefaults()))}")
    return defaults


def write_defaults(bundle_dir: Path, evaluation: Path) -> SamplingDefaults:
    """Replace bundle.json's ``defaults`` and the README's line about them; each file atomically, after
    the new bundle.json has parsed as the runtime will read it (nothing is written when it does not)."""
    bundle = load_bundle(bundle_dir)
    defaults = recommended_defaults(evaluation, bundle)
    meta = json.loads((bundle.root / BUNDLE_FILE).read_text(encoding="utf-8"))
    meta["defaults"] = defaults
    new = parse_bundle(bundle.root, meta, verify_hashes=False).defaults  # a bad value is refused here
    readme = bundle.root / README_FILE
    lines = readme.read_text(encoding="utf-8").splitlines() if readme.is_file() else [f"# {bundle.name}"]
    at = next((i for i, line in enumerate(lines) if line.startswith(README_PREFIX)), None)
    if at is None:
        lines += ["", readme_line(new)]
    else:
        lines[at] = readme_line(new)
    atomic_write(readme, "\n".join(lines) + "\n")
    atomic_write(bundle.root / BUNDLE_FILE, json.dumps(meta, indent=2) + "\n")
    return new
