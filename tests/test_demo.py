from __future__ import annotations

from adds.demo import DemoConfig, run_demo


def test_demo_trains_tags_and_round_trips_a_checkpoint():
    lines: list[str] = []
    result = run_demo(DemoConfig(test_images=64, steps=200), echo=lines.append)
    assert result["trained_map"] > result["untrained_map"] + 0.25
    assert result["last_loss"] < result["first_loss"]
    assert result["checkpoint_identical"] == 1.0
    assert any(line.startswith("tags for held-out image") for line in lines)
