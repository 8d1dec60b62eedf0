"""One prepared GPU run: throughput, mixed precision, a few AMP training steps and Pyramid-Forwarding at 1344/336.

Made for a single short session on an H100 / H200 without internet (random weights: the cost is the same as CLIP's;
label embeddings are random unit vectors). Everything is printed and written to ``<out>/gpu_check.json`` after each
section, so a run cut short still leaves what it measured. No section or row starts after ``--budget-s`` (default
240 s; one row takes seconds); what was not started is listed under ``skipped``.

Sections:

1. **environment**: CUDA availability, device name, capability, memory, torch / open_clip versions.
2. **throughput** (images/s, peak ``torch.cuda.max_memory_allocated``): for ViT-B-32 at 224 (batch 64) and
   ViT-L-14-336 at 336 (batch 32), the bare tower (``clip.encode_image``) and the full ADDS forward (tower +
   DM-decoder x 6 + FC) at k = 80 and 1006 labels, in fp32 (TF32 off, torch's default), under
   ``torch.autocast(dtype=torch.bfloat16)`` and ``torch.autocast(dtype=torch.float16)``.
3. **training**: ASL training steps of the head on one fixed batch of tokens under bf16 autocast and under fp16
   autocast with a ``GradScaler``; checks that the loss stays finite and decreases.
4. **pyramid**: ViT-L-14-336 on 1344 px images -- Pyramid-Forwarding (1 + 4 + 16 = 21 crops, Table 7) vs the naive
   full-resolution ViT (9,217 tokens) under bf16, images/s and peak memory.

Warm-up iterations precede every timing and ``torch.cuda.synchronize()`` brackets the timers.

Launch lines::

    python benchmarks/gpu_check.py --out "$OUT"                      # the GPU run (< 5 minutes)
    torchrun --nproc_per_node=1 benchmarks/gpu_check.py --ddp-smoke   # NCCL + DDP on the head, 3 steps, prints OK
    python benchmarks/gpu_check.py --quick --device cpu --out /tmp/x  # tiny towers on CPU (what the tests run)
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import tempfile
import time
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path

import open_clip
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from adds.config import config_to_dict
from adds.decoder import DecoderConfig
from adds.losses import AsymmetricLoss
from adds.model import ADDS, ADDSConfig
from adds.towers import TINY_MODEL, TowerConfig, load_towers

logger = logging.getLogger(__name__)

RESULT_NAME = "gpu_check.json"
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class ModelSpec:
    """One tower to measure: open_clip name and batch size (its own input size is used)."""

    model: str
    batch: int


@dataclass(frozen=True)
class GpuCheckConfig:
    """What the GPU run measures.

    Attributes:
        device: ``"cuda"`` or ``"cpu"`` (the CPU path exists so the script can be tested without a GPU).
        models: towers and batch sizes for the throughput section.
        labels: vocabulary sizes of the full-forward rows.
        precisions: subset of ``fp32``, ``bf16``, ``fp16`` (``fp16`` is skipped on CPU).
        warmup, iters: untimed and timed iterations per throughput row.
        train_model: tower whose tokens the training section uses.
        train_steps: ASL steps on one fixed batch; train_batch, train_labels: its size.
        lr: Adam learning rate of the training section.
        pyramid_model: tower of the Pyramid-Forwarding section; pyramid_scale: input = scale x tower size.
        pyramid_batch, naive_batch: images per forward of the pyramid and of the naive full-resolution ViT.
        budget_s: no section or row starts after this many seconds.
        decoder: the DM-decoder stack (paper: 6 layers).
        seed: seed of towers, heads and inputs.
    """

    device: str = "cuda"
    models: tuple[ModelSpec, ...] = (ModelSpec("ViT-B-32", 64), ModelSpec("ViT-L-14-336", 32))
    labels: tuple[int, ...] = (80, 1006)
    precisions: tuple[str, ...] = ("fp32", "bf16", "fp16")
    warmup: int = 3
    iters: int = 10
    train_model: str = "ViT-B-32"
    train_steps: int = 20
    train_batch: int = 32
    train_labels: int = 80
    lr: float = 1e-4
    pyramid_model: str = "ViT-L-14-336"
    pyramid_scale: int = 4
    pyramid_batch: int = 4
    naive_batch: int = 2
    budget_s: float = 240.0
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    seed: int = 0

    def __post_init__(self) -> None:
        unknown = set(self.precisions) - set(PRECISIONS)
        if unknown:
            raise ValueError(f"unknown precisions {sorted(unknown)}; use {sorted(PRECISIONS)}")


def quick_config(device: str) -> GpuCheckConfig:
    """Tiny towers and sizes: a CPU check of every code path in seconds."""
    return GpuCheckConfig(
        device=device, models=(ModelSpec(TINY_MODEL, 4),), labels=(8, 16), warmup=1, iters=2,
        train_model=TINY_MODEL, train_steps=6, train_batch=4, train_labels=8, lr=1e-3, pyramid_model=TINY_MODEL,
        pyramid_batch=2, naive_batch=1, budget_s=120.0,
        decoder=DecoderConfig(num_layers=2, num_heads=4, ffn_dim=64, dropout=0.0),
    )


class _Clock:
    """Wall time since start, with the budget check."""

    def __init__(self, budget_s: float) -> None:
        self.start = time.perf_counter()
        self.budget_s = budget_s

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def left(self) -> bool:
        return self.elapsed() < self.budget_s


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _autocast(device: torch.device, precision: str):
    dtype = PRECISIONS[precision]
    return nullcontext() if dtype is None else torch.autocast(device.type, dtype=dtype)


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _peak_mib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None


def timed(fn, device: torch.device, warmup: int, iters: int) -> float:
    """Seconds per call of ``fn`` after ``warmup`` calls, synchronised around the timer."""
    for _ in range(warmup):
        fn()
    _sync(device)
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    _sync(device)
    return (time.perf_counter() - start) / iters


def environment(device: torch.device) -> dict:
    env = {
        "torch": torch.__version__,
        "open_clip": open_clip.__version__,
        "python": platform.python_version(),
        "cuda_available": torch.cuda.is_available(),
        "device": str(device),
        "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env.update(device_name=props.name, capability=f"{props.major}.{props.minor}",
                   memory_gib=round(props.total_memory / 2**30, 1), cuda=torch.version.cuda,
                   bf16_supported=torch.cuda.is_bf16_supported())
    else:
        env.update(device_name=platform.processor() or platform.machine(), cpu_count=os.cpu_count())
    return env


def _images(batch: int, size: int, device: torch.device, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 3, size, size, generator=generator).to(device)  # (B, 3, S, S) in [0, 1]


def _label_embeddings(k: int, dim: int, device: torch.device, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(k, dim, generator=generator), dim=-1).to(device)  # (k, D)


def _bare(model: ADDS, images: torch.Tensor) -> torch.Tensor:
    towers = model.towers
    mean = torch.tensor(towers.mean, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(towers.std, device=images.device).view(1, 3, 1, 1)
    return towers.clip.encode_image((images - mean) / std)  # (B, D)


def _build(model_name: str, config: GpuCheckConfig, device: torch.device, image_size: int | None = None) -> ADDS:
    towers = load_towers(TowerConfig(model=model_name, pretrained=None, seed=config.seed, image_size=image_size))
    torch.manual_seed(config.seed)
    return ADDS(ADDSConfig(decoder=config.decoder), towers=towers).to(device).eval()


def _throughput_of(spec: ModelSpec, precisions: list[str], config: GpuCheckConfig, device: torch.device,
                   clock: _Clock, skipped: list[str]) -> list[dict]:
    """Rows of one tower (its model and inputs are freed when this returns)."""
    model = _build(spec.model, config, device)
    size = model.towers.image_size
    images = _images(spec.batch, size, device, config.seed)
    embeddings = {k: _label_embeddings(k, model.towers.embed_dim, device, config.seed) for k in config.labels}
    rows = []
    for precision in precisions:
        for what, k in [("bare", None)] + [("full", k) for k in config.labels]:
            if not clock.left():
                skipped.append(f"throughput {spec.model} {precision} {what} k={k}")
                continue

            def step(what=what, k=k, precision=precision) -> torch.Tensor:
                with torch.no_grad(), _autocast(device, precision):
                    return _bare(model, images) if what == "bare" else model(images, embeddings[k])

            finite = bool(torch.isfinite(step().float()).all())
            _reset_peak(device)
            seconds = timed(step, device, config.warmup, config.iters)
            row = {"model": spec.model, "image_size": size, "batch": spec.batch, "precision": precision,
                   "what": what, "k": k, "images_per_second": spec.batch / seconds,
                   "ms_per_batch": seconds * 1e3, "peak_memory_mib": _peak_mib(device), "finite": finite}
            rows.append(row)
            print(f"{spec.model:>14} {size} b{spec.batch} {precision:>4} {what:>4} k={str(k):>5}: "
                  f"{row['images_per_second']:9.1f} img/s  peak {row['peak_memory_mib'] or 0:8.0f} MiB"
                  f"{'' if finite else '  NON-FINITE'}", flush=True)
    return rows


def throughput(config: GpuCheckConfig, device: torch.device, clock: _Clock, skipped: list[str]) -> list[dict]:
    """Images/s and peak memory of bare tower and full ADDS forward per model, precision and k."""
    rows = []
    precisions = [p for p in config.precisions if device.type == "cuda" or p != "fp16"]
    for spec in config.models:
        if not clock.left():
            skipped.append(f"throughput {spec.model}")
            continue
        rows.extend(_throughput_of(spec, precisions, config, device, clock, skipped))
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rows


def training(config: GpuCheckConfig, device: torch.device, clock: _Clock, skipped: list[str]) -> list[dict]:
    """ASL steps of the head on one fixed batch of tokens under bf16 and fp16 (+ GradScaler) autocast."""
    model = _build(config.train_model, config, device)
    size = model.towers.image_size
    images = _images(config.train_batch, size, device, config.seed)
    with torch.no_grad():
        tokens = model.forward_features(images)  # (B, T, D), fixed
    generator = torch.Generator().manual_seed(config.seed)
    targets = (torch.rand(config.train_batch, config.train_labels, generator=generator) < 0.1).float().to(device)
    embeddings = _label_embeddings(config.train_labels, model.towers.embed_dim, device, config.seed)
    initial = {name: value.detach().clone() for name, value in model.trainable_state_dict().items()}
    rows = []
    precisions = ["bf16"] + (["fp16"] if device.type == "cuda" else [])
    for precision in precisions:
        if not clock.left():
            skipped.append(f"training {precision}")
            continue
        model.load_state_dict(initial, strict=False)  # same start for every precision
        model.train()
        optimizer = torch.optim.Adam(model.trainable_parameters(), lr=config.lr)
        scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
        loss_fn = AsymmetricLoss()
        losses = []
        _reset_peak(device)
        _sync(device)
        start = time.perf_counter()
        for _ in range(config.train_steps):
            with _autocast(device, precision):
                logits = model.forward_head(tokens, embeddings)  # (B, k)
            loss = loss_fn(logits.float(), targets)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            losses.append(float(loss.detach()))
        _sync(device)
        seconds = time.perf_counter() - start
        finite = all(torch.isfinite(torch.tensor(losses)).tolist())
        row = {"model": config.train_model, "precision": precision, "steps": config.train_steps,
               "batch": config.train_batch, "k": config.train_labels, "first_loss": losses[0], "last_loss": losses[-1],
               "finite": finite, "decreased": finite and losses[-1] < losses[0],
               "steps_per_second": config.train_steps / seconds, "peak_memory_mib": _peak_mib(device),
               "grad_scale": scaler.get_scale() if scaler.is_enabled() else None}
        rows.append(row)
        print(f"train {precision}: loss {losses[0]:.3f} -> {losses[-1]:.3f} over {config.train_steps} steps, "
              f"finite={finite}, decreased={row['decreased']}, {row['steps_per_second']:.1f} steps/s", flush=True)
    model.eval()
    return rows


def _pyramid_side(config: GpuCheckConfig, device: torch.device, precision: str) -> dict:
    """Pyramid-Forwarding throughput at ``pyramid_scale x`` the tower size (features only, and full at k = 80)."""
    model = _build(config.pyramid_model, config, device)
    base = model.towers.image_size
    side = base * config.pyramid_scale
    images = _images(config.pyramid_batch, side, device, config.seed)
    embeddings = _label_embeddings(80, model.towers.embed_dim, device, config.seed)

    def features() -> torch.Tensor:
        with torch.no_grad(), _autocast(device, precision):
            return model.forward_features(images)

    def full() -> torch.Tensor:
        with torch.no_grad(), _autocast(device, precision):
            return model(images, embeddings)

    tokens = features().shape[1]
    out: dict = {"model": config.pyramid_model, "tower_size": base, "input": side, "precision": precision,
                 "pyramid_batch": config.pyramid_batch, "tokens_per_image": tokens,
                 "crops": tokens // model.towers.tokens_per_image}
    _reset_peak(device)
    seconds = timed(features, device, config.warmup, config.iters)
    out["pyramid_features_images_per_second"] = config.pyramid_batch / seconds
    out["pyramid_peak_memory_mib"] = _peak_mib(device)
    _reset_peak(device)
    seconds = timed(full, device, config.warmup, config.iters)
    out["pyramid_full_k80_images_per_second"] = config.pyramid_batch / seconds
    out["pyramid_full_peak_memory_mib"] = _peak_mib(device)
    print(f"pyramid {config.pyramid_model} {side}/{base}: {out['crops']} crops, {tokens} tokens, "
          f"{out['pyramid_features_images_per_second']:.2f} img/s features, "
          f"{out['pyramid_full_k80_images_per_second']:.2f} img/s full k=80", flush=True)
    return out


def _naive_side(config: GpuCheckConfig, device: torch.device, precision: str, side: int) -> dict:
    """The same tower built at ``side`` px and run on the whole image (``(side / patch)^2 + 1`` tokens)."""
    naive = _build(config.pyramid_model, config, device, image_size=side)
    images = _images(config.naive_batch, side, device, config.seed)

    def features() -> torch.Tensor:
        with torch.no_grad(), _autocast(device, precision):
            return naive.forward_features(images)

    out = {"naive_batch": config.naive_batch, "naive_tokens_per_image": features().shape[1]}
    _reset_peak(device)
    seconds = timed(features, device, min(config.warmup, 2), max(2, config.iters // 2))
    out["naive_features_images_per_second"] = config.naive_batch / seconds
    out["naive_peak_memory_mib"] = _peak_mib(device)
    return out


def pyramid(config: GpuCheckConfig, device: torch.device, clock: _Clock, skipped: list[str]) -> dict:
    """Pyramid-Forwarding vs the naive full-resolution ViT at ``scale x`` the tower size, bf16 (fp32 on CPU)."""
    precision = "bf16" if device.type == "cuda" else "fp32"
    out = _pyramid_side(config, device, precision)
    if device.type == "cuda":
        torch.cuda.empty_cache()
    if not clock.left():
        skipped.append("pyramid naive full resolution")
        return out
    out.update(_naive_side(config, device, precision, out["input"]))
    out["speedup_pyramid_over_naive"] = (out["pyramid_features_images_per_second"]
                                         / out["naive_features_images_per_second"])
    print(f"naive {config.pyramid_model} at {out['input']}: {out['naive_tokens_per_image']} tokens, "
          f"{out['naive_features_images_per_second']:.2f} img/s; pyramid / naive throughput "
          f"{out['speedup_pyramid_over_naive']:.2f}", flush=True)
    return out


def run(config: GpuCheckConfig, out_dir: str | Path | None = None) -> dict:
    """Run every section within the budget; writes ``gpu_check.json`` into ``out_dir`` after each section."""
    if config.device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda but torch.cuda.is_available() is False (use --device cpu --quick to test)")
    device = torch.device(config.device)
    clock = _Clock(config.budget_s)
    result: dict = {"benchmark": "gpu_check", "config": config_to_dict(config), "environment": environment(device),
                    "skipped": []}
    print(json.dumps(result["environment"]), flush=True)
    path = Path(out_dir) / RESULT_NAME if out_dir is not None else None

    def save() -> None:
        result["elapsed_s"] = clock.elapsed()
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")

    save()
    sections = (("throughput", throughput), ("training", training), ("pyramid", pyramid))
    for name, section in sections:
        if not clock.left():
            result["skipped"].append(name)
            continue
        try:
            result[name] = section(config, device, clock, result["skipped"])
        except torch.cuda.OutOfMemoryError as error:  # report and go on: the other sections still say something
            result[name] = {"error": f"out of memory: {error}"}
            torch.cuda.empty_cache()
        save()
    print(f"done in {clock.elapsed():.0f} s; skipped: {result['skipped'] or 'nothing'}", flush=True)
    return result


class _Head(nn.Module):
    """The trainable part of ADDS as the module DDP wraps (the frozen towers take no part in the reduction)."""

    def __init__(self, model: ADDS) -> None:
        super().__init__()
        self.model = model

    def forward(self, tokens: torch.Tensor, label_embeddings: torch.Tensor) -> torch.Tensor:
        return self.model.forward_head(tokens, label_embeddings)  # (B, k)


def ddp_smoke(model_name: str = "ViT-B-32", steps: int = 3, init_method: str | None = None,
              decoder: DecoderConfig | None = None) -> dict:
    """NCCL (gloo on CPU) process group, the head wrapped in DDP, ``steps`` ASL steps; returns what happened.

    Under ``torchrun`` the group comes from its environment variables; without them a one-process group is created
    from ``init_method`` (e.g. ``file:///tmp/x``), so this can be tested without a launcher.
    """
    cuda = torch.cuda.is_available()
    backend = "nccl" if cuda else "gloo"
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        dist.init_process_group(backend)
    else:
        dist.init_process_group(backend, init_method=init_method, rank=0, world_size=1)
    try:
        rank, world = dist.get_rank(), dist.get_world_size()
        towers = load_towers(TowerConfig(model=model_name, pretrained=None, seed=0))
        torch.manual_seed(0)
        model = ADDS(ADDSConfig(decoder=decoder or DecoderConfig()), towers=towers).to(device)
        head = nn.parallel.DistributedDataParallel(_Head(model), device_ids=[local_rank] if cuda else None)
        optimizer = torch.optim.Adam(model.trainable_parameters(), lr=1e-4)
        loss_fn = AsymmetricLoss()
        images = _images(4, towers.image_size, device, rank)
        with torch.no_grad():
            tokens = model.forward_features(images)  # (4, T, D)
        embeddings = _label_embeddings(16, towers.embed_dim, device, 0)
        targets = (torch.rand(4, 16, generator=torch.Generator().manual_seed(rank)) < 0.2).float().to(device)
        losses = []
        for _ in range(steps):
            with _autocast(device, "bf16") if cuda else nullcontext():
                logits = head(tokens, embeddings)  # (4, 16)
            loss = loss_fn(logits.float(), targets)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
        ok = all(torch.isfinite(torch.tensor(losses)).tolist())
        result = {"backend": backend, "rank": rank, "world_size": world, "device": str(device), "losses": losses,
                  "ok": ok}
        print(f"DDP smoke {'OK' if ok else 'FAILED'}: backend {backend}, rank {rank}/{world}, {device}, "
              f"losses {[round(v, 3) for v in losses]}", flush=True)
        return result
    finally:
        dist.destroy_process_group()


def _default_out() -> Path:
    return Path(os.environ["OUT"]) if os.environ.get("OUT") else Path(__file__).parent / "results"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="Sections: environment, throughput (fp32/bf16/fp16), AMP training steps, Pyramid-Forwarding 1344/336.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--out", type=Path, default=None,
                        help="directory for gpu_check.json (default: $OUT if set, else benchmarks/results)")
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    parser.add_argument("--quick", action="store_true", help="tiny towers and sizes (for CPU testing)")
    parser.add_argument("--budget-s", type=float, default=None, help="no section starts after this (default 240)")
    parser.add_argument("--ddp-smoke", action="store_true",
                        help="under torchrun: init NCCL, wrap the head in DDP, 3 steps, print OK")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.ddp_smoke:
        model_name = TINY_MODEL if args.quick else "ViT-B-32"
        out = args.out or _default_out()
        with tempfile.TemporaryDirectory() as tmp:
            result = ddp_smoke(model_name, init_method=f"file://{tmp}/ddp-init")
        if result["rank"] == 0:
            out.mkdir(parents=True, exist_ok=True)
            (out / "ddp_smoke.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        return 0 if result["ok"] else 1
    config = quick_config(device) if args.quick else GpuCheckConfig(device=device)
    if args.budget_s is not None:
        config = replace(config, budget_s=args.budget_s)
    run(config, args.out or _default_out())
    return 0


if __name__ == "__main__":
    sys.exit(main())
