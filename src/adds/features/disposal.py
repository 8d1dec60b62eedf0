"""Pyramid-Forwarding's random crop disposal, applied to cached tokens during training."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["dispose_cached_crops"]


def dispose_cached_crops(
    tokens: Tensor,
    crop_levels: Sequence[int],
    ratio: float,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Pyramid-Forwarding's random crop disposal applied to cached tokens (paper: "randomly disposing the image
    patches from the non-bottom levels"; same rule as :class:`~adds.pyramid.PyramidForwarding`).

    Args:
        tokens: ``(B, N, D)`` cached tokens, ``N = len(crop_levels) * T``.
        crop_levels: the pyramid level of each crop in order (``manifest["crop_levels"]``).
        ratio: fraction of the crops of levels ``>= 1`` dropped per image (``floor(ratio * m)``), in ``[0, 1)``.
        generator: optional CPU RNG.

    Returns:
        ``(B, N', D)``: level-0 crops kept, the same number of other crops kept for every image, crop order kept.
    """
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"ratio must be in [0, 1), got {ratio}")
    batch, count, dim = tokens.shape
    crops = len(crop_levels)
    if crops == 0 or count % crops:
        raise ValueError(f"tokens of length {count} cannot be split into {crops} crops")
    bottom = sum(1 for level in crop_levels if level == 0)
    movable = crops - bottom
    keep = movable - math.floor(ratio * movable)
    if keep == movable:
        return tokens
    per_crop = tokens.view(batch, crops, count // crops, dim)  # (B, n, T, D)
    scores = torch.rand(batch, movable, generator=generator)  # (B, m)
    chosen = scores.argsort(dim=1)[:, :keep].sort(dim=1).values.to(tokens.device)  # (B, keep)
    rows = torch.arange(batch, device=tokens.device).unsqueeze(1)  # (B, 1)
    kept = per_crop[:, bottom:][rows, chosen]  # (B, keep, T, D)
    return torch.cat([per_crop[:, :bottom], kept], dim=1).reshape(batch, -1, dim)  # (B, (bottom + keep) * T, D)


