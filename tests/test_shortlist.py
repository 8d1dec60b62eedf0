"""Large-vocabulary shortlist (adds.shortlist) on tiny random towers: full decoding when M >= k (bit for bit),
the shortlisted labels scored by the head on exactly their own label set, and ranks consistent with the first pass
below the shortlist."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from adds.decoder import DecoderConfig
from adds.model import ADDS, ADDSConfig
from adds.openvocab import prior_cosine
from adds.pyramid import PyramidConfig
from adds.shortlist import DEFAULT_SHORTLIST, ShortlistConfig, shortlist, shortlist_logits


def _model(towers, layers: int = 2, kind: str = "dm", levels=None) -> ADDS:
    decoder = DecoderConfig(kind=kind, num_layers=layers, num_heads=2, ffn_dim=64)
    model = ADDS(ADDSConfig(towers=towers.config, decoder=decoder, pyramid=PyramidConfig(levels=levels)),
                 towers=towers).eval()
    for param in model.trainable_parameters():
        param.data.add_(0.05 * torch.randn_like(param))
    return model


def _inputs(model: ADDS, batch: int = 4, k: int = 30, size: int = 32):
    tokens = model.forward_features(torch.rand(batch, 3, size, size))  # (B, N, D)
    labels = F.normalize(torch.randn(k, model.towers.embed_dim), dim=-1)  # (k, D)
    return tokens, labels


@pytest.mark.parametrize("size,min_labels", [(30, None), (100, None), (8, 30), (8, 1000)])
def test_no_label_dropped_is_full_decoding_exactly(tiny_towers, size, min_labels):
    model = _model(tiny_towers)
    tokens, labels = _inputs(model)
    config = ShortlistConfig(size=size, min_labels=min_labels)
    assert not config.applies(labels.shape[0])
    out = shortlist(model, tokens, labels, config)
    with torch.no_grad():
        full = model.forward_head(tokens, labels)
    assert not out.shortlisted and torch.equal(out.logits, full)
    assert bool(out.mask.all())


def test_shortlisted_logits_are_the_head_on_each_images_own_shortlist(tiny_towers):
    model = _model(tiny_towers, layers=2)
    tokens, labels = _inputs(model, batch=5, k=40)
    out = shortlist(model, tokens, labels, ShortlistConfig(size=7))
    assert out.shortlisted and out.indices.shape == (5, 7)
    first = prior_cosine(tokens, labels, tiny_towers.tokens_per_image)  # (B, k): the documented first pass
    torch.testing.assert_close(out.first_pass, first)
    for b in range(5):
        expected_ids = first[b].topk(7).indices.sort().values
        assert torch.equal(out.indices[b], expected_ids)  # the top M by the first pass, vocabulary order
        with torch.no_grad():
            alone = model.forward_head(tokens[b:b + 1], labels[expected_ids])[0]  # one image, its own 7 labels
        torch.testing.assert_close(out.logits[b, expected_ids], alone, atol=1e-5, rtol=1e-5)


def test_ranks_are_consistent(tiny_towers):
    """Every shortlisted label above every other label of the image; the others ordered by the first pass."""
    model = _model(tiny_towers, levels=(0, 1))
    tokens, labels = _inputs(model, batch=3, k=50, size=64)
    out = shortlist(model, tokens, labels, ShortlistConfig(size=10))
    mask = out.mask
    for b in range(3):
        inside, outside = out.logits[b, mask[b]], out.logits[b, ~mask[b]]
        assert inside.numel() == 10 and outside.numel() == 40
        assert float(inside.min()) > float(outside.max())
        order_logit = out.logits[b, ~mask[b]].argsort(descending=True)
        order_first = out.first_pass[b, ~mask[b]].argsort(descending=True)
        assert torch.equal(order_logit, order_first)
        assert float(outside.max()) <= -21.0 + 1e-4  # default floor: sigmoid below 1e-9


def test_label_set_changes_dm_logits_but_not_a_one_layer_head(tiny_towers):
    """Documented behaviour: with >= 2 DM layers a label's logit depends on the other labels, with one it does not."""
    tokens, labels = _inputs(_model(tiny_towers), batch=2, k=40)
    for layers, depends in ((1, False), (2, True)):
        model = _model(tiny_towers, layers=layers)
        out = shortlist(model, tokens, labels, ShortlistConfig(size=6))
        with torch.no_grad():
            full = model.forward_head(tokens, labels)  # (B, k)
        diff = (out.logits.gather(1, out.indices) - full.gather(1, out.indices)).abs().max()
        assert (float(diff) > 1e-4) == depends


def test_a_head_as_first_pass(tiny_towers):
    model = _model(tiny_towers, layers=2)
    cheap = _model(tiny_towers, layers=1, kind="ml")
    tokens, labels = _inputs(model, batch=3, k=25)

    def first_pass(t, e):
        return cheap.forward_head(t, e)

    out = shortlist(model, tokens, labels, ShortlistConfig(size=5), first_pass=first_pass)
    with torch.no_grad():
        expected = cheap.forward_head(tokens, labels)
    assert torch.equal(out.indices, expected.topk(5, dim=1).indices.sort(dim=1).values)
    mask = out.mask
    for b in range(3):
        assert float(out.logits[b, mask[b]].min()) > float(out.logits[b, ~mask[b]].max())
        assert torch.equal(out.logits[b, ~mask[b]].argsort(descending=True),
                           expected[b, ~mask[b]].argsort(descending=True))
    assert torch.equal(shortlist_logits(model, tokens, labels, ShortlistConfig(size=5), first_pass), out.logits)


def test_low_head_logits_push_the_fill_below_them(tiny_towers):
    model = _model(tiny_towers)
    with torch.no_grad():
        model.classifier.fc.bias.fill_(-50.0)  # every head logit far below the default floor
    tokens, labels = _inputs(model, batch=2, k=20)
    out = shortlist(model, tokens, labels, ShortlistConfig(size=4))
    for b in range(2):
        assert float(out.logits[b, out.mask[b]].min()) > float(out.logits[b, ~out.mask[b]].max())


def test_config_checks_and_default(tiny_towers_unaligned):
    for bad in ({"size": 0}, {"size": 2.5}, {"min_labels": -1}, {"floor_logit": float("nan")}):
        with pytest.raises(ValueError):
            ShortlistConfig(**bad)
    assert ShortlistConfig(size=10).applies(11) and not ShortlistConfig(size=10).applies(10)
    assert not ShortlistConfig(size=10, min_labels=100).applies(50)
    assert DEFAULT_SHORTLIST is None or isinstance(DEFAULT_SHORTLIST, ShortlistConfig)
    model = _model(tiny_towers_unaligned)
    tokens = model.forward_features(torch.rand(1, 3, 32, 32))
    with pytest.raises(ValueError, match="aligned"):
        shortlist(model, tokens, F.normalize(torch.randn(20, 32), dim=-1), ShortlistConfig(size=3))


def test_benchmark_script_runs_quick(tmp_path):
    """benchmarks/shortlist.py --quick end to end on the toy world (tiny sizes; no timing or quality assertions)."""
    import importlib.util
    import json
    import sys
    from pathlib import Path

    benchmarks = Path(__file__).resolve().parents[1] / "benchmarks"
    spec = importlib.util.spec_from_file_location("benchmarks_shortlist", benchmarks / "shortlist.py")
    bench = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = bench
    try:
        spec.loader.exec_module(bench)
        assert bench.main(["--quick", "--sizes", "8", "--heads", "dm2", "--out", str(tmp_path / "r.json")]) == 0
    finally:
        sys.modules.pop("benchmarks_shortlist", None)
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["k"] == 160 + 100 and result["sizes"] == [8]  # the toy labels + 100 distractors (--quick)
    assert 0.0 <= result["rows"]["M=8 recall"][0] <= 1.0
    assert set(result["timing"]["speedup"]) == {"head M=8", "end-to-end M=8"}
