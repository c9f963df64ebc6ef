"""The `sketchlab` command.

Each area of the package registers its own subcommands through a `register_cli(subparsers)`
function; this file only collects them, gives every command `--quiet` (no progress display, see
`sketchlab.progress`), and turns `SketchlabError`s into one clear line on stderr (exit status 2)
instead of a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
import threading

from sketchlab import __version__, progress
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
    _add_quiet(parser)
    return parser


QUIET_HELP = ("no progress display (on a terminal a bar, in a log a line every "
              "$SKETCHLAB_PROGRESS_EVERY seconds, default 30)")


def _has_subcommands(parser: argparse.ArgumentParser) -> bool:
    return any(isinstance(a, argparse._SubParsersAction) for a in parser._actions)


def _add_quiet(parser: argparse.ArgumentParser) -> None:
    """Give every command `--quiet` (the commands that define their own keep theirs). Only the
    commands that run something take it: a group's own flag would be overwritten by its
    subcommand's default."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in dict.fromkeys(action.choices.values()):
                if _has_subcommands(child):
                    _add_quiet(child)
                elif "--quiet" not in child._option_string_actions:
                    child.add_argument("--quiet", action="store_true", help=QUIET_HELP)


def _stop_on_sigterm(signum, frame):
    # `kill`, a scheduler's time limit or a container stop: behave as Ctrl-C does (the trainer
    # writes its checkpoint and the command exits with a message, not a silent death).
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    if "torch" not in sys.modules:
        # OpenMP threads that wait by spinning (libgomp's default) starve each other on a
        # machine whose cores are busy: `sketchlab sample` of 64 sketches took 14.2 s there
        # against 9.0 s with passive waiting, and the same 2.5 s either way on idle cores. Read
        # once, when torch loads, so only a fresh `sketchlab` process takes it; the user's own
        # setting wins.
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 1
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _stop_on_sigterm) if in_main_thread else None
    try:
        with progress.quiet(getattr(args, "quiet", False)):
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
