"""``adds train``: train an ADDS head from a config file (one command per paper table, see ``configs/``)."""

from __future__ import annotations

import argparse
import logging
import sys

logger = logging.getLogger(__name__)

_EPILOG = """\
examples:
  adds train --config configs/coco_vitl14_224.yaml
  adds train --config configs/coco_vitl14_224.yaml --set data.train.root=/data/coco --set data.test.root=/data/coco
  adds train --config configs/nuswide_zsl_vitb32_224.yaml --set optim.lr=1e-4 --set epochs=20 --run-dir runs/try
  adds train --resume --run-dir runs/coco_vitl14_224            # continue a killed run exactly (even mid-epoch)
  adds train --config configs/coco_vitl14-336_640.yaml --set checkpoint_every=500 --verify-data
  adds train --config configs/coco_vitl14_224.yaml --set data.views=4     # 4 cached views per image (augmented)
  adds train --config X.yaml --set data.cache=null --set data.augment_online=true   # on-line augmentation
  torchrun --nproc_per_node=8 -m adds train --config configs/coco_vitl14-336_640.yaml   # 8 GPUs, same command

Values after --set are YAML (null, true, [0, 1, 2], 3e-4). Ctrl+C (SIGINT) or SIGTERM stops after the current step,
writes a checkpoint and exits with 130 / 143; --resume continues from that step. See docs/training.md.
"""


def register(subcommands: argparse._SubParsersAction) -> None:
    parser = subcommands.add_parser(
        "train",
        help="train an ADDS head from a YAML/JSON config (paper configs in configs/)",
        description="Train the DM-decoder head of ADDS on frozen CLIP towers with the paper's settings (Adam, "
        "lr 3e-4 up to 336 px inputs and 1e-4 above, weight decay 1e-4, 40 epochs, batch 56, ASL). Image "
        "features come from the frozen-feature cache (extracted first if missing). Every epoch is "
        "checkpointed; the model is selected on held-out validation data, then tested on the test set. Works "
        "unchanged under torchrun for multi-GPU / multi-node training.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", metavar="FILE", help="YAML or JSON run config (default with --resume: the "
                        "run directory's config.json)")
    parser.add_argument("--set", dest="overrides", metavar="KEY=VALUE", action="append", default=[],
                        help="override a config value, e.g. --set optim.lr=1e-4 --set data.cache=null (repeatable)")
    parser.add_argument("--run-dir", metavar="DIR", help="output directory (default: runs/<name>)")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in the run directory from its last epoch checkpoint")
    parser.add_argument("--stop-after-epochs", type=int, metavar="N",
                        help="leave after N epochs of this invocation (for time-limited jobs; --resume later)")
    parser.add_argument("--stop-after-steps", type=int, metavar="N",
                        help="leave after N batches of this invocation, with a mid-epoch checkpoint (--resume later)")
    parser.add_argument("--verify-data", action="store_true",
                        help="check the feature caches (sizes, checksums, finite values) before training; the same "
                        "as --set data.verify=true")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from adds.train.checkpoint import TrainingStateError
    from adds.train.config import (
        ConfigError,
        apply_overrides,
        config_dict,
        config_from_mapping,
        load_config,
        read_config_file,
    )
    from adds.train.interrupt import exit_code
    from adds.train.run import run_training, with_run_dir

    for flag, value in (("--stop-after-epochs", args.stop_after_epochs), ("--stop-after-steps", args.stop_after_steps)):
        if value is not None and value < 1:
            print(f"adds train: {flag} must be >= 1, got {value}", file=sys.stderr)
            return 2
    if args.verify_data:
        args.overrides = [*args.overrides, "data.verify=true"]
    try:
        if args.config is not None:
            config = load_config(args.config, args.overrides)
        elif args.resume and args.run_dir:
            saved = read_config_file(Path(args.run_dir) / "config.json")
            saved.pop("resolved", None)
            config = config_from_mapping(apply_overrides(saved, args.overrides), where=f" ({args.run_dir})")
        else:
            print("adds train: give --config FILE (or --resume --run-dir DIR to continue a run)", file=sys.stderr)
            return 2
        config = with_run_dir(config, args.run_dir)
    except ConfigError as error:
        print(f"adds train: {error}", file=sys.stderr)
        return 2
    if args.print_config:
        import json

        print(json.dumps(config_dict(config), indent=2))
        return 0
    from adds.features import FeatureCacheError, one_line
    from adds.towers import WeightsFileError, WeightsUnavailableError

    try:
        result = run_training(config, resume=args.resume, stop_after=args.stop_after_epochs,
                              stop_after_steps=args.stop_after_steps)
    except (FeatureCacheError, WeightsFileError, WeightsUnavailableError) as error:
        # the user's files: a corrupt / truncated / foreign cache, unreadable or wrong-architecture weights, or
        # weights that cannot be downloaded here -- bad input, nothing could run (exit 2)
        logger.debug("training failed", exc_info=True)
        print(f"adds train: {one_line(error)}", file=sys.stderr)
        return 2
    except (TrainingStateError, ValueError, FileNotFoundError) as error:
        logger.debug("training failed", exc_info=True)
        print(f"adds train: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # Ctrl+C outside the training steps (loading, extracting) or a second Ctrl+C
        print("adds train: interrupted (SIGINT); --resume continues from the last checkpoint", file=sys.stderr)
        return 130
    if result.interrupted is not None:
        import signal

        name = signal.Signals(result.interrupted).name
        print(f"adds train: stopped by {name} in epoch {result.epochs_done + 1} after batch {result.batch_in_epoch}; "
              f"checkpoint saved in {result.run_dir / 'checkpoint'} (continue with --resume --run-dir "
              f"{result.run_dir})", file=sys.stderr)
        return exit_code(result.interrupted)
    best = result.best or {}
    state = "finished" if result.finished else f"stopped after epoch {result.epochs_done} (resume with --resume)"
    print(f"{state}: run directory {result.run_dir}; best checkpoint epoch {best.get('epoch', '-')} "
          f"({best.get('source', '-')} weights)", file=sys.stderr)
    return 0
