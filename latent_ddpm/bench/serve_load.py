"""Serving benchmark: images/s and latency through `latent-ddpm serve` by concurrent clients and replicas.

For each replica count it starts `latent-ddpm serve` (its own local Ray), drives it with each number of
concurrent clients (closed loop: every client sends its next request when the last one returns, through the
native endpoint) and reports images/s, p50 and p95 seconds per request. Beside it, the same requests at one
client on the runtime alone in this process (no Ray, no HTTP) and, with --demo-url, on a running
`latent-ddpm demo` through its /generate API: at one client, the difference is Ray Serve's and HTTP's cost.

    python -m latent_ddpm.bench.serve_load --replicas 1 2 --clients 1 16 64 --out docs/benchmarks

A benchmark, not a test: run it on a quiet machine (it prints the load average). On one machine the replicas
share its cores; the two-node test (tests/test_serve_cluster.py) shows the structure that scales.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from latent_ddpm.files import atomic_write
from latent_ddpm.provenance import machine_info


@dataclass
class Level:
    target: str  # "serve x1", "runtime", "demo"
    replicas: int
    clients: int
    requests: int
    errors: int
    seconds: float
    images_per_s: float
    p50_s: float
    p95_s: float


def drive(call: Callable[[int], int], clients: int, requests: int) -> tuple[list[float], int, int, float]:
    """``requests`` calls of ``call(seed) -> images made`` from ``clients`` threads at once.

    Returns the latency of each successful call, the images made, the failed calls and the wall time.
    """
    latencies: list[float] = []
    errors = 0
    images = 0
    lock = threading.Lock()
    next_seed = iter(range(requests))

    def client() -> None:
        nonlocal errors, images
        while True:
            with lock:
                seed = next(next_seed, None)
            if seed is None:
                return
            start = time.perf_counter()
            try:
                made = call(seed)
            except Exception as exc:  # a benchmark counts failures instead of stopping at the first
                print(f"  request {seed}: {exc}", file=sys.stderr)
                with lock:
                    errors += 1
                continue
            with lock:
                latencies.append(time.perf_counter() - start)
                images += made

    start = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return latencies, images, errors, time.perf_counter() - start


def measure(target: str, replicas: int, clients: int, requests: int, call: Callable[[int], int]) -> Level:
    call(10**6)  # warm up: first-call allocations, connections
    latencies, images, errors, seconds = drive(call, clients, requests)
    ordered = sorted(latencies) or [float("nan")]
    level = Level(
        target,
        replicas,
        clients,
        requests,
        errors,
        seconds,
        images / seconds,
        ordered[len(ordered) // 2],
        ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))],
    )
    print(
        f"{target:>12} replicas={replicas} clients={clients:>3}: {level.images_per_s:7.2f} images/s  "
        f"p50 {level.p50_s:6.3f} s  p95 {level.p95_s:6.3f} s  errors {errors}",
        flush=True,
    )
    return level


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serving(replicas: int, flags: list[str], timeout_s: float = 600) -> Iterator[str]:
    """`latent-ddpm serve --replicas N FLAGS` in its own process until it answers /healthz; Ctrl-C'd on exit."""
    port = _free_port()
    cmd = [
        sys.executable,
        "-m",
        "latent_ddpm",
        "serve",
        "--port",
        str(port),
        "--replicas",
        str(replicas),
        *flags,
    ]
    process = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                with urllib.request.urlopen(url + "/healthz", timeout=10):
                    break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"`{' '.join(cmd)}` did not start") from None
                time.sleep(2)
        yield url
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(120)
        except subprocess.TimeoutExpired:
            process.kill()


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m latent_ddpm.bench.serve_load", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--bundle", type=Path, default=None, help="bundle to serve (default: the shipped one)")
    p.add_argument("--replicas", type=int, nargs="+", default=[1, 2])
    p.add_argument("--clients", type=int, nargs="+", default=[1, 16, 64])
    p.add_argument(
        "--requests", type=int, default=None, help="requests per level (default: 4 per client, >= 32)"
    )
    p.add_argument("--images", type=int, default=1, help="images per request")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--sampler", default="ddim")
    p.add_argument("--class-label", default="3")
    p.add_argument("--guidance-scale", type=float, default=None, help="default: the bundle's")
    p.add_argument(
        "--threads", type=int, default=1, help="ONNX Runtime threads of each replica and of the runtime alone"
    )
    p.add_argument("--demo-url", default=None, help="a running `latent-ddpm demo` to time at one client")
    p.add_argument("--out", type=Path, default=None, help="write serve_load.json and serve_load.md here")
    args = p.parse_args(argv)

    from latent_ddpm.runtime.pipeline import Pipeline
    from latent_ddpm.serve.client import ServeClient

    pipe = Pipeline.from_bundle(args.bundle, threads=args.threads)
    guidance = pipe.bundle.defaults.guidance_scale if args.guidance_scale is None else args.guidance_scale
    request = {
        "num_images": args.images,
        "steps": args.steps,
        "sampler": args.sampler,
        "class_labels": args.class_label,
        "guidance_scale": guidance,
    }

    def counted(generate: Callable[..., object]) -> Callable[[int], int]:
        """``generate(seed=..., **request)`` as a call the load driver counts images of."""

        def call(seed: int) -> int:
            generate(seed=seed, **request)
            return args.images

        return call

    command = shlex.join(
        ["python", "-m", "latent_ddpm.bench.serve_load", *(argv if argv is not None else sys.argv[1:])]
    )
    started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    load_before = [round(x, 2) for x in os.getloadavg()]
    print(f"load average {load_before[0]:.2f} on {os.cpu_count()} CPUs", flush=True)
    one_client = min(32, args.requests or 32)
    levels = [measure("runtime", 0, 1, one_client, counted(pipe.generate))]
    if args.demo_url:
        from gradio_client import Client

        demo = Client(args.demo_url, verbose=False)

        def demo_generate(seed: int, **_: object) -> object:
            # The demo's /generate takes: class, images, sampler, steps, eta, guidance, seed.
            values = (args.class_label, args.images, args.sampler, args.steps, 0.0, guidance, seed)
            return demo.predict(*values, api_name="/generate")

        levels.append(measure("demo", 0, 1, one_client, counted(demo_generate)))
    for replicas in args.replicas:
        flags = ["--threads", str(args.threads), "--max-queued", str(2 * max(args.clients))]
        flags += ["--bundle", str(args.bundle)] if args.bundle else []
        with serving(replicas, flags) as url:
            generate = counted(ServeClient(url, timeout=600).generate)
            for clients in args.clients:
                total = args.requests or max(32, 4 * clients)
                levels.append(measure(f"serve x{replicas}", replicas, clients, total, generate))
    machine = machine_info()
    report = {"command": command, "started": started, "load_before": load_before, "request": request}
    report |= {"machine": machine, "levels": [asdict(level) for level in levels]}
    if args.out is not None:
        load_after = machine["load_average_1_5_15"]
        rows = [
            f"# latent-ddpm serve under load: {started}",
            "",
            f"- Command: `{command}`",
            f"- Machine: {machine['cpu_model']}, {machine['cores']} cores; load average before {load_before}, "
            f"after {load_after}",
            f"- Each request: {request}; `runtime` is the same request on the runtime alone in one process "
            "(no Ray, no HTTP), at one client",
            "",
            "| target | replicas | clients | images/s | p50 s | p95 s | errors |",
            "|---|---|---|---|---|---|---|",
        ]
        rows += [
            f"| {lv.target} | {lv.replicas} | {lv.clients} | {lv.images_per_s:.2f} | {lv.p50_s:.3f} | {lv.p95_s:.3f} | {lv.errors} |"
            for lv in levels
        ]
        atomic_write(args.out / "serve_load.json", json.dumps(report, indent=2) + "\n")
        atomic_write(args.out / "serve_load.md", "\n".join(rows) + "\n")
        print(f"wrote {args.out / 'serve_load.json'} and serve_load.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
