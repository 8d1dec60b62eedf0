"""Training recipe of the toy CLIPs (``adds.toyworld.toyclip``): the shape warm-up and the two-stage trainer."""

from __future__ import annotations

from dataclasses import replace

import open_clip
import torch

from adds.towers import register_model_configs
from adds.toyworld.toyclip import TOY_MODEL, ToyClipConfig, shape_warmup, train_toy_clip
from adds.toyworld.world import SceneConfig


def test_shape_warmup_trains_the_image_tower_only_and_reports_an_accuracy():
    register_model_configs()
    torch.manual_seed(0)
    model = open_clip.create_model(TOY_MODEL, pretrained=None)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    keys = set(model.state_dict())
    lines: list[str] = []
    config = ToyClipConfig(shape_steps=3, shape_batch=16)
    accuracy = shape_warmup(model.visual, config, torch.Generator().manual_seed(0), echo=lines.append)
    assert 0.0 <= accuracy <= 1.0
    assert lines and lines[0].startswith("shape warm-up step     0") and "step     2" in lines[-1]
    changed = {name for name, p in model.named_parameters() if not torch.equal(p, before[name])}
    assert changed and all(name.startswith("visual.") for name in changed)  # the text tower is untouched
    assert set(model.state_dict()) == keys  # the shape head is not part of the model


def test_train_toy_clip_runs_both_stages_and_zero_shape_steps_skips_the_first():
    config = ToyClipConfig(shape_steps=2, shape_batch=8, steps=2, batch_size=8, warmup=1,
                           scene=replace(SceneConfig(), min_objects=1, max_objects=2))
    lines: list[str] = []
    model = train_toy_clip(config, echo=lines.append)
    assert any(line.startswith("shape warm-up") for line in lines)
    assert isinstance(model, torch.nn.Module)
    lines.clear()
    train_toy_clip(replace(config, shape_steps=0), echo=lines.append)
    assert not any(line.startswith("shape warm-up") for line in lines)
