"""What the CLIP baseline's crops cost (issue 9.7): ``adds tag`` without a checkpoint, ``--baseline-pooling max``
(the level-0 view and its four quadrants: 5 tower passes per image, images squashed to 2S) against ``view`` (one
pass at S), on a real-size tower.

The tower is ``ViT-B-32-quickgelu`` (the default of ``adds tag``) with random weights: the arithmetic, hence the
time, is that of the OpenAI weights (none can be downloaded here). Per round each pooling scores the same batch of
prepared 640 x 480 photos-to-be (random pixels, squashed once beforehand, so decoding is not timed) against 80
labels (embedded once); the rounds alternate the order. Printed: seconds per image of each and their median ratio
in one run.

    python benchmarks/baseline_cost.py                  # 2 threads, 32 images, 5 rounds: ~1 min on 2 cores
    python benchmarks/baseline_cost.py --quick          # the tiny test tower, seconds (smoke test)
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import environment, interleaved_times, median_ratio, write_result  # noqa: E402

from adds.tagger import CLIPBaselineConfig, Tagger, TaggerConfig  # noqa: E402
from adds.towers import TINY_MODEL  # noqa: E402

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "baseline_cost.json"
POOLINGS = ("view", "max")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="ViT-B-32-quickgelu")
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="the tiny tower, 4 images, 2 rounds (smoke test)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    model, count, rounds = (TINY_MODEL, 4, 2) if args.quick else (args.model, args.images, args.rounds)
    labels = [f"label {i}" for i in range(80)]
    config = TaggerConfig(batch_size=16, label_cache=False)
    taggers = {pooling: Tagger.clip_baseline(model, None, device="cpu", config=config, labels=labels,
                                             baseline=CLIPBaselineConfig(pooling=pooling)) for pooling in POOLINGS}
    photos = [torch.rand(3, 480, 640, generator=torch.Generator().manual_seed(i)) for i in range(count)]
    prepared = {pooling: [tagger.prepare(photo) for photo in photos] for pooling, tagger in taggers.items()}
    for tagger in taggers.values():
        tagger.set_labels(labels)  # label embeddings once, outside the timing
    cases = {pooling: (lambda p=pooling: taggers[p].score_prepared(prepared[p])) for pooling in POOLINGS}
    times = interleaved_times(cases, repeats=rounds, warmup=1, desc="baseline pooling")
    per_image = {pooling: statistics.median(times[pooling]) / count for pooling in POOLINGS}
    ratio = median_ratio(times, "max", "view")
    result = {"environment": environment(), "model": model, "images": count, "rounds": rounds,
              "plans": {p: taggers[p].plan.describe() for p in POOLINGS}, "seconds_per_image": per_image,
              "max_over_view": ratio, "times": times}
    table = "\n".join([f"{model}, {count} images, 80 labels, {args.threads} thread(s), median of {rounds} rounds:",
                       *(f"  {p:<5} {taggers[p].plan.describe():<45} {1000 * per_image[p]:8.1f} ms / image"
                         for p in POOLINGS),
                       f"  max / view: {ratio:.2f}x"])
    write_result(result, table, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
