"""Large-vocabulary shortlist vs full decoding on the toy world with 4,585 distractor tags (issue 12.6).

Per seed, on the toy world of ``src/adds/toyworld`` (the full run's sizes: 1,200 training / 500 test scenes; with
the quick run's 600 / 300 the heads stay below the training-free cosine's mAP, which makes the comparison moot):

1. heads are trained on the 160 toy-world v2 labels with the lab's recipe (``train_head``: ASL, Adam, OneCycle on
   cached tokens): the toy world's two-layer DM-decoder (Table 1's head), and as controls a one-layer DM-decoder
   and a two-layer ML-Decoder (a label's logit does not depend on the other labels in either);
2. the vocabulary is the 160 toy labels **plus the 4,585 everyday tags** of the built-in vocabulary as distractors
   (``src/adds/resources/ram_tag_list_4585.txt``, embedded by the toy CLIP's text tower with the paper's templates):
   ``k`` = 160 + the distractors (4,745 with all of them; tags equal to a toy label are dropped) in one call;
3. on the test scenes (mAP over the 160 toy labels, the only ones with ground truth):

   * **full**: the head on all ``k`` labels (the reference of the goal);
   * **toy only**: the head on the 160 toy labels alone (what the label set does to a DM-decoder);
   * **cosine**: the first pass alone (training-free class-token cosine);
   * **shortlist M**: :func:`adds.shortlist.shortlist` for several ``M`` -- mAP, its ratio to full decoding,
     the first pass's recall (share of the positive (image, concept) pairs inside the shortlist), the share of
     full decoding's top-5 labels per image (whole vocabulary: what a tagger shows) that the shortlist keeps, and
     the mean abs logit change of shortlisted concepts against the full call;
   * **oracle first pass** (two-layer DM head): the shortlist picked by the full call's own logits (its cost not
     counted) -- what the fill and the smaller label set cost when the first pass makes no mistakes;
   * **one-layer first pass**: the trained one-layer DM head ranks all labels, the two-layer head scores its top M.

Speed (same run, interleaved rounds, median of per-round ratios; :func:`_common.interleaved_times`):

* **toy head**: full decoding of a batch of test images vs the shortlist (first pass + head on ``M``), tokens
  precomputed (what the shortlist changes), and end to end with the toy tower's forward included;
* **paper head** (speed only, random weights): ViT-B-32's joint width 512, six DM-decoder layers (8 heads, FFN 2048),
  50 tokens per image, the same ``k``, where the head is ~20x the tower (issue 12).

Goal: >= 10x faster than full decoding with >= 99 % of its mAP.

    OMP_NUM_THREADS=1 python benchmarks/shortlist.py                  # 3 seeds, ~12 min on one core
    python benchmarks/shortlist.py --diagnose-only                    # the first pass's recall and variants, ~1 min
    python benchmarks/shortlist.py --quick                            # 1 seed, small sizes (smoke test)
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import environment, interleaved_times, median_ratio, write_result  # noqa: E402

from adds.decoder import DecoderConfig  # noqa: E402
from adds.metrics import mean_average_precision  # noqa: E402
from adds.model import ADDS, ADDSConfig  # noqa: E402
from adds.openvocab import prior_cosine  # noqa: E402
from adds.prompts import LabelEmbedder  # noqa: E402
from adds.pyramid import PyramidConfig, PyramidForwarding  # noqa: E402
from adds.shortlist import ShortlistConfig, shortlist  # noqa: E402
from adds.tagger.vocabulary import builtin_tags  # noqa: E402
from adds.towers import TowerConfig, load_towers  # noqa: E402
from adds.toyworld.lab import LabConfig as ToyWorldConfig  # noqa: E402
from adds.toyworld.lab import build_seed, train_head  # noqa: E402
from adds.toyworld.toyclip import load_toy_towers  # noqa: E402
from adds.toyworld.world import VOCABULARY  # noqa: E402

DEFAULT_OUT = Path(__file__).parent / "results" / "shortlist.json"
HEADS = {
    "dm2": DecoderConfig(num_layers=2, num_heads=4, ffn_dim=128),  # the toy world's head (Table 1)
    "dm1": DecoderConfig(num_layers=1, num_heads=4, ffn_dim=128),
    "ml2": DecoderConfig(kind="ml", num_layers=2, num_heads=4, ffn_dim=128),
}


def _map(logits: torch.Tensor, targets: torch.Tensor) -> float:
    return 100 * mean_average_precision(logits.float(), targets)


@torch.no_grad()
def _chunked(fn, tokens: torch.Tensor, batch: int = 50) -> torch.Tensor:
    return torch.cat([fn(tokens[i:i + batch]) for i in range(0, tokens.shape[0], batch)])


def distractor_embeddings(towers, count: int | None = None) -> tuple[list[str], torch.Tensor]:
    """The built-in tags that are not toy concepts, embedded by the toy text tower -> (names, (n, D))."""
    concepts = set(VOCABULARY.labels)
    names = [tag for tag in builtin_tags() if tag not in concepts][:count]
    with torch.no_grad():
        return names, LabelEmbedder(towers)(names)


def quality(seed: int, config: ToyWorldConfig, towers, distractors: torch.Tensor, sizes: list[int],
            heads: list[str]) -> tuple[dict, dict]:
    """mAP rows of one seed, and the trained heads plus test tokens for the timing."""
    world = build_seed(config, seed, towers)
    concepts = world.labels  # (160, D): every toy-world label
    vocabulary = torch.cat([concepts, distractors])  # (k, D): the 160 toy labels first
    c = concepts.shape[0]
    targets = world.test_targets  # (N, C)
    tokens = world.test_tokens  # (N, T, D)
    tpc = towers.tokens_per_image
    rows: dict[str, float] = {}
    cosine = prior_cosine(tokens, vocabulary, tpc)  # (N, k)
    rows["cosine (first pass) mAP"] = _map(cosine[:, :c], targets)
    trained, full_maps = {}, {}
    for name in heads:
        head = train_head(towers, world.train_tokens, world.train_targets, concepts, config, seed, HEADS[name])
        trained[name] = head
        full_all = _chunked(lambda t, head=head: head.forward_head(t, vocabulary), tokens)  # (N, k)
        full = full_all[:, :c]  # (N, C)
        top_full = full_all.topk(5, dim=1).indices  # (N, 5): what a tagger shows, whole vocabulary
        alone = _chunked(lambda t, head=head: head.forward_head(t, concepts), tokens)  # (N, C)
        rows[f"{name} full mAP"] = full_map = _map(full, targets)
        full_maps[name] = full_map
        rows[f"{name} toy-only mAP"] = _map(alone, targets)
        rows[f"{name} full vs toy-only mean abs dlogit"] = float((full - alone).abs().mean())
        for size in sizes:
            config_m = ShortlistConfig(size=size)
            outs = [shortlist(head, tokens[i:i + 50], vocabulary, config_m) for i in range(0, tokens.shape[0], 50)]
            logits_all = torch.cat([o.logits for o in outs])  # (N, k)
            logits = logits_all[:, :c]  # (N, C)
            top = logits_all.topk(5, dim=1).indices  # (N, 5)
            same = (top.unsqueeze(2) == top_full.unsqueeze(1)).any(dim=2).float().mean()  # share of full's top 5
            rows[f"{name} M={size} top-5 agreement"] = float(same)
            mask = torch.cat([o.mask for o in outs])[:, :c]  # (N, C)
            rows[f"{name} M={size} mAP"] = m = _map(logits, targets)
            rows[f"{name} M={size} mAP ratio"] = m / full_map
            positives = targets.bool()
            rows[f"M={size} recall"] = float(mask[positives].float().mean())
            rows[f"{name} M={size} vs full mean abs dlogit (shortlisted)"] = float((logits - full)[mask].abs().mean())
            if name == "dm2":  # a perfect first pass: the full call's own logits (its cost not counted)
                oracle = [shortlist(head, tokens[i:i + 50], vocabulary, config_m,
                                    first_pass=lambda t, e, s=full_all[i:i + 50]: s) for i in range(0, len(tokens), 50)]
                oracle_logits = torch.cat([o.logits for o in oracle])[:, :c]  # (N, C)
                oracle_mask = torch.cat([o.mask for o in oracle])[:, :c]
                rows[f"{name} M={size} oracle first pass mAP ratio"] = _map(oracle_logits, targets) / full_map
                rows[f"M={size} oracle first pass recall"] = float(oracle_mask[positives].float().mean())
    if "dm1" in trained:  # the one-layer DM head as the first pass of the two-layer one
        small, head = trained["dm1"], trained["dm2"]
        for size in sizes:
            outs = [shortlist(head, tokens[i:i + 50], vocabulary, ShortlistConfig(size=size),
                              first_pass=small.forward_head) for i in range(0, tokens.shape[0], 50)]
            logits = torch.cat([o.logits for o in outs])[:, :c]  # (N, C)
            mask = torch.cat([o.mask for o in outs])[:, :c]
            rows[f"dm2 M={size} dm1 first pass mAP ratio"] = _map(logits, targets) / full_maps["dm2"]
            rows[f"M={size} dm1 first pass recall"] = float(mask[targets.bool()].float().mean())
    return rows, {"heads": trained, "tokens": tokens, "vocabulary": vocabulary, "world": world}


def diagnose_only(args, config: ToyWorldConfig, towers, names: list[str], distractors: torch.Tensor,
                  sizes: list[int]) -> int:
    seed = int(args.seeds.split(",")[0])
    world = build_seed(config, seed, towers)
    vocabulary = torch.cat([world.labels, distractors])
    diagnosis = first_pass_diagnosis(world, towers, vocabulary, [*VOCABULARY.labels, *names], sizes)
    result = {"environment": environment(), "seed": seed, "k": vocabulary.shape[0], "diagnosis": diagnosis}
    lines = ["| first pass | " + " | ".join(f"recall M={m}" for m in sizes) + " |", "|---|" + "---|" * len(sizes)]
    for name, values in diagnosis["recall"].items():
        lines.append(f"| {name} | " + " | ".join(f"{values[str(m)]:.3f}" for m in sizes) + " |")
    lines.append(f"\nlabels in the top 256 of > 90 % of images: {diagnosis['labels_in_top256_of_over_90pct_images']}; "
                 f"distinct labels there: {diagnosis['distinct_labels_in_top256']}; most frequent: "
                 + ", ".join(diagnosis["most_frequent_in_top256"]))
    out = args.out if args.out != DEFAULT_OUT else DEFAULT_OUT.with_name("shortlist_first_pass.json")
    write_result(result, "\n".join(lines), out)
    return 0


@torch.no_grad()
def first_pass_diagnosis(world, towers, vocabulary: torch.Tensor, names: list[str], sizes: list[int]) -> dict:
    """Why the cosine misses positives: hub labels?, which tags outrank the concepts, and the recall of variants
    (per-label centring / z-scoring with training-image statistics, adding the best patch-token cosine)."""
    c = len(VOCABULARY)
    tokens, targets, tpc = world.test_tokens, world.test_targets.bool(), towers.tokens_per_image
    labels = F.normalize(vocabulary.float(), dim=-1)  # (k, D)
    cosine = prior_cosine(tokens, vocabulary, tpc)  # (N, k)
    train_cls = F.normalize(world.train_tokens[:, ::tpc].float(), dim=-1).reshape(-1, labels.shape[1])  # (R, D)
    train_cos = train_cls @ labels.t()  # (R, k)
    patches = torch.einsum("ntd,kd->ntk", F.normalize(tokens.float(), dim=-1)[:, 1:tpc], labels).amax(dim=1)
    variants = {
        "cosine": cosine,
        "centred per label": cosine - train_cos.mean(dim=0),
        "z-scored per label": (cosine - train_cos.mean(dim=0)) / train_cos.std(dim=0),
        "cosine + best patch cosine": cosine + patches,
    }

    def recall(scores: torch.Tensor, m: int) -> float:
        top = scores.topk(m, dim=1).indices
        mask = torch.zeros_like(scores, dtype=torch.bool).scatter_(1, top, True)[:, :c]
        return float(mask[targets].float().mean())

    top256 = cosine.topk(256, dim=1).indices
    counts = torch.bincount(top256.flatten(), minlength=labels.shape[0])  # (k,): images with the label in top 256
    frequent = counts.argsort(descending=True)[:10].tolist()
    return {
        "recall": {name: {str(m): recall(v, m) for m in sizes} for name, v in variants.items()},
        "labels_in_top256_of_over_90pct_images": int((counts > 0.9 * tokens.shape[0]).sum()),
        "distinct_labels_in_top256": int((counts > 0).sum()),
        "most_frequent_in_top256": [names[i] for i in frequent],
    }


def timing(state: dict, towers, sizes: list[int], batch: int, repeats: int, warmup: int) -> dict:
    """Toy head: full vs shortlist, head only and with the tower; seconds per call."""
    head = state["heads"]["dm2"]
    vocabulary = state["vocabulary"]
    tokens = state["tokens"][:batch]  # (b, T, D)
    images = torch.rand(batch, 3, towers.image_size, towers.image_size)
    pyramid = PyramidForwarding(towers.image_size, towers.mean, towers.std, PyramidConfig())

    def features():
        return pyramid(images, towers.encode_image_tokens)

    cases = {"full": lambda: head.forward_head(tokens, vocabulary)}
    cases |= {f"M={m}": (lambda m=m: shortlist(head, tokens, vocabulary, ShortlistConfig(size=m))) for m in sizes}
    if "dm1" in state["heads"]:
        small = state["heads"]["dm1"]
        cases |= {f"M={m} dm1": (lambda m=m: shortlist(head, tokens, vocabulary, ShortlistConfig(size=m),
                                                        first_pass=small.forward_head)) for m in sizes}
    cases |= {"tower+full": lambda: head.forward_head(features(), vocabulary)}
    cases |= {f"tower+M={m}": (lambda m=m: shortlist(head, features(), vocabulary, ShortlistConfig(size=m)))
              for m in sizes}
    with torch.inference_mode():
        times = interleaved_times(cases, repeats, warmup, desc="toy head")
    speed = {f"head M={m}": median_ratio(times, "full", f"M={m}") for m in sizes}
    speed |= {f"end-to-end M={m}": median_ratio(times, "tower+full", f"tower+M={m}") for m in sizes}
    speed |= {f"head M={m} dm1": median_ratio(times, "full", f"M={m} dm1") for m in sizes if f"M={m} dm1" in times}
    return {"speedup": speed, "times": times, "batch": batch}


def paper_timing(k: int, sizes: list[int], batch: int, repeats: int, warmup: int, quick: bool) -> dict:
    """Speed only: a paper-sized head (random weights) on random ViT-B-32-shaped tokens."""
    model = "adds-tiny-vit" if quick else "ViT-B-32-quickgelu"
    towers = load_towers(TowerConfig(model=model, pretrained=None, seed=0))
    decoder = DecoderConfig(num_layers=2, num_heads=2, ffn_dim=64) if quick else DecoderConfig()
    head = ADDS(ADDSConfig(towers=towers.config, decoder=decoder), towers=towers).eval()
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randn(batch, towers.tokens_per_image, towers.embed_dim, generator=generator)  # (b, 50, 512)
    labels = F.normalize(torch.randn(k, towers.embed_dim, generator=generator), dim=-1)  # (k, 512)
    small = ADDS(ADDSConfig(towers=towers.config, decoder=replace(decoder, num_layers=1)), towers=towers).eval()
    cases = {"full": lambda: head.forward_head(tokens, labels)}
    cases |= {f"M={m}": (lambda m=m: shortlist(head, tokens, labels, ShortlistConfig(size=m))) for m in sizes}
    cases |= {f"M={m} one-layer": (lambda m=m: shortlist(head, tokens, labels, ShortlistConfig(size=m),
                                                         first_pass=small.forward_head)) for m in sizes}
    with torch.inference_mode():
        times = interleaved_times(cases, repeats, warmup, desc="paper head")
    speedup = {f"head M={m}": median_ratio(times, "full", f"M={m}") for m in sizes}
    speedup |= {f"head M={m} one-layer": median_ratio(times, "full", f"M={m} one-layer") for m in sizes}
    return {"model": model, "decoder": decoder.__dict__, "k": k, "batch": batch, "times": times, "speedup": speedup}


def _cell(values: list[float], digits: int = 2) -> str:
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.{digits}f} ± {std:.{digits}f}"


def table(result: dict) -> str:
    rows = result["rows"]
    speed = result["timing"]["speedup"]
    paper = result["paper_timing"]["speedup"]
    lines = ["| M | recall | dm2 mAP | dm2 / full | dm1 / full | ml2 / full | dm2 top-5 agreement | toy head speed-up "
             "| toy end-to-end | paper head speed-up |", "|---|---|---|---|---|---|---|---|---|---|"]
    for m in result["sizes"]:
        ratio = {h: _cell([100 * v for v in rows[f"{h} M={m} mAP ratio"]], 1) + " %" if f"{h} M={m} mAP ratio" in rows
                 else "-" for h in ("dm2", "dm1", "ml2")}
        lines.append(f"| {m} | {_cell(rows[f'M={m} recall'], 3)} | {_cell(rows[f'dm2 M={m} mAP'])} | {ratio['dm2']} "
                     f"| {ratio['dm1']} | {ratio['ml2']} | {_cell(rows[f'dm2 M={m} top-5 agreement'], 3)} "
                     f"| {speed[f'head M={m}']:.1f}x "
                     f"| {speed[f'end-to-end M={m}']:.1f}x | {paper[f'head M={m}']:.1f}x |")
    lines.append("")
    lines.append("| M | oracle first pass: recall | oracle: dm2 / full | cosine shortlist: dm2 mean abs dlogit |")
    lines.append("|---|---|---|---|")
    for m in result["sizes"]:
        lines.append(f"| {m} | {_cell(rows[f'M={m} oracle first pass recall'], 3)} "
                     f"| {_cell([100 * v for v in rows[f'dm2 M={m} oracle first pass mAP ratio']], 1)} % "
                     f"| {_cell(rows[f'dm2 M={m} vs full mean abs dlogit (shortlisted)'], 3)} |")
    if f"dm2 M={result['sizes'][0]} dm1 first pass mAP ratio" in rows:
        lines.append("")
        lines.append("| M | one-layer first pass (dm1): recall | dm2 / full | toy head speed-up | paper head |")
        lines.append("|---|---|---|---|---|")
        for m in result["sizes"]:
            lines.append(f"| {m} | {_cell(rows[f'M={m} dm1 first pass recall'], 3)} "
                         f"| {_cell([100 * v for v in rows[f'dm2 M={m} dm1 first pass mAP ratio']], 1)} % "
                         f"| {speed[f'head M={m} dm1']:.1f}x | {paper[f'head M={m} one-layer']:.1f}x |")
    lines.append("")
    lines.append(f"| reference (k = {result['k']}) | mAP |")
    lines.append("|---|---|")
    kinds = ("full mAP", "toy-only mAP", "full vs toy-only mean abs dlogit")
    for name in ("cosine (first pass) mAP", *[f"{h} {w}" for h in result["heads"] for w in kinds]):
        lines.append(f"| {name} | {_cell(rows[name])} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--sizes", default="16,32,64,128,256,512", help="shortlist sizes M")
    parser.add_argument("--heads", default="dm2,dm1,ml2", help=f"heads to train, of {sorted(HEADS)}")
    parser.add_argument("--batch", type=int, default=32, help="images per timed call (toy head)")
    parser.add_argument("--paper-batch", type=int, default=1, help="images per timed call (paper head)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--small-world", action="store_true",
                        help="the quick toy world (600 / 300 scenes; its heads stay below the cosine's mAP)")
    parser.add_argument("--quick", action="store_true", help="1 seed, 100 distractors, small scenes (smoke test)")
    parser.add_argument("--diagnose-only", action="store_true",
                        help="only the first pass's recall and its variants on the first seed (no heads, ~1 min) "
                        "-> results/shortlist_first_pass.json")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    seeds = [int(s) for s in args.seeds.split(",")][:1 if args.quick else None]
    sizes = [int(s) for s in args.sizes.split(",")]
    heads = [h for h in args.heads.split(",") if h]
    if "dm2" not in heads or any(h not in HEADS for h in heads):
        parser.error(f"--heads must include dm2 and name only {sorted(HEADS)}")
    config = ToyWorldConfig.quick() if args.small_world else ToyWorldConfig()
    if args.quick:
        config = replace(config, train_scenes=64, test_scenes=60, epochs=1)
        sizes = [s for s in sizes if s <= 64] or [8]
    towers = load_toy_towers(0)
    start = time.perf_counter()
    names, distractors = distractor_embeddings(towers, 100 if args.quick else None)
    if args.diagnose_only:
        return diagnose_only(args, config, towers, names, distractors, sizes)
    k = len(VOCABULARY) + distractors.shape[0]
    print(f"vocabulary: {len(VOCABULARY)} toy concepts + {distractors.shape[0]} distractors = {k} labels "
          f"({time.perf_counter() - start:.0f}s to embed)", flush=True)
    per_seed, state = {}, None
    for seed in seeds:
        per_seed[seed], seed_state = quality(seed, config, towers, distractors, sizes, heads)
        state = state or seed_state
        print(f"seed {seed} done ({time.perf_counter() - start:.0f}s)", flush=True)
    rows = {name: [per_seed[s][name] for s in seeds] for name in per_seed[seeds[0]]}
    repeats = 2 if args.quick else args.repeats
    result = {
        "environment": environment(), "seeds": seeds, "sizes": sizes, "heads": heads, "k": k,
        "toy_config": {"train_scenes": config.train_scenes, "test_scenes": config.test_scenes},
        "rows": rows, "per_seed": {str(s): v for s, v in per_seed.items()},
        "timing": timing(state, towers, sizes, args.batch, repeats, args.warmup),
        "paper_timing": paper_timing(k, sizes, args.paper_batch, repeats, args.warmup, args.quick),
    }
    result["seconds"] = time.perf_counter() - start
    write_result(result, table(result), args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
