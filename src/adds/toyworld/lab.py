"""The toy world v2 lab: ADDS heads on frozen toy-CLIP tokens, every paper table in miniature (issue 9).

Work is split into *jobs* (one seed x one group of tables) that run in worker processes side by side
(:func:`run_lab`); each job renders its seed's scenes, runs them through the frozen tower **once** and reuses the
cached tokens for every row of its tables (the ``adds extract`` idea, in memory).

=====  ===========================================================================================
group  rows (each: mAP, F1@3, F1@5 on the label sets named; unseen sets always separately)
=====  ===========================================================================================
core   Table 1: conventional (all 160 labels) -- ADDS, ML-Decoder, the same head untrained, cosine.
       Table 2: zero-shot (87 seen labels -> seen / U_comb / U_word) -- class-token cosine, max-over-tokens
       cosine, calibrated linear probe, ADDS, the open-vocabulary mode (:mod:`adds.openvocab`).
align  Tables 6/9: the zero-shot head with each text encoder of :mod:`adds.toyworld.encoders`.
dec    Table 5: DM- vs ML-Decoder with 1 / 3 / 6 layers (zero-shot).
pyr    Table 7: 144 px scenes (tiny objects and large ones across crop borders) on the 48 px tower, levels
       [0] / [2] / [0,1,2] (conventional).
more   Tables 3/4: single-object training images -> scenes (DM vs ML; seen concepts "with overlap", unseen
       "without"). Table 8: 25 / 50 / 100 % of the seen labels on the same images. ``token_norm=1.0`` vs default.
=====  ===========================================================================================

Heads train with ASL and Selective Language Supervision (Eq. 6, alpha = 3) picking each step's labels; the
decoder's dropout is 0 (tiny heads on few scenes). Every row is computed, nothing is written by hand.
"""

from __future__ import annotations

import math
import multiprocessing
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field, replace

import torch
import torch.nn.functional as F

from adds.decoder import DecoderConfig
from adds.losses import AsymmetricLoss
from adds.metrics import mean_average_precision, topk_precision_recall_f1
from adds.model import ADDS, ADDSConfig
from adds.openvocab import OpenVocabulary, fit_combiner, prior_cosine
from adds.prompts import LabelEmbedder
from adds.pyramid import PyramidConfig, PyramidForwarding
from adds.sampling import SLSConfig, select_labels
from adds.towers import Towers
from adds.toyworld.encoders import ENCODERS, label_embeddings, linear_map_transfer
from adds.toyworld.toyclip import load_toy_towers
from adds.toyworld.world import VOCABULARY, SceneConfig, Scenes, render_scenes, render_single, targets_of

__all__ = ["GROUPS", "LabConfig", "Seed", "build_seed", "features", "head_logits", "metrics", "run_lab",
           "train_head"]

#: Job groups in run order; ``--quick`` runs the first two.
GROUPS: tuple[str, ...] = ("core", "align", "dec", "pyr", "more")


@dataclass(frozen=True)
class LabConfig:
    """Sizes of a lab run (defaults: the full run; :meth:`quick`: the README's main job)."""

    seeds: tuple[int, ...] = (0, 1, 2)
    groups: tuple[str, ...] = GROUPS
    train_scenes: int = 1200
    val_scenes: int = 400
    test_scenes: int = 600
    scene: SceneConfig = field(default_factory=SceneConfig)
    decoder: DecoderConfig = field(default_factory=lambda: DecoderConfig(num_layers=2, num_heads=4, ffn_dim=128,
                                                                         dropout=0.0))
    epochs: int = 6
    batch_size: int = 32
    lr: float = 5e-3
    sls_alpha: float = 3.0
    #: seen labels the open-vocabulary fold head is trained without (they play the new words in the fit)
    held_out: int = 20
    # Table 7: 3x the tower's size; tiny objects (~2 px at level 0) and large ones across the 2 x 2 crop borders.
    highres: SceneConfig = field(default_factory=lambda: SceneConfig(
        size=144, grid=6, min_objects=4, max_objects=10, min_scale=0.028, max_scale=0.045, large_fraction=0.2,
        large_scale=0.2))
    highres_train_scenes: int = 400
    highres_test_scenes: int = 200
    highres_decoder: DecoderConfig = field(default_factory=lambda: DecoderConfig(num_layers=1, num_heads=4,
                                                                                 ffn_dim=128, dropout=0.0))
    single_images: int = 1200

    @classmethod
    def full(cls) -> LabConfig:
        """``adds toyworld``'s full run: every group, 4,800 training scenes per seed, where the head is no longer
        data-starved (G1 and the open-vocabulary goals hold in every seed; docs/toyworld.md), ~18 min on 2 cores."""
        return cls(train_scenes=4800)

    @classmethod
    def quick(cls) -> LabConfig:
        """Gates, Tables 1, 2 and 6/9 on fewer scenes: under 3 minutes on 2 cores."""
        return cls(groups=("core", "align"), train_scenes=800, val_scenes=300, test_scenes=400, epochs=6)


@dataclass
class Seed:
    """One seed's cached tokens ``(N, T, D)`` and targets ``(N, 160)`` (train / val / test) and objects per image."""

    towers: Towers
    train_tokens: torch.Tensor
    train_targets: torch.Tensor
    val_tokens: torch.Tensor
    val_targets: torch.Tensor
    test_tokens: torch.Tensor
    test_targets: torch.Tensor
    test_objects: torch.Tensor  # (N,) distinct concepts per test scene
    labels: torch.Tensor  # (160, D) aligned label embeddings


def features(towers: Towers, images: torch.Tensor, levels: tuple[int, ...] | None = None,
             batch: int = 256) -> torch.Tensor:
    """Frozen tokens ``(N, crops * T, D)`` of ``images`` with the given Pyramid-Forwarding levels."""
    pyramid = PyramidForwarding(towers.image_size, towers.mean, towers.std, PyramidConfig(levels=levels))
    with torch.no_grad():
        parts = [pyramid(images[i:i + batch], towers.encode_image_tokens) for i in range(0, images.shape[0], batch)]
    return torch.cat(parts)


def build_seed(config: LabConfig, seed: int, towers: Towers) -> Seed:
    """Render a seed's train / val / test scenes (objects from all 144 concepts) and cache their tokens."""
    generator = torch.Generator().manual_seed(1000 + seed)
    train = render_scenes(config.train_scenes, generator, config.scene)
    val = render_scenes(config.val_scenes, generator, config.scene)
    test = render_scenes(config.test_scenes, generator, config.scene)
    distinct = (test.targets[:, : VOCABULARY.num_concepts] > 0).sum(1)
    return Seed(towers, features(towers, train.images), train.targets, features(towers, val.images), val.targets,
                features(towers, test.images), test.targets, distinct, LabelEmbedder(towers)(VOCABULARY.labels))


def train_head(towers: Towers, tokens: torch.Tensor, targets: torch.Tensor, labels: torch.Tensor, config: LabConfig,
               seed: int, decoder: DecoderConfig | None = None, token_norm: float | None = None) -> ADDS:
    """A fresh head trained with ASL + Selective Language Supervision (Eq. 6) on cached tokens (eval mode)."""
    torch.manual_seed(seed)
    head = ADDS(ADDSConfig(decoder=decoder or config.decoder, token_norm=token_norm), towers=towers)
    optimizer = torch.optim.Adam(head.trainable_parameters(), lr=config.lr)
    steps = config.epochs * math.ceil(tokens.shape[0] / config.batch_size)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=config.lr, total_steps=steps, pct_start=0.2)
    loss_fn = AsymmetricLoss()
    sls = SLSConfig(alpha=config.sls_alpha)
    generator = torch.Generator().manual_seed(seed)
    head.train()
    for _ in range(config.epochs):
        order = torch.randperm(tokens.shape[0], generator=generator)
        for start in range(0, tokens.shape[0], config.batch_size):
            batch = order[start:start + config.batch_size]
            selection = select_labels(targets[batch], sls, generator)
            if not selection.is_empty:
                loss = loss_fn(head.forward_head(tokens[batch], labels[selection.indices]), selection.targets)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
            scheduler.step()
    return head.eval()


@torch.no_grad()
def head_logits(head: ADDS, tokens: torch.Tensor, labels: torch.Tensor, batch: int = 256) -> torch.Tensor:
    """Logits ``(N, k)``, every label in one call (as a tagger scores them)."""
    return torch.cat([head.forward_head(tokens[i:i + batch], labels).float() for i in range(0, len(tokens), batch)])


def metrics(scores: torch.Tensor, targets: torch.Tensor, columns: list[int]) -> dict[str, float]:
    """mAP, F1@3 and F1@5 (%) on ``columns``."""
    s, t = scores[:, columns], targets[:, columns]
    return {"mAP": 100 * mean_average_precision(s, t), "F1@3": 100 * topk_precision_recall_f1(s, t, 3)[2],
            "F1@5": 100 * topk_precision_recall_f1(s, t, 5)[2]}


def _split_metrics(scores: torch.Tensor, targets: torch.Tensor, sets: dict[str, list[int]]) -> dict[str, float]:
    return {f"{name} {key}": value for name, cols in sets.items() for key, value in
            metrics(scores, targets, cols).items()}


def _max_token_cosine(tokens: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cosine of the best-matching token (class or patch) with each label -> ``(N, k)``."""
    return torch.einsum("ntd,kd->ntk", F.normalize(tokens.float(), dim=-1), F.normalize(labels, dim=-1)).amax(1)


def _linear_probe(seed_data: Seed, seen: list[int], seed: int, steps: int = 300) -> torch.Tensor:
    """Calibrated linear probe on the class token: ``s * cos(W x, e) + b`` (``W`` from identity) fitted on the seen
    labels with ASL, so it scores any label through its embedding -> test scores ``(N, 160)``."""
    torch.manual_seed(seed)
    x = seed_data.train_tokens[:, 0].float()  # (N, D)
    labels = F.normalize(seed_data.labels, dim=-1)
    weight = torch.nn.Parameter(torch.eye(x.shape[1]))
    scale_bias = torch.nn.Parameter(torch.tensor([10.0, -3.0]))
    optimizer = torch.optim.Adam([weight, scale_bias], lr=1e-2)
    loss_fn = AsymmetricLoss()

    def score(inputs: torch.Tensor, columns: torch.Tensor) -> torch.Tensor:
        return scale_bias[0] * F.normalize(inputs @ weight.T, dim=-1) @ columns.T + scale_bias[1]

    for _ in range(steps):
        loss = loss_fn(score(x, labels[seen]), seed_data.train_targets[:, seen])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        return score(seed_data.test_tokens[:, 0].float(), labels)


def _recall_at_objects(scores: torch.Tensor, targets: torch.Tensor, objects: torch.Tensor, minimum: int = 3) -> float:
    """G3: recall@k of the concept labels on scenes with >= ``minimum`` distinct concepts, k = their count (%)."""
    n = VOCABULARY.num_concepts
    chosen = torch.nonzero(objects >= minimum).flatten()
    hits = []
    for i in chosen.tolist():
        k = int(objects[i])
        top = scores[i, :n].topk(k).indices
        hits.append(float(targets[i, top].sum()) / k)
    return 100 * sum(hits) / max(1, len(hits))


def _random_chance(targets: torch.Tensor, columns: list[int], seed: int) -> float:
    """mAP of random scores on ``columns`` (the floor G2 compares with)."""
    noise = torch.rand(targets.shape[0], len(columns), generator=torch.Generator().manual_seed(seed))
    return 100 * mean_average_precision(noise, targets[:, columns])


def _core(config: LabConfig, seed: int, data: Seed, sets: dict[str, list[int]]) -> dict[str, dict[str, float]]:
    rows: dict[str, dict[str, float]] = {}
    towers, labels, every = data.towers, data.labels, list(range(len(VOCABULARY)))
    seen = sets["seen"]
    targets = data.test_targets
    # Table 1: conventional, all 160 labels.
    torch.manual_seed(seed)
    untrained = ADDS(ADDSConfig(decoder=config.decoder), towers=towers).eval()
    rows["T1 untrained"] = metrics(head_logits(untrained, data.test_tokens, labels), targets, every)
    cosine = prior_cosine(data.test_tokens, labels, towers.tokens_per_image)  # (N, 160)
    rows["T1 cosine"] = metrics(cosine, targets, every)
    for kind in ("dm", "ml"):
        head = train_head(towers, data.train_tokens, data.train_targets, labels, config, seed,
                          replace(config.decoder, kind=kind))
        rows[f"T1 {kind}"] = metrics(head_logits(head, data.test_tokens, labels), targets, every)
    # Table 2: zero-shot, seen labels only in training.
    rows["T2 cosine"] = _split_metrics(cosine, targets, sets)
    rows["T2 max-token cosine"] = _split_metrics(_max_token_cosine(data.test_tokens, labels), targets, sets)
    rows["T2 linear probe"] = _split_metrics(_linear_probe(data, seen, seed), targets, sets)
    head = train_head(towers, data.train_tokens, data.train_targets[:, seen], labels[seen], config, seed)
    logits = head_logits(head, data.test_tokens, labels)
    rows["T2 ADDS"] = _split_metrics(logits, targets, sets)
    # Open-vocabulary mode: a fold head without `held_out` seen labels gives the fit data on validation scenes.
    order = torch.randperm(len(seen), generator=torch.Generator().manual_seed(7000 + seed)).tolist()
    pseudo = {seen[i] for i in order[:config.held_out]}
    fold_seen = [c for c in seen if c not in pseudo]
    fold = train_head(towers, data.train_tokens, data.train_targets[:, fold_seen], labels[fold_seen], config, seed)
    fit_h = head_logits(fold, data.val_tokens, labels[seen])
    fit_p = prior_cosine(data.val_tokens, labels[seen], towers.tokens_per_image)
    # global standardisation: per-image z-scores alone cost the cosine 1.4 / 2.2 mAP on U_comb / U_word (measured
    # with benchmarks/open_vocab.py, docs/toyworld.md), fixed statistics keep its ranking of images per label
    combiner = fit_combiner(fit_h, fit_p, data.val_targets[:, seen], torch.tensor([c in pseudo for c in seen]),
                            "global")
    names = VOCABULARY.labels
    record = OpenVocabulary(tuple(names[c] for c in seen), combiner)
    open_vocab = record.logits(logits, cosine, names)
    rows["T2 open-vocab"] = _split_metrics(open_vocab, targets, sets)
    rows["T2 open-vocab"]["seen unchanged"] = float(torch.equal(open_vocab[:, seen], logits[:, seen]))
    rows["T2 open-vocab"]["prior weight"] = combiner.prior_weight
    # Gate G3: the class-token cosine's recall@k on busy scenes.
    rows["G3"] = {"recall": _recall_at_objects(cosine, targets, data.test_objects)}
    rows["chance"] = {f"{name} mAP": _random_chance(targets, cols, seed) for name, cols in sets.items()}
    return rows


def _align(config: LabConfig, seed: int, data: Seed, sets: dict[str, list[int]], control: Towers):
    rows: dict[str, dict[str, float]] = {}
    seen = sets["seen"]
    for name in ENCODERS[1:]:  # "aligned" is Table 2's ADDS row
        labels = label_embeddings(name, data.towers, control, seed=seed)
        head = train_head(data.towers, data.train_tokens, data.train_targets[:, seen], labels[seen], config, seed)
        rows[f"T6 {name}"] = _split_metrics(head_logits(head, data.test_tokens, labels), data.test_targets, sets)
        # how far a linear map fitted on the seen labels carries this encoder onto the aligned one (1 = exactly)
        for split in ("U_comb", "U_word"):
            rows[f"T6 {name}"][f"{split} linear-map cosine"] = linear_map_transfer(labels, data.labels, seen,
                                                                                   sets[split])
    return rows


def _decoders(config: LabConfig, seed: int, data: Seed, sets: dict[str, list[int]]):
    rows: dict[str, dict[str, float]] = {}
    seen = sets["seen"]
    for kind in ("ml", "dm"):
        for layers in (1, 3, 6):
            head = train_head(data.towers, data.train_tokens, data.train_targets[:, seen], data.labels[seen], config,
                              seed, replace(config.decoder, kind=kind, num_layers=layers))
            rows[f"T5 {kind}x{layers}"] = _split_metrics(head_logits(head, data.test_tokens, data.labels),
                                                        data.test_targets, sets)
    return rows


def _pyramid(config: LabConfig, seed: int, towers: Towers, labels: torch.Tensor):
    rows: dict[str, dict[str, float]] = {}
    generator = torch.Generator().manual_seed(2000 + seed)
    train = render_scenes(config.highres_train_scenes, generator, config.highres)
    test = render_scenes(config.highres_test_scenes, generator, config.highres)
    every = list(range(len(VOCABULARY)))
    concepts = list(range(VOCABULARY.num_concepts))
    small = _size_targets(test, small=True)
    large = _size_targets(test, small=False)
    for name, levels in (("[0]", (0,)), ("[2]", (2,)), ("[0,1,2]", (0, 1, 2))):
        head = train_head(towers, features(towers, train.images, levels), train.targets, labels, config, seed,
                          config.highres_decoder)
        scores = head_logits(head, features(towers, test.images, levels), labels)
        rows[f"T7 {name}"] = {**metrics(scores, test.targets, every),
                              "small mAP": 100 * mean_average_precision(scores[:, concepts], small),
                              "large mAP": 100 * mean_average_precision(scores[:, concepts], large)}
    return rows


def _size_targets(scenes: Scenes, small: bool) -> torch.Tensor:
    """``(N, 144)`` concept targets of only the small objects (radius < 10 % of the side) or only the large ones."""
    keep = scenes.radius < 0.1 * scenes.images.shape[-1]
    keep = keep if small else ~keep
    out = targets_of(scenes.owner[keep], scenes.concept[keep], scenes.images.shape[0])
    return out[:, : VOCABULARY.num_concepts]


def _more(config: LabConfig, seed: int, data: Seed, sets: dict[str, list[int]]):
    rows: dict[str, dict[str, float]] = {}
    seen, labels = sets["seen"], data.labels
    n = VOCABULARY.num_concepts
    seen_concepts = [c for c in seen if c < n]
    unseen_concepts = [c for c in sets["U_comb"] + sets["U_word"] if c < n]
    # Tables 3/4: single objects of the seen concepts -> scenes.
    generator = torch.Generator().manual_seed(3000 + seed)
    pool = torch.tensor(seen_concepts)
    concepts = pool[torch.randint(len(pool), (config.single_images,), generator=generator)]
    images = render_single(concepts, generator, min_scale=0.09, max_scale=0.3)
    targets = targets_of(torch.arange(len(concepts)), concepts, len(concepts))
    tokens = features(data.towers, images)
    overlap = {"with overlap": seen_concepts, "without overlap": unseen_concepts}
    for kind in ("dm", "ml"):
        head = train_head(data.towers, tokens, targets[:, seen], labels[seen], config, seed,
                          replace(config.decoder, kind=kind))
        rows[f"T3 {kind}"] = _split_metrics(head_logits(head, data.test_tokens, labels), data.test_targets, overlap)
    # Table 8: a quarter / half / all of the seen labels on the same images.
    order = torch.randperm(len(seen), generator=torch.Generator().manual_seed(4000 + seed)).tolist()
    for share in (25, 50):
        subset = sorted(seen[i] for i in order[: len(seen) * share // 100])
        head = train_head(data.towers, data.train_tokens, data.train_targets[:, subset], labels[subset], config,
                          seed)
        rows[f"T8 {share}%"] = _split_metrics(head_logits(head, data.test_tokens, labels), data.test_targets, sets)
    # Issue 10.9: L2-normalised visual tokens (token_norm = 1) vs the paper's raw tokens (Table 2's ADDS row).
    head = train_head(data.towers, data.train_tokens, data.train_targets[:, seen], labels[seen], config, seed,
                      token_norm=1.0)
    rows["TN token_norm=1"] = _split_metrics(head_logits(head, data.test_tokens, labels), data.test_targets, sets)
    return rows


def _job(config: LabConfig, seed: int, group: str) -> dict[str, dict[str, float]]:
    """One (seed, group) job in its own process: one intra-op thread, tokens cached once for the group's rows."""
    torch.set_num_threads(1)
    towers = load_toy_towers(0)
    sets = VOCABULARY.splits().as_dict()
    if group == "pyr":
        return _pyramid(config, seed, towers, LabelEmbedder(towers)(VOCABULARY.labels))
    data = build_seed(config, seed, towers)
    if group == "core":
        return _core(config, seed, data, sets)
    if group == "align":
        return _align(config, seed, data, sets, load_toy_towers(1))
    if group == "dec":
        return _decoders(config, seed, data, sets)
    if group == "more":
        return _more(config, seed, data, sets)
    raise ValueError(f"unknown group {group!r}; choose from {', '.join(GROUPS)}")


def run_lab(config: LabConfig, echo: Callable[[str], None] = print, workers: int = 2) -> dict:
    """Every job of ``config`` -> ``{"config", "rows": {row: {metric: [value per seed]}}, "seconds"}``.

    ``workers > 1`` runs jobs in that many spawned processes; the slowest groups start first.
    """
    start = time.perf_counter()
    cost = {"pyr": 0, "dec": 1, "more": 2, "core": 3, "align": 4}
    jobs = sorted(((seed, group) for group in config.groups for seed in config.seeds), key=lambda j: cost[j[1]])
    results: dict[tuple[int, str], dict] = {}
    if workers > 1 and len(jobs) > 1:
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=min(workers, len(jobs)), mp_context=context) as pool:
            futures = {job: pool.submit(_job, config, *job) for job in jobs}
            for job, future in futures.items():
                results[job] = future.result()
                echo(f"  seed {job[0]} {job[1]}: done ({time.perf_counter() - start:.0f}s)")
    else:
        threads = torch.get_num_threads()
        for job in jobs:
            results[job] = _job(config, *job)
            echo(f"  seed {job[0]} {job[1]}: done ({time.perf_counter() - start:.0f}s)")
        torch.set_num_threads(threads)
    collected: dict[str, dict[str, list[float]]] = {}
    for seed in config.seeds:
        for group in config.groups:
            for row, values in results[(seed, group)].items():
                for metric, value in values.items():
                    collected.setdefault(row, {}).setdefault(metric, []).append(value)
    return {"config": asdict(config), "rows": collected, "seconds": time.perf_counter() - start}
