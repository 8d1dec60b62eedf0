"""Label-free thresholds for words without labels: a rule fitted on *other* labels of the same model.

Open-vocabulary words (and every word of the training-free CLIP baseline) come without labelled images, so
their F1-optimal threshold cannot be fitted. What can be measured without labels is the word's *score
distribution* over unlabelled images. A :class:`TransferRule` maps that distribution to a threshold with one
parameter, fitted on labels that do have labelled images (the labelled split's vocabulary) to maximise their
mean per-label F1, and then applied to the new words:

=============  ===========================================================================================
``zscore``     ``t = sigmoid(mean + z * std)`` of the label's logit scores (``logit(s)``); raw scores when
               they are not in (0, 1) (e.g. cosines). One ``z`` for every label.
``quantile``   ``t = quantile_q`` of the label's scores: every label is assumed equally frequent.
``global``     one threshold for every label, fitted for mean per-label F1 (ignores the distribution).
=============  ===========================================================================================

How well each rule transfers from seen to unseen labels is measured on the toy world by
``benchmarks/calibration_transfer.py`` (``docs/calibration.md``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from adds.calibration.fit import as_matrices, per_label_f1

__all__ = ["RULES", "TransferRule", "fit_transfer_rule"]

RULES = ("zscore", "quantile", "global")
_EPS = 1e-6


def _grid(kind: str, scores: np.ndarray) -> np.ndarray:
    if kind == "zscore":
        return np.linspace(-1.0, 8.0, 181)
    if kind == "quantile":
        return 1.0 - np.geomspace(1e-3, 0.5, 160)
    return np.unique(np.quantile(scores, np.linspace(0.0, 1.0, 801)))


@dataclass(frozen=True)
class TransferRule:
    """A rule from a label's unlabelled score distribution to its threshold (module docstring).

    Attributes:
        kind: ``"zscore"``, ``"quantile"`` or ``"global"``.
        parameter: ``z``, ``q`` or the threshold itself.
        space: ``"logit"`` (scores are probabilities) or ``"score"`` (``zscore`` on raw scores).
        fitted_f1: mean per-label F1 of the labels it was fitted on, on the labelled split (in-sample).
        fitted_labels: how many labels it was fitted on.
    """

    kind: str
    parameter: float
    space: str = "logit"
    fitted_f1: float = float("nan")
    fitted_labels: int = 0

    def __post_init__(self) -> None:
        if self.kind not in RULES:
            raise ValueError(f"transfer rule must be one of {RULES}, got {self.kind!r}")
        if self.space not in ("logit", "score"):
            raise ValueError(f"rule space must be 'logit' or 'score', got {self.space!r}")

    def thresholds(self, scores: Any) -> np.ndarray:
        """Thresholds of the ``k`` columns of ``scores`` ``(N, k)`` (unlabelled images) -> ``(k,)`` in [0, 1]."""
        return _rule_thresholds(self.kind, self.space, np.asarray(_numpy(scores), dtype=np.float64), self.parameter)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "parameter": self.parameter, "space": self.space, "fitted_f1": self.fitted_f1,
                "fitted_labels": self.fitted_labels}


def _numpy(x: Any) -> np.ndarray:
    return x.detach().cpu().float().numpy() if hasattr(x, "detach") else np.asarray(x)


def _rule_thresholds(kind: str, space: str, scores: np.ndarray, parameter: float) -> np.ndarray:
    if scores.ndim != 2 or scores.shape[0] == 0:
        raise ValueError(f"a transfer rule needs scores of shape (N images >= 1, k labels), got {scores.shape}")
    if kind == "global":
        return np.full(scores.shape[1], float(np.clip(parameter, 0.0, 1.0)))
    if kind == "quantile":
        return np.clip(np.quantile(scores, parameter, axis=0), 0.0, 1.0)
    if space == "logit":
        p = np.clip(scores, _EPS, 1.0 - _EPS)
        logits = np.log(p) - np.log1p(-p)  # (N, k)
        cut = logits.mean(axis=0) + parameter * logits.std(axis=0)
        return 1.0 / (1.0 + np.exp(-cut))
    return np.clip(scores.mean(axis=0) + parameter * scores.std(axis=0), 0.0, 1.0)


def fit_transfer_rule(
    scores: Any, targets: Any, mask: Any | None = None, kind: str = "zscore", min_positives: int = 3,
    unlabelled_scores: Any | None = None,
) -> TransferRule:
    """Fit a rule's parameter on labelled labels: maximise their mean per-label F1 over a grid.

    Args:
        scores: ``(N, C)`` scores of the labelled split; ``targets``/``mask``: its ground truth and known-mask.
        kind: one of :data:`RULES`.
        min_positives: only labels with at least this many known positives are fitted on.
        unlabelled_scores: ``(M, C)`` scores of the same labels on other (unlabelled) images to take the score
            distributions from, as the rule will for new words; default: the labelled split's own scores.
    """
    if kind not in RULES:
        raise ValueError(f"transfer rule must be one of {RULES}, got {kind!r}")
    s, pos, known = as_matrices(scores, targets, mask)
    usable = (pos & known).sum(axis=0) >= min_positives  # (C,)
    if not usable.any():
        raise ValueError(f"no label has {min_positives} or more positives to fit a label-free rule on")
    s, pos, known = s[:, usable], pos[:, usable], known[:, usable]
    stats = s if unlabelled_scores is None else np.asarray(_numpy(unlabelled_scores), dtype=np.float64)[:, usable]
    space = "logit" if (stats.min() >= 0.0 and stats.max() <= 1.0) else "score"
    best_value, best_f1 = 0.0, -1.0
    for value in _grid(kind, stats[known] if unlabelled_scores is None else stats.ravel()):
        thresholds = _rule_thresholds(kind, space, stats, float(value))
        f1 = float(per_label_f1(s, pos, thresholds, known).mean())
        if f1 > best_f1:
            best_value, best_f1 = float(value), f1
    return TransferRule(kind=kind, parameter=best_value, space=space, fitted_f1=best_f1,
                        fitted_labels=int(usable.sum()))
