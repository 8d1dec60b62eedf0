"""Open-vocabulary mode: seen words keep the head's score, the fitted weight, open_vocab.json, the toy world."""

from __future__ import annotations

import json

import pytest
import torch

from adds.decoder import DecoderConfig
from adds.metrics import mean_average_precision
from adds.model import ADDS, ADDSConfig
from adds.openvocab import (
    OPEN_VOCAB_NAME,
    Combiner,
    OpenVocabulary,
    fit_and_save,
    fit_combiner,
    prior_cosine,
    standardise,
)
from adds.tagger import Tagger, TaggerConfig

SMALL = DecoderConfig(num_layers=2, num_heads=4, ffn_dim=64)


def test_seen_words_keep_the_heads_logit_exactly_and_new_words_get_the_combiner():
    generator = torch.Generator().manual_seed(0)
    head, prior = torch.randn(6, 5, generator=generator), torch.rand(6, 5, generator=generator)
    labels = ["cat", "new one", "dog", "other new", "sea"]
    ov = OpenVocabulary(("cat", "dog", "sea", "unused"), Combiner(prior_weight=0.3, scale=2.0, bias=-1.0))
    out = ov.logits(head, prior, labels)
    seen = torch.tensor([True, False, True, False, True])
    assert torch.equal(out[:, seen], head[:, seen])  # bit for bit
    expected = ov.combiner(head, prior)[:, ~seen]
    assert torch.allclose(out[:, ~seen], expected)
    assert not torch.allclose(out[:, ~seen], head[:, ~seen])
    assert ov.logits(head[:, seen], prior[:, seen], ["cat", "dog", "sea"]) is not None
    assert torch.equal(ov.logits(head[:, seen], prior[:, seen], ["cat", "dog", "sea"]), head[:, seen])


def test_standardise_per_image_and_with_fixed_statistics():
    scores = torch.tensor([[1.0, 2.0, 3.0], [10.0, 10.0, 10.0]])
    z = standardise(scores)
    assert torch.allclose(z[0], torch.tensor([-1.0, 0.0, 1.0]))
    assert torch.allclose(z[1], torch.zeros(3))  # no spread: no information, no division by zero
    assert torch.allclose(standardise(scores, 2.0, 4.0), (scores - 2.0) / 4.0)
    assert torch.equal(standardise(scores[:, :1]), torch.zeros(2, 1))


@pytest.mark.parametrize("true_weight", [0.2, 0.7])
def test_the_fitted_weight_recovers_a_known_mix(true_weight):
    """Targets generated from ``(1 - a) * head + a * prior`` (global statistics are ~ N(0, 1)): the fit finds a."""
    generator = torch.Generator().manual_seed(1)
    head = torch.randn(2000, 12, generator=generator)
    prior = torch.randn(2000, 12, generator=generator)
    latent = (1 - true_weight) * head + true_weight * prior + 0.3 * torch.randn(2000, 12, generator=generator)
    targets = (latent > 1.0).float()
    new = torch.tensor([True] * 8 + [False] * 4)
    combiner = fit_combiner(head, prior, targets, new, "global")
    assert combiner.prior_weight == pytest.approx(true_weight, abs=0.05)
    assert combiner.scale > 0  # a higher mix means a more likely positive
    # Platt scaling: the mean predicted probability matches the positive rate on the fit labels.
    predicted = combiner(head, prior)[:, new].sigmoid().mean()
    assert float(predicted) == pytest.approx(float(targets[:, new].mean()), abs=0.01)


def test_fit_refuses_no_held_out_label():
    with pytest.raises(ValueError, match="at least one"):
        fit_combiner(torch.zeros(3, 2), torch.zeros(3, 2), torch.zeros(3, 2), [False, False])


def test_save_load_round_trip_is_plain_json(tmp_path):
    generator = torch.Generator().manual_seed(2)
    head, prior = torch.randn(200, 6, generator=generator), torch.randn(200, 6, generator=generator)
    targets = ((head + prior) > 1).float()
    saved = fit_and_save(tmp_path, ["a", "b", "c", "d", "e", "f"], head, prior, targets,
                         [False, False, False, True, True, True], "global", info={"note": "test"})
    record = json.loads((tmp_path / OPEN_VOCAB_NAME).read_text(encoding="utf-8"))
    assert record["vocabulary"] == ["a", "b", "c", "d", "e", "f"] and record["info"]["note"] == "test"
    loaded = OpenVocabulary.load(tmp_path)
    assert loaded.vocabulary == saved.vocabulary and loaded.combiner == saved.combiner
    assert OpenVocabulary.exists(tmp_path)
    labels = ["a", "zz", "f"]
    assert torch.equal(loaded.logits(head[:, :3], prior[:, :3], labels), saved.logits(head[:, :3], prior[:, :3],
                                                                                     labels))


def test_malformed_open_vocab_json_names_the_file(tmp_path):
    (tmp_path / OPEN_VOCAB_NAME).write_text('{"format": "adds-open-vocab", "format_version": 1, "vocabulary": '
                                            '["a"], "combiner": {"prior_weight": 3}}', encoding="utf-8")
    with pytest.raises(ValueError, match=OPEN_VOCAB_NAME):
        OpenVocabulary.load(tmp_path)
    (tmp_path / OPEN_VOCAB_NAME).write_text("not json", encoding="utf-8")
    with pytest.raises(ValueError, match="cannot read"):
        OpenVocabulary.load(tmp_path)
    with pytest.raises(ValueError, match="not found"):
        OpenVocabulary.load(tmp_path / "elsewhere")


def test_prior_cosine_is_the_class_token_cosine_max_over_crops():
    generator = torch.Generator().manual_seed(3)
    tokens = torch.randn(2, 3 * 4, 8, generator=generator)  # 3 crops of 4 tokens
    labels = torch.nn.functional.normalize(torch.randn(5, 8, generator=generator), dim=-1)
    expected = torch.stack([torch.nn.functional.normalize(tokens[:, 4 * c], dim=-1) @ labels.T for c in range(3)])
    assert torch.allclose(prior_cosine(tokens, labels, 4), expected.amax(dim=0), atol=1e-6)
    assert torch.allclose(prior_cosine(tokens[:, :4], labels, 4), expected[0], atol=1e-6)


# -- the Tagger ---------------------------------------------------------------------------------------------------


@pytest.fixture()
def checkpoint(tmp_path, tiny_towers):
    model = ADDS(ADDSConfig(decoder=SMALL), towers=tiny_towers).eval()
    model.save_pretrained(tmp_path)
    OpenVocabulary(("red square", "blue circle"), Combiner(prior_weight=0.5, scale=1.5, bias=-0.5,
                                                           standardise="global")).save(tmp_path)
    return tmp_path


def test_tagger_open_vocabulary_keeps_seen_scores_and_changes_new_ones(checkpoint):
    labels = ["red square", "a dog", "blue circle", "green triangle"]
    images = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    plain = Tagger.from_checkpoint(checkpoint, device="cpu", config=TaggerConfig(open_vocabulary=False))
    auto = Tagger.from_checkpoint(checkpoint, device="cpu")  # default: on when open_vocab.json exists
    assert plain.open_vocabulary is None and auto.open_vocabulary is not None
    a, b = plain.scores(images, labels), auto.scores(images, labels)
    assert torch.equal(a[:, [0, 2]], b[:, [0, 2]])
    assert not torch.allclose(a[:, [1, 3]], b[:, [1, 3]])
    assert auto.describe()["open_vocabulary"] is True and plain.describe()["open_vocabulary"] is False


def test_tagger_open_vocabulary_required_without_the_file_is_an_error(tmp_path, tiny_towers):
    ADDS(ADDSConfig(decoder=SMALL), towers=tiny_towers).save_pretrained(tmp_path)
    assert Tagger.from_checkpoint(tmp_path, device="cpu").open_vocabulary is None
    with pytest.raises(ValueError, match=OPEN_VOCAB_NAME):
        Tagger.from_checkpoint(tmp_path, device="cpu", config=TaggerConfig(open_vocabulary=True))


# -- the toy world --------------------------------------------------------------------------------------------------


def test_toy_world_open_vocabulary_beats_the_head_on_unseen_and_keeps_seen():
    """A small fixed-seed toy-world v2 run (seconds): the measured property at this size, see docs/tagging.md."""
    from dataclasses import replace

    from adds.toyworld.lab import LabConfig, build_seed, head_logits, train_head
    from adds.toyworld.toyclip import load_toy_towers
    from adds.toyworld.world import VOCABULARY

    towers = load_toy_towers(0)
    config = replace(LabConfig.quick(), train_scenes=300, val_scenes=200, test_scenes=200, epochs=3)
    world = build_seed(config, 0, towers)
    splits = VOCABULARY.splits()
    seen, unseen = splits.seen, splits.u_comb + splits.u_word
    labels = world.labels
    fold_seen, pseudo = seen[20:], seen[:20]
    head = train_head(towers, world.train_tokens, world.train_targets[:, seen], labels[seen], config, 0)
    fold = train_head(towers, world.train_tokens, world.train_targets[:, fold_seen], labels[fold_seen], config, 0)
    tpc = towers.tokens_per_image
    fit_h = head_logits(fold, world.val_tokens, labels[seen])
    combiner = fit_combiner(fit_h, prior_cosine(world.val_tokens, labels[seen], tpc), world.val_targets[:, seen],
                            torch.tensor([c in pseudo for c in seen]), "global")
    names = VOCABULARY.labels
    ov = OpenVocabulary(tuple(names[c] for c in seen), combiner)
    h = head_logits(head, world.test_tokens, labels)  # all 160 in one call
    p = prior_cosine(world.test_tokens, labels, tpc)
    out = ov.logits(h, p, names)
    t = world.test_targets
    assert torch.equal(out[:, seen], h[:, seen])

    def m(scores, cols):
        return 100 * mean_average_precision(scores[:, cols], t[:, cols])

    assert m(out, unseen) > m(h, unseen) + 5  # far above the head on new words
    assert m(out, unseen) >= m(p, unseen) - 1.5  # and about as good as the cosine (measured: see the docs)


def test_a_head_no_better_than_the_prior_falls_back_to_the_prior_exactly():
    """min_gain (issue 9.6, "never worse than CLIP on new words"): a useless head gets weight 1, and with global
    standardisation the mix then ranks every label's images exactly as the raw prior does."""
    generator = torch.Generator().manual_seed(3)
    targets = (torch.rand(300, 6, generator=generator) < 0.3).float()
    prior = targets + 0.8 * torch.randn(300, 6, generator=generator)  # informative
    head = torch.randn(300, 6, generator=generator)  # noise
    combiner = fit_combiner(head, prior, targets, [True] * 6)
    assert combiner.prior_weight == 1.0 and combiner.standardise == "global"
    assert mean_average_precision(combiner(head, prior), targets) == pytest.approx(
        mean_average_precision(prior, targets), abs=1e-12)
    # a clearly better head is still mixed in
    good = 3 * targets + 0.3 * torch.randn(300, 6, generator=generator)
    assert fit_combiner(good, prior, targets, [True] * 6).prior_weight < 1.0
