"""Where and with what a figure was measured: the machine, its load and the library versions.

Figures are only comparable with this beside them. It lives on the ground floor so that the export gate's
``validation.json``, ``latent-ddpm bench`` and ``latent-ddpm eval`` record the same facts the same way and
none of them imports another stage for it. Standard library only: versions come from the installed
distributions' metadata, so recording them never imports torch or ONNX Runtime.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import math
import os
import platform
from collections.abc import Iterable
from pathlib import Path
from typing import Any

# The distributions a benchmark's figures depend on.
LIBRARIES = (
    "latent-ddpm",
    "numpy",
    "onnxruntime",
    "openvino",
    "onnx",
    "torch",
    "diffusers",
    "psutil",
    "matplotlib",
)
# The GPU wheel of ONNX Runtime is another distribution of the same module.
_ALTERNATIVES = {"onnxruntime": ("onnxruntime-gpu",)}


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags() -> list[str]:
    """The SIMD extensions that decide which kernels run (AVX2, AVX-512, VNNI, BF16, AMX)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = line.split(":", 1)[1].split()
                    return sorted(f for f in flags if f.startswith(("avx", "amx", "fma")))
    except OSError:
        pass
    return []


def usable_cores() -> int:
    """CPUs this process may run on: its affinity mask, capped by a cgroup v2 CPU quota (Docker --cpus)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    try:
        with open("/sys/fs/cgroup/cpu.max", encoding="ascii") as f:
            quota, period = f.read().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return cores


def load_average() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def library_version(name: str) -> str | None:
    """The installed version of distribution ``name`` (or of its alternative wheel), None if absent."""
    for dist in (name, *_ALTERNATIVES.get(name, ())):
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def library_versions(names: Iterable[str] = LIBRARIES) -> dict[str, str | None]:
    """Python's version, then each distribution's (None when it is not installed)."""
    return {"python": platform.python_version(), **{name: library_version(name) for name in names}}


def machine_info() -> dict[str, Any]:
    """The machine a benchmark ran on, with the load it started under."""
    return {
        "cpu_model": cpu_model(),
        "cpu_flags": cpu_flags(),
        "cores": usable_cores(),
        "platform": platform.platform(),
        "load_average_1_5_15": load_average(),
        "versions": library_versions(),
    }


def environment(libraries: Iterable[str] = ("latent-ddpm", "numpy", "onnxruntime")) -> dict[str, Any]:
    """Date, machine and the installed ``libraries`` of a measurement (evaluation reports)."""
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpu": cpu_model(), "cores": usable_cores(), "platform": platform.platform()},
        "versions": {k: v for k, v in library_versions(libraries).items() if v is not None},
    }


def portable_path(path: str | Path) -> str:
    """``path`` as a report records it: relative to the current folder when inside it, else its last name.

    Reports end up in docs and bug reports; an absolute path would name this machine's folders."""
    path = Path(path)
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return path.name
