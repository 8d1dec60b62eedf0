"""``adds toyworld``: the paper's experiments in miniature on the CPU-sized toy world (see :mod:`adds.toyworld`)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path


def register(subcommands: argparse._SubParsersAction) -> None:
    parser = subcommands.add_parser(
        "toyworld",
        help="reproduce the paper's tables in miniature (tiny CLIP + synthetic scenes, CPU)",
        description="Train ADDS heads on a frozen tiny CLIP over synthetic scenes of coloured shapes and print the "
        "paper's tables in miniature: conventional (Table 1), zero-shot with the training-free CLIP baseline "
        "(Table 2), alignment (Tables 6/9), DM- vs ML-Decoder (Table 5), Pyramid-Forwarding (Table 7), "
        "single-to-multi (Tables 3/4) and more training classes (Table 8). Every number is mean ± std over seeds. "
        "The full run takes about 15 minutes on 2 CPU cores; --quick about 2.",
    )
    parser.add_argument("--quick", action="store_true", help="smaller data and decoder (the README's main job)")
    parser.add_argument("--seeds", type=int, default=3, help="number of seeds (default: %(default)s, minimum 1)")
    parser.add_argument(
        "--only", nargs="+", metavar="NAME",
        choices=["conventional", "zero_shot", "alignment", "decoder", "pyramid", "single", "classes"],
        help="run only these experiments",
    )
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1),
                        help="seeds run in this many processes side by side (default: %(default)s)")
    parser.add_argument("--json", type=Path, help="also write the raw per-seed numbers to this JSON file")
    parser.add_argument("--markdown", type=Path, help="also write the tables to this Markdown file")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from adds.toyworld.experiments import ToyWorldConfig, format_tables, run_experiments, write_json

    if args.seeds < 1:
        raise SystemExit(f"adds toyworld: --seeds must be >= 1, got {args.seeds}")
    config = ToyWorldConfig.quick() if args.quick else ToyWorldConfig()
    config = replace(config, seeds=tuple(range(args.seeds)))
    if args.only:
        config = replace(config, experiments=tuple(args.only))
    print(f"toy world: {'quick' if args.quick else 'full'} run, seeds {list(config.seeds)}, "
          f"{config.train_scenes} training / {config.test_scenes} test scenes, "
          f"experiments: {', '.join(config.experiments)}",
          flush=True)
    result = run_experiments(config, echo=lambda line: print(line, flush=True), workers=args.workers)
    tables = format_tables(result)
    print(tables)
    print(f"({result['seconds']:.0f}s; command: adds toyworld{' --quick' if args.quick else ''} --seeds {args.seeds})")
    if args.json:
        write_json(result, str(args.json))
    if args.markdown:
        args.markdown.write_text(tables, encoding="utf-8")
    return 0
