"""Exact F1-optimal thresholds (adds.calibration.fit) and the files written next to a checkpoint."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from adds.calibration import FitConfig, best_f1_threshold, calibrate_checkpoint, f1_at, fit_thresholds, per_label_f1
from adds.tagger.thresholds import checkpoint_thresholds_file, read_thresholds


def _brute_force_best_f1(scores: np.ndarray, positives: np.ndarray) -> float:
    """Best F1 over every threshold that realises a different prediction (each distinct score, and above all)."""
    candidates = np.append(np.unique(scores.astype(np.float32)), np.inf)
    return max(f1_at(scores, positives, float(t)) for t in candidates)


@pytest.mark.parametrize("seed", range(6))
def test_best_threshold_is_exactly_optimal_with_ties(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 60))
    scores = np.round(rng.random(n), 1)  # many ties
    positives = rng.random(n) < rng.uniform(0.1, 0.6)
    positives[0] = True
    threshold, f1 = best_f1_threshold(scores, positives)
    assert f1 == pytest.approx(_brute_force_best_f1(scores, positives))
    assert f1_at(scores, positives, threshold) == pytest.approx(f1)  # the threshold realises that F1
    assert 0.0 <= threshold <= 1.0


def test_tied_scores_are_predicted_together_and_threshold_sits_between_scores():
    scores = np.array([0.9, 0.9, 0.9, 0.2, 0.1])
    positives = np.array([True, False, True, True, False])
    threshold, f1 = best_f1_threshold(scores, positives)
    # cuts: {0.9 x3} -> tp 2, n 3: F1 = 4/6; {.., 0.2} -> tp 3, n 4: F1 = 6/7; all -> 6/8.
    assert f1 == pytest.approx(6 / 7)
    assert 0.1 < threshold <= 0.2 and threshold == pytest.approx(0.15)
    assert best_f1_threshold(np.array([0.3, 0.3]), np.array([True, False]))[0] == pytest.approx(0.3)


def test_recovers_known_per_label_thresholds_on_a_generated_case():
    rng = np.random.default_rng(0)
    truth = np.array([0.12, 0.35, 0.5, 0.71, 0.93])
    scores = rng.random((4000, truth.size)).astype(np.float32)
    targets = scores >= truth  # noiseless: the F1-optimal threshold is the known one
    fit = fit_thresholds(scores, targets, [f"l{i}" for i in range(truth.size)])
    fitted = np.array(list(fit.thresholds.values()))
    assert np.abs(fitted - truth).max() < 2e-3
    assert all(label.f1_after == 1.0 and label.method == "f1-optimal" for label in fit.labels)
    assert np.all(per_label_f1(scores, targets, fitted) == 1.0)
    # with label noise the fitted threshold still lands near the known one, and beats the 0.5 reference
    noisy = targets ^ (rng.random(targets.shape) < 0.05)
    fit = fit_thresholds(scores, noisy, [f"l{i}" for i in range(truth.size)])
    assert np.abs(np.array(list(fit.thresholds.values())) - truth).max() < 0.06
    assert fit.summary()["macro_f1_after"] > fit.summary()["macro_f1_before"] + 0.05


def test_rare_labels_get_the_pooled_threshold_and_the_mask_is_respected():
    rng = np.random.default_rng(1)
    scores = rng.random((300, 3)).astype(np.float32)
    targets = scores >= np.array([0.3, 0.6, 0.8])
    targets[:, 2] = False
    targets[[5, 9], 2] = True  # 2 positives < min_positives = 3
    fit = fit_thresholds(scores, targets, ["a", "b", "rare"], config=FitConfig(min_positives=3))
    rare = fit.labels[2]
    assert rare.method == "pooled-fallback" and rare.positives == 2 and rare.threshold == fit.pooled_threshold
    assert fit.pooled_threshold == pytest.approx(best_f1_threshold(scores.ravel(), targets.ravel())[0])
    assert fit.summary()["pooled_fallback"] == 1 and fit.summary()["per_label"] == 2
    assert fit_thresholds(scores, targets, ["a", "b", "rare"], config=FitConfig(min_positives=2)).labels[2].method \
        == "f1-optimal"
    # unknown entries (mask False) are neither predictions nor misses: hide every positive below 0.6 of label a
    mask = np.ones_like(targets)
    mask[(scores[:, 0] < 0.6) & targets[:, 0], 0] = False
    masked = fit_thresholds(scores, targets, ["a", "b", "rare"], mask=mask)
    # known entries: positives >= 0.6, negatives < 0.3; the cut sits midway between them, F1 is 1
    assert masked.labels[0].threshold == pytest.approx((0.6 + 0.3) / 2, abs=0.02) and masked.labels[0].f1_after == 1
    assert fit.labels[0].threshold == pytest.approx(0.3, abs=0.02)
    assert masked.labels[0].known == int(mask[:, 0].sum())


def test_fit_errors():
    with pytest.raises(ValueError, match="min_positives must be an integer >= 1"):
        FitConfig(min_positives=0)
    with pytest.raises(ValueError, match="2 label names for 3 score columns"):
        fit_thresholds(np.zeros((4, 3)), np.zeros((4, 3)), ["a", "b"])
    with pytest.raises(ValueError, match="must both be"):
        fit_thresholds(np.zeros((4, 3)), np.zeros((4, 2)), ["a", "b", "c"])
    with pytest.raises(ValueError, match="NaN"):
        fit_thresholds(np.full((2, 1), np.nan), np.zeros((2, 1)), ["a"])


def test_calibrate_checkpoint_writes_what_the_tagger_reads(tmp_path):
    rng = np.random.default_rng(2)
    scores = torch.rand(200, 4, generator=torch.Generator().manual_seed(2))
    targets = (scores >= torch.tensor([0.2, 0.4, 0.6, 0.8])).float()
    targets[:, 3] = 0
    targets[int(rng.integers(200)), 3] = 1
    names = ["dog", "sofa bed", "#tag", "rare"]
    report = calibrate_checkpoint(tmp_path, scores, targets, names, source="manifest val.csv",
                                  extra={"model": "toy"})
    assert checkpoint_thresholds_file(tmp_path) == tmp_path / "thresholds.tsv" == report.thresholds_path
    written = read_thresholds(report.thresholds_path)
    # '#tag' would read back as a comment line: left out (the tagger keeps its global threshold), and said so
    assert report.skipped == ["#tag"] and list(written) == ["dog", "sofa bed", "rare"]
    assert all(written[name] == report.fit.thresholds[name] for name in written)  # exact round trip
    document = json.loads((tmp_path / "calibration.json").read_text(encoding="utf-8"))
    assert document["source"] == "manifest val.csv" and document["images"] == 200 and document["model"] == "toy"
    assert document["min_positives"] == 3 and document["not_written"] == ["#tag"]
    by_label = {entry["label"]: entry for entry in document["labels"]}
    assert by_label["rare"]["method"] == "pooled-fallback" and by_label["dog"]["method"] == "f1-optimal"
    assert by_label["dog"]["f1_after"] >= by_label["dog"]["f1_before"]
    assert document["summary"]["labels"] == 4 and document["label_free"] is None
    with pytest.raises(FileNotFoundError, match="checkpoint directory not found"):
        calibrate_checkpoint(tmp_path / "missing", scores, targets, names)


def test_calibrated_thresholds_beat_0_5_on_a_trained_toy_world_head():
    """A quickly trained toy-world ADDS head: thresholds fitted on a calibration split raise the mean per-label F1
    of a separate test split above the paper's fixed 0.5."""
    from adds.decoder import DecoderConfig
    from adds.prompts import LabelEmbedder
    from adds.toyworld.lab import LabConfig, features, head_logits, train_head
    from adds.toyworld.toyclip import load_toy_towers
    from adds.toyworld.world import VOCABULARY, render_scenes

    towers = load_toy_towers(0)
    names = VOCABULARY.labels
    labels = LabelEmbedder(towers)(names)  # (160, D)
    scenes = render_scenes(2200, torch.Generator().manual_seed(2))  # 1,200 train / 500 calibration / 500 test
    tokens, targets = features(towers, scenes.images), scenes.targets
    config = LabConfig(epochs=5, decoder=DecoderConfig(num_layers=1, num_heads=4, ffn_dim=64, dropout=0.0))
    head = train_head(towers, tokens[:1200], targets[:1200], labels, config, seed=2)
    scores = head_logits(head, tokens[1200:], labels).sigmoid()  # (1000, 160)
    calibration, test = slice(0, 500), slice(500, 1000)
    fit = fit_thresholds(scores[calibration], targets[1200:][calibration], names)
    thresholds = np.array(list(fit.thresholds.values()))
    at_half = per_label_f1(scores[test], targets[1200:][test], 0.5).mean()
    calibrated = per_label_f1(scores[test], targets[1200:][test], thresholds).mean()
    # the sizes of benchmarks/calibration_transfer.py; measured with the 2026-12-03 toy CLIPs: 0.225 -> 0.257
    assert calibrated > at_half + 0.01, (at_half, calibrated)
