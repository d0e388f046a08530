"""The Dockerfile's `cpu`, `serve` and `export` images, built for real and used as their users use them.

Built with buildah on a Debian bookworm base made here by debootstrap (tests/docker_buildah.py says how,
and where the cache lives); the `gpu` target needs NVIDIA's base image and a GPU, so only hadolint reads it
(tests/test_dockerfile_lint.py).

- cpu: the image's own entrypoint and command (the demo) answer HTTP from the host: the page, and /generate
  through gradio_client giving the shipped model's digits; the image's HEALTHCHECK command passes while the
  server is up and fails once it is down; no torch, a non-root user, no pip, pip settings, caches, source
  tree or compilers; its size is recorded (goal: under CPU_IMAGE_GOAL_MB); `latent-ddpm sample` writes
  into a mounted folder as the caller's uid (docs/docker.md runs subcommands with --user).
- serve: the image's own entrypoint and command (`latent-ddpm serve`, Ray started inside the container)
  answers from the host: /healthz, /v1/models, and /v1/images/generations gives PNGs of the shipped model's
  size; Ray's metrics answer on the image's metrics port; the HEALTHCHECK passes while it serves; SIGTERM
  (`docker stop`) shuts it down with exit status 0 and no Ray process left; the HEALTHCHECK then fails;
  no torch, no Gradio, a non-root user, no leftovers; its size is recorded.
- export: torch is the CPU build; `latent-ddpm export` of a tiny diffusers model, run inside the image as
  the caller's uid on mounted folders only that uid can read, writes a bundle that passed the export's
  validation gate and that this machine's runtime samples.

Two deliberate departures from `docker run`: the demo and the API listen on 127.0.0.1 and free ports instead
of the command's 0.0.0.0 and the image's ports, because a chroot container shares the host's network (the
test checks the image's values and rewrites them, in the HEALTHCHECK too); and TORCH_INDEX_URL points at PyPI when
download.pytorch.org is out of reach (as here), the CPU wheel then coming from this machine's pip settings.

Sizes and build times go to test-artifacts/docker-images.json (docs/docker.md quotes them).
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import shutil
import signal
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from demo_server import TEST_STEPS, free_port
from docker_buildah import (
    Build,
    Container,
    base_image,
    build,
    buildah,
    container,
    image_config,
    image_size,
    missing_tools,
    stop,
)
from PIL import Image
from serve_harness import START_TIMEOUT_S

from latent_ddpm.demo.imaging import display_scale
from latent_ddpm.runtime import Pipeline, load_bundle, shipped_bundle_path
from latent_ddpm.serve.options import DEFAULT_PORT

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts" / "docker-images.json"
CPU_IMAGE_GOAL_MB = 600
DEMO_PORT = 7860
SERVE_PORT = DEFAULT_PORT  # the API: `latent-ddpm serve`'s own default
METRICS_PORT = 8080  # Ray's metrics, as in docs/serving.md and deploy/kuberay/rayservice.yaml
CALLER_UID = 4242  # stands for `docker run --user "$(id -u):$(id -g)"`: neither root nor the image's user

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        bool(missing_tools()),
        reason=f"{' and '.join(missing_tools())} missing: apt-get install buildah debootstrap",
    ),
    pytest.mark.skipif(os.geteuid() != 0, reason="buildah chroot builds and debootstrap need root"),
]

# Left by a build or its pip settings, or tools a runtime image does not need (paths inside the image).
NOT_IN_IMAGES = (
    "etc/pip.conf",
    "etc/xdg/pip",
    "root/.config",
    "root/.cache",
    "root/host",
    "home/app/.cache",
    "opt/pip",
    "opt/venv/bin/pip",
    "opt/venv/lib/python3*/site-packages/pip",
    "src",
    "wheels",
    "opt/wheels",
    "opt/pypi*",
    "tmp/*",
    "var/lib/apt/lists/*",
    "var/cache/apt/archives/*.deb",
    *(f"{d}/{tool}" for d in ("usr/bin", "usr/local/bin") for tool in ("cc", "gcc", "g++", "make", "git")),
)


def _torch_index() -> dict[str, str]:
    try:
        socket.getaddrinfo("download.pytorch.org", 443)
    except OSError:
        return {"TORCH_INDEX_URL": "https://pypi.org/simple"}
    return {}


@pytest.fixture(scope="module")
def report() -> Iterator[dict]:
    results: dict = {}
    yield results
    ARTIFACTS.parent.mkdir(exist_ok=True)
    ARTIFACTS.write_text(json.dumps(results, indent=2) + "\n")


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, report: dict) -> Iterator[Callable[[str], Build]]:
    """``built(target)``: the image of one Dockerfile target, built on the local Debian base (once)."""
    logs = tmp_path_factory.mktemp("docker-logs")
    base = base_image()
    done: dict[str, Build] = {}

    def get(target: str) -> Build:
        if target not in done:
            args = {"BASE_IMAGE": base, **(_torch_index() if target == "export" else {})}
            tag = f"localhost/latent-ddpm-test:{target}-{os.getpid()}"  # test sessions may run side by side
            done[target] = b = build(target, tag, args, logs / f"{target}.log")
            size = image_size(b.image)
            report[target] = {"size_mb": round(size / 1e6), "build_s": round(b.seconds), "base": base}
            print(f"\n{target} image: {size / 1e6:.0f} MB, built in {b.seconds:.0f} s on {base}")
        return done[target]

    yield get
    for b in done.values():  # gigabytes each; the next session builds afresh
        buildah("rmi", b.image, check=False)


def _no_leftovers(ctr: Container) -> None:
    found = [str(p.relative_to(ctr.rootfs)) for pattern in NOT_IN_IMAGES for p in ctr.rootfs.glob(pattern)]
    assert not found, f"the image holds what it should not: {sorted(set(found))}"


def _runs_as_non_root(ctr: Container) -> None:
    """A uid other than 0, whose home and the image's working directory it can write to."""
    proc = ctr.run("id", "-u")
    assert proc.returncode == 0 and proc.stdout.strip() not in ("", "0"), proc.stdout + proc.stderr
    home = ctr.run("sh", "-c", 'test -w "$HOME" && test -w . && echo "$HOME"')
    assert home.returncode == 0 and home.stdout.strip() != "/", "home or working directory not writable"


# ---------------------------------------------------------------- cpu


def _with_ports(args: list[str], ports: dict[int, int]) -> list[str]:
    """The image's command or HEALTHCHECK on 127.0.0.1 and free ports (container port -> host port) instead
    of 0.0.0.0 and the image's own ports, which a chroot container would take on the host itself."""
    out = list(args)
    for inside, outside in ports.items():
        out = [a.replace(f"127.0.0.1:{inside}", f"127.0.0.1:{outside}") for a in out]
    for i, flag in enumerate(out[:-1]):
        if flag == "--host":
            out[i + 1] = "127.0.0.1"
        elif flag.startswith("--") and flag.endswith("port"):  # --port, --metrics-port: every one mapped
            out[i + 1] = str(ports[int(out[i + 1])])
    return out


def _healthcheck(config: dict, ports: dict[int, int], probed: int) -> list[str]:
    """The image's HEALTHCHECK command, which must probe the container's port ``probed``, on ``ports``."""
    test = config["Healthcheck"]["Test"]
    assert test[0] in ("CMD", "CMD-SHELL"), test
    assert any(f"127.0.0.1:{probed}" in a for a in test), f"the HEALTHCHECK probes another port: {test}"
    return _with_ports(test[1:] if test[0] == "CMD" else ["/bin/sh", "-c", test[1]], ports)


def _wait_for(url: str, server, log: Path, seconds: float = 180) -> None:
    import httpx

    deadline = time.monotonic() + seconds
    while True:
        try:
            if httpx.get(url, timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if server.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"the image's server did not come up:\n{log.read_text()[-4000:]}")
        time.sleep(1)


def test_cpu_image_serves_the_demo_and_its_healthcheck_follows_it(built: Callable, tmp_path: Path) -> None:
    from gradio_client import Client

    image = built("cpu").image
    config = image_config(image)
    command = config["Entrypoint"] + config["Cmd"]
    assert (
        command[command.index("--host") + 1] == "0.0.0.0" and command[command.index("--port") + 1] == "7860"
    )
    assert f"{DEMO_PORT}/tcp" in config["ExposedPorts"]
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    with container(image) as ctr:
        health = _healthcheck(config, {DEMO_PORT: port}, DEMO_PORT)
        log = tmp_path / "demo.log"
        server = ctr.start(*_with_ports(command, {DEMO_PORT: port}), log=log)
        try:
            _wait_for(url, server, log)
            check = ctr.run(*health, timeout=60)
            assert check.returncode == 0, f"HEALTHCHECK failed on a live server: {check.stderr[-2000:]}"

            gallery, _, _, timing = Client(url, verbose=False).predict(
                class_name="7",
                num_images=3,
                sampler="ddim",
                steps=TEST_STEPS,
                eta=0.0,
                guidance_scale=1.5,
                seed=3,
                api_name="/generate",
            )
        finally:
            stop(server)
        down = ctr.run(*health, timeout=60)
        assert down.returncode != 0, "HEALTHCHECK passed with the server stopped"

    # The image serves the shipped digits model: the same digits as this machine's runtime.
    pipe = Pipeline.from_bundle()
    _, h, w = pipe.bundle.image_shape
    s = display_scale(h)
    expected = pipe.generate(
        num_images=3, steps=TEST_STEPS, sampler="ddim", eta=0.0, seed=3, class_labels="7", guidance_scale=1.5
    ).images
    assert len(gallery) == 3 and timing["providers"] == ["CPUExecutionProvider"]
    for item, want in zip(gallery, expected, strict=True):
        got = np.asarray(Image.open(item["image"]))
        assert got.shape[:2] == (h * s, w * s)
        diff = np.abs(got[::s, ::s].reshape(want.shape).astype(int) - want.astype(int))
        assert diff.mean() < 1.0, f"the image's digits differ from the runtime's by {diff.mean():.2f} levels"


def test_cpu_image_is_lean_torch_free_and_non_root(built: Callable, report: dict) -> None:
    image = built("cpu").image
    with container(image) as ctr:
        _runs_as_non_root(ctr)
        _no_leftovers(ctr)
        assert not list(ctr.rootfs.glob("opt/venv/lib/python3*/site-packages/torch")), (
            "torch in the cpu image"
        )
        proc = ctr.run("python", "-c", "import importlib.util as u; print(u.find_spec('torch'))")
        assert proc.returncode == 0 and proc.stdout.strip() == "None", proc.stdout + proc.stderr
    size_mb = report["cpu"]["size_mb"]
    assert size_mb < CPU_IMAGE_GOAL_MB, f"the cpu image is {size_mb} MB (goal: < {CPU_IMAGE_GOAL_MB} MB)"


def _owned_by_caller(*folders: Path) -> None:
    """Folders of the caller's that others cannot read, as `docker run --user "$(id -u):$(id -g)"` meets them."""
    for folder in folders:
        for path in [folder, *folder.rglob("*")]:
            os.chown(path, CALLER_UID, CALLER_UID)
        folder.chmod(0o700)


def test_cpu_image_runs_any_subcommand_as_the_caller(built: Callable, tmp_path: Path) -> None:
    image = built("cpu").image
    config = image_config(image)
    out = tmp_path / "out"
    out.mkdir()
    _owned_by_caller(out)
    with container(image) as ctr:
        proc = ctr.run(
            *config["Entrypoint"],
            *("sample", "--num", "4", "--steps", str(TEST_STEPS), "--seed", "0", "--out", "/out/samples.png"),
            volumes=[f"{out}:/out"],
            user=f"{CALLER_UID}:{CALLER_UID}",
        )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    png = out / "samples.png"
    assert png.stat().st_uid == CALLER_UID and np.asarray(Image.open(png)).std() > 0


# ---------------------------------------------------------------- serve


def _session(leader: int) -> list[int]:
    """Every live process in the session ``buildah run`` leads: the container's command and all it started
    (Ray's GCS, raylet, workers: they leave buildah's process group, not its session)."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and os.getsid(int(proc.name)) == leader and int(proc.name) != leader:
                pids.append(int(proc.name))
        except OSError:
            continue
    return pids


def _main_process(leader: int, command: list[str]) -> int:
    """The pid of the container's command (what `docker stop` signals): the python running the entrypoint."""
    for pid in _session(leader):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")[:-1]
        except OSError:
            continue
        if argv[-len(command) :] == command and not argv[0].startswith("buildah"):
            return pid
    raise AssertionError(f"no process runs {command} in the container")


def _kill_session(leader: int) -> None:
    """What a failed test leaves running in the container (the test's own processes), ended."""
    for pid in _session(leader):
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)


def test_serve_image_serves_the_api_and_its_healthcheck_follows_it(built: Callable, tmp_path: Path) -> None:
    import httpx

    image = built("serve").image
    config = image_config(image)
    command = config["Entrypoint"] + config["Cmd"]
    assert command[:2] == ["latent-ddpm", "serve"] and "--bundle" not in command, "the shipped model"
    assert command[command.index("--host") + 1] == "0.0.0.0"
    assert command[command.index("--port") + 1] == str(SERVE_PORT)
    assert command[command.index("--metrics-port") + 1] == str(METRICS_PORT)
    assert {f"{SERVE_PORT}/tcp", f"{METRICS_PORT}/tcp"} <= set(config["ExposedPorts"])
    ports = {SERVE_PORT: free_port(), METRICS_PORT: free_port()}
    api, metrics = (f"http://127.0.0.1:{ports[p]}" for p in (SERVE_PORT, METRICS_PORT))
    bundle = load_bundle(shipped_bundle_path())
    _, h, w = bundle.image_shape
    with container(image) as ctr:
        health = _healthcheck(config, ports, SERVE_PORT)
        log = tmp_path / "serve.log"
        run = _with_ports(command, ports)
        server = ctr.start(*run, log=log)
        try:
            _wait_for(api + "/healthz", server, log, START_TIMEOUT_S)  # Ray: slower than the demo
            check = ctr.run(*health, timeout=60)
            assert check.returncode == 0, f"HEALTHCHECK failed on a live server: {check.stderr[-2000:]}"
            assert httpx.get(api + "/healthz", timeout=30).json()["models"] == [bundle.name]
            models = httpx.get(api + "/v1/models", timeout=30).json()["data"]
            assert [(m["id"], m["size"]) for m in models] == [(bundle.name, f"{w}x{h}")]
            reply = httpx.post(
                api + "/v1/images/generations",
                json={"model": bundle.name, "prompt": "7", "n": 2, "steps": TEST_STEPS, "seed": 3},
                timeout=180,
            )
            assert reply.status_code == 200, reply.text
            for item in reply.json()["data"]:
                with Image.open(io.BytesIO(base64.b64decode(item["b64_json"]))) as png:
                    assert png.format == "PNG" and png.size == (w, h)
                    assert np.asarray(png).std() > 0
            # Ray's metrics agent on the image's metrics port; it exports every few seconds, so wait for ours.
            deadline = time.monotonic() + 120
            while "ray_latent_ddpm_images_total" not in (
                text := httpx.get(metrics + "/metrics", timeout=30).text
            ):
                assert time.monotonic() < deadline, (
                    f"no latent-ddpm metrics on the metrics port:\n{text[:2000]}"
                )
                time.sleep(2)
            # `docker stop`: SIGTERM to the container's command, which shuts Ray down and exits 0.
            os.kill(_main_process(server.pid, run[1:]), signal.SIGTERM)
            assert server.wait(timeout=180) == 0, log.read_text()[-4000:]
            deadline = time.monotonic() + 60
            while left := _session(server.pid):
                assert time.monotonic() < deadline, f"processes left after the server stopped: {left}"
                time.sleep(1)
        finally:
            stop(server)
            _kill_session(server.pid)
        down = ctr.run(*health, timeout=60)
        assert down.returncode != 0, "HEALTHCHECK passed with the server stopped"


def test_serve_image_is_torch_and_gradio_free_and_non_root(built: Callable) -> None:
    image = built("serve").image
    with container(image) as ctr:
        _runs_as_non_root(ctr)
        _no_leftovers(ctr)
        found = ctr.run(
            "python",
            "-c",
            "import importlib.util as u; print([m for m in ('torch', 'gradio') if u.find_spec(m)])",
        )
        assert found.returncode == 0 and found.stdout.strip() == "[]", found.stdout + found.stderr
        ray = ctr.run("python", "-c", "import ray.serve, onnxruntime")
        assert ray.returncode == 0, ray.stderr[-2000:]


# ---------------------------------------------------------------- export


def test_export_image_exports_a_tiny_model_with_cpu_torch(
    built: Callable, tiny_model_dir: Callable, tmp_path: Path
) -> None:
    image = built("export").image
    config = image_config(image)
    # As docs/docker.md runs it: the caller's own uid (--user), on folders of the caller's that others
    # cannot read (diffusers writes its weights 0600), with no passwd entry for that uid in the image.
    model, out = tmp_path / "model", tmp_path / "out"
    shutil.copytree(tiny_model_dir("kl_cond"), model)
    out.mkdir()
    _owned_by_caller(model, out)
    with container(image) as ctr:
        _runs_as_non_root(ctr)
        _no_leftovers(ctr)
        usage = ctr.run(*config["Entrypoint"], *config["Cmd"])  # the image's default: --help
        assert usage.returncode == 0 and "export" in usage.stdout, usage.stdout + usage.stderr
        torch = ctr.run("python", "-c", "import torch; print(torch.__version__, torch.version.cuda)")
        assert torch.returncode == 0 and torch.stdout.split()[1] == "None", torch.stdout + torch.stderr
        assert torch.stdout.split()[0].endswith("+cpu"), torch.stdout
        assert not list(ctr.rootfs.glob("opt/venv/lib/python3*/site-packages/nvidia*")), "CUDA libraries"
        export = ctr.run(
            *config["Entrypoint"],
            *("export", "model", "out/tiny", "--name", "tiny-in-docker", "--quiet"),
            volumes=[f"{model}:{config['WorkingDir']}/model:ro", f"{out}:{config['WorkingDir']}/out"],
            user=f"{CALLER_UID}:{CALLER_UID}",
        )
    assert export.returncode == 0, export.stdout[-3000:] + export.stderr[-3000:]
    bundle = load_bundle(out / "tiny")
    assert bundle.name == "tiny-in-docker" and bundle.validation["passed"]
    assert (out / "tiny").stat().st_uid == CALLER_UID
    images = Pipeline.from_bundle(out / "tiny").generate(num_images=2, steps=TEST_STEPS, seed=0).images
    assert images.shape[0] == 2 and images.std() > 0
    assert [p.name for p in out.iterdir()] == ["tiny"], "the export left temporary folders"
