"""How well do thresholds transfer to words without labels? Measured on the toy world (docs/calibration.md).

Per seed: toy-world v2 scenes split into train / calibration / test; an ADDS head trained on the 87 *seen* labels
(the toy zero-shot setting, ``adds toyworld``'s Table 2 head) and the training-free toy-CLIP baseline (the
tagger's default score, :class:`adds.tagger.Tagger` on :class:`adds.tagger.CLIPBaseline`: each label's best crop
among the view and the quadrants of the image squashed to 2S, against the blank-image label-free reference).
The 73 *unseen* labels (U_comb and U_word together) play the open-vocabulary words: no labels of theirs are used
except by the oracles. On the test split, unseen labels:

* ``fixed 0.5``: the paper's threshold.
* ``global`` / ``quantile`` / ``zscore``: a label-free rule (:mod:`adds.calibration.transfer`) fitted on the seen
  labels' calibration-split labels, applied to each unseen label from its scores on the calibration images
  (used as unlabelled images).
* ``oracle (labelled calibration)``: exact per-label F1-optimal thresholds fitted on the unseen labels' own
  calibration-split labels -- what ``adds calibrate`` gives when the words do have labelled images.
* ``oracle (test, upper bound)``: the same fitted on the test split itself.

The seen labels' own calibration (fixed 0.5 vs per-label thresholds from the calibration split) is reported too.
Metrics: mean per-label F1 (macro) and pooled F1 (micro, the paper's OF1), in %. Mean ± std over seeds.

    python benchmarks/calibration_transfer.py              # 3 seeds, the toy world's sizes (~6 min on 2 cores)
    python benchmarks/calibration_transfer.py --quick      # 1 seed, fewer scenes (~1 min)
    python benchmarks/calibration_transfer.py --skewed --out benchmarks/results/calibration_transfer_skewed.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from adds.calibration import fit_thresholds, fit_transfer_rule, per_label_f1
from adds.calibration.transfer import RULES
from adds.metrics import threshold_metrics
from adds.prompts import LabelEmbedder
from adds.tagger import CLIPBaseline, Tagger, TaggerConfig
from adds.toyworld.lab import LabConfig, features, head_logits, train_head
from adds.toyworld.toyclip import load_toy_towers
from adds.toyworld.world import VOCABULARY, render_scenes

ORACLE = "oracle (labelled calibration)"
UPPER = "oracle (test, upper bound)"
METHODS = ("fixed 0.5", *RULES, ORACLE, UPPER)


def _metrics(scores: np.ndarray, targets: np.ndarray, thresholds) -> dict[str, float]:
    return {"macro F1": 100 * float(per_label_f1(scores, targets, thresholds).mean()),
            "micro F1": 100 * threshold_metrics(scores, targets, np.broadcast_to(thresholds, scores.shape[1]))["OF1"]}


def _per_label(fit) -> np.ndarray:
    return np.array(list(fit.thresholds.values()))


def evaluate_scorer(seen: dict[str, np.ndarray], unseen: dict[str, np.ndarray], min_positives: int) -> dict:
    """``seen`` / ``unseen``: ``{"cal": scores, "cal_t": targets, "test": ..., "test_t": ...}`` -> rows."""
    rows: dict[str, dict[str, float]] = {}
    names_seen = [str(i) for i in range(seen["cal"].shape[1])]
    names_unseen = [str(i) for i in range(unseen["cal"].shape[1])]
    rows["seen: fixed 0.5"] = _metrics(seen["test"], seen["test_t"], 0.5)
    seen_fit = fit_thresholds(seen["cal"], seen["cal_t"], names_seen)
    rows["seen: per-label (calibration split)"] = _metrics(seen["test"], seen["test_t"], _per_label(seen_fit))
    rules = {}
    for kind in RULES:
        rule = fit_transfer_rule(seen["cal"], seen["cal_t"], kind=kind, min_positives=min_positives)
        rules[kind] = rule.to_dict()
        rows[kind] = _metrics(unseen["test"], unseen["test_t"], rule.thresholds(unseen["cal"]))
    rows["fixed 0.5"] = _metrics(unseen["test"], unseen["test_t"], 0.5)
    oracle = fit_thresholds(unseen["cal"], unseen["cal_t"], names_unseen)
    rows[ORACLE] = _metrics(unseen["test"], unseen["test_t"], _per_label(oracle))
    upper = fit_thresholds(unseen["test"], unseen["test_t"], names_unseen)
    rows[UPPER] = _metrics(unseen["test"], unseen["test_t"], _per_label(upper))
    return {"rows": rows, "rules": rules}


def skewed_pool() -> list[int]:
    """Concept indices repeated 1, 2, 4 or 8 times (a fixed shuffle): objects drawn from this pool make the most
    frequent concepts 8x as frequent as the rarest (the toy world's own scenes draw every concept equally)."""
    order = torch.randperm(VOCABULARY.num_concepts, generator=torch.Generator().manual_seed(77)).tolist()
    return [concept for rank, concept in enumerate(order) for _ in range(2 ** (rank % 4))]


def run_seed(config: LabConfig, seed: int, calibration_scenes: int, min_positives: int,
             skewed: bool = False) -> dict:
    towers = load_toy_towers(0)
    generator = torch.Generator().manual_seed(5000 + seed)
    sizes = (config.train_scenes, calibration_scenes, config.test_scenes)
    pool = skewed_pool() if skewed else None
    scenes = render_scenes(sum(sizes), generator, config.scene, concept_pool=pool)
    targets = scenes.targets
    tokens = features(towers, scenes.images)  # (N, T, D)
    parts = torch.split(torch.arange(sum(sizes)), list(sizes))
    train, cal, test = parts
    splits = VOCABULARY.splits()
    seen, unseen = splits.seen, splits.u_comb + splits.u_word
    labels = LabelEmbedder(towers)(VOCABULARY.labels)  # (160, D)
    head = train_head(towers, tokens[train], targets[train][:, seen], labels[seen], config, seed)
    tagger = Tagger(CLIPBaseline(towers), TaggerConfig(batch_size=256, label_cache=False), labels=VOCABULARY.labels)
    clip_scores = tagger.scores(scenes.images)  # (N, 160): squashed to 96 px, 1 + 4 crops, as adds tag scores

    def split(score_fn, columns) -> dict[str, np.ndarray]:
        out = {}
        for name, rows in (("cal", cal), ("test", test)):
            out[name] = score_fn(rows, columns).numpy()
            out[f"{name}_t"] = targets[rows][:, columns].numpy()
        return out

    def adds_scores(rows, columns):  # the model runs on the seen or the unseen label list, as in zero-shot
        return head_logits(head, tokens[rows], labels[columns]).sigmoid()

    def clip(rows, columns):
        return clip_scores[rows][:, columns]

    result = {}
    for name, score_fn in (("ADDS head (trained on 87 seen)", adds_scores), ("toy CLIP, no training", clip)):
        result[name] = evaluate_scorer(split(score_fn, seen), split(score_fn, unseen), min_positives)
    return result


def _table(per_seed: list[dict]) -> str:
    lines = []
    for scorer in per_seed[0]:
        lines += ["", f"{scorer}: F1 (%) on the test split, mean ± std over {len(per_seed)} seed(s)",
                  "| labels | thresholds | macro F1 | micro F1 |", "|---|---|---|---|"]
        for row in per_seed[0][scorer]["rows"]:
            cells = []
            for metric in ("macro F1", "micro F1"):
                values = [seed[scorer]["rows"][row][metric] for seed in per_seed]
                spread = statistics.stdev(values) if len(values) > 1 else 0.0
                cells.append(f"{statistics.fmean(values):.1f} ± {spread:.1f}")
            group, _, method = row.partition(": ") if row.startswith("seen: ") else ("unseen", "", row)
            lines.append(f"| {group} | {method or row} | {cells[0]} | {cells[1]} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default: %(default)s)")
    parser.add_argument("--quick", action="store_true", help="1 seed, 600 / 300 / 300 scenes, 6 epochs")
    parser.add_argument("--min-positives", type=int, default=3)
    parser.add_argument("--skewed", action="store_true",
                        help="concepts 1x/2x/4x/8x as frequent (default: every concept equally frequent)")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "calibration_transfer.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    config = LabConfig(train_scenes=1200, test_scenes=500)
    calibration_scenes = 500
    seeds = [int(seed) for seed in args.seeds.split(",") if seed.strip()]
    if args.quick:
        config = replace(config, train_scenes=600, test_scenes=300, epochs=6)
        calibration_scenes, seeds = 300, seeds[:1]
    start = time.perf_counter()
    per_seed = []
    for seed in seeds:
        per_seed.append(run_seed(config, seed, calibration_scenes, args.min_positives, args.skewed))
        print(f"seed {seed} done ({time.perf_counter() - start:.0f} s)", file=sys.stderr)
    table = _table(per_seed)
    print(table)
    result = {
        "command": " ".join(["python benchmarks/calibration_transfer.py", *sys.argv[1:]]),
        "environment": {"torch": torch.__version__, "python": platform.python_version(),
                        "threads": torch.get_num_threads(), "seconds": round(time.perf_counter() - start, 1)},
        "sizes": {"train": config.train_scenes, "calibration": calibration_scenes, "test": config.test_scenes,
                  "epochs": config.epochs, "seeds": seeds, "min_positives": args.min_positives,
                  "prevalence": "skewed 1x/2x/4x/8x" if args.skewed else "uniform"},
        "per_seed": per_seed,
        "table": table,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
