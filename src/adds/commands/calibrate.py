"""``adds calibrate``: fit per-label thresholds on labelled images and write them next to the checkpoint."""

from __future__ import annotations

import argparse
import logging
import sys
import textwrap
from pathlib import Path

from adds.commands._options import UsageError, add_baseline_pooling

logger = logging.getLogger(__name__)

EXIT_INTERRUPTED = 130
_DEFAULT_SPLIT = {"coco": "val", "nuswide": "test", "imagenet": "val"}

_EPILOG = """\
examples:
  # thresholds for a checkpoint from a labelled manifest (image,labels CSV or JSONL)
  adds calibrate runs/mine/best --data val.csv
  # MS-COCO val2014; labels with fewer than 5 positives get the pooled threshold
  adds calibrate runs/coco/best --data /data/coco --data-kind coco --split val --min-positives 5
  # and thresholds for new words without labels, from their scores on unlabelled photos
  adds calibrate runs/mine/best --data val.csv --new-labels words.txt --unlabelled-images photos/
  # the training-free CLIP baseline: write the files into a folder, use them with --threshold-file
  adds calibrate --zero-shot-baseline --model ViT-B-32-quickgelu --pretrained openai --data val.csv \\
      --output clip-thresholds/
  adds tag photos/ --labels words.txt --threshold-file clip-thresholds/thresholds.tsv
"""


def register(subcommands: argparse._SubParsersAction) -> None:
    parser = subcommands.add_parser(
        "calibrate",
        help="fit per-label thresholds (max F1) on labelled images; writes thresholds.tsv for adds tag",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=textwrap.dedent("""\
            Score labelled images exactly as `adds tag` does, fit the F1-optimal threshold of every label
            (labels with fewer than --min-positives positives get one pooled threshold), and write
            CHECKPOINT/thresholds.tsv (read by `adds tag --checkpoint` and Tagger.from_checkpoint by default)
            and CHECKPOINT/calibration.json (method, per-label F1 before and after, counts, the split).
            Words without labels (--new-labels) get thresholds from a label-free rule fitted on the labelled
            labels and their scores on --unlabelled-images. See docs/calibration.md."""),
        epilog=_EPILOG,
    )
    parser.add_argument("checkpoint_path", nargs="?", metavar="CHECKPOINT",
                        help="an ADDS checkpoint directory (e.g. runs/NAME/best); the files are written into it")
    parser.add_argument("--checkpoint", dest="checkpoint_option", metavar="DIR", help="the same as CHECKPOINT")
    data = parser.add_argument_group("labelled images")
    data.add_argument("--data", metavar="PATH", help="a .csv/.jsonl manifest, or a dataset root with --data-kind")
    data.add_argument("--data-kind", choices=("manifest", "coco", "nuswide", "imagenet"), default="manifest",
                      help="dataset reader (default: %(default)s)")
    data.add_argument("--split", help="coco/imagenet: val (default), nuswide: test (default); manifests: ignored")
    data.add_argument("--labels", metavar="FILE|VARIANT",
                      help="manifest vocabulary file (default: the checkpoint's labels.txt when it has one); "
                      "nuswide seen925|unseen81|all1006; imagenet 1k or a class list")
    data.add_argument("--limit", type=int, help="first N images only (debugging)")
    fit = parser.add_argument_group("fit")
    fit.add_argument("--min-positives", type=int, default=3,
                     help="labels with fewer positives get the pooled threshold (default: %(default)s)")
    new = parser.add_argument_group("words without labels")
    new.add_argument("--new-labels", metavar="FILE|WORDS", help="a label file or comma-separated words")
    new.add_argument("--unlabelled-images", nargs="+", metavar="PATH",
                     help="images, folders or globs the new words' score distributions are taken from")
    new.add_argument("--rule", choices=("zscore", "quantile", "global"), default="zscore",
                     help="label-free rule fitted on the labelled labels (default: %(default)s)")
    baseline = parser.add_argument_group("training-free CLIP baseline (instead of a checkpoint)")
    baseline.add_argument("--zero-shot-baseline", action="store_true", help="calibrate the CLIP baseline tagger")
    baseline.add_argument("--model", help="open_clip model of the baseline, e.g. ViT-B-32-quickgelu")
    baseline.add_argument("--pretrained", help="open_clip tag or local weights file of the baseline")
    baseline.add_argument("--templates", default="paper", help="baseline prompt templates: paper | clip80")
    add_baseline_pooling(baseline)
    baseline.add_argument("--output", metavar="DIR", help="folder for thresholds.tsv + calibration.json "
                          "(required with --zero-shot-baseline; default: the checkpoint)")
    run = parser.add_argument_group("run")
    run.add_argument("--tower-weights", metavar="TAG|FILE",
                     help="where the checkpoint's recorded tower weights are on this machine")
    run.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="default: %(default)s")
    run.add_argument("--batch-size", type=int, default=32, help="images per forward pass (default: %(default)s)")
    run.add_argument("--workers", type=int, default=2, help="image-loading workers (default: %(default)s)")
    run.add_argument("--dry-run", action="store_true", help="fit and report, write nothing")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(handler=run_calibrate)


def _fail(message: str) -> int:
    print(f"adds calibrate: error: {message}", file=sys.stderr)
    return 2


def run_calibrate(args: argparse.Namespace) -> int:
    try:
        return _run(args)
    except UsageError as error:
        return _fail(str(error))
    except KeyboardInterrupt:
        print("adds calibrate: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def _check_arguments(args: argparse.Namespace) -> str | None:
    """The checkpoint directory (or ``None`` for the baseline); raises :class:`UsageError` on bad combinations."""
    if args.checkpoint_path and args.checkpoint_option and args.checkpoint_path != args.checkpoint_option:
        raise UsageError("give the checkpoint once (CHECKPOINT or --checkpoint)")
    checkpoint = args.checkpoint_path or args.checkpoint_option
    if bool(checkpoint) == bool(args.zero_shot_baseline):
        raise UsageError("give a CHECKPOINT directory or --zero-shot-baseline (one of them)")
    if checkpoint and not Path(checkpoint).is_dir():
        raise UsageError(f"checkpoint directory not found: {checkpoint}")
    if args.zero_shot_baseline and not (args.model and args.pretrained and args.output):
        raise UsageError("--zero-shot-baseline needs --model, --pretrained and --output DIR")
    if not args.data:
        raise UsageError("--data is required (a labelled .csv/.jsonl manifest, or a dataset root with --data-kind)")
    if args.min_positives < 1:
        raise UsageError(f"--min-positives must be >= 1, got {args.min_positives}")
    if args.batch_size < 1 or args.workers < 0:
        raise UsageError("--batch-size must be >= 1 and --workers >= 0")
    if bool(args.new_labels) != bool(args.unlabelled_images):
        raise UsageError("--new-labels and --unlabelled-images go together (the new words' scores come from them)")
    return checkpoint


def _load_tagger(args: argparse.Namespace, checkpoint: str | None):
    """The tagger that ``adds tag`` would build (same model, input plan and scores), without the checkpoint's
    current thresholds: a broken ``thresholds.tsv`` is what calibration replaces."""
    import torch

    from adds.model import ADDS, CheckpointError
    from adds.tagger import CLIPBaselineConfig, Tagger, TaggerConfig
    from adds.tagger.plan import trained_input_size
    from adds.towers import WeightsUnavailableError

    if args.device == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA device is available")
    device = "cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available()) else "cpu"
    config = TaggerConfig(batch_size=args.batch_size)
    try:
        if checkpoint:
            model = ADDS.from_pretrained(checkpoint, tower_weights=args.tower_weights, map_location=device)
            return Tagger(model, config, labels=["calibration"], device=device,  # labels: given per call
                          trained_input_size=trained_input_size(checkpoint))
        pretrained = None if args.pretrained.lower() == "none" else args.pretrained
        return Tagger.clip_baseline(args.model, pretrained, device=device, config=config,
                                    baseline=CLIPBaselineConfig(templates=args.templates,
                                                                pooling=args.baseline_pooling),
                                    labels=["calibration"])
    except (WeightsUnavailableError, CheckpointError, ValueError, OSError) as error:
        raise UsageError(str(error)) from error


def _labelled_dataset(args: argparse.Namespace, checkpoint: str | None):
    """The labelled split, read before the model loads (its mistakes are found at once); the resize to the
    tagger's input size is set once the model is loaded."""
    from adds.data.registry import DatasetConfig, load_dataset

    labels = args.labels
    if labels is None and args.data_kind == "manifest" and checkpoint and (Path(checkpoint) / "labels.txt").is_file():
        labels = str(Path(checkpoint) / "labels.txt")  # the vocabulary `adds tag --checkpoint` scores by default
    split = args.split or _DEFAULT_SPLIT.get(args.data_kind, "train")
    try:
        config = DatasetConfig(kind=args.data_kind, root=args.data, split=split, labels=labels, limit=args.limit)
        return load_dataset(config)
    except (ValueError, FileNotFoundError, OSError) as error:
        raise UsageError(str(error)) from error


def _unlabelled(args: argparse.Namespace, new_labels: list[str]):
    from adds.calibration.scoring import unlabelled_dataset
    from adds.tagger.files import find_images

    files, unmatched = find_images(args.unlabelled_images)
    if unmatched:
        raise UsageError(f"--unlabelled-images: no image found at {', '.join(unmatched[:5])}")
    if len(files) < 20:
        logger.warning("only %d unlabelled image(s): the new words' score distributions are rough", len(files))
    return unlabelled_dataset(files, new_labels, input_size=1)  # the real size is set once the model is loaded


def _run(args: argparse.Namespace) -> int:
    checkpoint = _check_arguments(args)
    new_labels: list[str] = []
    if args.new_labels:
        from adds.tagger.vocabulary import labels_from_values

        try:
            new_labels = labels_from_values([args.new_labels])
        except ValueError as error:
            raise UsageError(f"--new-labels: {error}") from error
    output = Path(args.output) if args.output else Path(checkpoint)
    if args.output and not args.dry_run:
        try:
            output.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise UsageError(f"cannot create --output {output}: {error.strerror or error}") from None
    dataset = _labelled_dataset(args, checkpoint)
    unlabelled = _unlabelled(args, new_labels) if new_labels else None
    tagger = _load_tagger(args, checkpoint)
    input_size = int(tagger.plan.input_size)

    from adds.calibration import FitConfig, calibrate_checkpoint, fit_thresholds
    from adds.calibration.scoring import score_with_tagger
    from adds.data.base import SquashResize

    for images in (dataset, unlabelled):
        if images is not None:
            images.transform = SquashResize(input_size)  # the tagger's input plan

    progress = not args.no_progress
    try:
        labelled = score_with_tagger(tagger, dataset, dataset.vocabulary, num_workers=args.workers,
                                     progress=progress, description=f"score {dataset.name}")
        new_scores = None
        if unlabelled is not None:
            new_scores = score_with_tagger(tagger, unlabelled, new_labels, num_workers=args.workers,
                                           progress=progress, description="score unlabelled images").scores
    except ValueError as error:
        raise UsageError(str(error)) from error
    config = FitConfig(min_positives=args.min_positives)
    source = f"{args.data_kind} {args.data}" + (f" (split {args.split})" if args.split else "")
    scorer = f"ADDS checkpoint {checkpoint}" if checkpoint else f"CLIP baseline {args.model} ({args.pretrained})"
    extra = {"scorer": scorer, "input_size": input_size, "failed_images": len(labelled.failed),
             "tagger": {key: value for key, value in tagger.describe().items()
                        if key in ("scorer", "model", "pretrained", "input_size", "levels", "crops")}}
    try:
        if args.dry_run:
            fit = fit_thresholds(labelled.scores, labelled.targets, dataset.vocabulary, labelled.mask, config)
            _print_summary(fit, dataset.name, int(labelled.scores.shape[0]), None, None, None)
            return 0
        report = calibrate_checkpoint(output, labelled.scores, labelled.targets, dataset.vocabulary, labelled.mask,
                                      config=config, source=source, new_label_names=new_labels or None,
                                      new_label_scores=new_scores, rule=args.rule,
                                      unlabelled_source=" ".join(args.unlabelled_images or []), extra=extra)
    except (ValueError, OSError) as error:
        raise UsageError(str(error)) from error
    _print_summary(report.fit, dataset.name, int(labelled.scores.shape[0]), report, new_scores, output)
    return 0


def _print_summary(fit, name: str, images: int, report, new_scores, output: Path | None) -> None:
    summary = fit.summary()
    print(f"calibrated {summary['labels']} label(s) on {name} ({images} images): {summary['per_label']} with their "
          f"own F1-optimal threshold, {summary['pooled_fallback']} with the pooled threshold "
          f"{fit.pooled_threshold:.4g} (fewer than {fit.config.min_positives} positives)")
    print(f"mean per-label F1 on this split: {summary['macro_f1_before']:.3f} at "
          f"{fit.config.reference_threshold:g} -> {summary['macro_f1_after']:.3f} calibrated (in-sample)")
    if report is not None and report.rule is not None:
        rule = report.rule
        print(f"label-free rule {rule.kind} (parameter {rule.parameter:.4g}, fitted on {rule.fitted_labels} labelled "
              f"labels): thresholds for {len(report.new_labels)} new word(s) from {int(new_scores.shape[0])} "
              "unlabelled images")
    if report is not None:
        if report.skipped:
            print(f"not written (cannot be a label<TAB>threshold line): {', '.join(map(repr, report.skipped[:5]))}")
        print(f"wrote {report.thresholds_path} and {report.json_path}")
        if output is not None and not (output / "config.json").is_file():
            print(f"use them with: adds tag ... --threshold-file {report.thresholds_path}")
