"""Label-free thresholds (adds.calibration.transfer): rules fitted on labelled labels, applied to new words."""

from __future__ import annotations

import numpy as np
import pytest

from adds.calibration import calibrate_checkpoint, fit_thresholds, fit_transfer_rule, per_label_f1
from adds.calibration.transfer import TransferRule


def _shifted_labels(rng, labels: int, images: int = 3000, prevalence: float = 0.1):
    """Per-label logit offsets differ (a fixed 0.5 or one global threshold cannot fit them all); within a label,
    positives score 3 logits above negatives, so one z-score threshold suits every label."""
    offsets = rng.uniform(-4.0, 2.0, labels)
    targets = rng.random((images, labels)) < prevalence
    logits = offsets + rng.normal(0.0, 1.0, (images, labels)) + 3.0 * targets
    return 1.0 / (1.0 + np.exp(-logits)), targets


def test_zscore_rule_transfers_to_new_labels_with_other_offsets():
    rng = np.random.default_rng(0)
    seen_scores, seen_targets = _shifted_labels(rng, 30)
    new_scores, new_targets = _shifted_labels(rng, 10)
    unlabelled = new_scores[:1500]  # the new words' scores on unlabelled images (their labels unused)
    test_scores, test_targets = new_scores[1500:], new_targets[1500:]
    results = {}
    for kind in ("zscore", "quantile", "global"):
        rule = fit_transfer_rule(seen_scores, seen_targets, kind=kind)
        assert rule.fitted_labels == 30 and rule.space == "logit"
        results[kind] = per_label_f1(test_scores, test_targets, rule.thresholds(unlabelled)).mean()
    oracle = fit_thresholds(new_scores[:1500], new_targets[:1500], [str(i) for i in range(10)])
    results["oracle"] = per_label_f1(test_scores, test_targets, list(oracle.thresholds.values())).mean()
    results["0.5"] = per_label_f1(test_scores, test_targets, 0.5).mean()
    assert results["zscore"] > 0.95 * results["oracle"], results
    assert results["zscore"] > results["global"] + 0.05 and results["zscore"] > results["0.5"] + 0.05, results


def test_quantile_rule_assumes_equal_prevalence():
    rng = np.random.default_rng(1)
    seen_scores, seen_targets = _shifted_labels(rng, 20, prevalence=0.1)
    rule = fit_transfer_rule(seen_scores, seen_targets, kind="quantile")
    assert 0.8 < rule.parameter < 0.95  # about 10% of the images predicted, as 10% are positive
    common, common_t = _shifted_labels(rng, 5, prevalence=0.1)
    rare, rare_t = _shifted_labels(rng, 5, prevalence=0.01)
    f1_common = per_label_f1(common, common_t, rule.thresholds(common)).mean()
    f1_rare = per_label_f1(rare, rare_t, rule.thresholds(rare)).mean()
    assert f1_common > f1_rare + 0.2  # a rarer word is over-predicted: the documented weakness


def test_rule_thresholds_and_errors():
    scores = np.array([[0.1, 0.2], [0.3, 0.9], [0.5, 0.4], [0.7, 0.6]])
    assert TransferRule("global", 0.42).thresholds(scores).tolist() == [0.42, 0.42]
    assert TransferRule("quantile", 0.5).thresholds(scores) == pytest.approx([0.4, 0.5])
    logits = np.log(scores / (1 - scores))
    expected = 1 / (1 + np.exp(-(logits.mean(0) + 1.0 * logits.std(0))))
    assert TransferRule("zscore", 1.0).thresholds(scores) == pytest.approx(expected)
    cosines = np.array([[-0.1, 0.2], [0.3, 0.25]])  # not probabilities: z-scores of the raw scores
    rule = fit_transfer_rule(cosines, np.array([[0, 1], [1, 0]]), kind="zscore", min_positives=1)
    assert rule.space == "score"
    with pytest.raises(ValueError, match="transfer rule must be one of"):
        TransferRule("median", 1.0)
    with pytest.raises(ValueError, match="no label has 3 or more positives"):
        fit_transfer_rule(scores, np.zeros_like(scores), kind="zscore")
    with pytest.raises(ValueError, match="needs scores of shape"):
        TransferRule("zscore", 1.0).thresholds(np.zeros((0, 2)))


def test_calibrate_checkpoint_adds_label_free_words(tmp_path):
    rng = np.random.default_rng(3)
    scores, targets = _shifted_labels(rng, 8, images=400)
    new_scores, _ = _shifted_labels(rng, 2, images=100)
    report = calibrate_checkpoint(tmp_path, scores, targets, [f"l{i}" for i in range(8)],
                                  new_label_names=["l0", "fresh", "new word"], new_label_scores=np.c_[
                                      new_scores[:, :1], new_scores], rule="zscore", unlabelled_source="photos/")
    assert list(report.new_labels) == ["fresh", "new word"]  # l0 has labels: keeps its fitted threshold
    assert report.thresholds["l0"] == report.fit.thresholds["l0"]
    expected = report.rule.thresholds(new_scores)
    assert [report.new_labels["fresh"], report.new_labels["new word"]] == pytest.approx(expected.tolist())
    with pytest.raises(ValueError, match="need new_label_scores"):
        calibrate_checkpoint(tmp_path, scores, targets, [f"l{i}" for i in range(8)], new_label_names=["x"])
