"""The toy world v2 end to end: the committed tiny CLIPs, gates G1/G2 and the open-vocabulary rule on fixed seeds."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from adds.openvocab import OpenVocabulary, fit_combiner, prior_cosine
from adds.toyworld.encoders import random_embeddings
from adds.toyworld.lab import LabConfig, build_seed, head_logits, metrics, run_lab, train_head
from adds.toyworld.report import CLAIMS, format_report, gates, verdicts
from adds.toyworld.toyclip import TOY_MODEL, load_toy_towers, retrieval_accuracy, weights_path
from adds.toyworld.world import VOCABULARY


@pytest.fixture(scope="module")
def toy_towers():
    return load_toy_towers(0)


def test_committed_tiny_clips_load_through_the_tower_path(toy_towers):
    assert toy_towers.source["model"] == TOY_MODEL
    assert toy_towers.source["pretrained"] == str(weights_path(0)) and len(toy_towers.source["file_sha256"]) == 64
    assert toy_towers.image_size == 48 and toy_towers.embed_dim == 64 and toy_towers.tokens_per_image == 65
    assert weights_path(0).stat().st_size < 8_000_000  # a few MB, committed
    control = load_toy_towers(1)
    assert control.identity()["fingerprint"] != toy_towers.identity()["fingerprint"]


@pytest.mark.parametrize("seed", [0, 1])
def test_tiny_clips_retrieve_far_above_chance(seed, toy_towers):
    towers = toy_towers if seed == 0 else load_toy_towers(1)
    accuracy = retrieval_accuracy(towers.clip, towers.tokenizer, count=576, seed=777)
    # 144-way: chance is 0.7 %; per word 1/8, 1/3, 1/6. Measured (count=576, seed 777; docs/toyworld.md): concept
    # 56.8 / 23.8 %, colour 100 / 100 %, texture 91.7 / 38.7 %, shape 60.1 / 57.8 % (seeds 0 / 1). Shape comes
    # from the image tower's shape warm-up; without it shape stayed at the 1/6 chance level.
    assert accuracy["concept"] > (0.4 if seed == 0 else 0.15)
    assert accuracy["colour"] > 0.9
    assert accuracy["shape"] > 0.45
    assert accuracy["texture"] > (0.8 if seed == 0 else 0.34)


def test_gates_g1_g2_and_the_open_vocabulary_rule_on_fixed_seeds(toy_towers):
    """One small seed (fast): G1 and G2 computed by the runner's own gate code, and the open-vocabulary mode keeps
    every seen label's score exactly while changing the unseen ones.

    G1 is *computed*, not required: at this size the head is data-starved and does not beat the class-token cosine
    on seen labels (it does from about 4,800 training scenes on: measured, docs/toyworld.md); the head must still
    learn far above chance.
    """
    config = replace(LabConfig.quick(), seeds=(4,), train_scenes=500, val_scenes=200, test_scenes=250, epochs=5)
    data = build_seed(config, 4, toy_towers)
    sets = VOCABULARY.splits().as_dict()
    seen, targets = sets["seen"], data.test_targets
    head = train_head(toy_towers, data.train_tokens, data.train_targets[:, seen], data.labels[seen], config, 4)
    logits = head_logits(head, data.test_tokens, data.labels)  # (N, 160), every label in one call
    cosine = prior_cosine(data.test_tokens, data.labels, toy_towers.tokens_per_image)
    noise = random_embeddings(VOCABULARY.labels, seed=4)
    random_head = train_head(toy_towers, data.train_tokens, data.train_targets[:, seen], noise[seen], config, 4)
    random_logits = head_logits(random_head, data.test_tokens, noise)
    chance = torch.rand(targets.shape, generator=torch.Generator().manual_seed(0))

    def row(scores):
        return {f"{name} mAP": [metrics(scores, targets, cols)["mAP"]] for name, cols in sets.items()}

    rows = {"T2 ADDS": row(logits), "T2 cosine": row(cosine), "T6 random": row(random_logits), "chance": row(chance)}
    result = gates(rows)
    assert result["G1 head beats cosine on seen labels"] == (rows["T2 ADDS"]["seen mAP"][0]
                                                           > rows["T2 cosine"]["seen mAP"][0])
    assert rows["T2 ADDS"]["seen mAP"][0] > rows["chance"]["seen mAP"][0] + 5, rows
    assert result["G2 random matrix collapses on unseen sets"], rows
    # the open-vocabulary rule: a fold head without 20 seen labels gives the fit data
    pseudo = set(seen[:20])
    fold_seen = [c for c in seen if c not in pseudo]
    fold = train_head(toy_towers, data.train_tokens, data.train_targets[:, fold_seen], data.labels[fold_seen],
                      config, 4)
    fit_h = head_logits(fold, data.val_tokens, data.labels[seen])
    fit_p = prior_cosine(data.val_tokens, data.labels[seen], toy_towers.tokens_per_image)
    combiner = fit_combiner(fit_h, fit_p, data.val_targets[:, seen], torch.tensor([c in pseudo for c in seen]))
    names = VOCABULARY.labels
    mixed = OpenVocabulary(tuple(names[c] for c in seen), combiner).logits(logits, cosine, names)
    assert torch.equal(mixed[:, seen], logits[:, seen])
    unseen = sets["U_comb"] + sets["U_word"]
    assert not torch.allclose(mixed[:, unseen], logits[:, unseen])


@pytest.mark.slow
def test_full_run_prints_every_table_gate_and_verdict():
    """The full run (about 18 minutes on 2 cores): every table, gate and claim gets a computed value."""
    result = run_lab(LabConfig.full(), echo=lambda line: None, workers=2)
    report = format_report(result)
    for title in ("Table 1", "Table 2", "Tables 6/9", "Table 5", "Table 7", "Tables 3/4", "Table 8", "Issue 10.9"):
        assert title in report
    assert set(verdicts(result["rows"])) == set(CLAIMS)
    assert len(gates(result["rows"])) == 3
