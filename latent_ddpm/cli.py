"""The `latent-ddpm` command: one subcommand per stage of the pipeline.

Each subcommand lives in its own module that exposes ``HELP``, ``add_arguments(parser)`` and
``run(args) -> int``. Those modules import their heavy dependencies (torch, gradio, ...) inside
``run`` only, so ``latent-ddpm --help`` stays fast and works on a runtime-only install.
"""

from __future__ import annotations

import argparse
import importlib
import logging
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


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """The one help layout of every command: descriptions kept as written (examples stay on their own
    lines), and argparse's "(default: X)" added only where it tells something, i.e. where the flag's own help
    does not already name its default and the default is a value (not None, nor an on/off switch's)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (
            "default" in text.lower()
            or default is None
            or isinstance(default, bool)
            or default == []
            or default is argparse.SUPPRESS
        ):
            return text
        return text + " (default: %(default)s)"


def common_options() -> argparse.ArgumentParser:
    """The flags every command takes, defined once: how much it logs, and whether it draws progress bars."""
    common = argparse.ArgumentParser(add_help=False)
    loudness = common.add_mutually_exclusive_group()
    loudness.add_argument(
        "-v", "--verbose", action="store_true", help="log debugging detail (Python logging level DEBUG)"
    )
    loudness.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        help="no progress bars, log only warnings and errors (logging level WARNING); results are still printed",
    )
    return common


class LogFormatter(logging.Formatter):
    """Information as plain lines, the rest marked with its level (and, when debugging, its logger)."""

    def format(self, record: logging.LogRecord) -> str:
        message = super().format(record)
        if record.levelno == logging.INFO:
            return message
        if record.levelno == logging.DEBUG:
            return f"debug {record.name}: {message}"
        return f"{record.levelname.lower()}: {message}"


def configure_logging(verbose: bool, quiet: bool) -> None:
    """latent_ddpm's loggers at INFO (DEBUG with --verbose, WARNING with --quiet); other libraries' at WARNING
    (INFO with --verbose), all on stderr."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(LogFormatter())
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, handlers=[handler])
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    logging.getLogger("latent_ddpm").setLevel(level)


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
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    common = common_options()
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(module_name)
        p = sub.add_parser(
            name,
            help=module.HELP.splitlines()[0],
            description=module.HELP,
            formatter_class=HelpFormatter,
            parents=[common],
        )
        module.add_arguments(p)
        p.set_defaults(_module=module)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:  # a bare `latent-ddpm`: what it can do, not only what is missing
        parser.print_help(sys.stderr)
        return 2
    configure_logging(args.verbose, args.quiet)
    options = {k: v for k, v in vars(args).items() if k != "_module"}
    logging.getLogger("latent_ddpm").debug("latent-ddpm %s with %s", args.command, options)
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
