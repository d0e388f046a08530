"""Serve the Gradio demo: generate, watch denoising, interpolate between seeds, turn sketches into digits.

Runs the torch-free runtime on the models that ship with the package and any --bundle given (a model picker
shows when there is more than one; the first --bundle, else LATENT_DDPM_BUNDLE, else the digits model is the
default). With --server URL the page is a front for a `latent-ddpm serve` deployment instead, reached over
HTTP (Generate only). Every tab is also an API endpoint for gradio_client (/generate, /denoise,
/interpolate, /img2img); see docs/demo.md. Nothing is downloaded: analytics are off and --share (which does
need the internet) is off by default.
"""

from __future__ import annotations

import argparse
import errno
import os
import signal
import socket

HELP = __doc__
BUNDLE_ENV = "LATENT_DDPM_BUNDLE"


def add_arguments(p: argparse.ArgumentParser) -> None:
    from latent_ddpm.runtime.sample_cli import add_backend_arguments

    p.add_argument(
        "--bundle",
        action="append",
        default=None,
        help=f"bundle directory or shipped model name; repeat for several (a model picker shows). The first "
        f"is the default model; none = ${BUNDLE_ENV} if set, else the shipped digits model. The shipped "
        "models are always offered too",
    )
    p.add_argument(
        "--server",
        default=None,
        metavar="URL",
        help="a `latent-ddpm serve` deployment (e.g. http://127.0.0.1:8000) whose models this page fronts "
        "over HTTP, instead of running models here (Generate only)",
    )
    add_backend_arguments(p)
    p.add_argument(
        "--host", default="127.0.0.1", help="address to listen on; 0.0.0.0 serves other machines (Docker)"
    )
    p.add_argument("--port", type=int, default=7860, help="port to listen on")
    p.add_argument(
        "--share", action="store_true", help="also open a public *.gradio.live link (needs the internet)"
    )
    p.add_argument(
        "--concurrency",
        type=int,
        default=None,
        help="requests let in from the web queue at once, across all tabs; the sampling engine batches them "
        "into one U-Net call per step within its row budget. None = the row budget (64)",
    )
    p.add_argument(
        "--max-queue",
        type=int,
        default=64,
        help="requests that may wait beyond --concurrency; more are refused as 'queue full'",
    )


def bundle_sources(args: argparse.Namespace) -> list[str]:
    """The models to serve, the default first: every --bundle (else $LATENT_DDPM_BUNDLE, else the default
    shipped model), then each shipped model not among them."""
    from latent_ddpm.runtime.shipped import DEFAULT_MODEL, resolve_bundle, shipped_models

    env = os.environ.get(BUNDLE_ENV, "").strip()
    given = list(args.bundle or ([env] if env else [DEFAULT_MODEL]))
    served = {resolve_bundle(value).resolve() for value in given}
    return given + [name for name, path in shipped_models().items() if path.resolve() not in served]


def check_listen_address(host: str, port: int) -> None:
    """Bind (host, port) once, as the server will, so that a taken port or a foreign host is named up front.

    Gradio reports both as "Cannot find empty port in range"; this says which, before the model is loaded.
    """
    from latent_ddpm.errors import CLIError

    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except (socket.gaierror, UnicodeError) as exc:
        raise CLIError(
            f"--host {host!r} is not an IP address or a host name this machine can resolve ({exc})"
        ) from None
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server does
        try:
            probe.bind(address)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise CLIError(
                    f"--port {port} is already in use on {host} (another server?); choose another port"
                ) from None
            if exc.errno == errno.EADDRNOTAVAIL:
                raise CLIError(
                    f"--host {host} is not an address of this machine; use 127.0.0.1 (this machine only) or "
                    "0.0.0.0 (every interface)"
                ) from None
            raise CLIError(f"cannot listen on {host}:{port}: {exc.strerror}") from None


def _stop_on_sigterm() -> None:
    """SIGTERM (docker stop, systemd, kill) ends the server like Ctrl-C: Gradio closes it, Python exits
    normally and the demo's scratch folder is deleted (by default SIGTERM kills without any clean-up)."""

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)


def run(args: argparse.Namespace) -> int:
    from latent_ddpm.errors import CLIError
    from latent_ddpm.runtime.limits import check_threads

    check_threads(args.threads, "--threads")
    if not 1 <= args.port <= 65535:
        raise CLIError(f"--port must be in 1..65535, got {args.port}")
    if (args.concurrency is not None and args.concurrency < 1) or args.max_queue < 1:
        raise CLIError(
            f"--concurrency and --max-queue must be >= 1, got {args.concurrency} and {args.max_queue}"
        )
    if args.server is not None and args.bundle:
        raise CLIError("--server and --bundle exclude each other: the server's models are the ones served")
    if args.server is not None and not args.server.startswith(("http://", "https://")):
        raise CLIError(f"--server must be an http:// or https:// URL, got {args.server!r}")
    check_listen_address(args.host, args.port)
    try:
        from latent_ddpm.demo.app import build_app, launch
    except ImportError as exc:
        raise CLIError(f"the demo needs Gradio ({exc}): pip install 'latent-ddpm[demo]'") from None
    _stop_on_sigterm()

    providers = [p.strip() for p in args.providers.split(",")] if args.providers else None
    app = build_app(
        None if args.server is not None else bundle_sources(args),
        server=args.server,
        backend=args.backend,
        precision=args.precision,
        providers=providers,
        threads=args.threads,
        concurrency_limit=args.concurrency,
        max_queue=args.max_queue,
    )
    # Gradio's own start-up lines end with "set `share=True` in `launch()`", advice for Python callers;
    # a command-line user is told about --share instead.
    try:
        launch(app, host=args.host, port=args.port, share=args.share, quiet=True, prevent_thread_lock=True)
        print(f"Demo running at {app.local_url} (Ctrl-C stops it)", flush=True)
        if app.share_url:
            print(f"Public link: {app.share_url}", flush=True)
        elif not args.share:
            print("For a public *.gradio.live link (needs the internet), start it with --share", flush=True)
        app.block_thread()  # until Ctrl-C or SIGTERM, which close the server
    finally:
        app.close()  # and the sampling engines: requests still running are cancelled
    return 0
