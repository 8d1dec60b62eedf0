"""``adds demo``: a short end-to-end run on tiny random towers (see :mod:`adds.demo`)."""

from __future__ import annotations

import argparse
import sys


def register(subcommands: argparse._SubParsersAction) -> None:
    parser = subcommands.add_parser(
        "demo",
        help="short end-to-end run on tiny random towers (no downloads)",
        description="Build ADDS on tiny random open_clip towers, train its head with ASL on generated images of "
        "coloured squares, report held-out mAP against the untrained head, tag one image and round-trip a "
        "checkpoint. Runs in well under a minute on 2 CPU cores.",
    )
    parser.add_argument("--steps", type=int, default=300, help="optimiser steps (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    if args.steps < 1:
        print(f"adds demo: error: --steps must be >= 1, got {args.steps}", file=sys.stderr)
        return 2
    from adds.demo import DemoConfig, run_demo

    result = run_demo(DemoConfig(steps=args.steps, seed=args.seed))
    return 0 if result["checkpoint_identical"] else 1
