"""Training-time augmentation (issue 10.8): torchvision v2 flip / RandAugment / Cutout, deterministic per seed."""

from __future__ import annotations

import pytest
import torch

from adds.data.augment import AugmentConfig, Augmenter, OnlineAugmentedDataset, augmentation_seed
from adds.data.base import MultiLabelDataset, Record


def _image() -> torch.Tensor:
    return torch.rand(3, 40, 40, generator=torch.Generator().manual_seed(0))  # (3, S, S)


def test_augmenter_is_a_function_of_its_seed_and_leaves_the_global_rng_alone():
    augment = Augmenter(AugmentConfig())
    image = _image()
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    first = augment(image, 5)
    assert torch.equal(torch.random.get_rng_state(), before)
    assert torch.equal(augment(image, 5), first) and first.shape == image.shape and first.dtype == torch.float32
    outputs = [augment(image, seed) for seed in range(8)]
    assert len({tuple(out.flatten()[:64].tolist()) for out in outputs}) == 8
    assert all(0.0 <= out.min() and out.max() <= 1.0 for out in outputs)


def test_each_augmentation_can_be_switched_off():
    image = _image()
    none = Augmenter(AugmentConfig(flip=False, randaugment=False, cutout=False))
    assert torch.equal(none(image, 1), image)
    flip_only = Augmenter(AugmentConfig(randaugment=False, cutout=False))
    flipped = [flip_only(image, seed) for seed in range(16)]
    assert all(torch.equal(out, image) or torch.equal(out, image.flip(-1)) for out in flipped)
    assert any(torch.equal(out, image.flip(-1)) for out in flipped) and any(torch.equal(out, image) for out in flipped)
    cutout = Augmenter(AugmentConfig(flip=False, randaugment=False, cutout_p=1.0, cutout_value=0.5))
    erased = cutout(image, 3)
    changed = (erased != image).any(0)  # (S, S) the erased box
    assert changed.any() and torch.all(erased[:, changed] == 0.5)


def test_seeds_of_nearby_inputs_are_unrelated_and_config_is_checked():
    seeds = {augmentation_seed(0, index, view) for index in range(50) for view in range(4)}
    assert len(seeds) == 200 and all(0 <= seed < 2**63 for seed in seeds)
    with pytest.raises(ValueError, match="cutout_scale"):
        AugmentConfig(cutout_scale=(0.3, 0.1))
    with pytest.raises(ValueError, match="randaugment"):
        AugmentConfig(randaugment_magnitude=31)


def test_online_augmentation_changes_per_epoch_and_repeats_per_seed(tmp_path):
    from PIL import Image

    Image.fromarray((torch.rand(30, 50, 3, generator=torch.Generator().manual_seed(1)) * 255).byte().numpy()) \
        .save(tmp_path / "a.png")
    dataset = MultiLabelDataset([Record("a.png", (0,))], ["x"], root=tmp_path)
    online = OnlineAugmentedDataset(dataset, 32, AugmentConfig(), seed=0)
    epochs = []
    for epoch in range(3):
        online.set_epoch(epoch)
        epochs.append(online[0]["image"])
    assert epochs[0].shape == (3, 32, 32)
    assert not torch.equal(epochs[0], epochs[1]) and not torch.equal(epochs[1], epochs[2])
    again = OnlineAugmentedDataset(dataset, 32, AugmentConfig(), seed=0)
    again.set_epoch(1)
    assert torch.equal(again[0]["image"], epochs[1])
    other = OnlineAugmentedDataset(dataset, 32, AugmentConfig(), seed=1)
    other.set_epoch(1)
    assert not torch.equal(other[0]["image"], epochs[1])
