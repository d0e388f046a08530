"""`latent-ddpm serve --address` on a real two-node Ray cluster (two raylets on this machine).

Each node has one CPU and a replica reserves one, so Ray Serve must put the two replicas on different nodes;
the tests read the placement from the replicas themselves, send 64 requests at once and check every image
against ``Pipeline.generate``, then kill a replica's process in the middle of a burst: each request must
succeed or fail with a clear 5xx within a deadline, and Ray Serve must bring the replica back.
"""

from __future__ import annotations

import concurrent.futures
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from demo_server import free_port
from serve_harness import (
    REQUEST_TIMEOUT_S,
    START_TIMEOUT_S,
    ServeProcess,
    ray_env,
    ray_tmpdir,
    serve_process,
)

from latent_ddpm.runtime.pipeline import Pipeline

ray = pytest.importorskip("ray")
pytest.importorskip("ray.serve")

from ray import serve  # noqa: E402
from ray.cluster_utils import Cluster  # noqa: E402
from ray.exceptions import RayError  # noqa: E402

from latent_ddpm.serve.app import APP_NAME, model_deployment  # noqa: E402
from latent_ddpm.serve.client import ServeClient  # noqa: E402
from latent_ddpm.serve.errors import ServerError  # noqa: E402

pytestmark = pytest.mark.slow
STEPS = 4
# Small nodes: one CPU each (one replica each), a small object store, no dashboard.
NODE = {"num_cpus": 1, "object_store_memory": 100 * 2**20}


@pytest.fixture(scope="module")
def tmpdir() -> Iterator[Path]:
    with ray_tmpdir() as path:
        yield path


@pytest.fixture(scope="module")
def cluster(tmpdir: Path) -> Iterator[Cluster]:
    saved = os.environ.copy()
    os.environ.update(ray_env(tmpdir))
    cluster = Cluster(initialize_head=True, head_node_args={**NODE, "include_dashboard": False})
    try:
        cluster.add_node(**NODE)
        ray.init(address=cluster.address, log_to_driver=False)
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()
        os.environ.clear()
        os.environ.update(saved)


@pytest.fixture(scope="module")
def served(cluster: Cluster, tmpdir: Path) -> Iterator[ServeProcess]:
    """Two replicas deployed by `latent-ddpm serve --detach` from another process, as a user would, and left
    running on the cluster after it returns; one HTTP proxy (the nodes share this machine's address)."""
    args = ["--address", cluster.address, "--replicas", "2", "--proxy-location", "HeadOnly", "--detach"]
    with serve_process(args, tmpdir, free_port()) as process:
        assert process.process.wait(REQUEST_TIMEOUT_S) == 0, "\n".join(process.output[-30:])
        yield process
    serve.delete(APP_NAME)


@pytest.fixture(scope="module")
def pipe() -> Pipeline:
    return Pipeline.from_bundle(threads=1)


def _replicas() -> list[dict[str, Any]]:
    handle = serve.get_deployment_handle(model_deployment("digits"), app_name=APP_NAME)
    return handle.broadcast("where").results(timeout_s=REQUEST_TIMEOUT_S)


def test_two_replicas_on_two_nodes_serve_64_concurrent_requests(
    cluster: Cluster, served: ServeProcess, pipe: Pipeline
) -> None:
    nodes = {node["NodeID"] for node in ray.nodes() if node["Alive"]}
    replicas = _replicas()
    assert len(replicas) == 2
    assert {r["node_id"] for r in replicas} == nodes and len(nodes) == 2, (replicas, nodes)

    client = ServeClient(served.url, timeout=REQUEST_TIMEOUT_S)
    with concurrent.futures.ThreadPoolExecutor(64) as pool:
        results = list(
            pool.map(lambda i: client.generate(seed=i, steps=STEPS, class_labels=str(i % 10)), range(64))
        )
    for i, result in enumerate(results):
        expected = pipe.generate(seed=i, steps=STEPS, class_labels=str(i % 10))
        np.testing.assert_array_equal(result.images, expected.images, err_msg=f"request {i}")
    assert {r.served_by["node_id"] for r in results} == nodes  # Ray Serve spread them over both


def test_killing_a_replica_mid_burst_fails_only_its_requests_and_it_comes_back(
    served: ServeProcess, pipe: Pipeline
) -> None:
    client = ServeClient(served.url, timeout=REQUEST_TIMEOUT_S)
    victim = _replicas()[0]
    # Request 0 is short; the 15 long ones run together in the two replicas' engines for 50 steps.
    bursts = [{"num_images": 2, "steps": STEPS if i == 0 else 50} for i in range(16)]

    def one(seed: int) -> np.ndarray | str:
        try:
            return client.generate(seed=seed, **bursts[seed]).images
        except ServerError as exc:  # a 5xx: the message must say what happened
            return str(exc)

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        futures = [pool.submit(one, i) for i in range(16)]
        # Once the short request is back, both replicas are in the middle of the long ones: kill one there.
        futures[0].result(timeout=REQUEST_TIMEOUT_S)
        os.kill(victim["pid"], signal.SIGKILL)
        done, hanging = concurrent.futures.wait(futures, timeout=2 * REQUEST_TIMEOUT_S)
    assert not hanging, f"{len(hanging)} requests never finished"
    outcomes = [f.result() for f in futures]
    failed = [o for o in outcomes if isinstance(o, str)]
    assert failed, "the killed replica was running nothing"
    assert all(o.startswith("HTTP 503") and "the replica running this request stopped" in o for o in failed)
    assert any(not isinstance(o, str) for o in outcomes[1:]), "the surviving replica served nothing"
    for seed, images in enumerate(outcomes):
        if not isinstance(images, str):
            np.testing.assert_array_equal(images, pipe.generate(seed=seed, **bursts[seed]).images)

    deadline = time.monotonic() + 2 * REQUEST_TIMEOUT_S
    replicas: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        try:
            replicas = _replicas()
        except (RayError, TimeoutError):  # asked while Ray Serve was still finding out
            replicas = []
        if len(replicas) == 2 and victim["pid"] not in {r["pid"] for r in replicas}:
            break
        time.sleep(2.0)
    else:
        pytest.fail(f"Ray Serve did not replace the killed replica: {replicas}")
    result = client.generate(seed=5, steps=STEPS)
    np.testing.assert_array_equal(result.images, pipe.generate(seed=5, steps=STEPS).images)


# Last in this module: it deploys over the application the tests above use, and removes it.
def test_a_replica_that_cannot_start_fails_the_command_with_its_reason(
    cluster: Cluster, tmpdir: Path
) -> None:
    """An execution provider a node lacks is only found when a replica starts there: one line naming it."""
    argv = [
        "--address",
        cluster.address,
        "--proxy-location",
        "HeadOnly",
        "--providers",
        "NoSuchExecutionProvider",
    ]
    proc = subprocess.run(
        [sys.executable, "-m", "latent_ddpm", "serve", "--port", str(free_port()), *argv],
        capture_output=True,
        text=True,
        env=ray_env(tmpdir),
        timeout=START_TIMEOUT_S,
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    error = [line for line in proc.stderr.splitlines() if line.startswith("latent-ddpm serve: error:")]
    assert len(error) == 1 and "model-digits: latent_ddpm.errors.BackendUnavailableError" in error[0]
    assert "NoSuchExecutionProvider not available" in error[0]
    assert APP_NAME not in serve.status().applications  # the command removed what it deployed
