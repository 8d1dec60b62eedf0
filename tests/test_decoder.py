from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from adds.decoder import (
    Decoder,
    DecoderConfig,
    DMDecoderLayer,
    MLDecoderLayer,
    MultiHeadAttention,
    SharedClassifier,
)

D = 32


def _head(kind: str, layers: int) -> tuple[Decoder, SharedClassifier]:
    decoder = Decoder(D, DecoderConfig(kind=kind, num_layers=layers, num_heads=4, ffn_dim=64)).eval()
    return decoder, SharedClassifier(D)


def _logits(decoder, classifier, queries, visual):
    with torch.no_grad():
        return classifier(decoder(queries, visual))


def test_attention_matches_torch_multihead_attention():
    ours = MultiHeadAttention(D, 4).eval()
    ref = nn.MultiheadAttention(D, 4, batch_first=True).eval()
    with torch.no_grad():
        ref.in_proj_weight.copy_(torch.cat([ours.q_proj.weight, ours.k_proj.weight, ours.v_proj.weight]))
        ref.in_proj_bias.copy_(torch.cat([ours.q_proj.bias, ours.k_proj.bias, ours.v_proj.bias]))
        ref.out_proj.weight.copy_(ours.out_proj.weight)
        ref.out_proj.bias.copy_(ours.out_proj.bias)
    q, kv = torch.randn(2, 5, D), torch.randn(2, 7, D)
    torch.testing.assert_close(ours(q, kv, kv), ref(q, kv, kv, need_weights=False)[0], rtol=1e-5, atol=1e-5)


def _eq5_reference(layer: DMDecoderLayer, q: torch.Tensor, v: torch.Tensor):
    """Eq. 5 written out line by line (eval mode: DP is the identity)."""
    ln = lambda norm, x: F.layer_norm(x, (D,), norm.weight, norm.bias, norm.eps)  # noqa: E731
    q1 = ln(layer.norm1, q + q)
    q2 = layer.cross_attn(q1, v, v)
    q3 = ln(layer.norm2, q2 + q1)
    q4 = layer.ffn1(torch.relu(layer.ffn2(q3)))
    q5 = ln(layer.norm3, q4 + q3)
    q_prime = ln(layer.norm_q, q5 + q)
    v1 = layer.visual_attn(v, q5, q5)
    v_prime = ln(layer.norm_v, v1 + v)
    return q_prime, v_prime, q5


def test_dm_layer_is_equation_5():
    layer = DMDecoderLayer(D, num_heads=4, ffn_dim=64).eval()
    for norm in (layer.norm1, layer.norm2, layer.norm3, layer.norm_q, layer.norm_v):  # non-trivial affine params
        nn.init.normal_(norm.weight)
        nn.init.normal_(norm.bias)
    q, v = torch.randn(2, 6, D), torch.randn(2, 9, D)
    with torch.no_grad():
        q_out, v_out = layer(q, v)
        q_ref, v_ref, q5 = _eq5_reference(layer, q, v)
        ml_q, ml_v = MLDecoderLayer.forward(layer, q, v)  # the baseline: same Q5, no skip, V untouched
    torch.testing.assert_close(q_out, q_ref)
    torch.testing.assert_close(v_out, v_ref)
    torch.testing.assert_close(ml_q, q5)
    assert ml_v is v


def test_last_layer_has_no_unused_visual_update():
    layer = DMDecoderLayer(D, num_heads=4, ffn_dim=64).eval()
    last = DMDecoderLayer(D, num_heads=4, ffn_dim=64, update_visual=False).eval()
    last.load_state_dict(layer.state_dict(), strict=False)
    q, v = torch.randn(1, 3, D), torch.randn(1, 4, D)
    q_out, v_out = last(q, v)
    assert v_out is v and not hasattr(last, "visual_attn")
    torch.testing.assert_close(q_out, layer(q, v)[0])
    decoder = Decoder(D, DecoderConfig(num_layers=3, num_heads=4, ffn_dim=64))
    assert [layer.update_visual for layer in decoder.layers] == [True, True, False]
    decoder(torch.randn(4, D), torch.randn(2, 5, D)).sum().backward()
    assert all(p.grad is not None for p in decoder.parameters())  # no dead parameters (DDP-safe)


@pytest.mark.parametrize("layers", [2, 3])
def test_dm_logit_depends_on_the_other_labels_but_ml_does_not(layers):
    visual = torch.randn(2, 9, D)
    labels = torch.randn(3, D)
    extra = torch.cat([labels, torch.randn(4, D)])
    dm = _head("dm", layers)
    ml = _head("ml", layers)
    dm_small, dm_big = _logits(*dm, labels, visual), _logits(*dm, extra, visual)[:, :3]
    ml_small, ml_big = _logits(*ml, labels, visual), _logits(*ml, extra, visual)[:, :3]
    assert (dm_small - dm_big).abs().max() > 1e-4  # visual tokens attended to the new labels' outputs
    torch.testing.assert_close(ml_small, ml_big, rtol=1e-5, atol=1e-6)


def test_single_dm_layer_logits_do_not_depend_on_other_labels():
    visual, labels = torch.randn(2, 9, D), torch.randn(3, D)
    head = _head("dm", 1)
    torch.testing.assert_close(
        _logits(*head, labels, visual), _logits(*head, torch.cat([labels, torch.randn(2, D)]), visual)[:, :3],
        rtol=1e-5, atol=1e-6,
    )


def test_label_permutation_permutes_logits_and_images_are_independent():
    decoder, classifier = _head("dm", 3)
    visual, labels = torch.randn(3, 9, D), torch.randn(5, D)
    logits = _logits(decoder, classifier, labels, visual)
    perm = torch.tensor([3, 0, 4, 1, 2])
    permuted = _logits(decoder, classifier, labels[perm], visual)
    torch.testing.assert_close(permuted, logits[:, perm], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(_logits(decoder, classifier, labels, visual[1:2]), logits[1:2], rtol=1e-5, atol=1e-5)


def test_dropout_only_in_training():
    decoder, classifier = _head("dm", 2)
    visual, labels = torch.randn(2, 9, D), torch.randn(4, D)
    decoder.train()
    assert not torch.equal(classifier(decoder(labels, visual)), classifier(decoder(labels, visual)))
    decoder.eval()
    first = _logits(decoder, classifier, labels, visual)
    torch.testing.assert_close(first, _logits(decoder, classifier, labels, visual))


def test_shared_classifier_is_one_linear_for_all_labels():
    classifier = SharedClassifier(D)
    assert classifier.fc.weight.shape == (1, D) and torch.count_nonzero(classifier.fc.bias) == 0
    row = torch.randn(D)
    out = classifier(torch.stack([row, row, torch.randn(D)]).unsqueeze(0))
    assert out.shape == (1, 3)
    torch.testing.assert_close(out[0, 0], out[0, 1])


def test_stack_depth_and_kind():
    assert len(Decoder(D, DecoderConfig(num_layers=6, num_heads=4)).layers) == 6
    assert all(type(layer) is MLDecoderLayer for layer in Decoder(D, DecoderConfig(kind="ml", num_heads=4)).layers)


@pytest.mark.parametrize(
    "kwargs, message",
    [({"kind": "xl"}, "kind"), ({"num_layers": 0}, "num_layers"), ({"dropout": 1.0}, "dropout")],
)
def test_bad_config(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DecoderConfig(**kwargs)


def test_heads_must_divide_width_and_shapes_are_checked():
    with pytest.raises(ValueError, match="divisible"):
        MultiHeadAttention(30, 8)
    decoder = Decoder(D, DecoderConfig(num_layers=1, num_heads=4))
    with pytest.raises(ValueError, match="visual tokens"):
        decoder(torch.randn(3, D), torch.randn(9, D))
    with pytest.raises(ValueError, match="queries"):
        decoder(torch.randn(3, D + 1), torch.randn(1, 9, D))


def _ml_decoder_reference_train(layer: MLDecoderLayer, tgt: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
    """ML-Decoder's ``TransformerDecoderLayerOptimal.forward`` written out with functional dropouts, in its order:
    dropout1 on tgt, attention-weight dropout (inside MHA1), dropout2 on the attention output, dropout after the
    activation, dropout3 after the FFN (issue 10.7)."""
    p = 0.1
    ln = lambda norm, x: F.layer_norm(x, (D,), norm.weight, norm.bias, norm.eps)  # noqa: E731
    tgt = ln(layer.norm1, tgt + F.dropout(tgt, p, training=True))
    tgt2 = layer.cross_attn(tgt, memory, memory)
    tgt = ln(layer.norm2, tgt + F.dropout(tgt2, p, training=True))
    tgt2 = layer.ffn1(F.dropout(torch.relu(layer.ffn2(tgt)), p, training=True))
    return ln(layer.norm3, tgt + F.dropout(tgt2, p, training=True))


def test_ml_layer_has_ml_decoders_four_dropouts_in_its_positions():
    ml = MLDecoderLayer(D, num_heads=4, ffn_dim=64)
    dropouts = [name for name, module in ml.named_modules() if isinstance(module, nn.Dropout)]
    assert dropouts == ["dropout_q", "dropout_attn", "dropout_act", "dropout_ffn"]
    assert all(getattr(ml, name).p == 0.1 for name in dropouts) and ml.cross_attn.dropout == 0.1
    dm = DMDecoderLayer(D, num_heads=4, ffn_dim=64)  # Eq. 5: DP on Q and after the FFN only
    assert [name for name, m in dm.named_modules() if isinstance(m, nn.Dropout)] == ["dropout_q", "dropout_ffn"]
    # positions: what each dropout receives, checked against the layer's own intermediate values (eval mode)
    ml.eval()
    seen: dict[str, torch.Tensor] = {}
    for name in dropouts:
        getattr(ml, name).register_forward_hook(lambda m, args, out, name=name: seen.__setitem__(name, args[0]))
    q, v = torch.randn(2, 6, D), torch.randn(2, 9, D)
    with torch.no_grad():
        ml(q, v)
        q1 = ml.norm1(q + q)
        q2 = ml.cross_attn(q1, v, v)
        hidden = torch.relu(ml.ffn2(ml.norm2(q2 + q1)))
    torch.testing.assert_close(seen["dropout_q"], q)
    torch.testing.assert_close(seen["dropout_attn"], q2)
    torch.testing.assert_close(seen["dropout_act"], hidden)
    assert seen["dropout_act"].shape == (2, 6, 64)
    torch.testing.assert_close(seen["dropout_ffn"], ml.ffn1(hidden))


def test_ml_layer_trains_like_ml_decoder_and_eval_is_unchanged():
    torch.manual_seed(0)
    layer = MLDecoderLayer(D, num_heads=4, ffn_dim=64)
    modules = ("norm1", "norm2", "norm3", "ffn1", "ffn2") + tuple(f"cross_attn.{n}_proj" for n in "qkv") + (
        "cross_attn.out_proj",
    )
    expected = sorted(f"{m}.{p}" for m in modules for p in ("weight", "bias"))
    assert sorted(layer.state_dict()) == expected  # no new parameters: old checkpoints still load
    q, v = torch.randn(2, 6, D), torch.randn(2, 9, D)
    layer.train()
    torch.manual_seed(1)
    ours = layer(q, v)[0]
    torch.manual_seed(1)
    reference = _ml_decoder_reference_train(layer, q, v)
    torch.testing.assert_close(ours, reference)  # same dropout count, order and rate: same random masks
    assert not torch.equal(ours, layer(q, v)[0])  # train mode: dropout on
    layer.eval()
    with torch.no_grad():
        first, second = layer(q, v)[0], layer(q, v)[0]
        _, _, q5 = _eq5_reference(_as_dm(layer), q, v)  # eval: Q1..Q5 of Eq. 5, as before the change
    torch.testing.assert_close(first, second, rtol=0, atol=0)
    torch.testing.assert_close(first, q5)


def _as_dm(ml: MLDecoderLayer) -> DMDecoderLayer:
    """A DM layer sharing ``ml``'s Q1..Q5 weights (for the Eq. 5 reference; its MHA2/norms are unused for Q5)."""
    dm = DMDecoderLayer(D, num_heads=4, ffn_dim=64).eval()
    dm.load_state_dict(ml.state_dict(), strict=False)
    return dm


@pytest.mark.parametrize("kind, layers", [("dm", 1), ("dm", 3), ("ml", 2)])
@pytest.mark.parametrize("block_rows", [3, 7, 10_000])
@pytest.mark.parametrize("per_image_queries", [False, True])
def test_inference_path_matches_the_reference_path(kind, layers, block_rows, per_image_queries):
    """Eval + no autograd runs the blocked inference path (issue 12.4); eval with autograd on runs the original
    layer-by-layer code. Same numbers within 1e-5, for label blocks of one image, image groups and one block."""
    torch.manual_seed(3)
    decoder, classifier = _head(kind, layers)
    for module in decoder.modules():  # non-trivial norms, so that a skipped or misplaced LN would show
        if isinstance(module, nn.LayerNorm):
            nn.init.normal_(module.weight)
            nn.init.normal_(module.bias)
    decoder.block_rows = block_rows
    visual = torch.randn(3, 9, D)
    queries = torch.randn(3, 5, D) if per_image_queries else torch.randn(5, D)
    with torch.enable_grad():
        reference = classifier(decoder(queries, visual)).detach()
    with torch.no_grad():
        fast = classifier(decoder(queries, visual))
    with torch.inference_mode():
        fast_inference_mode = classifier(decoder(queries, visual))
    torch.testing.assert_close(fast, reference, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fast_inference_mode, reference, rtol=1e-5, atol=1e-5)


def test_inference_path_keeps_autocast_dtypes():
    decoder, classifier = _head("dm", 2)
    visual, labels = torch.randn(2, 9, D), torch.randn(6, D)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        with torch.enable_grad():
            reference = decoder(labels, visual).detach()
        with torch.no_grad():
            fast = decoder(labels, visual)
    assert fast.dtype == reference.dtype
    torch.testing.assert_close(fast.float(), reference.float(), rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("batch, k, rows", [(3, 5, 3), (3, 5, 10), (4, 2, 5), (1, 9, 4), (2, 1, 1)])
def test_blocks_cover_every_image_label_pair_once(batch, k, rows):
    from adds.decoder import _blocks

    seen = torch.zeros(batch, k, dtype=torch.int64)
    for images, labels in _blocks(batch, k, rows):
        seen[images, labels] += 1
    assert torch.equal(seen, torch.ones_like(seen))
