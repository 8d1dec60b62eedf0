"""Toy world v2: vocabulary, the two unseen sets, scene / caption determinism and label correctness."""

from __future__ import annotations

import torch

from adds.toyworld.world import (
    COLOURS,
    SHAPES,
    TEXTURES,
    VOCABULARY,
    SceneConfig,
    captions,
    render_scenes,
    render_single,
    sample_objects,
)


def test_vocabulary_has_144_concepts_and_attribute_words():
    assert VOCABULARY.num_concepts == len(COLOURS) * len(TEXTURES) * len(SHAPES) == 144
    labels = VOCABULARY.labels
    assert len(labels) == len(set(labels)) == 160
    assert labels[0] == "red circle" and labels[6] == "red striped circle" and labels[12] == "red dotted circle"
    assert VOCABULARY.words(6 * 3 + 6 + 2) == (1, 1, 2) and labels[6 * 3 + 6 + 2] == "green striped triangle"
    assert {"red", "striped", "dotted", "ring"} <= set(VOCABULARY.attributes) and "solid" not in labels


def test_unseen_sets_are_disjoint_and_made_as_the_issue_says():
    splits = VOCABULARY.splits()
    seen, u_comb, u_word = set(splits.seen), set(splits.u_comb), set(splits.u_word)
    assert not (seen & u_comb or seen & u_word or u_comb & u_word)
    assert seen | u_comb | u_word == set(range(len(VOCABULARY)))
    labels = VOCABULARY.labels
    # U_word: exactly the labels with the word "dotted" (48 concepts and the attribute label itself)
    assert {labels[i] for i in u_word} == {label for label in labels if "dotted" in label.split()}
    assert len(u_word) == 49
    # U_comb: concepts only, every word of each one labelled in some seen label, the combination never
    seen_words = {word for i in seen for word in labels[i].split()}
    assert all(i < VOCABULARY.num_concepts for i in u_comb) and len(u_comb) == 24
    assert all(set(labels[i].split()) <= seen_words for i in u_comb)
    assert "dotted" not in seen_words
    # every colour and shape word is a seen attribute label
    assert set(COLOURS) | set(SHAPES) | {"striped"} <= {labels[i] for i in seen}


def test_scenes_and_captions_are_deterministic():
    def draw(seed):
        generator = torch.Generator().manual_seed(seed)
        scenes = render_scenes(12, generator, SceneConfig())
        return scenes, captions(scenes, generator)

    (a, ca), (b, cb), (c, cc) = draw(5), draw(5), draw(6)
    assert torch.equal(a.images, b.images) and torch.equal(a.targets, b.targets) and ca == cb
    assert not torch.equal(a.images, c.images) and ca != cc
    assert a.images.shape == (12, 3, 48, 48) and 0 <= a.images.min() and a.images.max() <= 1
    counts = a.objects_per_image()
    assert counts.min() >= 2 and counts.max() <= 6


def test_targets_are_the_objects_and_their_attribute_words():
    scenes = render_scenes(40, torch.Generator().manual_seed(0))
    labels = VOCABULARY.labels
    for image in range(40):
        concepts = set(scenes.concept[scenes.owner == image].tolist())
        positives = set(torch.nonzero(scenes.targets[image]).flatten().tolist())
        words = {word for c in concepts for word in VOCABULARY.phrase(c, True).split()}
        expected = concepts | {labels.index(w) for w in words if w in labels}
        assert positives == expected


def test_every_labelled_object_is_drawn_in_its_colour():
    scenes = render_scenes(30, torch.Generator().manual_seed(1))
    palette = torch.tensor(list(COLOURS.values()))
    for image, concept in zip(scenes.owner.tolist(), scenes.concept.tolist(), strict=True):
        colour = palette[VOCABULARY.words(concept)[0]].view(3, 1, 1)
        close = ((scenes.images[image] - colour).abs().amax(0) < 0.05).sum()
        assert close >= 4, f"{VOCABULARY.labels[concept]} labelled but its colour is not drawn"


def test_textures_differ_solid_striped_dotted():
    images = render_single(torch.tensor([0, 6, 12]), torch.Generator().manual_seed(0), min_scale=0.4, max_scale=0.4)
    red = torch.tensor(COLOURS["red"]).view(3, 1, 1)
    centre = images[:, :, 20:28, 20:28]  # (3, 3, 8, 8) inside the circle
    dark = ((centre - red).abs().amax(1) > 0.3).float().mean((1, 2))  # share of pattern ink
    assert dark[0] < 0.05 < dark[2] < dark[1]  # solid: none; dots: some; stripes: about half


def test_captions_name_present_objects_and_cover_every_word():
    generator = torch.Generator().manual_seed(2)
    scenes = sample_objects(400, generator)
    texts = captions(scenes, generator)
    words = {word for text in texts for word in text.rstrip(".").split()}
    assert set(COLOURS) | set(TEXTURES) | set(SHAPES) <= words
    for image, text in enumerate(texts[:50]):
        present = {VOCABULARY.phrase(c) for c in scenes.concept[scenes.owner == image].tolist()}
        named = text.count(" and ") + 1
        assert 1 <= named <= 3
        assert any(phrase.split()[-1] in text for phrase in present)
