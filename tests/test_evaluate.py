"""Evaluation protocols: hand-computed metrics, single-to-multi subsets, the CLIP baseline, tables and JSON."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from adds.data.base import MultiLabelDataset, Record, SquashResize
from adds.data.overlap import overlapped_labels
from adds.data.registry import resource_table
from adds.evaluate import (
    EvalConfig,
    TensorFeatureDataset,
    clip_zero_shot_scores,
    collate_batch,
    evaluate_model,
    evaluate_scores,
    format_table,
    overlap_subsets,
    predict,
    write_json,
)

# 4 images x 3 labels; every number below is worked out by hand in the comments.
SCORES = np.array([[0.9, 0.1, 0.4],
                   [0.8, 0.7, 0.3],
                   [0.2, 0.6, 0.9],
                   [0.1, 0.3, 0.2]])
TARGETS = np.array([[1, 0, 0],
                    [0, 1, 0],
                    [1, 1, 1],
                    [0, 0, 1]])
# AP: label 0 ranks img0+, img1-, img2+, img3- -> (1/1 + 2/3) / 2; label 1 -> (1 + 1) / 2; label 2 -> (1 + 2/4) / 2
AP = [(1 + 2 / 3) / 2, 1.0, (1 + 2 / 4) / 2]
# threshold 0.5: label 0 TP 1 FP 1 FN 1; label 1 TP 2; label 2 TP 1 FN 1
CP, CR = (0.5 + 1 + 1) / 3, (0.5 + 1 + 0.5) / 3
OP, OR = 4 / 5, 4 / 6
# top-2: TP = 1 + 1 + 2 + 1 = 5 of 8 predictions and 6 positives
P2, R2 = 5 / 8, 5 / 6


def f1(p: float, r: float) -> float:
    return 2 * p * r / (p + r)


def test_conventional_protocol_matches_hand_computed_numbers():
    result = evaluate_scores(SCORES, TARGETS, vocabulary=["a", "b", "c"], config=EvalConfig("conventional"))
    metrics = result.headline
    assert metrics["mAP"] == pytest.approx(np.mean(AP))
    assert metrics["CP"] == pytest.approx(CP) and metrics["CR"] == pytest.approx(CR)
    assert metrics["CF1"] == pytest.approx(f1(CP, CR))
    assert metrics["OP"] == pytest.approx(OP) and metrics["OR"] == pytest.approx(OR)
    assert metrics["OF1"] == pytest.approx(f1(OP, OR))
    assert result.per_label_ap == pytest.approx(dict(zip("abc", AP, strict=True)))
    assert result.num_images == 4 and result.num_labels == 3


def test_zsl_protocol_reports_topk_micro_metrics():
    metrics = evaluate_scores(SCORES, TARGETS, config=EvalConfig("zsl", topk=(1, 2))).headline
    # top-1: img0 -> 0 (+), img1 -> 0 (-), img2 -> 2 (+), img3 -> 1 (-): TP 2 of 4, 6 positives
    assert metrics["P@1"] == pytest.approx(2 / 4) and metrics["R@1"] == pytest.approx(2 / 6)
    assert metrics["F1@1"] == pytest.approx(f1(2 / 4, 2 / 6))
    assert metrics["P@2"] == pytest.approx(P2) and metrics["R@2"] == pytest.approx(R2)
    assert metrics["F1@2"] == pytest.approx(f1(P2, R2))
    assert "CP" not in metrics


def test_images_without_positives_are_kept_and_labels_without_positives_count_as_zero():
    scores = np.vstack([SCORES, [[0.5, 0.5, 0.5]]])
    targets = np.vstack([TARGETS, [[0, 0, 0]]])
    metrics = evaluate_scores(scores, targets, config=EvalConfig("zsl", topk=(2,))).headline
    assert metrics["P@2"] == pytest.approx(5 / 10)  # the empty image adds k false positives
    targets_missing = TARGETS.copy()
    targets_missing[:, 1] = 0
    result = evaluate_scores(SCORES, targets_missing, config=EvalConfig("conventional"))
    assert result.headline["mAP"] == pytest.approx((AP[0] + 0 + AP[2]) / 3)
    assert any("no positive" in note for note in result.notes)
    skipped = evaluate_scores(SCORES, targets_missing,
                              config=EvalConfig("conventional", skip_labels_without_positives=True))
    assert skipped.headline["mAP"] == pytest.approx((AP[0] + AP[2]) / 2)


def test_single_to_multi_ranks_each_subset_over_its_own_labels():
    config = EvalConfig("single-to-multi", topk=(1,))
    subsets = {"overlapped": [0, 1], "non-overlapped": [2]}
    result = evaluate_scores(SCORES, TARGETS, vocabulary=["a", "b", "c"], config=config, subsets=subsets)
    assert result.metrics["all"]["mAP"] == pytest.approx(np.mean(AP))
    assert result.metrics["overlapped"]["mAP"] == pytest.approx((AP[0] + AP[1]) / 2)
    # top-1 over {a, b}: img0 a(+), img1 a(-), img2 b(+), img3 b(-): TP 2 of 4, 4 positives in a and b
    assert result.metrics["overlapped"]["P@1"] == pytest.approx(0.5)
    assert result.metrics["overlapped"]["R@1"] == pytest.approx(0.5)
    # top-1 over {c}: every image predicts c, 2 of 4 are positive, both positives found
    assert result.metrics["non-overlapped"]["mAP"] == pytest.approx(AP[2])
    assert result.metrics["non-overlapped"]["P@1"] == pytest.approx(0.5)
    assert result.metrics["non-overlapped"]["R@1"] == pytest.approx(1.0)
    assert result.subset_labels["overlapped"] == ["a", "b"]
    # scores of a model run on the subset's labels only replace the columns
    rerun_scores = {"non-overlapped": np.array([[0.0], [1.0], [0.5], [0.2]])}  # img1-, img2+, img3+, img0-
    rerun = evaluate_scores(SCORES, TARGETS, config=config, subsets=subsets, subset_scores=rerun_scores)
    assert rerun.metrics["non-overlapped"]["mAP"] == pytest.approx((1 / 2 + 2 / 3) / 2)
    assert rerun.metrics["all"]["mAP"] == pytest.approx(np.mean(AP))
    with pytest.raises(ValueError, match="subsets"):
        evaluate_scores(SCORES, TARGETS, config=config)


def test_overlap_subsets_partition_the_coco_vocabulary():
    names = [row["name"] for row in resource_table("coco80_categories.tsv")]
    subsets = overlap_subsets(names, "coco80", "imagenet1k")
    overlapped, non_overlapped = overlapped_labels("coco80", "imagenet1k")
    assert sorted(subsets["overlapped"] + subsets["non-overlapped"]) == list(range(80))
    assert [names[i] for i in subsets["overlapped"]] == overlapped
    assert names.index("dog") in subsets["overlapped"]  # through the ImageNet dog breeds
    assert [names[i] for i in subsets["non-overlapped"]] == non_overlapped
    with pytest.raises(ValueError):
        overlap_subsets(["dog", "not a coco label"], "coco80")


def test_format_table_and_json(tmp_path):
    result = evaluate_scores(SCORES, TARGETS, config=EvalConfig("zsl", topk=(1, 2)), dataset="toy", model="m")
    table = format_table(result, expected={"mAP": 36.56})
    assert f"{100 * np.mean(AP):.2f}" in table and "36.56" in table and "paper" in table
    assert "F1 (k=2)" in table
    path = write_json(result, tmp_path / "out" / "metrics.json")
    data = json.loads(path.read_text())
    assert data["metrics"]["all"]["mAP"] == pytest.approx(np.mean(AP))
    assert data["units"] == "fraction" and data["protocol"] == "zsl"
    s2m = evaluate_scores(SCORES, TARGETS, config=EvalConfig("single-to-multi", topk=(1,)),
                          subsets={"overlapped": [0, 1], "non-overlapped": [2]})
    table = format_table(s2m)
    assert "Without overlapped classes" in table and "Overlapped classes only" in table


class _KnownScores(torch.nn.Module):
    """A stand-in model whose "tokens" are the score rows themselves."""

    def forward_head(self, tokens, embeddings):
        return torch.logit(tokens[:, 0, : embeddings.shape[0]].float())  # sigmoid gives the scores back

    def encode_labels(self, labels):
        return torch.eye(len(labels))


def test_known_scores_through_the_loader_pipeline():
    # rows shuffled on purpose: predictions come back in dataset-index order
    order = torch.tensor([2, 0, 3, 1])
    tokens = torch.tensor(SCORES, dtype=torch.float32)[order].unsqueeze(1)  # (4, 1, 3)
    data = TensorFeatureDataset(tokens, torch.tensor(TARGETS)[order], indices=order)
    result = evaluate_model(_KnownScores(), data, ["a", "b", "c"], EvalConfig("conventional", batch_size=3),
                            progress=False)
    assert result.headline["mAP"] == pytest.approx(np.mean(AP))
    assert result.headline["CF1"] == pytest.approx(f1(CP, CR))
    assert result.headline["OF1"] == pytest.approx(f1(OP, OR))


def test_predict_skips_unloadable_images_and_reports_them(tmp_path, tiny_towers):
    from PIL import Image

    from adds.decoder import DecoderConfig
    from adds.model import ADDS, ADDSConfig

    Image.new("RGB", (40, 30), (200, 10, 10)).save(tmp_path / "ok.png")
    (tmp_path / "bad.png").write_bytes(b"not an image")
    records = [Record("ok.png", (0,)), Record("bad.png", (1,)), Record("ok.png", (1,))]
    dataset = MultiLabelDataset(records, ["x", "y"], root=tmp_path, transform=SquashResize(32))
    model = ADDS(ADDSConfig(towers=tiny_towers.config, decoder=DecoderConfig(num_layers=1, num_heads=4, ffn_dim=32)),
                 towers=tiny_towers)
    loader = torch.utils.data.DataLoader(dataset, batch_size=2, collate_fn=collate_batch)
    preds = predict(model, loader, {"all": model.encode_labels(["x", "y"])})
    assert preds.indices.tolist() == [0, 2]
    assert len(preds.failed) == 1 and preds.failed[0][0].endswith("bad.png")
    assert preds.scores["all"].shape == (2, 2)
    assert torch.allclose(preds.scores["all"][0], preds.scores["all"][1])  # same image, same scores


def test_clip_baseline_is_the_cosine_of_image_and_label_embeddings(tiny_towers):
    from adds.model import ADDS, ADDSConfig
    from adds.pyramid import PyramidConfig

    model = ADDS(ADDSConfig(towers=tiny_towers.config, pyramid=PyramidConfig(levels=(0, 1))), towers=tiny_towers)
    images = torch.rand(3, 3, 64, 64)
    labels = ["red", "green", "blue", "white"]
    embeddings = model.encode_labels(labels)
    tokens = model.forward_features(images)  # (3, 5 * 17, D): level 0 then the 2 x 2 crops of level 1
    scores = clip_zero_shot_scores(tokens, embeddings, tiny_towers.tokens_per_image)
    with torch.no_grad():
        small = F.interpolate(images, size=(32, 32), mode="bicubic", antialias=True).clamp(0, 1)
        mean = torch.tensor(tiny_towers.mean).view(1, 3, 1, 1)
        std = torch.tensor(tiny_towers.std).view(1, 3, 1, 1)
        reference = tiny_towers.clip.encode_image((small - mean) / std)  # (3, D)
    expected = F.normalize(reference, dim=-1) @ F.normalize(embeddings, dim=-1).T
    assert torch.allclose(scores, expected, atol=1e-4)
    pooled = clip_zero_shot_scores(tokens, embeddings, tiny_towers.tokens_per_image, first_crop_only=False)
    assert pooled.shape == (3, 4) and not torch.allclose(pooled, scores)
    assert float(pooled.abs().max()) <= 1.0 + 1e-5


def test_eval_config_rejects_unknown_protocols():
    with pytest.raises(ValueError, match="protocol"):
        EvalConfig("top1")
    with pytest.raises(ValueError, match="topk"):
        EvalConfig(topk=(0,))


def test_doubtful_paper_values_print_as_question_marks():
    """Issue 10.11: a config's null (doubtful F1@3 = F1@5 pair) is '?', an absent metric '-', numbers as printed."""
    result = evaluate_scores(SCORES, TARGETS, config=EvalConfig("zsl", topk=(1, 2)), dataset="toy", model="m")
    table = format_table(result, expected={"mAP": 31.02, "F1@1": None, "F1@2": None})
    paper = next(line for line in table.splitlines() if line.startswith("paper"))
    cells = paper.split()
    assert cells[1] == "31.02" and cells.count("?") == 2 and cells.count("-") == 4  # P/R at k = 1, 2 absent
    assert "doubtful" in table


def test_configs_do_not_claim_equal_f1_at_3_and_5():
    from adds.train.config import load_config

    for path in sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml")):
        expected = load_config(path).expected
        for section in [expected, *(value for value in expected.values() if isinstance(value, dict))]:
            f3, f5 = section.get("F1@3"), section.get("F1@5")
            assert f3 is None or f3 != f5, f"{path.name} claims F1@3 = F1@5 = {f3}"
