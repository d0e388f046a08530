"""Machine and version provenance: one ground-floor module that every stage's report uses."""

from __future__ import annotations

import importlib.metadata
import json
import subprocess
import sys
from pathlib import Path

import pytest

from latent_ddpm import provenance


def test_recording_provenance_imports_no_stage_and_no_heavy_library() -> None:
    code = (
        "import json, sys; from latent_ddpm import provenance; "
        "doc = {'machine': provenance.machine_info(), 'environment': provenance.environment()}; "
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'onnxruntime', 'diffusers') "
        "or m.startswith(('latent_ddpm.bench', 'latent_ddpm.evaluate', 'latent_ddpm.runtime'))); "
        "print(json.dumps({'doc': doc, 'heavy': heavy}))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["heavy"] == []
    machine, env = out["doc"]["machine"], out["doc"]["environment"]
    assert machine["cpu_model"] and machine["cores"] >= 1 and machine["versions"]["python"]
    assert set(machine["versions"]) == {"python", *provenance.LIBRARIES}
    assert env["machine"]["cores"] == machine["cores"] and env["machine"]["cpu"] == machine["cpu_model"]
    assert {"python", "latent-ddpm", "numpy"} <= set(env["versions"]) and None not in env["versions"].values()


def test_the_gpu_wheel_of_onnxruntime_counts_as_onnxruntime(monkeypatch: pytest.MonkeyPatch) -> None:
    installed = {"onnxruntime-gpu": "1.20.1"}

    def version(dist: str) -> str:
        if dist not in installed:
            raise importlib.metadata.PackageNotFoundError(dist)
        return installed[dist]

    monkeypatch.setattr(importlib.metadata, "version", version)
    assert provenance.library_version("onnxruntime") == "1.20.1"
    assert provenance.library_version("torch") is None
    assert provenance.environment(("onnxruntime", "torch"))["versions"] == {
        "python": provenance.library_versions(())["python"],
        "onnxruntime": "1.20.1",
    }


def test_reports_record_no_absolute_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A path under the current folder is recorded relative to it; any other by its last name only."""
    from latent_ddpm.provenance import portable_path

    (tmp_path / "work" / "bundle").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "work")
    assert portable_path(tmp_path / "work" / "bundle") == "bundle"
    assert portable_path("bundle") == "bundle"
    assert portable_path(tmp_path / "elsewhere" / "int8") == "int8"
