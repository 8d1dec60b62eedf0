"""``TaggerConfig.shortlist`` / ``adds tag --shortlist M``: the two-pass scoring of adds.shortlist in the tagger."""

from __future__ import annotations

import pytest
import torch

from adds.decoder import DecoderConfig
from adds.model import ADDS, ADDSConfig
from adds.tagger import Tagger, TaggerConfig

LABELS = [f"word {i}" for i in range(12)]


@pytest.fixture()
def head(tiny_towers):
    torch.manual_seed(0)
    return ADDS(ADDSConfig(decoder=DecoderConfig(num_layers=1, num_heads=4, ffn_dim=32)), towers=tiny_towers).eval()


def test_shortlist_at_least_the_vocabulary_is_full_decoding(head):
    images = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    full = Tagger(head).scores(images, LABELS)
    assert torch.equal(Tagger(head, TaggerConfig(shortlist=len(LABELS))).scores(images, LABELS), full)


def test_shortlist_keeps_the_heads_scores_for_candidates_and_ranks_the_rest_below(head):
    images = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    full = Tagger(head).scores(images, LABELS)
    short = Tagger(head, TaggerConfig(shortlist=3)).scores(images, LABELS)
    for row_full, row_short in zip(full, short, strict=True):
        kept = row_short > 1e-8
        assert int(kept.sum()) == 3
        # a one-layer DM-decoder scores each label on its own: candidates keep their full-call score
        assert torch.allclose(row_short[kept], row_full[kept], atol=1e-6)
        assert float(row_short[~kept].max()) < float(row_short[kept].min())


def test_shortlist_is_described_and_validated(head):
    assert Tagger(head, TaggerConfig(shortlist=5)).describe()["shortlist"] == 5
    with pytest.raises(ValueError, match="shortlist"):
        TaggerConfig(shortlist=0)
