"""``adds train`` fits the open-vocabulary mode of its head (``best/open_vocab.json``, :mod:`adds.openvocab`).

Not in the ADDS paper (issue 9.6). Words a head never trained on get ``head + CLIP prior``, mixed with a weight and
a Platt scaling that must be chosen on labels whose head scores are as untrusted as a new word's. ``adds train``
makes such labels with a **fold head**, trained after the main run with the same recipe while a random part of the
training labels (``open_vocab.holdout``) is hidden:

1. pick ``round(holdout * C)`` of the ``C`` training labels (seeded by ``open_vocab.seed``);
2. train the fold head on the same images with those labels masked as *unknown* (no loss on them, never a
   positive for Selective Language Supervision), in ``RUN/open-vocab-fold/``;
3. score the run's held-out validation split with the fold's *last* weights (EMA when the run keeps an EMA; its
   ``best/`` is not used, since its selection saw the hidden labels) and all ``C`` labels in one call, as at
   tagging time, plus the training-free prior (:func:`adds.openvocab.prior_cosine`);
4. :func:`adds.openvocab.fit_and_save` into ``RUN/best/open_vocab.json``: the main head's vocabulary (all ``C``
   labels keep the main head's score) and the combiner for every other word.

The hidden labels still enter the fold head's decoder as queries (masked, unsupervised), as new words do at tagging
time. It costs a second training run, so it is off by default (``holdout: 0``) and the paper configs keep the
paper's model. Needs a validation split.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch.utils.data import Dataset

from adds.model import ADDS

if TYPE_CHECKING:
    from adds.train.config import TrainConfig
    from adds.train.distributed import DistributedContext
    from adds.train.loop import TrainResult
    from adds.train.run import PreparedSplit

__all__ = ["FOLD_DIR", "HiddenLabels", "hidden_labels", "fit_open_vocabulary"]

logger = logging.getLogger(__name__)

#: The fold run's directory inside the main run directory.
FOLD_DIR = "open-vocab-fold"


def hidden_labels(num_labels: int, holdout: float, seed: int) -> list[int]:
    """The (sorted) label columns the fold head is trained without: ``round(holdout * C)``, at least 1, fewer than C."""
    count = min(num_labels - 1, max(1, round(holdout * num_labels)))
    if count < 1:
        raise ValueError(f"open_vocab.holdout needs at least 2 training labels, got {num_labels}")
    order = torch.randperm(num_labels, generator=torch.Generator().manual_seed(seed))
    return sorted(order[:count].tolist())


class HiddenLabels(Dataset):
    """A training split whose items mark ``columns`` as unknown (``mask`` False, ``target`` 0): no loss, no positive."""

    def __init__(self, data: Dataset, columns: list[int]) -> None:
        self.data = data
        self.columns = torch.as_tensor(columns, dtype=torch.long)

    def __len__(self) -> int:
        return len(self.data)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> dict:
        item = dict(self.data[index])
        if item.get("target") is not None:
            item["target"] = item["target"].clone()
            item["target"][self.columns] = 0.0  # (C,)
            item["mask"] = item["mask"].clone()
            item["mask"][self.columns] = False  # (C,)
        return item


def fit_open_vocabulary(config: TrainConfig, model: ADDS, train: PreparedSplit, val: PreparedSplit,
                        vocabulary: list[str], embeddings: torch.Tensor, input_size: int,
                        context: DistributedContext, resume: bool) -> TrainResult:
    """Train the fold head and write ``best/open_vocab.json`` (every process calls it; the main one writes).

    Returns the fold run's :class:`~adds.train.loop.TrainResult`; when it is not ``finished`` (interrupted), no
    file is written and resuming the run finishes it.
    """
    from adds.openvocab import fit_and_save, prior_cosine
    from adds.train.loop import Trainer
    from adds.train.run import held_out_scores

    run_dir = config.resolved_run_dir
    if list(val.dataset.vocabulary) != list(vocabulary):
        raise ValueError("open_vocab.holdout needs a validation split with the training labels "
                         "(data.val_fraction, or data.val with the same vocabulary)")
    hidden = hidden_labels(len(vocabulary), config.open_vocab.holdout, config.open_vocab.seed)
    fold_dir = run_dir / FOLD_DIR
    fold_config = replace(config, run_dir=str(fold_dir), calibrate=False,
                          open_vocab=replace(config.open_vocab, holdout=0.0))
    if context.is_main:
        logger.info("open vocabulary: training the fold head without %d of %d labels in %s", len(hidden),
                    len(vocabulary), fold_dir)
    torch.manual_seed(config.seed + 1 + context.rank)
    fold = ADDS(config.model, towers=model.towers).to(context.device)
    trainer = Trainer(fold_config, fold, HiddenLabels(train.data, hidden), vocabulary, val.data, vocabulary,
                      label_embeddings=embeddings, input_size=input_size, context=context,
                      crop_levels=train.crop_levels)
    result = trainer.fit(resume=resume and (fold_dir / "checkpoint").is_dir())
    if not result.finished:
        return result
    source = fold_dir / ("last-ema" if (fold_dir / "last-ema").is_dir() else "last")
    head = ADDS.from_pretrained(source, towers=model.towers, map_location=context.device)
    per_crop, k = model.towers.tokens_per_image, len(vocabulary)

    def both(tokens: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        # one pass over the validation tokens: (B, 2k) = the fold head's logits, then the prior
        return torch.cat([head.forward_head(tokens, labels).float(), prior_cosine(tokens, labels, per_crop)], dim=1)

    scored = held_out_scores(head, val, embeddings, config, context, score_fn=both).predictions
    logits, prior = scored.scores["all"][:, :k], scored.scores["all"][:, k:]  # (N, k) each
    if context.is_main:
        new = torch.zeros(k, dtype=torch.bool)
        new[hidden] = True
        record = fit_and_save(run_dir / "best", vocabulary, logits, prior, scored.targets, new,
                              info={"fold_head": str(Path(FOLD_DIR) / source.name),
                                    "hidden_labels": [vocabulary[i] for i in hidden]})
        logger.info("open vocabulary -> %s: prior weight %.2f; on the %d hidden labels mAP %.2f (fold head %.2f, "
                    "CLIP prior %.2f)", run_dir / "best" / "open_vocab.json", record.combiner.prior_weight,
                    len(hidden), record.info["fit_mAP"], record.info["fit_head_mAP"], record.info["fit_prior_mAP"])
    return result
