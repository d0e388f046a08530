"""Serve bundles over HTTP with Ray Serve: OpenAI's images API, replicas on every node, autoscaling.

Without --address it starts Ray on this machine (one command, one machine). With --address auto (or a
cluster's address) it deploys onto a running Ray cluster (`ray start --head` on one machine, `ray start
--address=HEAD:6379` on the others), whose replicas Ray Serve places on every node. Each --bundle is one
model, selected by the request's "model" (its bundle's name); without --bundle, the shipped digits model.

Endpoints: POST /v1/images/generations (OpenAI), POST /v1/generate (also returns seeds, class labels and
timings), GET /v1/models, GET /healthz; Prometheus metrics on Ray's metrics port. See docs/serving.md.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import socket
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from latent_ddpm.serve import options, routes

if TYPE_CHECKING:
    from latent_ddpm.serve.config import ServeConfig

HELP = __doc__
PROXY_LOCATIONS = ("EveryNode", "HeadOnly")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--bundle",
        dest="bundles",
        type=Path,
        action="append",
        default=[],
        metavar="DIR_OR_NAME",
        help="bundle directory, or the name of a shipped model, to serve; repeat for several models "
        "(default: the shipped digits model); on a cluster every node must see the same directories",
    )
    p.add_argument(
        "--host", default="127.0.0.1", help="address to listen on; 0.0.0.0 serves other machines (Docker)"
    )
    p.add_argument("--port", type=int, default=options.DEFAULT_PORT, help="HTTP port")
    p.add_argument("--replicas", type=int, default=None, help=options.HELP["replicas"])
    p.add_argument("--min-replicas", type=int, default=None, help=options.HELP["min_replicas"])
    p.add_argument("--max-replicas", type=int, default=None, help=options.HELP["max_replicas"])
    p.add_argument(
        "--address",
        default=None,
        help="Ray cluster to deploy onto: 'auto' (the cluster this machine joined) or HOST:PORT; "
        "default: start Ray on this machine",
    )
    p.add_argument(
        "--detach",
        action="store_true",
        help="with --address: deploy and return, leaving the application running on the cluster",
    )
    _setting(p, "--cpus-per-replica", float)
    _setting(p, "--gpus-per-replica", float)
    p.add_argument("--threads", type=int, default=None, help=options.HELP["threads"])
    _setting(p, "--backend")
    p.add_argument(
        "--providers",
        default=None,
        help="comma-separated ONNX Runtime execution providers, e.g. CUDAExecutionProvider,CPUExecutionProvider",
    )
    _setting(p, "--precision", choices=options.EXECUTION_PRECISIONS)
    for flag in ("--max-images", "--max-rows", "--max-pending-images", "--max-queued"):
        _setting(p, flag, int)
    p.add_argument(
        "--proxy-location",
        choices=PROXY_LOCATIONS,
        default="EveryNode",
        help="where Ray Serve runs HTTP proxies: on every node with a replica, or on the head node only",
    )
    p.add_argument(
        "--metrics-port",
        type=int,
        default=None,
        help="without --address: port of Ray's Prometheus metrics (default: a free one, printed); on a "
        "cluster it is `ray start --metrics-export-port`",
    )


def _setting(p: argparse.ArgumentParser, flag: str, kind: Any = None, **kwargs: Any) -> None:
    """A flag for the ServeConfig setting of the same name, with its one default and help (serve/options.py)."""
    key = flag.removeprefix("--").replace("-", "_")
    p.add_argument(flag, type=kind, default=options.DEFAULTS[key], help=options.HELP[key], **kwargs)


def config_from_args(args: argparse.Namespace) -> ServeConfig:
    """The flags as a ServeConfig; a bad value or combination is a CLIError naming the flag."""
    from pydantic import ValidationError

    from latent_ddpm.errors import CLIError
    from latent_ddpm.serve.config import ServeConfig

    fields = {
        "bundles": [str(b) for b in args.bundles],
        "replicas": args.replicas,
        "min_replicas": args.min_replicas,
        "max_replicas": args.max_replicas,
        "cpus_per_replica": args.cpus_per_replica,
        "gpus_per_replica": args.gpus_per_replica,
        "threads": args.threads,
        "backend": args.backend,
        "providers": [p.strip() for p in args.providers.split(",")] if args.providers else None,
        "precision": args.precision,
        "max_images": args.max_images,
        "max_rows": args.max_rows,
        "max_pending_images": args.max_pending_images,
        "max_queued": args.max_queued,
    }
    try:
        return ServeConfig(**fields)
    except ValidationError as exc:
        error = exc.errors()[0]
        where = "--" + str(error["loc"][0]).replace("_", "-") if error["loc"] else ""
        message = error["msg"].removeprefix("Value error, ")
        raise CLIError(f"{where}: {message}" if where else message) from None


def _check_flags(args: argparse.Namespace) -> None:
    from latent_ddpm.errors import CLIError

    for flag, port in (("--port", args.port), ("--metrics-port", args.metrics_port)):
        if port is not None and not 1 <= port <= 65535:
            raise CLIError(f"{flag} must be in 1..65535, got {port}")
    if args.detach and args.address is None:
        raise CLIError("--detach needs --address: without it the local Ray instance ends with this command")
    if args.metrics_port is not None and args.address is not None:
        raise CLIError(
            "--metrics-port applies to the Ray instance this command starts; a cluster's is set by "
            "`ray start --metrics-export-port`"
        )
    if args.address is None:
        _check_free(args.host, args.port, "--port")
        if args.metrics_port is not None:
            _check_free("127.0.0.1", args.metrics_port, "--metrics-port")
    elif args.address != "auto" and "://" not in args.address:
        _check_reachable(args.address)


def _check_free(host: str, port: int, flag: str) -> None:
    from latent_ddpm.errors import CLIError

    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError as exc:
            raise CLIError(f"{flag} {port}: cannot listen on {host}:{port} ({exc.strerror})") from None


def _check_reachable(address: str) -> None:
    """A HOST:PORT where nothing listens fails now, not after Ray's minutes of retries."""
    from latent_ddpm.errors import CLIError

    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise CLIError(
            f"--address must be 'auto' or HOST:PORT (the head's GCS port, 6379 by default), got {address!r}"
        )
    try:
        socket.create_connection((host, int(port)), timeout=10).close()
    except OSError as exc:
        raise CLIError(f"--address {address}: no Ray cluster answers there ({exc.strerror or exc})") from None


def run(args: argparse.Namespace) -> int:
    from latent_ddpm.errors import CLIError
    from latent_ddpm.extras import require_extra

    require_extra("serve", "serve")
    _check_flags(args)
    from latent_ddpm.serve.cards import load_cards

    config = config_from_args(args)
    # every bundle checked (hashes, precision gate) before Ray starts
    cards = load_cards(config.bundles, backend=config.backend, precision=config.precision)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # Ray would otherwise report usage online
    import ray
    from ray import serve

    from latent_ddpm.serve.app import APP_NAME, build_app

    local = args.address is None
    init: dict[str, Any] = (
        {"address": "local", "include_dashboard": False} if local else {"address": args.address}
    )
    if local and args.metrics_port is not None:
        init["_metrics_export_port"] = args.metrics_port
    try:
        ray.init(**init)
    except ConnectionError as exc:
        raise CLIError(f"--address {args.address}: {_first_line(exc)}") from None
    # `docker stop` (SIGTERM) shuts down as Ctrl-C does; set after ray.init, which installs a handler of its own.
    previous = signal.signal(signal.SIGTERM, _interrupt)
    deployed = False
    try:
        serve.start(proxy_location=args.proxy_location, http_options={"host": args.host, "port": args.port})
        try:
            serve.run(build_app(config, cards), name=APP_NAME, route_prefix="/", blocking=False)
        except RuntimeError as exc:
            why = _why_failed(serve, APP_NAME, exc)
            raise CLIError(f"the application failed to deploy: {why}") from None
        deployed = True
        _print_ready(args, cards, config, ray)
        if not args.detach:
            _wait_until_stopped()
        return 0
    finally:
        if local:
            serve.shutdown()
        elif not (args.detach and deployed):
            serve.delete(APP_NAME)
        ray.shutdown()
        signal.signal(signal.SIGTERM, previous)


def _interrupt(*_: Any) -> None:
    raise KeyboardInterrupt


def _wait_until_stopped() -> None:
    """Serve until Ctrl-C or SIGTERM; then the caller shuts Ray down cleanly."""
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass


def _why_failed(serve: Any, app: str, exc: RuntimeError) -> str:
    """The exception a replica raised while starting, from Ray Serve's status (its RuntimeError omits it)."""
    try:
        deployments = serve.status().applications[app].deployments
    except Exception:  # the status itself is unavailable: keep Ray's own message
        return _first_line(exc)
    reasons = []
    for name, deployment in deployments.items():
        errors = re.findall(r"^\s*([\w.]+(?:Error|Exception)\b.*)$", deployment.message or "", re.MULTILINE)
        if errors:
            reasons.append(f"{name}: {errors[-1]}")
    return "; ".join(reasons) or _first_line(exc)


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


def _print_ready(args: argparse.Namespace, cards: list, config: ServeConfig, ray: Any) -> None:
    host = "127.0.0.1" if args.host in ("0.0.0.0", "::") else args.host
    url = f"http://{host}:{args.port}"
    if config.max_replicas is not None:
        replicas = f"{config.min_replica_count}..{config.max_replicas} replicas (autoscaling)"
    else:
        replicas = f"{config.replicas or 1} replica(s)"
    models = ", ".join(f"{card.id} ({card.size})" for card in cards)
    lines = [
        f"serving {models} at {url} with {replicas} per model",
        f"  OpenAI images API: POST {url}{routes.IMAGES}   models: GET {url}{routes.MODELS}",
        f"  native: POST {url}{routes.GENERATE}   health: GET {url}{routes.HEALTH}   API docs: {url}/docs",
    ]
    ports = sorted({node["MetricsExportPort"] for node in ray.nodes() if node.get("Alive")})
    if args.address is None and ports:
        lines.append(f"  Prometheus metrics: http://127.0.0.1:{ports[0]}/metrics")
    elif ports:
        lines.append(f"  Prometheus metrics: port {', '.join(map(str, ports))} of every node, /metrics")
    lines.append("  detached: stop it with `serve shutdown`" if args.detach else "  press Ctrl-C to stop")
    print("\n".join(lines), flush=True)
