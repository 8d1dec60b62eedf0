"""The ``adds`` command line (also ``python -m adds``).

Each sub-command lives in its own module under :mod:`adds.commands` and registers itself; ``adds --help`` lists
them and ``adds COMMAND --help`` explains each.

Start time: building the parser imports every ``adds.commands`` module, so those modules import nothing heavy at
module level (no torch, open_clip, numpy, PIL): heavy imports go inside the command's ``run``, after its argument
checks. ``tests/test_cli_start.py`` checks that ``adds --help`` and argument errors do not import torch;
``benchmarks/start_time.py`` measures the start time. Ctrl+C anywhere (also while torch is being imported) ends
with exit code 130 and one line, no traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import pkgutil
import sys
from collections.abc import Sequence

import adds.commands
from adds import __version__

__all__ = ["EXIT_INTERRUPTED", "main", "build_parser"]

#: Exit code after Ctrl+C (128 + SIGINT, the shell's convention).
EXIT_INTERRUPTED = 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="adds",
        description="Open-vocabulary multi-label image classification with ADDS (Aligned Dual moDality ClaSsifier).",
    )
    parser.add_argument("--version", action="version", version=f"adds {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    subcommands = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_info in sorted(pkgutil.iter_modules(adds.commands.__path__), key=lambda info: info.name):
        if module_info.name.startswith("_"):  # shared helpers, not sub-commands
            continue
        module = importlib.import_module(f"adds.commands.{module_info.name}")
        module.register(subcommands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
    except KeyboardInterrupt:
        print("adds: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    # Our own messages at INFO (DEBUG with -v); other libraries' (open_clip logs on the root logger) at WARNING.
    root_level = logging.DEBUG if args.verbose else logging.WARNING
    logging.basicConfig(level=root_level, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("adds").setLevel(logging.DEBUG if args.verbose else logging.INFO)
    if not getattr(args, "handler", None):
        parser.print_help(sys.stderr)
        return 2
    try:
        return args.handler(args)
    except KeyboardInterrupt:  # commands that handle Ctrl+C themselves (adds tag) never get here
        print(f"adds {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
