"""``adds tag``: tag image files, folders and globs with any words (see :mod:`adds.tagger` and docs/tagging.md).

Exit codes: 0 every input was tagged; 1 some inputs failed (a bad image, a missing path, an empty glob, a sidecar
that could not be written) -- the others are still tagged and written, failed ones with their error; 2 bad arguments
or nothing could run (bad option, unreadable label or threshold file, unknown model, weights not available, bad
checkpoint, no image found, no input could be tagged); 130 interrupted (Ctrl+C; ``--resume`` continues); 141 the
output was closed early (``| head``), which ends the run quietly.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from adds.commands._options import OPEN_VOCABULARY_CHOICES, UsageError, add_baseline_pooling, parse_levels

logger = logging.getLogger(__name__)

FORMATS = ("table", "json", "jsonl", "csv")
RESUMABLE = ("jsonl", "csv")
DEFAULT_MODEL = "ViT-B-32-quickgelu"
DEFAULT_PRETRAINED = "openai"
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141
#: ``--precision`` values (:data:`adds.tagger.precision.PRECISIONS`, repeated here so argument errors need no torch).
PRECISIONS = ("fp32", "bf16", "fp16")


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """Options that pick the scorer, its labels, thresholds and input plan (shared by ``adds tag`` and ``serve``)."""
    group = parser.add_argument_group("model")
    which = group.add_mutually_exclusive_group()
    which.add_argument(
        "--checkpoint", metavar="PATH",
        help="a trained ADDS head (a directory written by ADDS.save_pretrained / adds train); its config names the "
        "towers, its labels.txt is the default vocabulary, its thresholds.tsv (from adds calibrate / adds train) "
        "the default per-label thresholds, its training.json the input size",
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
    add_baseline_pooling(group)
    group.add_argument("--device", help="torch device, e.g. cpu, cuda, cuda:1 (default: cuda if available, else cpu; "
                       "under torchrun: cuda:LOCAL_RANK)")
    group.add_argument(
        "--precision", default="fp32", metavar="P",
        help="precision of the image path: fp32 (default), bf16 or fp16. On a CPU, bf16 runs the vision tower in "
        "bfloat16 (needs AVX512-BF16/AMX; the head stays fp32) and fp16 is refused; on a GPU, bf16/fp16 run tower "
        "and head under autocast. Label embeddings and scores stay float32 (see docs/tagging.md)",
    )
    group.add_argument("--no-label-cache", action="store_true",
                       help="do not keep label embeddings on disk (default: kept in $ADDS_CACHE_DIR, else "
                       "~/.cache/adds, keyed by the towers and templates, so the next start skips the text tower; "
                       "ADDS_LABEL_CACHE=0 does the same)")

    labels = parser.add_argument_group("labels and thresholds")
    labels.add_argument(
        "--labels", action="append", metavar="WORDS|FILE",
        help="label words separated by commas ('dog, cat, red car'), or a label file (one label per line, '#' "
        "starts a comment line); may be repeated. A value is a FILE when it names an existing file or folder, or "
        "has no comma and contains '/' or ends in .txt/.tsv/.csv/.list/.lst/.labels -- such a file must exist "
        "(add a comma to force words: 'AC/DC,'). Duplicates are refused. Default: the checkpoint's labels.txt, "
        "else the built-in 4,585-tag vocabulary (Recognize Anything)",
    )
    labels.add_argument(
        "--threshold", type=float, metavar="X",
        help="global threshold in [0, 1]: alone, used for every label; with --threshold-file, for the labels the "
        "file does not list (default: the vocabulary's per-label thresholds, else 0.5)",
    )
    labels.add_argument(
        "--threshold-file", metavar="F",
        help="per-label thresholds: 'label<TAB>threshold' lines (as adds calibrate writes thresholds.tsv) or a JSON "
        "object {label: threshold}; naming a label that is not being tagged is an error (a typo)",
    )
    labels.add_argument("--top-k", type=int, metavar="K", help="keep at most K tags per image (after thresholds)")
    labels.add_argument(
        "--shortlist", type=int, metavar="M",
        help="large vocabularies: CLIP's cosine picks each image's M candidate labels and the head scores only "
        "those (the rest score below every candidate); default: every label is decoded. See docs/performance.md",
    )
    labels.add_argument(
        "--open-vocabulary", choices=tuple(OPEN_VOCABULARY_CHOICES), default="auto",
        help="a checkpoint's open-vocabulary mode for words outside its training labels (head mixed with the "
        "CLIP prior, fitted on held-out training labels; the training labels keep the head's score): 'auto' uses "
        "it when the checkpoint has an open_vocab.json, 'on' requires it, 'off' is the plain head (default: auto)",
    )

    plan = parser.add_argument_group("input plan (of the head, or of the CLIP baseline's --baseline-pooling max)")
    plan.add_argument(
        "--input-size", type=int, metavar="PX",
        help="squash images to PX x PX (default: the size the head was trained at, from its training.json, else "
        "the tower's size; the CLIP baseline: twice the tower's size, for its quadrants) -- the plan adds eval "
        "uses",
    )
    plan.add_argument(
        "--levels", metavar="0,1,...",
        help="Pyramid-Forwarding levels instead of the head's own, e.g. 0,1,2 (Table 7); 'auto' = the head's "
        "(default; the CLIP baseline's: 0,1)",
    )


def precision_name_problem(value: str) -> str | None:
    """Why ``--precision value`` is not a precision name (one line), or ``None``; needs no torch import."""
    if value in PRECISIONS:
        return None
    return f"--precision must be one of {', '.join(PRECISIONS)}, got {value!r}"


def check_precision(value: str, device: str | None) -> str | None:
    """Why ``--precision value`` cannot run on ``device`` (``None`` = the default device), or ``None``."""
    problem = precision_name_problem(value)
    if problem is not None or value == "fp32":
        return problem
    import torch

    from adds.tagger.precision import PrecisionError, resolve_precision

    target = device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolve_precision(value, target)
    except PrecisionError as error:
        return str(error)
    return None


def parse_labels(values: Sequence[str] | None) -> list[str] | None:
    """``--labels`` values (word lists or label files, :func:`adds.tagger.labels_from_values`) -> labels or None."""
    from adds.tagger import labels_from_values

    if not values:
        return None
    try:
        return labels_from_values(values)
    except ValueError as error:
        raise UsageError(f"--labels: {error}") from error


def build_tagger(args: argparse.Namespace, device: str | None = None):
    """The :class:`~adds.tagger.Tagger` the model options describe; raises :class:`UsageError` with the reason.

    ``device`` replaces ``args.device`` (a torchrun rank's own GPU)."""
    import torch

    from adds.model import CheckpointError
    from adds.tagger import CLIPBaselineConfig, Tagger, TaggerConfig, ThresholdSet, read_thresholds
    from adds.towers import WeightsUnavailableError

    device = device or args.device
    if device is not None:
        try:
            resolved = torch.device(device)
        except RuntimeError as error:
            raise UsageError(f"--device: {error}") from error
        if resolved.type == "cuda" and not torch.cuda.is_available():
            raise UsageError(f"--device {device}: CUDA is not available on this machine")
    problem = check_precision(getattr(args, "precision", "fp32"), device)
    if problem is not None:
        raise UsageError(problem)
    try:
        labels = parse_labels(args.labels)
        config = TaggerConfig(
            threshold=0.5 if args.threshold is None else args.threshold,
            top_k=args.top_k,
            batch_size=getattr(args, "batch_size", 16),
            levels=parse_levels(args.levels),
            input_size=args.input_size,
            label_cache=not getattr(args, "no_label_cache", False),
            max_cached_labels=getattr(args, "max_cached_labels", None),
            precision=getattr(args, "precision", "fp32"),
            open_vocabulary=OPEN_VOCABULARY_CHOICES[getattr(args, "open_vocabulary", "auto")],
            shortlist=getattr(args, "shortlist", None),
            fast_decode=getattr(args, "fast_decode", False),
        )
        thresholds = None
        if args.threshold_file is not None:
            thresholds = ThresholdSet(default=config.threshold, per_label=read_thresholds(args.threshold_file),
                                      source=args.threshold_file)
        elif args.threshold is not None:
            thresholds = ThresholdSet(default=args.threshold)
        pretrained = args.pretrained
        if pretrained is not None and pretrained.lower() == "none":
            pretrained = None
        if args.checkpoint is not None:
            if args.pretrained is not None and pretrained is None:
                raise UsageError("--pretrained none cannot replace a checkpoint's tower weights")
            return Tagger.from_checkpoint(args.checkpoint, device=device, tower_weights=pretrained,
                                          config=config, labels=labels, thresholds=thresholds)
        model = args.model or DEFAULT_MODEL
        if args.pretrained is None:
            pretrained = DEFAULT_PRETRAINED
        if pretrained is None:
            logger.warning("--pretrained none: random tower weights, the scores carry no meaning (tests/debugging)")
        return Tagger.clip_baseline(model, pretrained, device=device, config=config,
                                    baseline=CLIPBaselineConfig(templates=args.templates,
                                                                pooling=getattr(args, "baseline_pooling", "max")),
                                    cache_dir=args.cache_dir,
                                    labels=labels, thresholds=thresholds)
    except (WeightsUnavailableError, CheckpointError, ValueError, OSError) as error:
        raise UsageError(str(error)) from error


def register(subcommands: argparse._SubParsersAction) -> None:
    parser = subcommands.add_parser(
        "tag",
        help="tag images, folders and globs with any words",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=textwrap.dedent("""\
            Score every image against label words and write the tags above threshold, best first.

            Scorer: a trained ADDS head (--checkpoint DIR) or the training-free CLIP baseline (--model NAME
            --pretrained TAG|FILE; the default is ViT-B-32-quickgelu with OpenAI's weights). Scores are
            independent per label, in [0, 1], and do not sum to 1. A checkpoint's calibrated thresholds.tsv
            (adds calibrate) is used by default.

            Inputs: files, folders (searched recursively for image files; hidden entries skipped; symlinked
            folders followed, each real folder and each real file once) and glob patterns ('photos/**/*.jpg'),
            or a list of them with --from-file. A file that cannot be read (missing, empty, corrupt, truncated,
            not an image, a decompression bomb) is reported on stderr and in the output with its error; the rest
            are tagged.

            Large libraries: --output FILE --resume appends to FILE and skips what it already holds, so an
            interrupted run continues; under torchrun every process tags its share and the outputs are merged
            in input order:  torchrun --nproc_per_node=4 -m adds tag photos/ --output tags.jsonl

            Exit code: 0 all tagged; 1 some inputs failed; 2 bad arguments or nothing could run (no image found,
            none could be tagged); 130 interrupted; 141 output closed early (e.g. | head)."""),
        epilog="examples:\n"
        "  adds tag photos/ --labels dog,cat,beach,sunset\n"
        "  adds tag 'shots/**/*.jpg' --labels labels.txt --threshold 0.6 --format jsonl > tags.jsonl\n"
        "  adds tag photos/ --checkpoint runs/coco/best --output tags.jsonl --resume   # rerun after Ctrl+C\n"
        "  find /photos -name '*.jpg' | adds tag --from-file - --format csv --output tags.csv\n"
        "  adds tag photos/ --checkpoint runs/coco/best --write xmp          # photo.jpg.xmp sidecars\n"
        "  adds tag img.png --model ViT-B-32-quickgelu --pretrained ~/weights/ViT-B-32.pt   # offline, local file",
    )
    parser.add_argument("paths", nargs="*", metavar="PATHS", help="image files, folders or glob patterns")
    parser.add_argument("--from-file", metavar="F|-",
                        help="also tag the paths listed in F, one per line ('-' = standard input, not under torchrun); "
                        "each line is used like a PATHS argument")
    add_model_arguments(parser)
    out = parser.add_argument_group("output")
    out.add_argument(
        "--format", choices=FORMATS, default="table",
        help="table (readable), json (one array at the end), jsonl (one {path, tags, error} object per input, "
        "streamed), csv (path,label,score,error rows; an image without tags gets one row with empty label, a "
        "failed input one row with its error) (default: %(default)s)",
    )
    out.add_argument("-o", "--output", metavar="FILE",
                     help="write the results to FILE instead of standard output (replaced, unless --resume)")
    out.add_argument("--resume", action="store_true",
                     help="with --output and --format jsonl or csv: append to FILE and skip every input it already "
                     "holds (a partial last line from a killed run is dropped); failed inputs are not retried "
                     "unless --retry-failed")
    out.add_argument("--retry-failed", action="store_true",
                     help="with --resume: tag the inputs FILE records as failed again (a new record is appended; "
                     "the last record of a path is the current one)")
    out.add_argument("--write", action="append", choices=("xmp", "embedded"), default=None,
                     help="also write the tags where photo tools read them: 'xmp' creates or updates XMP sidecars "
                     "(dc:subject keywords, scores in the adds namespace; other fields and your own keywords are "
                     "kept); 'embedded' writes the same XMP into the image files themselves (changes your files: "
                     "only when asked). Needs the [xmp] extra (pyexiv2)")
    out.add_argument("--sidecar-name", choices=("full", "stem"), default="full",
                     help="sidecar file name: full = photo.jpg.xmp (digiKam, darktable), stem = photo.xmp "
                     "(Lightroom, Capture One) (default: %(default)s)")
    out.add_argument("--batch-size", type=int, default=16, metavar="N", help="images per forward pass (default: 16)")
    out.add_argument("--workers", type=int, default=2, metavar="N",
                     help="threads decoding images ahead of the model, overlapping it (0 = none; default: %(default)s)")
    out.add_argument("--fast-decode", action="store_true",
                     help="squash 8-bit images in 8 bits before converting them to float: about 2x cheaper "
                     "for large photos on a busy CPU; pixels within 2/255 of the default exact path (the one "
                     "adds eval uses), so scores move by ~1e-4")
    out.add_argument("--progress", choices=("auto", "on", "off"), default="auto",
                     help="progress bars on stderr (finding files, tagging; rank 0 only under torchrun); auto = when "
                     "stderr is a terminal (default: %(default)s)")
    parser.set_defaults(handler=run)


@dataclass
class _Counts:
    tagged: int = 0
    failed: int = 0
    done_ok: int = 0
    done_failed: int = 0
    interrupted: bool = False


def _fail(message: str) -> int:
    print(f"adds tag: error: {message}", file=sys.stderr)
    return 2


def run(args: argparse.Namespace) -> int:
    try:
        return _run(args)
    except KeyboardInterrupt:  # Ctrl+C while loading the model or finding files (the tagging loop handles its own)
        print("adds tag: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader went away (| head): stop quietly. Python's documented recipe: point stdout at devnull so the
        # interpreter's final flush does not raise again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_BROKEN_PIPE


def _check_arguments(args: argparse.Namespace) -> str | None:
    if args.batch_size < 1:
        return f"--batch-size must be >= 1, got {args.batch_size}"
    if args.workers < 0:
        return f"--workers must be >= 0, got {args.workers}"
    if args.top_k is not None and args.top_k < 1:
        return f"--top-k must be >= 1, got {args.top_k}"
    if args.threshold is not None and not 0.0 <= args.threshold <= 1.0:
        return f"--threshold must be in [0, 1], got {args.threshold}"
    if args.input_size is not None and args.input_size < 1:
        return f"--input-size must be >= 1, got {args.input_size}"
    if precision_name_problem(args.precision) is not None:
        return precision_name_problem(args.precision)
    if not args.paths and args.from_file is None:
        return "give image files, folders or globs, or --from-file F"
    if args.resume and args.output is None:
        return "--resume needs --output FILE (the file to continue)"
    if args.resume and args.format not in RESUMABLE:
        return f"--resume needs --format jsonl or csv (a {args.format} file cannot be appended to)"
    if args.retry_failed and not args.resume:
        return "--retry-failed only makes sense with --resume"
    if args.output is not None and os.path.isdir(args.output):
        return f"--output {args.output} is a folder; give a file name"
    if args.write:
        from adds.tagger.xmp import xmp_available

        missing = xmp_available()
        if missing is not None:
            return f"--write {','.join(args.write)}: {missing}"
    return None


def _key(path: str) -> str:
    return os.path.realpath(path)


def _progress(args: argparse.Namespace, shard) -> bool:
    if not shard.is_main or args.progress == "off":
        return False
    return args.progress == "on" or sys.stderr.isatty()


def _find(args: argparse.Namespace, shard, show: bool) -> tuple[list[str], list[str]]:
    from tqdm import tqdm

    from adds.tagger import find_images, read_path_list

    paths = list(args.paths)
    if args.from_file is not None:
        if args.from_file == "-" and shard.is_distributed:
            raise UsageError("--from-file - (standard input) cannot be shared by torchrun processes: give a file")
        try:
            paths += read_path_list(args.from_file)
        except ValueError as error:
            raise UsageError(str(error)) from error
    with tqdm(unit="file", desc="finding images", file=sys.stderr, disable=not show, leave=False) as bar:
        def found(count: int) -> None:
            bar.update(count - bar.n)

        return find_images(paths, on_found=found)


def _previous(args: argparse.Namespace, shard) -> list:
    """Records a resumed run already has: the output file, then every part file of earlier sharded runs."""
    from adds.tagger.output import read_results
    from adds.tagger.shards import part_files, part_path

    if not args.resume:
        return []
    records = []
    if os.path.isfile(args.output):
        records += read_results(args.output, args.format, repair=not shard.is_distributed)
    own = part_path(args.output, shard) if shard.is_distributed else None
    for part in part_files(args.output):
        records += read_results(part, "jsonl", repair=part == own)
    return records


def _scorer(args: argparse.Namespace, tagger) -> str:
    from adds import __version__

    info = tagger.describe()
    what = f"ADDS head {args.checkpoint}" if args.checkpoint else "CLIP baseline"
    if info.get("open_vocabulary"):
        what += " + open vocabulary"
    return f"adds {__version__}: {what} on {info['model']} ({info['pretrained'] or 'random weights'})"


def _write_metadata(args: argparse.Namespace, record, scorer: str) -> None:
    from adds.tagger.xmp import XmpError, write_embedded, write_sidecar

    image = os.path.realpath(record.path)  # beside the real file (where photo tools look), never over a symlink
    for kind in dict.fromkeys(args.write or ()):
        try:
            if kind == "xmp":
                write_sidecar(image, record.tags, scorer, naming=args.sidecar_name)
            else:
                write_embedded(image, record.tags, scorer)
        except XmpError as error:
            record.error = str(error)
            return


def _run(args: argparse.Namespace) -> int:
    problem = _check_arguments(args)  # before the heavy imports: an argument error answers at once
    if problem is not None:
        return _fail(problem)
    from tqdm import tqdm

    from adds.tagger import FileTags
    from adds.tagger.output import ResultWriter
    from adds.tagger.shards import join_torchrun, part_files, part_path

    try:
        shard = join_torchrun()
    except (ValueError, RuntimeError) as error:
        return _fail(f"cannot join the torchrun processes: {error}")
    try:
        show = _progress(args, shard)
        files, unmatched = _find(args, shard, show)
        if not files and not unmatched:
            return _fail("no image files to tag")
        previous = _previous(args, shard)
        device = None
        if shard.is_distributed and args.device is None:
            import torch

            device = f"cuda:{shard.local_rank}" if torch.cuda.is_available() else "cpu"
        tagger = build_tagger(args, device) if files else None
    except UsageError as error:
        shard.leave()
        return _fail(str(error))
    except ValueError as error:  # an unreadable results file to resume
        shard.leave()
        return _fail(str(error))

    last: dict[str, Any] = {}
    for record in previous:
        last[_key(record.path)] = record
    retry = args.retry_failed
    done = {key for key, record in last.items() if record.ok or not retry}
    counts = _Counts(done_ok=sum(record.tags is not None for record in last.values()),
                     done_failed=sum(not record.ok and not retry for record in last.values()))
    todo = [path for path in shard.take(files) if _key(path) not in done]
    missing = [path for path in unmatched if _key(path) not in done] if shard.is_main else []

    if args.output is not None and not args.resume and shard.is_main:
        for stale in part_files(args.output):  # parts of an earlier, interrupted sharded run into the same file
            stale.unlink()
    shard.barrier()
    collected: list[FileTags] = []
    if args.output is None and shard.is_distributed:
        sink = None
    elif args.output is None:
        sink = ResultWriter(args.format, sys.stdout)
    else:
        target = part_path(args.output, shard) if shard.is_distributed else args.output
        fmt = "jsonl" if shard.is_distributed else args.format
        append = args.resume and os.path.isfile(target)
        try:
            stream = open(target, "a" if append else "w", encoding="utf-8", newline="")  # noqa: SIM115 (closed below)
        except OSError as error:
            shard.leave()
            return _fail(f"--output {args.output}: {error.strerror or error}")
        sink = ResultWriter(fmt, stream, header=not (append and os.path.getsize(target) > 0),
                            sync=args.batch_size)

    def emit(record: FileTags) -> None:
        if sink is None:
            collected.append(record)
        else:
            sink.write(record)

    scorer = _scorer(args, tagger) if tagger is not None and args.write else ""
    try:
        with tqdm(total=len(todo), unit="img", file=sys.stderr, disable=not show, desc="tagging") as bar:
            for path in missing:
                counts.failed += 1
                reason = "no such file or directory, or no image matches the pattern"
                bar.write(f"adds tag: error: {path}: {reason}", file=sys.stderr)
                emit(FileTags(path=path, error=reason))
            for record in tagger.tag_files(todo, workers=args.workers) if todo else ():
                if record.ok and args.write:
                    _write_metadata(args, record, scorer)
                counts.tagged += record.tags is not None  # a failed sidecar write: tagged *and* failed
                if not record.ok:
                    counts.failed += 1
                    bar.write(f"adds tag: error: {record.path}: {record.error}", file=sys.stderr)
                emit(record)
                bar.update(1)
    except KeyboardInterrupt:
        counts.interrupted = True
    finally:
        if sink is not None:
            sink.close()
            if sink.stream is not sys.stdout:
                sink.stream.close()
    if counts.interrupted:
        again = " run the same command with --resume to continue" if args.output else ""
        print(f"adds tag: interrupted after {counts.tagged} image(s);{again}", file=sys.stderr)
        return EXIT_INTERRUPTED
    return _finish(args, shard, files, unmatched, counts, collected)


def _finish(args: argparse.Namespace, shard, files: list[str], unmatched: list[str], counts: _Counts,
            collected: list) -> int:
    """Merge the shards (rank 0), print the summary and pick the exit code (0 / 1 / 2, documented above)."""
    from adds.tagger.output import ResultWriter
    from adds.tagger.shards import in_input_order

    order = unmatched + files
    shard.barrier()
    totals = shard.gather((counts.tagged, counts.failed, collected if args.output is None else []))
    try:
        if not shard.is_main:
            return 0
        tagged = sum(t for t, _, _ in totals)
        failed = sum(f for _, f, _ in totals)
        if args.output is None and shard.is_distributed:
            writer = ResultWriter(args.format, sys.stdout)
            writer.write_all(in_input_order([r for _, _, part in totals for r in part], order))
            writer.close()
        elif args.output is None:
            pass
        else:
            _merge_parts(args, order)
    finally:
        shard.leave()
    if failed or counts.done_ok or counts.done_failed or args.output:
        already = f", {counts.done_ok + counts.done_failed} already in {args.output}" if args.resume else ""
        where = f" -> {args.output}" if args.output else ""
        print(f"adds tag: {tagged} image(s) tagged, {failed} failed{already}{where}", file=sys.stderr)
    failed += counts.done_failed
    if failed == 0:
        return 0
    return 1 if tagged + counts.done_ok else 2


def _merge_parts(args: argparse.Namespace, order: list[str]) -> None:
    """Append the records of every part file to ``--output`` in input order (skipping records the output already
    holds, so a merge interrupted after its rename is not repeated), atomically, then remove the parts."""
    import json
    import shutil
    import tempfile

    from adds.tagger.output import ResultWriter, read_results, record_to_dict
    from adds.tagger.shards import in_input_order, part_files

    parts = part_files(args.output)
    if not parts:
        return
    new = [record for part in parts for record in read_results(part, "jsonl")]
    keep_existing = args.resume and args.format in RESUMABLE and os.path.isfile(args.output)
    existing = read_results(args.output, args.format) if keep_existing else []
    seen = {json.dumps(record_to_dict(record), sort_keys=True) for record in existing}
    new = in_input_order([r for r in new if json.dumps(record_to_dict(r), sort_keys=True) not in seen], order)
    folder = os.path.dirname(os.path.abspath(args.output))
    handle, temporary = tempfile.mkstemp(prefix=".adds-merge-", dir=folder)
    with os.fdopen(handle, "w", encoding="utf-8", newline="") as stream:
        if keep_existing:
            with open(args.output, encoding="utf-8", newline="") as source:
                shutil.copyfileobj(source, stream)
        writer = ResultWriter(args.format, stream, header=not (keep_existing and os.path.getsize(args.output) > 0))
        writer.write_all(new)
        writer.close()
    os.replace(temporary, args.output)
    for part in parts:
        part.unlink()
