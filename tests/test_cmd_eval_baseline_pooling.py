"""``adds eval --zero-shot-baseline --levels 0,1 --baseline-pooling max``: each label's cosine maximised over the
crops (issue 9.7), checked against a hand computation."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score
from test_cmd_train_eval import COLOURS, data  # noqa: F401  (the shared tiny manifest fixture)

from adds.cli import main


def _eval(data, out, *extra):  # noqa: F811
    assert main(["eval", "--zero-shot-baseline", "--model", "adds-tiny-vit", "--pretrained", "none",
                 "--data-kind", "manifest", "--data-root", str(data / "test.jsonl"), "--labels",
                 str(data / "vocab.txt"), "--levels", "0,1", "--json", str(out), "--workers", "0", "--no-progress",
                 "--device", "cpu", *extra]) == 0
    return json.loads(out.read_text())


def test_max_over_crops_matches_a_hand_computation(data, tmp_path):  # noqa: F811
    from adds.data.base import SquashResize
    from adds.data.images import load_image
    from adds.model import ADDS, ADDSConfig
    from adds.pyramid import PyramidConfig
    from adds.towers import TowerConfig

    result = _eval(data, tmp_path / "max.json", "--baseline-pooling", "max")
    auto = _eval(data, tmp_path / "auto.json")
    assert "max over 2-level crops" in result["model"] and "max over" not in auto["model"]
    model = ADDS(ADDSConfig(towers=TowerConfig("adds-tiny-vit", pretrained=None), pyramid=PyramidConfig((0, 1))))
    rows = [json.loads(line) for line in (data / "test.jsonl").read_text().splitlines()][:10]
    images = torch.stack([SquashResize(64)(load_image(data / row["image"])) for row in rows])  # 2 x 32 px: 5 crops
    with torch.no_grad():
        tokens = model.forward_features(images)  # (N, 5 * T, D)
        per_crop = tokens[:, ::model.towers.tokens_per_image]  # (N, 5, D): every crop's class token
        labels = torch.nn.functional.normalize(model.encode_labels(list(COLOURS)), dim=-1)
        scores = (torch.nn.functional.normalize(per_crop, dim=-1) @ labels.T).amax(dim=1).numpy()  # (N, 4)
    targets = np.array([[label in row["labels"] for label in COLOURS] for row in rows], dtype=int)
    expected = np.mean([average_precision_score(targets[:, c], scores[:, c]) for c in range(len(COLOURS))])
    assert result["metrics"]["all"]["mAP"] == pytest.approx(expected, abs=1e-6)
