"""Pyramid-Forwarding vs a naive full-resolution ViT: FLOPs and CPU wall time (issue 6, item 1).

The paper ("Pyramid-Forwarding") says that running a ViT pre-trained at ``S x S`` on a ``(d*S) x (d*S)`` image costs
``O(d^4)`` because of self-attention, and that Pyramid-Forwarding (levels ``0..log2 d``, ``2^i x 2^i`` crops of
size ``S`` at level ``i``, all through the tower as one batch) brings it down to ``1 + 2^2 + ... + d^2 = O(d^2)``
tower calls. This script measures both sides in one run:

* **pyramid**: :class:`adds.pyramid.PyramidForwarding` with every level (``(4 d^2 - 1) / 3`` crops of ``S``);
* **naive**: the same open_clip ViT built at ``d*S`` (``TowerConfig(image_size=d*S)``) and run on the whole image,
  ``d^2`` times as many patch tokens. With random weights open_clip simply creates a positional embedding for the
  larger grid; with pretrained weights it would interpolate the ``S`` grid's embedding (``resize_pos_embed``) --
  the cost is the same either way;
* **top level only** (FLOPs only): Table 7's single-level row, ``d^2`` crops.

FLOPs are counted with :class:`torch.utils.flop_counter.FlopCounterMode` on *meta* tensors (no memory, no
compute). They are not counted on real CPU tensors because ``nn.MultiheadAttention``'s inference fast path
(``_native_multi_head_attention``) is invisible to the counter there: it would silently drop the QKV projections and
the attention itself. An analytic count (patch embedding, ``4 W^2 + 2 W M`` per token and layer for QKV/out/MLP,
``2 T^2 W`` per layer for attention, the projection of every token) is reported next to it as a cross-check, and
used for the crossover ``d*`` where the naive ViT becomes more expensive than the pyramid.

Wall time (CPU, batch 1 by default) is measured for ``d = 2, 4``; ``d = 8`` is counted only. Pyramid and naive runs
are interleaved, their order rotated each round, and the ratio is the median of the per-round ratios: on shared
cores absolute times are noise, the ratio is the result.

Examples::

    python benchmarks/pyramid_vs_fullres.py --quick
    python benchmarks/pyramid_vs_fullres.py --models ViT-B-32 ViT-B-16 --measure 2 4 --count-only 8 --repeats 3
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from _common import (  # benchmarks/ is on sys.path when run
    count_flops,
    environment,
    interleaved_times,
    median_ratio,
    write_result,
)

from adds.pyramid import PyramidConfig, PyramidForwarding, num_crops, plan, top_level
from adds.towers import TowerConfig, Towers, load_towers, meta_towers

logger = logging.getLogger(__name__)

DEFAULT_OUT = Path(__file__).parent / "results" / "pyramid_vs_fullres.json"


@dataclass(frozen=True)
class PyramidBenchConfig:
    """What to measure.

    Attributes:
        models: open_clip ViT names measured in wall time (random weights) and counted.
        measure: scale factors ``d`` measured in wall time (and counted).
        count_only: scale factors only counted in FLOPs (too slow or too big to run here).
        count_only_models: models only counted in FLOPs at every ``d`` (e.g. ViT-L-14-336, the paper's 1344/336).
        batch: images per forward in the timed runs.
        repeats: timed rounds (pyramid and naive interleaved); the median is reported.
        warmup: untimed rounds before.
        threads: ``torch.set_num_threads`` (``None``: leave torch's default).
        seed: seed of the random towers and images.
    """

    models: tuple[str, ...] = ("ViT-B-32", "ViT-B-16")
    measure: tuple[int, ...] = (2, 4)
    count_only: tuple[int, ...] = (8,)
    count_only_models: tuple[str, ...] = ("ViT-L-14-336",)
    batch: int = 1
    repeats: int = 3
    warmup: int = 1
    threads: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        for d in (*self.measure, *self.count_only):
            if d < 2 or d & (d - 1):
                raise ValueError(f"scale factors must be powers of two >= 2 (whole pyramid levels), got {d}")
        if self.batch < 1 or self.repeats < 1 or self.warmup < 0:
            raise ValueError(f"batch and repeats must be >= 1 and warmup >= 0, got {self.batch}, {self.repeats}, "
                             f"{self.warmup}")


@dataclass(frozen=True)
class VitShape:
    """The sizes of a ViT image tower that its cost depends on."""

    image_size: int
    patch: int
    width: int  # W, the residual width
    layers: int
    mlp: int  # M, the MLP hidden width
    embed_dim: int  # D, the joint space (projection of every token)

    @property
    def patches(self) -> int:
        return (self.image_size // self.patch) ** 2

    def flops(self, scale: float = 1.0) -> dict[str, float]:
        """Analytic FLOPs (2 per multiply-add) of one ``encode_image_tokens`` call at ``scale * image_size``.

        ``scale`` may be fractional (used for the crossover); the token count is ``scale^2 * patches + 1``.
        """
        n = self.patches * scale**2
        tokens = n + 1
        w = self.width
        patch_embed = n * 3 * self.patch**2 * w
        linear = self.layers * tokens * (4 * w * w + 2 * w * self.mlp)
        attention = self.layers * 2 * tokens**2 * w
        projection = tokens * w * self.embed_dim
        out = {"patch_embed": patch_embed, "linear": linear, "attention": attention, "projection": projection}
        out = {key: 2.0 * value for key, value in out.items()}
        out["total"] = sum(out.values())
        return out

    @classmethod
    def of(cls, towers: Towers) -> VitShape:
        visual = towers.clip.visual
        patch = visual.patch_size
        mlp = visual.transformer.resblocks[0].mlp.c_fc.out_features
        return cls(
            image_size=towers.image_size,
            patch=int(patch[0] if isinstance(patch, (tuple, list)) else patch),
            width=int(visual.transformer.width),
            layers=int(visual.transformer.layers),
            mlp=int(mlp),
            embed_dim=towers.embed_dim,
        )


def pyramid_crops_for(d: int) -> int:
    """Crops of a full pyramid for a ``d*S`` image: ``1 + 4 + ... + d^2 = (4 d^2 - 1) / 3``."""
    return num_crops(plan(d, d, 1))


def analytic_ratio(shape: VitShape, d: int) -> float:
    """Naive ``d*S`` ViT FLOPs over full-pyramid FLOPs, analytically."""
    return shape.flops(d)["total"] / (pyramid_crops_for(d) * shape.flops(1)["total"])


def crossover(shape: VitShape) -> float | None:
    """Smallest ``d`` (continuous) at which the naive ViT costs as much as an idealised pyramid of ``(4d^2-1)/3`` crops.

    Below ``d*`` the pyramid is *more* expensive in FLOPs: it runs ~4/3 as many tokens through the linear layers
    and only saves attention, which is a small share of a ViT's FLOPs at CLIP resolutions.
    """
    base = shape.flops(1)["total"]

    def gap(d: float) -> float:
        return shape.flops(d)["total"] - (4 * d * d - 1) / 3 * base

    lo, hi = 1.0, 2.0
    while gap(hi) < 0:
        lo, hi = hi, hi * 2
        if hi > 1024:
            return None
    for _ in range(60):  # bisection
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if gap(mid) < 0 else (lo, mid)
    return hi












def ratio_range(times: dict[str, list[float]], numerator: str, denominator: str) -> list[float]:
    """``[min, max]`` over rounds of the per-round ratio: how much the shared machine moved the result."""
    ratios = [a / b for a, b in zip(times[numerator], times[denominator], strict=True)]
    return [min(ratios), max(ratios)]


def _normalise(images: torch.Tensor, towers: Towers) -> torch.Tensor:
    mean = torch.tensor(towers.mean, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(towers.std, device=images.device).view(1, 3, 1, 1)
    return (images - mean) / std  # (B, 3, H, W)


def _flop_row(model: str, base_shape: VitShape, d: int) -> dict:
    """Counted (meta) and analytic FLOPs of base crop, pyramid, top level only and naive at ``d``."""
    size = base_shape.image_size
    base = meta_towers(model)
    naive = meta_towers(model, d * size)
    images = torch.empty(1, 3, d * size, d * size, device="meta")
    full = PyramidForwarding(size, base.mean, base.std, PyramidConfig()).to("meta")
    top = PyramidForwarding(size, base.mean, base.std, PyramidConfig(levels=(top_level(d, d, 1),))).to("meta")
    counted = {
        "base_crop": count_flops(lambda: base.encode_image_tokens(torch.empty(1, 3, size, size, device="meta"))),
        "pyramid": count_flops(lambda: full(images, base.encode_image_tokens)),
        "top_level_only": count_flops(lambda: top(images, base.encode_image_tokens)),
        "naive": count_flops(lambda: naive.encode_image_tokens(images)),
    }
    analytic_naive = VitShape(**{**asdict(base_shape), "image_size": d * size}).flops()
    return {
        "d": d,
        "input": d * size,
        "crops": pyramid_crops_for(d),
        "pyramid_tokens": pyramid_crops_for(d) * (base_shape.patches + 1),
        "naive_tokens": d * d * base_shape.patches + 1,
        "flops": counted,
        "flop_ratio_naive_over_pyramid": counted["naive"] / counted["pyramid"],
        "flop_ratio_naive_over_top_level": counted["naive"] / counted["top_level_only"],
        "analytic_flops_naive": analytic_naive,
        "analytic_flop_ratio_naive_over_pyramid": analytic_ratio(base_shape, d),
        "naive_attention_share": analytic_naive["attention"] / analytic_naive["total"],
    }


def _time_row(model: str, towers: Towers, d: int, config: PyramidBenchConfig) -> dict:
    size = towers.image_size
    generator = torch.Generator().manual_seed(config.seed)
    images = torch.rand(config.batch, 3, d * size, d * size, generator=generator)  # (B, 3, dS, dS) in [0, 1]
    pyramid = PyramidForwarding(size, towers.mean, towers.std, PyramidConfig()).eval()
    naive = load_towers(TowerConfig(model=model, pretrained=None, image_size=d * size, seed=config.seed))
    with torch.no_grad():
        cases = {
            "pyramid": lambda: pyramid(images, towers.encode_image_tokens),
            "naive": lambda: naive.encode_image_tokens(_normalise(images, naive)),
        }
        times = interleaved_times(cases, config.repeats, config.warmup, f"{model} d={d}")
    return {
        "seconds": times,
        "median_seconds": {name: statistics.median(values) for name, values in times.items()},
        "time_ratio_naive_over_pyramid": median_ratio(times, "naive", "pyramid"),
        "time_ratio_range": ratio_range(times, "naive", "pyramid"),
    }


def run(config: PyramidBenchConfig) -> dict:
    """Count and time pyramid vs naive for every model and scale; returns the JSON-able result."""
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    models: list[dict] = []
    for model in (*config.models, *config.count_only_models):
        timed = model in config.models
        towers = load_towers(TowerConfig(model=model, pretrained=None, seed=config.seed)) if timed else None
        shape = VitShape.of(towers if towers is not None else meta_towers(model))
        entry = {"model": model, "shape": asdict(shape), "timed": timed,
                 "attention_share_at_base": shape.flops()["attention"] / shape.flops()["total"],
                 "crossover_d": crossover(shape), "rows": []}
        for d in sorted({*config.measure, *config.count_only}):
            logger.info("%s d=%d: counting FLOPs", model, d)
            row = _flop_row(model, shape, d)
            if timed and d in config.measure:
                row.update(_time_row(model, towers, d, config))
            entry["rows"].append(row)
        models.append(entry)
    return {
        "benchmark": "pyramid_vs_fullres",
        "config": asdict(config),
        "environment": environment(),
        "models": models,
    }




def format_table(result: dict) -> str:
    """The ratios as a Markdown table (one row per model and scale)."""
    lines = [
        "| model | d | input | crops | FLOPs naive / pyramid | analytic | naive / top level | naive attention share "
        "| time naive / pyramid (min-max of rounds) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for entry in result["models"]:
        for row in entry["rows"]:
            ratio = row.get("time_ratio_naive_over_pyramid")
            timed = "-" if ratio is None else "{:.2f} ({:.2f}-{:.2f})".format(ratio, *row["time_ratio_range"])
            lines.append(
                f"| {entry['model']} | {row['d']} | {row['input']} | {row['crops']} "
                f"| {row['flop_ratio_naive_over_pyramid']:.2f} | {row['analytic_flop_ratio_naive_over_pyramid']:.2f} "
                f"| {row['flop_ratio_naive_over_top_level']:.2f} | {row['naive_attention_share']:.0%} "
                f"| {timed} |"
            )
    lines.append("")
    for entry in result["models"]:
        d_star = entry["crossover_d"]
        where = "none below d = 1024" if d_star is None else f"d* = {d_star:.2f}"
        lines.append(f"{entry['model']}: attention is {entry['attention_share_at_base']:.1%} of the FLOPs at "
                     f"{entry['shape']['image_size']} px; naive costs as much as the pyramid at {where}")
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] + " Prints a table of ratios and writes JSON.",
        epilog="Ratios greater than 1 mean the naive full-resolution ViT costs more than Pyramid-Forwarding.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    defaults = PyramidBenchConfig()
    parser.add_argument("--models", nargs="+", default=list(defaults.models), help="ViTs timed and counted")
    parser.add_argument("--count-only-models", nargs="*", default=list(defaults.count_only_models),
                        help="ViTs only counted in FLOPs (default: ViT-L-14-336, the paper's 1344/336 setting)")
    parser.add_argument("--measure", nargs="+", type=int, default=list(defaults.measure),
                        help="scale factors d timed and counted (powers of two)")
    parser.add_argument("--count-only", nargs="*", type=int, default=list(defaults.count_only),
                        help="scale factors only counted in FLOPs")
    parser.add_argument("--batch", type=int, default=defaults.batch, help="images per timed forward")
    parser.add_argument("--repeats", type=int, default=defaults.repeats, help="timed rounds (median reported)")
    parser.add_argument("--warmup", type=int, default=defaults.warmup, help="untimed rounds first")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--quick", action="store_true",
                        help="ViT-B-32 only, d=2 timed, d=4 counted, 3 rounds, no ViT-L (about a minute)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"JSON output (default: {DEFAULT_OUT})")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logger.setLevel(logging.INFO)
    if args.quick:
        config = PyramidBenchConfig(models=("ViT-B-32",), measure=(2,), count_only=(4,), count_only_models=(),
                                    batch=1, repeats=3, warmup=1, threads=args.threads)
    else:
        config = PyramidBenchConfig(
            models=tuple(args.models), measure=tuple(args.measure), count_only=tuple(args.count_only),
            count_only_models=tuple(args.count_only_models), batch=args.batch, repeats=args.repeats,
            warmup=args.warmup, threads=args.threads,
        )
    result = run(config)
    write_result(result, format_table(result), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
