"""Decoding for the tagger: an image file (or PIL image) -> ``(3, s, s)`` float pixels squashed to the plan's size.

The decode runs in the tagger's ``--workers`` threads while the model scores the previous batch
(:meth:`adds.tagger.Tagger.tag_files`), so its cost is what limits ``adds tag`` on a few cores. The pixels are
exactly those of :func:`~adds.data.images.load_image` + :class:`~adds.data.base.SquashResize` (the path ``adds eval``
and training take, and the tagger's tensor inputs): only the 8-bit RGB / grayscale to float conversion is done with
one copy into a preallocated float tensor and an in-place division, instead of NumPy's three full-size passes (the
same float32 values, bit for bit, tested; about half the conversion time of a 1920x1080 photo). Every other mode
(alpha, 16-bit, float, palette, CMYK, ...) goes through :func:`~adds.data.images.image_to_tensor`'s rules. Errors are
:func:`~adds.data.images.load_image`'s (:class:`~adds.data.images.ImageLoadError` naming the file).
"""

from __future__ import annotations

import os
import warnings

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from adds.data.base import SquashResize
from adds.data.images import image_to_tensor, open_image

__all__ = ["pixels_of", "squash_image"]


def pixels_of(image: Image.Image) -> Tensor:
    """A decoded PIL image -> float32 ``(3, H, W)`` in ``[0, 1]``, equal to ``image_to_tensor(image)``."""
    if image.mode not in ("RGB", "L") or "transparency" in image.info:
        return image_to_tensor(image)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # a read-only array: only read here
        values = torch.from_numpy(np.asarray(image))  # (H, W, 3) or (H, W) uint8
    out = torch.empty(3, image.height, image.width, dtype=torch.float32)  # (3, H, W)
    out.copy_(values.permute(2, 0, 1) if values.dim() == 3 else values.unsqueeze(0).expand(3, -1, -1))
    return out.div_(255.0)


def squash_image(source: str | os.PathLike | Image.Image, size: int) -> tuple[Tensor, tuple[int, int]]:
    """Decode ``source`` and squash it (no aspect ratio kept) to ``size x size``.

    Returns:
        ``(pixels, (height, width))``: float32 ``(3, size, size)`` in ``[0, 1]`` and the original size.
    """
    image = open_image(source)
    return SquashResize(size)(pixels_of(image)), (image.height, image.width)  # (3, size, size)
