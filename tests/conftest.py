"""Shared fixtures: tiny random open_clip towers that go through exactly the same code path as real models."""

from __future__ import annotations

import pytest
import torch

from adds.towers import TINY_MODEL, TowerConfig, load_towers

# Tests use tiny models: one intra-op thread avoids oversubscription (and is faster on a busy 2-core machine).
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_towers():
    """Frozen tiny CLIP towers (random weights, seed 0): 32 px input, 17 tokens per crop, joint dim 32."""
    return load_towers(TowerConfig(model=TINY_MODEL, pretrained=None, seed=0))


@pytest.fixture(scope="session")
def tiny_towers_unaligned():
    return load_towers(TowerConfig(model=TINY_MODEL, pretrained=None, seed=0, aligned=False))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
