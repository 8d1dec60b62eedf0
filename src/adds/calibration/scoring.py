"""Scores of labelled and unlabelled images exactly as the tagger computes them, for calibration.

Thresholds are only right for the scores they are applied to, so calibration scores images *with the tagger*
(:class:`adds.tagger.Tagger`, from a checkpoint or the training-free CLIP baseline): images are squash-resized to
the tagger's input plan (:class:`~adds.data.base.SquashResize`, loaded in DataLoader workers) and scored by
:meth:`Tagger.score_prepared` against the whole label list at once -- the same model, pyramid levels, label
embeddings and sigmoid as ``adds tag``. Unreadable images are skipped and counted.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from adds.data.base import MultiLabelDataset, Record, SquashResize
from adds.evaluate import collate_batch

__all__ = ["Scored", "score_with_tagger", "unlabelled_dataset"]

logger = logging.getLogger(__name__)


@dataclass
class Scored:
    """Scores of the images that could be loaded, in dataset order.

    Attributes:
        scores: ``(N, k)`` float32 in [0, 1]; ``targets``: ``(N, k)`` 0/1; ``mask``: ``(N, k)`` bool known-mask.
        failed: ``(path, reason)`` of the images that could not be loaded.
    """

    scores: torch.Tensor
    targets: torch.Tensor
    mask: torch.Tensor
    failed: list[tuple[str, str]] = field(default_factory=list)


def unlabelled_dataset(paths: Sequence[str], vocabulary: Sequence[str], input_size: int) -> MultiLabelDataset:
    """Image files without labels (every target 0, unused) over ``vocabulary``, squash-resized to ``input_size``."""
    return MultiLabelDataset([Record(path=str(path)) for path in paths], vocabulary, name="unlabelled images",
                             transform=SquashResize(int(input_size)))


def score_with_tagger(
    tagger: Any,
    dataset: MultiLabelDataset,
    labels: Sequence[str],
    *,
    num_workers: int = 0,
    progress: bool = True,
    description: str = "score",
) -> Scored:
    """Scores of ``dataset``'s images for ``labels`` by ``tagger`` (a :class:`adds.tagger.Tagger`).

    ``dataset`` should squash-resize to ``tagger.plan.input_size`` (as :func:`unlabelled_dataset` and
    ``adds calibrate`` do); its targets' columns must be ``labels``. Raises ``ValueError`` when no image loads.
    """
    from torch.utils.data import DataLoader
    from tqdm.auto import tqdm

    labels = list(labels)
    loader = DataLoader(dataset, batch_size=max(1, int(tagger.config.batch_size)), num_workers=num_workers,
                        collate_fn=collate_batch)
    scores, targets, masks, failed = [], [], [], []
    for batch in tqdm(loader, desc=description, disable=not progress, leave=False, dynamic_ncols=True):
        failed.extend(batch.get("failed", []))
        if batch["image"] is None:
            continue
        prepared = [tagger.prepare(image) for image in batch["image"]]  # already at the plan's size: no resize
        scores.append(tagger.score_prepared(prepared, labels))  # (b, k)
        targets.append(batch["target"].float())
        masks.append(batch["mask"].bool())
    if failed:
        logger.warning("%d image(s) of %s could not be loaded and were skipped, e.g. %s", len(failed), dataset.name,
                       ", ".join(path for path, _ in failed[:3]))
    if not scores:
        raise ValueError(f"no image of {dataset.name} could be scored ({len(failed)} failed to load)")
    return Scored(torch.cat(scores), torch.cat(targets), torch.cat(masks), failed)
