"""Label-embedding cache: hit vs miss for the 4,585-tag vocabulary (issue 6, item 4).

:class:`adds.prompts.LabelEmbedder` puts every label into each prompt template (the paper's two: "This photo contains
@.", "This is a @ photo."), encodes the prompts with the frozen text tower, averages the normalised prompt
embeddings and caches the result on the towers, keyed by (templates, label). A **miss** runs ``templates x labels``
prompts through the text tower; a **hit** is a dictionary look-up and a ``torch.stack``.

The vocabulary is the Recognize-Anything tag list (``../shared/data/labels/ram_tag_list_4585.txt`` next to the
repository). Encoding all 9,170 prompts through a ViT-B-32 text tower takes tens of minutes on two shared CPU
cores, so the miss is measured on a random subsample of ``--miss-labels`` tags (all of them with
``--miss-labels 0``) and extrapolated linearly to the full vocabulary (the text tower runs in fixed-size batches,
so its cost is linear in the number of prompts). The hit is measured on the whole vocabulary: entries of the tags
outside the subsample are filled with random unit vectors first -- the hit path never looks at the values.

Each round clears the subsample's cache entries, then times the miss, the hit on the subsample, and the hit on the
full vocabulary; the ratios are medians of per-round ratios. Towers have random weights (same cost as CLIP's).

**Before / after the truncated context** (measured side by side): open_clip's ``encode_text`` runs all 77 context
positions, but a prompt is ~10 tokens. CLIP's text transformer is causal and pools the end-of-text token, so the
positions after the longest prompt's end-of-text token cannot change the result. ``Towers.encode_text`` now cuts
the batch to that length (``truncate=True``, the library default); the table also times the old full-context path
(``truncate=False``) and reports the largest difference between the two.

**On-disk cache, first vs repeated start** (``--disk``, issue 12 item 1): a *start* is what ``adds tag`` / ``adds
serve`` pay for label embeddings: fresh towers (an empty memory cache), ``LabelEmbedder.use_disk_cache()`` (the
towers' identity, hashed into the key) and the embeddings of the whole vocabulary. On the tiny tower both starts
are measured end to end with the whole vocabulary, each round in a new empty cache folder: the first start encodes
and writes every label, the repeated one reads them back. On ``--model`` (ViT-B-32) the first start is the measured
miss rate (``--miss-labels`` tags) times the vocabulary plus the measured write; the repeated start is measured for
real: the cache holds the subsample's real vectors and stand-ins for the rest (the read path never looks at values)
and a fresh embedder reads all 4,585.

Examples::

    python benchmarks/text_cache.py --quick
    python benchmarks/text_cache.py --miss-labels 256 --repeats 2
    python benchmarks/text_cache.py --disk --miss-labels 64 --repeats 3 --threads 1
"""

from __future__ import annotations

import argparse
import logging
import random
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from _common import environment, write_result  # benchmarks/ is on sys.path when run
from tqdm import tqdm

from adds.label_cache import LabelCacheConfig
from adds.prompts import LabelEmbedder, resolve_templates, validate_labels
from adds.towers import TINY_MODEL, TowerConfig, Towers, load_towers

logger = logging.getLogger(__name__)

DEFAULT_OUT = Path(__file__).parent / "results" / "text_cache.json"
# The built-in vocabulary of adds tag (the same file as ../shared/data/labels/ram_tag_list_4585.txt).
DEFAULT_VOCABULARY = Path(__file__).resolve().parents[1] / "src" / "adds" / "resources" / "ram_tag_list_4585.txt"


@dataclass(frozen=True)
class TextCacheBenchConfig:
    """What to measure.

    Attributes:
        model: open_clip model whose text tower encodes the prompts (random weights).
        vocabulary: a text file with one label per line.
        templates: prompt template set (``"paper"``, ``"clip80"``) -- the miss cost scales with their number.
        miss_labels: size of the random subsample whose miss is timed (``0`` or more than the vocabulary: all).
        batch_size: prompts per text-tower call (``LabelEmbedder.batch_size``).
        repeats: rounds (the miss is re-timed each round after clearing the subsample's entries).
        threads: ``torch.set_num_threads`` (``None``: torch's default).
        seed: seed of the towers and of the subsample.
    """

    model: str = "ViT-B-32"
    vocabulary: str = str(DEFAULT_VOCABULARY)
    templates: str = "paper"
    miss_labels: int = 256
    batch_size: int = 1024
    repeats: int = 2
    threads: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.miss_labels < 0 or self.repeats < 1 or self.batch_size < 1:
            raise ValueError("miss_labels must be >= 0, repeats and batch_size >= 1")


def read_vocabulary(path: str | Path) -> list[str]:
    """Labels of a one-per-line text file (blank lines skipped), validated (no duplicates)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"vocabulary file {path} not found (pass --vocabulary)")
    labels = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    try:
        return validate_labels(labels)
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from error


@torch.no_grad()
def _ensemble(towers: Towers, labels: list[str], templates: tuple[str, ...], batch_size: int) -> torch.Tensor:
    """``LabelEmbedder``'s prompt ensembling with the full 77-position text context (the library before it cut the
    token batch after the last end-of-text token) -> ``(k, D)``."""
    per_call = max(1, batch_size // len(templates))
    out = []
    for start in range(0, len(labels), per_call):
        chunk = labels[start:start + per_call]
        prompts = [template.format(label) for label in chunk for template in templates]
        emb = F.normalize(towers.encode_text(prompts, truncate=False), dim=-1)  # (m * t, D)
        out.append(F.normalize(emb.view(len(chunk), len(templates), -1).mean(dim=1), dim=-1))  # (m, D)
    return torch.cat(out).cpu()


def run(config: TextCacheBenchConfig) -> dict:
    """Time cache misses and hits; returns the JSON-able result."""
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    vocabulary = read_vocabulary(config.vocabulary)
    towers = load_towers(TowerConfig(model=config.model, pretrained=None, seed=config.seed))
    embedder = LabelEmbedder(towers, config.templates, batch_size=config.batch_size)
    templates = resolve_templates(config.templates)
    m = len(vocabulary) if config.miss_labels == 0 or config.miss_labels >= len(vocabulary) else config.miss_labels
    subsample = random.Random(config.seed).sample(vocabulary, m)
    in_subsample = set(subsample)
    generator = torch.Generator().manual_seed(config.seed)
    for label in vocabulary:  # the hit path only looks values up; the rest of the vocabulary gets stand-ins
        if label not in in_subsample:
            stand_in = torch.randn(towers.embed_dim, generator=generator)  # (D,)
            towers.text_cache[(templates, label)] = F.normalize(stand_in, dim=0)

    times: dict[str, list[float]] = {"miss": [], "hit_subsample": [], "hit_vocabulary": [], "miss_full_context": []}
    consistent = True
    truncated_error = 0.0
    for _ in tqdm(range(config.repeats), desc="rounds", file=sys.stderr, leave=False):
        for label in subsample:
            towers.text_cache.pop((templates, label), None)
        start = time.perf_counter()
        missed = embedder(subsample)  # (m, D): every label encoded
        times["miss"].append(time.perf_counter() - start)
        start = time.perf_counter()
        hit = embedder(subsample)  # (m, D): from the cache
        times["hit_subsample"].append(time.perf_counter() - start)
        start = time.perf_counter()
        embedder(vocabulary)  # (4585, D): from the cache
        times["hit_vocabulary"].append(time.perf_counter() - start)
        consistent = consistent and torch.equal(missed, hit)
        start = time.perf_counter()
        full_context = _ensemble(towers, subsample, templates, config.batch_size)  # (m, D), the old path
        times["miss_full_context"].append(time.perf_counter() - start)
        truncated_error = max(truncated_error, float((full_context - missed.cpu()).abs().max()))
    ratios = [miss / hit for miss, hit in zip(times["miss"], times["hit_subsample"], strict=True)]
    miss_per_label = statistics.median(times["miss"]) / m
    hit_vocabulary = statistics.median(times["hit_vocabulary"])
    miss_vocabulary = miss_per_label * len(vocabulary)
    return {
        "benchmark": "text_cache",
        "config": asdict(config),
        "environment": environment(),
        "vocabulary_size": len(vocabulary),
        "templates": len(templates),
        "miss_labels": m,
        "miss_prompts": m * len(templates),
        "seconds": times,
        "median_seconds": {name: statistics.median(values) for name, values in times.items()},
        "miss_seconds_per_label": miss_per_label,
        "hit_seconds_per_label": statistics.median(times["hit_subsample"]) / m,
        "ratio_miss_over_hit_same_labels": statistics.median(ratios),
        "miss_vocabulary_seconds": miss_vocabulary,
        "miss_vocabulary_extrapolated": m < len(vocabulary),
        "hit_vocabulary_seconds": hit_vocabulary,
        "ratio_miss_over_hit_vocabulary": miss_vocabulary / hit_vocabulary,
        "hit_equals_miss": consistent,
        "ratio_full_context_over_miss": statistics.median(
            a / b for a, b in zip(times["miss_full_context"], times["miss"], strict=True)),
        "truncated_max_abs_difference": truncated_error,
        "counters": {"hits": embedder.hits, "misses": embedder.misses},
    }




def _start(towers: Towers, vocabulary: list[str], config: TextCacheBenchConfig,
           root: str) -> tuple[float, LabelEmbedder, torch.Tensor]:
    """One start: a fresh embedder with the disk cache under ``root``, the whole vocabulary -> seconds, embedder,
    embeddings."""
    towers.text_cache.clear()
    start = time.perf_counter()
    embedder = LabelEmbedder(towers, config.templates, batch_size=config.batch_size)
    embedder.use_disk_cache(config=LabelCacheConfig(root=root))
    embeddings = embedder(vocabulary)  # (k, D)
    return time.perf_counter() - start, embedder, embeddings


def run_disk(config: TextCacheBenchConfig, tiny_model: str = TINY_MODEL) -> dict:
    """First vs repeated start with the on-disk label cache (see the module docstring)."""
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    vocabulary = read_vocabulary(config.vocabulary)
    templates = resolve_templates(config.templates)
    tiny: dict[str, list[float]] = {"first": [], "repeated": [], "identity": []}
    exact = True
    for _ in tqdm(range(config.repeats), desc="tiny tower starts", file=sys.stderr, leave=False):
        with tempfile.TemporaryDirectory(prefix="adds-label-cache-") as root:
            towers = load_towers(TowerConfig(model=tiny_model, pretrained=None, seed=config.seed))
            first, embedder, computed = _start(towers, vocabulary, config, root)
            assert embedder.encoded == len(vocabulary)
            towers = load_towers(TowerConfig(model=tiny_model, pretrained=None, seed=config.seed))  # a new process
            repeated, embedder, loaded = _start(towers, vocabulary, config, root)
            assert embedder.encoded == 0 and embedder.disk_hits == len(vocabulary)
            exact = exact and torch.equal(computed, loaded)
            start = time.perf_counter()
            towers.identity()
            tiny["identity"].append(time.perf_counter() - start)
            tiny["first"].append(first)
            tiny["repeated"].append(repeated)

    towers = load_towers(TowerConfig(model=config.model, pretrained=None, seed=config.seed))
    m = len(vocabulary) if config.miss_labels == 0 or config.miss_labels >= len(vocabulary) else config.miss_labels
    subsample = random.Random(config.seed).sample(vocabulary, m)
    large: dict[str, list[float]] = {"miss": [], "write": [], "repeated": [], "identity": []}
    generator = torch.Generator().manual_seed(config.seed)
    stand_ins = F.normalize(torch.randn(len(vocabulary), towers.embed_dim, generator=generator), dim=-1)  # (k, D)
    for _ in tqdm(range(config.repeats), desc=f"{config.model} starts", file=sys.stderr, leave=False):
        with tempfile.TemporaryDirectory(prefix="adds-label-cache-") as root:
            towers.text_cache.clear()
            embedder = LabelEmbedder(towers, config.templates, batch_size=config.batch_size)
            cache = embedder.use_disk_cache(config=LabelCacheConfig(root=root))
            start = time.perf_counter()
            real = embedder._encode(subsample)  # label -> (D,): the text tower only
            large["miss"].append(time.perf_counter() - start)
            vectors = {label: real.get(label, stand_ins[i]) for i, label in enumerate(vocabulary)}
            start = time.perf_counter()
            cache.put(vectors)  # what the first start writes after encoding
            large["write"].append(time.perf_counter() - start)
            repeated, embedder, loaded = _start(towers, vocabulary, config, root)
            assert embedder.encoded == 0
            index = {label: i for i, label in enumerate(vocabulary)}
            exact = exact and all(torch.equal(loaded[index[label]], real[label]) for label in subsample)
            start = time.perf_counter()
            towers.identity()
            large["identity"].append(time.perf_counter() - start)
            large["repeated"].append(repeated)
    median = statistics.median
    miss_per_label = median(large["miss"]) / m
    first_large = miss_per_label * len(vocabulary) + median(large["write"])
    return {
        "benchmark": "text_cache_disk",
        "config": asdict(config),
        "environment": environment(),
        "vocabulary_size": len(vocabulary),
        "templates": len(templates),
        "tiny": {"model": tiny_model, "seconds": tiny, "first_s": median(tiny["first"]),
                 "repeated_s": median(tiny["repeated"]), "identity_s": median(tiny["identity"]),
                 "ratio_first_over_repeated": median(a / b for a, b in zip(tiny["first"], tiny["repeated"],
                                                                           strict=True))},
        "large": {"model": config.model, "miss_labels": m, "seconds": large, "miss_s_per_label": miss_per_label,
                  "write_s": median(large["write"]), "first_s_extrapolated": first_large,
                  "repeated_s": median(large["repeated"]), "identity_s": median(large["identity"]),
                  "ratio_first_over_repeated": first_large / median(large["repeated"])},
        "repeated_start_goal_s": 2.0,
        "goal_met": median(large["repeated"]) < 2.0,
        "hit_equals_miss": exact,
    }


def format_disk_table(result: dict) -> str:
    tiny, large = result["tiny"], result["large"]
    k = result["vocabulary_size"]
    return "\n".join([
        "| tower | labels | first start s | repeated start s | first / repeated | of which towers.identity() s |",
        "|---|---|---|---|---|---|",
        f"| {tiny['model']} | {k} | {tiny['first_s']:.3g} | {tiny['repeated_s']:.3g} "
        f"| {tiny['ratio_first_over_repeated']:.0f}x | {tiny['identity_s']:.3g} |",
        f"| {large['model']} | {k} | {large['first_s_extrapolated']:.3g} (extrapolated: {large['miss_labels']} labels "
        f"at {large['miss_s_per_label'] * 1e3:.3g} ms + write {large['write_s']:.3g} s) | {large['repeated_s']:.3g} "
        f"| {large['ratio_first_over_repeated']:.0f}x | {large['identity_s']:.3g} |",
        "",
        f"repeated start goal < {result['repeated_start_goal_s']} s on {large['model']}: "
        f"{'met' if result['goal_met'] else 'missed'}; hit == miss bit for bit: {result['hit_equals_miss']}",
    ])


def format_table(result: dict) -> str:
    extrapolated = " (extrapolated from {} labels)".format(result["miss_labels"]) \
        if result["miss_vocabulary_extrapolated"] else ""
    return "\n".join([
        "| what | labels | seconds | per label |",
        "|---|---|---|---|",
        f"| miss (encode {result['templates']} prompts per label, truncated context) | {result['miss_labels']} "
        f"| {result['median_seconds']['miss']:.3g} | {result['miss_seconds_per_label'] * 1e3:.3g} ms |",
        f"| miss, full 77-position context (before) | {result['miss_labels']} "
        f"| {result['median_seconds']['miss_full_context']:.3g} "
        f"| {result['median_seconds']['miss_full_context'] / result['miss_labels'] * 1e3:.3g} ms |",
        f"| hit, same labels | {result['miss_labels']} | {result['median_seconds']['hit_subsample']:.3g} "
        f"| {result['hit_seconds_per_label'] * 1e6:.3g} us |",
        f"| hit, whole vocabulary | {result['vocabulary_size']} | {result['hit_vocabulary_seconds']:.3g} "
        f"| {result['hit_vocabulary_seconds'] / result['vocabulary_size'] * 1e6:.3g} us |",
        "",
        f"miss / hit on the same labels: {result['ratio_miss_over_hit_same_labels']:.0f}x; whole vocabulary: miss "
        f"{result['miss_vocabulary_seconds']:.0f} s{extrapolated} vs hit {result['hit_vocabulary_seconds']:.3g} s "
        f"= {result['ratio_miss_over_hit_vocabulary']:.0f}x; hit == miss: {result['hit_equals_miss']}",
        f"truncated context: miss {result['ratio_full_context_over_miss']:.1f}x faster, largest difference "
        f"{result['truncated_max_abs_difference']:.1e}",
    ])


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] + " Prints a table of ratios and writes JSON.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    defaults = TextCacheBenchConfig()
    parser.add_argument("--model", default=defaults.model, help="open_clip model (random weights)")
    parser.add_argument("--vocabulary", default=defaults.vocabulary, help="one label per line (default: RAM 4585)")
    parser.add_argument("--templates", default=defaults.templates, help="'paper' (2 templates) or 'clip80'")
    parser.add_argument("--miss-labels", type=int, default=defaults.miss_labels,
                        help="labels whose miss is timed (0 = the whole vocabulary: tens of minutes on 2 cores)")
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size, help="prompts per text-tower call")
    parser.add_argument("--repeats", type=int, default=defaults.repeats, help="rounds (median reported)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--quick", action="store_true", help="64 labels missed, 2 rounds")
    parser.add_argument("--disk", action="store_true",
                        help="first vs repeated start with the on-disk label cache (tiny tower and --model)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"JSON output (default: {DEFAULT_OUT})")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    config = TextCacheBenchConfig(
        model=args.model, vocabulary=args.vocabulary, templates=args.templates,
        miss_labels=64 if args.quick else args.miss_labels, batch_size=args.batch_size,
        repeats=2 if args.quick else args.repeats, threads=args.threads,
    )
    if args.disk:
        result = run_disk(config)
        out = args.out if args.out != DEFAULT_OUT else DEFAULT_OUT.with_name("text_cache_disk.json")
        write_result(result, format_disk_table(result), out)
        return 0
    result = run(config)
    write_result(result, format_table(result), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
