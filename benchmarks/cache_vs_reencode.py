"""Training from the frozen-feature cache vs re-encoding images every epoch (issue 6, item 2).

ADDS's towers are frozen (paper, "Visual-Textual Embedding Alignment"), so an image's tokens are the same in each of
the paper's 40 epochs ("Implementation Settings"): ``adds.features`` extracts them once and training reads them
from disk. This script measures, in one run and interleaved (order rotated each round):

* **extract**: :func:`adds.features.extract_features` over the images (decode, squash-resize, Pyramid-Forwarding,
  tower, write fp16 shards) -- paid once;
* **cached epoch**: one epoch of head training reading :class:`adds.features.CachedFeatureDataset` (memory-mapped
  shards) -- ``forward_head``, ASL, backward, Adam step, as in ``adds.train``;
* **re-encoded epoch**: the same epoch reading JPEG files and running ``ADDS.forward_features`` on every batch.

The two epochs run in lockstep, one training step of each in turn (order alternating), so that the load of a shared
machine changing during the run hits both alike; each is timed as its batch loading plus its steps.

and reports the per-epoch ratio and the end-to-end ratio over ``--epochs`` (40) epochs, extraction included::

    (epochs x re-encoded epoch) / (extract + epochs x cached epoch)

Next to the times, FLOPs per image (counted with ``FlopCounterMode`` on meta tensors) of the tower forward and of one
head training step (forward + backward) give the ratio the arithmetic alone allows, here and for other towers and
input sizes (``--project``): when the head's training step costs as much as the tower's forward, no cache can make
training more than ~2x faster.

The images are generated JPEGs (``--images`` of them, ``--image-side`` px) with 1-3 random labels each; the label
embeddings are random unit vectors (the cost does not depend on their values); towers have random weights.

Examples::

    python benchmarks/cache_vs_reencode.py --quick
    python benchmarks/cache_vs_reencode.py --images 64 --batch 16 --repeats 2
"""

from __future__ import annotations

import argparse
import copy
import logging
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from _common import count_flops, environment, write_result  # benchmarks/ is on sys.path when run
from PIL import Image
from torch.utils.data import DataLoader
from tqdm import tqdm

from adds import towers as adds_towers
from adds.config import config_to_dict
from adds.data.base import MultiLabelDataset, Record, SquashResize
from adds.decoder import DecoderConfig
from adds.evaluate import batch_tokens, collate_batch
from adds.features import CachedFeatureDataset, ExtractConfig, FeatureStore, extract_features
from adds.losses import AsymmetricLoss
from adds.model import ADDS, ADDSConfig
from adds.towers import TowerConfig, meta_towers

logger = logging.getLogger(__name__)

DEFAULT_OUT = Path(__file__).parent / "results" / "cache_vs_reencode.json"
#: The issue's goal: training from the cache at least 20x faster end to end over 40 epochs.
END_TO_END_GOAL = 20.0


@dataclass(frozen=True)
class CacheBenchConfig:
    """What to measure.

    Attributes:
        model: open_clip ViT (random weights).
        input_size: images are squash-resized to this size before Pyramid-Forwarding (224 on a 224 tower: 1 crop).
        images: number of generated JPEG images (one epoch).
        image_side: side of the generated JPEGs in pixels.
        labels: vocabulary size (80 = MS-COCO).
        batch: images per training step (the paper uses 56).
        decoder: the DM-decoder stack (paper: 6 layers).
        epochs: epochs of the end-to-end comparison (paper: 40).
        dtype: stored feature dtype (``adds.features`` default ``float16``).
        lr: Adam learning rate.
        repeats: rounds of (extract, cached epoch, re-encoded epoch); medians are reported.
        project: ``(model, input_size)`` settings for the FLOP-only projection.
        threads: ``torch.set_num_threads`` (``None``: torch's default).
        seed: seed of data, towers and head.
    """

    model: str = "ViT-B-32"
    input_size: int = 224
    images: int = 48
    image_side: int = 256
    labels: int = 80
    batch: int = 8
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    epochs: int = 40
    dtype: str = "float16"
    lr: float = 1e-4
    repeats: int = 2
    project: tuple[tuple[str, int], ...] = (("ViT-B-32", 224), ("ViT-B-32", 448), ("ViT-L-14-336", 336),
                                            ("ViT-L-14-336", 1344))
    threads: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.images < 1 or self.batch < 1 or self.labels < 1 or self.repeats < 1 or self.epochs < 1:
            raise ValueError("images, batch, labels, repeats and epochs must be >= 1")


def make_images(directory: Path, config: CacheBenchConfig) -> MultiLabelDataset:
    """Write ``config.images`` smooth random JPEGs with 1-3 random labels each; returns the dataset over them."""
    rng = np.random.default_rng(config.seed)
    records = []
    for index in range(config.images):
        coarse = rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
        image = Image.fromarray(coarse).resize((config.image_side, config.image_side), Image.BICUBIC)
        name = f"{index:05d}.jpg"
        image.save(directory / name, quality=90)
        positives = sorted(rng.choice(config.labels, size=int(rng.integers(1, 4)), replace=False).tolist())
        records.append(Record(path=name, positives=tuple(positives)))
    vocabulary = [f"label {i}" for i in range(config.labels)]
    return MultiLabelDataset(records, vocabulary, name="benchmark-jpegs", root=directory,
                             transform=SquashResize(config.input_size))


def train_step(model: ADDS, batch: dict, labels: torch.Tensor, loss_fn: AsymmetricLoss,
               optimizer: torch.optim.Optimizer) -> float | None:
    """One head training step as ``adds.train`` runs it (tokens cached in the batch, or from the towers); returns
    the loss (``None`` when every image of the batch failed to load)."""
    device = labels.device
    tokens = batch_tokens(model, batch, device)  # (B, N, D): cached or re-encoded
    if tokens is None:
        return None
    logits = model.forward_head(tokens.float(), labels)  # (B, k)
    loss = loss_fn(logits, batch["target"].to(device), batch["mask"].to(device))
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return float(loss.detach())


def lockstep_epochs(model: ADDS, loaders: dict[str, DataLoader], labels: torch.Tensor, loss_fn: AsymmetricLoss,
                    optimizer: torch.optim.Optimizer) -> tuple[dict[str, float], dict[str, float]]:
    """One epoch through every loader, step by step in lockstep (the order alternating at each step), so that a
    change of load on a shared machine hits every path alike. Each path's time is its batch loading (``next`` on
    its loader: JPEG decoding or memory-mapped reads) plus its training steps.

    Returns ``(seconds, mean loss)`` per loader name.
    """
    model.train()
    names = list(loaders)
    iterators = {name: iter(loader) for name, loader in loaders.items()}
    seconds = dict.fromkeys(names, 0.0)
    losses: dict[str, list[float]] = {name: [] for name in names}
    for step in range(min(len(loader) for loader in loaders.values())):
        for name in names if step % 2 == 0 else names[::-1]:
            start = time.perf_counter()
            loss = train_step(model, next(iterators[name]), labels, loss_fn, optimizer)
            seconds[name] += time.perf_counter() - start
            if loss is not None:
                losses[name].append(loss)
    return seconds, {name: sum(values) / max(len(values), 1) for name, values in losses.items()}








def flops_per_image(model: ADDS, input_size: int, labels: int, batch: int = 2) -> dict[str, float]:
    """Tower forward (Pyramid-Forwarding at ``input_size``) and head training step (forward + backward) FLOPs per
    image, counted on a meta copy of ``model``."""
    meta = copy.deepcopy(model).to("meta").train()
    images = torch.empty(batch, 3, input_size, input_size, device="meta")
    tower = count_flops(lambda: meta.forward_features(images)) / batch
    tokens = meta.forward_features(images)  # (B, N, D) on meta
    embeddings = torch.empty(labels, meta.towers.embed_dim, device="meta")
    head_forward = count_flops(lambda: meta.forward_head(tokens, embeddings)) / batch
    head_step = count_flops(lambda: meta.forward_head(tokens, embeddings).sum().backward()) / batch
    return {"tower_forward": tower, "head_forward": head_forward, "head_train_step": head_step,
            "tokens": int(tokens.shape[1])}


def end_to_end(extract: float, cached_epoch: float, reencoded_epoch: float, epochs: int) -> float:
    """``epochs`` re-encoded epochs over one extraction plus ``epochs`` cached epochs."""
    return epochs * reencoded_epoch / (extract + epochs * cached_epoch)


def projection(config: CacheBenchConfig) -> list[dict]:
    """FLOP-only end-to-end ratio for other towers / input sizes: tower forward vs head training step per image."""
    rows = []
    for name, size in config.project:
        model = ADDS(ADDSConfig(decoder=config.decoder), towers=meta_towers(name))
        flops = flops_per_image(model, size, config.labels)
        tower, head = flops["tower_forward"], flops["head_train_step"]
        rows.append({
            "model": name, "input_size": size, "tokens": flops["tokens"], "flops": flops,
            "epoch_ratio": (tower + head) / head,
            "end_to_end_ratio": end_to_end(tower, head, tower + head, config.epochs),
        })
    return rows


def run(config: CacheBenchConfig, work_dir: str | Path | None = None) -> dict:
    """Extract, then train from the cache and from images in lockstep, ``repeats`` rounds; returns the JSON-able
    result."""
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    with tempfile.TemporaryDirectory(dir=work_dir) as tmp:
        root = Path(tmp)
        (root / "images").mkdir()
        dataset = make_images(root / "images", config)
        towers = adds_towers.load_towers(TowerConfig(model=config.model, pretrained=None, seed=config.seed))
        torch.manual_seed(config.seed)
        model = ADDS(ADDSConfig(decoder=config.decoder), towers=towers)
        generator = torch.Generator().manual_seed(config.seed)
        labels = F.normalize(torch.randn(config.labels, towers.embed_dim, generator=generator), dim=-1)  # (k, D)
        loss_fn = AsymmetricLoss()
        optimizer = torch.optim.Adam(model.trainable_parameters(), lr=config.lr)
        extract_config = ExtractConfig(input_size=config.input_size, batch_size=config.batch, dtype=config.dtype)
        cache_dir = root / "cache"
        state: dict = {}

        def extract() -> None:
            shutil.rmtree(cache_dir, ignore_errors=True)
            store = extract_features(model, dataset, cache_dir, extract_config, progress=False)
            state["store"] = store if store is not None else FeatureStore.open(cache_dir)

        def loader(source) -> DataLoader:
            order = torch.Generator().manual_seed(config.seed)
            return DataLoader(source, batch_size=config.batch, shuffle=True, generator=order, collate_fn=collate_batch)

        def epochs() -> tuple[dict[str, float], dict[str, float]]:
            cached = CachedFeatureDataset(state["store"], dataset)
            loaders = {"cached_epoch": loader(cached), "reencoded_epoch": loader(dataset)}
            return lockstep_epochs(model, loaders, labels, loss_fn, optimizer)

        extract()  # warm-up: first decode, page cache, allocator
        epochs()
        times: dict[str, list[float]] = {"extract": [], "cached_epoch": [], "reencoded_epoch": []}
        losses: dict[str, list[float]] = {"cached_epoch": [], "reencoded_epoch": []}
        for _ in tqdm(range(config.repeats), desc="rounds", file=sys.stderr, leave=False):
            start = time.perf_counter()
            extract()
            times["extract"].append(time.perf_counter() - start)
            seconds, mean_losses = epochs()
            for name, value in seconds.items():
                times[name].append(value)
                losses[name].append(mean_losses[name])
        store = state["store"]
        check = collate_batch([dataset[i] for i in range(min(config.batch, len(dataset)))])
        with torch.no_grad():
            fresh = model.eval().forward_features(check["image"])  # (b, N, D) float32
        stored = store.tokens(list(range(fresh.shape[0]))).float()  # (b, N, D) from the fp16 shards
        token_error = float((fresh - stored).abs().max() / fresh.abs().max())
        cache_bytes = sum(path.stat().st_size for path in cache_dir.glob("shard-*.bin"))
        tokens_per_image, token_dim = store.num_tokens, store.token_dim

    median = {name: statistics.median(values) for name, values in times.items()}
    epoch_ratios = [r / c for r, c in zip(times["reencoded_epoch"], times["cached_epoch"], strict=True)]
    e2e_rounds = [end_to_end(e, c, r, config.epochs)
                  for e, c, r in zip(times["extract"], times["cached_epoch"], times["reencoded_epoch"], strict=True)]
    flops = flops_per_image(model, config.input_size, config.labels)
    tower, head = flops["tower_forward"], flops["head_train_step"]
    result = {
        "benchmark": "cache_vs_reencode",
        "config": config_to_dict(config),
        "environment": environment(),
        "cache": "on-disk adds.features cache (FeatureStore / CachedFeatureDataset, memory-mapped shards)",
        "label_embeddings": "random unit vectors (cost does not depend on their values)",
        "tokens_per_image": tokens_per_image,
        "token_dim": token_dim,
        "cache_bytes_per_image": cache_bytes / config.images,
        "cached_vs_fresh_tokens_max_relative_difference": token_error,
        "seconds": times,
        "median_seconds": median,
        "epoch_ratio": statistics.median(epoch_ratios),
        "end_to_end_ratio": statistics.median(e2e_rounds),  # each round: its own extraction and epochs
        "end_to_end_ratio_range": [min(e2e_rounds), max(e2e_rounds)],
        "extract_over_reencoded_epoch": statistics.median(
            e / r for e, r in zip(times["extract"], times["reencoded_epoch"], strict=True)),
        "losses": losses,
        "flops_per_image": flops,
        "flop_epoch_ratio": (tower + head) / head,
        "flop_end_to_end_ratio": end_to_end(tower, head, tower + head, config.epochs),
        "projection": projection(config) if config.project else [],
    }
    result["goals"] = {"end_to_end_ge_20x": result["end_to_end_ratio"] >= END_TO_END_GOAL}
    return result




def format_table(result: dict) -> str:
    median = result["median_seconds"]
    config = result["config"]
    low, high = result["end_to_end_ratio_range"]
    lines = [
        "| what | seconds (median) | relative to a cached epoch |",
        "|---|---|---|",
        f"| extract ({config['images']} images, once) | {median['extract']:.3g} "
        f"| {median['extract'] / median['cached_epoch']:.2f} |",
        f"| cached epoch | {median['cached_epoch']:.3g} | 1.00 |",
        f"| re-encoded epoch | {median['reencoded_epoch']:.3g} | {result['epoch_ratio']:.2f} (median of rounds) |",
        "",
        f"end to end over {config['epochs']} epochs: cache {result['end_to_end_ratio']:.2f}x faster "
        f"(rounds {low:.2f}-{high:.2f}); FLOPs alone allow {result['flop_end_to_end_ratio']:.2f}x "
        f"(tower {result['flops_per_image']['tower_forward'] / 1e9:.2f} GFLOP vs head step "
        f"{result['flops_per_image']['head_train_step'] / 1e9:.2f} GFLOP per image); goals: {result['goals']}",
    ]
    if result["projection"]:
        lines += ["", "| tower | input | tokens | tower fwd GFLOP/img | head step GFLOP/img | epoch ratio "
                  f"| {config['epochs']}-epoch ratio |", "|---|---|---|---|---|---|---|"]
        for row in result["projection"]:
            lines.append(
                f"| {row['model']} | {row['input_size']} | {row['tokens']} | {row['flops']['tower_forward'] / 1e9:.1f} "
                f"| {row['flops']['head_train_step'] / 1e9:.1f} | {row['epoch_ratio']:.2f} "
                f"| {row['end_to_end_ratio']:.2f} |"
            )
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] + " Prints a table of ratios and writes JSON.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    defaults = CacheBenchConfig()
    parser.add_argument("--model", default=defaults.model, help="open_clip ViT (random weights)")
    parser.add_argument("--input-size", type=int, default=defaults.input_size, help="squash-resize size (px)")
    parser.add_argument("--images", type=int, default=defaults.images, help="generated JPEGs (one epoch)")
    parser.add_argument("--labels", type=int, default=defaults.labels, help="vocabulary size")
    parser.add_argument("--batch", type=int, default=defaults.batch, help="images per step")
    parser.add_argument("--layers", type=int, default=defaults.decoder.num_layers, help="decoder layers (paper: 6)")
    parser.add_argument("--epochs", type=int, default=defaults.epochs, help="epochs of the end-to-end ratio")
    parser.add_argument("--repeats", type=int, default=defaults.repeats, help="rounds (median reported)")
    parser.add_argument("--no-projection", action="store_true", help="skip the FLOP projection to other towers")
    parser.add_argument("--work-dir", default=None, help="where the temporary images and cache go (default: /tmp)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--quick", action="store_true", help="16 images, batch 8, 1 round, no projection")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"JSON output (default: {DEFAULT_OUT})")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    decoder = DecoderConfig(num_layers=args.layers)
    project = () if args.no_projection or args.quick else CacheBenchConfig().project
    config = CacheBenchConfig(
        model=args.model, input_size=args.input_size, images=16 if args.quick else args.images, labels=args.labels,
        batch=8 if args.quick else args.batch, decoder=decoder, epochs=args.epochs,
        repeats=1 if args.quick else args.repeats, project=project, threads=args.threads,
    )
    result = run(config, args.work_dir)
    write_result(result, format_table(result), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
