"""The toy world end to end: the committed tiny CLIP, and a reduced quick run that must learn."""

from __future__ import annotations

from dataclasses import replace

import pytest

from adds.decoder import DecoderConfig
from adds.toyworld.experiments import ToyWorldConfig, format_tables, run_experiments
from adds.toyworld.tinyclip import TOY_MODEL, load_toy_towers, weights_path, zero_shot_accuracy


@pytest.fixture(scope="module")
def toy_towers():
    return load_toy_towers(0)


def test_committed_tiny_clip_loads_through_the_tower_path(toy_towers):
    assert toy_towers.source["model"] == TOY_MODEL
    assert toy_towers.source["pretrained"] == str(weights_path(0)) and len(toy_towers.source["file_sha256"]) == 64
    assert toy_towers.image_size == 32 and toy_towers.embed_dim == 64
    assert weights_path(0).stat().st_size < 8_000_000  # a few MB, committed
    other = load_toy_towers(1)
    assert other.identity()["fingerprint"] != toy_towers.identity()["fingerprint"]


def test_tiny_clip_zero_shot_retrieval_is_far_above_chance(toy_towers):
    accuracy = zero_shot_accuracy(toy_towers.clip, toy_towers.tokenizer, count=480, seed=777)
    assert accuracy["concept"] > 0.6  # 48-way: chance is 2.1%
    assert accuracy["colour"] > 0.9 and accuracy["shape"] > 0.6


def test_quick_run_learns_beyond_an_untrained_head_and_prints_tables():
    config = replace(
        ToyWorldConfig.quick(), seeds=(0,), train_scenes=500, test_scenes=200, epochs=10,
        experiments=("conventional", "zero_shot"), decoder=DecoderConfig(num_layers=2, num_heads=4, ffn_dim=64),
    )
    result = run_experiments(config, echo=lambda line: None)
    conventional = result["rows"]["conventional"]
    assert conventional["mAP"][0] > conventional["untrained mAP"][0] + 12
    # Unseen concepts are ~4% of the entries: a random ranking gives an mAP of about 5-7%.
    zero_shot = result["rows"]["zero_shot"]
    assert zero_shot["mAP"][0] > 10
    tables = format_tables(result)
    assert "Table 1 (toy)" in tables and "Table 2 (toy)" in tables and "±" in tables
