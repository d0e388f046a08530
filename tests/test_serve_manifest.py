"""The KubeRay RayService manifest (deploy/kuberay/rayservice.yaml) is one that Ray and this package accept.

Without a Kubernetes cluster, the test holds the file to what would break a deployment: a Serve config that
Ray's own schema refuses, an import path or args our builder refuses, ports that do not match the CLI's and
each other, an image that differs between pods, a Ray version other than the one the serve extra requires.
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

from latent_ddpm.cli import build_parser

pytest.importorskip("ray.serve")
yaml = pytest.importorskip("yaml")

from ray.serve import Application  # noqa: E402
from ray.serve.schema import ServeDeploySchema  # noqa: E402

from latent_ddpm.serve.app import APP_NAME, build  # noqa: E402
from latent_ddpm.serve.config import ServeConfig  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
MANIFEST = ROOT / "deploy" / "kuberay" / "rayservice.yaml"
IMAGE = "latent-ddpm:serve"  # the Dockerfile's `serve` target, tagged as docs/serving.md builds it


@pytest.fixture(scope="module")
def manifest() -> dict:
    return yaml.safe_load(MANIFEST.read_text(encoding="utf-8"))


def _containers(manifest: dict) -> list[dict]:
    cluster = manifest["spec"]["rayClusterConfig"]
    groups = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
    return [c for group in groups for c in group["template"]["spec"]["containers"]]


def _port(container: dict, name: str) -> int:
    (port,) = [p["containerPort"] for p in container["ports"] if p["name"] == name]
    return port


def test_serve_config_is_valid_for_ray_and_for_our_builder(manifest: dict) -> None:
    assert (manifest["apiVersion"], manifest["kind"]) == ("ray.io/v1", "RayService")
    config = ServeDeploySchema.model_validate(yaml.safe_load(manifest["spec"]["serveConfigV2"]))
    (app,) = config.applications
    assert (app.name, app.route_prefix) == (APP_NAME, "/")
    module, attr = app.import_path.split(":")
    assert getattr(importlib.import_module(module), attr) is build
    settings = ServeConfig.model_validate(app.args)
    assert settings.bundles == []  # the model inside the image
    assert settings.model_options()["autoscaling_config"]["max_replicas"] >= 2
    assert isinstance(build(app.args), Application)  # loads the shipped bundle's card, as the head would


def test_ports_match_the_cli_and_each_other(manifest: dict) -> None:
    cli_port = build_parser().parse_args(["serve"]).port
    http = yaml.safe_load(manifest["spec"]["serveConfigV2"])["http_options"]
    assert (http["host"], http["port"]) == ("0.0.0.0", cli_port)
    cluster = manifest["spec"]["rayClusterConfig"]
    groups = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
    for group in groups:
        (container,) = group["template"]["spec"]["containers"]
        assert _port(container, "serve") == cli_port  # KubeRay's serve Service targets the port named serve
        assert _port(container, "metrics") == int(group["rayStartParams"]["metrics-export-port"])


def test_every_pod_runs_the_serve_image_with_this_ray(manifest: dict) -> None:
    assert {c["image"] for c in _containers(manifest)} == {IMAGE}
    # KubeRay gates features on rayVersion; it names the Ray the serve extra requires at least.
    (minimum,) = re.findall(
        r'"ray\[serve\]>=([0-9.]+)"', (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    )
    assert manifest["spec"]["rayClusterConfig"]["rayVersion"].startswith(minimum + ".")
    cpus = ServeConfig.model_validate(
        yaml.safe_load(manifest["spec"]["serveConfigV2"])["applications"][0]["args"]
    ).cpus_per_replica
    for group in manifest["spec"]["rayClusterConfig"]["workerGroupSpecs"]:
        (container,) = group["template"]["spec"]["containers"]
        assert float(container["resources"]["requests"]["cpu"]) >= cpus  # a worker pod fits a replica
