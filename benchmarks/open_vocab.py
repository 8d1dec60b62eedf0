"""The open-vocabulary mode on the toy world (issue 9.6): head vs training-free cosine vs their fitted mix.

Per seed (toy world of ``src/adds/toyworld``, 36 seen / 12 unseen concepts, the quick run's sizes):

1. the ADDS head of Table 2 is trained on the 36 seen concepts (``_train_head``, the toy world's recipe);
2. a *fold* head is trained the same way without 9 of the seen concepts (``--held-out``), which play the new words;
3. on separate validation scenes, the fold head's logits (all 36 seen concepts in one call) and the class-token
   cosine give the fit data: :func:`adds.openvocab.fit_combiner` picks the prior's weight on the 9 held-out
   concepts, then Platt-scales the mix;
4. on the test scenes the open-vocabulary rule (seen words: the head's logit; others: the combiner) is scored with
   all 48 concepts in one call (``call=all``) and with the 12 unseen ones alone (``call=unseen``, Table 2's call).

Rows (mAP %, mean ± std over seeds; every seed's value is in the JSON): the plain head, the cosine, the
standardised cosine alone, the mix with the weight fitted on held-out seen labels (per-image and global
standardisation), the mix with the weight fitted on the *main* head's seen labels (biased: the head was trained on
them), and the oracle weight chosen on the test's unseen labels (an upper bound, not a method).

    OMP_NUM_THREADS=1 python benchmarks/open_vocab.py                  # 3 seeds, ~6 min on one core
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import environment  # noqa: E402

from adds.metrics import mean_average_precision  # noqa: E402
from adds.openvocab import Combiner, OpenVocabulary, fit_combiner, prior_cosine  # noqa: E402
from adds.toyworld.experiments import ToyWorldConfig, _build_world, _features, _train_head  # noqa: E402
from adds.toyworld.scenes import VOCABULARY, render_scenes  # noqa: E402
from adds.toyworld.tinyclip import load_toy_towers  # noqa: E402


@torch.no_grad()
def head_logits(head, tokens: torch.Tensor, labels: torch.Tensor, batch: int = 256) -> torch.Tensor:
    return torch.cat([head.forward_head(tokens[i:i + batch], labels).float() for i in range(0, len(tokens), batch)])


def _map(scores: torch.Tensor, targets: torch.Tensor) -> float:
    return 100 * mean_average_precision(scores, targets)


def run_seed(seed: int, config: ToyWorldConfig, held_out: int, val_scenes: int, towers) -> dict:
    world = _build_world(config, seed, towers)
    seen, unseen = world.seen, world.unseen
    labels = world.aligned_labels  # (48, D)
    names = VOCABULARY.concepts
    tpc = towers.tokens_per_image
    order = torch.randperm(len(seen), generator=torch.Generator().manual_seed(7000 + seed)).tolist()
    pseudo = sorted(seen[i] for i in order[:held_out])
    fold_seen = [c for c in seen if c not in pseudo]

    head = _train_head(world, world.train_tokens, world.train_targets[:, seen], labels[seen], config, seed)
    fold = _train_head(world, world.train_tokens, world.train_targets[:, fold_seen], labels[fold_seen], config,
                       seed)
    val_images, val_targets = render_scenes(val_scenes, torch.Generator().manual_seed(6000 + seed), config.scene)
    val_tokens = _features(towers, val_images)

    # Fit data: the fold head scores all 36 seen concepts in one call; the 9 it never saw are the "new" ones.
    fit_h = head_logits(fold, val_tokens, labels[seen])  # (V, 36)
    fit_p = prior_cosine(val_tokens, labels[seen], tpc)  # (V, 36)
    fit_t = val_targets[:, seen]
    new = torch.tensor([c in pseudo for c in seen])
    combiners = {mode: fit_combiner(fit_h, fit_p, fit_t, new, mode) for mode in ("image", "global")}
    # The biased fit: the main head's scores on seen labels it was trained on, all 36 "new".
    biased = fit_combiner(head_logits(head, val_tokens, labels[seen]), fit_p, fit_t,
                          torch.ones(len(seen), dtype=torch.bool), "image")

    rows: dict[str, float] = {}
    for call_name, call in (("all", list(range(len(names)))), ("unseen", unseen)):
        h = head_logits(head, world.test_tokens, labels[call])  # (N, k)
        p = prior_cosine(world.test_tokens, labels[call], tpc)  # (N, k)
        t = world.test_targets[:, call]
        is_unseen = torch.tensor([c in unseen for c in call])
        is_seen = ~is_unseen
        ov = OpenVocabulary(vocabulary=tuple(names[c] for c in seen), combiner=combiners["image"])
        call_names = [names[c] for c in call]
        rows[f"call={call_name} unseen: head"] = _map(h[:, is_unseen], t[:, is_unseen])
        rows[f"call={call_name} unseen: cosine"] = _map(p[:, is_unseen], t[:, is_unseen])
        z_prior = Combiner(prior_weight=1.0).mix(h, p)
        rows[f"call={call_name} unseen: standardised cosine"] = _map(z_prior[:, is_unseen], t[:, is_unseen])
        for mode, combiner in combiners.items():
            mixed = OpenVocabulary(ov.vocabulary, combiner).logits(h, p, call_names)
            rows[f"call={call_name} unseen: open-vocab ({mode} z, held-out fit)"] = _map(
                mixed[:, is_unseen], t[:, is_unseen])
        mixed = OpenVocabulary(ov.vocabulary, biased).logits(h, p, call_names)
        rows[f"call={call_name} unseen: open-vocab (image z, biased fit on trained labels)"] = _map(
            mixed[:, is_unseen], t[:, is_unseen])
        stats = {k: getattr(combiners["global"], k) for k in ("head_mean", "head_std", "prior_mean", "prior_std")}
        equal = Combiner(prior_weight=0.5, standardise="global", **stats).mix(h, p)
        rows[f"call={call_name} unseen: equal-weight global z ensemble"] = _map(equal[:, is_unseen], t[:, is_unseen])
        for mode in ("image", "global"):
            oracle = max(_map(Combiner(prior_weight=w / 40, standardise=mode, **stats).mix(h, p)[:, is_unseen],
                              t[:, is_unseen]) for w in range(41))
            rows[f"call={call_name} unseen: oracle weight, {mode} z (upper bound)"] = oracle
        if bool(is_seen.any()):
            final = ov.logits(h, p, call_names)
            rows[f"call={call_name} seen: head"] = _map(h[:, is_seen], t[:, is_seen])
            rows[f"call={call_name} seen: open-vocab"] = _map(final[:, is_seen], t[:, is_seen])
            rows[f"call={call_name} seen: cosine"] = _map(p[:, is_seen], t[:, is_seen])
    fitted = {mode: c.prior_weight for mode, c in combiners.items()} | {"biased": biased.prior_weight}
    return {"rows": rows, "prior_weight": fitted, "combiner": combiners["image"].__dict__}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--held-out", type=int, default=9, help="seen concepts the fold head is trained without")
    parser.add_argument("--val-scenes", type=int, default=300)
    parser.add_argument("--full", action="store_true", help="the full run's sizes (1200 train / 500 test scenes)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "open_vocab.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    seeds = [int(s) for s in args.seeds.split(",")]
    config = ToyWorldConfig() if args.full else ToyWorldConfig.quick()
    towers = load_toy_towers(0)
    start = time.perf_counter()
    per_seed = {}
    for seed in seeds:
        per_seed[seed] = run_seed(seed, config, args.held_out, args.val_scenes, towers)
        print(f"seed {seed}: prior weights {per_seed[seed]['prior_weight']} ({time.perf_counter() - start:.0f}s)",
              flush=True)
    rows = {name: [per_seed[s]["rows"][name] for s in seeds] for name in per_seed[seeds[0]]["rows"]}
    print(f"\n| row (mAP %, seeds {seeds}) | mean ± std | per seed |\n|---|---|---|")
    for name, values in rows.items():
        std = statistics.stdev(values) if len(values) > 1 else 0.0
        print(f"| {name} | {statistics.fmean(values):.2f} ± {std:.2f} | " + ", ".join(f"{v:.1f}" for v in values)
              + " |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    result = {"environment": environment(), "seeds": seeds, "held_out": args.held_out, "full": args.full,
              "rows": rows, "per_seed": {str(s): v for s, v in per_seed.items()},
              "seconds": time.perf_counter() - start}
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
