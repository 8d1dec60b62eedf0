"""Reduced precision for inference on this CPU: ADDS forward (tower + head) fp32 vs bf16 (issue 12, item 3).

Two models, each measured in one run with the cases interleaved (:func:`_common.interleaved_times`):

* **toy world** (the goal's setting): the frozen toy CLIP (``adds.toyworld`` v2, 48 px, committed weights) with an ADDS
  head (DM-decoder x2) trained here for a few epochs with ASL on toy-world scenes (conventional setting, all 160
  labels). Reported: forward throughput fp32 vs bf16 and the fraction of held-out toy-world scenes whose top-5
  tags are identical (as a set, and in the same order) between fp32 and bf16.
* **ViT-B-32** (what ``adds tag`` users run; random weights, since nothing can be downloaded here): the paper's head
  (six DM-decoder layers) at 224 px with k = 80 labels; throughput only (random weights give no meaningful tags).

Cases: ``fp32``; ``bf16`` -- the vision tower cast to bfloat16 and the head in float32, as ``--precision bf16``
does on a CPU (:class:`adds.tagger.precision.InferencePrecision`); and, for the record, the alternatives that were
measured and not taken: ``bf16-all`` (tower *and* head cast to bfloat16), ``bf16-autocast`` (fp32 weights under
``torch.autocast("cpu", bfloat16)``, which the issue first proposed) and ``fp16`` (the vision tower cast to float16,
which ``--precision fp16`` refuses on a CPU). Label embeddings are computed once in fp32 and shared.

Examples::

    python benchmarks/precision.py --quick
    python benchmarks/precision.py --train-scenes 600 --test-scenes 400 --repeats 5
"""

from __future__ import annotations

import argparse
import copy
import math
import statistics
import sys
from pathlib import Path

import torch
from _common import environment, interleaved_times, median_ratio, write_result  # benchmarks/ is on sys.path

from adds.decoder import DecoderConfig
from adds.losses import AsymmetricLoss
from adds.model import ADDS, ADDSConfig
from adds.prompts import LabelEmbedder
from adds.pyramid import PyramidConfig
from adds.tagger.precision import InferencePrecision, cpu_supports_bf16
from adds.towers import TowerConfig, load_towers
from adds.toyworld.toyclip import load_toy_towers
from adds.toyworld.world import VOCABULARY, SceneConfig, render_scenes

DEFAULT_OUT = Path(__file__).parent / "results" / "precision.json"
TOY_SCENE = SceneConfig()  # the toy world v2's scenes (48 px, 2-6 objects)


def cast_copy(model: ADDS, name: str, head: bool = False) -> ADDS:
    """A copy of ``model`` with its vision tower (and with ``head`` its head too) in ``name`` (``bf16`` / ``fp16``);
    without ``head`` this is what the tagger does on a CPU."""
    model = InferencePrecision(name, "cpu").prepare(copy.deepcopy(model))
    if head:
        dtype = torch.bfloat16 if name == "bf16" else torch.float16
        for part in (model.token_proj, model.decoder, model.classifier):
            part.to(dtype)
    return model


def variants(model: ADDS) -> dict[str, ADDS]:
    return {"fp32": model, "bf16": cast_copy(model, "bf16"), "bf16-all": cast_copy(model, "bf16", head=True),
            "bf16-autocast": model, "fp16": cast_copy(model, "fp16")}


def train_toy_head(scenes: int, epochs: int, seed: int = 0) -> tuple[ADDS, torch.Tensor]:
    """An ADDS head (DM-decoder x2) trained with ASL on cached toy-CLIP tokens of ``scenes`` toy-world scenes."""
    towers = load_toy_towers(0)
    world = render_scenes(scenes, torch.Generator().manual_seed(1000 + seed), TOY_SCENE)
    images, targets = world.images, world.targets  # (N, 3, 48, 48), (N, 160)
    labels = LabelEmbedder(towers)(VOCABULARY.labels)  # (160, D): 144 concepts + 16 attribute words
    torch.manual_seed(seed)
    model = ADDS(ADDSConfig(decoder=DecoderConfig(num_layers=2, num_heads=4, ffn_dim=128),
                            pyramid=PyramidConfig(levels=(0,))), towers=towers)
    with torch.no_grad():
        tokens = torch.cat([model.forward_features(images[i:i + 256]) for i in range(0, scenes, 256)])  # (N, T, D)
    optimizer = torch.optim.Adam(model.trainable_parameters(), lr=2e-3)
    batch = 32
    total = epochs * math.ceil(scenes / batch)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=2e-3, total_steps=total, pct_start=0.2)
    loss_fn = AsymmetricLoss()
    model.train()
    generator = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        order = torch.randperm(scenes, generator=generator)
        for start in range(0, scenes, batch):
            rows = order[start:start + batch]
            loss = loss_fn(model.forward_head(tokens[rows], labels), targets[rows])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
    return model.eval(), labels


@torch.no_grad()
def forward(model: ADDS, images: torch.Tensor, labels: torch.Tensor, batch: int, autocast: bool = False):
    """Sigmoid scores ``(N, k)`` float32 of ADDS forward (tower + head) in batches."""
    out = []
    for start in range(0, images.shape[0], batch):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            logits = model.forward_head(model.forward_features(images[start:start + batch]), labels)
        out.append(logits.float().sigmoid())
    return torch.cat(out)


def top5_agreement(reference: torch.Tensor, other: torch.Tensor) -> dict[str, float]:
    """Fraction of images whose top-5 labels are the same set / the same ordered list."""
    a, b = reference.topk(5, dim=1).indices, other.topk(5, dim=1).indices  # (N, 5)
    same_set = (a.sort(dim=1).values == b.sort(dim=1).values).all(dim=1)
    same_order = (a == b).all(dim=1)
    return {"top5_same_set": same_set.float().mean().item(), "top5_same_order": same_order.float().mean().item(),
            "max_abs_score_diff": (reference - other).abs().max().item()}


def measure(models: dict[str, ADDS], images: torch.Tensor, labels: torch.Tensor, batch: int, repeats: int,
            desc: str) -> dict:
    cases = {name: (lambda m=model, name=name: forward(m, images, labels, batch, autocast=name == "bf16-autocast"))
             for name, model in models.items()}
    times = interleaved_times(cases, repeats=repeats, warmup=1, desc=desc)
    result = {"images": images.shape[0], "batch": batch, "labels": labels.shape[0], "seconds": times,
              "images_per_s": {name: images.shape[0] / statistics.median(t) for name, t in times.items()}}
    result["speedup_vs_fp32"] = {name: median_ratio(times, "fp32", name) for name in times if name != "fp32"}
    return result


def split_times(models: dict[str, ADDS], images: torch.Tensor, labels: torch.Tensor, batch: int,
                repeats: int) -> dict:
    """Seconds of the tower alone and of the head alone (on the tower's tokens), fp32 vs bf16: where the time goes."""
    tokens = {name: [models[name].forward_features(images[i:i + batch]) for i in range(0, len(images), batch)]
              for name in ("fp32", "bf16")}

    def tower(name):
        with torch.no_grad():
            for i in range(0, len(images), batch):
                models[name].forward_features(images[i:i + batch])

    def head(name):
        with torch.no_grad():
            for chunk in tokens[name]:
                models[name].forward_head(chunk, labels)

    cases = {f"{part} {name}": (lambda f=fn, n=name: f(n)) for part, fn in (("tower", tower), ("head", head))
             for name in ("fp32", "bf16")}
    times = interleaved_times(cases, repeats=repeats, warmup=1, desc="tower / head")
    median = {name: statistics.median(t) for name, t in times.items()}
    return {"median_seconds": median, "head_share_fp32": median["head fp32"] / (median["head fp32"] +
                                                                                  median["tower fp32"]),
            "tower_speedup": median["tower fp32"] / median["tower bf16"],
            "head_speedup": median["head fp32"] / median["head bf16"]}


def profile_ops(model: ADDS, images: torch.Tensor, labels: torch.Tensor, batch: int, rows: int = 8) -> list[dict]:
    """Self CPU time share of the top operators of one forward pass (``torch.profiler``)."""
    from torch.profiler import profile

    forward(model, images, labels, batch)
    with profile() as prof:
        forward(model, images, labels, batch)
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events)
    return [{"op": e.key, "share": e.self_cpu_time_total / total, "calls": e.count} for e in events[:rows]]


def run_toy(args: argparse.Namespace) -> dict:
    model, labels = train_toy_head(args.train_scenes, args.epochs)
    images = render_scenes(args.test_scenes, torch.Generator().manual_seed(777), TOY_SCENE).images  # held out
    models = variants(model)
    result = measure(models, images, labels, args.toy_batch, args.repeats, "toy world")
    reference = forward(model, images, labels, args.toy_batch)
    result["agreement"] = {name: top5_agreement(reference, forward(m, images, labels, args.toy_batch,
                                                                    autocast=name == "bf16-autocast"))
                           for name, m in models.items() if name != "fp32"}
    result["split"] = split_times(models, images, labels, args.toy_batch, args.repeats)
    result["profile"] = {name: profile_ops(models[name], images, labels, args.toy_batch) for name in ("fp32", "bf16")}
    return result


def gemm_probe(repeats: int) -> dict:
    """GFLOP/s of one ``linear`` of a ViT-B MLP shape (400 x 768 -> 3072) in fp32, bf16 and fp16 weights+inputs."""
    a, w = torch.randn(400, 768), torch.randn(3072, 768)
    tensors = {name: (a.to(dtype), w.to(dtype)) for name, dtype in
               (("fp32", torch.float32), ("bf16", torch.bfloat16), ("fp16", torch.float16))}
    cases = {name: (lambda x=x, y=y: torch.nn.functional.linear(x, y)) for name, (x, y) in tensors.items()}
    times = interleaved_times(cases, repeats=repeats * 10, warmup=2, desc="gemm")
    return {name: 2 * 400 * 768 * 3072 / statistics.median(t) / 1e9 for name, t in times.items()}


def profile_shapes(model: ADDS, images: torch.Tensor, labels: torch.Tensor, rows: int = 3) -> list[dict]:
    """Top operators (with input shapes) of one forward under ``torch.autocast("cpu", bfloat16)``."""
    from torch.profiler import profile

    forward(model, images, labels, images.shape[0], autocast=True)
    with profile(record_shapes=True) as prof:
        forward(model, images, labels, images.shape[0], autocast=True)
    events = sorted(prof.key_averages(group_by_input_shape=True), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events)
    return [{"op": e.key, "shapes": str(e.input_shapes), "share": e.self_cpu_time_total / total} for e in events[:rows]]


def run_vit(args: argparse.Namespace) -> dict:
    towers = load_towers(TowerConfig(model=args.vit_model, pretrained=None))
    model = ADDS(ADDSConfig(pyramid=PyramidConfig(levels=(0,))), towers=towers).eval()  # the paper's 6-layer head
    labels = torch.nn.functional.normalize(torch.randn(args.vit_labels, towers.embed_dim,
                                                       generator=torch.Generator().manual_seed(0)), dim=-1)
    images = torch.rand(args.vit_batch, 3, towers.image_size, towers.image_size,
                        generator=torch.Generator().manual_seed(1))
    models = variants(model)
    result = measure(models, images, labels, args.vit_batch, args.repeats, args.vit_model)
    result["model"] = args.vit_model
    result["autocast_profile"] = profile_shapes(model, images, labels)
    result["gemm_gflops_per_s"] = gemm_probe(args.repeats)
    return result


def table(result: dict) -> str:
    lines = ["| model | case | images/s | speed-up vs fp32 | top-5 same set | top-5 same order |",
             "|---|---|---|---|---|---|"]
    for key in ("toy", "vit"):
        part = result.get(key)
        if part is None:
            continue
        title = "toy world (toy CLIP + DM x2)" if key == "toy" else f"{part['model']} + DM x6, k={part['labels']}"
        for name, rate in part["images_per_s"].items():
            speed = "1.00" if name == "fp32" else f"{part['speedup_vs_fp32'][name]:.2f}"
            agree = part.get("agreement", {}).get(name)
            same_set = "" if agree is None else f"{100 * agree['top5_same_set']:.1f} %"
            same_order = "" if agree is None else f"{100 * agree['top5_same_order']:.1f} %"
            lines.append(f"| {title} | {name} | {rate:.1f} | {speed} | {same_set} | {same_order} |")
    if "vit" in result:
        vit = result["vit"]
        lines += ["", "GEMM 400x768x3072 GFLOP/s: " + ", ".join(f"{n} {v:.0f}" for n, v in
                                                             vit["gemm_gflops_per_s"].items()),
                  "ViT bf16-autocast profile: " + ", ".join(f"{op['op']} {op['shapes']} {100 * op['share']:.0f} %"
                                                            for op in vit["autocast_profile"])]
    split = result["toy"]["split"]
    lines += ["", f"toy world, where the time goes: head = {100 * split['head_share_fp32']:.0f} % of the fp32 forward; "
              f"bf16 speeds the tower up {split['tower_speedup']:.2f}x, the (fp32) head {split['head_speedup']:.2f}x"]
    for name, ops in result["toy"]["profile"].items():
        lines.append(f"profile {name}: " + ", ".join(f"{op['op']} {100 * op['share']:.0f} %" for op in ops))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train-scenes", type=int, default=600)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--test-scenes", type=int, default=400, help="held-out toy scenes for speed and agreement")
    parser.add_argument("--toy-batch", type=int, default=64)
    parser.add_argument("--vit-model", default="ViT-B-32-quickgelu")
    parser.add_argument("--vit-batch", type=int, default=8)
    parser.add_argument("--vit-labels", type=int, default=80)
    parser.add_argument("--no-vit", action="store_true", help="toy world only")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="fewer scenes and repeats (~1 min)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    if args.quick:
        args.train_scenes, args.epochs, args.test_scenes, args.repeats = 300, 5, 200, 3
    if not cpu_supports_bf16():
        print("this CPU has no native bfloat16 (AVX512-BF16/AMX): --precision bf16 is refused here", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    result = {"environment": environment(), "settings": vars(args) | {"out": str(args.out)}}
    result["toy"] = run_toy(args)
    if not args.no_vit:
        result["vit"] = run_vit(args)
    write_result(result, table(result), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
