"""Pyramid-Forwarding (paper, "Pyramid-Forwarding" section, Figure 4 and Table 7).

A CLIP image tower is pre-trained on ``S x S`` images (``S`` = 224, 336, ...). Pyramid-Forwarding runs it on a
higher-resolution image without re-training: the image is presented at several scales ("levels"), every level is
cut into ``S x S`` crops, all crops go through the tower as one batch and their tokens are concatenated along the
token axis for the decoder. Self-attention over a ``(S*d) x (S*d)`` image costs ``O(d^4)``; the pyramid costs
``1 + 2^2 + 4^2 + ... + (2^log d)^2 = O(d^2)`` tower calls.

Geometry
--------
``S`` is the tower's (square) base size and the input image is ``H x W`` (not necessarily square).

* **Number of levels.** The top level is ``L = max(0, ceil(log2(max(H, W) / S)))``, i.e. the smallest ``L`` with
  ``S * 2^L >= max(H, W)`` (computed with integers, so there is no rounding error): 224 -> 224 gives ``L = 0``,
  336 -> 640 gives ``L = 1``, 336 -> 1344 gives ``L = 2``. The default is to use every level ``0..L``;
  :class:`PyramidConfig` can select a subset, e.g. the three rows of Table 7: ``(0,)`` (down-sampling only),
  ``(2,)`` (top level only, 16 crops at 1344 for ``S = 336``), ``(0, 1, 2)`` (full pyramid).
* **Crops per level: ``2^i x 2^i``.** The paper's text says level ``i`` is split into "(i + 1) x (i + 1)
  patches", but its Table 7 (16 crops at level 2 for a 1344 image and a 336 tower) and its cost formula
  ``1 + 2^2 + 4^2 + ...`` both mean ``2^i x 2^i`` crops. We follow Table 7 and the cost formula.
* **Levels below the top** (``i < L``, and level 0 always) resize the *whole* image to ``S*2^i x S*2^i`` and tile it
  exactly with ``2^i x 2^i`` crops. The resize squashes the image (the aspect ratio is not kept), the multi-label
  convention of ASL / ML-Decoder: resizing without cropping keeps objects at the border. Level 0 is therefore a
  plain resize to ``S x S``; images smaller than ``S`` are up-sampled. A pyramid with only level 0 is exactly the
  usual single-crop CLIP input.
* **The top level** ``L >= 1`` keeps the image's own size on each axis but never goes coarser than the level below:
  ``side = max(own size on that axis, S * 2^(L-1))`` (so ``side <= S * 2^L``). Its ``2^L`` crops per axis are
  evenly spaced, ``start_j = round(j * (side - S) / (2^L - 1))`` (half-up rounding, integers only): they tile
  exactly when ``side == S * 2^L`` and overlap evenly otherwise - the paper's non-integer ``log d`` case ("we allow
  the divided patches to be overlapped with their neighborhoods"). E.g. 336 -> 640: level 1 is 640 x 640 with
  2 x 2 crops starting at 0 and 304.
* Crops are ordered level by level (ascending), row-major inside a level (top to bottom, then left to right).

Random disposal (paper: "randomly disposing the image patches from the non-bottom levels"): in training mode a
fraction ``dispose_ratio`` of the crops of levels ``>= 1`` is dropped, independently per image but with the same
count for every image so shapes stay uniform; level-0 crops are always kept.

Resizing uses bicubic interpolation (``antialias`` configurable) followed by a clamp to ``[0, 1]`` and the tower's
mean/std normalisation. Each level is resized once for the whole batch, then sliced into crops.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["Crop", "Level", "PyramidConfig", "PyramidForwarding", "num_crops", "plan", "top_level"]


@dataclass(frozen=True)
class Crop:
    """One ``size x size`` crop of a resized level, in that level's pixel coordinates."""

    level: int
    top: int
    left: int
    size: int


@dataclass(frozen=True)
class Level:
    """One pyramid level: the image is resized to ``height x width`` and cut into ``crops``."""

    index: int
    height: int
    width: int
    crops: tuple[Crop, ...]


def _check_levels(levels: Sequence[int]) -> tuple[int, ...]:
    levels = tuple(levels)
    if not levels:
        raise ValueError("levels must not be empty")
    for level in levels:
        if isinstance(level, bool) or not isinstance(level, int) or level < 0:
            raise ValueError(f"levels must be non-negative ints, got {levels}")
    if any(a >= b for a, b in zip(levels[:-1], levels[1:], strict=True)):
        raise ValueError(f"levels must be unique and sorted ascending, got {levels}")
    return levels


@dataclass(frozen=True)
class PyramidConfig:
    """Configuration of Pyramid-Forwarding ("Pyramid-Forwarding" section, Table 7).

    Attributes:
        levels: pyramid levels to use, unique and ascending; ``None`` uses every level ``0..L`` of the input size.
            Table 7: ``(0,)`` = down-sampling only, ``(2,)`` = top level only, ``(0, 1, 2)`` = full pyramid.
        dispose_ratio: training-time fraction of the crops of levels ``>= 1`` randomly dropped per image
            (``floor(ratio * count)`` are dropped); level-0 crops are always kept. ``0 <= ratio < 1``.
        antialias: anti-aliased bicubic down-sampling.
    """

    levels: tuple[int, ...] | None = None
    dispose_ratio: float = 0.0
    antialias: bool = True

    def __post_init__(self) -> None:
        if self.levels is not None:
            object.__setattr__(self, "levels", _check_levels(self.levels))
        if not (isinstance(self.dispose_ratio, (int, float)) and 0.0 <= self.dispose_ratio < 1.0):
            raise ValueError(f"dispose_ratio must be in [0, 1), got {self.dispose_ratio}")


def _check_positive_int(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


def top_level(height: int, width: int, base_size: int) -> int:
    """Index ``L`` of the top pyramid level: the smallest ``L >= 0`` with ``base_size * 2^L >= max(height, width)``."""
    _check_positive_int("height", height)
    _check_positive_int("width", width)
    _check_positive_int("base_size", base_size)
    longest = max(height, width)
    level = 0
    while base_size << level < longest:
        level += 1
    return level


def _starts(side: int, size: int, count: int) -> list[int]:
    """``count`` evenly spaced crop starts on an axis of length ``side`` (first at 0, last at ``side - size``)."""
    if count == 1:
        return [0]
    span = side - size
    return [(2 * j * span + count - 1) // (2 * (count - 1)) for j in range(count)]  # round-half-up(j*span/(count-1))


def plan(height: int, width: int, base_size: int, levels: Sequence[int] | None = None) -> list[Level]:
    """Pyramid geometry for an ``height x width`` image and a ``base_size`` tower (see the module docstring).

    Args:
        height, width: input image size in pixels.
        base_size: the tower's square input size ``S``.
        levels: levels to build, unique and ascending; ``None`` = all levels ``0..L``.

    Returns:
        One :class:`Level` per selected level, ascending, each with its ``2^i x 2^i`` crops in row-major order.

    Raises:
        ValueError: on non-positive sizes, malformed ``levels``, or a level above the image's top level ``L``.
    """
    top = top_level(height, width, base_size)
    selected = tuple(range(top + 1)) if levels is None else _check_levels(levels)
    if selected[-1] > top:
        raise ValueError(
            f"pyramid level {selected[-1]} requested for a {height}x{width} image with base size {base_size}, "
            f"but the maximum level for that size is {top}"
        )
    out: list[Level] = []
    for i in selected:
        per_axis = 1 << i
        if i < top or i == 0:
            level_h = level_w = base_size * per_axis
        else:
            floor_side = base_size << (top - 1)  # never coarser than the level below
            level_h, level_w = max(height, floor_side), max(width, floor_side)
        tops = _starts(level_h, base_size, per_axis)
        lefts = _starts(level_w, base_size, per_axis)
        crops = tuple(Crop(level=i, top=t, left=lf, size=base_size) for t in tops for lf in lefts)
        out.append(Level(index=i, height=level_h, width=level_w, crops=crops))
    return out


def num_crops(levels: Sequence[Level]) -> int:
    """Total number of crops of a :func:`plan` (before any random disposal)."""
    return sum(len(level.crops) for level in levels)


class PyramidForwarding(nn.Module):
    """Cuts images into pyramid crops and runs an image tower on all of them in one batch ("Pyramid-Forwarding").

    Args:
        base_size: the tower's square input size ``S``.
        mean, std: the tower's per-channel normalisation (CLIP: ``open_clip.OPENAI_DATASET_MEAN`` / ``_STD``).
        config: levels, random disposal, anti-aliasing.

    Inputs are float images ``(B, 3, H, W)`` with values in ``[0, 1]`` (not normalised; the range is not checked).
    ``uint8`` images are accepted and divided by 255. All images of a batch share ``H x W`` and hence the plan.
    """

    def __init__(
        self,
        base_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        config: PyramidConfig | None = None,
    ) -> None:
        super().__init__()
        _check_positive_int("base_size", base_size)
        if len(mean) != 3 or len(std) != 3:
            raise ValueError(f"mean and std need 3 values (RGB), got {len(mean)} and {len(std)}")
        if any(not s > 0 for s in std):
            raise ValueError(f"std values must be > 0, got {tuple(std)}")
        self.base_size = base_size
        self.config = config if config is not None else PyramidConfig()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)

    def extra_repr(self) -> str:
        return f"base_size={self.base_size}, config={self.config}"

    def plan(self, height: int, width: int) -> list[Level]:
        """The pyramid geometry this module uses for ``height x width`` inputs."""
        return plan(height, width, self.base_size, self.config.levels)

    def _prepare(self, images: Tensor) -> Tensor:
        if not isinstance(images, Tensor):
            raise ValueError(f"images must be a torch.Tensor, got {type(images).__name__}")
        if images.dim() != 4:
            raise ValueError(f"images must have shape (B, 3, H, W), got {tuple(images.shape)}")
        if images.shape[1] != 3:
            raise ValueError(f"images must have 3 (RGB) channels in dim 1, got shape {tuple(images.shape)}")
        if images.shape[0] == 0:
            raise ValueError(f"images must hold at least one image, got shape {tuple(images.shape)}")
        if images.dtype == torch.uint8:
            return images.float() / 255.0
        if not images.is_floating_point():
            raise ValueError(f"images must be float in [0, 1] or uint8, got dtype {images.dtype}")
        return images

    def _resize(self, images: Tensor, height: int, width: int) -> Tensor:
        if images.shape[-2:] == (height, width):
            return images  # identity: no interpolation error
        work = images if images.dtype in (torch.float32, torch.float64) else images.float()
        out = F.interpolate(
            work, size=(height, width), mode="bicubic", antialias=self.config.antialias, align_corners=False
        )  # (B, 3, height, width)
        return out.clamp_(0.0, 1.0).to(images.dtype)

    def _dispose(self, crops: Tensor, levels: list[Level], generator: torch.Generator | None) -> Tensor:
        """Randomly drop ``floor(ratio * m)`` of the ``m`` non-bottom crops of each image (level 0 always kept)."""
        batch = crops.shape[0]
        bottom = sum(len(level.crops) for level in levels if level.index == 0)
        movable = crops.shape[1] - bottom
        keep = movable - math.floor(self.config.dispose_ratio * movable)
        if keep == movable:
            return crops
        device = generator.device if generator is not None else torch.device("cpu")
        scores = torch.rand(batch, movable, generator=generator, device=device)  # (B, m)
        chosen = scores.argsort(dim=1)[:, :keep].sort(dim=1).values.to(crops.device)  # (B, keep), crop order kept
        rows = torch.arange(batch, device=crops.device).unsqueeze(1)  # (B, 1)
        kept = crops[:, bottom:][rows, chosen]  # (B, keep, 3, S, S)
        return torch.cat([crops[:, :bottom], kept], dim=1)  # (B, bottom + keep, 3, S, S)

    def crops(self, images: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, int]:
        """Normalised pyramid crops of a batch.

        Args:
            images: ``(B, 3, H, W)`` float in ``[0, 1]`` (or uint8).
            generator: optional RNG for the training-time random disposal (CPU default generator otherwise).

        Returns:
            ``(crops, n)``: crops ``(B * n, 3, S, S)`` normalised with the tower's mean/std, image-major (all crops
            of image 0, then image 1, ...), and ``n``, the number of crops per image.
        """
        images = self._prepare(images)  # (B, 3, H, W)
        batch, _, height, width = images.shape
        levels = self.plan(height, width)
        size = self.base_size
        pieces: list[Tensor] = []
        for level in levels:
            resized = self._resize(images, level.height, level.width)  # (B, 3, h_i, w_i)
            pieces.extend(resized[:, :, c.top : c.top + size, c.left : c.left + size] for c in level.crops)
        crops = torch.stack(pieces, dim=1)  # (B, n, 3, S, S)
        if self.training and self.config.dispose_ratio > 0:
            crops = self._dispose(crops, levels, generator)  # (B, n', 3, S, S)
        n = crops.shape[1]
        mean = self.mean.to(device=crops.device, dtype=crops.dtype).unsqueeze(1)  # (1, 1, 3, 1, 1)
        std = self.std.to(device=crops.device, dtype=crops.dtype).unsqueeze(1)  # (1, 1, 3, 1, 1)
        crops = (crops - mean) / std  # (B, n, 3, S, S)
        return crops.reshape(batch * n, 3, size, size), n  # (B*n, 3, S, S)

    def forward(
        self,
        images: Tensor,
        encode: Callable[[Tensor], Tensor],
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Encode every crop with one batched ``encode`` call and stack each image's crop tokens.

        Args:
            images: ``(B, 3, H, W)`` float in ``[0, 1]`` (or uint8).
            encode: the image tower, ``(N, 3, S, S) -> (N, T, D)`` (e.g. ``Towers.encode_image_tokens``).
            generator: optional RNG for the training-time random disposal.

        Returns:
            ``(B, n * T, D)``: per image, the tokens of its ``n`` crops concatenated along the token axis in crop
            order (paper: "these tokens are stacked on the token dimension").
        """
        crops, n = self.crops(images, generator)  # (B*n, 3, S, S)
        batch = crops.shape[0] // n
        tokens = encode(crops)  # (B*n, T, D)
        if not isinstance(tokens, Tensor) or tokens.dim() != 3 or tokens.shape[0] != crops.shape[0]:
            shape = tuple(tokens.shape) if isinstance(tokens, Tensor) else type(tokens).__name__
            raise ValueError(f"encode must map ({crops.shape[0]}, 3, S, S) crops to (N, T, D) tokens, got {shape}")
        _, t, d = tokens.shape
        return tokens.reshape(batch, n * t, d)  # (B, n*T, D)
