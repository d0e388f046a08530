"""The Dockerfile's images built and run without a Docker daemon: buildah, on a Debian base made by debootstrap.

Everything lives under one cache folder, ``$LATENT_DDPM_DOCKER_CACHE`` (default
``/var/tmp/latent-ddpm-docker``; never inside the repository):

- ``debian-bookworm-python3.tar``: the base image's root file system (debootstrap minbase of Debian bookworm
  with ``python3`` and ``python3-venv``, apt caches and docs removed), made once and reused by later runs;
- ``storage/``, ``run/``: buildah's image store and its run-time state;
- ``tmp/``: buildah's temporary files, among them the ``RUN --mount=type=cache`` folders (pip's cache);
- ``build-root-*/``: mounted over ``/root`` during a build's RUN steps (see ``pip_settings``).

Builds use chroot isolation, which needs neither a daemon nor cgroups; containers are buildah working
containers whose commands share the host's network, so a server started in one answers on the host's
127.0.0.1. (``podman run`` is not used: it fails on this kernel's cgroup set-up.)
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

CACHE = Path(os.environ.get("LATENT_DDPM_DOCKER_CACHE", "/var/tmp/latent-ddpm-docker"))
BASE_TARBALL = CACHE / "debian-bookworm-python3.tar"
BASE_IMAGE = "localhost/latent-ddpm-test-base:bookworm-python3"
SUITE = "bookworm"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
# The base has Debian's Python (3.11 in bookworm) and its venv module, as the Dockerfile's BASE_IMAGE must.
BASE_PACKAGES = ("python3", "python3-venv")
BUILD_ROOT = "/root"


def missing_tools() -> list[str]:
    return [tool for tool in ("buildah", "debootstrap") if shutil.which(tool) is None]


def _buildah_cmd(*args: str) -> list[str]:
    return ["buildah", "--root", str(CACHE / "storage"), "--runroot", str(CACHE / "run"), *args]


def _env() -> dict[str, str]:
    # buildah keeps RUN --mount=type=cache folders under $TMPDIR.
    (CACHE / "tmp").mkdir(parents=True, exist_ok=True)
    return {**os.environ, "TMPDIR": str(CACHE / "tmp")}


def buildah(*args: str, timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(_buildah_cmd(*args), capture_output=True, text=True, timeout=timeout, env=_env())
    if check and proc.returncode != 0:
        raise RuntimeError(f"buildah {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return proc


def buildah_popen(*args: str, log: Path) -> subprocess.Popen:
    """A long-running buildah command in its own process group (``stop`` ends the whole group)."""
    with open(log, "w") as out:
        return subprocess.Popen(
            _buildah_cmd(*args), stdout=out, stderr=subprocess.STDOUT, env=_env(), start_new_session=True
        )


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, 15)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait(timeout=20)


# ---------------------------------------------------------------- the base image


def debian_mirror(sources: Path = Path("/etc/apt/sources.list.d")) -> str:
    """The Debian archive this machine's apt uses (deb822 ``URIs:`` or one-line ``deb`` entries)."""
    for path in sorted(sources.glob("*.sources")) + sorted(sources.glob("*.list")):
        for uri in re.findall(r"^(?:URIs:|deb)\s+(\S+)", path.read_text(), re.MULTILINE):
            if uri.rstrip("/").endswith("/debian"):
                return uri
    return DEFAULT_MIRROR


def _slim(root: Path) -> None:
    """What Debian's own slim images leave out: package caches and lists, manuals, translations, docs."""
    for pattern in ("var/cache/apt/archives/*.deb", "var/cache/apt/*.bin", "var/lib/apt/lists/*"):
        for path in root.glob(pattern):
            path.unlink() if path.is_file() else shutil.rmtree(path)
    for folder in ("usr/share/man", "usr/share/locale", "usr/share/info"):
        shutil.rmtree(root / folder, ignore_errors=True)
        (root / folder).mkdir()
    for path in (root / "usr/share/doc").glob("*/*"):  # keep each package's copyright file
        if path.name != "copyright":
            path.unlink() if path.is_file() or path.is_symlink() else shutil.rmtree(path)


def make_base_tarball() -> None:
    CACHE.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=CACHE, prefix="debootstrap-") as tmp:
        root = Path(tmp) / "rootfs"
        subprocess.run(
            ["debootstrap", "--variant=minbase", f"--include={','.join(BASE_PACKAGES)}", SUITE, str(root)]
            + [debian_mirror()],
            check=True,
            capture_output=True,
            timeout=900,
        )
        _slim(root)
        partial = Path(tmp) / "rootfs.tar"
        subprocess.run(["tar", "--numeric-owner", "-C", str(root), "-cf", str(partial), "."], check=True)
        partial.replace(BASE_TARBALL)


def base_image() -> str:
    """The local Debian base image, made from the cached tarball (debootstrapped first when missing)."""
    if buildah("images", "--quiet", BASE_IMAGE, check=False).returncode == 0:
        return BASE_IMAGE
    if not BASE_TARBALL.exists():
        make_base_tarball()
    ctr = buildah("from", "scratch").stdout.strip()
    try:
        buildah("add", ctr, str(BASE_TARBALL), "/")
        buildah("config", "--cmd", "/bin/bash", ctr)
        buildah("commit", "--quiet", ctr, BASE_IMAGE)
    finally:
        buildah("rm", ctr, check=False)
    return BASE_IMAGE


# ---------------------------------------------------------------- the machine's pip settings


def _pip_config() -> dict[tuple[str, str], str]:
    """(section, option) -> value of this machine's pip configuration; environment variables win."""
    out = subprocess.run(
        [sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True, check=True
    ).stdout
    config: dict[tuple[str, str], str] = {}
    for section, option, value in re.findall(r"^([^.\n]*)\.([\w-]+)='(.*)'$", out, re.MULTILINE):
        if section == ":env:":
            config[("global", option)] = value
        else:
            config.setdefault((section, option), value)
    return config


def pip_settings(build_root: Path) -> list[str]:
    """``--volume`` options that give the builds' pip this machine's pip settings.

    The image build must reach the package indexes as this machine does (extra local indexes, a wheel
    folder, a constraint file, a CA bundle), without any of it entering an image. A bind mount over a
    path the image lacks leaves an empty mount point in the committed layer, so everything is mounted at
    or under ``/root``, which every base image has: ``build_root`` (a scratch folder of this machine)
    holds ``.config/pip/pip.conf``, which pip running as root reads, with each local path rewritten to
    ``/root/host/<path>``, where that path is mounted read-only. The image's own /root stays as it was.
    """
    (build_root / ".config/pip").mkdir(parents=True)
    volumes = [f"{build_root}:{BUILD_ROOT}"]
    mounted: dict[Path, str] = {}

    def inside(local: Path, mount: Path) -> str:
        if mount not in mounted:
            mounted[mount] = f"{BUILD_ROOT}/host{mount}"
            volumes.append(f"{mount}:{mounted[mount]}:ro")
        return mounted[mount] + str(local)[len(str(mount)) :]

    def rewrite(token: str) -> str:
        if token.startswith("file://"):
            path = Path(urlparse(token).path)
            # An index's pages link to its files beside it (../../files/...): mount the index's parent.
            return "file://" + inside(path, path.parent) if path.exists() else token
        if token.startswith("/") and Path(token).exists():
            return inside(Path(token), Path(token))
        return token

    sections: dict[str, list[str]] = {}
    for (section, option), value in _pip_config().items():
        value = " ".join(rewrite(token) for token in value.split())
        sections.setdefault(section, []).append(f"{option} = {value}")
    (build_root / ".config/pip/pip.conf").write_text(
        "".join(f"[{s}]\n" + "\n".join(lines) + "\n" for s, lines in sections.items())
    )
    return [arg for v in volumes for arg in ("--volume", v)]


# ---------------------------------------------------------------- builds and containers


@dataclass
class Build:
    image: str
    seconds: float
    log: Path


def build(target: str, tag: str, build_args: dict[str, str], log: Path) -> Build:
    """``buildah bud`` of one target of the repository's Dockerfile, with this machine's pip settings."""
    root = Path(__file__).resolve().parent.parent
    build_root = Path(tempfile.mkdtemp(dir=CACHE, prefix="build-root-"))
    volumes = pip_settings(build_root)
    args = [f"--build-arg={k}={v}" for k, v in build_args.items()]
    cmd = _buildah_cmd("bud", "--isolation", "chroot", "--format", "docker", *volumes, *args)
    cmd += ["--target", target, "--tag", tag, str(root)]
    start = time.monotonic()
    with open(log, "w") as out:  # each line stamped with the seconds since the start: where the time goes
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=_env(), text=True)
        for line in proc.stdout:
            out.write(f"{time.monotonic() - start:7.1f} {line}")
        proc.wait()
    seconds = time.monotonic() - start
    shutil.rmtree(build_root)
    if proc.returncode != 0:
        raise AssertionError(f"building {target} failed; the end of {log}:\n{log.read_text()[-6000:]}")
    return Build(tag, seconds, log)


def image_config(image: str) -> dict:
    """The image's Docker config (User, Env, Entrypoint, Cmd, Healthcheck, ExposedPorts ...)."""
    return json.loads(buildah("inspect", "--type", "image", image).stdout)["Docker"]["config"]


def image_size(image: str) -> int:
    """Bytes of the image's layers, uncompressed: the SIZE that ``docker images`` shows."""
    manifest = json.loads(json.loads(buildah("inspect", "--type", "image", image).stdout)["Manifest"])
    return sum(layer["size"] for layer in manifest["layers"])


@dataclass
class Container:
    name: str
    rootfs: Path

    def run(
        self, *cmd: str, volumes: Sequence[str] = (), user: str | None = None, timeout: float = 600
    ) -> subprocess.CompletedProcess[str]:
        """``cmd`` inside the container, in its working directory, with its environment, as the image's user
        or as ``user`` (``docker run --user``)."""
        opts = [arg for v in volumes for arg in ("--volume", v)] + (["--user", user] if user else [])
        return buildah(
            "run", "--isolation", "chroot", *opts, self.name, "--", *cmd, timeout=timeout, check=False
        )

    def start(self, *cmd: str, log: Path) -> subprocess.Popen:
        return buildah_popen("run", "--isolation", "chroot", self.name, "--", *cmd, log=log)


@contextlib.contextmanager
def container(image: str) -> Iterator[Container]:
    name = buildah("from", "--pull-never", image).stdout.strip()
    try:
        yield Container(name, Path(buildah("mount", name).stdout.strip()))
    finally:
        buildah("rm", name, check=False)
