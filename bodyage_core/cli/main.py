"""Entry point of the ``bodyage`` console script.

Each sub-command lives in its own module ``bodyage_core.cli.cmd_<name>`` exposing
``register(subparsers)``, which adds its parser and sets ``func`` to a function taking the parsed
``args`` and returning an exit code. A :class:`~bodyage_core.errors.BodyageError` ends in one line
on stderr and exit code 2, never a traceback; Ctrl+C ends with exit code 130.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from bodyage_core import __version__
from bodyage_core.errors import BodyageError, Cancelled

# Order is the order shown by ``bodyage --help``.
COMMANDS = (
    "demo", "synth", "import", "info", "train", "predict", "explain", "register", "atlas",
    "compare", "report", "gui",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bodyage",
        description="Biological age from whole-body MRI: train, predict, explain, map, view.",
    )
    parser.add_argument("--version", action="version", version=f"bodyage {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        module = importlib.import_module(f"bodyage_core.cli.cmd_{name}")
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 1
    try:
        return int(args.func(args) or 0)
    except BodyageError as err:
        print(f"bodyage {args.command}: error: {err}", file=sys.stderr)
        return 2
    except Cancelled:
        print(f"bodyage {args.command}: cancelled", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print(f"\nbodyage {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
