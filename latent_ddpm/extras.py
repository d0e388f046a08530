"""Optional dependencies: check that a command's extra is installed before it does any work.

The base install is the torch-free runtime; `export`, `train`, `quantize` and `bench` need an extra
(pyproject.toml's [project.optional-dependencies]). Without this check they would fail with a raw
ModuleNotFoundError at the first import, possibly after minutes of work.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence

from latent_ddpm.errors import LatentDDPMError

# The modules each extra provides, by import name (tests/test_extras.py ties them to pyproject.toml).
EXTRAS: dict[str, tuple[str, ...]] = {
    "export": ("torch", "diffusers", "onnx", "onnxruntime", "safetensors"),
    "train": ("torch", "diffusers", "accelerate", "safetensors", "matplotlib"),
    "bench": ("torch", "diffusers", "onnx", "onnxruntime", "safetensors", "psutil", "matplotlib"),
    "serve": ("ray", "fastapi", "pydantic"),
}


class MissingExtraError(LatentDDPMError, ImportError):
    """A command whose optional dependencies are not installed; the message says what to install."""


def require_extra(command: str, extra: str, modules: Sequence[str] | None = None) -> None:
    """Raise MissingExtraError unless every module of ``extra`` (or just ``modules``) can be imported."""
    missing = [m for m in (modules or EXTRAS[extra]) if not _importable(m)]
    if missing:
        raise MissingExtraError(
            f"`latent-ddpm {command}` needs {', '.join(missing)}, which {'is' if len(missing) == 1 else 'are'} "
            f"not installed: pip install 'latent-ddpm[{extra}]' (or, from a clone, pip install '.[{extra}]')"
        )


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a broken install, or an import hook that refuses the module
        return False
