"""Shared fixtures: tiny random open_clip towers that go through exactly the same code path as real models."""

from __future__ import annotations

import pytest
import torch

from adds.towers import TINY_MODEL, TowerConfig, load_towers


@pytest.fixture(scope="session")
def tiny_towers():
    """Frozen tiny CLIP towers (random weights, seed 0): 32 px input, 17 tokens per crop, joint dim 32."""
    return load_towers(TowerConfig(model=TINY_MODEL, pretrained=None, seed=0))


@pytest.fixture(scope="session")
def tiny_towers_unaligned():
    return load_towers(TowerConfig(model=TINY_MODEL, pretrained=None, seed=0, aligned=False))


@pytest.fixture(autouse=True, scope="session")
def _label_cache_in_a_temporary_folder(tmp_path_factory):
    """Taggers keep label embeddings on disk (adds.label_cache): tests write them below a temporary folder, never
    into the user's ~/.cache/adds."""
    import os

    previous = os.environ.get("ADDS_CACHE_DIR")
    os.environ["ADDS_CACHE_DIR"] = str(tmp_path_factory.mktemp("adds-cache"))
    yield
    if previous is None:
        os.environ.pop("ADDS_CACHE_DIR", None)
    else:
        os.environ["ADDS_CACHE_DIR"] = previous


@pytest.fixture(autouse=True)
def _seed_and_one_thread():
    """Seed 0, and one intra-op thread: tiny models run as fast on one, and far faster on a loaded machine (no OpenMP
    spin-waits); the previous thread count is restored afterwards."""
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
