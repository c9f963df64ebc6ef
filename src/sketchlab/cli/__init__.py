"""The `sketchlab` command.

Each area of the package registers its own subcommands through a `register_cli(subparsers)`
function; this file only collects them, and turns `SketchlabError`s into one clear line on stderr
(exit status 2) instead of a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import signal
import sys
import threading

from sketchlab import __version__
from sketchlab.errors import SketchlabError

# Modules that contribute subcommands, in the order `--help` lists them.
CLI_MODULES: list[str] = [
    "sketchlab.cli.data",
    "sketchlab.cli.render",
    "sketchlab.cli.train",
    "sketchlab.cli.evaluate",
    "sketchlab.cli.latent",
    "sketchlab.cli.zoo",
    "sketchlab.cli.demo",
    "sketchlab.cli.serve",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sketchlab",
        description="Train, sample, heal, interpolate and evaluate vector-sketch models.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Run `sketchlab COMMAND --help` for the options and examples of each command.",
    )
    parser.add_argument("--version", action="version", version=f"sketchlab {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in CLI_MODULES:
        importlib.import_module(name).register_cli(sub)
    return parser


def _stop_on_sigterm(signum, frame):
    # `kill`, a scheduler's time limit or a container stop: behave as Ctrl-C does (the trainer
    # writes its checkpoint and the command exits with a message, not a silent death).
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 1
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _stop_on_sigterm) if in_main_thread else None
    try:
        return int(args.func(args) or 0)
    except SketchlabError as e:
        print(f"sketchlab {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"sketchlab {args.command}: interrupted", file=sys.stderr)
        return 130
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
