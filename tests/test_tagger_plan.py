"""The input plan (adds.tagger.plan): a head is tagged at the size and with the crops it was trained with, exactly as
``adds eval`` runs it (issue 10, item 3)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

import adds.evaluate
from adds.cli import main
from adds.decoder import DecoderConfig
from adds.model import ADDS, ADDSConfig
from adds.pyramid import PyramidConfig, plan
from adds.tagger import Tagger, input_plan, trained_input_size

SMALL = DecoderConfig(num_layers=1, num_heads=4, ffn_dim=64)
LABELS = ["red", "blue"]


def test_the_plan_rules():
    assert input_plan(32) == input_plan(32, None, None)
    p = input_plan(32)
    assert (p.input_size, p.levels, p.num_crops) == (32, (0,), 1)  # levels=None at the tower's size: one crop
    p = input_plan(336, None, trained_size=640)  # Table 1: 640 on 336 -- overlapping, not a 672 tiling
    assert (p.input_size, p.levels, p.trained) == (640, (0, 1), True)
    assert [(c.top, c.left) for c in p.crops()[1].crops] == [(0, 0), (0, 304), (304, 0), (304, 304)]
    assert input_plan(32, (0, 1)).input_size == 64  # levels that need more than the tower's size
    assert input_plan(32, (0,), trained_size=48).levels == (0,)  # the head's own levels win over the size's
    p = input_plan(32, None, trained_size=48, levels=(0, 1, 2))  # explicit levels above the trained size
    assert (p.input_size, p.levels, p.trained) == (128, (0, 1, 2), False)
    assert input_plan(32, None, trained_size=48, input_size=100).levels == (0, 1, 2)
    with pytest.raises(ValueError, match="level 2"):
        input_plan(32, None, input_size=40, levels=(2,))
    with pytest.raises(ValueError, match="input_size"):
        input_plan(32, input_size=0)


def test_trained_input_size_reads_training_json(tmp_path):
    assert trained_input_size(tmp_path) is None
    (tmp_path / "training.json").write_text(json.dumps({"input_size": 48, "epoch": 3}), encoding="utf-8")
    assert trained_input_size(tmp_path) == 48
    (tmp_path / "training.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(ValueError, match="training.json"):
        trained_input_size(tmp_path)


def _head(tiny_towers, tmp_path, levels, trained_size):
    model = ADDS(ADDSConfig(decoder=SMALL, pyramid=PyramidConfig(levels=levels)), towers=tiny_towers).eval()
    directory = model.save_pretrained(tmp_path / "ckpt")
    (directory / "labels.txt").write_text("\n".join(LABELS) + "\n", encoding="utf-8")
    (directory / "training.json").write_text(json.dumps({"input_size": trained_size}), encoding="utf-8")
    return directory


@pytest.mark.parametrize("levels, trained_size, crops", [(None, 32, 1), (None, 48, 5), ((0,), 48, 1), ((1,), 48, 4)])
def test_tagger_and_eval_agree_on_the_input_size_and_crops_of_a_saved_head(
        tiny_towers, tmp_path, monkeypatch, levels, trained_size, crops):
    directory = _head(tiny_towers, tmp_path, levels, trained_size)
    image = tmp_path / "img.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (90, 70, 3), dtype=np.uint8)).save(image)
    manifest = tmp_path / "data.csv"
    manifest.write_text(f"image,labels\n{image.name},red\n", encoding="utf-8")
    seen = {}

    def capture(model, data, vocabulary, config, **kwargs):
        seen["model"], seen["data"] = model, data
        raise RuntimeError("captured")  # stop here: only the plan is compared

    monkeypatch.setattr(adds.evaluate, "evaluate_model", capture)
    assert main(["eval", "--checkpoint", str(directory), "--data-kind", "manifest", "--data-root", str(manifest),
                 "--device", "cpu", "--no-progress"]) == 1
    eval_pixels = seen["data"][0]["image"]  # what adds eval feeds its model: (3, size, size)
    eval_levels = seen["model"].pyramid.plan(*eval_pixels.shape[-2:])

    tagger = Tagger.from_checkpoint(directory, device="cpu")
    assert tagger.plan.input_size == eval_pixels.shape[-1] == trained_size
    assert tagger.plan.crops() == eval_levels and tagger.plan.num_crops == crops
    prepared = tagger.prepare(image)
    torch.testing.assert_close(prepared.pixels, eval_pixels)
    with torch.no_grad():
        expected = seen["model"](eval_pixels, LABELS).sigmoid()
    torch.testing.assert_close(tagger.scores(image), expected, rtol=1e-5, atol=1e-5)


def test_a_head_trained_at_the_tower_size_gets_one_crop_even_for_a_large_photo(tiny_towers, tmp_path):
    directory = _head(tiny_towers, tmp_path, None, 32)
    tagger = Tagger.from_checkpoint(directory, device="cpu")
    big = torch.rand(3, 300, 400)
    assert tagger.prepare(big).pixels.shape == (3, 32, 32)
    assert plan(32, 32, 32, tagger.plan.levels)[0].crops and tagger.plan.num_crops == 1  # was 1 + 4 before
    assert tagger.describe()["crops"] == 1 and tagger.describe()["input_size"] == 32
