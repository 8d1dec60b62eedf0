"""``adds eval --zero-shot-baseline``: the tagger's training-free score (issue 9.7), checked against a hand computation:
``--baseline-pooling max`` (default) ranks by each label's best cosine over the crops of levels 0 and 1,
``--baseline-pooling view`` by the level-0 view's."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import average_precision_score
from test_cmd_train_eval import COLOURS, data  # noqa: F401  (the shared tiny manifest fixture)

from adds.cli import main


def _eval(data, out, *extra, code=0):  # noqa: F811
    assert main(["eval", "--zero-shot-baseline", "--model", "adds-tiny-vit", "--pretrained", "none",
                 "--data-kind", "manifest", "--data-root", str(data / "test.jsonl"), "--labels",
                 str(data / "vocab.txt"), "--json", str(out), "--workers", "0", "--no-progress",
                 "--device", "cpu", *extra]) == code
    return json.loads(out.read_text()) if code == 0 else None


def _hand_map(data, levels: tuple[int, ...], size: int) -> float:  # noqa: F811
    from adds.data.base import SquashResize
    from adds.data.images import load_image
    from adds.model import ADDS, ADDSConfig
    from adds.pyramid import PyramidConfig
    from adds.towers import TowerConfig

    model = ADDS(ADDSConfig(towers=TowerConfig("adds-tiny-vit", pretrained=None), pyramid=PyramidConfig(levels)))
    rows = [json.loads(line) for line in (data / "test.jsonl").read_text().splitlines()][:10]
    images = torch.stack([SquashResize(size)(load_image(data / row["image"])) for row in rows])
    with torch.no_grad():
        tokens = model.forward_features(images)  # (N, crops * T, D)
        per_crop = F.normalize(tokens[:, ::model.towers.tokens_per_image], dim=-1)  # (N, crops, D)
        labels = F.normalize(model.encode_labels(list(COLOURS)), dim=-1)
        scores = (per_crop @ labels.T).amax(dim=1).numpy()  # (N, 4): each label's best crop
    targets = np.array([[label in row["labels"] for label in COLOURS] for row in rows], dtype=int)
    return float(np.mean([average_precision_score(targets[:, c], scores[:, c]) for c in range(len(COLOURS))]))


def test_default_is_the_max_over_the_crops_of_levels_0_and_1(data, tmp_path):  # noqa: F811
    result = _eval(data, tmp_path / "max.json")
    assert "max over the crops of levels 0,1" in result["model"]
    assert result["metrics"]["all"]["mAP"] == pytest.approx(_hand_map(data, (0, 1), 64), abs=1e-6)  # 2 x 32 px


def test_view_pooling_is_the_level_0_class_token(data, tmp_path):  # noqa: F811
    result = _eval(data, tmp_path / "view.json", "--baseline-pooling", "view")
    assert "one view" in result["model"]
    assert result["metrics"]["all"]["mAP"] == pytest.approx(_hand_map(data, (0,), 32), abs=1e-6)


def test_view_with_more_levels_is_refused(data, tmp_path, capsys):  # noqa: F811
    _eval(data, tmp_path / "bad.json", "--baseline-pooling", "view", "--levels", "0,1", code=1)
    assert "level-0 view only" in capsys.readouterr().err


def test_a_size_without_the_quadrants_names_the_fix(data, tmp_path, capsys):  # noqa: F811
    _eval(data, tmp_path / "small.json", "--input-size", "32", code=1)
    err = capsys.readouterr().err
    assert "64 px" in err and "--baseline-pooling view" in err
