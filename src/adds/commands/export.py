"""``adds export``: write the image path plus head as ONNX, label embeddings as an input (see :mod:`adds.export`).

Exit codes: 0 written and verified; 1 written, but onnxruntime differs from PyTorch by more than ``--tolerance``
(the file is kept for inspection); 2 bad arguments or nothing could run (onnx / onnxruntime missing, bad
checkpoint, weights not available, levels that the input size does not have, unreadable label file).
"""

from __future__ import annotations

import argparse
import logging
import sys
import textwrap
from pathlib import Path

from adds.commands._options import UsageError, add_baseline_pooling, parse_levels

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "ViT-B-32-quickgelu"
DEFAULT_PRETRAINED = "openai"


def register(subcommands: argparse._SubParsersAction) -> None:
    parser = subcommands.add_parser(
        "export",
        help="export the image path plus head as ONNX (label embeddings are an input)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=textwrap.dedent("""\
            Write a trained ADDS head (--checkpoint DIR) or the training-free CLIP baseline (--model NAME) with
            its image tower and Pyramid-Forwarding as one ONNX file:

              inputs   images            (batch, 3, S, S) float32 RGB in [0, 1], squashed to S x S
                       label_embeddings  (labels, D) float32, normalised prompt-ensembled label embeddings
              outputs  logits, scores    (batch, labels); scores = sigmoid(logits), independent per label

            The batch and the number of labels are dynamic, so the vocabulary stays open: embed any words with the
            same towers and templates (--labels writes them as OUT.labels.npy + OUT.labels.txt). The pyramid
            crops of an image go through the tower as one batch inside the graph. S and the levels are fixed at
            export (default: the head's trained input size and levels, as adds tag uses them). After writing, the
            file is run with onnxruntime and compared with PyTorch (max abs logit difference <= --tolerance).
            A OUT.json sidecar records the plan, templates, towers and the measured difference. See
            docs/export.md.

            Exit codes: 0 written and verified; 1 written but the check failed; 2 bad arguments or nothing could
            run (onnx/onnxruntime missing: pip install 'adds[export]')."""),
    )
    parser.add_argument("output", type=Path, metavar="OUT.onnx", help="the ONNX file to write")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--checkpoint", metavar="DIR", help="a trained ADDS head (ADDS.save_pretrained / adds train)")
    which.add_argument("--model", metavar="NAME",
                       help=f"open_clip model for the training-free CLIP baseline (default: {DEFAULT_MODEL} with "
                       f"--pretrained {DEFAULT_PRETRAINED} when --checkpoint is not given)")
    parser.add_argument("--pretrained", metavar="TAG|FILE",
                        help="with --model: open_clip tag, local weights file, or 'none' (random weights, tests); "
                        "with --checkpoint: a local file or tag instead of the recorded tower weights")
    parser.add_argument("--cache-dir", metavar="DIR", help="where open_clip / Hugging Face look for weights")
    parser.add_argument("--templates", default="paper", metavar="SET",
                        help="prompt templates of the CLIP baseline: 'paper' or 'clip80' (default: %(default)s; "
                        "a checkpoint uses its own)")
    add_baseline_pooling(parser)
    parser.add_argument("--input-size", type=int, metavar="PX",
                        help="side S of the images the graph takes (default: the head's trained size from "
                        "training.json, else the tower's size; the CLIP baseline: the smallest size that has its "
                        "levels, 2S for levels 0,1)")
    parser.add_argument("--levels", metavar="0,1,...",
                        help="Pyramid-Forwarding levels instead of the head's own, e.g. 0,1,2 (Table 7); without "
                        "--input-size the size grows to the smallest that has them, as in adds tag")
    parser.add_argument("--labels", action="append", metavar="WORDS|FILE",
                        help="also write these labels' embeddings as OUT.labels.npy (k, D) and OUT.labels.txt "
                        "(comma-separated words or a label file, as in adds tag; may be repeated; default: the "
                        "checkpoint's labels.txt if it has one)")
    parser.add_argument("--opset", type=int, default=17, help="ONNX opset (default: %(default)s)")
    parser.add_argument("--tolerance", type=float, default=1e-4,
                        help="largest accepted max abs logit difference onnxruntime vs PyTorch (default: "
                        "%(default)s)")
    parser.add_argument("--no-verify", action="store_true", help="skip the onnxruntime check")
    parser.set_defaults(handler=run)


def _error(message: str) -> int:
    print(f"adds export: error: {message}", file=sys.stderr)
    return 2


def run(args: argparse.Namespace) -> int:
    if args.input_size is not None and args.input_size < 1:
        return _error(f"--input-size must be >= 1, got {args.input_size}")
    if not args.tolerance > 0:
        return _error(f"--tolerance must be > 0, got {args.tolerance}")
    if args.opset < 14:
        return _error(f"--opset must be >= 14 (scaled dot-product attention), got {args.opset}")
    if args.output.suffix.lower() != ".onnx":
        return _error(f"{args.output}: the output file must end in .onnx")
    if args.output.parent.exists() and not args.output.parent.is_dir():
        return _error(f"{args.output.parent} is not a folder")
    try:
        levels = parse_levels(args.levels)
    except UsageError as error:
        return _error(str(error))
    from adds.export import ExportDependencyError, require_onnx

    try:
        require_onnx()
    except ExportDependencyError as error:
        return _error(str(error))
    return _export(args, levels)


def _export(args: argparse.Namespace, levels: tuple[int, ...] | None) -> int:
    from adds.export import ExportConfig, export_onnx
    from adds.model import CheckpointError
    from adds.towers import WeightsUnavailableError

    try:
        model, labels, trained_size = _load(args)
        baseline_view = args.checkpoint is None and model.config.pooling == "view"
        if baseline_view and levels is not None:
            logger.warning("the CLIP baseline with --baseline-pooling view scores one %d px view: --levels is "
                           "ignored", model.towers.image_size)
            levels = None
        size = args.input_size
        if not baseline_view:  # the plan adds tag would use (adds.tagger.plan)
            from adds.tagger.plan import input_plan

            own = model.config.pyramid.levels if args.checkpoint is not None else model.levels
            plan = input_plan(model.towers.image_size, own, trained_size, input_size=args.input_size, levels=levels)
            size, levels = plan.input_size, plan.levels
        config = ExportConfig(input_size=size, levels=levels, opset=args.opset, verify=not args.no_verify,
                              tolerance=args.tolerance)
        result = export_onnx(model, args.output, config)
    except RuntimeError as error:  # written, but onnxruntime disagrees with PyTorch
        print(f"adds export: {error}", file=sys.stderr)
        return 1
    except (WeightsUnavailableError, CheckpointError, ValueError, OSError) as error:
        return _error(str(error))
    check = "not verified" if result.max_abs_diff is None else \
        f"onnxruntime vs PyTorch: max |logit difference| {result.max_abs_diff:.1e}"
    print(f"wrote {result.path} ({result.kind}; images (batch, 3, {result.input_size}, {result.input_size}), levels "
          f"{','.join(map(str, result.levels))} = {result.crops} crop(s); label_embeddings (labels, "
          f"{result.embed_dim})); {check}; {result.metadata_path}")
    if labels:
        try:
            written = _write_labels(model, labels, args.output)
        except (ValueError, OSError) as error:
            return _error(str(error))
        print(f"wrote {written} ({len(labels)} label embeddings) and {written.with_suffix('.txt')}")
    return 0


def _load(args: argparse.Namespace):
    """(model, labels or None, trained input size or None) for the model options."""
    from adds.commands.tag import parse_labels
    from adds.tagger import CLIPBaseline, CLIPBaselineConfig
    from adds.towers import TowerConfig, load_towers

    try:
        labels = parse_labels(args.labels)
    except UsageError as error:
        raise ValueError(str(error)) from error
    pretrained = args.pretrained
    if pretrained is not None and pretrained.lower() == "none":
        pretrained = None
    if args.checkpoint is not None:
        from adds.model import ADDS
        from adds.tagger.plan import trained_input_size
        from adds.tagger.vocabulary import read_labels

        directory = Path(args.checkpoint)
        if args.pretrained is not None and pretrained is None:
            raise ValueError("--pretrained none cannot replace a checkpoint's tower weights")
        model = ADDS.from_pretrained(directory, tower_weights=pretrained)
        if labels is None and (directory / "labels.txt").is_file():
            labels = read_labels(directory / "labels.txt")
        return model, labels, trained_input_size(directory)
    name = args.model or DEFAULT_MODEL
    if args.pretrained is None:
        pretrained = DEFAULT_PRETRAINED
    towers = load_towers(TowerConfig(model=name, pretrained=pretrained, cache_dir=args.cache_dir))
    config = CLIPBaselineConfig(templates=args.templates, pooling=args.baseline_pooling)
    return CLIPBaseline(towers, config), labels, None


def _write_labels(model, labels: list[str], output: Path) -> Path:
    import numpy as np

    embeddings = model.encode_labels(labels).float().cpu().numpy()  # (k, D)
    path = output.with_suffix(".labels.npy")
    np.save(path, embeddings.astype(np.float32))
    path.with_suffix(".txt").write_text("".join(f"{label}\n" for label in labels), encoding="utf-8")
    return path
