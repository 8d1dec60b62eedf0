"""The paper's experiments in miniature, on the toy world (tiny CLIP + synthetic scenes), on 2 CPU cores.

Each experiment trains ADDS heads on frozen toy-CLIP features and prints a table shaped like the paper's:

========  ==========================================================================================
Table 1   conventional multi-label: train and test on all 48 concepts (mAP)
Table 2   zero-shot: train on 36 seen concepts, test on the 12 unseen (mAP, F1@3, F1@5), beside the
          training-free baseline (toy-CLIP cosine similarity with prompt ensembling)
Table 6/9 alignment: (a) aligned toy-CLIP text, (b) a random label matrix, (c) text from an independently
          trained toy CLIP -- conventional and zero-shot mAP
Table 5   DM-decoder vs ML-Decoder with 1 / 3 / 6 layers (zero-shot)
Table 7   Pyramid-Forwarding: scenes at 4x the tower's size with small objects, levels [0] vs [2] vs [0,1,2]
Table 3/4 single-to-multi: train on single-object images of the seen concepts, test on multi-object scenes;
          labels "with overlap" (seen in training) and "without overlap" (never seen)
Table 8   more training classes: zero-shot on the 12 unseen concepts after training on 12 / 24 / 36
========  ==========================================================================================

Every number is the mean ± standard deviation over the seeds (scene sampling and head initialisation change with
the seed; the frozen toy CLIP does not). The towers are frozen, so each image set goes through the tower once and
the heads train on the cached tokens (the ``adds extract`` idea, in memory).
"""

from __future__ import annotations

import json
import logging
import math
import multiprocessing
import statistics
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field, replace

import torch
import torch.nn.functional as F

from adds.decoder import DecoderConfig
from adds.evaluate import clip_zero_shot_scores
from adds.losses import AsymmetricLoss
from adds.metrics import mean_average_precision, topk_precision_recall_f1
from adds.model import ADDS, ADDSConfig
from adds.prompts import LabelEmbedder
from adds.pyramid import PyramidConfig, PyramidForwarding
from adds.towers import Towers
from adds.toyworld.scenes import VOCABULARY, SceneConfig, render_objects, render_scenes
from adds.toyworld.tinyclip import load_toy_towers

__all__ = ["ToyWorldConfig", "run_experiments", "format_tables"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ToyWorldConfig:
    """Sizes of the toy-world run (defaults: the full run, ~15 min on 2 cores; see :meth:`quick`)."""

    seeds: tuple[int, ...] = (0, 1, 2)
    train_scenes: int = 1200
    test_scenes: int = 500
    single_images: int = 1200
    # Scenes at the tower's own 32 px (like the paper's 224/336 px runs, one crop): 1-3 objects on a 2 x 2 grid.
    scene: SceneConfig = field(
        default_factory=lambda: SceneConfig(size=32, grid=2, max_objects=3, min_scale=0.15, max_scale=0.22)
    )
    # Table 7: 4x the tower's size with objects as small (in pixels) as above, so at level 0 they shrink to ~1.5 px.
    highres: SceneConfig = field(
        default_factory=lambda: SceneConfig(size=128, grid=4, max_objects=4, min_scale=0.0375, max_scale=0.055)
    )
    highres_train_scenes: int = 300
    highres_test_scenes: int = 200
    # Table 7 feeds up to 21 crops x 65 tokens per image; a one-layer head keeps that affordable on a CPU.
    highres_decoder: DecoderConfig = field(
        default_factory=lambda: DecoderConfig(num_layers=1, num_heads=4, ffn_dim=128)
    )
    decoder: DecoderConfig = field(default_factory=lambda: DecoderConfig(num_layers=2, num_heads=4, ffn_dim=128))
    epochs: int = 10
    batch_size: int = 32
    lr: float = 2e-3
    experiments: tuple[str, ...] = ("conventional", "zero_shot", "alignment", "decoder", "pyramid", "single", "classes")

    @classmethod
    def quick(cls) -> ToyWorldConfig:
        """The README's main job: 3 seeds of Tables 1, 2 and 6/9 on fewer scenes (a few minutes on 2 cores)."""
        return cls(train_scenes=600, test_scenes=300, experiments=("conventional", "zero_shot", "alignment"))


@dataclass
class _World:
    """Everything shared by the experiments of one seed: towers, tokens, targets, label embeddings."""

    towers: Towers
    train_tokens: torch.Tensor
    train_targets: torch.Tensor
    test_tokens: torch.Tensor
    test_targets: torch.Tensor
    aligned_labels: torch.Tensor  # (C, D)
    seen: list[int]
    unseen: list[int]


def _features(towers: Towers, images: torch.Tensor, levels: tuple[int, ...] | None = None, batch: int = 256):
    """Frozen tokens ``(N, crops * T, D)`` of ``images`` with the given Pyramid-Forwarding levels."""
    pyramid = PyramidForwarding(towers.image_size, towers.mean, towers.std, PyramidConfig(levels=levels))
    with torch.no_grad():
        parts = [pyramid(images[i:i + batch], towers.encode_image_tokens) for i in range(0, images.shape[0], batch)]
    return torch.cat(parts)


def _train_head(
    world: _World, tokens: torch.Tensor, targets: torch.Tensor, labels: torch.Tensor, config: ToyWorldConfig,
    seed: int, decoder: DecoderConfig | None = None,
) -> ADDS:
    """Train a fresh head (decoder + shared FC) with ASL on cached tokens; returns it in eval mode."""
    torch.manual_seed(seed)
    head = ADDS(ADDSConfig(decoder=decoder or config.decoder), towers=world.towers)
    optimizer = torch.optim.Adam(head.trainable_parameters(), lr=config.lr)
    steps_per_epoch = math.ceil(tokens.shape[0] / config.batch_size)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=config.lr, total_steps=config.epochs * steps_per_epoch, pct_start=0.2
    )
    loss_fn = AsymmetricLoss()
    generator = torch.Generator().manual_seed(seed)
    head.train()
    for _ in range(config.epochs):
        order = torch.randperm(tokens.shape[0], generator=generator)
        for start in range(0, tokens.shape[0], config.batch_size):
            batch = order[start:start + config.batch_size]
            loss = loss_fn(head.forward_head(tokens[batch], labels), targets[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
    return head.eval()


@torch.no_grad()
def _scores(head: ADDS, tokens: torch.Tensor, labels: torch.Tensor, batch: int = 256) -> torch.Tensor:
    chunks = [head.forward_head(tokens[i:i + batch], labels).sigmoid() for i in range(0, tokens.shape[0], batch)]
    return torch.cat(chunks)


def _zsl_metrics(scores: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
    return {
        "mAP": 100 * mean_average_precision(scores, targets),
        "F1@3": 100 * topk_precision_recall_f1(scores, targets, 3)[2],
        "F1@5": 100 * topk_precision_recall_f1(scores, targets, 5)[2],
    }


def _build_world(config: ToyWorldConfig, seed: int, towers: Towers) -> _World:
    generator = torch.Generator().manual_seed(1000 + seed)
    train_images, train_targets = render_scenes(config.train_scenes, generator, config.scene)
    test_images, test_targets = render_scenes(config.test_scenes, generator, config.scene)
    seen, unseen = VOCABULARY.zero_shot_split()
    return _World(
        towers=towers,
        train_tokens=_features(towers, train_images),
        train_targets=train_targets,
        test_tokens=_features(towers, test_images),
        test_targets=test_targets,
        aligned_labels=LabelEmbedder(towers)(VOCABULARY.concepts),
        seen=seen,
        unseen=unseen,
    )


def _run_seed(
    config: ToyWorldConfig,
    seed: int,
    towers: Towers,
    misaligned: Callable[[], torch.Tensor],
) -> dict[str, dict[str, float]]:
    """All experiments for one seed -> {row name: {metric: value}}."""
    world = _build_world(config, seed, towers)
    seen, unseen = world.seen, world.unseen
    rows: dict[str, dict[str, float]] = {}
    todo = set(config.experiments)

    def zero_shot(labels: torch.Tensor, decoder: DecoderConfig | None = None, train_labels: Sequence[int] = seen):
        train_labels = list(train_labels)
        head = _train_head(world, world.train_tokens, world.train_targets[:, train_labels], labels[train_labels],
                           config, seed, decoder)
        return _zsl_metrics(_scores(head, world.test_tokens, labels[unseen]), world.test_targets[:, unseen])

    def conventional(labels: torch.Tensor, with_untrained: bool = False) -> dict[str, float]:
        result = {}
        if with_untrained:  # the same head before any training step: the floor that training must beat
            torch.manual_seed(seed)
            untrained = ADDS(ADDSConfig(decoder=config.decoder), towers=world.towers).eval()
            scores = _scores(untrained, world.test_tokens, labels)
            result["untrained mAP"] = 100 * mean_average_precision(scores, world.test_targets)
        head = _train_head(world, world.train_tokens, world.train_targets, labels, config, seed)
        scores = _scores(head, world.test_tokens, labels)
        return {"mAP": 100 * mean_average_precision(scores, world.test_targets), **result}

    if "conventional" in todo or "alignment" in todo:
        rows["conventional"] = conventional(world.aligned_labels, with_untrained=True)
    if todo & {"zero_shot", "alignment", "decoder", "classes"}:
        rows["zero_shot"] = zero_shot(world.aligned_labels)
        # Training-free baseline (the one `adds eval --zero-shot-baseline` uses): cosine of the class-token embedding.
        cosine = clip_zero_shot_scores(world.test_tokens, world.aligned_labels[unseen], towers.tokens_per_image)
        rows["clip_baseline"] = _zsl_metrics(cosine, world.test_targets[:, unseen])
    if "alignment" in todo:
        noise = torch.randn(world.aligned_labels.shape, generator=torch.Generator().manual_seed(seed))
        random_labels = F.normalize(noise, dim=-1)
        rows["random_matrix"] = {**{f"conv {k}": v for k, v in conventional(random_labels).items()},
                                 **{f"zsl {k}": v for k, v in zero_shot(random_labels).items()}}
        other = misaligned()
        rows["misaligned_clip"] = {**{f"conv {k}": v for k, v in conventional(other).items()},
                                   **{f"zsl {k}": v for k, v in zero_shot(other).items()}}
    if "decoder" in todo:
        for kind in ("ml", "dm"):
            for layers in (1, 3, 6):
                decoder = replace(config.decoder, kind=kind, num_layers=layers)
                rows[f"{kind}x{layers}"] = zero_shot(world.aligned_labels, decoder)
    if "pyramid" in todo:
        generator = torch.Generator().manual_seed(2000 + seed)
        train_images, train_targets = render_scenes(config.highres_train_scenes, generator, config.highres)
        test_images, test_targets = render_scenes(config.highres_test_scenes, generator, config.highres)
        for name, levels in (("levels [0]", (0,)), ("levels [2]", (2,)), ("levels [0,1,2]", (0, 1, 2))):
            train_tokens = _features(world.towers, train_images, levels)
            test_tokens = _features(world.towers, test_images, levels)
            head = _train_head(world, train_tokens, train_targets, world.aligned_labels, config, seed,
                               config.highres_decoder)
            scores = _scores(head, test_tokens, world.aligned_labels)
            rows[f"pyramid {name}"] = {"mAP": 100 * mean_average_precision(scores, test_targets)}
    if "single" in todo:
        generator = torch.Generator().manual_seed(3000 + seed)
        pool = torch.tensor(seen)
        concepts = pool[torch.randint(len(pool), (config.single_images,), generator=generator)]
        images = render_objects(concepts, config.scene.size, generator, min_scale=0.09, max_scale=0.3)
        targets = F.one_hot(concepts, len(VOCABULARY)).float()
        tokens = _features(world.towers, images)
        head = _train_head(world, tokens, targets[:, seen], world.aligned_labels[seen], config, seed)
        for name, subset in (("with overlap", seen), ("without overlap", unseen)):
            scores = _scores(head, world.test_tokens, world.aligned_labels[subset])
            rows[f"single-to-multi {name}"] = _zsl_metrics(scores, world.test_targets[:, subset])
    if "classes" in todo:
        order = torch.randperm(len(seen), generator=torch.Generator().manual_seed(4000 + seed)).tolist()
        for count in (12, 24):
            subset = sorted(seen[i] for i in order[:count])
            rows[f"classes {count}"] = zero_shot(world.aligned_labels, train_labels=subset)
        rows[f"classes {len(seen)}"] = rows["zero_shot"]
    return rows


def _seed_worker(config: ToyWorldConfig, seed: int) -> dict[str, dict[str, float]]:
    """One seed in its own process (one intra-op thread: the toy models are tiny, and seeds run side by side)."""
    torch.set_num_threads(1)
    towers = load_toy_towers(0)
    cached: list[torch.Tensor] = []

    def misaligned() -> torch.Tensor:
        """Label embeddings from the text tower of the independently trained toy CLIP (same sizes, seed 1)."""
        if not cached:
            cached.append(LabelEmbedder(load_toy_towers(1))(VOCABULARY.concepts))
        return cached[0]

    return _run_seed(config, seed, towers, misaligned)


def run_experiments(config: ToyWorldConfig, echo: Callable[[str], None] = print, workers: int = 1) -> dict:
    """Run every experiment for every seed; returns ``{"config", "rows": {row: {metric: [values]}}, "seconds"}``.

    ``workers > 1`` runs seeds in parallel processes (the full run uses one per CPU core).
    """
    start = time.perf_counter()
    collected: dict[str, dict[str, list[float]]] = {}
    if workers > 1 and len(config.seeds) > 1:
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=min(workers, len(config.seeds)), mp_context=context) as pool:
            results = list(pool.map(_seed_worker, [config] * len(config.seeds), config.seeds))
    else:
        threads = torch.get_num_threads()
        results = [_seed_worker(config, seed) for seed in config.seeds]
        torch.set_num_threads(threads)
    for seed, rows in zip(config.seeds, results, strict=True):
        echo(f"  seed {seed}: {len(rows)} rows")
        for row, metrics in rows.items():
            for metric, value in metrics.items():
                collected.setdefault(row, {}).setdefault(metric, []).append(value)
    return {"config": asdict(config), "rows": collected, "seconds": time.perf_counter() - start}


def _cell(values: list[float]) -> str:
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{mean:6.2f} ± {std:4.2f}"


def format_tables(result: dict) -> str:
    """Markdown tables in the paper's layout from :func:`run_experiments`'s result."""
    rows = result["rows"]
    out: list[str] = []

    def table(title: str, header: Sequence[str], lines: Sequence[tuple[str, str, Sequence[str]]]) -> None:
        present = [(label, row, metrics) for label, row, metrics in lines if row in rows]
        if not present:
            return
        out.append(f"\n{title}\n")
        out.append("| " + " | ".join(header) + " |")
        out.append("|" + "|".join("---" for _ in header) + "|")
        for label, row, metrics in present:
            out.append("| " + " | ".join([label] + [_cell(rows[row][m]) for m in metrics]) + " |")

    zsl = ("mAP", "F1@3", "F1@5")
    table("Table 1 (toy) - conventional multi-label, 48 concepts", ["Model", "mAP(%)", "same head untrained"],
          [("ADDS (DM-decoder)", "conventional", ["mAP", "untrained mAP"])])
    table("Table 2 (toy) - zero-shot, 36 seen -> 12 unseen concepts", ["Method", "mAP(%)", "F1 (k=3)", "F1 (k=5)"],
          [("toy CLIP, no training (cosine, prompt ensemble)", "clip_baseline", zsl),
           ("ADDS", "zero_shot", zsl)])
    table("Tables 6/9 (toy) - alignment of the label embeddings", ["Label embeddings", "conventional mAP(%)",
                                                                   "zero-shot mAP(%)"],
          [("random matrix", "random_matrix", ["conv mAP", "zsl mAP"]),
           ("independently trained toy CLIP (misaligned)", "misaligned_clip", ["conv mAP", "zsl mAP"])])
    if "conventional" in rows and "zero_shot" in rows and "random_matrix" in rows:
        out.append("| aligned toy CLIP (ADDS) | " + _cell(rows["conventional"]["mAP"]) + " | "
                   + _cell(rows["zero_shot"]["mAP"]) + " |")
    table("Table 5 (toy) - DM-decoder vs ML-Decoder, zero-shot", ["Decoder", "mAP(%)", "F1 (k=3)", "F1 (k=5)"],
          [(f"{kind.upper()}-Decoder x{n}", f"{kind}x{n}", zsl) for kind in ("ml", "dm") for n in (1, 3, 6)])
    table("Table 7 (toy) - Pyramid-Forwarding, 128 px scenes on a 32 px tower (one-layer head)", ["Levels", "mAP(%)"],
          [(name, f"pyramid {name}", ["mAP"]) for name in ("levels [0]", "levels [2]", "levels [0,1,2]")])
    table("Tables 3/4 (toy) - single-to-multi: single-object training images -> multi-object scenes",
          ["Test labels", "mAP(%)", "F1 (k=3)", "F1 (k=5)"],
          [("with overlapped classes (36 trained)", "single-to-multi with overlap", zsl),
           ("without overlapped classes (12 never trained)", "single-to-multi without overlap", zsl)])
    table("Table 8 (toy) - more training classes -> better zero-shot (12 unseen)", ["Seen concepts", "mAP(%)",
                                                                                     "F1 (k=3)", "F1 (k=5)"],
          [(count, f"classes {count}", zsl) for count in ("12", "24", "36")])
    return "\n".join(out) + "\n"


def write_json(result: dict, path: str) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(result, handle, indent=2)
