"""``adds eval``: evaluate a checkpoint, the training-free CLIP baseline, or given scores under a paper protocol."""

from __future__ import annotations

import argparse
import logging
import sys

from adds.commands._options import OPEN_VOCABULARY_CHOICES, add_baseline_pooling

logger = logging.getLogger(__name__)

_EPILOG = """\
examples:
  # MS-COCO (Table 1): mAP and CP/CR/CF1/OP/OR/OF1 at threshold 0.5
  adds eval --checkpoint runs/coco_vitl14_224/best --data-kind coco --data-root /data/coco --split val
  # NUS-WIDE zero-shot (Table 2) from a feature cache written by `adds extract`
  adds eval --checkpoint runs/nuswide_zsl_vitb32_224/best --data-kind nuswide --data-root /data/nus-wide \\
      --split test --protocol zsl --cache cache/nuswide-test
  # generalised zero-shot over all 1006 labels
  adds eval --checkpoint DIR --data-kind nuswide --data-root /data/nus-wide --split test --protocol gzsl
  # single-to-multi (Tables 3/4): all / overlapped / non-overlapped label subsets
  adds eval --checkpoint runs/imagenet1k_to_coco_vitb32_224/best --data-kind coco --data-root /data/coco \\
      --split val --protocol single-to-multi
  # plain CLIP, no training, same protocol
  adds eval --zero-shot-baseline --model ViT-B-32-quickgelu --pretrained openai --data-kind nuswide \\
      --data-root /data/nus-wide --split test --protocol zsl
  # scores you computed yourself (N x C .npy files)
  adds eval --scores scores.npy --targets targets.npy --protocol conventional --json metrics.json
"""


def register(subcommands: argparse._SubParsersAction) -> None:
    parser = subcommands.add_parser(
        "eval",
        help="evaluate a checkpoint / the CLIP baseline / given scores (paper protocols)",
        description="Evaluate with the literature's protocols: conventional (mAP, CP/CR/CF1/OP/OR/OF1), zero-shot "
        "and generalised zero-shot (mAP, P/R/F1 at k = 3 and 5), single-to-multi (all / overlapped / "
        "non-overlapped labels). Prints a table in the paper's format; --json writes every number (fractions), "
        "per-label AP and the settings.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    what = parser.add_argument_group("what to evaluate (one of)")
    what.add_argument("--checkpoint", metavar="DIR", help="an ADDS checkpoint directory (e.g. runs/NAME/best)")
    what.add_argument("--zero-shot-baseline", action="store_true",
                      help="training-free CLIP: cosine of the image embedding and the prompt-ensembled label "
                      "embedding (needs --model / --pretrained)")
    what.add_argument("--scores", metavar="NPY", help="an (N, C) score matrix (.npy); needs --targets")
    towers = parser.add_argument_group("towers")
    towers.add_argument("--model", help="open_clip model for --zero-shot-baseline, e.g. ViT-B-32-quickgelu")
    towers.add_argument("--pretrained", help="open_clip tag, weights file, or 'none' (random) for the baseline")
    towers.add_argument("--tower-weights", metavar="TAG|FILE",
                        help="with --checkpoint: where the recorded tower weights are on this machine")
    towers.add_argument("--templates", default="paper",
                        help="prompt templates of the baseline: paper | clip80 (default: %(default)s)")
    towers.add_argument("--open-vocabulary", choices=tuple(OPEN_VOCABULARY_CHOICES), default="auto",
                        help="a checkpoint's open-vocabulary mode (adds.openvocab) for labels outside its training "
                        "vocabulary: 'auto' uses its open_vocab.json when present, 'on' requires it, 'off' is the "
                        "plain head (default: %(default)s)")
    data = parser.add_argument_group("data")
    data.add_argument("--data-kind", choices=("coco", "nuswide", "imagenet", "manifest"), help="dataset reader")
    data.add_argument("--data-root", help="dataset root (for manifest: the .csv/.jsonl file)")
    data.add_argument("--split", default="test", help="split to evaluate (coco: val; nuswide: test; "
                      "default: %(default)s)")
    data.add_argument("--labels", help="label variant: nuswide seen925|unseen81|all1006; imagenet 1k or a class "
                      "list; manifest vocabulary file")
    data.add_argument("--require-positive", action="store_true",
                      help="keep only images with >= 1 positive (the 'filtered' variant, reported as such)")
    data.add_argument("--limit", type=int, help="first N images only (debugging)")
    data.add_argument("--cache", metavar="DIR", help="read image tokens from this feature cache (adds extract)")
    data.add_argument("--verify-data", action="store_true",
                      help="check the feature cache (sizes, SHA-256, finite values) or, without --cache, that every "
                      "image decodes, before evaluating")
    data.add_argument("--input-size", type=int, help="squash-resize size (default: the checkpoint's training size, "
                      "the cache's, or the tower's)")
    data.add_argument("--levels", help="Pyramid-Forwarding levels of the baseline's --baseline-pooling max, e.g. "
                      "0,1,2 (default: 0,1)")
    add_baseline_pooling(data)
    data.add_argument("--targets", metavar="NPY", help="with --scores: (N, C) 0/1 ground truth")
    data.add_argument("--mask", metavar="NPY", help="with --scores: optional (N, C) known-mask")
    data.add_argument("--vocabulary", metavar="FILE", help="with --scores: label names, one per line")
    protocol = parser.add_argument_group("protocol")
    protocol.add_argument("--protocol", default="conventional",
                          choices=("conventional", "zsl", "gzsl", "single-to-multi"), help="default: %(default)s")
    protocol.add_argument("--threshold", type=float, default=0.5, help="CP/CR/... threshold (default: %(default)s)")
    protocol.add_argument("--topk", default="3,5", help="k values of P/R/F1@k (default: %(default)s)")
    protocol.add_argument("--ties", choices=("group", "ordinal"), default="group",
                          help="AP tie handling: group = scikit-learn, ordinal = BiAM/MKT (default: %(default)s)")
    protocol.add_argument("--skip-labels-without-positives", action="store_true",
                          help="leave labels without a positive out of the mAP (default: they count as AP 0)")
    protocol.add_argument("--overlap-target", choices=("coco80", "nuswide81"),
                          help="single-to-multi vocabulary (default: from --data-kind)")
    protocol.add_argument("--overlap-train", default="imagenet1k", help="training classes of the overlap "
                          "(default: %(default)s)")
    run = parser.add_argument_group("run")
    run.add_argument("--batch-size", type=int, default=256, help="images per forward pass (default: %(default)s)")
    run.add_argument("--workers", type=int, default=4, help="DataLoader workers (default: %(default)s)")
    run.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="default: %(default)s")
    run.add_argument("--precision", default="auto", metavar="P",
                     help="precision of the image path: auto (default: bf16 autocast on a GPU with bfloat16, else "
                     "fp16 autocast on a GPU; fp32 on a CPU), fp32, bf16 or fp16. On a CPU, bf16 runs the vision "
                     "tower in bfloat16 (needs AVX512-BF16/AMX; the head stays fp32, so a --cache run gains nothing) "
                     "and fp16 is refused; scores stay float32")
    run.add_argument("--no-amp", action="store_true", help="no mixed precision on GPU (the same as --precision fp32)")
    run.add_argument("--json", metavar="OUT", help="write the results as JSON")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(handler=run_eval)


def _fail(message: str) -> int:
    print(f"adds eval: {message}", file=sys.stderr)
    return 2


def _int_list(text: str, name: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise SystemExit(f"adds eval: {name} must be comma-separated integers, got {text!r}") from None


def run_eval(args: argparse.Namespace) -> int:
    chosen = [bool(args.checkpoint), bool(args.zero_shot_baseline), bool(args.scores)]
    if sum(chosen) != 1:
        return _fail("give exactly one of --checkpoint DIR, --zero-shot-baseline, --scores NPY")
    if args.precision not in ("auto", "fp32", "bf16", "fp16"):
        return _fail(f"--precision must be one of auto, fp32, bf16, fp16, got {args.precision!r}")
    if args.no_amp and args.precision not in ("auto", "fp32"):
        return _fail(f"--no-amp contradicts --precision {args.precision}")
    from adds.evaluate import EvalConfig, format_table, write_json
    from adds.features import FeatureCacheError, one_line
    from adds.tagger.precision import PrecisionError

    try:
        config = EvalConfig(protocol=args.protocol, threshold=args.threshold, topk=_int_list(args.topk, "--topk"),
                            ties=args.ties, skip_labels_without_positives=args.skip_labels_without_positives,
                            overlap_target=args.overlap_target, overlap_train=args.overlap_train,
                            batch_size=args.batch_size, precision=_precision(args))
        result = _scores_path(args, config) if args.scores else _model_path(args, config)
    except PrecisionError as error:  # bf16 on a CPU without it, fp16 on a CPU
        return _fail(str(error))
    except FeatureCacheError as error:  # the user's cache: truncated, corrupt, or for other towers
        logger.debug("evaluation failed", exc_info=True)
        return _fail(one_line(error))
    except (ValueError, FileNotFoundError, RuntimeError) as error:
        logger.debug("evaluation failed", exc_info=True)
        print(f"adds eval: {error}", file=sys.stderr)
        return 1
    print(format_table(result))
    if args.json:
        path = write_json(result, args.json)
        print(f"wrote {path}", file=sys.stderr)
    return 0


def _precision(args: argparse.Namespace) -> str:
    """``--precision`` resolved: ``auto`` is bf16 (fp16 without bfloat16) on a GPU, fp32 on a CPU or with --no-amp."""
    if args.precision != "auto":
        return args.precision
    if args.no_amp or args.scores:
        return "fp32"
    import torch

    use_cuda = torch.cuda.is_available() if args.device == "auto" else args.device == "cuda"
    if not use_cuda:
        return "fp32"
    return "bf16" if torch.cuda.is_bf16_supported() else "fp16"


def _scores_path(args: argparse.Namespace, config):
    import numpy as np

    from adds.evaluate import evaluate_scores, overlap_subsets

    if not args.targets:
        raise ValueError("--scores needs --targets")

    def load(path: str) -> np.ndarray:
        try:
            return np.load(path, allow_pickle=False)
        except (OSError, ValueError) as error:
            raise ValueError(f"cannot read {path} as a .npy array: {error}") from error

    scores, targets = load(args.scores), load(args.targets)
    mask = load(args.mask) if args.mask else None
    vocabulary = None
    if args.vocabulary:
        with open(args.vocabulary, encoding="utf-8") as handle:
            vocabulary = [line.strip() for line in handle if line.strip()]
    subsets = None
    if config.protocol == "single-to-multi":
        if vocabulary is None:
            raise ValueError("single-to-multi on given scores needs --vocabulary (the label names)")
        from adds.evaluate import overlap_target_for

        subsets = overlap_subsets(vocabulary, overlap_target_for(args.data_kind, config), config.overlap_train)
    return evaluate_scores(scores, targets, mask, vocabulary, config, subsets=subsets, dataset=args.scores,
                           model="given scores")


def eval_plan(model, trained_size: int | None = None, input_size: int | None = None,
              levels: tuple[int, ...] | None = None):
    """The input plan ``adds eval`` runs ``model`` with: :func:`adds.tagger.plan.input_plan`, the same rule as the
    tagger and ``adds serve`` (trained size from ``training.json``, the head's pyramid levels; an explicit
    ``--input-size`` or a cache's size wins)."""
    from adds.tagger.plan import input_plan

    pyramid_levels = levels if levels is not None else model.config.pyramid.levels
    return input_plan(model.towers.image_size, pyramid_levels, trained_size, input_size=input_size)


def _model_path(args: argparse.Namespace, config):
    import torch

    from adds.data.base import SquashResize
    from adds.data.registry import DatasetConfig, load_dataset
    from adds.evaluate import evaluate_model
    from adds.model import ADDS, ADDSConfig
    from adds.pyramid import PyramidConfig
    from adds.tagger.baseline import CLIPBaseline, CLIPBaselineConfig
    from adds.tagger.plan import trained_input_size
    from adds.towers import TowerConfig

    if not args.data_kind or not args.data_root:
        raise ValueError("--data-kind and --data-root are needed to evaluate a model")
    use_cuda = torch.cuda.is_available() if args.device == "auto" else args.device == "cuda"
    device = torch.device("cuda" if use_cuda else "cpu")
    from adds.tagger.precision import resolve_precision

    resolve_precision(config.precision, device)  # refuse before loading the model (PrecisionError)
    score_fn = None
    if args.checkpoint:
        model = ADDS.from_pretrained(args.checkpoint, tower_weights=args.tower_weights, map_location=device)
        trained_size = trained_input_size(args.checkpoint)
        levels = None
        name = f"ADDS {model.towers.config.model} {model.config.decoder.kind.upper()}-Decoder " \
               f"x{model.config.decoder.num_layers}"
    else:
        if not args.model or args.pretrained is None:
            raise ValueError("--zero-shot-baseline needs --model and --pretrained")
        pooling = getattr(args, "baseline_pooling", "max")
        levels = _int_list(args.levels, "--levels") if args.levels else None
        pretrained = None if args.pretrained.lower() == "none" else args.pretrained
        baseline_config = CLIPBaselineConfig(templates=args.templates, pooling=pooling, levels=levels)
        levels = baseline_config.pyramid_levels
        model_config = ADDSConfig(towers=TowerConfig(model=args.model, pretrained=pretrained),
                                  pyramid=PyramidConfig(levels=levels), templates=args.templates)
        model = ADDS(model_config).to(device)
        if not model.towers.config.aligned:
            raise ValueError("the CLIP baseline needs aligned towers")
        trained_size = None
        baseline = CLIPBaseline(model.towers, baseline_config)  # the tagger's score (adds.tagger.baseline)

        def score_fn(tokens: torch.Tensor, embeddings: torch.Tensor) -> torch.Tensor:
            return baseline.forward_head(baseline.class_tokens(tokens), embeddings).sigmoid()  # (B, k)

        name = f"CLIP {args.model} ({args.pretrained}), no training, "
        name += "one view" if pooling == "view" else f"max over the crops of levels {','.join(map(str, levels))}"
    model.eval()

    labels = args.labels
    if labels is None and args.data_kind == "nuswide" and config.protocol == "gzsl":
        labels = "all1006"
    dataset_config = DatasetConfig(kind=args.data_kind, root=args.data_root, split=args.split, labels=labels,
                                   require_positive=args.require_positive, limit=args.limit)
    store = None
    if args.cache:
        from adds.features import FeatureStore, verify_cache

        store = verify_cache(args.cache) if args.verify_data else FeatureStore.open(args.cache)
    cache_size = store.manifest.get("input_size") if store is not None else None
    try:
        plan = eval_plan(model, trained_size, args.input_size or cache_size, levels)
    except ValueError as error:
        if args.checkpoint or levels == (0,):
            raise
        raise ValueError(f"{error}; the baseline's crops need {baseline.input_size} px images: "
                         "pass a larger --input-size (or a cache extracted at it), or --baseline-pooling view for "
                         "the one view") from None
    input_size = plan.input_size
    logger.info("evaluating at %s", plan.describe())
    dataset = load_dataset(dataset_config, transform=SquashResize(int(input_size)))
    if args.verify_data and store is None:
        from adds.features import verify_images

        verify_images(dataset)
    failed = 0
    if store is not None:
        from adds.features import CachedFeatureDataset

        store.check_compatible(model, dataset, int(input_size))
        data = CachedFeatureDataset(store, dataset)
        failed = len(store.failed)
    else:
        data = dataset
    if args.checkpoint:
        from adds.openvocab import checkpoint_open_vocabulary, eval_score_fn

        wanted = OPEN_VOCABULARY_CHOICES[getattr(args, "open_vocabulary", "auto")]
        record = checkpoint_open_vocabulary(args.checkpoint, wanted)
        if record is not None:
            unseen = sum(label not in set(record.vocabulary) for label in dataset.vocabulary)
            score_fn = eval_score_fn(record, model, dataset.vocabulary)
            name += f" + open vocabulary ({unseen} of {len(dataset.vocabulary)} labels outside its training labels)"
    name += f" {input_size}x{input_size}"
    if dataset_config.require_positive:
        name += " (filtered: images with >= 1 positive)"
    return evaluate_model(model, data, dataset.vocabulary, config, dataset_kind=args.data_kind,
                          dataset_name=dataset.name, model_name=name, score_fn=score_fn, device=device,
                          num_workers=args.workers, progress=not args.no_progress,
                          failed_images=failed)
