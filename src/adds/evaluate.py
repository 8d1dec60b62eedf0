"""Evaluation protocols of the paper's three tasks (``../shared/docs/protocols.md``), for ADDS and plain CLIP.

==================  =========================================  ===============================================
protocol            metrics                                     paper
==================  =========================================  ===============================================
``conventional``    mAP; CP, CR, CF1, OP, OR, OF1 at a          Table 1, 6, 7 (MS-COCO, ASL / ML-Decoder)
                    threshold (0.5)
``zsl``             mAP; P/R/F1 @ 3 and @ 5                     Table 2, 5 (NUS-WIDE, 81 unseen concepts)
``gzsl``            same, over seen + unseen labels             NUS-WIDE 1006 labels (LESA / BiAM / MKT)
``single-to-multi`` mAP, P/R/F1 @ 3 and @ 5 for all labels,     Tables 3, 4, 8 (trained on ImageNet, tested on
                    the overlapped and the non-overlapped       MS-COCO / NUS-WIDE)
                    subset
==================  =========================================  ===============================================

Every number is computed by :mod:`adds.metrics` (non-interpolated AP averaged over labels, a label without a
positive counting as 0 unless ``skip_labels_without_positives``; top-k micro-averaged with images without
positives kept; CF1 = F1 of CP and CR). Values are fractions in ``[0, 1]``; tables print percentages.

Single-to-multi subsets follow ``protocols.md``: a target label is *overlapped* when its WordNet synset is a
training class or a hypernym of one (:func:`adds.data.overlap.overlapped_labels`). A subset is ranked over its own
labels only and every test image is kept. For a model, "ranked over its own labels" means the model is *run* on
that subset's label list (with two or more DM-decoder layers a label's score depends on the other labels in the
list, see ``docs/architecture.md``); for given score matrices the subset's columns are taken.

``adds eval --zero-shot-baseline`` scores the training-free CLIP baseline with the tagger's own score
(:class:`adds.tagger.CLIPBaseline`: each label's best crop cosine against a constant label-free reference, through a
sigmoid) -- the same towers, prompts, images and metrics as ADDS, no trained head. :func:`clip_zero_shot_scores`
is the raw cosine of one pooled embedding (about 0.1-0.35, so threshold metrics at 0.5 are meaningless for it; mAP
and top-k rank as the baseline's do with the one view).

Scores of evaluated images are what :func:`predict` returns; images that cannot be loaded (missing / corrupt files)
are left out and counted (:attr:`Predictions.failed`).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from adds.data.base import collate_skip_failures
from adds.metrics import (
    average_precision_per_label,
    mean_average_precision,
    threshold_metrics,
    topk_precision_recall_f1,
)

__all__ = [
    "PROTOCOLS",
    "EvalConfig",
    "EvalResult",
    "Predictions",
    "TensorFeatureDataset",
    "collate_batch",
    "batch_tokens",
    "predict",
    "clip_zero_shot_scores",
    "protocol_metrics",
    "evaluate_scores",
    "evaluate_model",
    "overlap_subsets",
    "format_table",
    "write_json",
]

logger = logging.getLogger(__name__)

PROTOCOLS = ("conventional", "zsl", "gzsl", "single-to-multi")
#: Subset names of the single-to-multi protocol, in table order. "all" is the paper's "with overlapped classes".
SUBSETS = ("all", "overlapped", "non-overlapped")
_OVERLAP_TARGETS = {"coco": "coco80", "nuswide": "nuswide81"}
#: Largest (images x labels) count of one evaluation forward pass: keeps 21k-label evaluation within memory.
EVAL_QUERY_BUDGET = 1 << 18


@dataclass(frozen=True)
class EvalConfig:
    """How a test set is scored.

    Attributes:
        protocol: ``"conventional"`` | ``"zsl"`` | ``"gzsl"`` | ``"single-to-multi"`` (module docstring).
        threshold: score threshold of CP/CR/CF1/OP/OR/OF1 (applied to sigmoid scores).
        topk: the k of P/R/F1@k (NUS-WIDE: 3 and 5).
        ties: AP tie handling, ``"group"`` (scikit-learn) or ``"ordinal"`` (BiAM / MKT), see :mod:`adds.metrics`.
        skip_labels_without_positives: leave labels without a positive out of the mean (default: AP 0, counted).
        overlap_target: single-to-multi target vocabulary for the overlap file, ``"coco80"`` | ``"nuswide81"``;
            ``None`` = from the test dataset's kind.
        overlap_train: the training classes the overlap is computed against (``"imagenet1k"``).
        batch_size: images per forward pass.
        precision: ``"fp32"``, ``"bf16"`` or ``"fp16"``: the precision :func:`evaluate_model` runs the model's image
            path in (:mod:`adds.tagger.precision`: a CPU bf16 run casts the vision tower in place, the head stays
            float32; a GPU run uses ``torch.autocast``); scores are float32. An explicit ``autocast_dtype`` wins.
    """

    protocol: str = "conventional"
    threshold: float = 0.5
    topk: tuple[int, ...] = (3, 5)
    ties: str = "group"
    skip_labels_without_positives: bool = False
    overlap_target: str | None = None
    overlap_train: str = "imagenet1k"
    batch_size: int = 256
    precision: str = "fp32"

    def __post_init__(self) -> None:
        if self.precision not in ("fp32", "bf16", "fp16"):
            raise ValueError(f"precision must be fp32, bf16 or fp16, got {self.precision!r}")
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"evaluation protocol must be one of {PROTOCOLS}, got {self.protocol!r}")
        object.__setattr__(self, "threshold", float(self.threshold))
        object.__setattr__(self, "topk", tuple(int(k) for k in self.topk))
        if any(k < 1 for k in self.topk):
            raise ValueError(f"topk values must be >= 1, got {self.topk}")
        if self.ties not in ("group", "ordinal"):
            raise ValueError(f"ties must be 'group' or 'ordinal', got {self.ties!r}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")


@dataclass
class EvalResult:
    """Metrics of one evaluation; ``metrics[subset][name]`` are fractions in [0, 1] (``subset`` is ``"all"``
    except for single-to-multi, which adds ``"overlapped"`` and ``"non-overlapped"``)."""

    protocol: str
    dataset: str
    model: str
    num_images: int
    num_labels: int
    metrics: dict[str, dict[str, float]]
    subset_labels: dict[str, list[str]] = field(default_factory=dict)
    per_label_ap: dict[str, float] = field(default_factory=dict)
    failed_images: int = 0
    notes: list[str] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)
    expected: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"units": "fraction", **asdict(self)}

    @property
    def headline(self) -> dict[str, float]:
        """The "all labels" metrics."""
        return self.metrics["all"]


# -- batches of cached tokens or images ---------------------------------------------------------------------------
class TensorFeatureDataset(Dataset):
    """In-memory token features with the item layout of :class:`adds.features.CachedFeatureDataset`.

    Args:
        tokens: ``(N, T, D)`` image tokens (``ADDS.forward_features`` output).
        targets: ``(N, C)`` 0/1 targets.
        mask: optional ``(N, C)`` bool, ``False`` = unknown ground truth.
        indices: optional ``(N,)`` dataset indices (default ``0..N-1``).
    """

    def __init__(self, tokens: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor | None = None,
                 indices: torch.Tensor | None = None) -> None:
        if tokens.dim() != 3 or targets.dim() != 2 or tokens.shape[0] != targets.shape[0]:
            raise ValueError(f"tokens must be (N, T, D) and targets (N, C), got {tuple(tokens.shape)} and "
                             f"{tuple(targets.shape)}")
        self.tokens = tokens
        self.target = targets.float()
        self.mask = torch.ones_like(self.target, dtype=torch.bool) if mask is None else mask.bool()
        self.indices = torch.arange(len(tokens)) if indices is None else torch.as_tensor(indices, dtype=torch.long)

    def __len__(self) -> int:
        return self.tokens.shape[0]

    def __getitem__(self, row: int) -> dict[str, Any]:
        return {"index": int(self.indices[row]), "tokens": self.tokens[row], "target": self.target[row],
                "mask": self.mask[row]}


def collate_batch(items: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Stack feature items (``tokens``) or image items (``image``, failures dropped and listed in ``failed``)."""
    if items and "tokens" in items[0]:
        return {
            "index": torch.tensor([int(item["index"]) for item in items], dtype=torch.long),
            "tokens": torch.stack([item["tokens"] for item in items]),  # (B, N, D)
            "target": torch.stack([item["target"] for item in items]),  # (B, C)
            "mask": torch.stack([item["mask"] for item in items]),  # (B, C)
            "failed": [],
        }
    return collate_skip_failures(items)


def batch_tokens(model: Any, batch: Mapping[str, Any], device: torch.device) -> torch.Tensor | None:
    """Image tokens ``(B, N, token_dim)`` of a batch: cached ``tokens``, or the frozen towers run on ``image``.

    ``None`` when every image of an image batch failed to load.
    """
    if "tokens" in batch:
        return batch["tokens"].to(device, non_blocking=True)
    if batch["image"] is None:
        return None
    return model.forward_features(batch["image"].to(device, non_blocking=True))


# -- scoring ------------------------------------------------------------------------------------------------------
@dataclass
class Predictions:
    """Scores of the evaluated images, in dataset-index order.

    Attributes:
        indices: ``(N,)`` dataset indices of the evaluated images.
        scores: ``{label-set name: (N, k) float32}``.
        targets, mask: ``(N, C)`` ground truth over the full vocabulary.
        failed: ``(path, reason)`` of images that could not be loaded (not evaluated).
    """

    indices: torch.Tensor
    scores: dict[str, torch.Tensor]
    targets: torch.Tensor
    mask: torch.Tensor
    failed: list[tuple[str, str]] = field(default_factory=list)


ScoreFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@torch.no_grad()
def predict(
    model: Any,
    loader: Any,
    label_sets: Mapping[str, torch.Tensor],
    score_fn: ScoreFn | None = None,
    device: torch.device | str = "cpu",
    autocast_dtype: torch.dtype | None = None,
    progress: bool = False,
    gather: Callable[[torch.Tensor], torch.Tensor] | None = None,
    description: str = "eval",
) -> Predictions:
    """Score every batch of ``loader`` against each label set.

    Args:
        model: an :class:`adds.model.ADDS` (its ``forward_features`` is used for image batches).
        loader: yields :func:`collate_batch` batches (cached tokens or images).
        label_sets: ``{name: (k, D) label embeddings}``; each is scored separately (single-to-multi subsets).
        score_fn: ``(tokens (B, N, D), label embeddings (k, D)) -> scores (B, k)``; default: the ADDS head's
            sigmoid. The training-free baseline: ``CLIPBaseline.forward_head`` on ``CLIPBaseline.class_tokens``
            (``adds eval --zero-shot-baseline``), or the raw cosine :func:`clip_zero_shot_scores`.
        device: where the model runs.
        autocast_dtype: run under ``torch.autocast`` with this dtype (GPU mixed precision); ``None``: off.
        progress: tqdm bar on stderr.
        gather: under torchrun, concatenates a tensor over processes (``adds.train.distributed``); rows that a
            distributed sampler duplicated are dropped by index.
    """
    from tqdm.auto import tqdm

    device = torch.device(device)
    if score_fn is None:
        def score_fn(tokens: torch.Tensor, embeddings: torch.Tensor) -> torch.Tensor:
            return model.forward_head(tokens, embeddings).float().sigmoid()

    was_training = model.training
    model.eval()
    sets = {name: emb.to(device) for name, emb in label_sets.items()}
    indices, targets, masks, failed = [], [], [], []
    scores: dict[str, list[torch.Tensor]] = {name: [] for name in sets}
    for batch in tqdm(loader, desc=description, disable=not progress, leave=False, dynamic_ncols=True):
        failed.extend(batch.get("failed", []))
        amp = torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype is not None else nullcontext()
        with amp:
            tokens = batch_tokens(model, batch, device)
            if tokens is None:
                continue
            for name, embeddings in sets.items():
                scores[name].append(score_fn(tokens, embeddings).float().cpu())  # (B, k)
        indices.append(batch["index"])
        targets.append(batch["target"].float())
        masks.append(batch["mask"].bool())
    model.train(was_training)
    width = targets[0].shape[1] if targets else 0
    index = torch.cat(indices) if indices else torch.zeros(0, dtype=torch.long)
    target = torch.cat(targets) if targets else torch.zeros(0, width)
    mask = torch.cat(masks) if masks else torch.zeros(0, width, dtype=torch.bool)
    result = {name: torch.cat(chunks) if chunks else torch.zeros(0, len(sets[name])) for name, chunks in scores.items()}
    if gather is not None:
        index = gather(index)
        target = gather(target)
        mask = gather(mask)
        result = {name: gather(value) for name, value in result.items()}
    # Dataset-index order, one row per image (a distributed sampler pads by repeating images).
    order = np.unique(index.numpy(), return_index=True)[1]
    keep = torch.as_tensor(order, dtype=torch.long)
    return Predictions(index[keep], {name: value[keep] for name, value in result.items()}, target[keep], mask[keep],
                       failed)


def clip_zero_shot_scores(tokens: torch.Tensor, label_embeddings: torch.Tensor, tokens_per_crop: int,
                          first_crop_only: bool = True) -> torch.Tensor:
    """Training-free CLIP baseline: cosine of the image embedding and each label embedding -> ``(B, k)``.

    Args:
        tokens: ``(B, crops * T, D)`` aligned tokens (``ADDS.forward_features``); token 0 of each crop is the
            projected class token, i.e. CLIP's image embedding of that crop.
        label_embeddings: ``(k, D)`` prompt-ensembled label embeddings.
        tokens_per_crop: ``T``.
        first_crop_only: use crop 0 (the whole image at level 0 -- plain CLIP); otherwise the normalised mean of
            every crop's class token (used when the pyramid has no level 0).
    """
    if first_crop_only:
        image = tokens[:, 0]  # (B, D)
    else:
        crops = tokens.shape[1] // tokens_per_crop
        cls = tokens[:, ::tokens_per_crop][:, :crops]  # (B, crops, D)
        image = F.normalize(cls.float(), dim=-1).mean(dim=1)  # (B, D)
    image = F.normalize(image.float(), dim=-1)
    labels = F.normalize(label_embeddings.float(), dim=-1)  # (k, D)
    return image @ labels.T  # (B, k)


# -- metrics ------------------------------------------------------------------------------------------------------
def protocol_metrics(scores: Any, targets: Any, mask: Any | None, config: EvalConfig) -> dict[str, float]:
    """The metrics ``config.protocol`` reports for one label set (fractions)."""
    scores = np.asarray(scores.numpy() if hasattr(scores, "numpy") else scores, dtype=np.float64)
    targets_np = np.asarray(targets.numpy() if hasattr(targets, "numpy") else targets)
    mask_np = None if mask is None else np.asarray(mask.numpy() if hasattr(mask, "numpy") else mask)
    out = {"mAP": mean_average_precision(scores, targets_np, mask_np, ties=config.ties,
                                         skip_labels_without_positives=config.skip_labels_without_positives)}
    if config.protocol == "conventional":
        out.update(threshold_metrics(scores, targets_np, config.threshold, mask_np))
        return out
    for k in config.topk:
        if k > scores.shape[1]:
            logger.warning("top-%d metrics skipped: only %d labels", k, scores.shape[1])
            continue
        precision, recall, f1 = topk_precision_recall_f1(scores, targets_np, k, mask_np)
        out.update({f"P@{k}": precision, f"R@{k}": recall, f"F1@{k}": f1})
    return out


def overlap_subsets(vocabulary: Sequence[str], target: str, train: str = "imagenet1k") -> dict[str, list[int]]:
    """Label indices of the ``overlapped`` and ``non-overlapped`` subsets of ``vocabulary`` (single-to-multi).

    Uses the committed WordNet overlap data (:mod:`adds.data.overlap`). ``train`` is ``"imagenet1k"``,
    ``"imagenet21k"`` or a class-list file (first tab-separated column: WordNet ids, e.g. the Table 8 subset
    written by :func:`adds.data.imagenet.build_imagenet21k_subset`).
    """
    from adds.data.overlap import overlap_indices

    classes: str | list[str] = train
    if train not in ("imagenet1k", "imagenet21k"):
        from adds.data.imagenet import read_class_list

        classes = [entry.wnid for entry in read_class_list(train)]
    overlapped, non_overlapped = overlap_indices(vocabulary, target, classes)
    return {"overlapped": overlapped, "non-overlapped": non_overlapped}


def overlap_target_for(kind: str | None, config: EvalConfig) -> str:
    """The overlap vocabulary name for a test dataset kind (``coco`` -> ``coco80``, ``nuswide`` -> ``nuswide81``)."""
    if config.overlap_target:
        return config.overlap_target
    if kind in _OVERLAP_TARGETS:
        return _OVERLAP_TARGETS[kind]
    raise ValueError(f"single-to-multi needs a COCO or NUS-WIDE test set (or evaluation.overlap_target), got {kind!r}")


def evaluate_scores(
    scores: Any,
    targets: Any,
    mask: Any | None = None,
    vocabulary: Sequence[str] | None = None,
    config: EvalConfig | None = None,
    subsets: Mapping[str, Sequence[int]] | None = None,
    subset_scores: Mapping[str, Any] | None = None,
    dataset: str = "",
    model: str = "",
    failed_images: int = 0,
) -> EvalResult:
    """Metrics of an ``(N, C)`` score matrix under ``config.protocol``.

    Args:
        scores: ``(N, C)`` scores (higher = more likely), numpy or torch.
        targets: ``(N, C)`` 0/1 ground truth; ``mask``: optional ``(N, C)`` bool known-mask.
        vocabulary: the C label names (for per-label AP and subset listings).
        subsets: single-to-multi: ``{"overlapped": [label indices], "non-overlapped": [...]}``.
        subset_scores: scores of a model *run* on each subset's labels only (``(N, len(subset))``); default: the
            subset's columns of ``scores``.
    """
    config = config or EvalConfig()
    s = np.asarray(scores.detach().cpu().float().numpy() if hasattr(scores, "detach") else scores, dtype=np.float64)
    t = np.asarray(targets.detach().cpu().numpy() if hasattr(targets, "detach") else targets)
    m = None if mask is None else np.asarray(mask.detach().cpu().numpy() if hasattr(mask, "detach") else mask)
    if s.ndim != 2:
        raise ValueError(f"scores must be (N images, C labels), got shape {s.shape}")
    vocabulary = list(vocabulary) if vocabulary is not None else [str(i) for i in range(s.shape[1])]
    if len(vocabulary) != s.shape[1]:
        raise ValueError(f"{len(vocabulary)} label names for {s.shape[1]} score columns")
    metrics = {"all": protocol_metrics(s, t, m, config)}
    ap = average_precision_per_label(s, t, m, ties=config.ties)
    result = EvalResult(
        protocol=config.protocol, dataset=dataset, model=model, num_images=int(s.shape[0]),
        num_labels=int(s.shape[1]), metrics=metrics,
        per_label_ap={label: float(value) for label, value in zip(vocabulary, ap, strict=True)},
        failed_images=failed_images, settings=asdict(config),
    )
    if config.protocol == "single-to-multi":
        if subsets is None:
            raise ValueError("the single-to-multi protocol needs the overlapped / non-overlapped label subsets")
        for name in SUBSETS[1:]:
            columns = list(subsets.get(name, []))
            result.subset_labels[name] = [vocabulary[i] for i in columns]
            if not columns:
                result.notes.append(f"the {name} subset is empty")
                continue
            sub = subset_scores.get(name) if subset_scores else None
            sub = s[:, columns] if sub is None else np.asarray(sub.numpy() if hasattr(sub, "numpy") else sub)
            metrics[name] = protocol_metrics(sub, t[:, columns], None if m is None else m[:, columns], config)
        result.subset_labels["all"] = list(vocabulary)
    known_positive = t == 1 if m is None else (t == 1) & m.astype(bool)  # (N, C)
    no_positive = int((~known_positive.any(axis=0)).sum())
    if no_positive:
        how = "left out of" if config.skip_labels_without_positives else "counted as AP 0 in"
        result.notes.append(f"{no_positive} label(s) have no positive among the evaluated images ({how} the mAP)")
    if failed_images:
        result.notes.append(f"{failed_images} image(s) could not be loaded and were not evaluated")
    return result


def eval_batch_size(config: EvalConfig, num_labels: int) -> int:
    """``config.batch_size``, reduced so one forward pass scores at most ``EVAL_QUERY_BUDGET`` (image, label) pairs."""
    return max(1, min(config.batch_size, EVAL_QUERY_BUDGET // max(1, num_labels)))


def evaluate_model(
    model: Any,
    data: Dataset,
    vocabulary: Sequence[str],
    config: EvalConfig,
    *,
    dataset_kind: str | None = None,
    dataset_name: str = "",
    model_name: str = "",
    label_embeddings: torch.Tensor | None = None,
    score_fn: ScoreFn | None = None,
    device: torch.device | str = "cpu",
    autocast_dtype: torch.dtype | None = None,
    num_workers: int = 0,
    sampler: Any = None,
    gather: Callable[[torch.Tensor], torch.Tensor] | None = None,
    progress: bool = True,
    failed_images: int = 0,
) -> EvalResult:
    """Score ``data`` with ``model`` and compute ``config.protocol``'s metrics (single-to-multi subsets included).

    Args:
        model: an ``ADDS`` model (or any object with ``forward_features`` / ``forward_head`` / ``encode_labels``).
        data: items with ``tokens`` (feature cache, :class:`TensorFeatureDataset`) or ``image``
            (a ``MultiLabelDataset`` with a resize transform).
        vocabulary: the labels of the targets' columns.
        dataset_kind: ``"coco"`` / ``"nuswide"``: picks the overlap vocabulary for single-to-multi.
        label_embeddings: ``(C, D)`` embeddings of ``vocabulary`` (default ``model.encode_labels``).
        score_fn: see :func:`predict` (for the training-free baseline too).
        sampler, gather: for evaluation spread over torchrun processes.
        failed_images: images already known to be unloadable (e.g. recorded by the feature cache).
    """
    from torch.utils.data import DataLoader

    from adds.tagger.precision import resolve_precision

    precision = resolve_precision(config.precision, device)  # PrecisionError (a ValueError): cannot run here
    precision.prepare(model)  # CPU bf16: the vision tower cast in place; head and text tower stay float32
    if autocast_dtype is None:
        autocast_dtype = precision.autocast_dtype
    vocabulary = list(vocabulary)
    embeddings = model.encode_labels(vocabulary) if label_embeddings is None else label_embeddings
    label_sets = {"all": embeddings}
    subsets = None
    if config.protocol == "single-to-multi":
        subsets = overlap_subsets(vocabulary, overlap_target_for(dataset_kind, config), config.overlap_train)
        for name, columns in subsets.items():
            if columns:  # the model is run on the subset's label list only (module docstring)
                label_sets[name] = embeddings[torch.as_tensor(columns, dtype=torch.long)]
    loader = DataLoader(data, batch_size=eval_batch_size(config, len(vocabulary)), sampler=sampler,
                        num_workers=num_workers, collate_fn=collate_batch)
    preds = predict(model, loader, label_sets, score_fn=score_fn, device=device, autocast_dtype=autocast_dtype,
                    progress=progress, gather=gather, description=f"evaluate {dataset_name}".strip())
    if preds.failed:
        logger.warning("%d image(s) of %s could not be loaded and were skipped, e.g. %s", len(preds.failed),
                       dataset_name or "the test set", ", ".join(path for path, _ in preds.failed[:3]))
    if preds.indices.numel() == 0:
        raise ValueError(f"no image of {dataset_name or 'the test set'} could be evaluated")
    subset_scores = {name: preds.scores[name] for name in label_sets if name != "all"}
    return evaluate_scores(preds.scores["all"], preds.targets, preds.mask, vocabulary, config, subsets=subsets,
                           subset_scores=subset_scores, dataset=dataset_name, model=model_name,
                           failed_images=len(preds.failed) + failed_images)


# -- reporting ----------------------------------------------------------------------------------------------------
_COLUMNS = {
    "conventional": [("mAP", "mAP(%)"), ("CP", "CP"), ("CR", "CR"), ("CF1", "CF1"), ("OP", "OP"), ("OR", "OR"),
                     ("OF1", "OF1")],
}
_SUBSET_TITLES = {"all": "With overlapped classes (all labels)", "overlapped": "Overlapped classes only",
                  "non-overlapped": "Without overlapped classes"}


def _columns(result: EvalResult) -> list[tuple[str, str]]:
    if result.protocol in _COLUMNS:
        return _COLUMNS[result.protocol]
    columns = [("mAP", "mAP(%)")]
    for k in result.settings.get("topk", (3, 5)):
        columns += [(f"P@{k}", f"P (k={k})"), (f"R@{k}", f"R (k={k})"), (f"F1@{k}", f"F1 (k={k})")]
    return columns


def _cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{100 * float(value):.2f}"


def _paper_cell(paper: Mapping[str, Any], key: str) -> str:
    """The paper's value of ``key``: a number, ``?`` when the config marks it doubtful (``null``), ``-`` if absent."""
    value = paper.get(key)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return f"{float(value):.2f}"
    return "?" if key in paper and value is None else "-"


def format_table(result: EvalResult, expected: Mapping[str, Any] | None = None) -> str:
    """A plain-text table in the paper's layout (percentages); ``expected`` adds a row with the paper's numbers.

    ``expected`` maps metric names (``"mAP"``, ``"F1@3"``, ...; for single-to-multi optionally nested per subset)
    to percentages as printed in the paper; a metric given as ``None`` is one the paper prints but the config does
    not claim (Tables 3/4/8 print F1@3 = F1@5) and is shown as ``?``.
    """
    columns = _columns(result)
    header = ["Model"] + [title for _, title in columns]
    rows: list[tuple[str, list[str]]] = []
    sections = [name for name in SUBSETS if name in result.metrics] if result.protocol == "single-to-multi" \
        else ["all"]
    lines = [f"{result.protocol} evaluation on {result.dataset or 'the test set'}: {result.num_images} images, "
             f"{result.num_labels} labels"]
    doubtful = False
    for section in sections:
        rows = [(result.model or "model", [_cell(result.metrics[section].get(key)) for key, _ in columns])]
        paper = expected.get(section, expected) if expected and result.protocol == "single-to-multi" else expected
        if isinstance(paper, Mapping):
            values = [paper.get(key) for key, _ in columns]
            if any(isinstance(v, (int, float)) for v in values):
                cells = [_paper_cell(paper, key) for key, _ in columns]
                doubtful = doubtful or "?" in cells
                rows.append(("paper", cells))
        widths = [max(len(header[0]), *(len(name) for name, _ in rows))]
        widths += [max(len(title), *(len(cells[i]) for _, cells in rows)) for i, title in enumerate(header[1:])]
        if result.protocol == "single-to-multi":
            count = len(result.subset_labels.get(section, [])) or result.num_labels
            lines.append(f"{_SUBSET_TITLES[section]} ({count} labels)")
        lines.append("  ".join(cell.ljust(width) for cell, width in zip(header, widths, strict=True)))
        for name, cells in rows:
            lines.append("  ".join(cell.ljust(width) for cell, width in zip([name, *cells], widths, strict=True)))
    if result.protocol == "conventional":
        lines.append(f"(threshold {result.settings.get('threshold', 0.5)})")
    if doubtful:
        lines.append("?: the paper's number is doubtful and not claimed (e.g. it prints F1@3 = F1@5, which micro "
                     "top-k F1 cannot give in general); see the config's comment")
    lines.extend(f"note: {note}" for note in result.notes)
    return "\n".join(lines)


def write_json(result: EvalResult, path: str | Path) -> Path:
    """Write ``result`` (fractions, per-label AP, settings, notes) as JSON."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result.to_dict(), indent=2) + "\n", encoding="utf-8")
    return path
