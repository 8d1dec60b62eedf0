"""``adds tag``: tag image files, folders and globs with any words (see :mod:`adds.tagger` and docs/tagging.md).

Exit codes: 0 every image was tagged; 1 at least one path failed (a bad image, a missing path, an empty glob) --
the others are still tagged and printed; 2 nothing was tagged because of the arguments or the model (bad option,
unreadable label or threshold file, unknown model, weights not available offline, bad checkpoint).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import textwrap
from collections.abc import Sequence
from typing import Any, TextIO

logger = logging.getLogger(__name__)

FORMATS = ("table", "json", "jsonl", "csv")
DEFAULT_MODEL = "ViT-B-32-quickgelu"
DEFAULT_PRETRAINED = "openai"


class UsageError(Exception):
    """Bad arguments or a model that cannot be loaded: the command stops before tagging (exit code 2)."""


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """Options that pick the scorer, its labels and thresholds (shared by ``adds tag`` and ``adds serve``)."""
    group = parser.add_argument_group("model")
    which = group.add_mutually_exclusive_group()
    which.add_argument(
        "--checkpoint", metavar="PATH",
        help="a trained ADDS head (a directory written by ADDS.save_pretrained); its config names the towers",
    )
    which.add_argument(
        "--model", metavar="NAME",
        help=f"open_clip model for the training-free CLIP baseline (default: {DEFAULT_MODEL} with --pretrained "
        f"{DEFAULT_PRETRAINED} when --checkpoint is not given)",
    )
    group.add_argument(
        "--pretrained", metavar="TAG|FILE",
        help="with --model: an open_clip pretrained tag (cached after the first download), a local weights file "
        "(.safetensors, .bin/.pt state dict, OpenAI TorchScript .pt), or 'none' for random weights (tests and "
        "debugging only); with --checkpoint: a local file or tag to use instead of the tower weights the "
        "checkpoint records",
    )
    group.add_argument("--cache-dir", metavar="DIR", help="where open_clip / Hugging Face look for downloaded weights")
    group.add_argument(
        "--templates", default="paper", metavar="SET",
        help="prompt templates of the CLIP baseline: 'paper' (2 prompts, fast) or 'clip80' (CLIP's 80) "
        "(default: %(default)s; a checkpoint uses its own)",
    )
    group.add_argument("--device", help="torch device, e.g. cpu, cuda, cuda:1 (default: cuda if available, else cpu)")

    labels = parser.add_argument_group("labels and thresholds")
    labels.add_argument(
        "--labels", action="append", metavar="WORDS|FILE",
        help="comma-separated label words, or a file with one label per line; may be repeated. Default: the "
        "checkpoint's labels.txt, else the built-in 4,585-tag vocabulary (Recognize Anything)",
    )
    labels.add_argument(
        "--threshold", type=float, metavar="X",
        help="global threshold in [0, 1]: alone, used for every label; with --threshold-file, for the labels the "
        "file does not list (default: the vocabulary's per-label thresholds, else 0.5)",
    )
    labels.add_argument(
        "--threshold-file", metavar="F",
        help="per-label thresholds: 'label<TAB>threshold' lines or a JSON object {label: threshold}",
    )
    labels.add_argument("--top-k", type=int, metavar="K", help="keep at most K tags per image (after thresholds)")

    pyramid = parser.add_argument_group("Pyramid-Forwarding (ADDS checkpoints)")
    pyramid.add_argument(
        "--levels", metavar="auto|0,1,...",
        help="pyramid levels for every image, e.g. 0,1,2 (Table 7); default 'auto': chosen from each image's size",
    )
    pyramid.add_argument(
        "--max-level", type=int, default=1, metavar="L",
        help="highest level the automatic choice uses; level L costs 4^L crops (default: %(default)s)",
    )


def parse_labels(values: Sequence[str] | None) -> list[str] | None:
    """``--labels`` values (comma-separated words or label files) -> a label list, or ``None`` when not given."""
    from adds.prompts import validate_labels
    from adds.tagger import read_labels

    if not values:
        return None
    labels: list[str] = []
    for value in values:
        if os.path.isfile(value):
            labels.extend(read_labels(value))
        else:
            labels.extend(word.strip() for word in value.split(",") if word.strip())
    if not labels:
        raise UsageError("--labels gave no label")
    try:
        return validate_labels(labels)
    except ValueError as error:
        raise UsageError(f"--labels: {error}") from error


def _parse_levels(value: str | None) -> tuple[int, ...] | None:
    if value is None or value.strip().lower() == "auto":
        return None
    try:
        return tuple(int(part) for part in value.split(",") if part.strip())
    except ValueError as error:
        raise UsageError(f"--levels must be 'auto' or comma-separated integers like 0,1,2, got {value!r}") from error


def build_tagger(args: argparse.Namespace):
    """The :class:`~adds.tagger.Tagger` the model options describe; raises :class:`UsageError` with the reason."""
    import torch

    from adds.model import CheckpointError
    from adds.tagger import CLIPBaselineConfig, Tagger, TaggerConfig, ThresholdSet, read_thresholds
    from adds.towers import WeightsUnavailableError

    if args.device is not None:
        try:
            device = torch.device(args.device)
        except RuntimeError as error:
            raise UsageError(f"--device: {error}") from error
        if device.type == "cuda" and not torch.cuda.is_available():
            raise UsageError(f"--device {args.device}: CUDA is not available on this machine")
    try:
        labels = parse_labels(args.labels)
        config = TaggerConfig(
            threshold=0.5 if args.threshold is None else args.threshold,
            top_k=args.top_k,
            batch_size=getattr(args, "batch_size", 16),
            levels=_parse_levels(args.levels),
            max_level=args.max_level,
        )
        thresholds = None
        if args.threshold_file is not None:
            thresholds = ThresholdSet(default=config.threshold, per_label=read_thresholds(args.threshold_file))
        elif args.threshold is not None:
            thresholds = ThresholdSet(default=args.threshold)
        pretrained = args.pretrained
        if pretrained is not None and pretrained.lower() == "none":
            pretrained = None
        if args.checkpoint is not None:
            if args.pretrained is not None and pretrained is None:
                raise UsageError("--pretrained none cannot replace a checkpoint's tower weights")
            return Tagger.from_checkpoint(args.checkpoint, device=args.device, tower_weights=pretrained,
                                          config=config, labels=labels, thresholds=thresholds)
        model = args.model or DEFAULT_MODEL
        if args.pretrained is None:
            pretrained = DEFAULT_PRETRAINED
        if pretrained is None:
            logger.warning("--pretrained none: random tower weights, the scores carry no meaning (tests/debugging)")
        return Tagger.clip_baseline(model, pretrained, device=args.device, config=config,
                                    baseline=CLIPBaselineConfig(templates=args.templates), cache_dir=args.cache_dir,
                                    labels=labels, thresholds=thresholds)
    except (WeightsUnavailableError, CheckpointError, ValueError, OSError) as error:
        raise UsageError(str(error)) from error


def register(subcommands: argparse._SubParsersAction) -> None:
    parser = subcommands.add_parser(
        "tag",
        help="tag images, folders and globs with any words",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=textwrap.dedent("""\
            Score every image against label words and print the tags above threshold, best first.

            Scorer: a trained ADDS head (--checkpoint DIR) or the training-free CLIP baseline (--model NAME
            --pretrained TAG|FILE; the default is ViT-B-32-quickgelu with OpenAI's weights). Scores are
            independent per label, in [0, 1], and do not sum to 1.

            Inputs: files, folders (searched recursively for image files; hidden entries skipped) and glob
            patterns ('photos/**/*.jpg'). A file that cannot be read (missing, empty, corrupt, truncated, not
            an image, a decompression bomb) is reported on stderr with its path and skipped; the rest are tagged.

            Results are printed as soon as each batch is ready. Exit code: 0 all tagged, 1 some path failed,
            2 bad arguments or the model could not be loaded."""),
        epilog="examples:\n"
        "  adds tag photos/ --labels dog,cat,beach,sunset\n"
        "  adds tag 'shots/**/*.jpg' --labels labels.txt --threshold 0.6 --format jsonl > tags.jsonl\n"
        "  adds tag img.png --checkpoint runs/coco/best --top-k 5\n"
        "  adds tag img.png --model ViT-B-32-quickgelu --pretrained ~/weights/ViT-B-32.pt   # offline, local file",
    )
    parser.add_argument("paths", nargs="+", metavar="PATHS", help="image files, folders or glob patterns")
    add_model_arguments(parser)
    out = parser.add_argument_group("output")
    out.add_argument(
        "--format", choices=FORMATS, default="table",
        help="table (readable), json (one array at the end), jsonl (one object per image, streamed), csv "
        "(path,label,score rows; an image without tags gets one row with empty label) (default: %(default)s)",
    )
    out.add_argument("--batch-size", type=int, default=16, metavar="N", help="images per forward pass (default: 16)")
    out.add_argument("--workers", type=int, default=2, metavar="N",
                     help="threads decoding images ahead of the model (0 = none; default: %(default)s)")
    out.add_argument("--progress", choices=("auto", "on", "off"), default="auto",
                     help="progress bar on stderr; auto = when stderr is a terminal and there is more than one "
                     "batch (default: %(default)s)")
    parser.set_defaults(handler=run)


class _Writer:
    """Writes results in one of :data:`FORMATS`, flushing after every record so results stream."""

    def __init__(self, fmt: str, stream: TextIO) -> None:
        import csv

        self.fmt = fmt
        self.stream = stream
        self.collected: list[dict[str, Any]] = []
        self.csv = csv.writer(stream, lineterminator="\n") if fmt == "csv" else None
        if self.csv is not None:
            self.csv.writerow(["path", "label", "score"])

    def write(self, path: str, tags: list[dict[str, Any]]) -> None:
        import json

        record = {"path": path, "tags": [{"label": t["label"], "score": round(t["score"], 6)} for t in tags]}
        if self.fmt == "json":
            self.collected.append(record)
            return
        if self.fmt == "jsonl":
            self.stream.write(json.dumps(record, ensure_ascii=False) + "\n")
        elif self.csv is not None:
            for tag in record["tags"] or [{"label": "", "score": ""}]:
                self.csv.writerow([path, tag["label"], tag["score"]])
        else:
            lines = [path] + [f"  {t['score']:.3f}  {t['label']}" for t in tags]
            self.stream.write("\n".join(lines if tags else lines + ["  (no tag above threshold)"]) + "\n")
        self.stream.flush()

    def close(self) -> None:
        import json

        if self.fmt == "json":
            self.stream.write(json.dumps(self.collected, indent=2, ensure_ascii=False) + "\n")
            self.stream.flush()


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from adds.tagger import find_images

    def fail(message: str) -> int:
        print(f"adds tag: error: {message}", file=sys.stderr)
        return 2

    if args.batch_size < 1:
        return fail(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.workers < 0:
        return fail(f"--workers must be >= 0, got {args.workers}")
    if args.top_k is not None and args.top_k < 1:
        return fail(f"--top-k must be >= 1, got {args.top_k}")
    if args.threshold is not None and not 0.0 <= args.threshold <= 1.0:
        return fail(f"--threshold must be in [0, 1], got {args.threshold}")
    files, unmatched = find_images(args.paths)
    failed = 0
    for path in unmatched:
        print(f"adds tag: error: {path}: no such file or directory, or no image matches the pattern", file=sys.stderr)
        failed += 1
    if not files:
        print("adds tag: error: no image files to tag", file=sys.stderr)
        return 1
    try:
        tagger = build_tagger(args)
    except UsageError as error:
        return fail(str(error))

    show = args.progress == "on" or (args.progress == "auto" and len(files) > args.batch_size and sys.stderr.isatty())
    writer = _Writer(args.format, sys.stdout)
    tagged = 0
    with tqdm(total=len(files), unit="img", file=sys.stderr, disable=not show, desc="tagging") as bar:
        for result in tagger.tag_files(files, workers=args.workers):
            if result.error is not None:
                failed += 1
                tqdm.write(f"adds tag: error: {result.path}: {result.error}", file=sys.stderr)
            else:
                tagged += 1
                writer.write(result.path, result.tags)
            bar.update(1)
    writer.close()
    if failed:
        print(f"adds tag: {tagged} image(s) tagged, {failed} failed", file=sys.stderr)
    return 1 if failed else 0
