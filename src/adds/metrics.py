"""Multi-label evaluation metrics: per-label AP / mAP, top-k P/R/F1 and threshold P/R/F1.

The conventions follow the published evaluation code that the paper compares against (see
``docs/protocols.md``):

* **mAP** (all benchmarks) -- non-interpolated average precision per label, averaged over labels::

      AP_c = (1 / N_c+) * sum_r y_(r) * (sum_{j<=r} y_(j)) / r

  with the N images sorted by the label's score, descending. A label without any (known) positive
  gets AP 0 and still counts in the mean (the LESA / BiAM / MKT / ML-Decoder convention);
  ``skip_labels_without_positives=True`` drops such labels from the mean instead.
* **Top-k precision / recall / F1** (NUS-WIDE zero-shot and GZSL, LESA / BiAM / MKT, k = 3 and 5) --
  one micro average over the whole set; images without any positive are kept and each adds k false
  positives.
* **Threshold metrics** CP, CR, CF1, OP, OR, OF1 (MS-COCO, ASL / ML-Decoder, following ML-GCN) --
  per-class precision and recall averaged over classes, and overall precision and recall over all
  predictions.

Ties. ``ties="group"`` treats equal scores as one group: every positive in a tie group gets the
precision at the *end* of its group, which is exactly the step-function AP of
``sklearn.metrics.average_precision_score``. ``ties="ordinal"`` breaks ties by a stable sort, i.e. by
the original image index (the order-based convention of the BiAM / MKT ``argsort`` code). Both agree
whenever a label has no tied scores. Top-k selection always breaks ties by the lower label index.

Ranking invariance. AP depends only on each label's ranking across images, so any strictly
increasing elementwise transform of the scores (sigmoid, a per-label affine map with positive scale,
...) leaves mAP unchanged; a softmax over labels does not, because it rescales each image's row
differently.

Unknown ground truth. All functions take an optional ``mask`` (N x C, True = known). Unknown entries
(BiAM / MKT mark some NUS-WIDE ground truth as unknown) are excluded entirely: they are neither
positives nor negatives, do not occupy a rank in AP, are never top-k candidates while a known label
is left, and are neither predictions nor misses for the threshold metrics. Scores and targets are
only validated at known entries, so unknown entries may hold NaN scores or placeholder targets
such as -1.

Inputs are numpy arrays or torch tensors of shape (N, C) -- N images, C labels; targets are 0/1
(bool, int or float). Everything is vectorised over labels and images. Peak memory is a small
multiple of ``8 * N * C`` bytes; for very large sets, AP can be computed on blocks of label columns
since labels are independent.
"""

from __future__ import annotations

import operator
from typing import Any

import numpy as np

__all__ = [
    "average_precision_per_label",
    "mean_average_precision",
    "threshold_metrics",
    "topk_precision_recall_f1",
]

_TIES = ("group", "ordinal")


def _to_numpy(x: Any, name: str) -> np.ndarray:
    if hasattr(x, "detach"):  # torch.Tensor, without importing torch
        x = x.detach().cpu()
        if x.is_floating_point():  # bfloat16 / float16 have no (or a lossy) numpy counterpart
            x = x.double()
        x = x.numpy()
    arr = np.asarray(x)
    if arr.dtype.kind not in "biuf":
        raise ValueError(f"{name} must be a numeric or boolean array, got dtype {arr.dtype}")
    return arr


def _prepare(scores: Any, targets: Any, mask: Any | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Validate inputs; return float64 scores, bool positives (known only) and bool known, all (N, C)."""
    s = _to_numpy(scores, "scores")
    t = _to_numpy(targets, "targets")
    if s.ndim != 2:
        raise ValueError(
            f"scores must be 2-D (N images x C labels), got shape {s.shape}; "
            "for a single label use scores.reshape(-1, 1)"
        )
    if t.shape != s.shape:
        raise ValueError(f"targets shape {t.shape} does not match scores shape {s.shape}")
    if s.shape[0] < 1 or s.shape[1] < 1:
        raise ValueError(f"need at least one image and one label, got scores shape {s.shape}")
    if mask is None:
        known = np.ones(s.shape, dtype=bool)
    else:
        m = _to_numpy(mask, "mask")
        if m.shape != s.shape:
            raise ValueError(f"mask shape {m.shape} does not match scores shape {s.shape}")
        if m.dtype != bool:
            bad = ~((m == 0) | (m == 1))
            if bad.any():
                idx = tuple(int(i) for i in np.argwhere(bad)[0])
                raise ValueError(f"mask must be boolean or 0/1, got value {m[idx]!r} at index {idx}")
        known = m.astype(bool)

    s = s.astype(np.float64)
    nan = np.isnan(s) & known
    if nan.any():
        idx = tuple(int(i) for i in np.argwhere(nan)[0])
        raise ValueError(f"scores contain NaN at {int(nan.sum())} known entries (first at index {idx})")

    if t.dtype == bool:
        pos = t & known
    else:
        bad = ~((t == 0) | (t == 1)) & known
        if bad.any():
            idx = tuple(int(i) for i in np.argwhere(bad)[0])
            raise ValueError(f"targets must be 0/1, got value {t[idx]!r} at index {idx}")
        pos = (t == 1) & known
    return s, pos, known


def _average_precision(s: np.ndarray, pos: np.ndarray, known: np.ndarray, ties: str) -> np.ndarray:
    n = s.shape[0]
    s = np.where(known, s, -np.inf)  # (N, C) unknown entries sort last and add nothing below
    order = np.argsort(-s, axis=0, kind="stable")  # (N, C) descending, ties in image-index order
    pos_sorted = np.take_along_axis(pos, order, axis=0)  # (N, C)
    tp = np.cumsum(pos_sorted, axis=0)  # (N, C) positives up to and including rank r
    rank = np.cumsum(np.take_along_axis(known, order, axis=0), axis=0)  # (N, C) known entries up to r
    if ties == "group":
        s_sorted = np.take_along_axis(s, order, axis=0)  # (N, C)
        is_last = np.ones(s.shape, dtype=bool)
        is_last[:-1] = s_sorted[:-1] != s_sorted[1:]  # last row of each tie group
        # end[r] = index of the last row of r's tie group = min of group-end indices at or after r
        end = np.where(is_last, np.arange(n)[:, None], n)  # (N, C)
        end = np.minimum.accumulate(end[::-1], axis=0)[::-1]
        tp = np.take_along_axis(tp, end, axis=0)
        rank = np.take_along_axis(rank, end, axis=0)
    precision = tp / np.maximum(rank, 1)  # (N, C); rank >= 1 wherever pos_sorted is True
    ap_sum = np.where(pos_sorted, precision, 0.0).sum(axis=0)  # (C,)
    n_pos = pos.sum(axis=0)  # (C,)
    return np.divide(ap_sum, n_pos, out=np.zeros(s.shape[1], dtype=np.float64), where=n_pos > 0)


def average_precision_per_label(scores: Any, targets: Any, mask: Any | None = None, ties: str = "group") -> np.ndarray:
    """Non-interpolated average precision of every label (column), ranking images by score.

    Args:
        scores: (N, C) scores, higher = more likely positive. Numpy array or torch tensor.
        targets: (N, C) ground truth in {0, 1} (bool, int or float).
        mask: optional (N, C) bool, True = known. Unknown entries are removed from the label's ranking:
            they are not positives and do not occupy a rank.
        ties: ``"group"`` (equal scores form one group, every positive in it gets the precision at the
            group's end; equals ``sklearn.metrics.average_precision_score``) or ``"ordinal"`` (ties
            broken by original image index, stable sort).

    Returns:
        (C,) float64 array of AP values in [0, 1]; a label without any known positive gets 0.0.
    """
    if ties not in _TIES:
        raise ValueError(f"ties must be one of {_TIES}, got {ties!r}")
    s, pos, known = _prepare(scores, targets, mask)
    return _average_precision(s, pos, known, ties)


def mean_average_precision(
    scores: Any,
    targets: Any,
    mask: Any | None = None,
    ties: str = "group",
    skip_labels_without_positives: bool = False,
) -> float:
    """Mean over labels of :func:`average_precision_per_label` (a fraction in [0, 1], not a percentage).

    By default a label without any known positive has AP 0 and still counts in the mean (LESA / BiAM /
    MKT / ML-Decoder). With ``skip_labels_without_positives=True`` such labels are left out of the mean;
    if no label has a positive the result is ``float("nan")``.
    """
    if ties not in _TIES:
        raise ValueError(f"ties must be one of {_TIES}, got {ties!r}")
    s, pos, known = _prepare(scores, targets, mask)
    ap = _average_precision(s, pos, known, ties)  # (C,)
    if skip_labels_without_positives:
        ap = ap[pos.any(axis=0)]
        if ap.size == 0:
            return float("nan")
    return float(ap.mean())


def topk_precision_recall_f1(scores: Any, targets: Any, k: int, mask: Any | None = None) -> tuple[float, float, float]:
    """Micro-averaged precision, recall and F1 of each image's k top-scoring labels (NUS-WIDE protocol).

    ``TP = sum_i |topk_i & positives_i|``, ``P = TP / (N * k)``, ``R = TP / sum_i |positives_i|``,
    ``F1 = 2 P R / (P + R)``. Images without any positive are kept (each adds k false positives).
    Equal scores are broken by the lower label index first. Unknown entries (mask False) are not
    positives and rank below every known label (as if scored -inf); a top-k slot can only fall on an
    unknown entry when an image has fewer than k known labels, and then it counts as a miss.
    R is 0 when there are no positives at all, and F1 is 0 when P + R = 0.

    Returns:
        ``(precision, recall, f1)`` as floats in [0, 1].
    """
    if isinstance(k, bool):
        raise ValueError(f"k must be a positive integer, got {k!r}")
    try:
        k = operator.index(k)
    except TypeError:
        raise ValueError(f"k must be a positive integer, got {k!r}") from None
    s, pos, known = _prepare(scores, targets, mask)
    n, c = s.shape
    if k < 1:
        raise ValueError(f"k must be >= 1, got k={k}")
    if k > c:
        raise ValueError(f"k={k} is larger than the number of labels C={c}")
    if mask is None:
        order = np.argsort(-s, axis=1, kind="stable")  # (N, C) descending, ties by label index
    else:
        # primary key: score descending (unknown -> -inf); then known before unknown; lexsort is stable
        order = np.lexsort((~known, -np.where(known, s, -np.inf)), axis=1)  # (N, C)
    top = order[:, :k]  # (N, k)
    tp = int(np.take_along_axis(pos, top, axis=1).sum())
    n_pos = int(pos.sum())
    precision = tp / (n * k)
    recall = tp / n_pos if n_pos > 0 else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return float(precision), float(recall), float(f1)


def threshold_metrics(scores: Any, targets: Any, threshold: Any = 0.5, mask: Any | None = None) -> dict[str, float]:
    """Per-class and overall precision / recall / F1 at a score threshold (MS-COCO protocol).

    A label is predicted when ``score >= threshold``; ``threshold`` is a scalar or a (C,) array of
    per-label thresholds. With per-class ``P_c = TP_c / (TP_c + FP_c)`` and ``R_c = TP_c / (TP_c + FN_c)``:

    * ``CP``, ``CR``: mean over all C classes of ``P_c`` and ``R_c``. A class never predicted has
      ``P_c = 0`` and a class without positives has ``R_c = 0`` (0/0 counted as 0; both lower the mean).
    * ``CF1 = 2 CP CR / (CP + CR)``: the F1 of the averaged precision and recall (ML-GCN / ASL
      convention), *not* the mean of per-class F1.
    * ``OP = sum TP / sum (TP + FP)``, ``OR = sum TP / sum (TP + FN)``, ``OF1 = 2 OP OR / (OP + OR)``.

    Every 0/0 is counted as 0. Unknown entries (mask False) are neither predictions nor misses.

    Returns:
        dict with float values in [0, 1] under the keys ``"CP", "CR", "CF1", "OP", "OR", "OF1"``.
    """
    s, pos, known = _prepare(scores, targets, mask)
    thr = _to_numpy(threshold, "threshold").astype(np.float64)
    if thr.ndim > 1 or (thr.ndim == 1 and thr.shape[0] != s.shape[1]):
        raise ValueError(f"threshold must be a scalar or have shape ({s.shape[1]},), got shape {thr.shape}")
    if np.isnan(thr).any():
        raise ValueError(f"threshold must not be NaN, got {threshold!r}")
    pred = (s >= thr) & known  # (N, C)
    tp = (pred & pos).sum(axis=0)  # (C,)
    fp = (pred & ~pos).sum(axis=0)  # (C,)
    fn = (~pred & pos).sum(axis=0)  # (C,)

    def ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
        return np.divide(num, den, out=np.zeros(np.shape(num), dtype=np.float64), where=den > 0)

    def f1(p: float, r: float) -> float:
        return 2 * p * r / (p + r) if p + r > 0 else 0.0

    cp = float(ratio(tp, tp + fp).mean())
    cr = float(ratio(tp, tp + fn).mean())
    op = float(ratio(tp.sum(), tp.sum() + fp.sum()))
    or_ = float(ratio(tp.sum(), tp.sum() + fn.sum()))
    return {"CP": cp, "CR": cr, "CF1": f1(cp, cr), "OP": op, "OR": or_, "OF1": f1(op, or_)}
