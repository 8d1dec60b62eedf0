"""Exact F1-optimal decision thresholds: one per label, and one pooled over every label (the fallback).

A label is predicted when ``score >= threshold`` (the tagger's rule, :mod:`adds.tagger.thresholds`). For one
label with ``P`` known positives, predicting the ``n`` highest-scored known images gives ``tp`` true positives and
``F1 = 2 tp / (n + P)``. Only cuts *between distinct scores* can be realised by a threshold (tied images are
predicted together), so :func:`best_f1_threshold` sorts the scores once, evaluates F1 at the end of every group of
tied scores, and returns the best cut's threshold: the midpoint between the last predicted score and the next
lower one (a margin on both sides, so new images just below the kept ones are not flipped by rounding). When
several cuts reach the same F1 the highest threshold (fewest predictions) wins. The threshold is chosen so that it
reproduces the cut exactly when compared in float32 (the tagger's dtype) and is clipped to ``[0, 1]``.

Labels with fewer than ``min_positives`` known positives get the *pooled* threshold instead: the one cut that
maximises F1 over every (image, label) entry together (micro-F1, the paper's OF1), fitted the same exact way.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = [
    "FitConfig",
    "LabelFit",
    "ThresholdFit",
    "as_matrices",
    "best_f1_threshold",
    "f1_at",
    "fit_thresholds",
    "per_label_f1",
]

#: ``LabelFit.method`` of a label calibrated on its own positives.
PER_LABEL = "f1-optimal"
#: ``LabelFit.method`` of a label with too few positives: it gets the pooled threshold.
POOLED = "pooled-fallback"


@dataclass(frozen=True)
class FitConfig:
    """How thresholds are fitted.

    Attributes:
        min_positives: labels with fewer known positives than this get the pooled threshold (at least 1).
        reference_threshold: the threshold the "before" F1 is measured at (the paper's 0.5).
    """

    min_positives: int = 3
    reference_threshold: float = 0.5

    def __post_init__(self) -> None:
        if isinstance(self.min_positives, bool) or not isinstance(self.min_positives, int) or self.min_positives < 1:
            raise ValueError(f"min_positives must be an integer >= 1, got {self.min_positives!r}")
        if not 0.0 <= float(self.reference_threshold) <= 1.0:
            raise ValueError(f"reference_threshold must lie in [0, 1], got {self.reference_threshold!r}")


@dataclass(frozen=True)
class LabelFit:
    """One label's calibration: its threshold, how it was chosen, and F1 on the calibration split."""

    label: str
    threshold: float
    method: str
    positives: int
    known: int
    f1_before: float
    f1_after: float


@dataclass(frozen=True)
class ThresholdFit:
    """Per-label thresholds fitted on a labelled split (:func:`fit_thresholds`)."""

    labels: list[LabelFit]
    pooled_threshold: float
    config: FitConfig = field(default_factory=FitConfig)

    @property
    def thresholds(self) -> dict[str, float]:
        """label -> threshold, in label order."""
        return {fit.label: fit.threshold for fit in self.labels}

    def summary(self) -> dict[str, Any]:
        """Macro-F1 before/after and label counts per method (for ``calibration.json`` and the command)."""
        count = max(1, len(self.labels))
        return {
            "labels": len(self.labels),
            "per_label": sum(fit.method == PER_LABEL for fit in self.labels),
            "pooled_fallback": sum(fit.method == POOLED for fit in self.labels),
            "macro_f1_before": sum(fit.f1_before for fit in self.labels) / count,
            "macro_f1_after": sum(fit.f1_after for fit in self.labels) / count,
        }


def as_matrices(scores: Any, targets: Any, mask: Any | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(N, C)`` scores (float64), positives (bool) and known-mask (bool) as numpy, with shape checks."""

    def array(x: Any) -> np.ndarray:
        if hasattr(x, "detach"):
            x = x.detach().cpu().float().numpy()
        return np.asarray(x)

    s = array(scores).astype(np.float64)
    t = array(targets)
    if s.ndim != 2 or t.shape != s.shape:
        raise ValueError(f"scores and targets must both be (N images, C labels), got {s.shape} and {t.shape}")
    if np.isnan(s).any():
        raise ValueError("scores contain NaN")
    known = np.ones(s.shape, dtype=bool) if mask is None else array(mask).astype(bool)
    if known.shape != s.shape:
        raise ValueError(f"mask must have the scores' shape {s.shape}, got {known.shape}")
    return s, t > 0.5, known


def _threshold_between(upper: float, lower: float | None) -> float:
    """A threshold ``t`` with ``lower < t <= upper`` in float32 (``lower=None``: nothing below), clipped to [0, 1]."""
    top = np.float32(upper)
    if lower is None:
        return float(np.clip(top, 0.0, 1.0))
    bottom = np.float32(lower)
    middle = np.float32((float(top) + float(bottom)) / 2)
    chosen = middle if bottom < middle <= top else top
    return float(np.clip(chosen, 0.0, 1.0))


def best_f1_threshold(scores: Any, positives: Any) -> tuple[float, float]:
    """The exact F1-optimal threshold of one label -> ``(threshold, F1 at it)``.

    ``scores`` (n,) and ``positives`` (n,) bool over the known images of the label. Every cut between distinct
    scores is evaluated (ties are predicted together). Without positives F1 is 0 at any threshold, and the
    threshold returned predicts nothing (above the highest score, at most 1).
    """
    s = np.asarray(scores, dtype=np.float32).astype(np.float64).ravel()  # the tagger compares in float32
    y = np.asarray(positives, dtype=bool).ravel()
    total = int(y.sum())
    if s.size == 0 or total == 0:
        top = float(s.max()) if s.size else 0.0
        return float(min(1.0, np.nextafter(np.float32(top), np.float32(np.inf)))), 0.0
    order = np.argsort(-s, kind="stable")
    s, y = s[order], y[order]
    ends = np.flatnonzero(np.append(s[1:] != s[:-1], True))  # last index of every group of tied scores
    tp = np.cumsum(y)[ends]  # (groups,)
    predicted = ends + 1
    f1 = 2.0 * tp / (predicted + total)
    best = int(np.argmax(f1))  # first maximum = highest threshold
    lower = float(s[ends[best] + 1]) if ends[best] + 1 < s.size else None
    return _threshold_between(float(s[ends[best]]), lower), float(f1[best])


def f1_at(scores: Any, positives: Any, threshold: float) -> float:
    """F1 of one label at ``score >= threshold`` (0 when there is no positive and no prediction)."""
    s = np.asarray(scores, dtype=np.float32).ravel()
    y = np.asarray(positives, dtype=bool).ravel()
    predicted = s >= np.float32(threshold)
    tp = int((predicted & y).sum())
    denominator = int(predicted.sum()) + int(y.sum())
    return 2.0 * tp / denominator if denominator else 0.0


def per_label_f1(scores: Any, targets: Any, thresholds: Any, mask: Any | None = None) -> np.ndarray:
    """F1 of every label at its threshold -> ``(C,)``; ``thresholds`` a scalar or ``(C,)``. Unknown entries are
    neither predictions nor misses; a label with no positive and no prediction has F1 0."""
    s, pos, known = as_matrices(scores, targets, mask)
    thr = np.broadcast_to(np.asarray(thresholds, dtype=np.float32), (s.shape[1],))
    predicted = (s.astype(np.float32) >= thr) & known  # (N, C)
    tp = (predicted & pos).sum(axis=0)
    denominator = predicted.sum(axis=0) + (pos & known).sum(axis=0)
    return np.divide(2.0 * tp, denominator, out=np.zeros(s.shape[1]), where=denominator > 0)


def fit_thresholds(
    scores: Any, targets: Any, label_names: Sequence[str], mask: Any | None = None, config: FitConfig | None = None,
) -> ThresholdFit:
    """Exact F1-optimal per-label thresholds on a labelled split, with the pooled threshold for rare labels.

    Args:
        scores: ``(N, C)`` scores in the tagger's scale (the ADDS head's sigmoid), numpy or torch.
        targets: ``(N, C)`` 0/1 ground truth; ``mask``: optional ``(N, C)`` known-mask (unknown entries ignored).
        label_names: the ``C`` labels.
        config: ``min_positives`` and the reference threshold of the "before" F1.
    """
    config = config or FitConfig()
    s, pos, known = as_matrices(scores, targets, mask)
    names = [str(name) for name in label_names]
    if len(names) != s.shape[1]:
        raise ValueError(f"{len(names)} label names for {s.shape[1]} score columns")
    if len(set(names)) != len(names):
        raise ValueError("label names must be unique")
    pooled, _ = best_f1_threshold(s[known], pos[known])
    fits = []
    for column, name in enumerate(names):
        keep = known[:, column]
        values, positives = s[keep, column], pos[keep, column]
        count = int(positives.sum())
        if count >= config.min_positives:
            threshold, after = best_f1_threshold(values, positives)
            method = PER_LABEL
        else:
            threshold, method = pooled, POOLED
            after = f1_at(values, positives, threshold)
        fits.append(LabelFit(label=name, threshold=threshold, method=method, positives=count, known=int(keep.sum()),
                             f1_before=f1_at(values, positives, config.reference_threshold), f1_after=after))
    return ThresholdFit(labels=fits, pooled_threshold=pooled, config=config)
