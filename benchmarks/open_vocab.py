"""The open-vocabulary mode on the toy world (issue 9.6): head vs training-free cosine vs their fitted mix.

Per seed (toy world v2 of ``src/adds/toyworld``: 87 seen labels, unseen sets U_comb (24) and U_word (49), the
quick run's sizes):

1. the ADDS head of Table 2 is trained on the 87 seen labels (``adds.toyworld.lab.train_head``);
2. a *fold* head is trained the same way without 20 of the seen labels (``--held-out``), which play the new words;
3. on the validation scenes, the fold head's logits (all 87 seen labels in one call) and the class-token
   cosine give the fit data: :func:`adds.openvocab.fit_combiner` picks the prior's weight on the 20 held-out
   labels, then Platt-scales the mix;
4. on the test scenes the open-vocabulary rule (seen words: the head's logit; others: the combiner) is scored with
   all 160 labels in one call (``call=all``) and with each unseen set alone (``call=U_comb`` / ``call=U_word``).

Rows (mAP %, mean ± std over seeds; every seed's value is in the JSON): the plain head, the cosine, the
standardised cosine alone, the mix with the weight fitted on held-out seen labels (per-image and global
standardisation, best weight), the default rule of :func:`adds.openvocab.fit_combiner` (global standardisation,
the prior alone unless the mix gains 1 mAP point on the held-out labels), the mix with the weight fitted on the
*main* head's seen labels (biased: the head was trained on them), and the oracle weight chosen on the test's
unseen labels (an upper bound, not a method).

    OMP_NUM_THREADS=1 python benchmarks/open_vocab.py                  # 3 seeds, a few minutes on one core
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
from adds.toyworld.lab import LabConfig, build_seed, head_logits, train_head  # noqa: E402
from adds.toyworld.toyclip import load_toy_towers  # noqa: E402
from adds.toyworld.world import VOCABULARY  # noqa: E402


def _map(scores: torch.Tensor, targets: torch.Tensor) -> float:
    return 100 * mean_average_precision(scores, targets)


def run_seed(seed: int, config: LabConfig, held_out: int, towers) -> dict:
    world = build_seed(config, seed, towers)
    splits = VOCABULARY.splits()
    seen = splits.seen
    labels = world.labels  # (160, D)
    names = VOCABULARY.labels
    tpc = towers.tokens_per_image
    order = torch.randperm(len(seen), generator=torch.Generator().manual_seed(7000 + seed)).tolist()
    pseudo = sorted(seen[i] for i in order[:held_out])
    fold_seen = [c for c in seen if c not in pseudo]

    head = train_head(towers, world.train_tokens, world.train_targets[:, seen], labels[seen], config, seed)
    fold = train_head(towers, world.train_tokens, world.train_targets[:, fold_seen], labels[fold_seen], config, seed)
    val_tokens, val_targets = world.val_tokens, world.val_targets

    # Fit data: the fold head scores all 87 seen labels in one call; the 20 it never saw are the "new" ones.
    fit_h = head_logits(fold, val_tokens, labels[seen])  # (V, 87)
    fit_p = prior_cosine(val_tokens, labels[seen], tpc)  # (V, 87)
    fit_t = val_targets[:, seen]
    new = torch.tensor([c in pseudo for c in seen])
    combiners = {mode: fit_combiner(fit_h, fit_p, fit_t, new, mode, min_gain=0.0) for mode in ("image", "global")}
    combiners["default"] = fit_combiner(fit_h, fit_p, fit_t, new)  # global z; the prior alone unless +1 mAP
    # The biased fit: the main head's scores on seen labels it was trained on, all 87 "new".
    biased = fit_combiner(head_logits(head, val_tokens, labels[seen]), fit_p, fit_t,
                          torch.ones(len(seen), dtype=torch.bool), "image", min_gain=0.0)

    rows: dict[str, float] = {}
    calls = [("all", list(range(len(names))), "U_comb", splits.u_comb), ("all", list(range(len(names))), "U_word",
             splits.u_word), ("U_comb", splits.u_comb, "U_comb", splits.u_comb),
             ("U_word", splits.u_word, "U_word", splits.u_word)]
    for call_name, call, unseen_name, unseen in calls:
        h = head_logits(head, world.test_tokens, labels[call])  # (N, k)
        p = prior_cosine(world.test_tokens, labels[call], tpc)  # (N, k)
        t = world.test_targets[:, call]
        is_unseen = torch.tensor([c in unseen for c in call])
        is_seen = torch.tensor([c in seen for c in call])
        call_name = f"{call_name} {unseen_name}"
        ov = OpenVocabulary(vocabulary=tuple(names[c] for c in seen), combiner=combiners["default"])
        call_names = [names[c] for c in call]
        rows[f"call={call_name} unseen: head"] = _map(h[:, is_unseen], t[:, is_unseen])
        rows[f"call={call_name} unseen: cosine"] = _map(p[:, is_unseen], t[:, is_unseen])
        z_prior = Combiner(prior_weight=1.0).mix(h, p)
        rows[f"call={call_name} unseen: standardised cosine"] = _map(z_prior[:, is_unseen], t[:, is_unseen])
        for mode, combiner in combiners.items():
            mixed = OpenVocabulary(ov.vocabulary, combiner).logits(h, p, call_names)
            what = "default: global z, prior alone unless the mix gains 1 mAP" if mode == "default" else \
                f"{mode} z, best held-out weight"
            rows[f"call={call_name} unseen: open-vocab ({what})"] = _map(mixed[:, is_unseen], t[:, is_unseen])
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
        if bool(is_seen.any()) and unseen_name == "U_comb":
            final = ov.logits(h, p, call_names)
            call_name = call_name.split()[0]
            rows[f"call={call_name} seen: head"] = _map(h[:, is_seen], t[:, is_seen])
            rows[f"call={call_name} seen: open-vocab"] = _map(final[:, is_seen], t[:, is_seen])
            rows[f"call={call_name} seen: cosine"] = _map(p[:, is_seen], t[:, is_seen])
    fitted = {mode: c.prior_weight for mode, c in combiners.items()} | {"biased": biased.prior_weight}
    return {"rows": rows, "prior_weight": fitted, "combiner": combiners["default"].__dict__}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--held-out", type=int, default=20, help="seen labels the fold head is trained without")
    parser.add_argument("--full", action="store_true", help="the full run's sizes (1600 train / 600 test scenes)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "open_vocab.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    seeds = [int(s) for s in args.seeds.split(",")]
    config = LabConfig() if args.full else LabConfig.quick()
    towers = load_toy_towers(0)
    start = time.perf_counter()
    per_seed = {}
    for seed in seeds:
        per_seed[seed] = run_seed(seed, config, args.held_out, towers)
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
