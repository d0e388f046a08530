"""Where and with what a measurement was made: figures are only comparable with this beside them."""

from __future__ import annotations

import datetime
import os
import platform
from importlib import metadata
from typing import Any

from latent_ddpm.bench.machine import cpu_model


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def environment() -> dict[str, Any]:
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": {
            "cpu": cpu_model(),
            "cores": os.cpu_count(),
            "platform": platform.platform(),
        },
        "versions": {
            "python": platform.python_version(),
            **{
                d: v for d in ("latent-ddpm", "numpy", "onnxruntime", "onnxruntime-gpu") if (v := _version(d))
            },
        },
    }
