"""Behaviour tests for adds.metrics (AP / mAP, top-k P/R/F1, threshold metrics)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score

from adds.metrics import (
    average_precision_per_label,
    mean_average_precision,
    threshold_metrics,
    topk_precision_recall_f1,
)


def _reference_ap(scores: np.ndarray, targets: np.ndarray, ties: str) -> float:
    """Slow, literal AP of one column, straight from the formula in docs/protocols.md."""
    n = len(scores)
    order = sorted(range(n), key=lambda i: (-scores[i], i))
    n_pos = int(sum(targets))
    if n_pos == 0:
        return 0.0
    total = 0.0
    for r, i in enumerate(order, start=1):
        if not targets[i]:
            continue
        if ties == "group":  # precision at the last rank holding the same score
            r = max(rr for rr, j in enumerate(order, start=1) if scores[j] == scores[i])
        total += sum(targets[j] for j in order[:r]) / r
    return total / n_pos


def _random_case(seed: int, n: int = 60, c: int = 40, decimals: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    scores = rng.normal(size=(n, c))
    if decimals is not None:
        scores = np.round(scores, decimals)
    targets = (rng.random((n, c)) < 0.2).astype(int)
    targets[rng.integers(0, n, size=c), np.arange(c)] = 1  # every label has a positive (sklearn needs one)
    return scores, targets


# ---------------------------------------------------------------- average precision, hand cases


def test_ap_hand_case_positives_at_ranks_1_and_3() -> None:
    scores = np.array([[0.9], [0.8], [0.7], [0.6], [0.5]])
    targets = np.array([[1], [0], [1], [0], [0]])
    # positives at ranks 1 and 3: precision@1 = 1/1, precision@3 = 2/3 -> AP = (1 + 2/3) / 2 = 5/6
    ap = average_precision_per_label(scores, targets)
    assert ap.shape == (1,) and ap.dtype == np.float64
    assert ap[0] == pytest.approx(5 / 6)


def test_ap_hand_case_unsorted_input_and_several_labels() -> None:
    # label 0: scores rank images 3,1,0,2 -> targets in rank order 1,0,0,1 -> AP = (1/1 + 2/4) / 2 = 3/4
    # label 1: perfect ranking of its two positives                       -> AP = (1/1 + 2/2) / 2 = 1
    scores = np.array([[0.3, 0.9], [0.6, 0.8], [0.1, 0.1], [0.7, 0.2]])
    targets = np.array([[0, 1], [0, 1], [1, 0], [1, 0]])
    np.testing.assert_allclose(average_precision_per_label(scores, targets), [3 / 4, 1.0])
    assert mean_average_precision(scores, targets) == pytest.approx((3 / 4 + 1) / 2)


def test_ap_ties_group_vs_ordinal_hand_case() -> None:
    # scores 0.9, 0.5, 0.5, 0.1 ; images 1 and 2 tie at 0.5.
    # targets 0,1,0,1:
    #   ordinal (image-index order): positives at ranks 2 and 4 -> AP = (1/2 + 2/4) / 2 = 1/2
    #   group: image 1 gets the precision at the end of its tie group (rank 3, 1 positive so far) = 1/3,
    #          image 3 at rank 4 gets 2/4 -> AP = (1/3 + 1/2) / 2 = 5/12
    scores = np.array([[0.9], [0.5], [0.5], [0.1]])
    targets = np.array([[0], [1], [0], [1]])
    assert average_precision_per_label(scores, targets, ties="ordinal")[0] == pytest.approx(1 / 2)
    assert average_precision_per_label(scores, targets, ties="group")[0] == pytest.approx(5 / 12)
    assert average_precision_score(targets[:, 0], scores[:, 0]) == pytest.approx(5 / 12)
    # swapping the tied images changes ordinal (positive now at rank 3: (1/3 + 2/4) / 2 = 5/12), not group
    swapped = np.array([[0], [0], [1], [1]])
    assert average_precision_per_label(scores, swapped, ties="ordinal")[0] == pytest.approx(5 / 12)
    assert average_precision_per_label(scores, swapped, ties="group")[0] == pytest.approx(5 / 12)


def test_ap_all_scores_tied() -> None:
    # one tie group of 4 with 2 positives: every positive gets precision 2/4 -> AP = 1/2 (= positive rate)
    scores = np.zeros((4, 1))
    targets = np.array([[1], [1], [0], [0]])
    assert average_precision_per_label(scores, targets)[0] == pytest.approx(0.5)
    # ordinal: positives are images 0 and 1, ranked first -> AP 1
    assert average_precision_per_label(scores, targets, ties="ordinal")[0] == pytest.approx(1.0)


def test_ap_single_image() -> None:
    # N = 1: a label whose only image is positive has AP 1, the others have no positive -> 0
    ap = average_precision_per_label(np.array([[0.2, 0.5, 0.9]]), np.array([[1, 0, 0]]))
    np.testing.assert_allclose(ap, [1.0, 0.0, 0.0])


# ---------------------------------------------------------------- average precision vs references


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
def test_ap_matches_sklearn_without_ties(seed: int) -> None:
    scores, targets = _random_case(seed, n=80, c=50)
    expected = [average_precision_score(targets[:, c], scores[:, c]) for c in range(scores.shape[1])]
    for ties in ("group", "ordinal"):  # identical when there are no ties
        np.testing.assert_allclose(average_precision_per_label(scores, targets, ties=ties), expected, atol=1e-12)
    assert mean_average_precision(scores, targets) == pytest.approx(float(np.mean(expected)))


@pytest.mark.parametrize("seed", [10, 11, 12])
def test_ap_group_matches_sklearn_with_ties(seed: int) -> None:
    scores, targets = _random_case(seed, n=100, c=30, decimals=1)  # many ties
    expected = [average_precision_score(targets[:, c], scores[:, c]) for c in range(scores.shape[1])]
    np.testing.assert_allclose(average_precision_per_label(scores, targets, ties="group"), expected, atol=1e-12)
    # ordinal is a different convention: it must differ from sklearn somewhere on this tie-heavy data
    ordinal = average_precision_per_label(scores, targets, ties="ordinal")
    assert not np.allclose(ordinal, expected)


@pytest.mark.parametrize("ties", ["group", "ordinal"])
def test_ap_matches_literal_formula_with_ties(ties: str) -> None:
    scores, targets = _random_case(20, n=25, c=12, decimals=0)
    expected = [_reference_ap(scores[:, c], targets[:, c], ties) for c in range(scores.shape[1])]
    np.testing.assert_allclose(average_precision_per_label(scores, targets, ties=ties), expected, atol=1e-12)


# ---------------------------------------------------------------- labels without positives


def test_all_negative_label_gets_zero_and_counts_in_map() -> None:
    scores, targets = _random_case(5, n=50, c=9)
    ap = average_precision_per_label(scores, targets)
    map_9 = mean_average_precision(scores, targets)

    neg_scores = np.concatenate([scores, np.random.default_rng(0).normal(size=(50, 1))], axis=1)
    neg_targets = np.concatenate([targets, np.zeros((50, 1), dtype=int)], axis=1)
    ap_10 = average_precision_per_label(neg_scores, neg_targets)
    assert ap_10[-1] == 0.0
    np.testing.assert_allclose(ap_10[:-1], ap)
    # the extra label adds 0 to the sum and 1 to C: mAP shrinks by the factor 9/10
    assert mean_average_precision(neg_scores, neg_targets) == pytest.approx(map_9 * 9 / 10)
    # skipping labels without positives recovers the 9-label mAP
    assert mean_average_precision(neg_scores, neg_targets, skip_labels_without_positives=True) == pytest.approx(map_9)


def test_skip_with_no_positive_anywhere_is_nan() -> None:
    scores = np.random.default_rng(0).random((5, 3))
    targets = np.zeros((5, 3))
    assert mean_average_precision(scores, targets) == 0.0
    assert math.isnan(mean_average_precision(scores, targets, skip_labels_without_positives=True))


# ---------------------------------------------------------------- unknown entries (mask)


def test_mask_hand_case() -> None:
    # image 1 (score 0.8, positive) is unknown -> ranking 0.9(neg), 0.7(pos), 0.6(neg): AP = 1/2.
    # Without the mask, positives at ranks 2 and 3: AP = (1/2 + 2/3) / 2 = 7/12.
    scores = np.array([[0.9], [0.8], [0.7], [0.6]])
    targets = np.array([[0], [1], [1], [0]])
    mask = np.array([[True], [False], [True], [True]])
    assert average_precision_per_label(scores, targets)[0] == pytest.approx(7 / 12)
    assert average_precision_per_label(scores, targets, mask=mask)[0] == pytest.approx(1 / 2)


@pytest.mark.parametrize("ties,decimals", [("group", None), ("group", 1), ("ordinal", 1)])
def test_mask_equals_deleting_the_image_from_that_label(ties: str, decimals: int | None) -> None:
    scores, targets = _random_case(30, n=70, c=20, decimals=decimals)
    rng = np.random.default_rng(31)
    mask = rng.random(scores.shape) > 0.25
    # unknown entries may hold anything: garbage scores / placeholder targets must not matter
    scores_garbage = np.where(mask, scores, np.nan)
    targets_garbage = np.where(mask, targets, -1)
    got = average_precision_per_label(scores_garbage, targets_garbage, mask=mask, ties=ties)
    for c in range(scores.shape[1]):
        keep = mask[:, c]
        reduced = average_precision_per_label(scores[keep, c : c + 1], targets[keep, c : c + 1], ties=ties)
        assert got[c] == pytest.approx(reduced[0], abs=1e-12)
        if ties == "group" and targets[keep, c].any():
            assert got[c] == pytest.approx(average_precision_score(targets[keep, c], scores[keep, c]), abs=1e-12)


def test_mask_all_true_changes_nothing_and_skip_uses_known_positives() -> None:
    scores, targets = _random_case(40, n=30, c=6)
    mask = np.ones_like(targets, dtype=bool)
    np.testing.assert_allclose(
        average_precision_per_label(scores, targets, mask=mask), average_precision_per_label(scores, targets)
    )
    # hiding every positive of label 0 makes it a label without (known) positives
    mask[:, 0] = targets[:, 0] == 0
    ap = average_precision_per_label(scores, targets, mask=mask)
    assert ap[0] == 0.0
    assert mean_average_precision(scores, targets, mask=mask, skip_labels_without_positives=True) == pytest.approx(
        float(ap[1:].mean())
    )


# ---------------------------------------------------------------- ranking invariance


def test_map_invariant_to_sigmoid_and_accepts_torch() -> None:
    rng = np.random.default_rng(7)
    logits = rng.normal(scale=2.0, size=(200, 30))
    targets = (rng.random((200, 30)) < 0.1).astype(np.float32)
    m_logits = mean_average_precision(logits, targets)
    m_sigmoid = mean_average_precision(torch.sigmoid(torch.from_numpy(logits)), torch.from_numpy(targets))
    assert m_sigmoid == pytest.approx(m_logits, abs=1e-12)


def test_softmax_over_labels_changes_map() -> None:
    # raw logits: image A = [2, 0], image B = [3, 3]; label 0 positive on A only, label 1 on B only.
    #   label 0 ranks B (3) above A (2) -> AP 1/2 ; label 1 ranks B above A -> AP 1 ; mAP 3/4
    # softmax rows: A = [0.88, 0.12], B = [0.5, 0.5] -> label 0 now ranks A first -> both AP 1 ; mAP 1
    logits = torch.tensor([[2.0, 0.0], [3.0, 3.0]])
    targets = torch.tensor([[1, 0], [0, 1]])
    assert mean_average_precision(logits, targets) == pytest.approx(3 / 4)
    assert mean_average_precision(logits.softmax(dim=1), targets) == pytest.approx(1.0)


def test_torch_inputs_with_grad_and_low_precision() -> None:
    scores, targets = _random_case(3, n=40, c=10)
    expected = average_precision_per_label(scores, targets)
    t_scores = torch.tensor(scores, requires_grad=True)
    np.testing.assert_allclose(average_precision_per_label(t_scores, torch.tensor(targets).bool()), expected)
    half = average_precision_per_label(torch.tensor(scores).bfloat16(), torch.tensor(targets))
    assert half.shape == (10,) and np.all((half >= 0) & (half <= 1))


# ---------------------------------------------------------------- top-k precision / recall / F1


def test_topk_hand_case() -> None:
    scores = np.array(
        [
            [0.9, 0.8, 0.1, 0.2],  # positives {0, 2}; top-2 = {0, 1}             -> 1 hit
            [0.7, 0.5, 0.5, 0.3],  # positives {2};    tie 1 vs 2 -> lower index 1 -> top-2 = {0, 1} -> 0 hits
            [0.4, 0.3, 0.2, 0.1],  # no positive: kept, 2 false positives        -> 0 hits
        ]
    )
    targets = np.array([[1, 0, 1, 0], [0, 0, 1, 0], [0, 0, 0, 0]])
    # TP = 1; P = 1 / (3 * 2) = 1/6; R = 1 / 3 positives = 1/3; F1 = 2 (1/6)(1/3) / (1/6 + 1/3) = 2/9
    p, r, f1 = topk_precision_recall_f1(scores, targets, k=2)
    assert (p, r, f1) == pytest.approx((1 / 6, 1 / 3, 2 / 9))
    # k = 3: img0 top-3 {0,1,3} -> 1 hit, img1 {0,1,2} -> 1 hit, img2 none -> TP = 2
    # P = 2/9, R = 2/3, F1 = 2 (2/9)(2/3) / (2/9 + 6/9) = (8/27) / (8/9) = 1/3
    assert topk_precision_recall_f1(scores, targets, k=3) == pytest.approx((2 / 9, 2 / 3, 1 / 3))


def test_topk_mask_excludes_unknown_candidates_and_positives() -> None:
    scores = np.array([[0.9, 0.8, 0.1], [0.2, 0.3, 0.9]])
    targets = np.array([[1, 1, 0], [0, 0, 1]])
    mask = np.array([[False, True, True], [True, True, False]])
    # img0: label 0 unknown -> top-1 = label 1 (positive) ; img1: label 2 unknown -> top-1 = label 1 (negative)
    # TP = 1, P = 1/2, known positives = {img0 label 1} -> R = 1, F1 = 2/3
    assert topk_precision_recall_f1(scores, targets, k=1, mask=mask) == pytest.approx((1 / 2, 1.0, 2 / 3))
    # an image with fewer than k known labels: the unknown slot can only count as a miss
    mask_few = np.array([[False, False, True], [True, True, True]])
    scores_inf = np.array([[0.9, 0.8, -np.inf], [0.2, 0.3, 0.9]])
    # img0 top-2 = {2 (known, -inf), then an unknown} -> 0 hits; img1 top-2 = {2, 1} -> 1 hit (label 2)
    p, r, _ = topk_precision_recall_f1(scores_inf, targets, k=2, mask=mask_few)
    assert (p, r) == pytest.approx((1 / 4, 1.0))


def test_topk_no_positives_anywhere() -> None:
    p, r, f1 = topk_precision_recall_f1(np.random.default_rng(0).random((4, 5)), np.zeros((4, 5)), k=3)
    assert (p, r, f1) == (0.0, 0.0, 0.0)


def test_topk_invalid_k() -> None:
    scores, targets = np.random.default_rng(0).random((3, 4)), np.zeros((3, 4))
    with pytest.raises(ValueError, match=r"k=5.*C=4"):
        topk_precision_recall_f1(scores, targets, k=5)
    with pytest.raises(ValueError, match="k"):
        topk_precision_recall_f1(scores, targets, k=0)
    with pytest.raises(ValueError, match="k"):
        topk_precision_recall_f1(scores, targets, k=1.5)  # type: ignore[arg-type]


# ---------------------------------------------------------------- threshold metrics


def test_threshold_metrics_hand_case() -> None:
    scores = np.array(
        [
            [0.9, 0.1, 0.5],
            [0.6, 0.2, 0.7],
            [0.4, 0.3, 0.8],
            [0.2, 0.4, 0.1],
        ]
    )
    targets = np.array(
        [
            [1, 0, 1],
            [0, 1, 1],
            [1, 0, 0],
            [0, 0, 0],
        ]
    )
    # class 0: predicted {0, 1} -> TP 1, FP 1, FN 1 -> P 1/2, R 1/2
    # class 1: never predicted  -> TP 0, FP 0, FN 1 -> P 0/0 -> 0, R 0
    # class 2: predicted {0, 1, 2} (0.5 >= 0.5) -> TP 2, FP 1, FN 0 -> P 2/3, R 1
    # CP = (1/2 + 0 + 2/3) / 3 = 7/18 ; CR = (1/2 + 0 + 1) / 3 = 1/2 ; CF1 = 2 (7/18)(1/2) / (16/18) = 7/16
    # OP = 3 / (3 + 2) = 3/5 ; OR = 3 / (3 + 2) = 3/5 ; OF1 = 3/5
    m = threshold_metrics(scores, targets)
    assert set(m) == {"CP", "CR", "CF1", "OP", "OR", "OF1"}
    expected = {"CP": 7 / 18, "CR": 1 / 2, "CF1": 7 / 16, "OP": 3 / 5, "OR": 3 / 5, "OF1": 3 / 5}
    for key, value in expected.items():
        assert m[key] == pytest.approx(value), key
    # CF1 is the F1 of (CP, CR), not the mean of per-class F1s ((1/2 + 0 + 4/5) / 3 = 13/30)
    assert m["CF1"] != pytest.approx(13 / 30)


def test_threshold_metrics_per_label_threshold_and_mask() -> None:
    scores = np.array([[0.9, 0.1], [0.6, 0.2], [0.4, 0.3]])
    targets = np.array([[1, 0], [0, 1], [1, 0]])
    # per-label thresholds 0.5 and 0.15: class 1 predicted on images 1, 2 -> TP 1, FP 1
    # class 0: predicted {0, 1} -> TP 1, FP 1, FN 1 ; mask hides image 1 of class 0 (a false positive)
    mask = np.array([[True, True], [False, True], [True, True]])
    m = threshold_metrics(scores, targets, threshold=np.array([0.5, 0.15]), mask=mask)
    # class 0 (known images 0, 2): TP 1, FP 0, FN 1 -> P 1, R 1/2 ; class 1: TP 1, FP 1, FN 0 -> P 1/2, R 1
    assert m["CP"] == pytest.approx(3 / 4)
    assert m["CR"] == pytest.approx(3 / 4)
    assert m["OP"] == pytest.approx(2 / 3)  # 2 TP / (2 TP + 1 FP)
    assert m["OR"] == pytest.approx(2 / 3)  # 2 TP / (2 TP + 1 FN)
    with pytest.raises(ValueError, match="threshold"):
        threshold_metrics(scores, targets, threshold=np.array([0.5, 0.5, 0.5]))


def test_threshold_metrics_nothing_predicted_is_zero_not_nan() -> None:
    m = threshold_metrics(np.zeros((3, 2)), np.array([[1, 0], [0, 1], [0, 0]]), threshold=0.5)
    assert m == {"CP": 0.0, "CR": 0.0, "CF1": 0.0, "OP": 0.0, "OR": 0.0, "OF1": 0.0}


# ---------------------------------------------------------------- input validation


def test_invalid_inputs_raise_clear_errors() -> None:
    scores = np.random.default_rng(0).random((4, 3))
    targets = np.zeros((4, 3), dtype=int)
    nan_scores = scores.copy()
    nan_scores[2, 1] = np.nan
    with pytest.raises(ValueError, match=r"NaN.*\(2, 1\)"):
        average_precision_per_label(nan_scores, targets)
    with pytest.raises(ValueError, match=r"\(4, 2\).*\(4, 3\)"):
        mean_average_precision(scores, targets[:, :2])
    with pytest.raises(ValueError, match="2-D"):
        average_precision_per_label(scores[:, 0], targets[:, 0])
    bad_targets = targets.copy()
    bad_targets[1, 2] = 2
    with pytest.raises(ValueError, match=r"0/1.*2.*\(1, 2\)"):
        topk_precision_recall_f1(scores, bad_targets, k=1)
    with pytest.raises(ValueError, match="0/1"):
        threshold_metrics(scores, targets - 0.5)
    with pytest.raises(ValueError, match="'dense'"):
        average_precision_per_label(scores, targets, ties="dense")
    with pytest.raises(ValueError, match="mask shape"):
        mean_average_precision(scores, targets, mask=np.ones((3, 4), dtype=bool))
    # NaN is fine where the entry is unknown
    mask = np.ones((4, 3), dtype=bool)
    mask[2, 1] = False
    assert np.isfinite(average_precision_per_label(nan_scores, targets, mask=mask)).all()


# ---------------------------------------------------------------- vectorisation sanity


def test_large_input_runs() -> None:
    rng = np.random.default_rng(0)
    scores = rng.random((2000, 1000), dtype=np.float32)
    targets = rng.random((2000, 1000)) < 0.01
    mask = rng.random((2000, 1000)) > 0.05
    for ties in ("group", "ordinal"):
        value = mean_average_precision(scores, targets, mask=mask, ties=ties)
        assert 0.0 < value < 0.1  # random scores: AP close to the positive rate
    p, r, f1 = topk_precision_recall_f1(scores, targets, k=5, mask=mask)
    assert 0.0 <= p <= 1.0 and 0.0 <= r <= 1.0
    assert set(threshold_metrics(scores, targets, mask=mask)) == {"CP", "CR", "CF1", "OP", "OR", "OF1"}
