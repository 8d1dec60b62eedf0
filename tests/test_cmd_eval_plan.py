"""Issue 10.3 / integration: `adds eval` and the tagger run a saved head with the same input plan (size, levels,
crops), read from its training.json through adds.tagger.plan."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from adds.cli import main
from adds.commands.eval import eval_plan
from adds.decoder import DecoderConfig
from adds.model import ADDS, ADDSConfig
from adds.pyramid import PyramidConfig
from adds.tagger import Tagger, trained_input_size


def _save_head(directory, towers, levels, input_size):
    config = ADDSConfig(towers=towers.config, decoder=DecoderConfig(num_layers=1, num_heads=4, ffn_dim=32),
                        pyramid=PyramidConfig(levels=levels))
    ADDS(config, towers=towers).save_pretrained(directory)
    (directory / "labels.txt").write_text("red\ngreen\n")
    (directory / "training.json").write_text(json.dumps({"input_size": input_size}))
    return directory


@pytest.mark.parametrize(("levels", "size", "crops"), [((0, 1), 48, 5), (None, 32, 1), (None, 64, 5), ((0,), 48, 1)])
def test_eval_and_tagger_agree_on_a_saved_head(tmp_path, tiny_towers, levels, size, crops):
    head = _save_head(tmp_path / "head", tiny_towers, levels, size)
    tagger = Tagger.from_checkpoint(head, device="cpu")
    model = ADDS.from_pretrained(head, towers=tiny_towers)
    plan = eval_plan(model, trained_input_size(head))
    assert plan == tagger.plan
    assert plan.input_size == size and plan.num_crops == crops
    assert eval_plan(model, trained_input_size(head), input_size=96).input_size == 96  # --input-size wins in both


def test_adds_eval_runs_at_the_trained_size(tmp_path, tiny_towers):
    head = _save_head(tmp_path / "head", tiny_towers, (0, 1), 48)
    rng = np.random.default_rng(0)
    rows = []
    for number in range(4):
        Image.fromarray((255 * rng.random((40, 50, 3))).astype(np.uint8)).save(tmp_path / f"{number}.png")
        rows.append(f"{number}.png,{'red' if number % 2 else 'green'}\n")
    (tmp_path / "test.csv").write_text("image,labels\n" + "".join(rows))
    (tmp_path / "vocab.txt").write_text("red\ngreen\n")
    out = tmp_path / "eval.json"
    assert main(["eval", "--checkpoint", str(head), "--data-kind", "manifest",
                 "--data-root", str(tmp_path / "test.csv"), "--labels", str(tmp_path / "vocab.txt"),
                 "--json", str(out), "--workers", "0", "--no-progress", "--device", "cpu"]) == 0
    assert json.loads(out.read_text())["model"].endswith("48x48")
