"""The training-free CLIP baseline's variants on the toy world (issue 9.7): templates x image pooling.

Per seed, on the test scenes of the toy world v2 (``adds.toyworld``: 48 px toy CLIP, 160 labels; the quick run's
sizes, rendered at 2 x 48 = 96 px so that level 1 exists), the training-free score ``cos(image, label)`` is computed
with

* **templates**: the paper's two (``"paper"``), CLIP's 80 ImageNet templates (``"clip80"``) and, as a reference
  only, the toy world's own caption form ``"{}"`` (the toy CLIP saw bare noun phrases in its captions);
* **image pooling**: the class token of the one ``S x S`` view (level 0: what ``adds tag`` does without a
  checkpoint), the maximum over the crops of levels 0 and 1 (1 + 4 crops: the view and its quadrants at 2S), and
  the maximum over the crops of level 1 only.

Rows: mAP over all 160 labels, over the unseen sets U_comb and U_word (they are just label subsets here: nothing
is trained), and F1@3 (the literature's top-k F1), mean ± std over seeds. What it can and cannot say: the pooling
comparison is about images with several objects, which the toy world has (2-6 per scene); the template comparison
is about *this* toy CLIP, whose captions never contained "a photo of" phrasing, so it does not transfer to real
CLIP models (for those, OpenAI's 80-template ensemble is the published recipe, see docs/tagging.md).

    OMP_NUM_THREADS=1 python benchmarks/baseline_variants.py            # 3 seeds, ~2 min
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
from _common import environment, write_result  # noqa: E402

from adds.metrics import mean_average_precision, topk_precision_recall_f1  # noqa: E402
from adds.openvocab import prior_cosine  # noqa: E402
from adds.prompts import LabelEmbedder, resolve_templates  # noqa: E402
from adds.toyworld.lab import LabConfig, features  # noqa: E402
from adds.toyworld.toyclip import load_toy_towers  # noqa: E402
from adds.toyworld.world import VOCABULARY, render_scenes  # noqa: E402

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "baseline_variants.json"
TEMPLATES = {"paper": "paper", "clip80": "clip80", "bare {} (toy captions)": ("{}",)}
POOLINGS = {"class token, level 0": (0,), "max over crops, levels 0-1": (0, 1), "max over crops, level 1": (1,)}


def run_seed(seed: int, config: LabConfig, towers, test_scenes: int) -> dict[str, float]:
    scene = replace(config.scene, size=2 * towers.image_size)  # 96 px: level 0 is the 48 px view, level 1 4 crops
    scenes = render_scenes(test_scenes, torch.Generator().manual_seed(5000 + seed), scene)
    targets = scenes.targets  # (N, 160)
    splits = VOCABULARY.splits()
    sets = {"all": list(range(len(VOCABULARY))), "U_comb": splits.u_comb, "U_word": splits.u_word}
    tpc = towers.tokens_per_image
    tokens = {name: features(towers, scenes.images, levels) for name, levels in POOLINGS.items()}  # (N, crops*T, D)
    rows: dict[str, float] = {}
    for template_name, templates in TEMPLATES.items():
        labels = F.normalize(LabelEmbedder(towers, resolve_templates(templates))(VOCABULARY.labels).float(), dim=-1)
        for pool_name in POOLINGS:
            scores = prior_cosine(tokens[pool_name], labels, tpc)  # (N, 160): max over the crops' class tokens
            key = f"{template_name} | {pool_name}"
            for set_name, columns in sets.items():
                rows[f"{key} | mAP {set_name}"] = 100 * mean_average_precision(scores[:, columns],
                                                                               targets[:, columns])
            rows[f"{key} | F1@3 all"] = 100 * topk_precision_recall_f1(scores, targets, 3)[2]
    return rows


def table(result: dict) -> str:
    rows = result["rows"]
    keys = list(dict.fromkeys(name.rsplit(" | ", 1)[0] for name in rows))  # "templates | pooling", in run order
    lines = ["| templates | image pooling | mAP all | mAP U_comb | mAP U_word | F1@3 all |",
             "|---|---|---|---|---|---|"]
    for key in keys:
        template, pooling = key.split(" | ")
        cells = []
        for metric in ("mAP all", "mAP U_comb", "mAP U_word", "F1@3 all"):
            values = rows[f"{key} | {metric}"]
            std = statistics.stdev(values) if len(values) > 1 else 0.0
            cells.append(f"{statistics.mean(values):.2f} ± {std:.2f}")
        lines.append(f"| {template} | {pooling} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--test-scenes", type=int, default=400)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="one seed, 40 scenes (seconds; smoke test)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    seeds = [int(s) for s in args.seeds.split(",")][:1 if args.quick else None]
    scenes = 40 if args.quick else args.test_scenes
    config, towers = LabConfig.quick(), load_toy_towers(0)
    start = time.perf_counter()
    per_seed = {seed: run_seed(seed, config, towers, scenes) for seed in seeds}
    rows = {name: [per_seed[s][name] for s in seeds] for name in per_seed[seeds[0]]}
    result = {"environment": environment(), "seeds": seeds, "test_scenes": scenes, "rows": rows,
              "seconds": time.perf_counter() - start}
    write_result(result, table(result), args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
