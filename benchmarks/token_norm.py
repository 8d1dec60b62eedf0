"""L2-normalised visual tokens (``ADDSConfig.token_norm``, issue 10.9) vs the paper's raw tokens, on the toy world.

Eq. 4 argues on ``a/|a|`` and ``b/|b|`` while the decoder receives the towers' tokens as they are. Per seed, on the
toy world v2 (``adds.toyworld.lab``, the full run's sizes), the Table 2 zero-shot head (87 seen labels) is trained
with the tokens as the tower gives them (``None``), normalised to norm 1 and normalised to norm 10 (the toy CLIP's
tokens have norm ~10, docs/toyworld.md), and scored on the seen labels and the unseen sets U_comb / U_word
(mAP %, mean ± std over seeds; every seed in the JSON).

    OMP_NUM_THREADS=1 python benchmarks/token_norm.py            # 3 seeds, a few minutes
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import environment, write_result  # noqa: E402

from adds.metrics import mean_average_precision  # noqa: E402
from adds.toyworld.lab import LabConfig, build_seed, head_logits, train_head  # noqa: E402
from adds.toyworld.toyclip import load_toy_towers  # noqa: E402
from adds.toyworld.world import VOCABULARY  # noqa: E402

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "token_norm.json"
NORMS = {"as the tower gives them (paper)": None, "token_norm = 1": 1.0, "token_norm = 10": 10.0}


def run_seed(seed: int, config: LabConfig, towers) -> dict[str, float]:
    data = build_seed(config, seed, towers)
    splits = VOCABULARY.splits().as_dict()
    seen = splits["seen"]
    rows = {}
    for name, norm in NORMS.items():
        head = train_head(towers, data.train_tokens, data.train_targets[:, seen], data.labels[seen], config, seed,
                          token_norm=norm)
        scores = head_logits(head, data.test_tokens, data.labels)  # (N, 160): every label in one call
        for set_name, columns in splits.items():
            rows[f"{name} | {set_name}"] = 100 * mean_average_precision(scores[:, columns],
                                                                        data.test_targets[:, columns])
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--quick", action="store_true", help="one seed, tiny sizes (smoke test)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    seeds = [int(s) for s in args.seeds.split(",")][:1 if args.quick else None]
    config = LabConfig()
    if args.quick:
        config = replace(config, train_scenes=48, val_scenes=16, test_scenes=32, epochs=1)
    towers = load_toy_towers(0)
    start = time.perf_counter()
    per_seed = {seed: run_seed(seed, config, towers) for seed in seeds}
    rows = {name: [per_seed[s][name] for s in seeds] for name in per_seed[seeds[0]]}
    lines = ["| visual tokens | seen mAP | U_comb mAP | U_word mAP |", "|---|---|---|---|"]
    for name in NORMS:
        cells = []
        for set_name in ("seen", "U_comb", "U_word"):
            values = rows[f"{name} | {set_name}"]
            std = statistics.stdev(values) if len(values) > 1 else 0.0
            cells.append(f"{statistics.mean(values):.1f} ± {std:.1f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    write_result({"environment": environment(), "seeds": seeds, "rows": rows, "seconds": time.perf_counter() - start},
                 "\n".join(lines), args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
