"""The training-free CLIP baseline's variants on the toy world (issue 9.7): templates x image pooling x reference.

Per seed, on the test scenes of the toy world v2 (``adds.toyworld``: 48 px toy CLIP, 160 labels; the quick run's
sizes, rendered at 2 x 48 = 96 px so that level 1 exists), the tagger's training-free logit
(:func:`adds.tagger.baseline.pooled_logits`, what ``adds tag`` and ``adds eval --zero-shot-baseline`` score) is
computed with

* **templates**: the paper's two (``"paper"``), CLIP's 80 ImageNet templates (``"clip80"``) and, as a reference
  only, the toy world's own caption form ``"{}"`` (the toy CLIP saw bare noun phrases in its captions);
* **image pooling**: the class token of the one ``S x S`` view (level 0: plain CLIP zero-shot), the maximum over
  the crops of levels 0 and 1 (1 + 4 crops: the view and its quadrants at 2S) and the maximum over the crops of
  level 1 only;
* **reference**: ``blank`` (one constant per tower, so a label ranks images by its cosine) and ``image`` (each
  crop's own label-free cosine, the tagger's score before 2026-12-03).

Columns: mAP over all 160 labels and over the unseen sets U_comb and U_word (label subsets here: nothing is
trained), F1@3 (the literature's top-k F1), macro F1 and tags per image at the default threshold 0.5 (what
``adds tag`` prints without calibration), mean ± std over seeds; and the image path's time per image of each
pooling, measured in the same run (their ratio is the cost of the crops). What it can and cannot say: the pooling
comparison is about images with several small objects, which the toy world has (2-6 per scene); the template
comparison is about *this* toy CLIP, whose captions use only 8 templates, so it does not transfer to real CLIP
models (for those, OpenAI's 80-template ensemble is the published recipe, see docs/tagging.md).

    OMP_NUM_THREADS=1 python benchmarks/baseline_variants.py            # 3 seeds, ~30 s
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

from adds.metrics import mean_average_precision, topk_precision_recall_f1  # noqa: E402
from adds.tagger.baseline import CLIPBaseline, CLIPBaselineConfig, pooled_logits  # noqa: E402
from adds.toyworld.lab import LabConfig, features  # noqa: E402
from adds.toyworld.toyclip import load_toy_towers  # noqa: E402
from adds.toyworld.world import VOCABULARY, render_scenes  # noqa: E402

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "baseline_variants.json"
TEMPLATES = {"paper": "paper", "clip80": "clip80", "bare {} (toy captions)": ("{}",)}
POOLINGS = {"class token, level 0": (0,), "max over crops, levels 0-1": (0, 1), "max over crops, level 1": (1,)}
REFERENCES = ("blank", "image")
METRICS = ("mAP all", "mAP U_comb", "mAP U_word", "F1@3 all", "macro F1 @0.5", "tags/image @0.5")


def macro_f1_at_half(logits: torch.Tensor, targets: torch.Tensor) -> float:
    """Mean per-label F1 of the decisions ``logit > 0`` (score > 0.5), in %."""
    predicted, truth = (logits > 0).float(), (targets > 0).float()
    tp = (predicted * truth).sum(0)
    wrong = (predicted * (1 - truth)).sum(0) + ((1 - predicted) * truth).sum(0)
    return 100 * float((2 * tp / (2 * tp + wrong).clamp(min=1)).mean())


def reference_diagnostics(baseline: CLIPBaseline, crops: torch.Tensor, labels: torch.Tensor,
                          targets: torch.Tensor) -> dict[str, float]:
    """Why a per-image reference reorders a label's images: how the label-free cosine of the level-0 view varies
    over images against a label's cosine, and mAP with a toy-native label-free direction (the mean label
    embedding) as each crop's reference. ``crops`` ``(N, 5, D)`` of levels 0-1, ``labels`` ``(160, D)``."""
    view = crops[:, 0]  # (N, D)
    cos = view @ torch.nn.functional.normalize(labels, dim=-1).T  # (N, 160)
    reference = view @ baseline.reference_embedding().float()  # (N,)
    mean_label = torch.nn.functional.normalize(labels.mean(0), dim=-1)  # (D,)
    return {"reference cosine std over images": float(reference.std()),
            "label cosine std over images (mean over labels)": float(cos.std(0).mean()),
            "corr(reference cosine, mean label cosine)": float(torch.corrcoef(torch.stack([reference,
                                                                                         cos.mean(1)]))[0, 1]),
            "mAP all, mean-label reference per crop": 100 * mean_average_precision(
                pooled_logits(crops, labels, mean_label, baseline.logit_scale), targets),
            "true labels per image": float((targets > 0).float().sum(1).mean())}


def run_seed(seed: int, config: LabConfig, towers, test_scenes: int) -> tuple[dict[str, float], dict[str, float]]:
    """``(rows, seconds per image of each pooling's image path)`` of one seed; the rows end with the paper
    templates' :func:`reference_diagnostics` (``"diagnostics | ..."``)."""
    scene = replace(config.scene, size=2 * towers.image_size)  # 96 px: level 0 is the 48 px view, level 1 4 crops
    scenes = render_scenes(test_scenes, torch.Generator().manual_seed(5000 + seed), scene)
    targets = scenes.targets  # (N, 160)
    splits = VOCABULARY.splits()
    sets = {"all": list(range(len(VOCABULARY))), "U_comb": splits.u_comb, "U_word": splits.u_word}
    tokens, seconds = {}, {}
    for name, levels in POOLINGS.items():
        start = time.perf_counter()
        tokens[name] = features(towers, scenes.images, levels)  # (N, crops*T, D)
        seconds[name] = (time.perf_counter() - start) / len(scenes.images)
    rows: dict[str, float] = {}
    for template_name, templates in TEMPLATES.items():
        for reference in REFERENCES:
            baseline = CLIPBaseline(towers, CLIPBaselineConfig(templates=templates, reference=reference))
            labels = baseline.encode_labels(VOCABULARY.labels).float()  # (160, D)
            for pool_name in POOLINGS:
                crops = baseline.class_tokens(tokens[pool_name])  # (N, crops, D)
                logits = pooled_logits(crops, labels, baseline.reference_term(), baseline.logit_scale)  # (N, 160)
                key = f"{template_name} | {pool_name} | {reference}"
                for set_name, columns in sets.items():
                    rows[f"{key} | mAP {set_name}"] = 100 * mean_average_precision(logits[:, columns],
                                                                                   targets[:, columns])
                rows[f"{key} | F1@3 all"] = 100 * topk_precision_recall_f1(logits, targets, 3)[2]
                rows[f"{key} | macro F1 @0.5"] = macro_f1_at_half(logits, targets)
                rows[f"{key} | tags/image @0.5"] = float((logits > 0).float().sum(1).mean())
    baseline = CLIPBaseline(towers, CLIPBaselineConfig())
    crops = baseline.class_tokens(tokens["max over crops, levels 0-1"])  # (N, 5, D)
    diagnostics = reference_diagnostics(baseline, crops, baseline.encode_labels(VOCABULARY.labels).float(), targets)
    rows.update({f"diagnostics | {name}": value for name, value in diagnostics.items()})
    return rows, seconds


def table(result: dict) -> str:
    rows = result["rows"]
    keys = list(dict.fromkeys(name.rsplit(" | ", 1)[0] for name in rows if not name.startswith("diagnostics")))
    lines = ["| templates | image pooling | reference | " + " | ".join(METRICS) + " |",
             "|---" * (3 + len(METRICS)) + "|"]
    for key in keys:
        cells = []
        for metric in METRICS:
            values = rows[f"{key} | {metric}"]
            std = statistics.stdev(values) if len(values) > 1 else 0.0
            cells.append(f"{statistics.mean(values):.2f} ± {std:.2f}")
        lines.append(f"| {' | '.join(key.split(' | '))} | " + " | ".join(cells) + " |")
    one_view = statistics.mean(result["seconds_per_image"]["class token, level 0"])
    lines.append("")
    lines.extend(f"{name.split(' | ', 1)[1]}: " + ", ".join(f"{value:.3f}" for value in values) + " (per seed)"
                 for name, values in rows.items() if name.startswith("diagnostics"))
    lines.append("image path per image (one thread, this run): " + ", ".join(
        f"{name} {1000 * statistics.mean(values):.2f} ms ({statistics.mean(values) / one_view:.2f}x)"
        for name, values in result["seconds_per_image"].items()))
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
    rows = {name: [per_seed[s][0][name] for s in seeds] for name in per_seed[seeds[0]][0]}
    timing = {name: [per_seed[s][1][name] for s in seeds] for name in POOLINGS}
    result = {"environment": environment(), "seeds": seeds, "test_scenes": scenes, "rows": rows,
              "seconds_per_image": timing, "seconds": time.perf_counter() - start}
    write_result(result, table(result), args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
