"""The `latent-ddpm` command: one subcommand per stage of the pipeline.

Each subcommand lives in its own module that exposes ``HELP``, ``add_arguments(parser)`` and
``run(args) -> int``. Those modules import their heavy dependencies (torch, gradio, ...) inside
``run`` only, so ``latent-ddpm --help`` stays fast and works on a runtime-only install.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from latent_ddpm.errors import LatentDDPMError

# Ordered as the pipeline: train -> export -> runtime -> demo, then the tools around it.
COMMANDS: dict[str, str] = {
    "train": "latent_ddpm.train.cli",
    "export": "latent_ddpm.export.cli",
    "build-engines": "latent_ddpm.export.build_engines_cli",
    "validate-precision": "latent_ddpm.export.validate_precision_cli",
    "sample": "latent_ddpm.runtime.sample_cli",
    "eval": "latent_ddpm.evaluate.cli",
    "demo": "latent_ddpm.demo.cli",
    "serve": "latent_ddpm.serve.cli",
    "bench": "latent_ddpm.bench.cli",
    "quantize": "latent_ddpm.export.quantize_cli",
}


def build_parser() -> argparse.ArgumentParser:
    from latent_ddpm import __version__

    parser = argparse.ArgumentParser(
        prog="latent-ddpm",
        description="Latent DDPM from training to deployment: train, export to a validated ONNX bundle, "
        "sample with the torch-free runtime, serve the demo.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Run `latent-ddpm COMMAND --help` for the flags of each command.",
    )
    parser.add_argument("--version", action="version", version=f"latent-ddpm {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(module_name)
        p = sub.add_parser(
            name,
            help=module.HELP.splitlines()[0],
            description=module.HELP,
            formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        )
        module.add_arguments(p)
        p.set_defaults(_module=module)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args._module.run(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # user-facing errors carry their own message; anything else is a bug
        if isinstance(exc, LatentDDPMError):
            print(f"latent-ddpm {args.command}: error: {exc}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
