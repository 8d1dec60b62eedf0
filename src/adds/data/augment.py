"""Training-time image augmentation (ML-Decoder's recipe: flip, RandAugment, Cutout) that is deterministic per seed.

ADDS trains on frozen-tower tokens, which the feature cache (:mod:`adds.features`) stores once per image, so an
augmentation applied per step would force the towers to run again every step. Two ways keep augmentation:

* **cached views** (``ExtractConfig.views = K``): every image is stored as K views, view 0 the plain squash-resized
  image and views 1..K-1 augmented; each epoch, training reads one view per image, drawn from ``(seed, epoch)``
  (:class:`adds.features.CachedFeatureDataset`). The towers run K times per image once, not once per epoch;
* **on-line** (``data.cache: null`` with ``data.augment_online``): the towers run every step on a fresh
  augmentation (:class:`OnlineAugmentedDataset`), the exact recipe at the full re-encoding cost.

Both draw every random number of an augmentation from a generator seeded by ``(seed, index, view)`` (cached views)
or ``(seed, epoch, index)`` (on-line) through :func:`augmentation_seed`, so the result depends neither on worker
processes nor on batching, and a resumed run sees the same images.

The transforms are torchvision's ``transforms.v2``, applied to the ``(3, S, S)`` float image after
:class:`~adds.data.base.SquashResize`: ``RandomHorizontalFlip``, ``RandAugment`` (on uint8, as torchvision's
posterize / equalize require) and ``RandomErasing`` with a constant fill as Cutout. ML-Decoder applies Cutout
before RandAugment; here it comes last, so that RandAugment's colour operations never recolour the erased box.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset

from adds.data.base import MultiLabelDataset, SquashResize

__all__ = ["AugmentConfig", "Augmenter", "AugmentedViews", "OnlineAugmentedDataset", "augmentation_seed"]


@dataclass(frozen=True)
class AugmentConfig:
    """Which augmentations make a training view (defaults: ML-Decoder's recipe plus a horizontal flip).

    Attributes:
        flip: ``RandomHorizontalFlip(p=0.5)``.
        randaugment: ``RandAugment(num_ops, magnitude)`` (ML-Decoder: torchvision's defaults, 2 ops at magnitude 9).
        randaugment_ops, randaugment_magnitude: RandAugment's ``num_ops`` and ``magnitude`` (0-30).
        cutout: ``RandomErasing`` as Cutout. ML-Decoder's ``CutoutPIL(cutout_factor=0.5)`` fills, on every image, a
            half-side box centred anywhere (so clipped at the border: 19 % of the area on average) with a random
            colour; ``RandomErasing`` keeps its box inside the image, so the area is drawn from ``cutout_scale``
            instead, and fills a constant.
        cutout_p: probability of erasing a box (ML-Decoder: 1, every image).
        cutout_scale: range of the box's area as a fraction of the image (default 1/16 to 1/4: a quarter-side to a
            half-side square, mean 16 %).
        cutout_value: the constant fill, in [0, 1] image units (0.5: mid grey).
        seed: seeds every view's augmentation (with the image index and the view number): the same seed gives the
            same views, another seed other views. Part of a feature cache's settings.
    """

    flip: bool = True
    randaugment: bool = True
    randaugment_ops: int = 2
    randaugment_magnitude: int = 9
    cutout: bool = True
    cutout_p: float = 1.0
    cutout_scale: tuple[float, float] = (0.0625, 0.25)
    cutout_value: float = 0.5
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "cutout_scale", tuple(float(value) for value in self.cutout_scale))
        object.__setattr__(self, "cutout_p", float(self.cutout_p))
        object.__setattr__(self, "cutout_value", float(self.cutout_value))
        if self.randaugment_ops < 1 or not 0 <= self.randaugment_magnitude <= 30:
            raise ValueError(f"augment.randaugment_ops must be >= 1 and randaugment_magnitude in [0, 30], got "
                             f"{self.randaugment_ops} and {self.randaugment_magnitude}")
        if len(self.cutout_scale) != 2 or not 0 < self.cutout_scale[0] <= self.cutout_scale[1] < 1:
            raise ValueError(f"augment.cutout_scale must be two fractions 0 < low <= high < 1, got {self.cutout_scale}")
        if not 0 <= self.cutout_p <= 1 or not 0 <= self.cutout_value <= 1:
            raise ValueError(f"augment.cutout_p and cutout_value must be in [0, 1], got {self.cutout_p} and "
                             f"{self.cutout_value}")

    def settings(self) -> dict[str, Any]:
        """The fields as a JSON-able dict (recorded in a feature cache's manifest)."""
        return {"flip": self.flip, "randaugment": self.randaugment, "randaugment_ops": self.randaugment_ops,
                "randaugment_magnitude": self.randaugment_magnitude, "cutout": self.cutout,
                "cutout_p": self.cutout_p, "cutout_scale": list(self.cutout_scale),
                "cutout_value": self.cutout_value, "seed": self.seed}


def augmentation_seed(*parts: int) -> int:
    """A 63-bit seed from integers (e.g. ``(seed, index, view)``): SHA-256, so nearby inputs give unrelated seeds."""
    digest = hashlib.sha256(":".join(str(int(part)) for part in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


class Augmenter:
    """``config``'s transforms on a ``(3, S, S)`` float image in [0, 1]; :meth:`__call__` takes an explicit seed.

    The global torch RNG (which torchvision's transforms draw from) is forked for the call, so augmenting neither
    depends on nor disturbs the training's random streams.
    """

    def __init__(self, config: AugmentConfig) -> None:
        from torchvision.transforms import v2

        steps: list[Any] = []
        if config.flip:
            steps.append(v2.RandomHorizontalFlip(p=0.5))
        if config.randaugment:
            steps += [v2.ToDtype(torch.uint8, scale=True),
                      v2.RandAugment(num_ops=config.randaugment_ops, magnitude=config.randaugment_magnitude),
                      v2.ToDtype(torch.float32, scale=True)]
        if config.cutout:
            steps.append(v2.RandomErasing(p=config.cutout_p, scale=config.cutout_scale, value=config.cutout_value))
        self.config = config
        self.transform = v2.Compose(steps) if steps else None

    def __call__(self, image: Tensor, seed: int) -> Tensor:
        """``image`` ``(3, S, S)`` float -> an augmented ``(3, S, S)`` float image, a function of ``seed``."""
        if self.transform is None:
            return image
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.transform(image).to(torch.float32)  # (3, S, S)

    def __repr__(self) -> str:
        return f"Augmenter({self.transform})"


class AugmentedViews(Dataset):
    """``dataset``'s images as ``views`` views each, for extraction: items as ``MultiLabelDataset``'s with ``image``
    ``(views, 3, S, S)`` -- view 0 the plain squash-resized image, view ``v >= 1`` augmented with seed
    ``augmentation_seed(config.seed, index, v)``. The image file is decoded once per item."""

    def __init__(self, dataset: MultiLabelDataset, input_size: int, views: int, config: AugmentConfig) -> None:
        if views < 1:
            raise ValueError(f"views must be >= 1, got {views}")
        self.dataset, self.views, self.config = dataset, views, config
        self.resize = SquashResize(input_size)
        self.augmenter = Augmenter(config)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = self.dataset[index]
        if item["image"] is not None:
            plain = self.resize(item["image"])  # (3, S, S)
            views = [plain] + [self.augmenter(plain, augmentation_seed(self.config.seed, index, view))
                               for view in range(1, self.views)]
            item["image"] = torch.stack(views)  # (V, 3, S, S)
        return item


class OnlineAugmentedDataset(Dataset):
    """On-line augmentation for training from images (``data.cache: null``): item ``index`` of epoch ``e`` is
    ``dataset[index]`` squash-resized and augmented with seed ``augmentation_seed(config.seed, seed, e, index)``.

    ``seed`` is the run's seed; :meth:`set_epoch` (called by the trainer before each epoch) picks the epoch, so a
    resumed run sees the same augmentations as an uninterrupted one.
    """

    def __init__(self, dataset: MultiLabelDataset, input_size: int, config: AugmentConfig, seed: int = 0) -> None:
        self.dataset, self.config, self.seed = dataset, config, seed
        self.resize = SquashResize(input_size)
        self.augmenter = Augmenter(config)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = self.dataset[index]
        if item["image"] is not None:
            image = self.resize(item["image"])  # (3, S, S)
            item["image"] = self.augmenter(image, augmentation_seed(self.config.seed, self.seed, self.epoch, index))
        return item
