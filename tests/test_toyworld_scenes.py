from __future__ import annotations

import torch

from adds.toyworld.scenes import COLOURS, SHAPES, VOCABULARY, SceneConfig, render_objects, render_scenes


def test_vocabulary_composes_colours_and_shapes():
    assert len(VOCABULARY) == len(COLOURS) * len(SHAPES) == 48
    assert VOCABULARY.concepts[0] == "red circle" and VOCABULARY.split(7) == (1, 1)
    seen, unseen = VOCABULARY.zero_shot_split()
    assert len(unseen) == 12 and sorted(seen + unseen) == list(range(48))
    # every colour and every shape word still occurs among the seen concepts
    assert {VOCABULARY.split(i)[0] for i in seen} == set(range(len(COLOURS)))
    assert {VOCABULARY.split(i)[1] for i in seen} == set(range(len(SHAPES)))


def test_scenes_are_deterministic_and_in_range():
    a = render_scenes(20, torch.Generator().manual_seed(5), SceneConfig(size=48))
    b = render_scenes(20, torch.Generator().manual_seed(5), SceneConfig(size=48))
    c = render_scenes(20, torch.Generator().manual_seed(6), SceneConfig(size=48))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])
    assert a[0].shape == (20, 3, 48, 48) and 0 <= a[0].min() and a[0].max() <= 1


def test_every_labelled_concept_is_visible_in_its_colour():
    images, targets = render_scenes(60, torch.Generator().manual_seed(0), SceneConfig(size=64))
    counts = targets.sum(1)
    assert counts.min() >= 1 and counts.max() <= 4
    palette = torch.tensor(list(COLOURS.values()))
    for image, target in zip(images, targets, strict=True):
        for concept in torch.nonzero(target).flatten().tolist():
            colour = palette[VOCABULARY.split(concept)[0]].view(3, 1, 1)
            close = ((image - colour).abs().amax(0) < 0.05).sum()
            assert close >= 10, f"concept {VOCABULARY.concepts[concept]} labelled but its colour is not drawn"


def test_concept_pool_restricts_the_labels():
    pool = [0, 5, 9]
    _, targets = render_scenes(50, torch.Generator().manual_seed(1), concept_pool=pool)
    assert set(torch.nonzero(targets)[:, 1].tolist()) <= set(pool)


def test_single_objects_differ_by_shape_not_only_colour():
    generator = torch.Generator().manual_seed(0)
    circle = render_objects(torch.tensor([0]), 32, generator, min_scale=0.4, max_scale=0.4, noise=0.0)
    generator = torch.Generator().manual_seed(0)
    ring = render_objects(torch.tensor([4]), 32, generator, min_scale=0.4, max_scale=0.4, noise=0.0)
    red = torch.tensor(COLOURS["red"]).view(3, 1)
    centre_circle = circle[0, :, 15:17, 15:17].reshape(3, -1)
    centre_ring = ring[0, :, 15:17, 15:17].reshape(3, -1)
    assert (centre_circle - red).abs().max() < 0.05  # a filled circle is red in the middle
    assert (centre_ring - red).abs().max() > 0.3  # a ring is not
